"""The image reading policy, the writers and the atomic file writes of utils.image_io."""
import errno
import os
import signal
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from skimage import img_as_ubyte

from utils.image_io import (IMAGE_EXTENSIONS, ImageReadError, atomic_write, check_image_file,
                            is_temporary_file, list_images, read_image, read_image_as_stored,
                            read_image_uint8, remove_stale_temporaries, to_uint8, write_image)

ROOT = Path(__file__).resolve().parents[1]

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, size=(5, 7, 3), dtype=np.uint8)


def _cv2_write(path: Path, im: np.ndarray) -> Path:
    """Write raw samples with OpenCV (channel order as OpenCV stores them: BGR / BGRA)."""
    assert cv2.imwrite(str(path), im)
    return path


def _check_float(im, shape=(5, 7, 3)):
    assert im.shape == shape and im.dtype == np.float32
    assert im.min() >= 0 and im.max() <= 1


def test_rgb_png_exact(tmp_path):
    path = _cv2_write(tmp_path / "rgb.png", RGB[:, :, ::-1])
    np.testing.assert_array_equal(read_image_uint8(path), RGB)
    im = read_image(path)
    _check_float(im)
    np.testing.assert_array_equal(im, RGB.astype(np.float32) / 255)


def test_gray_png_replicated(tmp_path):
    gray = RGB[:, :, 0]
    path = _cv2_write(tmp_path / "gray.png", gray)
    im = read_image_uint8(path)
    assert im.shape == (5, 7, 3)
    for c in range(3):
        np.testing.assert_array_equal(im[:, :, c], gray)
    _check_float(read_image(path))


def test_rgba_png_alpha_dropped(tmp_path):
    alpha = np.zeros((5, 7, 1), np.uint8)  # fully transparent: colours still returned as stored
    path = _cv2_write(tmp_path / "rgba.png", np.concatenate([RGB[:, :, ::-1], alpha], axis=2))
    np.testing.assert_array_equal(read_image_uint8(path), RGB)
    _check_float(read_image(path))


def test_16bit_png(tmp_path):
    values = np.array([0, 1, 128, 129, 257, 32767, 32768, 65406, 65407, 65535], np.uint16)
    rgb16 = np.stack([values, values[::-1], values], axis=1)[None]  # 1 x 10 x 3
    path = _cv2_write(tmp_path / "deep.png", rgb16[:, :, ::-1])
    im = read_image(path)
    _check_float(im, (1, 10, 3))
    np.testing.assert_array_equal(im, rgb16.astype(np.float32) / 65535)
    expected = np.round(rgb16.astype(np.float64) * 255 / 65535).astype(np.uint8)
    np.testing.assert_array_equal(read_image_uint8(path), expected)
    assert read_image_uint8(path)[0, :, 0].tolist() == [0, 0, 0, 1, 1, 127, 128, 254, 255, 255]


def test_16bit_gray_tiff(tmp_path):
    gray = RNG.integers(0, 65536, size=(4, 3), dtype=np.uint16)
    path = _cv2_write(tmp_path / "gray16.tif", gray)
    im = read_image(path)
    _check_float(im, (4, 3, 3))
    np.testing.assert_array_equal(im, np.repeat(gray[:, :, None], 3, axis=2).astype(np.float32) / 65535)


def test_palette_and_gray_alpha_png(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    colours = [(255, 0, 0), (0, 128, 255), (10, 20, 30)]
    index = np.array([[0, 1, 2], [2, 1, 0]], np.uint8)
    pal = Image.new("P", (3, 2))
    pal.putdata(index.ravel().tolist())
    pal.putpalette([v for c in colours for v in c])
    pal.save(tmp_path / "pal.png")
    expected = np.array(colours, np.uint8)[index]
    np.testing.assert_array_equal(read_image_uint8(tmp_path / "pal.png"), expected)

    la = np.stack([index * 40, np.full_like(index, 7)], axis=2)
    la_image = Image.fromarray(la)
    assert la_image.mode == "LA"
    la_image.save(tmp_path / "la.png")
    np.testing.assert_array_equal(read_image_uint8(tmp_path / "la.png"), np.repeat(la[:, :, :1], 3, axis=2))


def test_jpeg_and_bmp(tmp_path):
    flat = np.empty((16, 16, 3), np.uint8)
    flat[:] = (200, 100, 50)
    jpg = _cv2_write(tmp_path / "flat.JPG", flat[:, :, ::-1])
    im = read_image_uint8(jpg)
    assert im.shape == (16, 16, 3) and im.dtype == np.uint8
    assert np.abs(im.astype(int) - flat).max() <= 3  # lossy, but channels in RGB order
    _check_float(read_image(jpg), (16, 16, 3))
    bmp = _cv2_write(tmp_path / "x.bmp", RGB[:, :, ::-1])
    np.testing.assert_array_equal(read_image_uint8(bmp), RGB)


def test_one_pixel(tmp_path):
    path = _cv2_write(tmp_path / "one.png", np.array([[[3, 2, 1]]], np.uint8))
    np.testing.assert_array_equal(read_image_uint8(path), [[[1, 2, 3]]])
    _check_float(read_image(path), (1, 1, 3))


@pytest.mark.parametrize("reader", [read_image, read_image_uint8])
def test_errors_name_the_file(tmp_path, reader):
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(RNG.integers(0, 256, 300, dtype=np.uint8).tobytes())
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    floats = _cv2_write(tmp_path / "float.tif", np.full((2, 2), 0.5, np.float32))
    for path in [corrupt, empty, floats, tmp_path / "missing.png"]:
        with pytest.raises(ImageReadError) as info:
            reader(path)
        assert isinstance(info.value, ValueError)
        message = str(info.value)
        assert str(path) in message and "\n" not in message


def test_to_uint8_matches_skimage():
    x = RNG.uniform(-0.2, 1.2, size=(64, 64, 3))
    x[0, :4, 0] = [0.5 / 255, 1.5 / 255, 254.5 / 255, 1.0]
    for im in (x, x.astype(np.float32)):
        np.testing.assert_array_equal(to_uint8(im), img_as_ubyte(np.clip(im, 0, 1)))
    assert to_uint8(RGB) is RGB
    with pytest.raises(TypeError):
        to_uint8(RGB.astype(np.int32))


def test_write_image_round_trip(tmp_path):
    write_image(tmp_path / "a.png", RGB)
    np.testing.assert_array_equal(read_image_uint8(tmp_path / "a.png"), RGB)
    im = RNG.uniform(-0.1, 1.1, size=(5, 7, 3)).astype(np.float32)
    write_image(tmp_path / "b.bmp", im)
    np.testing.assert_array_equal(read_image_uint8(tmp_path / "b.bmp"), to_uint8(im))
    write_image(tmp_path / "noext", RGB[:, :, 0])  # no suffix: PNG under the exact name
    assert (tmp_path / "noext").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    np.testing.assert_array_equal(read_image_uint8(tmp_path / "noext")[:, :, 1], RGB[:, :, 0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "b.bmp", "noext"]


def test_write_image_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="shape"):
        write_image(tmp_path / "a.png", np.zeros((2, 2, 2), np.uint8))
    with pytest.raises(ValueError, match="encode"):
        write_image(tmp_path / "a.xyz", RGB)
    assert list(tmp_path.iterdir()) == []


def test_failed_write_keeps_original(tmp_path, monkeypatch):
    target = tmp_path / "keep.png"
    write_image(target, RGB)
    original = target.read_bytes()

    def disk_full(self, data):
        with open(self, "wb") as f:
            f.write(data[:10])
        raise OSError("simulated: no space left on device")

    monkeypatch.setattr(Path, "write_bytes", disk_full)
    with pytest.raises(OSError, match="simulated"):
        write_image(target, RGB[::-1])
    assert target.read_bytes() == original
    assert list(tmp_path.iterdir()) == [target]


def test_atomic_write(tmp_path):
    target = tmp_path / "table.csv"
    target.write_text("old\n")

    def fail(tmp):
        tmp.write_text("partial")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        atomic_write(target, fail)
    assert target.read_text() == "old\n" and list(tmp_path.iterdir()) == [target]

    atomic_write(target, lambda tmp: tmp.write_text("new\n"))
    assert target.read_text() == "new\n" and list(tmp_path.iterdir()) == [target]
    atomic_write(tmp_path / "arr.npy", lambda tmp: np.save(tmp, np.arange(3)))
    assert np.load(tmp_path / "arr.npy").tolist() == [0, 1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["arr.npy", "table.csv"]


def test_list_images(tmp_path):
    for name in ["2.tif", "10.tif", "b.PNG", "a.jpeg", "c.Bmp", "d.TIFF", "e.jpg", "notes.txt", "f.gif"]:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub.png").mkdir()
    names = [p.name for p in list_images(tmp_path)]
    assert names == ["10.tif", "2.tif", "a.jpeg", "b.PNG", "c.Bmp", "d.TIFF", "e.jpg"]
    assert set(IMAGE_EXTENSIONS) == {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
    with pytest.raises(FileNotFoundError):
        list_images(tmp_path / "nope")


# ---------------------------------------------------------------- truncated and corrupt files

def _photo(h=48, w=64) -> np.ndarray:
    """A smooth BGR test picture with some texture (compresses like a photograph)."""
    y, x = np.mgrid[0:h, 0:w]
    im = np.stack([x * 255 // w, y * 255 // h, (x + y) * 255 // (h + w)], axis=2)
    return np.clip(im + RNG.integers(-20, 20, im.shape), 0, 255).astype(np.uint8)


def _jpeg(im: np.ndarray, progressive: bool = False) -> bytes:
    ok, buf = cv2.imencode(".jpg", im, [cv2.IMWRITE_JPEG_PROGRESSIVE, int(progressive)])
    assert ok
    return buf.tobytes()


def _scan_start(data: bytes) -> int:
    """Offset of the compressed data of the first scan (after the SOS segment)."""
    sos = data.index(b"\xff\xda")
    return sos + 2 + int.from_bytes(data[sos + 2:sos + 4], "big")


def _refused(path: Path, words: str) -> None:
    """Every reader and the cheap check refuse ``path`` with one line naming it and ``words``."""
    for reader in (read_image, read_image_uint8, read_image_as_stored, check_image_file):
        with pytest.raises(ImageReadError) as info:
            reader(path)
        message = str(info.value)
        assert message.startswith(f"{path}: ") and words in message and "\n" not in message


def test_valid_files_read_as_opencv_decodes_them(tmp_path):
    im = _photo()
    thumbnail = _jpeg(im[:8, :8])  # an APP15 segment holding a whole JPEG, end marker included
    app15 = b"\xff\xef" + (len(thumbnail) + 2).to_bytes(2, "big") + thumbnail
    baseline = _jpeg(im)
    files = {"base.jpg": baseline, "prog.jpg": _jpeg(im, progressive=True),
             "trailing.jpg": baseline + b"\x00 data after the end marker \xff\xd8",
             "thumb.jpg": baseline[:2] + app15 + baseline[2:],
             "gray.jpg": _jpeg(im[:, :, 0])}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    for name, array in {"a.png": im, "deep.png": im.astype(np.uint16) * 257, "g.png": im[:, :, 1],
                        "a.tif": im, "a.bmp": im}.items():
        _cv2_write(tmp_path / name, array)
    for path in sorted(tmp_path.iterdir()):
        stored = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(read_image_as_stored(path), stored)
        rgb = np.repeat(stored[:, :, None], 3, axis=2) if stored.ndim == 2 else stored[:, :, ::-1]
        scale = 65535.0 if stored.dtype == np.uint16 else 255.0
        np.testing.assert_array_equal(read_image(path), rgb.astype(np.float32) / scale)
        check_image_file(path)


@pytest.mark.parametrize("progressive", [False, True])
def test_truncated_jpeg_is_an_error(tmp_path, progressive):
    data = _jpeg(_photo(), progressive)
    thumbnail = _jpeg(_photo(8, 8))
    with_thumbnail = data[:2] + b"\xff\xef" + (len(thumbnail) + 2).to_bytes(2, "big") + \
        thumbnail + data[2:]
    cuts = {"half": data[:len(data) // 2], "no_end_marker": data[:-2],
            "scan_start": data[:_scan_start(data) + 1], "header": data[:40],
            "thumbnail": with_thumbnail[:len(with_thumbnail) - 100]}  # the thumbnail's end stays
    for name, cut in cuts.items():
        path = tmp_path / f"{name}.jpg"
        path.write_bytes(cut)
        _refused(path, "truncated JPEG file")


def test_corrupt_jpeg_marker_structure_is_an_error(tmp_path):
    data = bytearray(_jpeg(_photo()))
    middle = (_scan_start(data) + len(data)) // 2
    data[middle:middle + 8] = b"\xff\x12" + bytes(6)  # garbage holding a marker no scan may hold
    path = tmp_path / "garbage.jpg"
    path.write_bytes(bytes(data))
    _refused(path, "corrupt JPEG data")
    lone = tmp_path / "lone.jpg"
    lone.write_bytes(b"\xff\xd8\xff\xd9")
    _refused(lone, "end-of-image marker before any scan")


def test_truncated_or_corrupt_png_is_an_error(tmp_path):
    ok, buf = cv2.imencode(".png", _photo())
    data = buf.tobytes()
    for name, cut in {"half": data[:len(data) // 2], "iend_crc": data[:-1],
                      "no_iend": data[:-12], "signature": data[:8]}.items():
        path = tmp_path / f"{name}.png"
        path.write_bytes(cut)
        _refused(path, "truncated PNG file")
    flipped = bytearray(data)
    flipped[data.index(b"IDAT") + 20] ^= 0x10
    path = tmp_path / "flipped.png"
    path.write_bytes(bytes(flipped))
    _refused(path, "corrupt PNG data (CRC mismatch in chunk IDAT")


def test_truncated_bmp_and_tiff_are_errors(tmp_path):
    for name in ("a.bmp", "a.tif"):
        data = cv2.imencode(Path(name).suffix, _photo())[1].tobytes()
        path = tmp_path / name
        path.write_bytes(data[:len(data) // 2])
        _refused(path, "not a readable image")


# ---------------------------------------------------------------- temporary files

def test_temporary_names_are_hidden_and_removed_exactly(tmp_path):
    temporaries = [".a.png.0123456789ab.tmp.png", ".latest.pth.00ff00ff00ff.tmp.pth",
                   ".noext.abcdefabcdef.tmp"]
    keep = ["a.png", ".a.png.0123456789AB.tmp.png", ".a.png.0123456789ab.tmp.jpg",
            "a.png.0123456789ab.tmp.png", ".a.png.0123456789a.tmp.png", ".hidden.png",
            "x.0123456789ab.tmp.png"]
    for name in temporaries + keep:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / ".sub.png.0123456789ab.tmp.png").mkdir()  # a folder is never removed
    assert [p.name for p in list_images(tmp_path)] == ["a.png", "a.png.0123456789ab.tmp.png",
                                                        "x.0123456789ab.tmp.png"]
    assert [is_temporary_file(tmp_path / n) for n in temporaries] == [True] * 3
    assert not any(is_temporary_file(tmp_path / n) for n in keep)
    removed = remove_stale_temporaries(tmp_path)
    assert sorted(p.name for p in removed) == sorted(temporaries)
    remaining = keep + [".sub.png.0123456789ab.tmp.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(remaining)
    assert remove_stale_temporaries(tmp_path / "absent") == []


KILLED_WRITER = """
import sys, time
from pathlib import Path
from utils.image_io import atomic_write
def write(tmp):
    tmp.write_bytes(b"half a picture")
    print("writing", flush=True)
    time.sleep(60)
atomic_write(Path(sys.argv[1]) / "patch.png", write)
"""


def test_write_killed_midway_leaves_a_temporary_that_is_invisible_and_cleaned(tmp_path):
    write_image(tmp_path / "old.png", RGB)
    child = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(tmp_path)], cwd=ROOT,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == "writing\n"
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        child.stdout.close()
    leftover, = [p for p in tmp_path.iterdir() if p.name != "old.png"]
    assert is_temporary_file(leftover) and leftover.suffix == ".png"
    assert list_images(tmp_path) == [tmp_path / "old.png"]
    assert remove_stale_temporaries(tmp_path) == [leftover]
    assert [p.name for p in tmp_path.iterdir()] == ["old.png"]


def test_failed_writes_name_the_target(tmp_path, monkeypatch):
    def disk_full(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with monkeypatch.context() as patch:
        patch.setattr(Path, "write_bytes", disk_full)
        with pytest.raises(OSError) as info:
            write_image(tmp_path / "full.png", RGB)
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(tmp_path / "full.png")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(OSError) as info:  # the folder is a file: the temporary cannot be created
        write_image(tmp_path / "file" / "x.png", RGB)
    assert info.value.filename == str(tmp_path / "file" / "x.png")
