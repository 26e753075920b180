"""Stopping a training run cleanly (``utils.training.stopping``): ``--time_limit`` and the stop
signals end a run between two steps with ``latest.pth`` written at that iteration, and ``--resume
auto`` then ends with the weights of a run never stopped, bit for bit (one process, data-loading
workers, DDP)."""
import os
import signal
import subprocess
import sys
import time

import pytest

from test_training_failures import (Toy, _kill_all, _torchrun, one_line, same, sub_env, toy_argv, toy_config,
                                       toy_script, weights)
from utils import training as engine
from utils.config import ConfigError
from utils.training.state import load_training_state
from utils.training.stopping import (STOP_SIGNALS, TIME_LIMIT, StopRequest, describe, exit_status,
                                     ignore_stop_signals, parse_duration)


@pytest.mark.parametrize("text, seconds", [
    ("90m", 5400), ("2h", 7200), ("1h30m", 5400), ("45s", 45), ("1.5h", 5400), ("1d12h", 129600), ("2H5S", 7205),
    ("90", 5400), ("05:30", 330), ("02:30:00", 9000), ("1-12", 129600), ("1-00:30", 88200), ("1-00:00:10", 86410),
])
def test_durations_in_units_and_in_slurm_form(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text, message", [
    ("2x", "expected a duration such as 90m"), ("", "expected a duration"), ("h", "expected a duration"),
    ("1:2:3:4", "expected a duration"), ("-5m", "expected a duration"), ("0s", "must be longer than zero"),
    ("00:00:00", "must be longer than zero"),
])
def test_bad_durations_are_refused(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_duration(text)


def test_the_time_limit_counts_the_next_step_in():
    stop = StopRequest(10.0, start=time.monotonic() - 8)
    assert stop.code() == 0 and stop.code(1.0) == 0
    assert stop.code(2.5) == TIME_LIMIT and describe(TIME_LIMIT) == "the time limit"
    assert StopRequest().code(1e9) == 0  # no limit
    assert exit_status(0) == exit_status(TIME_LIMIT) == 0 and exit_status(1 + signal.SIGTERM) == 143


def test_signals_are_recorded_while_catching_and_a_second_ctrl_c_stops_at_once():
    before = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    stop = StopRequest()
    with stop.catching():
        os.kill(os.getpid(), signal.SIGUSR1)
        os.kill(os.getpid(), signal.SIGTERM)  # the first reason stands
        assert stop.code() == 1 + signal.SIGUSR1 and describe(stop.code()) == "SIGUSR1"
    assert {signum: signal.getsignal(signum) for signum in STOP_SIGNALS} == before
    stop = StopRequest()
    with stop.catching():
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.code() == 1 + signal.SIGINT
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    stop = StopRequest()
    with stop.catching():
        os.kill(os.getpid(), signal.SIGTERM)
        with pytest.raises(KeyboardInterrupt):  # Ctrl-C on a pending stop of any kind
            os.kill(os.getpid(), signal.SIGINT)
    ignore_stop_signals(0)  # what a data-loading worker does
    try:
        assert all(signal.getsignal(signum) == signal.SIG_IGN for signum in STOP_SIGNALS)
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)


class StopAt(StopRequest):
    """A stop request that comes during global step ``n`` (1-based), for runs that stop at a known step."""

    def __init__(self, n):
        super().__init__()
        self.n, self.calls = n, 0

    def code(self, next_step_s=0.0):
        self.calls += 1
        return TIME_LIMIT if self.calls == self.n else 0


def test_a_stopped_run_writes_its_exact_step_and_resumes_exactly(tmp_path):
    whole = engine.train(Toy, toy_config(tmp_path / "whole"), device="cpu")
    cfg = toy_config(tmp_path / "run")  # save_freq 2: the stop at step 7 falls between two saves
    stopped = engine.train(Toy, cfg, device="cpu", stop=StopAt(7))
    assert (stopped.stopped, stopped.iteration) == (TIME_LIMIT, 7)
    state = load_training_state(tmp_path / "run" / "checkpoints" / "latest.pth")
    assert (state["epoch"], state["iter_in_epoch"], state["iteration"]) == (1, 2, 7)
    log = (tmp_path / "run" / "train.log").read_text()
    assert ("stopped by the time limit after iteration 2 of epoch 2/3 (global 7); "
            f"{tmp_path / 'run' / 'checkpoints' / 'latest.pth'} keeps the state of iteration 7 and "
            f"{tmp_path / 'run' / 'models' / 'model_last.pth'} its weights: continue with --resume auto") in log
    assert same(weights(tmp_path / "run"), state["model"]), "model_last.pth is not the stopped iteration's weights"
    resumed = engine.train(Toy, cfg.replace(resume="auto"), device="cpu")
    assert resumed.stopped == 0 and resumed.iteration == 15
    assert same(weights(tmp_path / "whole"), weights(tmp_path / "run"))
    assert [h["train/loss"] for h in resumed.history] == [h["train/loss"] for h in whole.history]


def test_a_stop_at_an_epochs_last_step_resumes_into_its_validation(tmp_path):
    engine.train(Toy, toy_config(tmp_path / "whole"), device="cpu")
    cfg = toy_config(tmp_path / "run")
    assert engine.train(Toy, cfg, device="cpu", stop=StopAt(10)).iteration == 10
    state = load_training_state(tmp_path / "run" / "checkpoints" / "latest.pth")
    assert (state["epoch"], state["iter_in_epoch"]) == (1, 5) and len(state["history"]) == 1
    resumed = engine.train(Toy, cfg.replace(resume="auto"), device="cpu")
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3] and "val/toy/psnr" in resumed.history[1]
    assert same(weights(tmp_path / "whole"), weights(tmp_path / "run"))


class Recording(StopRequest):
    """A stop request that never stops and records the expected time to the next step's end it is given."""

    def __init__(self):
        super().__init__()
        self.next_s = []

    def code(self, next_step_s=0.0):
        self.next_s.append(next_step_s)
        return 0


def test_the_time_estimate_counts_an_epoch_end_in_before_it_comes(tmp_path):
    """Validation that takes 0.5 s: from the second epoch on, the steps after which an epoch end
    comes before the next step's end (the last two of each epoch of 5) expect it."""
    stop = Recording()
    engine.train(Toy, toy_config(tmp_path, val_sleep_s=0.5), device="cpu", stop=stop)
    assert len(stop.next_s) == 15
    ahead = [i for i, s in enumerate(stop.next_s, 1) if s >= 0.5]
    assert ahead == [9, 10, 14, 15], stop.next_s
    assert max(stop.next_s[:8]) < 0.5


def test_a_stop_during_a_nan_streak_keeps_the_last_good_checkpoint(tmp_path):
    cfg = toy_config(tmp_path, nan_from=5, max_bad_steps=5)
    result = engine.train(Toy, cfg, device="cpu", stop=StopAt(6))
    assert result.stopped == TIME_LIMIT
    assert load_training_state(tmp_path / "checkpoints" / "latest.pth")["iteration"] == 4
    assert f"{tmp_path / 'checkpoints' / 'latest.pth'} keeps the state of iteration 4" in (tmp_path / "train.log").read_text()


def test_bad_time_limit_is_one_line_and_writes_nothing(tmp_path, capsys):
    argv = [*toy_argv(tmp_path, tmp_path / "run"), "--time_limit", "soon"]
    assert engine.main(Toy, argv, prog="toy") == 1
    one_line(capsys, "toy: error: --time_limit: expected a duration such as 90m, 2h30m, 45s or 02:30:00, got 'soon'")
    assert not (tmp_path / "run").exists()


def test_the_time_limit_stops_the_trainer_with_status_0_and_resume_finishes_it(tmp_path):
    engine.train(Toy, toy_config(tmp_path / "whole"), device="cpu")
    run = tmp_path / "run"
    argv = toy_argv(tmp_path, run, "step_sleep_s=0.4")
    assert engine.main(Toy, [*argv, "--time_limit", "2s"], prog="toy") == 0
    stopped_at = load_training_state(run / "checkpoints" / "latest.pth")["iteration"]
    assert 1 <= stopped_at < 15 and "stopped by the time limit" in (run / "train.log").read_text()
    assert engine.main(Toy, [*argv, "--resume", "auto"], prog="toy") == 0
    assert same(weights(tmp_path / "whole"), weights(run))
    assert engine.main(Toy, [*argv, "--resume", "auto", "--time_limit", "2s"], prog="toy") == 0  # nothing left
    assert same(weights(tmp_path / "whole"), weights(run))
    assert "the run has finished its 3 epochs: nothing to train" in (run / "train.log").read_text()


def _wait_for(path, text, proc, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if path.exists() and text in path.read_text():
            return
        time.sleep(0.1)
    raise AssertionError(f"{text!r} not in {path} (exit {proc.poll()})")


@pytest.mark.slow
def test_sigterm_with_loader_workers_stops_cleanly_and_resumes_exactly(tmp_path):
    """SIGTERM to every process of the job (as SLURM sends it: the loader workers too) ends the run
    after its current step with status 143; the workers keep serving until then."""
    engine.train(Toy, toy_config(tmp_path / "whole"), device="cpu")
    run = tmp_path / "run"
    cmd = toy_script(tmp_path, run, "step_sleep_s=0.3", "num_workers=2")
    proc = subprocess.Popen(cmd, env=sub_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        _wait_for(run / "train.log", "(global 6)", proc)
        os.killpg(proc.pid, signal.SIGTERM)
        out = proc.communicate(timeout=120)[0]
    finally:
        proc.kill()
    assert proc.returncode == 143, out[-2000:]
    assert "Traceback" not in out and "stopped by SIGTERM after iteration" in out, out[-2000:]
    state = load_training_state(run / "checkpoints" / "latest.pth")
    assert 6 <= state["iteration"] < 15 and f"keeps the state of iteration {state['iteration']} and" in out
    done = subprocess.run([*cmd, "--resume", "auto"], env=sub_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert same(weights(tmp_path / "whole"), weights(run))


@pytest.mark.slow
def test_a_signal_to_one_ddp_rank_stops_every_rank_at_the_same_step(tmp_path):
    """SIGUSR1 to rank 1 alone: both ranks stop after the same step (the request rides on the step's
    collective), rank 0 writes it, and the resumed DDP run ends as an uninterrupted one."""
    runs = {}
    for name in ("whole", "run"):
        pid_dir = tmp_path / f"pids_{name}"
        pid_dir.mkdir()
        log = tmp_path / f"{name}.out"
        with open(log, "w") as out:
            launcher = subprocess.Popen(_torchrun(tmp_path, tmp_path / name, "step_sleep_s=0.3", pid_dir=pid_dir),
                                        env=sub_env(), stdout=out, stderr=subprocess.STDOUT)
        try:
            if name == "run":
                _wait_for(tmp_path / name / "train.log", "(global 6)", launcher)
                os.kill(int((pid_dir / "1.pid").read_text()), signal.SIGUSR1)
            launcher.wait(timeout=240)
        finally:
            _kill_all(launcher, pid_dir)
        runs[name] = launcher.returncode
    assert runs["whole"] == 0, (tmp_path / "whole.out").read_text()[-3000:]
    text = (tmp_path / "run" / "train.log").read_text()
    state = load_training_state(tmp_path / "run" / "checkpoints" / "latest.pth")
    assert "stopped by SIGUSR1 after iteration" in text and f"(global {state['iteration']})" in text, text[-2000:]
    assert 6 <= state["iteration"] < 15
    resumed = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                              *toy_script(tmp_path, tmp_path / "run", "step_sleep_s=0.3")[1:], "--resume", "auto"],
                             env=sub_env(), capture_output=True, text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert same(weights(tmp_path / "whole"), weights(tmp_path / "run"))
