"""Image reading and writing with one policy for every file format, plus atomic file writes.

Reading policy (``read_image``, ``read_image_uint8``), applied to PNG, JPEG, BMP and TIFF files:

- Files are decoded with OpenCV (``cv2.IMREAD_UNCHANGED``), then turned upright by their EXIF
  orientation tag (JPEG, PNG, TIFF; ``utils.image_meta``), as image viewers and OpenCV's
  ``imread`` show them; only the first page of a multi-page TIFF.
- Sample types: 8-bit (``uint8``) scales by 1/255, 16-bit (``uint16``) by 1/65535. Any other
  sample type (signed, 32-bit, floating point) is rejected.
- Channels: grayscale is replicated to three channels; an alpha channel (RGBA, gray+alpha) is
  dropped, never composited: colours are returned as stored, whatever their opacity. Palette
  images are expanded to their RGB colours by the decoder. Output channel order is RGB.
- Integrity: a file is read once and decoded from memory. A truncated or corrupt file is an
  error, never an image padded with gray: a JPEG must be well formed up to an end-of-image
  marker after its compressed data, and libpng refuses a PNG with missing chunks or a bad CRC of
  its image data. Not detected: damage inside JPEG compressed data that keeps the marker
  structure intact (OpenCV does not report libjpeg's warnings), damage inside the strips of a
  TIFF file (OpenCV logs libtiff's error but returns the image) and in the pixels of a BMP file.
  ``check_image_file`` finds the same damage without decoding JPEG and PNG pixels.
- Size: a PNG, JPEG or BMP whose header declares more than ``MAX_PIXELS`` pixels is refused from
  the header, before any decoding, with the memory reading it would take.
- Any failure (missing file, empty, truncated or corrupt file, zero-size or too large image,
  unsupported sample type or channel count) raises ``ImageReadError``, a ``ValueError`` whose
  one-line message names the file. OpenCV's own log lines are silenced: the messages are ours.

Faithful outputs (the demos): ``read_image_with_info`` returns the float32 RGB image and an
``ImageInfo`` (bit depth, grayscale, the alpha channel, ICC profile, EXIF), and
``write_image_like`` writes a restoration the way its input was stored: 16-bit for 16-bit input
(or as asked), one channel for grayscale, the original alpha (resized for SR) for RGBA, the ICC
profile and the EXIF tags (less orientation and thumbnail) embedded. A profile littlecms cannot
parse, or one the encoder refuses (e.g. larger than a JPEG segment), is left out with one warning
line on stderr naming the file; the image is always written.

Writes (``atomic_path``, ``atomic_write``, ``write_image``) go through a temporary file
``.NAME.HEX.tmpSUFFIX`` beside the target. A process killed mid-write leaves it behind: listings
ignore hidden files (``list_images``), and ``remove_stale_temporaries`` deletes such leftovers.
"""
from __future__ import annotations

import contextlib
import io
import os
import re
import secrets
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional, Union

import cv2
import numpy as np

from utils.errors import UserError
from utils.image_meta import apply_orientation, exif_for_size, icc_problem, may_carry_exif, read_meta

if hasattr(cv2, "utils") and hasattr(cv2.utils, "logging"):  # our errors name the file; OpenCV's lines repeat them
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)

PathLike = Union[str, os.PathLike]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
"""Lower-case suffixes recognised as image files (matched case-insensitively)."""

_SCALE = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}
MAX_PIXELS = 1 << 28
"""The most pixels (width x height, about 268 million) an image file may declare; reading one takes
12 bytes per pixel as float32 RGB beside the decoded samples."""


class ImageReadError(UserError, ValueError):
    """An image file could not be read under the reading policy; the message names the file."""


_JPEG_MAGIC = b"\xff\xd8"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_NO_LENGTH = frozenset([0x01, *range(0xD0, 0xD8)])  # TEM and RST0-7 carry no length field
_PNG_CRITICAL = frozenset([b"IHDR", b"PLTE", b"IDAT", b"IEND"])


def _jpeg_problem(data: bytes) -> Optional[str]:
    """Why the JPEG stream ``data`` (starting with SOI) is truncated or malformed, or None.

    Walks the marker segments after SOI, each of which must lie inside the file. The compressed
    data of a scan ends at the first 0xFF byte followed by neither 0x00 (stuffing), 0xFF (fill)
    nor a restart marker; a marker must start there, and an end-of-image marker must follow the
    last scan (bytes after it are allowed). One NumPy pass over the bytes, no decoding.
    """
    n = len(data)
    arr = np.frombuffer(data, np.uint8)
    ff = np.flatnonzero(arr[:-1] == 0xFF)
    nxt = arr[ff + 1]
    scan_ends = ff[(nxt != 0x00) & (nxt != 0xFF) & ((nxt < 0xD0) | (nxt > 0xD7))]
    pos, scans = 2, 0
    while pos < n:
        if data[pos] != 0xFF:
            return f"corrupt JPEG data (no marker at byte {pos})"
        while pos < n and data[pos] == 0xFF:
            pos += 1
        if pos == n:
            break
        marker = data[pos]
        pos += 1
        if marker == 0xD9:
            return None if scans else "corrupt JPEG data (end-of-image marker before any scan)"
        if marker in _JPEG_NO_LENGTH:
            continue
        if pos + 2 > n:
            break
        pos += (data[pos] << 8) | data[pos + 1]
        if marker == 0xDA and pos <= n:  # start of scan: skip its compressed data
            scans += 1
            k = int(np.searchsorted(scan_ends, pos))
            if k == len(scan_ends):
                break
            pos = int(scan_ends[k])
    return "truncated JPEG file (no end-of-image marker after the image data)"


def _png_problem(data: bytes) -> Optional[str]:
    """Why the PNG stream ``data`` (starting with the signature) is truncated or corrupt, or None.

    Walks the chunks up to IEND, each of which must lie inside the file, and compares the CRC of
    every critical chunk (IHDR, PLTE, IDAT, IEND), as libpng does. No decompression.
    """
    n, pos = len(data), len(_PNG_MAGIC)
    with memoryview(data) as view:
        while pos + 12 <= n:
            end = pos + 12 + int.from_bytes(data[pos:pos + 4], "big")
            kind = data[pos + 4:pos + 8]
            if end > n:
                break
            crc = int.from_bytes(data[end - 4:end], "big")
            if kind in _PNG_CRITICAL and zlib.crc32(view[pos + 4:end - 4]) != crc:
                name = kind.decode("latin-1")
                return f"corrupt PNG data (CRC mismatch in chunk {name} at byte {pos})"
            if kind == b"IEND":
                return None
            pos = end
    return "truncated PNG file (no IEND chunk)"


_JPEG_SOF = frozenset([0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF])


def declared_size(data: bytes) -> Optional[tuple[int, int, int]]:
    """(width, height, bytes per decoded pixel) that the header of a PNG, JPEG or BMP file ``data``
    declares, without decoding; None for another format or a header too short to tell."""
    if data.startswith(_PNG_MAGIC) and len(data) >= 26 and data[12:16] == b"IHDR":
        width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        channels = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}.get(data[25], 4)
        return width, height, channels * (2 if data[24] == 16 else 1)
    if data.startswith(_JPEG_MAGIC):
        pos = 2
        while pos + 9 < len(data) and data[pos] == 0xFF:
            marker = data[pos + 1]
            if marker in _JPEG_SOF:
                height, width = int.from_bytes(data[pos + 5:pos + 7], "big"), int.from_bytes(data[pos + 7:pos + 9], "big")
                return width, height, data[pos + 9] * (2 if data[pos + 4] > 8 else 1)
            if marker == 0xFF or marker in _JPEG_NO_LENGTH:
                pos += 1 if marker == 0xFF else 2
                continue
            pos += 2 + int.from_bytes(data[pos + 2:pos + 4], "big")
        return None
    if data.startswith(b"BM") and len(data) >= 30:
        width, height = (abs(int.from_bytes(data[k:k + 4], "little", signed=True)) for k in (18, 22))
        return width, height, 4
    return None


def _refuse_huge(path: Path, data: bytes) -> None:
    """Raise ``ImageReadError`` when the header of ``data`` declares more than ``MAX_PIXELS`` pixels,
    naming the memory reading it would take (decoded samples plus the float32 RGB image)."""
    size = declared_size(data)
    if size is None or size[0] * size[1] <= MAX_PIXELS:
        return
    width, height, per_pixel = size
    need = width * height * (per_pixel + 12) / 2 ** 30
    raise ImageReadError(f"{path}: declares {width} x {height} pixels ({width * height / 1e6:.0f} MP); reading it "
                         f"would need {need:.1f} GiB of memory, and images above {MAX_PIXELS / 1e6:.0f} MP are "
                         f"refused; split it into smaller images")


def _file_bytes(path: Path) -> bytes:
    """The bytes of ``path``; raises ``ImageReadError`` for a missing, unreadable or empty file."""
    if not path.is_file():
        raise ImageReadError(f"{path}: no such image file")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ImageReadError(f"{path}: cannot read the file ({err.strerror})") from None
    if not data:
        raise ImageReadError(f"{path}: empty file")
    return data


def _damaged(path: Path, problem: Optional[str]) -> None:
    """Raise ``ImageReadError`` for a structural ``problem`` of ``path``, if any."""
    if problem:
        raise ImageReadError(f"{path}: {problem}")


def _tiff_as_stored(data: bytes) -> bytes:
    """The TIFF file ``data`` with the orientation tag of its first page set to 1 (none). OpenCV's
    TIFF decoder applies that tag itself, even for ``IMREAD_UNCHANGED``, and not alike for every
    layout (e.g. only orientations 1-4 of gray pages); the readers apply it from the EXIF."""
    order = "little" if data[:2] == b"II" else "big"
    ifd = int.from_bytes(data[4:8], order)
    if ifd + 2 > len(data):
        return data
    count = int.from_bytes(data[ifd:ifd + 2], order)
    for entry in range(ifd + 2, min(ifd + 2 + 12 * count, len(data) - 11), 12):
        if int.from_bytes(data[entry:entry + 2], order) == 0x0112 and int.from_bytes(data[entry + 2:entry + 4], order) == 3:
            patched = bytearray(data)
            patched[entry + 8:entry + 10] = (1).to_bytes(2, order)
            return bytes(patched)
    return data


def _decode(path: Path, data: bytes) -> np.ndarray:
    """Decode ``data``, the content of ``path``, as stored (``cv2.IMREAD_UNCHANGED``; a TIFF's
    orientation tag not applied, ``_tiff_as_stored``), a JPEG after ``_jpeg_problem``'s check;
    raises ``ImageReadError`` for a damaged or empty image."""
    _refuse_huge(path, data)
    if data.startswith(_JPEG_MAGIC):
        _damaged(path, _jpeg_problem(data))
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        data = _tiff_as_stored(data)
    try:
        im = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error:  # a header OpenCV refuses by assertion (e.g. an absurd width)
        im = None
    if im is None:
        if data.startswith(_PNG_MAGIC):  # say why libpng refused it, when the chunks tell
            _damaged(path, _png_problem(data))
        raise ImageReadError(f"{path}: not a readable image (corrupt or unsupported format)")
    if im.size == 0:
        raise ImageReadError(f"{path}: zero-size image {im.shape}")
    return im


def _apply_policy(path: Path, im: np.ndarray) -> np.ndarray:
    """Samples ``im`` as OpenCV decoded them -> H x W x 3 RGB (uint8 or uint16), policy applied."""
    if im.dtype not in _SCALE:
        raise ImageReadError(f"{path}: unsupported sample type {im.dtype} (only 8- and 16-bit)")
    if im.ndim == 2:
        im = im[:, :, None]
    channels = im.shape[2]
    if channels in (1, 2):  # gray, gray + alpha
        return np.repeat(im[:, :, :1], 3, axis=2)
    if channels in (3, 4):  # BGR, BGRA
        return np.ascontiguousarray(im[:, :, 2::-1])
    raise ImageReadError(f"{path}: unsupported image layout {im.shape}")


def _read_raw(path: PathLike) -> np.ndarray:
    """Decode ``path`` and return its samples as H x W x 3 RGB (uint8 or uint16), upright, policy
    applied."""
    path = Path(path)
    data = _file_bytes(path)
    im = _decode(path, data)
    if may_carry_exif(data):
        im = apply_orientation(im, read_meta(data, icc=False).orientation)
    return _apply_policy(path, im)


@dataclass(frozen=True)
class ImageInfo:
    """What a restoration keeps of its input file (``read_image_with_info``, ``write_image_like``).

    bit_depth: 8 or 16, the bits per stored sample. gray: stored as one channel (gray or gray +
    alpha). alpha: the alpha channel as stored (H x W, uint8 or uint16, upright), or None.
    orientation: the EXIF orientation that was applied (1: none). icc: the ICC profile's bytes.
    exif: the EXIF block to carry (``utils.image_meta.FileMeta.exif``), or None.
    """
    bit_depth: int = 8
    gray: bool = False
    alpha: Optional[np.ndarray] = None
    orientation: int = 1
    icc: Optional[bytes] = None
    exif: Optional[bytes] = None


def read_image_with_info(path: PathLike) -> tuple[np.ndarray, ImageInfo]:
    """Read an image file as ``read_image`` does (H x W x 3 float32 RGB in [0, 1], upright) and
    return it with its ``ImageInfo``. Raises ``ImageReadError`` when the file cannot be read."""
    path = Path(path)
    data = _file_bytes(path)
    meta = read_meta(data)
    stored = apply_orientation(_decode(path, data), meta.orientation)
    rgb = _apply_policy(path, stored)
    channels = 1 if stored.ndim == 2 else stored.shape[2]
    alpha = stored[:, :, -1].copy() if channels in (2, 4) else None
    info = ImageInfo(16 if rgb.dtype == np.uint16 else 8, channels in (1, 2), alpha, meta.orientation,
                     meta.icc, meta.exif)
    return rgb.astype(np.float32) / _SCALE[rgb.dtype], info


def read_image_as_stored(path: PathLike) -> np.ndarray:
    """Read an image file as stored: OpenCV's ``IMREAD_UNCHANGED`` array, integrity checked.

    Returns H x W (gray) or H x W x C (C = 2, 3, 4: gray + alpha, BGR, BGRA in OpenCV's order)
    with the stored sample type (uint8, uint16, or another such as float32 for TIFF), in stored
    order (no EXIF orientation), for code that keeps files as they are (patch preparation). The
    file is read once and decoded once.
    Raises ``ImageReadError`` for a missing, empty, truncated, corrupt or zero-size image.
    """
    path = Path(path)
    return _decode(path, _file_bytes(path))


def check_image_file(path: PathLike) -> None:
    """Raise ``ImageReadError`` (one line naming the file) when ``read_image`` would refuse
    ``path``, without decoding pixels where the format allows it.

    JPEG and PNG files get the structure checks only (``_jpeg_problem``, ``_png_problem``): a
    truncated file, a broken marker structure or a bad chunk CRC is found at about 1 ms per MB.
    Damage that only the decoder notices (a corrupt zlib stream with valid CRCs) is not. Other
    formats are decoded in full, with ``read_image``'s checks.
    """
    path = Path(path)
    data = _file_bytes(path)
    _refuse_huge(path, data)
    if data.startswith(_JPEG_MAGIC):
        _damaged(path, _jpeg_problem(data))
    elif data.startswith(_PNG_MAGIC):
        _damaged(path, _png_problem(data))
    else:
        _apply_policy(path, _decode(path, data))


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
    removed and ``path`` is left untouched. The temporary name, ``.NAME.HEX.tmpSUFFIX``, ends with
    the suffix of ``path``, so writers that pick a format or append an extension by suffix behave
    as for ``path``; a process killed mid-write leaves it behind (``remove_stale_temporaries``).
    An ``OSError`` of the write that names no file or the temporary one (a full disk, a folder
    that cannot be written) is re-raised naming ``path``.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp{path.suffix}")
    with _naming_target(path, tmp):
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        with _naming_target(path, tmp):
            yield tmp
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def _naming_target(path: Path, tmp: Path) -> Iterator[None]:
    """Re-raise an ``OSError`` that names ``tmp`` or no file (a full disk in ``write``) as the same
    error naming ``path``, the file the user asked for."""
    try:
        yield
    except OSError as err:
        if err.errno is None or err.filename not in (None, os.fspath(tmp)):
            raise
        raise OSError(err.errno, err.strerror, os.fspath(path)) from err


def atomic_write(path: PathLike, write_fn: Callable[[Path], object]) -> None:
    """Write a file atomically: ``write_fn(tmp_path)`` writes the whole content to a temporary path.

    Any file type works (checkpoints via ``torch.save``, ``.mat``, csv). The file at ``path`` is
    replaced only once ``write_fn`` has returned; if it raises, ``path`` is left untouched and no
    temporary file remains. See ``atomic_path``.
    """
    with atomic_path(path) as tmp:
        write_fn(tmp)


def save_torch(obj: object, path: PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` atomically (see ``atomic_write``), creating the folder;
    returns the path. The file is serialised in memory first and written by Python, so that a full
    disk raises ``OSError`` naming ``path`` (torch's own writer raises a bare RuntimeError). Torch
    is imported here, by the training floor and the exporter that call this, not by image readers."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write(path, lambda tmp: tmp.write_bytes(buffer.getbuffer()))
    return path


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
    _encode_and_write(path, im)


_METADATA_FORMATS = (".png", ".jpg", ".jpeg")
"""Suffixes of the formats OpenCV embeds ICC profiles and EXIF blocks in."""


def _encode(ext: str, im: np.ndarray, icc: Optional[bytes], exif: Optional[bytes]) -> Optional[np.ndarray]:
    """The encoded bytes of ``im`` with ``icc`` and ``exif`` embedded, or None when OpenCV refuses."""
    kinds = [(kind, np.frombuffer(block, np.uint8)) for kind, block in
             ((cv2.IMAGE_METADATA_ICCP, icc), (cv2.IMAGE_METADATA_EXIF, exif)) if block]
    try:
        if kinds:
            ok, buf = cv2.imencodeWithMetadata(ext, im, [k for k, _ in kinds], [b for _, b in kinds])
        else:
            ok, buf = cv2.imencode(ext, im)
    except cv2.error:
        return None
    return buf if ok else None


def _warn(path: Path, what: str) -> None:
    """One warning line on stderr about the file ``path``."""
    print(f"warning: {path}: {what}", file=sys.stderr)


def _encode_and_write(path: Path, im: np.ndarray, icc: Optional[bytes] = None, exif: Optional[bytes] = None) -> None:
    """Encode ``im`` (H x W, or H x W x 3 / 4 in OpenCV's BGR(A) order; uint8, or uint16 for PNG and
    TIFF) in the format of the suffix of ``path`` (PNG without one), with ``icc`` and ``exif``
    embedded where the format holds them (``_METADATA_FORMATS``), and write it atomically. An ICC
    profile that littlecms cannot parse, or metadata the encoder refuses, are left out with one warning
    line each (the pixels are always written). Raises ``ValueError`` for a suffix or sample type OpenCV
    cannot encode; ``path`` is then left untouched."""
    ext = path.suffix or ".png"
    im = np.ascontiguousarray(im)
    if ext.lower() not in _METADATA_FORMATS:
        icc = exif = None
    if icc and (problem := icc_problem(icc)):
        _warn(path, f"the input's ICC profile ({len(icc)} bytes) is not a valid profile ({problem}); written without it")
        icc = None
    buf = _encode(ext, im, icc, exif)
    if buf is None and icc:
        buf = _encode(ext, im, None, exif)
        if buf is not None:
            _warn(path, f"OpenCV cannot embed the input's ICC profile ({len(icc)} bytes) in a {ext} file; "
                        f"written without it")
    if buf is None and exif:
        buf = _encode(ext, im, None, None)
        if buf is not None:
            _warn(path, "OpenCV cannot embed the input's metadata (ICC profile, EXIF) in this file; written without it")
    if buf is None:
        try:
            cv2.imencode(ext, im)
        except cv2.error as err:
            raise ValueError(f"{path}: OpenCV cannot encode {im.dtype} images as {ext!r}") from err
        raise ValueError(f"{path}: OpenCV failed to encode this image as {ext!r}")
    atomic_write(path, lambda tmp: tmp.write_bytes(buf.tobytes()))


def _alpha_for(alpha: np.ndarray, height: int, width: int, depth: int) -> np.ndarray:
    """The stored alpha channel as ``height`` x ``width`` samples of ``depth`` bits: unchanged when
    it fits, else rescaled in value and resized (bicubic, clipped)."""
    dtype = np.uint16 if depth == 16 else np.uint8
    if alpha.shape == (height, width) and alpha.dtype == dtype:
        return alpha
    values = alpha.astype(np.float32) / _SCALE[alpha.dtype]
    if values.shape != (height, width):
        values = cv2.resize(values, (width, height), interpolation=cv2.INTER_CUBIC)
    return np.rint(np.clip(values, 0.0, 1.0) * _SCALE[np.dtype(dtype)]).astype(dtype)


def write_image_like(path: PathLike, im: np.ndarray, info: ImageInfo, bit_depth: Optional[int] = None) -> None:
    """Write the restoration ``im`` of a file read by ``read_image_with_info`` the way that file was
    stored, atomically, in the format of the suffix of ``path`` (PNG without one).

    ``im``: H' x W' x 3 float in [0, 1] (clipped, rounded to nearest as ``to_uint8`` does); H', W'
    may be a multiple of the input's (SR). ``bit_depth``: 8 or 16 bits per sample (None: the
    input's). A grayscale input is written as one channel, the mean of the three; an input with
    alpha gets its alpha channel back, resized (bicubic) when the restoration is larger (gray +
    alpha is written as RGBA with equal colour channels: OpenCV writes no gray + alpha file). The
    ICC profile and the EXIF block (its pixel dimensions set to W' x H') are embedded in PNG and
    JPEG files. Raises ``ValueError`` for another shape or an encoding OpenCV refuses.
    """
    path = Path(path)
    depth = bit_depth or info.bit_depth
    if depth not in (8, 16):
        raise ValueError(f"{path}: bit depth must be 8 or 16, got {depth}")
    im = np.asarray(im, dtype=np.float32)
    if im.ndim != 3 or im.shape[2] != 3:
        raise ValueError(f"{path}: expected an H x W x 3 image, got shape {im.shape}")
    height, width = im.shape[:2]
    values = im.mean(axis=2) if info.gray and info.alpha is None else im[:, :, ::-1]
    dtype = np.uint16 if depth == 16 else np.uint8
    samples = np.rint(np.clip(values, 0.0, 1.0) * np.float32(_SCALE[np.dtype(dtype)])).astype(dtype)
    if info.alpha is not None:
        samples = np.dstack([samples, _alpha_for(info.alpha, height, width, depth)])
    _encode_and_write(path, samples, info.icc, exif_for_size(info.exif, width, height) if info.exif else None)


def list_images(folder: PathLike) -> list[Path]:
    """Image files directly inside ``folder`` (suffix in ``IMAGE_EXTENSIONS``, any case), hidden
    files (name starting with ``.``, such as the temporary files of ``atomic_path``) left out.

    Returns the paths sorted by their path string (so ``10.tif`` comes before ``2.tif``).
    Raises ``FileNotFoundError`` when ``folder`` is not a directory.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such image folder")
    files = [p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS
             and not p.name.startswith(".") and p.is_file()]
    return sorted(files, key=str)


_TEMPORARY = re.compile(r"\.(?P<name>.+)\.[0-9a-f]{12}\.tmp(?P<suffix>.*)", re.DOTALL)


def is_temporary_file(path: PathLike) -> bool:
    """Whether the name of ``path`` is one ``atomic_path`` gives its temporary files:
    ``.NAME.HEX.tmpSUFFIX`` with HEX 12 lower-case hex digits and SUFFIX the suffix of NAME."""
    match = _TEMPORARY.fullmatch(Path(path).name)
    return match is not None and match["suffix"] == Path(match["name"]).suffix


def remove_stale_temporaries(folder: PathLike) -> list[Path]:
    """Delete the temporary files that writes killed mid-way (``atomic_path``) left in ``folder``.

    Only regular files directly inside ``folder`` whose name matches ``is_temporary_file`` are
    removed; subfolders are not searched, other files never touched. Call it while no other
    process writes into ``folder`` (hold ``utils.locking.folder_lock``): a live write's temporary
    file looks the same. Returns the removed paths, sorted; a missing folder has none.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = sorted((p for p in folder.iterdir()
                    if is_temporary_file(p) and p.is_file() and not p.is_symlink()), key=str)
    for path in stale:
        path.unlink(missing_ok=True)
    return stale
