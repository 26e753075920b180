"""The guard of every entry point (utils/errors.py ``report_errors``): an unexpected exception ends in
one line naming the step, the place and the log holding its traceback, exit status 1; ``--debug`` or
``VIRNET_DEBUG=1`` print the traceback instead. Each script is made to fail inside a subprocess by
patching one of its functions before calling its ``main``. See docs/reliability.md."""
import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from utils.errors import report_errors, set_log_folder, set_step

ROOT = Path(__file__).resolve().parents[1]
LINE = re.compile(r"(?:\S+: )?error: unexpected error while (?P<step>.+?): ZeroDivisionError: planted bug "
                  r"\(at (?P<where>\S+) in \w+\); the full traceback is in (?P<log>\S+) \(rerun with --debug or "
                  r"VIRNET_DEBUG=1 to print it\)")


def _planted(code: str, *, env=None, timeout=120) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter at the repository root, with ``boom`` (raises
    ZeroDivisionError('planted bug')) defined."""
    prelude = "import sys\ndef boom(*args, **kwargs):\n    raise ZeroDivisionError('planted bug')\n"
    return subprocess.run([sys.executable, "-c", prelude + code], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def _one_line(run: subprocess.CompletedProcess) -> re.Match:
    """The guard's line: the only line of stderr, exit status 1, the log holding the traceback."""
    lines = [line for line in run.stderr.splitlines() if "error" in line]  # progress bars left out
    assert run.returncode == 1 and len(lines) == 1 and "Traceback" not in run.stderr, run.stderr
    match = LINE.fullmatch(lines[0])
    assert match, lines[0]
    log = Path(match["log"])
    text = log.read_text()
    assert text.startswith("Traceback (most recent call last):") and "ZeroDivisionError: planted bug" in text
    return match


def _image(path):
    cv2.imwrite(str(path), np.random.default_rng(0).integers(0, 256, (20, 24, 3), dtype=np.uint8))
    return path


def test_report_errors_names_the_step_and_writes_the_log(tmp_path, capsys):
    def run(argv):
        set_log_folder(tmp_path)
        set_step("testing the guard")
        assert argv == ["--keep"]  # --debug is taken out
        return 1 / 0

    assert report_errors(run, ["--keep"], "tool") == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("tool: error: unexpected error while testing the guard: "
                                                   "ZeroDivisionError: division by zero (at tests/test_guard.py:")
    (log,) = tmp_path.glob("error-tool-*.log")
    assert str(log) in err and "1 / 0" in log.read_text()
    with pytest.raises(ZeroDivisionError):
        report_errors(run, ["--keep", "--debug"])


def test_a_demo_failing_unexpectedly_prints_one_line_and_logs_in_its_output_folder(tmp_path, small_checkpoint):
    ckpt = small_checkpoint("denoising-syn", n_feat=[8, 16], n_resblocks=1, dep_S=2)
    src, out = _image(tmp_path / "a.png"), tmp_path / "out"
    code = ("import demo_test_syn\nfrom utils.inference import runner\nrunner.Runner.restore_file = boom\n"
            f"sys.exit(demo_test_syn.main(['--ckpt_path', {str(ckpt)!r}, '--device', 'cpu', '-i', {str(src)!r}, "
            f"'-o', {str(out)!r}] + sys.argv[1:]))")
    match = _one_line(_planted(code))
    assert match["step"] == "restoring a.png" and Path(match["log"]).parent == out
    debug = _planted(code, env={"VIRNET_DEBUG": "1"})
    assert debug.returncode == 1 and "Traceback (most recent call last)" in debug.stderr
    assert "ZeroDivisionError: planted bug" in debug.stderr


@pytest.mark.parametrize("tool, patch, argv, step", [
    ("datasets.prepare_sisr_patches", "crop_image", "['--in_dirs', HR, '--out_dir', OUT, '--workers', '1', "
     "'--pch_size', '8']", "cutting patches"),
    ("utils.download_weights", "fetch_released", "['sisr-x4', '--dest', OUT]", "fetching sisr-x4"),
    ("utils.inference.export", "_export_onnx", "[HR + '/a.png', OUT + '/x.onnx']", "starting"),
])
def test_tools_failing_unexpectedly_print_one_line(tmp_path, tool, patch, argv, step):
    hr = tmp_path / "hr"
    hr.mkdir()
    _image(hr / "a.png")
    code = (f"import {tool} as tool\ntool.{patch} = boom\nHR, OUT = {str(hr)!r}, {str(tmp_path / 'out')!r}\n"
            f"sys.exit(tool.main({argv}))")
    match = _one_line(_planted(code))
    assert match["step"] == step


def test_a_trainer_failing_unexpectedly_prints_one_line(tmp_path):
    code = ("import train_denoising_syn\nfrom utils.training import launch\nlaunch.train = boom\n"
            "sys.exit(train_denoising_syn.main(train_denoising_syn.DenoisingSyn, ['--config', "
            f"'configs/denoising_syn_small.json', '--save_dir', {str(tmp_path / 'run')!r}, '--device', 'cpu']))")
    match = _one_line(_planted(code))
    assert match["step"] == "training"
