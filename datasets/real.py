"""Real-noise data: SIDD training patches, MixUp, SIDD blocks, DND crops and the submission files.

Layouts (as the reference reads them; docs/training.md, "SIDD and DND"):

- SIDD training patches, made by ``python -m datasets.prepare_sidd``: ``<root>/noisy/*.png`` and
  ``<root>/gt/*.png`` with identical names.
- SIDD validation / benchmark: ``ValidationNoisyBlocksSrgb.mat``, ``ValidationGtBlocksSrgb.mat``,
  ``BenchmarkNoisyBlocksSrgb.mat``; each holds one variable named like its file, uint8 RGB of
  MATLAB size n_img x n_blk x h x w x 3 (40 x 32 x 256 x 256 x 3 for the public files), saved as
  MATLAB v5 or v7.3 (HDF5) files; both are read.
- DND: ``<dnd>/info.mat`` (v7.3) whose ``info.boundingboxes{i}`` is the 20 x 4 array of 1-based
  inclusive boxes [r0, c0, r1, c1] of image i, and ``<dnd>/images_srgb/{i:04d}.mat`` (v7.3) with
  the H x W x 3 image ``InoisySRGB`` in [0, 1]. A submission is one ``{i:04d}_{k:02d}.mat`` per
  crop (``Idenoised_crop``), bundled per image into ``bundled/{i:04d}.mat``.
"""
from __future__ import annotations

import contextlib
import os
import zlib
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Union

import h5py
import numpy as np
import scipy.io
import torch
from torch.utils.data import Dataset

from utils.augment import MODES, augment
from utils.image_io import atomic_write, read_image_uint8, to_uint8
from utils.metrics import calculate_psnr, calculate_ssim

from .epoch_sampled import EpochSampled

PathLike = Union[str, os.PathLike]
Box = tuple[slice, slice]

MIXUP_ALPHA = 0.6
DND_IMAGES, DND_BOXES = 50, 20


def _uint8_to_chw(im: np.ndarray) -> torch.Tensor:
    """H x W x C uint8 -> C x H x W float32 tensor in [0, 1], as ``skimage.img_as_float32``."""
    chw = np.ascontiguousarray(im.transpose(2, 0, 1))
    return torch.from_numpy(np.multiply(chw, 1.0 / 255, dtype=np.float32))


# ---------------------------------------------------------------- SIDD training patches

class SIDDPatchTrain(EpochSampled):
    """Random crops of the SIDD patch pairs (the reference's ``RealTrain``).

    ``noisy_dir``: folder of noisy patches ``*.png`` (hidden files skipped), sorted by name (the
    reference leaves them in file-system order); the clean partner of each is
    ``noisy_dir/../gt/<name>``. ``length``: samples per epoch. ``pch_size``: crop size.
    Sample ``index`` of the current epoch draws only from its generator (``EpochSampled``): a
    patch pair, one crop position and one augmentation mode (0..7) shared by both images.
    Raises ``ValueError`` naming the path for missing folders, no patches or a missing partner.
    """

    def __init__(self, noisy_dir: PathLike, length: int, pch_size: int = 128, seed: int = 0):
        noisy_dir = Path(noisy_dir)
        gt_dir = noisy_dir.parent / "gt"
        for folder in (noisy_dir, gt_dir):
            if not folder.is_dir():
                raise ValueError(f"{folder}: no such SIDD patch folder")
        self.noisy_paths = sorted(p for p in noisy_dir.glob("*.png")
                                  if not p.name.startswith("."))
        if not self.noisy_paths:
            raise ValueError(f"{noisy_dir}: no *.png patches (run python -m datasets.prepare_sidd)")
        self.gt_paths = [gt_dir / p.name for p in self.noisy_paths]
        for path in self.gt_paths:
            if not path.is_file():
                raise ValueError(f"{path}: clean partner of a noisy patch not found")
        if length < 1 or pch_size < 1:
            raise ValueError(f"length and pch_size must be positive, got {length}, {pch_size}")
        super().__init__(length, seed)
        self.pch_size = pch_size

    def keep_pairs(self, readable: set) -> int:
        """Keep only the pairs whose noisy and clean files are both in ``readable``; returns how many
        pairs are left."""
        pairs = [(n, g) for n, g in zip(self.noisy_paths, self.gt_paths) if n in readable and g in readable]
        self.noisy_paths, self.gt_paths = [n for n, _ in pairs], [g for _, g in pairs]
        return len(pairs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(noisy, gt): two 3 x p x p float32 tensors in [0, 1] cut at the same place."""
        rng = self.rng_for(index)
        pick = int(rng.integers(len(self.noisy_paths)))
        im_noisy = read_image_uint8(self.noisy_paths[pick])
        im_gt = read_image_uint8(self.gt_paths[pick])
        h, w = im_noisy.shape[:2]
        p = self.pch_size
        if im_gt.shape != im_noisy.shape or h < p or w < p:
            raise ValueError(f"{self.noisy_paths[pick]}: patch pair of sizes {im_noisy.shape[:2]}"
                             f" / {im_gt.shape[:2]} cannot give {p}x{p} crops")
        top = int(rng.integers(0, h - p + 1))
        left = int(rng.integers(0, w - p + 1))
        mode = int(rng.integers(len(MODES)))
        return tuple(_uint8_to_chw(augment(im[top:top + p, left:left + p], mode))
                     for im in (im_noisy, im_gt))


def mixup(noisy: torch.Tensor, gt: torch.Tensor,
          generator: Optional[torch.Generator] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """MixUp of a batch of pairs (MPRNet's, as the reference applies it to every batch).

    ``noisy``, ``gt``: B x C x H x W on any device. Draws ``perm = randperm(B)``, then
    ``lam ~ Beta(0.6, 0.6)`` per sample (B x 1 x 1 x 1), from ``generator`` or, without one,
    from torch's default CPU generator (the reference's draws). Returns
    ``(lam * noisy + (1 - lam) * noisy[perm], lam * gt + (1 - lam) * gt[perm])``: the same
    ``lam`` and ``perm`` for both.
    """
    if noisy.shape != gt.shape or noisy.dim() != 4:
        raise ValueError(f"expected two B x C x H x W batches of one shape, got "
                         f"{tuple(noisy.shape)} and {tuple(gt.shape)}")
    batch = noisy.shape[0]
    device = generator.device if generator is not None else torch.device("cpu")
    perm = torch.randperm(batch, generator=generator, device=device).to(noisy.device)
    # torch.distributions.Beta draws through this sampler but takes no generator argument.
    alphas = torch.full((batch, 2), MIXUP_ALPHA, device=device)
    lam = torch._sample_dirichlet(alphas, generator=generator)[:, 0]
    lam = lam.to(device=noisy.device, dtype=noisy.dtype).view(-1, 1, 1, 1)
    return lam * noisy + (1 - lam) * noisy[perm], lam * gt + (1 - lam) * gt[perm]


# ---------------------------------------------------------------- SIDD validation blocks

@contextlib.contextmanager
def _readable_mat(path: Path) -> Iterator[None]:
    """Within the block, an error reading the MATLAB file ``path`` (truncated or damaged: the readers
    raise OSError, EOFError, zlib or MatReadError, naming no file) becomes a ValueError naming it."""
    try:
        yield
    except (OSError, EOFError, zlib.error, scipy.io.matlab.MatReadError) as err:
        raise ValueError(f"{path}: truncated or damaged MATLAB file ({err}); copy it again") from None


def _mat_variables(path: Path) -> tuple[bool, list[str]]:
    """(is HDF5 / v7.3, variable names) of a MATLAB file."""
    if h5py.is_hdf5(path):
        with _readable_mat(path), h5py.File(path, "r") as f:
            return True, [k for k in f.keys() if not k.startswith("#")]
    try:
        return False, [name for name, _, _ in scipy.io.whosmat(path)]
    except (scipy.io.matlab.MatReadError, ValueError, TypeError, OSError) as err:
        raise ValueError(f"{path}: not a readable MATLAB file ({err})") from None


def load_sidd_blocks(path: PathLike, key: Optional[str] = None) -> np.ndarray:
    """Read a SIDD block file (``ValidationNoisyBlocksSrgb.mat`` and the like), v5 or v7.3.

    ``key``: the variable; by default the one named like the file, else the file's only one.
    Returns the blocks in MATLAB index order as an n_img x n_blk x h x w x 3 uint8 RGB array
    (0..255); v7.3 data, stored with the axes reversed, is transposed back. Raises
    ``FileNotFoundError`` for a missing file and ``ValueError`` for an unknown or ambiguous key
    or data that is not 5-D uint8 with 3 channels.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such SIDD block file")
    hdf5, names = _mat_variables(path)
    if key is None:
        key = path.stem if path.stem in names else (names[0] if len(names) == 1 else None)
        if key is None:
            raise ValueError(f"{path}: cannot tell which variable holds the blocks "
                             f"(variables {names}); pass key")
    elif key not in names:
        raise ValueError(f"{path}: no variable {key!r} (variables {names})")
    if hdf5:
        with _readable_mat(path), h5py.File(path, "r") as f:
            data = f[key]
            if not isinstance(data, h5py.Dataset):
                raise ValueError(f"{path}: variable {key!r} is not a numeric array")
            blocks = data[()].T
    else:
        with _readable_mat(path):
            blocks = scipy.io.loadmat(path, variable_names=[key])[key]
    if blocks.dtype != np.uint8 or blocks.ndim != 5 or blocks.shape[-1] != 3:
        raise ValueError(f"{path}: {key!r} is {blocks.dtype} of shape {blocks.shape}, expected "
                         "uint8 n_img x n_blk x h x w x 3")
    return np.ascontiguousarray(blocks)


def sidd_block_paths(sidd_dir: PathLike, test: bool = False) -> tuple[Path, Optional[Path]]:
    """(noisy, gt) block files of the SIDD validation set, or (noisy, None) of the benchmark."""
    sidd_dir = Path(sidd_dir)
    if test:
        return sidd_dir / "BenchmarkNoisyBlocksSrgb.mat", None
    return sidd_dir / "ValidationNoisyBlocksSrgb.mat", sidd_dir / "ValidationGtBlocksSrgb.mat"


class SIDDBlocks(Dataset):
    """The SIDD validation (or benchmark) blocks one by one, as the reference's ``BenchmarkTest``.

    Item ``index = img * n_blk + blk`` is ``(noisy, gt)``, two 3 x h x w float32 tensors in
    [0, 1], or ``(noisy,)`` when no ``gt_path`` is given. The uint8 arrays are kept as
    ``self.noisy`` and ``self.gt`` (n_img x n_blk x h x w x 3, ``gt`` may be None).
    """

    def __init__(self, noisy_path: PathLike, gt_path: Optional[PathLike] = None):
        self.noisy = load_sidd_blocks(noisy_path)
        self.gt = None if gt_path is None else load_sidd_blocks(gt_path)
        if self.gt is not None and self.gt.shape != self.noisy.shape:
            raise ValueError(f"{gt_path}: blocks of shape {self.gt.shape} do not match the noisy "
                             f"blocks {self.noisy.shape}")

    def __len__(self) -> int:
        return self.noisy.shape[0] * self.noisy.shape[1]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        if not 0 <= index < len(self):
            raise IndexError(f"block index {index} out of range 0..{len(self) - 1}")
        img, blk = divmod(index, self.noisy.shape[1])
        arrays = (self.noisy,) if self.gt is None else (self.noisy, self.gt)
        return tuple(_uint8_to_chw(a[img, blk]) for a in arrays)


# ---------------------------------------------------------------- DND

def _open_h5(path: Path) -> h5py.File:
    """Open a MATLAB v7.3 file; ``FileNotFoundError`` / ``ValueError`` with the path otherwise."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such DND file")
    if not h5py.is_hdf5(path):
        raise ValueError(f"{path}: not a MATLAB v7.3 (HDF5) file")
    return h5py.File(path, "r")


def load_dnd_info(dnd_dir: PathLike) -> list[list[Box]]:
    """Bounding boxes of the DND sRGB benchmark from ``<dnd_dir>/info.mat``.

    Returns one list per image (in file order, image 1 first) of ``(rows, cols)`` 0-based
    slices, one per box: MATLAB's 1-based inclusive [r0, c0, r1, c1] becomes
    ``(slice(r0 - 1, r1), slice(c0 - 1, c1))``.
    """
    path = Path(dnd_dir) / "info.mat"
    with _open_h5(path) as f:
        try:
            refs = np.asarray(f["info"]["boundingboxes"]).ravel()
            tables = [np.asarray(f[ref]).T for ref in refs]
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{path}: no readable info.boundingboxes ({err})") from None
    boxes = []
    for i, table in enumerate(tables, start=1):
        if table.ndim != 2 or table.shape[1] != 4 or np.any(table != np.round(table)):
            raise ValueError(f"{path}: boxes of image {i} are not integer rows [r0, c0, r1, c1]")
        table = table.astype(np.int64)
        if np.any(table[:, :2] < 1) or np.any(table[:, 2:] < table[:, :2]):
            raise ValueError(f"{path}: image {i} has an empty or out-of-range box")
        boxes.append([(slice(r0 - 1, r1), slice(c0 - 1, c1)) for r0, c0, r1, c1 in table])
    return boxes


def load_dnd_image(dnd_dir: PathLike, i: int) -> np.ndarray:
    """Noisy sRGB image ``i`` (1-based) of DND: H x W x 3 float32 in [0, 1]."""
    path = Path(dnd_dir) / "images_srgb" / f"{i:04d}.mat"
    with _open_h5(path) as f:
        if "InoisySRGB" not in f:
            raise ValueError(f"{path}: no variable 'InoisySRGB'")
        image = np.asarray(f["InoisySRGB"], dtype=np.float32).T
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"{path}: 'InoisySRGB' has shape {image.shape}, expected H x W x 3")
    return np.ascontiguousarray(image)


def dnd_crops(dnd_dir: PathLike) -> Iterator[tuple[int, int, np.ndarray]]:
    """Yield ``(i, k, crop)`` for every box: image and box numbers 1-based, image by image;
    ``crop`` an h x w x 3 float32 array in [0, 1] (512 x 512 in DND)."""
    for i, boxes in enumerate(load_dnd_info(dnd_dir), start=1):
        image = load_dnd_image(dnd_dir, i)
        for k, (rows, cols) in enumerate(boxes, start=1):
            if rows.stop > image.shape[0] or cols.stop > image.shape[1]:
                raise ValueError(f"{dnd_dir}: box {k} of image {i} exceeds the image "
                                 f"{image.shape[:2]}")
            yield i, k, np.ascontiguousarray(image[rows, cols])


def save_mat(path: PathLike, variables: dict) -> None:
    """``scipy.io.savemat`` (MATLAB v5) written atomically."""
    atomic_write(path, lambda tmp: scipy.io.savemat(tmp, variables, appendmat=False))


def dnd_crop_path(out_dir: PathLike, i: int, k: int) -> Path:
    """Submission file of box ``k`` of image ``i`` (both 1-based)."""
    return Path(out_dir) / f"{i:04d}_{k:02d}.mat"


def save_dnd_crop(out_dir: PathLike, i: int, k: int, crop: np.ndarray) -> Path:
    """Save a denoised crop (h x w x 3, [0, 1]) as ``Idenoised_crop`` (float32) in
    ``out_dir/{i:04d}_{k:02d}.mat``; returns the path."""
    crop = np.asarray(crop)
    if crop.ndim != 3 or crop.shape[2] != 3:
        raise ValueError(f"expected an h x w x 3 crop, got shape {crop.shape}")
    path = dnd_crop_path(out_dir, i, k)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_mat(path, {"Idenoised_crop": crop.astype(np.float32)})
    return path


def bundle_dnd_submission(out_dir: PathLike, n_images: int = DND_IMAGES,
                          n_boxes: int = DND_BOXES) -> Path:
    """Bundle the crops of ``save_dnd_crop`` for the DND server; returns ``out_dir/bundled``.

    Writes ``bundled/{i:04d}.mat`` per image with ``Idenoised`` (a 1 x n_boxes cell of the
    crops), ``israw`` (logical false) and ``eval_version`` ('1.0'), the variables and types of
    the DND kit's ``bundle_submissions_srgb``. Raises ``FileNotFoundError`` naming the first
    missing crop (and how many are missing) before writing anything.
    """
    out_dir = Path(out_dir)
    paths = [[dnd_crop_path(out_dir, i, k) for k in range(1, n_boxes + 1)]
             for i in range(1, n_images + 1)]
    missing = [p for row in paths for p in row if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{missing[0]}: denoised crop not found "
                                f"({len(missing)} of {n_images * n_boxes} missing)")
    bundled = out_dir / "bundled"
    bundled.mkdir(exist_ok=True)
    for i, row in enumerate(paths, start=1):
        crops = np.empty((n_boxes,), dtype=object)
        for k, path in enumerate(row):
            crops[k] = scipy.io.loadmat(path)["Idenoised_crop"]
        save_mat(bundled / f"{i:04d}.mat",
                 {"Idenoised": crops, "israw": False, "eval_version": "1.0"})
    return bundled


def denoise_sidd_blocks(restore: Callable[[np.ndarray], np.ndarray], noisy: np.ndarray, gt: Optional[np.ndarray],
                        iterate: Callable[[Iterable, int], Iterable] = lambda items, total: items
                        ) -> tuple[np.ndarray, list[dict]]:
    """Denoise the n_img x n_blk x h x w x 3 uint8 ``noisy`` blocks in the reference's order with
    ``restore`` (h x w x 3 float32 in [0, 1] -> restored float image); ``iterate(items, total)``
    wraps the loop (e.g. a progress bar). Returns the denoised blocks (uint8 of the clipped output)
    and, with ``gt`` (the clean blocks, None for the benchmark), one row per block: 1-based image
    and block numbers, PSNR and SSIM (uint8 RGB, border 0)."""
    denoised, rows = np.zeros_like(noisy), []
    for i, k in iterate(np.ndindex(noisy.shape[:2]), noisy.shape[0] * noisy.shape[1]):
        denoised[i, k] = to_uint8(restore(noisy[i, k].astype(np.float32) / 255.0))
        if gt is not None:
            rows.append({"image": i + 1, "block": k + 1, "psnr": calculate_psnr(denoised[i, k], gt[i, k]),
                         "ssim": calculate_ssim(denoised[i, k], gt[i, k])})
    return denoised, rows


def denoise_dnd(restore: Callable[[np.ndarray], np.ndarray], dnd_dir: PathLike, boxes: list[list[Box]],
                out_dir: PathLike, iterate: Callable[[Iterable, int], Iterable] = lambda items, total: items) -> Path:
    """Denoise every box of every DND image (``dnd_crops``; ``boxes`` from ``load_dnd_info``) with
    ``restore`` (H x W x 3 float in [0, 1] -> restored float image) into
    ``out_dir/{i:04d}_{k:02d}.mat``, then bundle them per image; returns the bundled folder.
    ``iterate(items, total)`` wraps the loop (e.g. a progress bar)."""
    total, crops = sum(len(b) for b in boxes), dnd_crops(dnd_dir)
    for _ in iterate(range(total), total):
        i, k, crop = next(crops)
        save_dnd_crop(out_dir, i, k, restore(crop))
    return bundle_dnd_submission(out_dir, n_images=len(boxes), n_boxes=len(boxes[0]))


def sidd_submission(denoised: np.ndarray, seconds_mp: float, machine: str) -> dict:
    """The variables of the SIDD kit's ``SubmitSrgb.mat``: ``DenoisedBlocksSrgb`` (an n_img x n_blk
    cell of the h x w x 3 uint8 blocks of ``denoised``, n_img x n_blk x h x w x 3), ``TimeMPSrgb``
    (seconds per megapixel), ``OptionalData`` (method name, ``machine``)."""
    cells = np.empty(denoised.shape[:2], dtype=object)
    for index in np.ndindex(cells.shape):
        cells[index] = denoised[index]
    return {"DenoisedBlocksSrgb": cells, "TimeMPSrgb": seconds_mp,
            "OptionalData": {"MethodName": "VIRNet", "MachineSpecs": machine}}
