"""Nothing silent, nothing lost: one run per folder (utils.locking), the training-set start-up
check (datasets.image_check) and the failure modes of the two preparation scripts: a busy or
unwritable output folder, Ctrl-C, a full disk, truncated inputs, temporaries of a killed run and
the re-run that corrects a failed prepare_sidd run."""
import errno
import logging
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
import pytest

from datasets import image_check, prepare_sidd, prepare_sisr_patches
from datasets.image_check import BadImagesError, check_images
from real_fixtures import write_sidd_medium
from utils.image_io import check_image_file, read_image_uint8
from utils.locking import LOCK_NAME, FolderLockError, folder_lock

ROOT = Path(__file__).resolve().parents[1]
RNG = np.random.default_rng(18)
STALE = ".sidd_0001_0001.png.0123456789ab.tmp.png"  # a temporary name of atomic_write

HOLDER = """
import sys, time
from utils.locking import folder_lock
with folder_lock(sys.argv[1], what="test holder"):
    print("locked", flush=True)
    time.sleep(60)
"""


def _lines(err: str) -> list[str]:
    """Lines of captured stderr without the progress bars."""
    return [ln for ln in err.replace("\r", "\n").splitlines()
            if ln.strip() and "SIDD patches" not in ln and not ln.startswith("images:")]


def _hidden(folder: Path) -> list[Path]:
    """Hidden files (temporaries, lock file) anywhere below ``folder``."""
    return list(folder.rglob(".*"))


@contextmanager
def _holder(folder: Path):
    """Another process holding the lock of ``folder``; killed with SIGKILL on exit."""
    child = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], cwd=ROOT,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == "locked\n"
        yield child
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        child.stdout.close()


def _full_disk_on_call(monkeypatch, n: int, exc=None):
    """Make the ``n``-th ``Path.write_bytes`` write half its data, then raise ``exc`` (default: a
    full disk)."""
    real = Path.write_bytes
    calls = []

    def write_bytes(self, data):
        calls.append(self)
        if len(calls) < n:
            return real(self, data)
        real(self, data[:len(data) // 2])
        raise exc or OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Path, "write_bytes", write_bytes)


# ---------------------------------------------------------------- one run per folder

def test_second_process_gets_one_line_and_a_killed_holder_frees_the_folder(tmp_path, capsys):
    out, hr = tmp_path / "out", tmp_path / "hr"
    hr.mkdir()
    cv2.imwrite(str(hr / "x.png"), RNG.integers(0, 256, (40, 40, 3), dtype=np.uint8))
    with _holder(out) as holder:
        busy = (f"{out} is in use by another test holder (pid {holder.pid}); wait for it or "
                f"choose another folder")
        with pytest.raises(FolderLockError) as info:
            with folder_lock(out, what="training run"):
                pass
        assert str(info.value) == busy
        assert prepare_sisr_patches.main(["--in_dirs", str(hr), "--out_dir", str(out),
                                          "--pch_size", "32", "--workers", "1"]) == 1
        assert _lines(capsys.readouterr().err) == [f"prepare_sisr_patches: error: {busy}"]
        write_sidd_medium(tmp_path / "sidd", 1, shape=(48, 40))
        assert _sidd(capsys, *_sidd_args(tmp_path / "sidd", out)) == (1, [f"error: {busy}"])
    assert (out / LOCK_NAME).exists()  # left behind by the killed holder, but no longer locked
    with folder_lock(out, what="training run"):
        pass
    assert list(out.iterdir()) == []


def test_lock_is_released_on_exit_and_errors_are_one_line(tmp_path):
    run = tmp_path / "runs" / "a"
    with folder_lock(run, what="training run") as folder:
        assert folder == run
        assert (run / LOCK_NAME).read_text() == f"{os.getpid()} training run\n"
        busy = rf"in use by another training run \(pid {os.getpid()}\)"
        with pytest.raises(FolderLockError, match=busy):
            with folder_lock(run):
                pass
    assert list(run.iterdir()) == []
    with pytest.raises(KeyboardInterrupt):
        with folder_lock(run):
            raise KeyboardInterrupt
    with folder_lock(run):
        pass
    (tmp_path / "file").write_text("")
    with pytest.raises(FolderLockError) as info:
        with folder_lock(tmp_path / "file" / "run"):
            pass
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'file' / 'run'}: cannot write to this folder (")
    assert message.endswith("); choose another folder") and "\n" not in message


# ---------------------------------------------------------------- training-set start-up check

@pytest.fixture
def image_set(tmp_path):
    """Six images, the 2nd (a truncated JPEG) and the 5th (a truncated PNG) bad; returns
    (paths, bad paths, good bytes of the JPEG)."""
    folder = tmp_path / "set"
    folder.mkdir()
    paths = []
    for i, ext in enumerate([".png", ".jpg", ".png", ".jpg", ".png", ".bmp"]):
        path = folder / f"{i}{ext}"
        assert cv2.imwrite(str(path), RNG.integers(0, 256, (24, 20, 3), dtype=np.uint8))
        paths.append(path)
    jpeg = paths[1].read_bytes()
    for path in (paths[1], paths[4]):
        path.write_bytes(path.read_bytes()[:300])
    return paths, [paths[1], paths[4]], jpeg


def test_check_images_raises_one_line_naming_the_bad_files(image_set, tmp_path):
    paths, bad, _ = image_set
    with pytest.raises(BadImagesError) as info:
        check_images(paths)
    message = str(info.value)
    assert message.startswith(f"2 of 6 images cannot be read, first {bad[0]}: truncated JPEG file")
    assert f"(also {bad[1]})" in message and "\n" not in message
    many = [tmp_path / f"missing{i}.png" for i in range(5)]
    with pytest.raises(BadImagesError, match=r"^5 of 5 .* \(also .*missing1.png, .*missing2.png "
                                             r"and 2 more\); replace or remove them"):
        check_images(many)


def test_check_images_skips_bad_files_with_a_warning(image_set, caplog):
    paths, bad, _ = image_set
    with caplog.at_level(logging.WARNING, logger="virnet.data"):
        good = check_images(map(str, paths), skip_bad=True)
    assert good == [p for p in paths if p not in bad]
    message, = caplog.messages
    assert message.startswith(f"2 of 6 images cannot be read, first {bad[0]}: truncated JPEG")
    assert message.endswith(f"(also {bad[1]}); skipping them")


def test_check_images_cache_avoids_checking_again(image_set, tmp_path, monkeypatch):
    paths, bad, jpeg = image_set
    calls = []

    def counting(path):
        calls.append(Path(path))
        return check_image_file(path)

    monkeypatch.setattr(image_check, "check_image_file", counting)
    cache = tmp_path / "image_check.json"
    good = check_images(paths, cache, skip_bad=True)
    assert calls == paths and cache.is_file()
    calls.clear()
    assert check_images(paths, cache, skip_bad=True) == good and calls == []
    with pytest.raises(BadImagesError):
        check_images(paths, cache)
    assert calls == []
    bad[0].write_bytes(jpeg)  # repaired: new size and time, checked again, alone
    assert check_images(paths, cache, skip_bad=True) == [p for p in paths if p != bad[1]]
    assert calls == [bad[0]]
    calls.clear()
    cache.write_text('{"version": 1, "files": ')  # a damaged cache is ignored and rewritten
    check_images(paths, cache, skip_bad=True)
    assert calls == paths
    assert not _hidden(tmp_path)


# ---------------------------------------------------------------- prepare_sidd

def _sidd(capsys, *args) -> tuple[int, list[str]]:
    """Run prepare_sidd's command line in-process: (exit status, stderr lines)."""
    try:
        prepare_sidd.main([str(a) for a in args])
        status = 0
    except SystemExit as exc:
        status = exc.code
    return status, _lines(capsys.readouterr().err)


def _sidd_args(root: Path, out: Path, *extra) -> list:
    return ["--sidd_dir", root, "--out_dir", out, "--pch_size", 32, "--per_num_pch", 3,
            "--seed", 5, "--workers", 1, *extra]


def _numbers(out: Path) -> dict[int, int]:
    """Image number -> how many complete noisy + clean patches of it exist."""
    counts: dict[int, int] = {}
    for path in list((out / "noisy").iterdir()) + list((out / "gt").iterdir()):
        check_image_file(path)
        counts[int(path.name[5:9])] = counts.get(int(path.name[5:9]), 0) + 1
    return counts


def test_prepare_sidd_truncated_input_stops_with_its_name_and_resumes(tmp_path, capsys):
    pairs = write_sidd_medium(tmp_path / "sidd", 2, shape=(48, 40))
    good = pairs[1][0].read_bytes()
    pairs[1][0].write_bytes(good[:len(good) // 2])
    out = tmp_path / "out"
    assert _sidd(capsys, *_sidd_args(tmp_path / "sidd", out)) == (1, [
        f"error: {pairs[1][0]}: truncated PNG file (no IEND chunk); replace the file and run "
        f"the same command again"])
    assert _numbers(out) == {1: 6} and not _hidden(out)
    pairs[1][0].write_bytes(good)
    assert _sidd(capsys, *_sidd_args(tmp_path / "sidd", out)) == (0, [])
    assert _numbers(out) == {1: 6, 2: 6}


def test_prepare_sidd_corrected_rerun_is_accepted_a_different_one_refused(tmp_path, capsys):
    root, out = tmp_path / "sidd", tmp_path / "out"
    pairs = write_sidd_medium(root, 3, shape=(48, 40))
    pairs[1][1].write_bytes(b"broken")
    assert _sidd(capsys, *_sidd_args(root, out))[0] == 1  # stops at image 2, image 1 cut
    # the correction: the bad scene removed; image 3 becomes number 2 (the old code refused this)
    for path in pairs[1]:
        path.unlink()
    pairs[1][0].parent.rmdir()
    assert _sidd(capsys, *_sidd_args(root, out)) == (0, [])
    assert _numbers(out) == {1: 6, 2: 6}
    noisy = read_image_uint8(pairs[2][0])
    (r, c), = prepare_sidd.patch_corners(5, 2, 48, 40, 32, 1)
    np.testing.assert_array_equal(read_image_uint8(out / "noisy" / "sidd_0002_0001.png"),
                                  noisy[r:r + 32, c:c + 32])
    # a genuinely different run into the same folder: refused, nothing written
    before = sorted(p.name for p in (out / "noisy").iterdir())
    status, err = _sidd(capsys, *_sidd_args(root, out)[:-4], "--seed", 6, "--workers", 1)
    assert status == 1 and len(err) == 1
    assert err[0].startswith(f"error: {out}: holds patches of 2 image(s) made with other "
                             f"settings or images (first sidd_0001_*.png")
    write_sidd_medium(tmp_path / "other", 1, shape=(48, 40), seed=3)
    status, err = _sidd(capsys, *_sidd_args(tmp_path / "other", out))
    assert status == 1 and "holds patches of 1 image(s)" in err[0]  # number 2 would vanish
    assert sorted(p.name for p in (out / "noisy").iterdir()) == before


def test_prepare_sidd_failed_before_any_patch_accepts_new_settings(tmp_path, capsys):
    root, out = tmp_path / "sidd", tmp_path / "out"
    write_sidd_medium(root, 1, shape=(48, 40))
    status, err = _sidd(capsys, *_sidd_args(root, out, "--pch_size", 64))
    assert status == 1 and "smaller than the patch size 64" in err[0]
    assert _sidd(capsys, *_sidd_args(root, out)) == (0, [])
    assert _numbers(out) == {1: 6}


def test_prepare_sidd_full_disk_unwritable_folder_and_stale_temporaries(tmp_path, capsys,
                                                                       monkeypatch):
    root, out = tmp_path / "sidd", tmp_path / "out"
    write_sidd_medium(root, 1, shape=(48, 40))
    (out / "noisy").mkdir(parents=True)
    (out / "noisy" / STALE).write_bytes(b"half")  # a killed run's leftovers
    (out / ".prepare_sidd.json.00aa00aa00aa.tmp.json").write_text("{")
    with monkeypatch.context() as patch:
        _full_disk_on_call(patch, 4)
        status, err = _sidd(capsys, *_sidd_args(root, out))
    full = out / "gt" / "sidd_0001_0002.png"
    assert (status, err) == (1, [f"error: No space left on device: {full}"])
    assert not _hidden(out) and _numbers(out) == {1: 3}
    assert _sidd(capsys, *_sidd_args(root, out)) == (0, [])
    assert _numbers(out) == {1: 6}
    (tmp_path / "file").write_text("")
    status, err = _sidd(capsys, *_sidd_args(root, tmp_path / "file" / "out"))
    assert status == 1 and len(err) == 1
    assert err[0].startswith(f"error: {tmp_path / 'file' / 'out'}: cannot write to this folder (")


def test_prepare_sidd_ctrl_c_stops_cleanly_with_workers(tmp_path):
    root, out = tmp_path / "sidd", tmp_path / "out"
    write_sidd_medium(root, 8, shape=(64, 64))
    cmd = [sys.executable, "-m", "datasets.prepare_sidd", "--sidd_dir", str(root), "--out_dir",
           str(out), "--pch_size", "32", "--per_num_pch", "60", "--workers", "2"]
    # a shell's background job starts with Ctrl-C ignored, and Python keeps an ignored SIGINT
    # ignored: the child gets the default disposition whatever this process inherited
    child = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True, start_new_session=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 60
        while not any((out / "gt").glob("sidd_*")) and time.monotonic() < deadline:
            time.sleep(0.01)
        os.killpg(child.pid, signal.SIGINT)  # Ctrl-C reaches the whole process group
        _, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
    assert child.returncode == 130, err
    assert "Traceback" not in err
    assert _lines(err)[-1] == "interrupted; run the same command again to continue"
    assert not _hidden(out)  # no temporary file, no lock file
    written = sum(_numbers(out).values())  # every patch written is complete
    assert 0 < written < 8 * 120


# ---------------------------------------------------------------- prepare_sisr_patches

SETTINGS = prepare_sisr_patches.SETTINGS_FILE


def _sisr(folder: Path, out: Path, workers: int = 1) -> int:
    return prepare_sisr_patches.main(["--in_dirs", str(folder), "--prefixes", "a", "--out_dir",
                                      str(out), "--pch_size", "32", "--stride", "32",
                                      "--workers", str(workers)])


@pytest.fixture
def hr(tmp_path):
    """An HR folder: good.png (64 x 64: 4 patches) and trunc.jpg (a truncated 64 x 96 JPEG);
    returns (folder, the JPEG's good bytes)."""
    folder = tmp_path / "hr"
    folder.mkdir()
    cv2.imwrite(str(folder / "good.png"), RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    jpeg = cv2.imencode(".jpg", RNG.integers(0, 256, (64, 96, 3), dtype=np.uint8))[1].tobytes()
    (folder / "trunc.jpg").write_bytes(jpeg[:len(jpeg) // 2])
    return folder, jpeg


def test_prepare_sisr_skips_a_truncated_image_and_names_it(hr, tmp_path, capsys):
    folder, jpeg = hr
    out = tmp_path / "out"
    assert _sisr(folder, out) == 1
    captured = capsys.readouterr()
    assert _lines(captured.err) == [f"prepare_sisr_patches: error: {folder / 'trunc.jpg'}: "
                                    f"truncated JPEG file (no end-of-image marker after the "
                                    f"image data)"]
    assert "1 cut (4 patches written), 0 already done, 0 too small, 1 failed" in captured.out
    assert sorted(p.name for p in out.iterdir()) == [f"a_good_{n:05d}.png" for n in range(1, 5)] + [SETTINGS]
    (folder / "trunc.jpg").write_bytes(jpeg)
    assert _sisr(folder, out, workers=2) == 0
    assert "1 cut (6 patches written), 1 already done" in capsys.readouterr().out


def test_prepare_sisr_full_disk_ctrl_c_and_stale_temporaries(hr, tmp_path, capsys, monkeypatch):
    folder, jpeg = hr
    (folder / "trunc.jpg").write_bytes(jpeg)
    out = tmp_path / "out"
    out.mkdir()
    (out / ".a_good_00001.png.0123456789ab.tmp.png").write_bytes(b"half")
    with monkeypatch.context() as patch:
        _full_disk_on_call(patch, 2)
        assert _sisr(folder, out) == 1
    captured = capsys.readouterr()
    assert "removed 1 temporary file(s) of an interrupted run" in captured.out
    assert _lines(captured.err) == [f"prepare_sisr_patches: error: No space left on device: "
                                    f"{out / 'a_good_00002.png'}"]
    assert sorted(p.name for p in out.iterdir()) == ["a_good_00001.png", SETTINGS]
    with monkeypatch.context() as patch:
        _full_disk_on_call(patch, 3, KeyboardInterrupt())
        assert _sisr(folder, out) == 130
    assert _lines(capsys.readouterr().err) == [
        "prepare_sisr_patches: interrupted; run the same command again to continue"]
    assert sorted(p.name for p in out.iterdir()) == [f"a_good_{n:05d}.png" for n in range(1, 4)] + [SETTINGS]
    assert _sisr(folder, out) == 0
    assert len(list(out.iterdir())) == 10 + 1 and not _hidden(out)  # the patches and the settings record
    assert _sisr(folder, tmp_path / "hr" / "good.png" / "out") == 1
    err = _lines(capsys.readouterr().err)
    assert len(err) == 1 and "good.png/out: cannot write to this folder (" in err[0]
