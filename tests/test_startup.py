"""The whole restore (bench/startup.py): the quality of every path ``--precision auto`` can take, for
each demo's task and shipped weights; a restore that imports only what it uses; the benchmark's
per-round ratios and verdict."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from skimage import data as skimage_data

import networks
from bench import startup
from utils import devices
from utils.image_io import to_uint8, write_image
from utils.inference import Restorer, load_model
from utils.metrics import calculate_psnr

TASKS = {"denoising-syn": None, "denoising-real": None, "sisr": 4}
"""Each demo's task -> its scale (SR)."""


def _noisy(side: int) -> np.ndarray:
    """A side x side crop of 'chelsea' with i.i.d. noise of std 25 (0-255 units), float32 in about [0, 1]."""
    clean = skimage_data.chelsea()[100:100 + side, 150:150 + side] / 255.0
    return (clean + np.random.default_rng(0).standard_normal(clean.shape) * 25 / 255).astype(np.float32)


@pytest.mark.parametrize("bf16_units", [True, False], ids=["bf16-units", "no-bf16-units"])
@pytest.mark.parametrize("task", list(TASKS))
def test_the_auto_path_restores_within_50_db_of_fp32(monkeypatch, task, bf16_units):
    """auto picks bf16 + channels-last where the probe finds bf16 units, else fp32 through NNPACK;
    either way the shipped model's restoration stays >= 50 dB from eager fp32's."""
    monkeypatch.setattr(devices, "cpu_bf16", lambda: (bf16_units, "probed"))
    sf = TASKS[task]
    weights = networks.default_weights(task, sf)
    im = _noisy(48 if sf else 64)
    restored = {}
    for precision in ("fp32", "auto"):
        net = load_model(task, None, weights, torch.device("cpu"), sf=sf)
        restorer = Restorer(net, sf=sf, precision=precision)
        restored[precision] = to_uint8(restorer(im).image)
    assert (restorer.plan.precision, restorer.plan.backend) == (("bf16", "eager") if bf16_units else ("fp32", "fast"))
    assert restored["auto"].shape == restored["fp32"].shape
    assert calculate_psnr(restored["auto"], restored["fp32"]) >= 50


NOT_ON_THE_RESTORE_PATH = ("matplotlib", "tensorboard", "torch.utils.tensorboard", "scipy.ndimage", "scipy.io",
                           "h5py", "onnxruntime", "loss", "utils.training", "datasets.denoising_syn",
                           "datasets.camera_noise", "datasets.plain_noise", "datasets.sisr", "datasets.real",
                           "datasets.epoch_sampled", "datasets.rescale")
"""Training, plotting and data modules a restore of one file does not use before it draws."""

CHILD = """
import json, sys
from utils.inference import restorer

snapshots = []
restore = restorer.Restorer.__call__

def spy(self, *args, **kwargs):
    out = restore(self, *args, **kwargs)
    snapshots.append(sorted(sys.modules))
    return out

restorer.Restorer.__call__ = spy
import {demo}
status = {demo}.main({argv!r})
print(json.dumps({{"status": status, "after_forward": snapshots[0], "end": sorted(sys.modules)}}))
"""


def _loaded(modules, names):
    """The entries of ``names`` present in ``modules`` (a name counts with its submodules)."""
    return sorted({name for name in names for m in modules if m == name or m.startswith(name + ".")})


@pytest.mark.slow  # a fresh interpreter per demo restoring a small image: a few seconds each
@pytest.mark.parametrize("demo, picture", [("demo_test_syn", "noisy_noise_std.png"),
                                           ("demo_test_denoising_real", "noisy_noise_std.png"),
                                           ("demo_test_sisr", "noisy_kernel.png")])
def test_a_restore_imports_no_training_or_plotting_module_until_it_draws(root, tmp_path, demo, picture):
    """Run the demo's default restore of one file in a subprocess and read ``sys.modules`` when the
    forward pass has returned and at the end: nothing of training, plotting or the data sets before
    it draws; matplotlib only for the SR kernel figure (the denoisers' heat map is drawn with
    OpenCV). The SR restore's kernel picture needs the kernel maths of ``utils.degradation``
    (scipy.ndimage), which it loads at start-up."""
    image = tmp_path / "noisy.png"
    write_image(image, np.clip(_noisy(48), 0, 1))
    code = CHILD.format(demo=demo, argv=["-i", str(image), "-o", str(tmp_path / "out")])
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    record = json.loads(done.stdout.strip().splitlines()[-1])
    assert record["status"] == 0 and (tmp_path / "out" / picture).is_file()
    expected_early = {"scipy.ndimage"} if demo == "demo_test_sisr" else set()
    assert set(_loaded(record["after_forward"], NOT_ON_THE_RESTORE_PATH)) == expected_early
    drawn = [name for name in NOT_ON_THE_RESTORE_PATH if name not in ("matplotlib", "scipy.ndimage")]
    assert _loaded(record["end"], drawn) == []
    # the noise heat map is drawn with OpenCV; only the SR kernel figure needs matplotlib
    assert ("matplotlib" in record["end"]) == (demo == "demo_test_sisr")


def _run(wall: float, forward: float) -> dict:
    return {"wall": wall, "load_before": 1.0,
            "seconds": {"start": 0.5, "import": 1.0, "load": 0.1, "forward": forward, "rest": wall - forward - 1.6}}


def test_the_verdict_reads_the_ratios_of_the_rounds():
    """Each round's ratio pairs that round's runs: a slow round of both sides gives the same ratio;
    the target is met on the median of the rounds' ratios with an output >= 50 dB from the reference's."""
    runs = {"auto": [_run(5.0, 3.0), _run(10.0, 8.0), _run(5.5, 3.5)],
            "reference": [_run(10.0, 8.0), _run(20.0, 18.0), _run(10.0, 8.0)]}
    same = {"auto": np.zeros((4, 4, 3), np.uint8), "reference": np.zeros((4, 4, 3), np.uint8)}
    auto, reference = startup.summarise(runs, same, target=1.9)
    assert auto["round_ratios"] == pytest.approx([2.0, 2.0, 10 / 5.5])
    assert auto["round_ratio_median"] == pytest.approx(2.0) and auto["round_ratio_min"] == pytest.approx(10 / 5.5)
    assert auto["speedup_vs_reference"] == pytest.approx(10.0 / 5.5)  # the medians' ratio
    assert (auto["min_s"], auto["max_s"]) == (5.0, 10.0) and auto["spread"] == pytest.approx(5 / 5.5)
    assert auto["met"] and auto["psnr_vs_reference"] == "identical" and "met" not in reference
    line = startup.verdict([auto, reference], "run: fp32", 1.9)
    assert line.startswith("auto (run: fp32): 2.00x") and line.endswith("target 1.9x: met")
    assert not startup.summarise(runs, same, target=2.1)[0]["met"]
    off_by_one = {"auto": np.zeros((4, 4, 3), np.uint8), "reference": np.ones((4, 4, 3), np.uint8)}
    slightly_off = startup.summarise(runs, off_by_one, target=1.9)[0]
    assert slightly_off["psnr_vs_reference"] == pytest.approx(48.13, abs=0.01) and not slightly_off["met"]
    assert startup.verdict([slightly_off], "run: fp32", 1.9).endswith("NOT met")
