"""Hostile images and arguments (utils/image_io.py, utils/image_meta.py, the demos): odd ICC profiles,
huge declared sizes, truncated files, and property-based runs over image metadata and demo flags.
Every case ends in a correct result, or one line and a non-zero exit; never a traceback.

The property-based tests draw ``VIRNET_HYPOTHESIS_EXAMPLES`` examples each (default 25, a few seconds);
a larger budget by hand: ``VIRNET_HYPOTHESIS_EXAMPLES=500 pytest tests/test_hostile_images.py``.
See docs/reliability.md."""
import io
import os
import struct
import zlib

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageCms

import demo_test_syn
from datasets.image_check import BadImagesError, check_images
from utils.image_io import (MAX_PIXELS, ImageReadError, check_image_file, read_image, read_image_uint8,
                            read_image_with_info, write_image_like)
from utils.image_meta import read_meta

EXAMPLES = settings(max_examples=int(os.environ.get("VIRNET_HYPOTHESIS_EXAMPLES", "25")), deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
SMALL = dict(n_feat=[8, 16], n_resblocks=1, dep_S=2)
SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def _big_profile(extra: int) -> bytes:
    """A valid ICC profile: the sRGB one with a private tag of ``extra`` random bytes added."""
    count = struct.unpack(">I", SRGB[128:132])[0]
    entries = [struct.unpack(">4sII", SRGB[132 + 12 * i:144 + 12 * i]) for i in range(count)]
    start = len(SRGB) + 12 + (-(len(SRGB) + 12) % 4)
    out = bytearray(SRGB[:128]) + struct.pack(">I", count + 1)
    for sig, offset, size in entries:
        out += struct.pack(">4sII", sig, offset + 12, size)
    out += struct.pack(">4sII", b"zzzz", start, extra) + SRGB[132 + 12 * count:]
    out += bytes(start - len(out)) + np.random.default_rng(0).integers(0, 256, extra, dtype=np.uint8).tobytes()
    out[:4] = struct.pack(">I", len(out))
    return bytes(out)


def _photo(path, icc=None, h=20, w=24, mode="RGB", exif=None):
    rng = np.random.default_rng(0)
    shape = (h, w) if mode in ("L", "I;16") else (h, w, len(mode))
    pixels = rng.integers(0, 65536 if mode == "I;16" else 256, shape).astype(np.uint16 if mode == "I;16" else np.uint8)
    extra = {"icc_profile": icc} if icc else {}
    if exif is not None:
        extra["exif"] = exif
    Image.fromarray(pixels, mode if mode != "RGB" else None).save(path, **extra)
    return path


def _stderr_lines(capsys):
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    import torch

    import networks
    from utils.training.state import export_model

    torch.manual_seed(0)
    return export_model(networks.build_model("denoising-syn", **SMALL),
                        tmp_path_factory.mktemp("ckpt") / "small.pth")


def test_photos_with_junk_or_huge_icc_are_restored_and_a_folder_goes_on(tmp_path, ckpt, capsys):
    src = tmp_path / "in"
    src.mkdir()
    _photo(src / "a_junk.jpg", b"junk bytes" * 3)
    _photo(src / "b_huge.jpg", _big_profile(300_000))  # valid, in five JPEG segments: kept in the PNG
    _photo(src / "c_junk.png", b"junk bytes" * 3)
    _photo(src / "d_plain.png")
    out = tmp_path / "out"
    assert demo_test_syn.main(["--ckpt_path", str(ckpt), "--device", "cpu", "-i", str(src), "-o", str(out)]) == 0
    warnings = [line for line in _stderr_lines(capsys) if line.startswith("warning:")]
    assert [line.split(": ")[1] for line in warnings] == [str(out / "a_junk.png"), str(out / "c_junk.png")]
    assert all("ICC profile (30 bytes) is not a valid profile" in line and "written without it" in line
               for line in warnings)
    for stem in ("a_junk", "b_huge", "c_junk", "d_plain"):
        assert read_image(out / f"{stem}.png").shape == (20, 24, 3)
    assert read_meta((out / "b_huge.png").read_bytes()).icc == _big_profile(300_000)


def test_a_profile_the_encoder_refuses_is_dropped_with_one_warning(tmp_path, capsys):
    im, info = read_image_with_info(_photo(tmp_path / "a.jpg", _big_profile(300_000)))
    write_image_like(tmp_path / "out.jpg", im, info)  # one JPEG segment holds at most 64 KB
    assert _stderr_lines(capsys) == [f"warning: {tmp_path / 'out.jpg'}: OpenCV cannot embed the input's ICC profile "
                                     f"({len(info.icc)} bytes) in a .jpg file; written without it"]
    assert read_image(tmp_path / "out.jpg").shape == (20, 24, 3)


def test_a_valid_2mb_profile_in_a_png_is_kept(tmp_path, ckpt, capsys):
    profile = _big_profile(2_000_000)
    src = _photo(tmp_path / "wide.png", profile)
    assert read_meta(src.read_bytes()).icc == profile  # Pillow alone refuses iCCP chunks above 1 MB
    out = tmp_path / "out"
    assert demo_test_syn.main(["--ckpt_path", str(ckpt), "--device", "cpu", "-i", str(src), "-o", str(out)]) == 0
    assert not [line for line in _stderr_lines(capsys) if line.startswith(("warning", "error"))]
    assert read_meta((out / "wide.png").read_bytes()).icc == profile


def _png_declaring(width: int, height: int, color_type: int = 2, depth: int = 8) -> bytes:
    """A PNG whose header declares ``width`` x ``height``, with one tiny (too short) IDAT chunk."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b"")


def test_a_huge_declared_size_is_refused_from_the_header(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_declaring(30000, 30000))
    message = f"{path}: declares 30000 x 30000 pixels (900 MP); reading it would need 12.6 GiB of memory"
    for read in (read_image, read_image_with_info, check_image_file):
        with pytest.raises(ImageReadError, match=message.replace("(", r"\(").replace(")", r"\)")):
            read(path)
    with pytest.raises(BadImagesError, match="declares 30000 x 30000"):
        check_images([path])


def test_a_truncated_png_names_the_file_and_opencv_stays_quiet(tmp_path, capfd):
    path = _photo(tmp_path / "cut.png", h=64, w=64)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    with pytest.raises(ImageReadError, match=f"{path}: truncated PNG file"):
        read_image(path)
    assert capfd.readouterr().err == ""  # no OpenCV '[ WARN ]' line before ours


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_a_tiff_orientation_is_applied_once(tmp_path, mode):
    """OpenCV's TIFF decoder turns pages by their orientation tag itself (all of them for RGB, only
    1-4 for gray): found by the property-based test below; the readers now apply it once."""
    stored = np.random.default_rng(0).integers(0, 256, (3, 4, 3) if mode == "RGB" else (3, 4), dtype=np.uint8)
    upright = {1: stored, 3: stored[::-1, ::-1], 6: np.rot90(stored, -1), 8: np.rot90(stored, 1), 5: stored.swapaxes(0, 1)}
    for orientation, want in upright.items():
        block = Image.Exif()
        block[0x0112] = orientation
        path = tmp_path / f"o{orientation}.tif"
        Image.fromarray(stored).save(path, exif=block.tobytes())
        got = read_image_uint8(path)
        np.testing.assert_array_equal(got if mode == "RGB" else got[:, :, 0], want)


# ------------------------------------------------------------------ property-based: image metadata

FORMATS = {"png": ("L", "LA", "RGB", "RGBA", "I;16"), "jpg": ("L", "RGB"), "bmp": ("L", "RGB", "RGBA"),
           "tif": ("L", "RGB", "RGBA", "I;16")}
PROFILES = st.one_of(st.none(), st.binary(min_size=1, max_size=300), st.just(SRGB),
                     st.integers(1, 70_000).map(_big_profile))


@st.composite
def image_files(draw):
    ext = draw(st.sampled_from(sorted(FORMATS)))
    mode = draw(st.sampled_from(FORMATS[ext]))
    h, w = draw(st.integers(1, 40)), draw(st.integers(1, 40))
    icc = draw(PROFILES) if ext in ("png", "jpg", "tif") else None
    orientation = draw(st.one_of(st.none(), st.integers(0, 12))) if ext in ("jpg", "png", "tif") else None
    return ext, mode, h, w, icc, orientation


@EXAMPLES
@given(spec=image_files())
def test_any_image_metadata_reads_and_writes_back(tmp_path_factory, spec):
    ext, mode, h, w, icc, orientation = spec
    folder = tmp_path_factory.mktemp("meta")
    exif = None
    if orientation is not None:
        block = Image.Exif()
        block[0x0112] = orientation
        exif = block.tobytes()
    try:
        path = _photo(folder / f"in.{ext}", icc, h, w, mode, exif)
    except (OSError, ValueError):  # a combination Pillow itself cannot write: nothing to test
        return
    try:
        im, info = read_image_with_info(path)
    except ImageReadError as err:  # refused: one line naming the file
        assert "\n" not in str(err) and str(path) in str(err)
        return
    upright = (w, h) if orientation in (5, 6, 7, 8) else (h, w)
    assert im.shape == (*upright, 3) and im.dtype == np.float32 and 0 <= im.min() <= im.max() <= 1
    out = folder / "out.png"
    write_image_like(out, im, info)
    again, info2 = read_image_with_info(out)
    assert again.shape == im.shape and info2.gray == info.gray and info2.bit_depth == info.bit_depth
    assert np.abs(again - im).max() <= (1 / 255 if info.gray else 1e-6) + 1e-6


@EXAMPLES
@given(width=st.integers(0, 2 ** 31 - 1), height=st.integers(0, 2 ** 31 - 1),
       color=st.sampled_from([0, 2, 3, 4, 6, 5]), depth=st.sampled_from([1, 8, 16, 3]))
def test_any_declared_png_size_is_read_or_refused_in_one_line(tmp_path_factory, width, height, color, depth):
    path = tmp_path_factory.mktemp("size") / "x.png"
    path.write_bytes(_png_declaring(width, height, color, depth))
    with pytest.raises(ImageReadError) as err:  # the data is always too short: never an image
        read_image(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)
    if width * height > MAX_PIXELS:
        assert "declares" in str(err.value) and "GiB of memory" in str(err.value)


# ------------------------------------------------------------------ property-based: demo arguments

FLAG_VALUES = {
    "--tile": st.one_of(st.integers(-5, 300), st.sampled_from(["x", "1e9", ""])),
    "--tile_overlap": st.one_of(st.integers(-5, 64), st.just("nan")),
    "--strength": st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32), st.just("abc")),
    "--noise_map": st.one_of(st.floats(-1e3, 1e12), st.sampled_from(["nan", "missing.png", ""])),
    "--bit_depth": st.sampled_from(["auto", "8", "16", "12"]),
    "--prefix": st.text(alphabet="ab./\\_-", max_size=6),
    "--precision": st.sampled_from(["fp32", "bf16", "auto", "fp64"]),
    "--add_noise": st.one_of(st.floats(-10, 300), st.sampled_from(["nan", "niid"])),
}


@EXAMPLES
@given(flags=st.dictionaries(st.sampled_from(sorted(FLAG_VALUES)), st.just(None), max_size=3).flatmap(
    lambda keys: st.fixed_dictionaries({k: FLAG_VALUES[k] for k in keys})))
def test_any_demo_flags_give_a_result_or_one_line(tmp_path_factory, ckpt, capsys, flags):
    folder = tmp_path_factory.mktemp("demo")
    src = _photo(folder / "a.png", h=16, w=20)
    argv = ["--ckpt_path", str(ckpt), "--device", "cpu", "-i", str(src), "-o", str(folder / "out")]
    for flag, value in flags.items():
        argv += [f"{flag}={value}"]
    try:
        status = demo_test_syn.main(argv)
    except SystemExit as stop:  # argparse: usage and one 'error:' line, exit 2
        status = stop.code
        err = capsys.readouterr().err
        assert status == 2 and ": error: " in err.strip().splitlines()[-1] and "Traceback" not in err
        return
    err = capsys.readouterr().err
    assert "Traceback" not in err and "unexpected error" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert (status == 0 and not errors) or (status == 1 and len(errors) == 1), (status, err)
    if status == 0:
        assert read_image(folder / "out" / f"a{'_' + flags['--prefix'] if flags.get('--prefix') else ''}.png").shape \
            == (16, 20, 3)


def test_pillow_can_save_the_profiles_drawn():
    """The strategy's profiles reach the files: Pillow embeds them as given (else the tests above
    would only ever see files without ICC)."""
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, "png", icc_profile=b"junk")
    assert Image.open(io.BytesIO(buffer.getvalue())).info["icc_profile"] == b"junk"
