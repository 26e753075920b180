"""Reliability of the training engine (docs/reliability.md): nothing silent, nothing lost.

A NaN/inf streak or non-finite weights never overwrite the last good checkpoint and ``--resume
auto`` continues from it; options changed on resume take effect or are refused; one run per folder
(subprocesses, DDP included) and temporaries of killed writes cleaned; every training image checked
once at start; a full disk, an unusable --save_dir, a truncated validation file and configs that
break the network's or the data's constraints give one line; a stalled DDP rank ends the run.

Run as a script, this file is the toy trainer that the subprocess tests start
(``python tests/test_training_failures.py [--kill-in-save N] [--pid-dir DIR] --config ...``).
"""
import errno
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from datasets.image_check import BadImagesError
from real_fixtures import noisy_pairs, write_sidd_blocks, write_sidd_patches
from test_engine import ToyData
from train_denoising_real import DenoisingReal
from train_denoising_syn import DenoisingSyn
from train_sisr import SISR
from utils import devices, image_io
from utils import training as engine
from utils.config import Key, build_config, load_config
from utils.image_io import is_temporary_file, write_image
from utils.locking import LOCK_NAME, folder_lock
from utils.training.optim import lr_at_epoch
from utils.training.state import load_training_state
from helpers import sub_env, weights

ROOT = Path(__file__).resolve().parents[1]

BASE = dict(epochs=3, iters_per_epoch=5, batch_size=4, lr=0.05, lr_min=1e-3, warmup_epochs=1, num_workers=0,
            print_freq=5, image_freq=0, save_freq=2, val_images=0)
SYN_TINY = ["batch_size=4", "patch_size=24", "n_feat=[8,16]", "dep_S=3", "n_resblocks=1", "iters_per_epoch=2",
            "epochs=1", "save_freq=0", "print_freq=2", "image_freq=0", "val_max_images=1", "val_images=0",
            "num_workers=0"]


# --------------------------------------------------------------------------- the toy trainer


class ToyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.RNet = nn.Conv2d(1, 1, 1)
        self.head = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return self.RNet(x) + self.head


class Toy(engine.Task):
    """A task whose steps can go wrong on purpose at a chosen global iteration (1-based)."""

    description = "toy trainer of the reliability tests"
    keys = {"nan_from": Key("int", 0, "first iteration whose loss is NaN, for good (0: none)"),
            "poison_at": Key("int", 0, "iteration after whose forward pass the weights become inf (0: none)"),
            "crash_at": Key("int", 0, "iteration that raises (0: none)"),
            "stall_at": Key("int", 0, "iteration at which rank stall_rank stops itself with SIGSTOP (0: none)"),
            "stall_rank": Key("int", 1, "the rank that stalls"),
            "step_sleep_s": Key("float", 0.0, "seconds every step sleeps"),
            "val_sleep_s": Key("float", 0.0, "seconds every validation batch sleeps")}

    def build_model(self):
        return ToyNet()

    def build_train_set(self, length):
        return ToyData(length, self.cfg.seed)

    def build_val_sets(self):
        return [engine.ValSet("toy", ToyData(4, seed=99), batch_size=4)]

    def train_step(self, model, batch, ctx):
        cfg, it = self.cfg, ctx.iteration + 1
        if it == cfg.crash_at:
            raise RuntimeError("simulated crash")
        if it == cfg.stall_at and ctx.rank == cfg.stall_rank:
            os.kill(os.getpid(), signal.SIGSTOP)
        time.sleep(cfg.step_sleep_s)
        x, y = batch
        with ctx.autocast():
            pred = model(x)
        loss = ((pred.float() - y) ** 2).mean() + 0 * torch.rand(())
        if cfg.nan_from and it >= cfg.nan_from:
            loss = loss * float("nan")
        if it == cfg.poison_at:
            with torch.no_grad():
                getattr(model, "module", model).head.fill_(float("inf"))
        return engine.StepOutput(loss, {"mse": loss.detach()})

    def val_step(self, model, batch, ctx):
        time.sleep(self.cfg.val_sleep_s)
        x, y = batch
        mse = ((model(x) - y) ** 2).mean().item()
        return engine.ValOutput({"psnr": -10 * math.log10(mse) if 0 < mse < math.inf else -math.inf})


def toy_config(save_dir, **values):
    return build_config(Toy.schema(), {**BASE, "save_dir": str(save_dir), **values}, source="toy")


def toy_argv(tmp_path, save_dir, *opts):
    """The toy's command line: its config file (BASE), the CPU, ``save_dir`` and ``--opt`` items."""
    config = tmp_path / "toy.json"
    config.write_text(json.dumps(BASE))
    return ["--config", str(config), "--device", "cpu", "--save_dir", str(save_dir),
            *[a for opt in opts for a in ("--opt", opt)]]


def toy_script(tmp_path, save_dir, *opts, flags=()):
    """The command that runs this file as the toy trainer."""
    return [sys.executable, __file__, *flags, *toy_argv(tmp_path, save_dir, *opts)]


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def one_line(capsys, *parts):
    """The stderr of a run that failed with one line containing every part."""
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for part in parts:
        assert part in err, err
    return err


# --------------------------------------------------------------------------- bad steps, resume


def test_nan_streak_keeps_the_last_good_checkpoint_and_resume_continues_from_it(tmp_path):
    clean = tmp_path / "clean"
    engine.train(Toy, toy_config(clean), device="cpu")
    cfg = toy_config(tmp_path / "run", nan_from=5, max_bad_steps=3)  # steps 5, 6, 7 bad; saves due at 5, 6
    latest = tmp_path / "run" / "checkpoints" / "latest.pth"
    with pytest.raises(engine.TrainingError) as stop:
        engine.train(Toy, cfg, device="cpu")
    assert "for 3 steps in a row" in str(stop.value) and f"{latest} keeps the state of iteration 4" in str(stop.value)
    state = load_training_state(latest)
    assert state["iteration"] == 4 and state["bad_steps"] == 0
    assert not (tmp_path / "run" / "models" / "model_last.pth").exists()  # epoch 1 ended in the streak
    assert "no checkpoint written (the last 2 step(s) were skipped)" in (tmp_path / "run" / "train.log").read_text()
    resumed = engine.train(Toy, cfg.replace(nan_from=0, resume="auto"), device="cpu")
    assert resumed.iteration == 15 and same(weights(clean), weights(tmp_path / "run"))


def test_non_finite_weights_are_never_saved(tmp_path):
    cfg = toy_config(tmp_path, poison_at=3, save_freq=1, max_bad_steps=2)
    with pytest.raises(engine.TrainingError, match="keeps the state of iteration 2"):
        engine.train(Toy, cfg, device="cpu")
    state = load_training_state(tmp_path / "checkpoints" / "latest.pth")
    assert state["iteration"] == 2 and all(torch.isfinite(v).all() for v in state["model"].values())
    assert "iteration 3: no checkpoint written (the weights hold NaN/inf)" in (tmp_path / "train.log").read_text()


def test_changed_lr_and_epochs_take_effect_on_resume(tmp_path):
    cfg = toy_config(tmp_path, crash_at=8)
    with pytest.raises(RuntimeError, match="simulated crash"):
        engine.train(Toy, cfg, device="cpu")
    resumed = engine.train(Toy, cfg.replace(crash_at=0, resume="auto", lr=0.01, epochs=4), device="cpu")
    lrs = [h["lr"] for h in resumed.history]
    assert lrs[0] == lr_at_epoch(0, 0.05, 1e-3, 1, 3)  # the epoch trained before the crash
    assert lrs[1:] == pytest.approx([lr_at_epoch(e, 0.01, 1e-3, 1, 4) for e in (1, 2, 3)], rel=1e-12)
    assert resumed.iteration == 20
    log = (tmp_path / "train.log").read_text()
    assert "config changed since the checkpoint, in effect from here: epochs 3 -> 4, lr 0.05 -> 0.01" in log


@pytest.mark.parametrize("opt, key", [("batch_size=8", "batch_size"), ("seed=7", "seed"),
                                      ("iters_per_epoch=6", "iters_per_epoch")])
def test_keys_that_fix_the_run_are_refused_on_resume(tmp_path, capsys, opt, key):
    run = tmp_path / "run"
    assert engine.main(Toy, toy_argv(tmp_path, run, "epochs=1"), prog="toy") == 0
    capsys.readouterr()
    assert engine.main(Toy, [*toy_argv(tmp_path, run, "epochs=2", opt), "--resume", "auto"], prog="toy") == 1
    one_line(capsys, f"toy: error: config key {key!r} cannot change on resume (")
    assert load_training_state(run / "checkpoints" / "latest.pth")["epoch"] == 1


def test_architecture_and_scale_are_fixed_on_resume(shared):
    cfg = load_config("configs/sisr_x4_small.json", SISR.schema())
    assert {"sf", "add_jpeg", "n_feat", "dep_K", "batch_size"} <= set(SISR(cfg).fixed_on_resume())


# --------------------------------------------------------------------------- disk and folder


def test_full_disk_during_a_checkpoint_is_one_line_and_keeps_the_last_one(tmp_path, monkeypatch, capsys):
    write_bytes, calls = Path.write_bytes, []

    def full_disk(path, data):  # the second write of latest.pth finds the disk full
        if path.name.startswith(".latest.pth."):
            calls.append(path)
            if len(calls) == 2:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return write_bytes(path, data)

    monkeypatch.setattr(Path, "write_bytes", full_disk)
    run = tmp_path / "run"
    assert engine.main(Toy, toy_argv(tmp_path, run), prog="toy") == 1
    latest = run / "checkpoints" / "latest.pth"
    one_line(capsys, f"toy: error: cannot write checkpoint {latest}: No space left on device; {latest} keeps "
                     f"the state of iteration 2")
    assert load_training_state(latest)["iteration"] == 2
    assert not [p for p in latest.parent.iterdir() if is_temporary_file(p)]


def test_unusable_save_dir_is_one_line(tmp_path, monkeypatch, capsys):
    file = tmp_path / "file"
    file.write_text("not a folder")
    assert engine.main(Toy, toy_argv(tmp_path, file), prog="toy") == 1
    one_line(capsys, f"--save_dir {file} is a file; choose a folder")
    assert engine.main(Toy, toy_argv(tmp_path, file / "run"), prog="toy") == 1
    one_line(capsys, f"{file / 'run'}: cannot write to this folder (")

    def refused(path, what):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))

    monkeypatch.setattr("utils.locking._lock_file", refused)
    assert engine.main(Toy, toy_argv(tmp_path, tmp_path / "locked"), prog="toy") == 1
    one_line(capsys, f"{tmp_path / 'locked'}: cannot write to this folder (Permission denied)")


@pytest.mark.slow
def test_a_second_run_on_the_same_folder_is_refused(tmp_path, capsys):
    run = tmp_path / "run"
    first = subprocess.Popen(toy_script(tmp_path, run, "step_sleep_s=0.5"), env=sub_env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (run / "checkpoints" / "latest.pth").exists() and first.poll() is None:
            assert time.monotonic() < deadline, "the first run did not start"
            time.sleep(0.05)
        assert engine.main(Toy, [*toy_argv(tmp_path, run), "--resume", "auto"], prog="toy") == 1
        one_line(capsys, f"toy: error: {run} is in use by another training run (pid {first.pid})")
    finally:
        first.kill()
        first.wait(timeout=60)
    assert engine.main(Toy, [*toy_argv(tmp_path, run), "--resume", "auto"], prog="toy") == 0  # a killed run frees it
    assert not (run / LOCK_NAME).exists()


@pytest.mark.slow
def test_a_run_killed_while_writing_a_checkpoint_resumes_exactly(tmp_path):
    engine.train(Toy, toy_config(tmp_path / "whole"), device="cpu")
    run = tmp_path / "run"
    proc = subprocess.run(toy_script(tmp_path, run, flags=["--kill-in-save", "2"]), env=sub_env(),
                          capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    checkpoints = run / "checkpoints"
    left = [p for p in checkpoints.iterdir() if is_temporary_file(p)]
    assert len(left) == 1 and load_training_state(checkpoints / "latest.pth")["iteration"] == 2
    resumed = engine.train(Toy, toy_config(run, resume="auto"), device="cpu")
    assert resumed.iteration == 15 and same(weights(tmp_path / "whole"), weights(run))
    assert not [p for p in checkpoints.iterdir() if is_temporary_file(p)]
    assert f"removed 1 temporary file(s) of interrupted writes: {left[0]}" in (run / "train.log").read_text()


# --------------------------------------------------------------------------- configs and data


@pytest.mark.parametrize("task, config, opts, message", [
    (DenoisingSyn, "configs/denoising_syn_small.json", ["n_feat=[]"], "config key 'n_feat': expected at least 1 value"),
    (DenoisingSyn, "configs/denoising_syn_small.json", ["patch_size=8", "n_feat=[4,4,4,4,4]"],
     "config keys 'patch_size' and 'n_feat': the network pads its input to multiples of 16, so patch_size must be "
     "at least 16, got 8"),
    (DenoisingReal, "configs/denoising_real_small.json", ["patch_size=8", "n_feat=[4,4,4,4,4]", "train_dirs=a",
                                                          "train_source=camera_synthetic", "train_pch_dir=a",
                                                          "val_dir=a"],
     "config keys 'patch_size' and 'n_feat': the network pads its input to multiples of 16"),
    (SISR, "configs/sisr_x4_small.json", ["hr_size=50"],
     "config keys 'hr_size' and 'sf': the HR crop (50) must be a multiple of the scale factor (4)"),
    (SISR, "configs/sisr_x4_small.json", ["hr_size=16"],
     "config keys 'hr_size' and 'k_size': the HR crop (16) must be at least as large as the blur kernel (21)"),
    (SISR, "configs/sisr_x4_small.json", ["hr_size=24", "n_feat=[16,16,16,16,16,16]"],
     "config keys 'hr_size' and 'n_feat': the network pads its input to multiples of 32"),
])
def test_configs_breaking_network_or_data_constraints_are_one_line(tmp_path, shared, capsys, task, config, opts,
                                                                     message):
    opts = [o.replace("=a", f"={shared / 'trainsets/CBSD432-sample'}") for o in opts]
    run = tmp_path / "run"
    argv = ["--config", config, "--device", "cpu", "--save_dir", str(run), *[a for o in opts for a in ("--opt", o)]]
    assert engine.main(task, argv, prog="train") == 1
    one_line(capsys, f"train: error: {message}")
    assert not run.exists()  # checked before anything is written


def _images(folder, count, size=48, bad=None):
    """``count`` small smooth PNG images in ``folder``; with ``bad``, that one (a name) truncated."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for k in range(count):
        im = np.kron(rng.random((size // 8, size // 8, 3)), np.ones((8, 8, 1))).astype(np.float32)
        write_image(folder / f"im{k}.png", im)
    if bad:
        data = (folder / "im0.png").read_bytes()
        (folder / bad).write_bytes(data[: len(data) // 2])
    return folder


def test_a_corrupt_training_image_stops_the_start_or_is_skipped_once(tmp_path, capsys, monkeypatch):
    folder = _images(tmp_path / "train", 3, bad="broken.png")
    opts = [*SYN_TINY, f"train_dirs={folder}"]
    argv = ["--config", "configs/denoising_syn_small.json", "--device", "cpu", "--save_dir", str(tmp_path / "run"),
            *[a for o in opts for a in ("--opt", o)]]
    assert engine.main(DenoisingSyn, argv, prog="train") == 1
    one_line(capsys, f"1 of 4 images cannot be read, first {folder / 'broken.png'}: ",
             "or skip them (skip_bad_images)")
    assert not (tmp_path / "run" / "checkpoints").exists()
    assert engine.main(DenoisingSyn, [*argv, "--opt", "skip_bad_images=true"], prog="train") == 0
    assert "1 of 4 images cannot be read" in (tmp_path / "run" / "train.log").read_text()
    assert (tmp_path / "run" / "image_check.json").is_file()
    checked = []
    monkeypatch.setattr("datasets.image_check.check_image_file", checked.append)
    resume = ["--opt", "skip_bad_images=true", "--opt", "epochs=2", "--resume", "auto"]
    assert engine.main(DenoisingSyn, [*argv, *resume], prog="train") == 0
    assert checked == []  # the resumed run took the verdicts from image_check.json


def test_sisr_and_real_trainers_check_their_training_images(tmp_path, shared):
    folder = _images(tmp_path / "hr", 3, size=64, bad="broken.png")
    sisr = SISR(load_config("configs/sisr_x4_small.json", SISR.schema(), [f"train_dirs={folder}", "hr_size=32"]))
    with pytest.raises(BadImagesError, match=f"first {folder / 'broken.png'}: "):
        sisr.build_train_set(4)
    noisy_dir = write_sidd_patches(tmp_path / "sidd", *noisy_pairs((3, 40, 40, 3)))
    gt = noisy_dir.parent / "gt" / "sidd_0001_0002.png"
    gt.write_bytes(gt.read_bytes()[:100])
    opts = [f"train_pch_dir={noisy_dir}", f"val_dir={shared / 'testsets/Set5'}", "patch_size=24"]
    real = DenoisingReal(load_config("configs/denoising_real_small.json", DenoisingReal.schema(), opts))
    with pytest.raises(BadImagesError, match=f"first {gt}: "):
        real.build_train_set(4)
    skipping = DenoisingReal(load_config("configs/denoising_real_small.json", DenoisingReal.schema(),
                                         [*opts, "skip_bad_images=true"]))
    data = skipping.build_train_set(4)
    assert [p.name for p in data.noisy_paths] == ["sidd_0001_0001.png", "sidd_0001_0003.png"]


@pytest.mark.parametrize("v73", [False, True])
def test_a_truncated_validation_file_is_one_line(tmp_path, capsys, v73):
    noisy_dir = write_sidd_patches(tmp_path / "sidd", *noisy_pairs((2, 40, 40, 3)))
    val = write_sidd_blocks(tmp_path / "val", *noisy_pairs((1, 2, 24, 24, 3), seed=2), v73=v73)
    gt = val / "ValidationGtBlocksSrgb.mat"
    gt.write_bytes(gt.read_bytes()[: gt.stat().st_size // 2])
    opts = [f"train_pch_dir={noisy_dir}", f"val_dir={val}", "patch_size=24", "n_feat=[8,16]", "dep_S=3",
            "n_resblocks=1", "num_workers=0"]
    argv = ["--config", "configs/denoising_real_small.json", "--device", "cpu", "--save_dir", str(tmp_path / "run"),
            *[a for o in opts for a in ("--opt", o)]]
    assert engine.main(DenoisingReal, argv, prog="train") == 1
    one_line(capsys, f"train: error: validation blocks: {gt}: truncated or damaged MATLAB file (")


# --------------------------------------------------------------------------- DDP


def _torchrun(tmp_path, save_dir, *opts, pid_dir):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            *toy_script(tmp_path, save_dir, *opts, flags=["--pid-dir", str(pid_dir)])[1:]]


def _kill_all(launcher, pid_dir):
    """SIGKILL the workers (their pids in ``pid_dir``; torchrun starts each in its own session), then
    the launcher."""
    for pid_file in pid_dir.glob("*.pid"):
        try:
            os.kill(int(pid_file.read_text()), signal.SIGKILL)
        except ProcessLookupError:
            pass
    launcher.kill()
    launcher.wait(timeout=60)


@pytest.mark.slow
def test_a_stalled_rank_ends_the_run_with_one_line(tmp_path):
    pid_dir, log = tmp_path / "pids", tmp_path / "out.log"
    pid_dir.mkdir()
    cmd = _torchrun(tmp_path, tmp_path / "run", "stall_at=3", "stall_rank=1", "ddp_timeout_s=5", pid_dir=pid_dir)
    with open(log, "w") as out:
        launcher = subprocess.Popen(cmd, env=sub_env(), stdout=out, stderr=subprocess.STDOUT)
    expected = "toy: error: rank 0: rank 1 did not answer within ddp_timeout_s=5 s (iteration 3, epoch 1)"
    try:
        deadline = time.monotonic() + 150
        while expected not in log.read_text() and launcher.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        text = log.read_text()
        assert expected in text, text[-3000:]
        line = next(ln for ln in text.splitlines() if expected in ln)
        assert line.endswith("it stalled or died; the run stops "
                             f"({tmp_path / 'run' / 'checkpoints' / 'latest.pth'} keeps the state of iteration 2)")
    finally:
        _kill_all(launcher, pid_dir)


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_ddp_ranks_all_stop_on_a_locked_folder(tmp_path):
    """Two processes of one DDP run (started by hand, so that no launcher ends a waiting rank) both
    exit with the line when another run holds the folder: rank 1 is told, it does not wait."""
    run, port = tmp_path / "run", _free_port()
    env = {**sub_env(), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    with folder_lock(run, what="training run"):
        ranks = [subprocess.Popen(toy_script(tmp_path, run), env={**env, "RANK": str(r), "LOCAL_RANK": "0"},
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for r in (0, 1)]
        try:
            errors = [rank.communicate(timeout=150)[1] for rank in ranks]
        finally:
            for rank in ranks:
                rank.kill()
                rank.wait(timeout=60)
    assert [rank.returncode for rank in ranks] == [1, 1], errors
    for err in errors:
        assert err.startswith(f"toy: error: {run} is in use by another training run (pid {os.getpid()})"), err
        assert err.count("\n") == 1, err
    assert not (run / "checkpoints").exists()


@pytest.mark.slow
def test_ddp_ranks_share_rank_0s_precision_choice(tmp_path):
    """With bf16=auto, rank 0's probe decides for every rank: a rank whose own probe says yes still
    trains in fp32 when rank 0's says no, so the run ends with the weights of a bf16=false run."""
    runs = {}
    for name, opts, flags in (("auto", ["bf16=auto"], ["--native-bf16-on-rank", "1"]), ("fp32", ["bf16=false"], [])):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               *toy_script(tmp_path, tmp_path / name, "epochs=1", *opts, flags=flags)[1:]]
        done = subprocess.run(cmd, env=sub_env(), capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        runs[name] = weights(tmp_path / name)
    assert "precision: fp32 (bf16=auto: probed on rank 0)" in (tmp_path / "auto" / "train.log").read_text()
    assert same(runs["auto"], runs["fp32"])


# --------------------------------------------------------------------------- script mode


def _kill_in_save(number):
    """Make the ``number``-th write of a latest.pth die (SIGKILL) half-way, as a power cut would."""
    atomic_write, calls = image_io.atomic_write, []

    def dying(path, write_fn):
        if Path(path).name == "latest.pth":
            calls.append(path)
            if len(calls) == number:
                with image_io.atomic_path(path) as tmp:
                    tmp.write_bytes(b"PK\x03\x04 half of a checkpoint")
                    os.kill(os.getpid(), signal.SIGKILL)
        return atomic_write(path, write_fn)

    image_io.atomic_write = dying


def _script(argv):
    """Run the toy trainer; ``--kill-in-save N``, ``--pid-dir DIR`` (write this process's pid
    there as <RANK>.pid) and ``--native-bf16-on-rank R`` (the bf16 probe says yes on rank R only)
    come first, in this order."""
    if argv[:1] == ["--kill-in-save"]:
        _kill_in_save(int(argv[1]))
        argv = argv[2:]
    if argv[:1] == ["--pid-dir"]:
        (Path(argv[1]) / f"{os.environ.get('RANK', '0')}.pid").write_text(str(os.getpid()))
        argv = argv[2:]
    if argv[:1] == ["--native-bf16-on-rank"]:
        rank, native = os.environ.get("RANK", "0"), argv[1]
        devices.cpu_bf16 = lambda: (rank == native, f"probed on rank {rank}")
        argv = argv[2:]
    import torch.utils.tensorboard  # noqa: F401  every rank imports it now: rank 0's log set-up stays short
    return engine.main(Toy, argv, prog="toy")


if __name__ == "__main__":
    sys.exit(_script(sys.argv[1:]))
