"""A run folder (--save_dir) is "empty" only when it holds nothing of a run; nothing is left behind.

A folder that lost only ``checkpoints/latest.pth`` but keeps ``best.pth`` / ``models/`` is refused in
one line naming what it holds and the flags that go on (``--resume <best.pth>``, ``--fresh``), whether
the run is started plainly or with ``--resume auto``, and its files are untouched; ``--fresh`` starts
over, deleting them; logs alone are not a run. A start refused before or during its set-up (a missing
or unusable ``--resume``, ``lr=0``) leaves no new folder behind, and the temporaries of killed writes
are removed whenever the folder is taken. A full disk while writing the TensorBoard events or
``train.log`` ends in one line naming the file, no traceback (the events are written in the main
thread), and the last good checkpoint stays intact.
"""
import errno
import logging
import os

import pytest
import torch
from tensorboard.summary.writer.record_writer import RecordWriter

from test_training_failures import Toy, one_line, toy_argv
from utils import training as engine
from utils.image_io import is_temporary_file
from utils.training import logs
from utils.training.state import load_training_state, run_files


def _run(tmp_path, run, *flags, opts=()):
    return engine.main(Toy, [*toy_argv(tmp_path, run, *opts), *flags], prog="toy")


@pytest.fixture
def finished(tmp_path, capsys):
    """A finished toy run (3 epochs) whose checkpoints/latest.pth was then lost."""
    run = tmp_path / "run"
    assert _run(tmp_path, run) == 0
    (run / "checkpoints" / "latest.pth").unlink()
    capsys.readouterr()
    return run


def _contents(run):
    return {p: p.read_bytes() for p in run_files(run)}


@pytest.mark.parametrize("flags", [(), ("--resume", "auto")])
def test_a_run_that_lost_latest_is_refused_naming_its_files_and_kept(tmp_path, capsys, finished, flags):
    run, before = finished, _contents(finished)
    assert sorted(p.relative_to(run).as_posix() for p in before) == [
        "checkpoints/best.pth", "models/model_best.pth", "models/model_last.pth"]
    assert _run(tmp_path, run, *flags) == 1
    one_line(capsys, f"toy: error: {run} holds a run (checkpoints/best.pth, models/model_best.pth, "
                     f"models/model_last.pth) but no checkpoints/latest.pth: pass --resume {run}/checkpoints/best.pth "
                     f"to continue from its best epoch, --fresh to start over (deleting them)")
    assert _contents(run) == before


def test_fresh_starts_over_and_best_continues(tmp_path, capsys, finished):
    run = finished
    best = run / "checkpoints" / "best.pth"
    assert _run(tmp_path, run, "--fresh", "--resume", "auto") == 1
    one_line(capsys, "--fresh starts the run in", "it cannot be combined with --resume")
    old_best = best.read_bytes()
    assert _run(tmp_path, tmp_path / "other", "--resume", str(best)) == 0  # best.pth continues elsewhere
    assert _run(tmp_path, run, "--fresh", opts=["epochs=1"]) == 0
    log = (run / "train.log").read_text()
    assert "--fresh: deleted" in log and f"{run / 'models' / 'model_best.pth'}" in log
    assert load_training_state(run / "checkpoints" / "latest.pth")["epoch"] == 1  # the new run's
    assert best.read_bytes() != old_best and len(list((run / "tb").glob("events.out.tfevents.*"))) == 1
    assert len(list((tmp_path / "other" / "tb").glob("events.out.tfevents.*"))) == 1


def test_a_folder_holding_only_logs_starts_afresh(tmp_path):
    run = tmp_path / "run"
    (run / "tb").mkdir(parents=True)
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / ".latest.pth.0123456789ab.tmp.pth").write_bytes(b"the first save, killed")
    (run / "train.log").write_text("an earlier start that wrote no checkpoint\n")
    (run / "config.json").write_text("{}\n")
    assert _run(tmp_path, run, "--resume", "auto", opts=["epochs=1"]) == 0
    assert load_training_state(run / "checkpoints" / "latest.pth")["epoch"] == 1


@pytest.mark.parametrize("flags, opts, message", [
    (("--resume", "missing.pth"), (), "--resume: checkpoint not found: missing.pth"),
    ((), ("lr=0",), "config key 'lr': must be > 0, got 0.0"),
    ((), ("lr=1e-3", "lr_min=1e-2"), "config keys 'lr_min' and 'lr': the cosine decay goes from lr down to lr_min"),
])
def test_a_start_refused_before_set_up_creates_no_folder(tmp_path, capsys, flags, opts, message):
    run = tmp_path / "new"
    assert _run(tmp_path, run, *flags, opts=opts) == 1
    one_line(capsys, message)
    assert not run.exists()


def test_a_start_refused_during_set_up_removes_the_folder_it_created(tmp_path, capsys, finished):
    export = finished / "models" / "model_last.pth"
    run = tmp_path / "new" / "run"
    assert _run(tmp_path, run, "--resume", str(export)) == 1
    one_line(capsys, f"{export} is not a training checkpoint of this engine")
    assert not (tmp_path / "new").exists()  # the parent it made goes too


def test_temporaries_of_killed_writes_go_even_when_the_start_is_refused(tmp_path, capsys, finished):
    stale = [finished / "checkpoints" / ".latest.pth.0123456789ab.tmp.pth",
             finished / "models" / ".model_last.pth.ba9876543210.tmp.pth"]
    for path in stale:
        path.write_bytes(b"half a checkpoint")
        assert is_temporary_file(path)
    export = finished / "models" / "model_last.pth"
    assert _run(tmp_path, finished, "--resume", str(export)) == 1
    one_line(capsys, "is not a training checkpoint of this engine")
    assert not any(path.exists() for path in stale) and finished.is_dir()


def _full_disk_after(monkeypatch, cls, method, calls):
    """``cls.method`` raises ENOSPC from its call number ``calls`` on (for instances of the patched class)."""
    original, count = getattr(cls, method), [0]

    def patched(self, *args):
        count[0] += 1
        if count[0] >= calls:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return original(self, *args)

    monkeypatch.setattr(cls, method, patched)


def test_a_full_disk_under_the_tensorboard_events_is_one_line(tmp_path, monkeypatch, capfd):
    run = tmp_path / "run"
    _full_disk_after(monkeypatch, RecordWriter, "write", 12)  # past the first checkpoint (iteration 2)
    assert _run(tmp_path, run) == 1
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    events = next((run / "tb").glob("events.out.tfevents.*"))
    assert err.startswith(f"toy: error: cannot write {events}: No space left on device; the checkpoints"), err
    assert load_training_state(run / "checkpoints" / "latest.pth")["iteration"] >= 2


def test_a_full_disk_under_train_log_is_one_line(tmp_path, monkeypatch, capfd):
    run = tmp_path / "run"
    original, count = logging.StreamHandler.flush, [0]

    def flush(self):
        if isinstance(self, logs._RunLogFile):
            count[0] += 1
            if count[0] >= 8:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return original(self)

    monkeypatch.setattr(logging.StreamHandler, "flush", flush)
    assert _run(tmp_path, run) == 1
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and "Logging error" not in err, err
    assert err.startswith(f"toy: error: cannot write {run / 'train.log'}: No space left on device"), err
    assert torch.load(run / "checkpoints" / "latest.pth", weights_only=True)["iteration"] >= 1


def test_event_files_are_read_by_tensorboard_and_never_share_a_name(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    first, second = logs.EventFile(tmp_path / "a"), logs.EventFile(tmp_path / "a")  # one process, one second
    first.add_scalar("train/loss", 0.5, 3)
    first.add_image("val/0", torch.rand(3, 8, 8), 3)
    first.close()
    second.close()
    assert first.path != second.path and first.path.stat().st_size > second.path.stat().st_size > 0
    events = EventAccumulator(str(first.path))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [(3, 0.5)]
    assert events.Images("val/0")[0].width == 8
