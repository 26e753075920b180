"""SISR data layer: HR patch preparation, the training kernel distribution, training samples and the
fixed validation set."""
import math

import cv2
import numpy as np
import pytest
import scipy.ndimage
import torch

from datasets import prepare_sisr_patches
from datasets.sisr import (JPEG_QUALITY_RANGES, SISRTrain, SISRValidation, jpeg_compress, modcrop,
                           sample_jpeg_quality, sample_kernel)
from utils.augment import augment
from utils.degradation import anisotropic_gaussian, degrade_sr, kinfo_to_kernel
from utils.image_io import read_image
from utils.resize import imresize
from utils.seeding import sample_rng


# ---------------------------------------------------------------- patch preparation

def _starts(size, pch, stride):
    """Window starts computed independently: every multiple of stride with a full window that
    is not flush with the border, then the flush window."""
    starts, pos = [], 0
    while pos + pch < size:
        starts.append(pos)
        pos += stride
    return starts + [size - pch]


@pytest.fixture
def hr_folders(tmp_path):
    rng = np.random.default_rng(5)
    a, b = tmp_path / "A", tmp_path / "B"
    a.mkdir()
    b.mkdir()
    images = {
        ("a", "big"): rng.integers(0, 256, (700, 600, 3), dtype=np.uint8),
        ("a", "exact"): rng.integers(0, 256, (256, 416, 3), dtype=np.uint8),
        ("b", "gray"): rng.integers(0, 256, (300, 257), dtype=np.uint8),
        ("b", "tiny"): rng.integers(0, 256, (100, 400, 3), dtype=np.uint8),
    }
    for (prefix, stem), im in images.items():
        assert cv2.imwrite(str((a if prefix == "a" else b) / f"{stem}.png"), im)
    return a, b, images


def _prepare(a, b, out, workers=1):
    return prepare_sisr_patches.main(["--in_dirs", str(a), str(b), "--prefixes", "a", "b",
                                      "--out_dir", str(out), "--pch_size", "256", "--stride", "160",
                                      "--workers", str(workers)])


def test_prepare_patches_positions_names_content(hr_folders, tmp_path, capsys):
    a, b, images = hr_folders
    out = tmp_path / "out"
    assert _prepare(a, b, out) == 0
    assert "skipped 1 image(s) smaller than 256 x 256" in capsys.readouterr().err
    expected = set()
    for (prefix, stem), im in images.items():
        h, w = im.shape[:2]
        if min(h, w) < 256:
            continue
        n = 0
        for r in _starts(h, 256, 160):
            for c in _starts(w, 256, 160):
                n += 1
                name = f"{prefix}_{stem}_{n:05d}.png"
                expected.add(name)
                stored = cv2.imread(str(out / name), cv2.IMREAD_UNCHANGED)
                np.testing.assert_array_equal(stored, im[r:r + 256, c:c + 256])
    # 700 x 600: rows start at 0, 160, 320, 444 and columns at 0, 160, 320, 344
    assert len([n for n in expected if n.startswith("a_big_")]) == 16
    assert len([n for n in expected if n.startswith("a_exact_")]) == 2        # columns 0, 160
    assert {p.name for p in out.iterdir()} == expected | {prepare_sisr_patches.SETTINGS_FILE}


def test_prepare_patches_rerun_skips_and_fills_gaps(hr_folders, tmp_path, capsys):
    a, b, _ = hr_folders
    out = tmp_path / "out"
    assert _prepare(a, b, out, workers=2) == 0
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    (out / "a_big_00005.png").unlink()
    capsys.readouterr()
    assert _prepare(a, b, out) == 0
    summary = capsys.readouterr().out
    assert "1 cut (1 patches written), 2 already done" in summary
    after = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert after.keys() == stamps.keys()
    assert all(after[k] == stamps[k] for k in stamps if k != "a_big_00005.png")


def test_prepare_patches_errors(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert prepare_sisr_patches.main(["--in_dirs", str(tmp_path / "nope"), "--out_dir",
                                      str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"prepare_sisr_patches: error: input folder not found: {tmp_path / 'nope'}")
    assert prepare_sisr_patches.main(["--in_dirs", str(empty), "--out_dir", str(tmp_path / "o")]) == 2
    assert "no image files in" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    (empty / "bad.png").write_bytes(b"not a png")
    assert prepare_sisr_patches.main(["--in_dirs", str(empty), "--out_dir", str(tmp_path / "o")]) == 1
    assert "bad.png: not a readable image" in capsys.readouterr().err


# ---------------------------------------------------------------- kernels

def _lambdas_theta(kinfo):
    """Standard deviations (small, large) and the angle in [0, pi) of the small one's axis,
    from kinfo's covariance [[v1, c], [c, v2]] ((x, y) = (column, row) coordinates)."""
    v1, v2, rho = kinfo
    c = rho * math.sqrt(v1 * v2)
    values, vectors = np.linalg.eigh(np.array([[v1, c], [c, v2]]))
    theta = math.atan2(vectors[1, 0], vectors[0, 0]) % np.pi
    return np.sqrt(values), theta


def test_sample_kernel_distribution():
    rng = np.random.default_rng(0)
    sf = 3
    draws = [sample_kernel(rng, sf)[1] for _ in range(2000)]
    stats = [_lambdas_theta(k) for k in draws]
    small = np.array([s[0][0] for s in stats])
    large = np.array([s[0][1] for s in stats])
    assert small.min() >= 0.2 - 1e-9 and large.max() <= sf + 1e-9
    isotropic = np.isclose(small, large, rtol=1e-6)
    assert abs(isotropic.mean() - 0.3) < 0.04
    assert abs(np.median(small) - (0.2 + sf) / 2) < 0.15          # l1 ~ U(0.2, sf)
    clear = (large / small > 1.2)
    angles = np.array([s[1] for s in stats])[clear]
    counts = np.histogram(angles, bins=4, range=(0, np.pi))[0] / clear.sum()
    assert np.all(np.abs(counts - 0.25) < 0.05)                    # theta ~ U(0, pi)


def test_sample_kernel_kinfo_matches_second_moments():
    rng = np.random.default_rng(1)
    checked = 0
    while checked < 20:
        kernel, kinfo = sample_kernel(rng, 2)
        if _lambdas_theta(kinfo)[0][0] < 0.8:       # discrete moments are exact only for wide ones
            continue
        assert kernel.shape == (21, 21) and abs(kernel.sum() - 1) < 1e-12
        d = np.arange(21) - 10
        dx, dy = np.meshgrid(d, d)                   # dx: column offset, dy: row offset
        var_x, var_y = (kernel * dx ** 2).sum(), (kernel * dy ** 2).sum()
        rho = (kernel * dx * dy).sum() / math.sqrt(var_x * var_y)
        np.testing.assert_allclose([var_x, var_y, rho], kinfo, rtol=1e-4, atol=1e-6)
        checked += 1


def test_sample_jpeg_quality_ranges():
    rng = np.random.default_rng(2)
    qualities = np.array([sample_jpeg_quality(rng) for _ in range(3000)])
    assert qualities.min() == 30 and qualities.max() == 95
    assert set(qualities) == set(range(30, 96))
    assert len(JPEG_QUALITY_RANGES) == 7
    # a range is chosen first: quality 45 lies in two ranges, 50 in one of width 16
    assert np.mean(qualities == 45) > np.mean(qualities == 50) * 2


# ---------------------------------------------------------------- training samples

FLAT = np.full((60, 60, 3), 128, np.uint8)


@pytest.fixture(scope="module")
def tiny_hr(tmp_path_factory):
    """A textured 64 x 80 image and a flat 60 x 60 one."""
    folder = tmp_path_factory.mktemp("hr")
    rng = np.random.default_rng(3)
    texture = cv2.GaussianBlur(rng.integers(0, 256, (64, 80, 3), dtype=np.uint8), (5, 5), 1.0)
    assert cv2.imwrite(str(folder / "texture.png"), texture)
    assert cv2.imwrite(str(folder / "flat.png"), FLAT)
    return folder


@pytest.fixture(scope="module")
def flat_hr(tmp_path_factory):
    """Only the flat 60 x 60 image."""
    folder = tmp_path_factory.mktemp("flat")
    assert cv2.imwrite(str(folder / "flat.png"), FLAT)
    return folder


@pytest.mark.parametrize("downsampler", ["bicubic", "Direct"])
@pytest.mark.parametrize("sf", [2, 3, 4])
def test_train_sample_shapes(tiny_hr, sf, downsampler):
    data = SISRTrain(tiny_hr, length=10, hr_size=48, sf=sf, downsampler=downsampler)
    im_hr, im_lr, im_blur, kinfo, nlevel = data[3]
    lr = math.ceil(48 / sf)
    assert im_hr.shape == (3, 48, 48) and im_lr.shape == im_blur.shape == (3, lr, lr)
    assert kinfo.shape == (3,) and nlevel.shape == (1, 1, 1)
    for t in (im_hr, im_lr, im_blur, kinfo, nlevel):
        assert t.dtype == torch.float32
    for t in (im_hr, im_lr, im_blur):
        assert 0 <= t.min() and t.max() <= 1
    assert 0.01 / 255 <= nlevel.item() <= 15 / 255
    assert len(data) == 10


def test_train_determinism(tiny_hr):
    one = SISRTrain(tiny_hr, length=8, hr_size=48, sf=2, seed=7)
    two = SISRTrain([tiny_hr], length=8, hr_size=48, sf=2, seed=7)

    def same(x, y):
        return all(torch.equal(a, b) for a, b in zip(x, y))

    assert same(one[5], two[5])
    assert not same(one[5], one[6])
    two.set_epoch(1)
    assert not same(one[5], two[5])
    one.set_epoch(1)
    assert same(one[5], two[5])
    assert not same(SISRTrain(tiny_hr, 8, 48, 2, seed=8)[5], SISRTrain(tiny_hr, 8, 48, 2, seed=7)[5])


@pytest.mark.parametrize("downsampler", ["bicubic", "direct"])
def test_train_sample_follows_documented_draws(tiny_hr, downsampler):
    """Replay the documented draw order and rebuild the sample from the image files."""
    sf, hr, seed, epoch, index = 3, 48, 11, 2, 9
    data = SISRTrain(tiny_hr, length=20, hr_size=hr, sf=sf, downsampler=downsampler, seed=seed)
    data.set_epoch(epoch)
    im_hr, im_lr, im_blur, kinfo, nlevel = (t.numpy() for t in data[index])

    rng = sample_rng(seed, epoch, index)
    paths = sorted(tiny_hr.iterdir(), key=str)
    im = read_image(paths[rng.integers(len(paths))])
    top, left = rng.integers(im.shape[0] - hr + 1), rng.integers(im.shape[1] - hr + 1)
    expected_hr = augment(im[top:top + hr, left:left + hr], int(rng.integers(8)))
    np.testing.assert_array_equal(im_hr.transpose(1, 2, 0), expected_hr)

    # The kernel, rebuilt from kinfo in the data's ('xy') orientation, explains the blur.
    kernel = kinfo_to_kernel(torch.from_numpy(kinfo[None]).double(), 21, sf, grid="xy")[0, 0].numpy()
    np.testing.assert_allclose(sample_kernel(rng, sf)[1], kinfo, rtol=1e-6)
    assert rng.integers(1) == 0
    std = rng.uniform(0.01, 15) / 255
    noise = rng.standard_normal((im_blur.shape[1], im_blur.shape[2], 3), dtype=np.float32)
    blurred = np.clip(scipy.ndimage.convolve(expected_hr.astype(np.float64), kernel[:, :, None],
                                             mode="reflect"), 0, 1)
    expected_blur = blurred[::sf, ::sf] if downsampler == "direct" else imresize(blurred, 1 / sf)
    np.testing.assert_allclose(im_blur.transpose(1, 2, 0), expected_blur, atol=1e-5)
    np.testing.assert_allclose(nlevel.item(), std, rtol=1e-6)
    expected_lr = np.clip(im_blur.transpose(1, 2, 0) + noise * np.float32(std), 0, 1)
    np.testing.assert_array_equal(im_lr.transpose(1, 2, 0), expected_lr)

    # The 'ij' kernel (the loss's orientation) is the transpose: different unless symmetric.
    kernel_ij = kinfo_to_kernel(torch.from_numpy(kinfo[None]).double(), 21, sf)[0, 0].numpy()
    np.testing.assert_allclose(kernel_ij, kernel.T, atol=1e-12)


def test_train_gaussian_noise_level(flat_hr):
    data = SISRTrain(flat_hr, length=50, hr_size=48, sf=2, noise_level=(5, 15))
    for index in range(3):
        _, im_lr, im_blur, _, nlevel = data[index]
        residual = (im_lr - im_blur).numpy()
        assert np.allclose(im_blur.numpy(), 128 / 255, atol=1e-6)
        assert abs(residual.std() / nlevel.item() - 1) < 0.05
        assert abs(residual.mean()) < 4 * nlevel.item() / math.sqrt(residual.size)


def test_train_fixed_noise_level(flat_hr):
    """low == high is a fixed noise level (one std for every sample)."""
    data = SISRTrain(flat_hr, length=8, hr_size=48, sf=2, noise_level=(7, 7))
    assert {round(data[i][4].item() * 255, 4) for i in range(4)} == {7.0}


def test_train_jpeg_branch(tiny_hr):
    data = SISRTrain(tiny_hr, length=16, hr_size=48, sf=2, add_jpeg=True, seed=3)
    quantised = []
    for index in range(12):
        _, im_lr, im_blur, _, nlevel = data[index]
        scaled = im_lr.numpy() * 255
        is_jpeg = np.abs(scaled - np.round(scaled)).max() < 1e-3
        quantised.append(is_jpeg)
        if is_jpeg:
            assert nlevel.item() <= 10 / 255
    assert any(quantised) and not all(quantised)


def test_train_rejects_small_images_and_bad_arguments(tiny_hr, flat_hr, tmp_path):
    with pytest.raises(ValueError, match="flat.png: image of 60 x 60 is smaller than hr_size 64"):
        SISRTrain(flat_hr, 4, 64, 2)[0]
    with pytest.raises(ValueError, match="no image files"):
        SISRTrain(tmp_path, 4, 48, 2)
    with pytest.raises(ValueError, match="downsampler"):
        SISRTrain(tiny_hr, 4, 48, 2, downsampler="nearest")
    with pytest.raises(ValueError, match="noise_level"):
        SISRTrain(tiny_hr, 4, 48, 2, noise_level=(15, 0.01))


def test_jpeg_compress_round_trip():
    rows, cols = np.mgrid[0:16, 0:24]
    im = np.stack([rows / 15, cols / 23, (rows + cols) / 38], axis=2).astype(np.float32)
    out = jpeg_compress(im, 95)
    assert out.shape == im.shape and out.dtype == np.float32
    np.testing.assert_array_equal(out * 255, np.round(out * 255))
    assert np.abs(out - im).mean() < 0.05
    red = np.zeros((16, 16, 3), np.float32)
    red[..., 0] = 1
    assert jpeg_compress(red, 95)[..., 0].mean() > 0.95        # channel order kept (RGB)


# ---------------------------------------------------------------- validation

def test_modcrop():
    im = np.zeros((11, 13, 3))
    assert modcrop(im, 4).shape == (8, 12, 3)
    assert modcrop(im[..., 0], 3).shape == (9, 12)
    assert modcrop(im, 1).shape == im.shape


def test_validation_set5(shared):
    sf = 3
    folder = shared / "testsets/Set5"
    data = SISRValidation(folder, sf=sf)
    assert len(data) == 5
    kernel, kinfo = anisotropic_gaussian(21, sf, 1.6 ** 2, 1.6 ** 2, 0.0, False)
    noise = torch.randn([math.ceil(512 / sf), math.ceil(512 / sf), 3],
                        generator=torch.Generator().manual_seed(10000)).numpy()
    for index in (3, 4):                                # head 280 x 280, woman 344 x 228
        im_hr, im_lr, k = data[index]
        original = read_image(sorted(folder.iterdir(), key=str)[index])
        h, w = (s - s % sf for s in original.shape[:2])
        assert im_hr.shape == (3, h, w) and im_lr.shape == (3, h // sf, w // sf)
        np.testing.assert_array_equal(im_hr.numpy().transpose(1, 2, 0), original[:h, :w])
        np.testing.assert_allclose(k.numpy(), kinfo, rtol=1e-6)
        blur = degrade_sr(original[:h, :w], kernel, sf, nlevel=0.0)
        expected = np.clip(blur + noise[:h // sf, :w // sf] * (2.55 / 255), 0, 1)
        np.testing.assert_allclose(im_lr.numpy().transpose(1, 2, 0), expected, atol=1e-5)
    again = SISRValidation(folder, sf=sf)[4]
    assert torch.equal(again[1], data[4][1])


def test_validation_jpeg(shared):
    folder = shared / "testsets/Set5"
    gaussian = SISRValidation(folder, sf=4, downsampler="Direct")[2]
    jpeg = SISRValidation(folder, sf=4, downsampler="Direct", noise="JPEG")[2]
    assert jpeg[1].shape == gaussian[1].shape == (3, 64, 64)
    np.testing.assert_array_equal(jpeg[1], jpeg_compress(gaussian[1].numpy().transpose(1, 2, 0),
                                                         40).transpose(2, 0, 1))
    with pytest.raises(ValueError, match="noise"):
        SISRValidation(folder, sf=4, noise="poisson")
