"""Builders of tiny real-noise data sets in the layouts of SIDD and DND, shared by the tests of the
real-noise data layer, trainer and demo."""
from __future__ import annotations

from pathlib import Path

import cv2
import h5py
import numpy as np
import scipy.io

from utils.image_io import write_image

SIDD_VAL_KEYS = ("ValidationNoisyBlocksSrgb", "ValidationGtBlocksSrgb")


def write_v73(path: Path, variables: dict) -> None:
    """Write arrays as MATLAB v7.3 does: HDF5 with axes reversed, a 512-byte MAT header block."""
    with h5py.File(path, "w", userblock_size=512) as f:
        for name, array in variables.items():
            f.create_dataset(name, data=np.asarray(array).T)
            f[name].attrs["MATLAB_class"] = np.bytes_(str(np.asarray(array).dtype))
    text = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 " \
           b"HDF5 schema 1.00 ."
    header = text.ljust(116, b" ") + b"\x00" * 8 + b"\x00\x02" + b"IM"
    with open(path, "r+b") as f:
        f.write(header)


def noisy_pairs(shape: tuple, seed: int = 0, sigmas=(6.0, 10.0, 14.0)) -> tuple[np.ndarray, np.ndarray]:
    """(noisy, clean) uint8 RGB arrays of ``shape`` (... x h x w x 3): smooth random clean images and
    Gaussian noise whose std (0-255 units) differs per colour channel, as camera noise does."""
    rng = np.random.default_rng(seed)
    *lead, h, w, _ = shape
    count = int(np.prod(lead)) if lead else 1
    clean = np.stack([cv2.resize(rng.random((5, 5, 3)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
                      for _ in range(count)])
    clean = np.clip(clean * 200 + 28, 0, 255)
    noisy = clean + rng.standard_normal(clean.shape) * np.asarray(sigmas)
    as_u8 = lambda a: np.rint(np.clip(a, 0, 255)).astype(np.uint8).reshape(shape)  # noqa: E731
    return as_u8(noisy), as_u8(clean)


def write_sidd_patches(root: Path, noisy: np.ndarray, clean: np.ndarray) -> Path:
    """A prepared SIDD patch folder (``root/noisy``, ``root/gt``, as ``datasets.prepare_sidd`` makes)
    from n x h x w x 3 uint8 pairs; returns the noisy folder."""
    for sub, images in (("noisy", noisy), ("gt", clean)):
        (root / sub).mkdir(parents=True)
        for k, im in enumerate(images, start=1):
            write_image(root / sub / f"sidd_0001_{k:04d}.png", im)
    return root / "noisy"


def write_sidd_blocks(folder: Path, noisy: np.ndarray, clean: np.ndarray, v73: bool = False) -> Path:
    """SIDD validation block files (n_img x n_blk x h x w x 3 uint8) in ``folder``, as MATLAB v5 or
    v7.3 (HDF5); returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    for key, blocks in zip(SIDD_VAL_KEYS, (noisy, clean)):
        if v73:
            write_v73(folder / f"{key}.mat", {key: blocks})
        else:
            scipy.io.savemat(folder / f"{key}.mat", {key: blocks})
    return folder


def write_dnd(root: Path, boxes: list[np.ndarray], shapes: list[tuple[int, int]],
              seed: int = 9) -> list[np.ndarray]:
    """A DND-like folder: ``root/info.mat`` (v7.3) whose ``info.boundingboxes`` references one
    n_box x 4 table of MATLAB boxes [r0, c0, r1, c1] per image, and ``root/images_srgb/{i:04d}.mat``
    (v7.3, ``InoisySRGB``) of the given h x w sizes. Returns the H x W x 3 float32 images."""
    rng = np.random.default_rng(seed)
    with h5py.File(root / "info.mat", "w", userblock_size=512) as f:
        refs = f.create_group("#refs#")
        info = f.create_group("info")
        bb = info.create_dataset("boundingboxes", shape=(1, len(boxes)), dtype=h5py.ref_dtype)
        for i, table in enumerate(boxes):
            bb[0, i] = refs.create_dataset(f"b{i}", data=np.asarray(table, dtype=np.float64).T).ref  # 4 x n_box
    (root / "images_srgb").mkdir()
    images = []
    for i, (h, w) in enumerate(shapes, start=1):
        image = rng.random((h, w, 3), dtype=np.float32)
        write_v73(root / "images_srgb" / f"{i:04d}.mat", {"InoisySRGB": image})
        images.append(image)
    return images


def write_sidd_medium(root: Path, count: int, shape: tuple[int, int],
                      seed: int = 0) -> list[tuple[Path, Path]]:
    """A SIDD-Medium-like tree: scene folders ``root/{i:04d}_001_S6`` holding
    ``{i:04d}_NOISY_SRGB_010.PNG`` and ``{i:04d}_GT_SRGB_010.PNG`` (h x w = ``shape``, from
    ``noisy_pairs``) for i = 1..count. Returns the (noisy, gt) paths in the order
    ``datasets.prepare_sidd`` numbers them."""
    noisy, clean = noisy_pairs((count, *shape, 3), seed=seed)
    pairs = []
    for i in range(1, count + 1):
        scene = root / f"{i:04d}_001_S6"
        scene.mkdir(parents=True)
        pair = (scene / f"{i:04d}_NOISY_SRGB_010.PNG", scene / f"{i:04d}_GT_SRGB_010.PNG")
        write_image(pair[0], noisy[i - 1])
        write_image(pair[1], clean[i - 1])
        pairs.append(pair)
    return pairs
