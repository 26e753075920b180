"""Image reading and writing with one policy for every file format, plus atomic file writes.

Reading policy (``read_image``, ``read_image_uint8``), applied to PNG, JPEG, BMP and TIFF files:

- Files are decoded with OpenCV (``cv2.IMREAD_UNCHANGED``): pixels as stored, no EXIF rotation
  (as the reference code reads its test images); only the first page of a multi-page TIFF.
- Sample types: 8-bit (``uint8``) scales by 1/255, 16-bit (``uint16``) by 1/65535. Any other
  sample type (signed, 32-bit, floating point) is rejected.
- Channels: grayscale is replicated to three channels; an alpha channel (RGBA, gray+alpha) is
  dropped, never composited: colours are returned as stored, whatever their opacity. Palette
  images are expanded to their RGB colours by the decoder. Output channel order is RGB.
- Any failure (missing file, empty or corrupt file, zero-size image, unsupported sample type or
  channel count) raises ``ImageReadError``, a ``ValueError`` whose one-line message names the file.
"""
from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from typing import Callable, Iterator, Union

import cv2
import numpy as np

PathLike = Union[str, os.PathLike]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
"""Lower-case suffixes recognised as image files (matched case-insensitively)."""

_SCALE = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}


class ImageReadError(ValueError):
    """An image file could not be read under the reading policy; the message names the file."""


def _read_raw(path: PathLike) -> np.ndarray:
    """Decode ``path`` and return its samples as H x W x 3 RGB (uint8 or uint16), policy applied."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: no such image file")
    if path.stat().st_size == 0:
        raise ImageReadError(f"{path}: empty file")
    im = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if im is None:
        raise ImageReadError(f"{path}: not a readable image (corrupt or unsupported format)")
    if im.dtype not in _SCALE:
        raise ImageReadError(f"{path}: unsupported sample type {im.dtype} (only 8- and 16-bit)")
    if im.size == 0:
        raise ImageReadError(f"{path}: zero-size image {im.shape}")
    if im.ndim == 2:
        im = im[:, :, None]
    channels = im.shape[2]
    if channels in (1, 2):  # gray, gray + alpha
        return np.repeat(im[:, :, :1], 3, axis=2)
    if channels in (3, 4):  # BGR, BGRA
        return np.ascontiguousarray(im[:, :, 2::-1])
    raise ImageReadError(f"{path}: unsupported image layout {im.shape}")


def read_image(path: PathLike) -> np.ndarray:
    """Read an image file as float32 RGB.

    Returns an H x W x 3 float32 array in [0, 1]: 8-bit samples divided by 255, 16-bit samples
    by 65535 (see the module docstring for gray, alpha and palette images).
    Raises ``ImageReadError`` when the file cannot be read.
    """
    im = _read_raw(path)
    return im.astype(np.float32) / _SCALE[im.dtype]


def read_image_uint8(path: PathLike) -> np.ndarray:
    """Read an image file as uint8 RGB (ground truth and metrics).

    Returns an H x W x 3 uint8 array in [0, 255]. 8-bit files are returned exactly as stored;
    16-bit samples are mapped to round(v * 255 / 65535) in integer arithmetic (no ties occur).
    Raises ``ImageReadError`` when the file cannot be read.
    """
    im = _read_raw(path)
    if im.dtype == np.uint16:
        im = ((im.astype(np.uint32) + 128) // 257).astype(np.uint8)
    return im


def to_uint8(im: np.ndarray) -> np.ndarray:
    """Convert an image to uint8 in [0, 255], any shape.

    uint8 input is returned unchanged. Floating input is read as [0, 1]: clipped to [0, 1],
    scaled by 255 in its own precision and rounded to nearest (ties to even), the same as
    ``skimage.img_as_ubyte(np.clip(im, 0, 1))``. Other dtypes raise ``TypeError``.
    """
    im = np.asarray(im)
    if im.dtype == np.uint8:
        return im
    if not np.issubdtype(im.dtype, np.floating):
        raise TypeError(f"expected a uint8 or floating image, got {im.dtype}")
    if im.dtype == np.float16:
        im = im.astype(np.float32)
    return np.rint(np.clip(im, 0.0, 1.0) * 255).astype(np.uint8)


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Context manager giving a fresh temporary path beside ``path``; on success it replaces ``path``.

    Write the whole file to the yielded path inside the ``with`` block. On normal exit the
    temporary file is flushed to disk (fsync) and renamed over ``path`` with ``os.replace`` (the
    umask applies to its mode as to any new file); if the block raises, the temporary file is
    removed and ``path`` is left untouched. The temporary name ends with the suffix of ``path``,
    so writers that pick a format or append an extension by suffix behave as for ``path``.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp{path.suffix}")
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: PathLike, write_fn: Callable[[Path], object]) -> None:
    """Write a file atomically: ``write_fn(tmp_path)`` writes the whole content to a temporary path.

    Any file type works (checkpoints via ``torch.save``, ``.mat``, csv). The file at ``path`` is
    replaced only once ``write_fn`` has returned; if it raises, ``path`` is left untouched and no
    temporary file remains. See ``atomic_path``.
    """
    with atomic_path(path) as tmp:
        write_fn(tmp)


def write_image(path: PathLike, im: np.ndarray) -> None:
    """Write an RGB or gray image atomically, in the format named by the suffix of ``path``.

    ``im``: H x W x 3 RGB or H x W gray, either uint8 in [0, 255] or floating in [0, 1]
    (converted by ``to_uint8``: clipped, rounded to nearest). A path without a suffix is written
    as PNG under the exact name given. Raises ``ValueError`` for another shape or a suffix
    OpenCV cannot encode; the file at ``path`` is then left untouched.
    """
    path = Path(path)
    im = to_uint8(im)
    if im.ndim == 3 and im.shape[2] == 3:
        im = im[:, :, ::-1]  # RGB -> BGR for OpenCV
    elif im.ndim != 2:
        raise ValueError(f"{path}: expected an H x W x 3 or H x W image, got shape {im.shape}")
    ext = path.suffix or ".png"
    try:
        ok, buf = cv2.imencode(ext, np.ascontiguousarray(im))
    except cv2.error as err:
        raise ValueError(f"{path}: OpenCV cannot encode images as {ext!r}") from err
    if not ok:
        raise ValueError(f"{path}: OpenCV failed to encode this image as {ext!r}")
    atomic_write(path, lambda tmp: tmp.write_bytes(buf.tobytes()))


def list_images(folder: PathLike) -> list[Path]:
    """Image files directly inside ``folder`` (suffix in ``IMAGE_EXTENSIONS``, any case).

    Returns the paths sorted by their path string (so ``10.tif`` comes before ``2.tif``).
    Raises ``FileNotFoundError`` when ``folder`` is not a directory.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such image folder")
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
    return sorted(files, key=str)
