"""Scale augmentation of the training sets (``datasets.rescale``, config key ``scale_range``)."""
import numpy as np
import pytest
import torch

from datasets.camera_noise import CameraNoiseTrain
from datasets.denoising_syn import SyntheticDenoisingTrain
from datasets.rescale import random_rescale
from datasets.sisr import SISRTrain
from utils.image_io import write_image


def ramp(h, w):
    """uint8 H x W x 3 whose value rises by 1 per column (0 .. w - 1)."""
    return np.broadcast_to(np.arange(w, dtype=np.uint8)[None, :, None], (h, w, 3)).copy()


def test_off_returns_the_image_and_draws_nothing():
    image, rng = ramp(40, 60), np.random.default_rng(0)
    assert random_rescale(image, (1, 1), 8, rng) is image
    assert rng.uniform() == np.random.default_rng(0).uniform()


def test_shrinks_by_the_drawn_factor_and_keeps_the_dtype():
    rng = np.random.default_rng(5)
    factor = np.random.default_rng(5).uniform(0.5, 0.9)
    out = random_rescale(ramp(100, 200), (0.5, 0.9), 8, rng)
    assert out.dtype == np.uint8 and out.shape == (round(100 * factor), round(200 * factor), 3)
    slope = np.diff(out[:, 5:-5, 0].astype(float), axis=1).mean()
    assert slope == pytest.approx(1 / factor, rel=0.02)  # the content is shrunk, not cropped
    gray = random_rescale(np.zeros((100, 200, 1), np.float32), (0.5, 0.5), 8, rng)
    assert gray.shape == (50, 100, 1) and gray.dtype == np.float32


def test_never_shrinks_below_the_crop():
    out = random_rescale(ramp(80, 100), (0.5, 0.5), 60, np.random.default_rng(0))
    assert out.shape[:2] == (60, 75)
    small = ramp(30, 100)
    assert random_rescale(small, (0.5, 0.5), 40, np.random.default_rng(0)) is small


@pytest.mark.parametrize("bad", [(0.8, 0.6), (0, 1), (0.5, 1.2), (0.5, 0.6, 0.7)])
def test_bad_ranges_are_refused(tmp_path, bad):
    write_image(tmp_path / "ramp.png", ramp(64, 64))
    with pytest.raises(ValueError, match="scale_range"):
        SyntheticDenoisingTrain([tmp_path / "ramp.png"], 2, patch_size=16, scale_range=bad)
    with pytest.raises(ValueError, match="scale_range"):
        SISRTrain(tmp_path, 2, hr_size=16, sf=2, scale_range=bad)


def largest_step(channel: torch.Tensor) -> float:
    """The largest difference between neighbouring pixels of an H x W [0, 1] tensor, on the 0-255 scale
    (a flipped or rotated ramp crop has its step along either axis)."""
    x = channel.numpy() * 255
    return float(max(np.abs(np.diff(x, axis=0)).max(), np.abs(np.diff(x, axis=1)).max()))


CLEAN_CROP = {  # data set -> the clean (HR) crop of its sample 2, first channel
    "denoising": lambda folder, scale: SyntheticDenoisingTrain(
        [folder / "ramp.png"], 4, patch_size=32, seed=3, scale_range=scale)[2][1][0],
    "sisr": lambda folder, scale: SISRTrain(folder, 4, hr_size=32, sf=2, seed=3, scale_range=scale)[2][0][0],
    "camera": lambda folder, scale: CameraNoiseTrain(
        [folder / "ramp.png"], 4, pch_size=32, seed=3, scale_range=scale)[2][1][0],
}


@pytest.mark.parametrize("data", sorted(CLEAN_CROP))
def test_training_crops_come_from_the_shrunk_image(tmp_path, data):
    write_image(tmp_path / "ramp.png", ramp(120, 250))
    crop = CLEAN_CROP[data]
    assert largest_step(crop(tmp_path, (1, 1))) == pytest.approx(1, abs=0.1)
    assert largest_step(crop(tmp_path, (0.5, 0.5))) == pytest.approx(2, abs=0.1)

