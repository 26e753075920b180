"""Camera-noise synthesis (Brooks et al. 2019): the unprocess / process round trip, the sampled
parameters, the heteroscedastic raw noise, the Bayer mosaic and demosaic, and the training set."""
import math

import numpy as np
import pytest
import torch

from datasets.camera_noise import (BLUE_GAIN, RED_GAIN, SHOT_RANGE, CameraNoiseTrain, add_shot_read_noise,
                                   demosaic, mosaic, process, random_noise_levels, random_rgb2cam,
                                   sample_params, synthesize_camera_noise, unprocess)
from datasets.denoising_syn import random_crop, to_float
from datasets.real import mixup
from datasets.sisr import jpeg_compress
from utils.augment import augment
from utils.degradation import noise_prior
from utils.image_io import list_images, read_image, read_image_uint8
from utils.seeding import sample_rng


@pytest.fixture(scope="module")
def photo(shared) -> np.ndarray:
    """The first CBSD68 image, cropped to even sides (float32 RGB in [0, 1])."""
    image = read_image(list_images(shared / "testsets" / "CBSD68")[0])
    return image[:image.shape[0] // 2 * 2, :image.shape[1] // 2 * 2]


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return 10 * math.log10(1 / float(np.mean(np.square(a.astype(np.float64) - b))))


# ---------------------------------------------------------------- pipeline

def test_round_trip_without_noise(photo):
    rng = np.random.default_rng(0)
    for _ in range(3):
        params = sample_params(rng)
        raw = unprocess(photo, params)
        assert raw.dtype == np.float32 and raw.shape == photo.shape
        assert np.abs(raw - photo).mean() > 0.05  # the raw really is another image
        assert np.abs(process(raw, params) - photo).max() < 1 / 255


def test_round_trip_of_highlights():
    """Bright and white pixels, where the inverse gains fade to 1, come back too."""
    bright = np.array([[[1.0, 1.0, 1.0], [1.0, 0.97, 0.9], [0.99, 1.0, 0.95], [1.0, 0.8, 0.3]]],
                      np.float32)
    rng = np.random.default_rng(1)
    for _ in range(5):
        params = sample_params(rng)
        assert np.abs(process(unprocess(bright, params), params) - bright).max() < 1 / 255


def test_white_balance_inversion_preserves_highlights():
    params = sample_params(np.random.default_rng(2))
    white = unprocess(np.ones((2, 2, 3), np.float32), params)
    np.testing.assert_allclose(white, 1.0, atol=1e-5)  # saturated, not scaled by 1 / gains
    grey = unprocess(np.full((2, 2, 3), 0.5, np.float32), params)[0, 0]  # grey stays grey before gains
    np.testing.assert_allclose(grey[0] / grey[1], 1 / params.red_gain, rtol=1e-4)
    np.testing.assert_allclose(grey[2] / grey[1], 1 / params.blue_gain, rtol=1e-4)


def test_sampled_pipeline_parameters():
    rng = np.random.default_rng(3)
    draws = [sample_params(rng) for _ in range(300)]
    for p in draws:
        np.testing.assert_allclose(p.rgb2cam.sum(axis=1), 1.0, atol=1e-5)
        assert RED_GAIN[0] <= p.red_gain <= RED_GAIN[1] and BLUE_GAIN[0] <= p.blue_gain <= BLUE_GAIN[1]
        assert 1.0 <= p.rgb_gain <= 2.0 and SHOT_RANGE[0] <= p.shot <= SHOT_RANGE[1]
        assert p.jpeg_quality is None
    assert np.mean([1 / p.rgb_gain for p in draws]) == pytest.approx(0.8, abs=0.02)
    first, second = random_rgb2cam(rng), random_rgb2cam(rng)
    assert np.abs(first - second).max() > 1e-3


def test_read_noise_follows_the_log_linear_camera_line():
    rng = np.random.default_rng(4)
    shot, read = np.log(np.array([random_noise_levels(rng) for _ in range(4000)])).T
    slope, intercept = np.polyfit(shot, read, 1)
    assert slope == pytest.approx(2.18, abs=0.03)
    assert intercept == pytest.approx(1.2, abs=0.2)
    assert np.std(read - (slope * shot + intercept)) == pytest.approx(0.26, abs=0.015)
    assert shot.min() >= math.log(1e-4) and shot.max() <= math.log(1.2e-2)
    assert np.ptp(shot) > 0.9 * math.log(120)  # the whole range is used


@pytest.mark.parametrize("shot, read", [(1e-2, 1e-4), (1e-3, 2e-6)])
def test_raw_noise_variance_is_shot_times_signal_plus_read(shot, read):
    levels = np.linspace(0.0, 1.0, 11, dtype=np.float32)
    n = 20000
    clean = np.repeat(levels[:, None], n, axis=1)
    noisy = add_shot_read_noise(clean, shot, read, np.random.default_rng(5))
    assert noisy.dtype == np.float32
    variance = shot * levels + read
    empirical = (noisy - clean).var(axis=1, ddof=1)
    standard_error = variance * math.sqrt(2 / (n - 1))
    assert np.all(np.abs(empirical - variance) < 4 * standard_error)
    assert np.all(np.abs((noisy - clean).mean(axis=1)) < 4 * np.sqrt(variance / n))


def test_noise_off_returns_the_raw():
    raw = np.random.default_rng(6).uniform(0, 1, (4, 6, 4)).astype(np.float32)
    np.testing.assert_array_equal(add_shot_read_noise(raw, 0.0, 0.0, np.random.default_rng(0)), raw)


def test_mosaic_layout_and_bilinear_demosaic():
    rng = np.random.default_rng(7)
    image = rng.uniform(0, 1, (8, 10, 3)).astype(np.float32)
    bayer = mosaic(image)
    assert bayer.shape == (4, 5, 4)
    np.testing.assert_array_equal(bayer[1, 2], [image[2, 4, 0], image[2, 5, 1], image[3, 4, 1], image[3, 5, 2]])
    full = demosaic(bayer)
    assert full.shape == image.shape and full.dtype == np.float32
    np.testing.assert_array_equal(mosaic(full), bayer)  # samples kept at their own sites
    np.testing.assert_allclose(demosaic(mosaic(np.full_like(image, 0.3))), 0.3, atol=1e-6)
    rows, cols = np.mgrid[0:8, 0:10].astype(np.float32)
    ramp = np.stack([rows + 2 * cols, 3 * rows - cols, cols - rows], axis=2)
    np.testing.assert_allclose(demosaic(mosaic(ramp))[1:-1, 1:-1], ramp[1:-1, 1:-1], atol=1e-4)


# ---------------------------------------------------------------- synthesis

def test_noisy_images_are_plausibly_noisy(photo):
    clean = photo[100:164, 200:264]
    rng = np.random.default_rng(8)
    psnrs = []
    for _ in range(40):
        noisy, params = synthesize_camera_noise(clean, rng)
        assert noisy.shape == clean.shape and noisy.dtype == np.float32
        assert noisy.min() >= 0 and noisy.max() <= 1
        assert np.abs(noisy * 255 - np.round(noisy * 255)).max() < 1e-3  # 8-bit values
        psnrs.append(_psnr(noisy, clean))
    assert 20 < np.mean(psnrs) < 45
    assert max(psnrs) - min(psnrs) > 10  # noise levels really vary between cameras


def test_jpeg_compresses_the_same_noisy_sample(photo):
    clean = photo[:64, :64]
    plain, params = synthesize_camera_noise(clean, np.random.default_rng(9))
    jpeg, jpeg_params = synthesize_camera_noise(clean, np.random.default_rng(9), jpeg_quality=(80, 80))
    assert jpeg_params.jpeg_quality == 80 and jpeg_params.shot == params.shot
    assert not np.array_equal(jpeg, plain)
    np.testing.assert_array_equal(jpeg, jpeg_compress(plain, 80))


@pytest.mark.parametrize("bad", [(0, 90), (90, 80), (50, 101), 90])
def test_bad_jpeg_range(photo, bad):
    with pytest.raises(ValueError, match="jpeg_quality"):
        synthesize_camera_noise(photo[:8, :8], np.random.default_rng(0), jpeg_quality=bad)


def test_odd_image_size_is_rejected(photo):
    with pytest.raises(ValueError, match="even"):
        synthesize_camera_noise(photo[:9, :8], np.random.default_rng(0))


# ---------------------------------------------------------------- training set

@pytest.fixture(scope="module")
def train_paths(shared):
    return list_images(shared / "trainsets" / "CBSD432-sample")[:3]


def test_training_samples(train_paths):
    data = CameraNoiseTrain(train_paths, length=6, pch_size=32, seed=3)
    assert len(data) == 6
    noisy, clean = data[2]
    for x in (noisy, clean):
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32
        assert x.min() >= 0 and x.max() <= 1
    assert not torch.equal(noisy, clean) and 10 * math.log10(1 / float(((noisy - clean) ** 2).mean())) > 12
    batch = [torch.stack(items) for items in zip(*(data[i] for i in range(4)))]
    mixed_noisy, mixed_clean = mixup(*batch, generator=torch.Generator().manual_seed(0))
    assert noise_prior(mixed_noisy, mixed_clean, 7).shape == (4, 3, 32, 32)


def test_clean_crop_follows_the_documented_draws(train_paths):
    """image, crop, flip / rotation mode: recomputed from sample_rng in the documented order."""
    data = CameraNoiseTrain(train_paths, length=6, pch_size=24, seed=2)
    data.set_epoch(3)
    modes = set()
    for index in range(6):
        rng = sample_rng(2, 3, index)
        image = read_image_uint8(train_paths[int(rng.integers(len(train_paths)))])
        crop = random_crop(image, 24, rng)
        mode = int(rng.integers(8))
        modes.add(mode)
        expected = to_float(augment(crop, mode)).transpose(2, 0, 1)
        np.testing.assert_array_equal(data[index][1].numpy(), expected)
    assert modes != {0}


def test_training_samples_are_reproducible(train_paths):
    data = CameraNoiseTrain(train_paths, length=4, pch_size=16, seed=5)
    forward = [data[i] for i in range(4)]
    again = CameraNoiseTrain(train_paths, length=4, pch_size=16, seed=5)
    backward = [again[i] for i in reversed(range(4))][::-1]
    for a, b in zip(forward, backward):
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    data.set_epoch(1)
    assert not torch.equal(data[0][0], forward[0][0])
    data.set_epoch(0)
    assert torch.equal(data[0][0], forward[0][0])


def test_jpeg_switch_changes_the_noisy_image_only(train_paths):
    plain = CameraNoiseTrain(train_paths, length=2, pch_size=16, seed=1)[1]
    jpeg = CameraNoiseTrain(train_paths, length=2, pch_size=16, seed=1, jpeg_quality=(60, 90))[1]
    assert torch.equal(plain[1], jpeg[1]) and not torch.equal(plain[0], jpeg[0])


@pytest.mark.parametrize("kwargs, message", [
    (dict(image_paths=[]), "at least one image"),
    (dict(pch_size=33), "pch_size"),
    (dict(pch_size=6), "pch_size"),
    (dict(length=0), "length"),
    (dict(jpeg_quality=(0, 50)), "jpeg_quality"),
])
def test_bad_arguments(train_paths, kwargs, message):
    args = dict(image_paths=train_paths, length=4, pch_size=16) | kwargs
    with pytest.raises(ValueError, match=message):
        CameraNoiseTrain(**args)


def test_index_out_of_range(train_paths):
    with pytest.raises(IndexError):
        CameraNoiseTrain(train_paths, length=2, pch_size=16)[2]
