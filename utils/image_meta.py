"""What an image file says beside its pixels, as the demos carry it from input to output: the EXIF
orientation (applied to the pixels on reading, as viewers do), the ICC colour profile, and the other
EXIF tags.

Metadata are read with Pillow from the file's bytes without decoding the pixels; a PNG's ICC profile
is read from its iCCP chunk here (Pillow refuses profiles above 1 MB), up to ``MAX_ICC`` bytes. A file
whose metadata Pillow cannot parse has none (the pixels are still read by ``utils.image_io``).
``icc_problem`` tells whether a profile is one littlecms can parse, before an encoder is given it. The EXIF
carried to an output loses what no longer holds once the pixels are restored and written upright:
the orientation, the thumbnail, and the tags that describe how a TIFF stores its samples; the pixel
dimensions it records are set to the output's.
"""
from __future__ import annotations

import io
import warnings
import zlib
from dataclasses import dataclass
from typing import Optional

import numpy as np
from PIL import Image

ORIENTATION = 0x0112
EXIF_IFD = 0x8769
INTEROP_IFD = 0xA005
PIXEL_X, PIXEL_Y = 0xA002, 0xA003
STORAGE_TAGS = frozenset([254, 255, 256, 257, 258, 259, 262, 266, 273, 277, 278, 279, 280, 281, 284, 317, 320,
                          322, 323, 324, 325, 338, 339, 513, 514, 530, 531, 532, 34675])
"""TIFF tags about the stored layout of the samples (size, depth, strips, tiles, compression, palette,
extra samples, the JPEG thumbnail's offset and length, the embedded ICC profile): they describe the
input file, not the output."""
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*")
_EXIF_SEARCH = 1 << 20  # a JPEG's APP1 'Exif' segment lies within its first megabyte
MAX_ICC = 64 << 20
"""The largest ICC profile read from a PNG (bytes, once decompressed); a larger one is left out."""


@dataclass(frozen=True)
class FileMeta:
    """orientation: the EXIF orientation (1-8, 1 = upright as stored). icc: the ICC profile's bytes.
    exif: the other EXIF tags as a TIFF-structured block (no 'Exif\\0\\0' prefix; the eXIf layout of
    PNG), or None when none remain."""
    orientation: int = 1
    icc: Optional[bytes] = None
    exif: Optional[bytes] = None


def may_carry_exif(data: bytes) -> bool:
    """Whether the file ``data`` may hold EXIF tags (a JPEG with an 'Exif' segment, a PNG with an
    eXIf chunk, any TIFF); a cheap test that spares parsing the metadata of most files."""
    if data[:4] in _TIFF_MAGIC:
        return True
    if data[:2] == b"\xff\xd8":
        return data.find(b"Exif\x00\x00", 0, _EXIF_SEARCH) >= 0
    return data[:4] == b"\x89PNG" and b"eXIf" in data


def read_meta(data: bytes, icc: bool = True) -> FileMeta:
    """The metadata of the image file ``data`` (see the module docstring); ``icc=False`` skips the
    profile. Never raises: unparsable metadata count as none."""
    png = data[:4] == b"\x89PNG"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's warnings on large or odd files concern its decoding
            with Image.open(io.BytesIO(_without_iccp(data) if png else data)) as image:
                profile = (_png_icc(data) if png else image.info.get("icc_profile")) if icc else None
                exif = image.getexif() if may_carry_exif(data) else Image.Exif()
                orientation = int(exif.get(ORIENTATION, 1))
                return FileMeta(orientation if 1 <= orientation <= 8 else 1, profile or None, _carried(exif))
    except Exception:  # any parse error of a damaged or unusual header: no metadata
        return FileMeta()


def _png_icc(data: bytes) -> Optional[bytes]:
    """The ICC profile of the PNG file ``data`` (its iCCP chunk before the image data, decompressed up
    to ``MAX_ICC`` bytes), or None."""
    pos = 8
    while pos + 12 <= len(data):
        length, kind = int.from_bytes(data[pos:pos + 4], "big"), data[pos + 4:pos + 8]
        if kind in (b"IDAT", b"IEND"):
            return None
        if kind == b"iCCP":
            chunk = data[pos + 8:pos + 8 + length]
            name_end = chunk.find(b"\0")
            if name_end < 0 or name_end + 2 > len(chunk):
                return None
            inflater = zlib.decompressobj()
            try:
                profile = inflater.decompress(chunk[name_end + 2:], MAX_ICC)
            except zlib.error:
                return None
            return profile or None if not inflater.unconsumed_tail else None
        pos += 12 + length
    return None


def _without_iccp(data: bytes) -> bytes:
    """The PNG file ``data`` less its iCCP chunk (read by ``_png_icc``; Pillow refuses large ones)."""
    pos = 8
    while pos + 12 <= len(data):
        length, kind = int.from_bytes(data[pos:pos + 4], "big"), data[pos + 4:pos + 8]
        if kind == b"iCCP":
            return data[:pos] + data[pos + 12 + length:]
        if kind in (b"IDAT", b"IEND"):
            break
        pos += 12 + length
    return data


def icc_problem(icc: bytes) -> Optional[str]:
    """Why the ICC profile ``icc`` is not one littlecms (Pillow's ``ImageCms``) can parse, or None."""
    try:
        from PIL import ImageCms

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ImageCms.ImageCmsProfile(io.BytesIO(icc))
    except ImportError:
        return None  # no littlecms here: the encoder decides
    except Exception as err:  # any parse error of littlecms: not a usable profile
        return str(err).splitlines()[0] if str(err).strip() else "not an ICC profile"
    return None


def _carried(exif: Image.Exif) -> Optional[bytes]:
    """The EXIF block to carry: ``exif`` less orientation, thumbnail and storage tags (and the
    interoperability pointer, whose block Pillow does not rewrite); None when nothing is left."""
    for tag in [t for t in exif if t in STORAGE_TAGS or t == ORIENTATION]:
        del exif[tag]
    if EXIF_IFD in exif:
        exif.get_ifd(EXIF_IFD).pop(INTEROP_IFD, None)
    if not len(exif):
        return None
    return exif.tobytes()[len(b"Exif\x00\x00"):]


def exif_for_size(exif: bytes, width: int, height: int) -> bytes:
    """The EXIF block ``exif`` with the pixel dimensions it records (if any) set to ``width`` x ``height``."""
    block = Image.Exif()
    block.load(b"Exif\x00\x00" + exif)
    if EXIF_IFD not in block:
        return exif
    sub = block.get_ifd(EXIF_IFD)
    if PIXEL_X not in sub and PIXEL_Y not in sub:
        return exif
    sub.update({PIXEL_X: width, PIXEL_Y: height})
    sub.pop(INTEROP_IFD, None)
    return block.tobytes()[len(b"Exif\x00\x00"):]


_KEEP, _FLIP = slice(None), slice(None, None, -1)
_MIRRORS = {1: (_KEEP, _KEEP), 2: (_KEEP, _FLIP), 3: (_FLIP, _FLIP), 4: (_FLIP, _KEEP)}
"""Rows and columns slices of EXIF orientations 1-4: none, left-right, 180 degrees, top-bottom."""


def apply_orientation(im: np.ndarray, orientation: int) -> np.ndarray:
    """The pixels ``im`` (H x W or H x W x C, stored order) turned upright as the EXIF ``orientation``
    says viewers show them: 2 mirrored left-right, 3 turned 180 degrees, 4 mirrored top-bottom,
    5 transposed, 6 turned 90 degrees clockwise, 7 transversed, 8 turned 90 degrees anticlockwise.
    Orientations 5-8 are the transpose followed by the mirror of orientation - 4."""
    if not 1 <= orientation <= 8:  # absent or invalid tag: as stored
        return im
    if orientation > 4:
        im, orientation = im.swapaxes(0, 1), orientation - 4
    return np.ascontiguousarray(im[_MIRRORS[orientation]])
