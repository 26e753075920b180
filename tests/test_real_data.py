"""Real-noise data layer: SIDD patch preparation and training set, MixUp, SIDD block files,
DND crops and submission bundles, and the self-ensemble, on tiny fixtures of the real layouts."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from skimage import img_as_float32

from datasets import prepare_sidd
from datasets.real import (SIDDBlocks, SIDDPatchTrain, bundle_dnd_submission, dnd_crops,
                           load_dnd_image, load_dnd_info, load_sidd_blocks, mixup,
                           save_dnd_crop, sidd_block_paths)
from real_fixtures import write_dnd, write_v73
from utils.augment import MODES, augment, inverse_augment, self_ensemble
from utils.image_io import read_image_uint8, write_image

SCENES = ("0001_001_S6_00100_00060_3200_L", "0002_001_S6_00100_00020_3200_N")
SRC_H, SRC_W, PCH, NUM = 300, 280, 256, 6


# ---------------------------------------------------------------- helpers

def _find(source: np.ndarray, patch: np.ndarray) -> list[tuple[int, int]]:
    """Every top-left position where ``patch`` appears in ``source`` (both H x W x C)."""
    ph, pw = patch.shape[:2]
    hits = np.all(source[:source.shape[0] - ph + 1, :source.shape[1] - pw + 1] == patch[0, 0],
                  axis=-1)
    return [(r, c) for r, c in zip(*np.nonzero(hits))
            if np.array_equal(source[r:r + ph, c:c + pw], patch)]


def _sidd_tree(root: Path, shapes=((SRC_H, SRC_W),) * 2) -> list[tuple[np.ndarray, np.ndarray]]:
    """SIDD-Medium-like folders; noisy = 255 - gt so aligned crops can be recognised."""
    rng = np.random.default_rng(7)
    images = []
    for n, (scene, (h, w)) in enumerate(zip(SCENES, shapes), start=1):
        gt = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        noisy = 255 - gt
        (root / scene).mkdir(parents=True)
        write_image(root / scene / f"{n:04d}_NOISY_SRGB_010.PNG", noisy)
        write_image(root / scene / f"{n:04d}_GT_SRGB_010.PNG", gt)
        images.append((noisy, gt))
    return images


def _run_main(capsys, *args) -> str:
    """Run the preparation CLI in-process, expecting a clean failure; returns stderr."""
    with pytest.raises(SystemExit) as exc:
        prepare_sidd.main([str(a) for a in args])
    assert exc.value.code != 0
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]  # after any progress bar
    assert last.startswith("error: ")
    return last


# ---------------------------------------------------------------- SIDD patch preparation

@pytest.fixture(scope="module")
def sidd(tmp_path_factory):
    """A prepared SIDD-like tree: (sidd_dir, patch dir, source images)."""
    root = tmp_path_factory.mktemp("sidd") / "SIDD_Medium_Srgb" / "Data"
    images = _sidd_tree(root)
    cmd = [sys.executable, "-m", "datasets.prepare_sidd", "--sidd_dir", str(root),
           "--pch_size", str(PCH), "--per_num_pch", str(NUM), "--seed", "10000", "--workers", "2"]
    done = subprocess.run(cmd, cwd=Path(__file__).resolve().parents[1], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return root, root / f"patchs{PCH}", images


def test_prepare_patches_are_crops_of_their_sources(sidd):
    root, out, images = sidd
    assert sorted(p.name for p in (out / "noisy").iterdir()) == \
        [f"sidd_{i:04d}_{k:04d}.png" for i in (1, 2) for k in range(1, NUM + 1)]
    assert sorted(p.name for p in (out / "gt").iterdir()) == sorted(
        p.name for p in (out / "noisy").iterdir())
    for i, (noisy, gt) in enumerate(images, start=1):
        positions = []
        for k in range(1, NUM + 1):
            pch_noisy = read_image_uint8(out / "noisy" / f"sidd_{i:04d}_{k:04d}.png")
            pch_gt = read_image_uint8(out / "gt" / f"sidd_{i:04d}_{k:04d}.png")
            assert pch_noisy.shape == pch_gt.shape == (PCH, PCH, 3)
            hits = _find(noisy, pch_noisy)
            assert len(hits) == 1
            (r, c), = hits
            np.testing.assert_array_equal(pch_gt, gt[r:r + PCH, c:c + PCH])
            positions.append((r, c))
        assert len(set(positions)) > 1  # positions are random, not one fixed crop


def test_prepare_positions_are_reproducible(sidd):
    root, out, images = sidd
    h, w = images[1][0].shape[:2]
    corners = prepare_sidd.patch_corners(10000, 2, h, w, PCH, NUM)
    for k, (r, c) in enumerate(corners, start=1):
        np.testing.assert_array_equal(read_image_uint8(out / "noisy" / f"sidd_0002_{k:04d}.png"),
                                      images[1][0][r:r + PCH, c:c + PCH])
    assert not np.array_equal(corners, prepare_sidd.patch_corners(10000, 1, h, w, PCH, NUM))


def test_prepare_resumes_only_unfinished_images(sidd, capsys):
    root, out, _ = sidd
    files = sorted((out / "noisy").iterdir()) + sorted((out / "gt").iterdir())
    before = {p: (p.stat().st_ino, p.read_bytes()) for p in files}
    (out / "gt" / "sidd_0002_0003.png").unlink()
    prepare_sidd.main(["--sidd_dir", str(root), "--pch_size", str(PCH),
                       "--per_num_pch", str(NUM), "--workers", "1"])
    assert "1 already cropped, 1 to crop" in capsys.readouterr().out
    for p, (inode, data) in before.items():
        assert p.read_bytes() == data
        if "sidd_0001_" in p.name:
            assert p.stat().st_ino == inode  # finished image left alone
        else:
            assert p.stat().st_ino != inode  # unfinished image cropped again, same content
    assert not [p for p in out.rglob(".*")]  # no temporary files left


def test_prepare_refuses_other_settings(sidd, capsys):
    root, _, _ = sidd
    err = _run_main(capsys, "--sidd_dir", root, "--pch_size", PCH, "--per_num_pch", NUM,
                    "--seed", 1)
    assert "other settings" in err


def test_prepare_errors(tmp_path, capsys):
    assert "no such SIDD folder" in _run_main(capsys, "--sidd_dir", tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    assert "no *NOISY*" in _run_main(capsys, "--sidd_dir", tmp_path / "empty")
    small = tmp_path / "small"
    _sidd_tree(small, shapes=((100, 120),))
    assert "smaller than the patch size 256" in _run_main(capsys, "--sidd_dir", small,
                                                          "--workers", 1)
    (small / SCENES[0] / "0001_GT_SRGB_010.PNG").unlink()
    assert "0001_GT_SRGB_010.PNG not found" in _run_main(capsys, "--sidd_dir", small)


# ---------------------------------------------------------------- SIDD training set

def test_sidd_patch_train_samples(sidd):
    _, out, _ = sidd
    patches = [read_image_uint8(p) for p in sorted((out / "noisy").glob("*.png"))]
    ds = SIDDPatchTrain(out / "noisy", length=20, pch_size=64, seed=3)
    assert len(ds) == 20
    for index in (0, 7):
        noisy, gt = ds[index]
        assert noisy.shape == gt.shape == (3, 64, 64) and noisy.dtype == torch.float32
        noisy8 = np.rint(noisy.numpy().transpose(1, 2, 0) * 255).astype(np.uint8)
        gt8 = np.rint(gt.numpy().transpose(1, 2, 0) * 255).astype(np.uint8)
        np.testing.assert_array_equal(noisy8, 255 - gt8)  # same crop and mode for both
        found = [m for m in MODES for patch in patches if _find(patch, inverse_augment(noisy8, m))]
        assert found  # an augmented crop of one of the patches


def test_sidd_patch_train_is_deterministic(sidd):
    _, out, _ = sidd
    ds = SIDDPatchTrain(out / "noisy", length=20, pch_size=64, seed=3)
    other = SIDDPatchTrain(str(out / "noisy"), length=20, pch_size=64, seed=3)
    for a, b in zip(ds[5], other[5]):
        assert torch.equal(a, b)
    assert not torch.equal(ds[5][0], ds[6][0])
    assert not torch.equal(ds[5][0], SIDDPatchTrain(out / "noisy", 20, 64, seed=4)[5][0])
    other.set_epoch(1)
    assert not torch.equal(ds[5][0], other[5][0])
    with pytest.raises(IndexError):
        ds[20]


def test_sidd_patch_train_validation(tmp_path):
    with pytest.raises(ValueError, match="absent"):
        SIDDPatchTrain(tmp_path / "absent" / "noisy", 10)
    (tmp_path / "noisy").mkdir()
    with pytest.raises(ValueError, match="gt"):
        SIDDPatchTrain(tmp_path / "noisy", 10)
    (tmp_path / "gt").mkdir()
    with pytest.raises(ValueError, match="no \\*.png patches"):
        SIDDPatchTrain(tmp_path / "noisy", 10)
    write_image(tmp_path / "noisy" / "sidd_0001_0001.png", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="sidd_0001_0001.png: clean partner"):
        SIDDPatchTrain(tmp_path / "noisy", 10)


# ---------------------------------------------------------------- MixUp

def _one_hot_batch(b: int) -> tuple[torch.Tensor, torch.Tensor]:
    """noisy[i] = e_i and gt[i] = 2 e_i + 1 as B x B x 1 x 1 batches (mixing partners visible)."""
    eye = torch.eye(b).view(b, b, 1, 1)
    return eye.clone(), 2 * eye + 1


def test_mixup_is_one_convex_combination_for_both():
    b = 8
    noisy, gt = _one_hot_batch(b)
    out_noisy, out_gt = mixup(noisy, gt, generator=torch.Generator().manual_seed(0))
    partners = []
    for i in range(b):
        row = out_noisy[i].flatten()
        lam = float(row[i])
        others = [j for j in range(b) if j != i and row[j] != 0]
        assert 0 < lam < 1 or (lam == 1 and not others)
        j = others[0] if others else i
        assert len(others) <= 1 and torch.isclose(row.sum(), torch.tensor(1.0))
        expected_gt = lam * gt[i] + (1 - lam) * gt[j]
        torch.testing.assert_close(out_gt[i], expected_gt)
        partners.append(j)
    assert sorted(partners) == list(range(b))  # a permutation


def test_mixup_is_reproducible_and_stays_in_range():
    g = torch.Generator().manual_seed(1)
    noisy, gt = torch.rand(6, 3, 5, 4, generator=g), torch.rand(6, 3, 5, 4, generator=g)
    out_noisy, out_gt = mixup(noisy, gt, generator=torch.Generator().manual_seed(2))
    again = mixup(noisy, gt, generator=torch.Generator().manual_seed(2))
    assert torch.equal(out_noisy, again[0]) and torch.equal(out_gt, again[1])
    for out, x in ((out_noisy, noisy), (out_gt, gt)):
        assert out.shape == x.shape
        assert torch.all(out >= x.min(0).values - 1e-6) and torch.all(out <= x.max(0).values + 1e-6)


def test_mixup_draws_like_the_reference():
    g = torch.Generator().manual_seed(3)
    noisy, gt = torch.rand(5, 3, 4, 4, generator=g), torch.rand(5, 3, 4, 4, generator=g)
    torch.manual_seed(11)
    out_noisy, out_gt = mixup(noisy, gt)
    torch.manual_seed(11)  # the reference: randperm, then a CPU Beta(0.6, 0.6) rsample
    perm = torch.randperm(5)
    beta = torch.distributions.Beta(torch.tensor([0.6]), torch.tensor([0.6]))
    lam = beta.rsample((5, 1)).view(-1, 1, 1, 1)
    assert torch.equal(out_noisy, lam * noisy + (1 - lam) * noisy[perm])
    assert torch.equal(out_gt, lam * gt + (1 - lam) * gt[perm])


def test_mixup_lambda_is_beta_per_sample():
    b = 4000
    noisy = torch.arange(b, dtype=torch.float64).view(b, 1, 1, 1).expand(b, 2, 2, 3).clone()
    out, _ = mixup(noisy, noisy.clone(), generator=torch.Generator().manual_seed(4))
    assert torch.equal(out, out[:, :1, :1, :1].expand_as(out))  # one lambda per sample
    perm = torch.randperm(b, generator=torch.Generator().manual_seed(4))  # the first draw
    index = torch.arange(b)
    moved = perm != index
    lam = ((out[:, 0, 0, 0] - perm) / (index - perm))[moved]
    assert torch.all((lam > 0) & (lam < 1))
    assert abs(lam.mean().item() - 0.5) < 0.03
    assert abs(lam.var().item() - 0.36 / (1.44 * 2.2)) < 0.01  # Beta(0.6, 0.6) variance


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_mixup_on_cuda():
    noisy, gt = (t.cuda() for t in _one_hot_batch(4))
    out_noisy, out_gt = mixup(noisy, gt)
    assert out_noisy.is_cuda and out_gt.is_cuda
    out_noisy, _ = mixup(noisy, gt, generator=torch.Generator(device="cuda").manual_seed(0))
    assert out_noisy.is_cuda


# ---------------------------------------------------------------- SIDD blocks

BLOCKS = np.random.default_rng(5).integers(0, 256, size=(2, 3, 8, 6, 3), dtype=np.uint8)


def test_sidd_blocks_v5_and_v73_read_the_same(tmp_path):
    v5 = tmp_path / "v5" / "ValidationNoisyBlocksSrgb.mat"
    v73 = tmp_path / "v73" / "ValidationNoisyBlocksSrgb.mat"
    v5.parent.mkdir()
    v73.parent.mkdir()
    scipy.io.savemat(v5, {"ValidationNoisyBlocksSrgb": BLOCKS})
    write_v73(v73, {"ValidationNoisyBlocksSrgb": BLOCKS})
    with pytest.raises(NotImplementedError):  # a real v7.3 layout: scipy refuses it
        scipy.io.loadmat(v73)
    for path in (v5, v73):
        blocks = load_sidd_blocks(path)
        assert blocks.dtype == np.uint8 and blocks.flags.c_contiguous
        np.testing.assert_array_equal(blocks, BLOCKS)
        np.testing.assert_array_equal(load_sidd_blocks(path, "ValidationNoisyBlocksSrgb"), BLOCKS)


def test_sidd_blocks_dataset_order(tmp_path):
    noisy, gt = sidd_block_paths(tmp_path)
    write_v73(noisy, {"ValidationNoisyBlocksSrgb": BLOCKS})
    scipy.io.savemat(gt, {"ValidationGtBlocksSrgb": 255 - BLOCKS})
    ds = SIDDBlocks(noisy, gt)
    assert len(ds) == 6
    for index in range(6):
        img, blk = divmod(index, 3)
        x, y = ds[index]
        assert x.shape == (3, 8, 6) and x.dtype == torch.float32
        np.testing.assert_array_equal(x.numpy(),
                                      img_as_float32(BLOCKS[img, blk]).transpose(2, 0, 1))
        np.testing.assert_array_equal(y.numpy(),
                                      img_as_float32(255 - BLOCKS[img, blk]).transpose(2, 0, 1))
    bench, none = sidd_block_paths(tmp_path, test=True)
    assert none is None
    scipy.io.savemat(bench, {"BenchmarkNoisyBlocksSrgb": BLOCKS})
    item = SIDDBlocks(bench)[4]
    assert len(item) == 1 and torch.equal(item[0], ds[4][0])


def test_sidd_blocks_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.mat"):
        load_sidd_blocks(tmp_path / "absent.mat")
    path = tmp_path / "blocks.mat"
    scipy.io.savemat(path, {"a": BLOCKS, "b": BLOCKS})
    with pytest.raises(ValueError, match="pass key"):
        load_sidd_blocks(path)
    with pytest.raises(ValueError, match="no variable 'c'"):
        load_sidd_blocks(path, "c")
    np.testing.assert_array_equal(load_sidd_blocks(path, "b"), BLOCKS)
    scipy.io.savemat(path, {"x": BLOCKS.astype(np.float64)})
    with pytest.raises(ValueError, match="float64"):
        load_sidd_blocks(path)
    write_v73(path, {"x": BLOCKS[0]})
    with pytest.raises(ValueError, match="expected uint8 n_img x n_blk"):
        load_sidd_blocks(path)
    path.write_bytes(b"not a mat file")
    with pytest.raises(ValueError, match="not a readable MATLAB file"):
        load_sidd_blocks(path)
    scipy.io.savemat(tmp_path / "gt.mat", {"g": BLOCKS[:1]})
    scipy.io.savemat(tmp_path / "noisy.mat", {"n": BLOCKS})
    with pytest.raises(ValueError, match="do not match"):
        SIDDBlocks(tmp_path / "noisy.mat", tmp_path / "gt.mat")


# ---------------------------------------------------------------- DND

# MATLAB rows [r0, c0, r1, c1], 1-based inclusive, per image.
DND_BOXES = [np.array([[1, 1, 8, 8], [5, 9, 12, 20], [33, 45, 40, 52]], dtype=np.float64),
             np.array([[2, 3, 9, 10], [29, 1, 36, 8], [10, 20, 17, 30]], dtype=np.float64)]
DND_SHAPES = [(40, 52), (36, 30)]


@pytest.fixture
def dnd(tmp_path):
    """A DND-like folder: info.mat with referenced box tables, images_srgb/*.mat; the images."""
    return tmp_path, write_dnd(tmp_path, DND_BOXES, DND_SHAPES)


def test_dnd_boxes_and_crops(dnd):
    root, images = dnd
    boxes = load_dnd_info(root)
    assert [len(b) for b in boxes] == [3, 3]
    assert boxes[0][1] == (slice(4, 12), slice(8, 20))
    for i, image in enumerate(images, start=1):
        np.testing.assert_array_equal(load_dnd_image(root, i), image)
    crops = list(dnd_crops(root))
    assert [(i, k) for i, k, _ in crops] == [(i, k) for i in (1, 2) for k in (1, 2, 3)]
    for i, k, crop in crops:
        r0, c0, r1, c1 = DND_BOXES[i - 1][k - 1].astype(int)
        assert crop.dtype == np.float32 and crop.shape == (r1 - r0 + 1, c1 - c0 + 1, 3)
        np.testing.assert_array_equal(crop, images[i - 1][r0 - 1:r1, c0 - 1:c1])


def test_dnd_submission_bundle(dnd, tmp_path):
    root, _ = dnd
    out = tmp_path / "dnd_flip"
    crops = {}
    for i, k, crop in dnd_crops(root):
        crops[i, k] = 1 - crop
        assert save_dnd_crop(out, i, k, np.float64(1 - crop)).name == f"{i:04d}_{k:02d}.mat"
    saved = scipy.io.loadmat(out / "0002_03.mat")["Idenoised_crop"]
    assert saved.dtype == np.float32
    np.testing.assert_array_equal(saved, crops[2, 3])
    with pytest.raises(FileNotFoundError, match="0003_01.mat: denoised crop not found"):
        bundle_dnd_submission(out, n_images=3, n_boxes=3)
    assert not (out / "bundled").exists()
    bundled = bundle_dnd_submission(out, n_images=2, n_boxes=3)
    assert sorted(p.name for p in bundled.iterdir()) == ["0001.mat", "0002.mat"]
    for i in (1, 2):
        mat = scipy.io.loadmat(bundled / f"{i:04d}.mat")
        assert {k for k in mat if not k.startswith("__")} == {"Idenoised", "israw", "eval_version"}
        cell = mat["Idenoised"]
        assert cell.dtype == object and cell.shape == (1, 3)
        for k in (1, 2, 3):
            assert cell[0, k - 1].dtype == np.float32
            np.testing.assert_array_equal(cell[0, k - 1], crops[i, k])
        assert mat["israw"].tolist() == [[0]]
        assert {name: cls for name, _, cls in scipy.io.whosmat(bundled / f"{i:04d}.mat")} == \
            {"Idenoised": "cell", "israw": "logical", "eval_version": "char"}
        assert mat["eval_version"].tolist() == ["1.0"]


def test_dnd_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="info.mat"):
        load_dnd_info(tmp_path)
    scipy.io.savemat(tmp_path / "info.mat", {"info": 1})
    with pytest.raises(ValueError, match="not a MATLAB v7.3"):
        load_dnd_info(tmp_path)
    with pytest.raises(ValueError, match="h x w x 3"):
        save_dnd_crop(tmp_path, 1, 1, np.zeros((4, 4)))


# ---------------------------------------------------------------- self-ensemble

def test_self_ensemble_of_equivariant_functions_is_exact():
    x = torch.rand(2, 3, 5, 7, generator=torch.Generator().manual_seed(0))
    assert torch.equal(self_ensemble(lambda t: t, x), x)
    pointwise = lambda t: torch.sin(3 * t) + t ** 2  # noqa: E731
    assert torch.equal(self_ensemble(pointwise, x), pointwise(x))


def test_self_ensemble_matches_numpy_augmentation():
    x = torch.rand(1, 3, 5, 7, generator=torch.Generator().manual_seed(1))
    ramp = lambda t: t * torch.arange(t.shape[-1], dtype=t.dtype)  # noqa: E731  not equivariant
    out = self_ensemble(ramp, x)
    assert out.shape == x.shape and not torch.allclose(out, ramp(x))
    image = x[0].numpy().transpose(1, 2, 0)
    expected = np.mean([inverse_augment(augment(image, m) * np.arange(augment(image, m).shape[1])
                                        [None, :, None], m) for m in MODES], axis=0)
    np.testing.assert_allclose(out[0].numpy().transpose(1, 2, 0), expected, rtol=1e-6, atol=1e-6)
