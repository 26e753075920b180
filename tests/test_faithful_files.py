"""Faithful files (utils/image_meta.py, utils/image_io.py read_image_with_info / write_image_like, the
demos' restore mode): an image comes out as a viewer showed it going in: upright (EXIF orientation),
with its ICC profile and EXIF (less orientation and thumbnail), 16-bit for 16-bit input (or as
--bit_depth says), RGBA with the original alpha (resized for SR), grayscale for grayscale. Every file
is made here with Pillow or OpenCV."""
import struct

import cv2
import numpy as np
import pytest
from PIL import Image, ImageCms, ImageOps

import demo_test_sisr
import demo_test_syn
from utils.image_io import read_image, read_image_with_info, write_image_like
from utils.image_meta import read_meta

SMALL = dict(n_feat=[8, 16], n_resblocks=1, dep_S=2)
SMALL_SR = dict(n_feat=[8, 16], n_resblocks=1, dep_S=2, dep_K=1)
SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
MAKE, DATE = 0x010F, 0x9003


@pytest.fixture(scope="module")
def ckpt(small_checkpoint):
    return small_checkpoint("denoising-syn", **SMALL)


def _pixels(h=24, w=32, channels=3, top=255, seed=0):
    rng = np.random.default_rng(seed)
    base = cv2.resize(rng.random((4, 4, channels)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    return np.rint(np.clip(base.reshape(h, w, channels), 0, 1) * top)


def _exif_with_thumbnail(orientation: int) -> bytes:
    """A little-endian EXIF block by hand: IFD0 (Make, Orientation, a pointer to the Exif IFD holding
    DateTimeOriginal and PixelXDimension), then IFD1 with a JPEG thumbnail, as cameras write them."""
    thumb = b"\xff\xd8" + b"T" * 40 + b"\xff\xd9"
    date = b"2024:05:06 07:08:09\x00"
    ifd0, exif_ifd = 8, 8 + 2 + 3 * 12 + 4
    date_at = exif_ifd + 2 + 2 * 12 + 4
    ifd1 = date_at + len(date)
    thumb_at = ifd1 + 2 + 2 * 12 + 4
    out = b"II*\x00" + struct.pack("<I", ifd0)
    out += struct.pack("<H", 3) + struct.pack("<HHI4s", MAKE, 2, 4, b"Cam\x00")
    out += struct.pack("<HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack("<HHII", 0x8769, 4, 1, exif_ifd)
    out += struct.pack("<I", ifd1)
    out += struct.pack("<H", 2) + struct.pack("<HHII", DATE, 2, len(date), date_at)
    out += struct.pack("<HHII", 0xA002, 4, 1, 999) + struct.pack("<I", 0) + date
    out += struct.pack("<H", 2) + struct.pack("<HHII", 0x0201, 4, 1, thumb_at)
    out += struct.pack("<HHII", 0x0202, 4, 1, len(thumb)) + struct.pack("<I", 0) + thumb
    return b"Exif\x00\x00" + out


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_as_viewers_do(tmp_path, orientation):
    path = tmp_path / "o.png"
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(_pixels(7, 11).astype(np.uint8)).save(path, exif=exif)
    upright = np.asarray(ImageOps.exif_transpose(Image.open(path)))
    assert np.array_equal(read_image(path), upright.astype(np.float32) / 255)
    im, info = read_image_with_info(path)
    assert np.array_equal(im, read_image(path)) and info.orientation == orientation


def test_jpeg_comes_out_upright_with_its_profile_and_exif(tmp_path, ckpt, capsys):
    src = tmp_path / "photo.jpg"
    Image.fromarray(_pixels(24, 32).astype(np.uint8)).save(src, quality=95, icc_profile=SRGB,
                                                           exif=_exif_with_thumbnail(6))
    assert demo_test_syn.main(["--ckpt_path", str(ckpt), "--device", "cpu", "-i", str(src), "-o",
                               str(tmp_path / "out")]) == 0
    assert "note: photo.jpg: EXIF orientation 6 applied, written upright" in capsys.readouterr().err
    out = Image.open(tmp_path / "out/photo.png")
    assert out.size == (24, 32) and out.info["icc_profile"] == SRGB
    exif = out.getexif()
    assert exif[MAKE] == "Cam" and 0x0112 not in exif and not exif.get_ifd(0xA005)
    sub = exif.get_ifd(0x8769)
    assert sub[DATE] == "2024:05:06 07:08:09" and (sub[0xA002], sub[0xA003]) == (24, 32)
    assert not exif.get_ifd(0x0201) and b"TTTT" not in (tmp_path / "out/photo.png").read_bytes()  # no thumbnail


def test_sixteen_bit_png_and_tiff_stay_sixteen_bit(tmp_path, ckpt):
    deep = _pixels(24, 32, top=65535).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "deep.png"), deep)
    cv2.imwrite(str(tmp_path / "deep.tif"), deep[:, :, 0])
    im, info = read_image_with_info(tmp_path / "deep.png")
    assert info.bit_depth == 16 and not info.gray
    write_image_like(tmp_path / "same.png", im, info)
    assert np.array_equal(cv2.imread(str(tmp_path / "same.png"), cv2.IMREAD_UNCHANGED), deep)  # exact round trip
    argv = ["--ckpt_path", str(ckpt), "--device", "cpu", "-i", str(tmp_path / "deep.tif"), "-o"]
    assert demo_test_syn.main(argv + [str(tmp_path / "auto")]) == 0
    out = cv2.imread(str(tmp_path / "auto/deep.png"), cv2.IMREAD_UNCHANGED)
    assert out.dtype == np.uint16 and out.shape == (24, 32)  # 16-bit gray TIFF in, 16-bit gray PNG out
    assert demo_test_syn.main(argv + [str(tmp_path / "eight"), "--bit_depth", "8"]) == 0
    assert cv2.imread(str(tmp_path / "eight/deep.png"), cv2.IMREAD_UNCHANGED).dtype == np.uint8
    eight = tmp_path / "eight.png"
    cv2.imwrite(str(eight), _pixels().astype(np.uint8))
    assert demo_test_syn.main(["--ckpt_path", str(ckpt), "--device", "cpu", "-i", str(eight), "-o",
                               str(tmp_path / "up"), "--bit_depth", "16"]) == 0
    assert cv2.imread(str(tmp_path / "up/eight.png"), cv2.IMREAD_UNCHANGED).dtype == np.uint16


def test_rgba_keeps_its_alpha_and_gray_stays_gray(tmp_path, ckpt):
    rgba = _pixels(24, 32, channels=4).astype(np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(rgba[:, :, 0], "L").save(tmp_path / "gray.jpg", quality=95)
    cv2.imwrite(str(tmp_path / "gray16.png"), _pixels(24, 32, channels=1, top=65535).astype(np.uint16)[:, :, 0])
    assert demo_test_syn.main(["--ckpt_path", str(ckpt), "--device", "cpu", "-i", str(tmp_path), "-o",
                               str(tmp_path / "out")]) == 0
    out = np.asarray(Image.open(tmp_path / "out/rgba.png"))
    assert out.shape == (24, 32, 4) and np.array_equal(out[:, :, 3], rgba[:, :, 3])
    gray = Image.open(tmp_path / "out/gray.png")
    assert gray.mode == "L" and gray.size == (32, 24)
    gray16 = cv2.imread(str(tmp_path / "out/gray16.png"), cv2.IMREAD_UNCHANGED)
    assert gray16.shape == (24, 32) and gray16.dtype == np.uint16


def test_sr_resizes_the_alpha_channel(tmp_path, small_checkpoint):
    ckpt = small_checkpoint("sisr", **SMALL_SR)
    rgba = _pixels(24, 28, channels=4, seed=3).astype(np.uint8)
    rgba[:, :14, 3] = 255
    rgba[:, 14:, 3] = 0
    Image.fromarray(rgba, "RGBA").save(tmp_path / "lr.png", icc_profile=SRGB)
    assert demo_test_sisr.main(["--ckpt_path", str(ckpt), "--device", "cpu", "--sf", "2", "-i",
                                str(tmp_path / "lr.png"), "-o", str(tmp_path / "out")]) == 0
    out = Image.open(tmp_path / "out/lr.png")
    assert out.mode == "RGBA" and out.size == (56, 48) and out.info["icc_profile"] == SRGB
    alpha = np.asarray(out)[:, :, 3]
    assert (alpha[:, :26] == 255).all() and (alpha[:, 30:] == 0).all()


def test_gray_alpha_becomes_rgba_and_metadata_never_break_reading(tmp_path):
    la = np.dstack([_pixels(8, 9, channels=1)[:, :, 0], np.full((8, 9), 77)]).astype(np.uint8)
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    im, info = read_image_with_info(tmp_path / "la.png")  # OpenCV decodes gray + alpha PNGs as BGRA
    assert info.alpha is not None
    write_image_like(tmp_path / "out.png", im, info)
    out = cv2.imread(str(tmp_path / "out.png"), cv2.IMREAD_UNCHANGED)
    assert out.shape == (8, 9, 4) and (out[:, :, 3] == 77).all() and np.array_equal(out[:, :, 0], out[:, :, 2])
    assert read_meta(b"\xff\xd8Exif\x00\x00 not a jpeg") == read_meta(b"")  # unparsable: no metadata
