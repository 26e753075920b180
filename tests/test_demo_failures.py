"""Reliability of the demos (docs/reliability.md): nothing silent, nothing lost.

Weights holding NaN/inf are refused at load and non-finite restorations are never written (the
other images of a folder still are; exit 1); checkpoints that are empty, truncated, plain pickles,
random bytes or whole pickled modules, an absurd 'arch' entry and SR weights of another scale get
one line saying so; tiles too small to restore well, prefixes leading outside -o and a full disk
are one line naming the flag or the file.
"""
import errno
import os
import pickle
import shutil

import numpy as np
import pytest
import torch
from torch import nn

import demo_test_denoising_real
import demo_test_sisr
import demo_test_syn
from train_sisr import SISR
from utils import export_weights
from utils.config import load_config
from utils.errors import UserError
from utils.inference import Restorer, load_model
from utils.inference.backends import EagerBackend
from utils.inference.export import compact_checkpoint
from utils.training.state import export_model
from one_line import one_line_error as _error
from helpers import demo_runner, smooth_image

SMALL = {"denoising-syn": dict(n_feat=[8, 16], n_resblocks=1, dep_S=2),
         "denoising-real": dict(n_feat=[8, 16], n_resblocks=1, dep_S=2),
         "sisr": dict(n_feat=[8, 16], n_resblocks=1, dep_S=2, dep_K=1)}
DEMOS = {"denoising-syn": (demo_test_syn, []), "denoising-real": (demo_test_denoising_real, []),
         "sisr": (demo_test_sisr, ["--sf", "4"])}
CPU = torch.device("cpu")


def _demo(task, ckpt, *args):
    module, extra = DEMOS[task]
    return demo_runner(module.main)(ckpt, *extra, *args)


def _image(path, value=0.5):
    """A smooth random 32 x 40 RGB image of mean about ``value``."""
    return smooth_image(path, 32, 40, mean=value)


def _files(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def _tampered(small_checkpoint, tmp_path, task, change, name="tampered.pth"):
    """The small checkpoint of ``task`` after ``change(state_dict)`` (in place), saved as ``name``."""
    ckpt = torch.load(small_checkpoint(task, **SMALL[task]), weights_only=True)
    change(ckpt["model_state_dict"])
    torch.save(ckpt, tmp_path / name)
    return tmp_path / name


# --------------------------------------------------------------------------- non-finite weights and outputs


@pytest.mark.parametrize("task", list(DEMOS))
def test_weights_with_nan_are_refused_at_load(tmp_path, small_checkpoint, capsys, task):
    ckpt = _tampered(small_checkpoint, tmp_path, task, lambda state: state["RNet.tail.bias"].fill_(float("nan")))
    assert _demo(task, ckpt, "-i", _image(tmp_path / "a.png"), "-o", tmp_path / "out") == 1
    _error(capsys, f"checkpoint {ckpt}: weights hold NaN or infinite values (RNet.tail.bias); the training run "
                   "that wrote them diverged")
    assert _files(tmp_path / "out") == []


def test_overflowing_weights_write_nothing_and_exit_1(tmp_path, small_checkpoint, capsys):
    """Finite weights whose outputs overflow to inf: no SR image, no kernel picture, no 'std nan'."""
    ckpt = _tampered(small_checkpoint, tmp_path, "sisr", lambda state: state["RNet.tail.weight"].fill_(3e38))
    assert _demo("sisr", ckpt, "-i", _image(tmp_path / "a.png"), "-o", tmp_path / "out") == 1
    captured = capsys.readouterr()
    assert "error: a.png: the network's output (mu) holds NaN or infinite values; nothing written for it" \
        in captured.err
    assert "nan" not in captured.out and "super-resolved 0 of 1 image(s) x4, failed 1" in captured.out
    assert _files(tmp_path / "out") == []


def test_a_non_finite_restoration_fails_only_its_image(tmp_path, small_checkpoint, monkeypatch, capsys):
    call = EagerBackend.__call__

    def nan_for_bright_images(backend, x, *args):
        outputs = call(backend, x, *args)
        return tuple(o * float("nan") for o in outputs) if x.mean() > 0.5 else outputs

    monkeypatch.setattr(EagerBackend, "__call__", nan_for_bright_images)
    src = tmp_path / "in"
    src.mkdir()
    _image(src / "bright.png", value=0.8)
    _image(src / "dark.png", value=0.2)
    ckpt = small_checkpoint("denoising-syn", **SMALL["denoising-syn"])
    assert _demo("denoising-syn", ckpt, "-i", src, "-o", tmp_path / "out") == 1
    captured = capsys.readouterr()
    assert captured.err.count("error: bright.png: the network's output (mu, sigma) holds NaN or infinite") == 1
    assert "restored 1 of 2 image(s), failed 1" in captured.out
    assert _files(tmp_path / "out") == [".virnet_outputs.json", "dark.png", "dark_noise_std.png"]
    assert _demo("denoising-syn", ckpt, "-o", tmp_path / "quick", "--add_noise", "25", "-i", src / "bright.png") == 1
    assert _files(tmp_path / "quick") == []  # no images, no quicklook.json with NaN in it


# --------------------------------------------------------------------------- checkpoint messages


def _module(path):
    torch.save(nn.Conv2d(3, 3, 3), path)


def _truncated(path):
    torch.save({"model_state_dict": {"w": torch.zeros(1000)}}, path)
    path.write_bytes(path.read_bytes()[:700])


@pytest.mark.parametrize("make, message", [
    (lambda p: p.write_bytes(b""), "empty file (0 bytes)"),
    (lambda p: p.write_bytes(np.random.default_rng(0).bytes(256)),
     "not a PyTorch checkpoint (neither a torch.save file nor a pickle)"),
    # random data may open with the pickle opcode 0x80 (1 file in 256): only a protocol byte after it makes a pickle
    (lambda p: p.write_bytes(b"\x80\x00" + np.random.default_rng(0).bytes(254)),
     "not a PyTorch checkpoint (neither a torch.save file nor a pickle)"),
    (lambda p: p.write_bytes(pickle.dumps({"model_state_dict": {"w": [1.0]}})),
     "not a PyTorch checkpoint (a plain Python pickle)"),
    (_truncated, "truncated or damaged PyTorch file"),
    (_module, "it holds Python objects besides tensors (e.g. a whole model saved with torch.save(model))"),
])
def test_unreadable_checkpoints_say_what_they_are(tmp_path, capsys, make, message):
    ckpt = tmp_path / "weights.pth"
    make(ckpt)
    assert _demo("denoising-syn", ckpt, "-i", _image(tmp_path / "a.png"), "-o", tmp_path / "out") == 1
    err = _error(capsys, f"cannot read checkpoint {ckpt}: {message}")
    assert "weights_only" not in err and "EOFError" not in err


@pytest.mark.parametrize("kwargs, message", [
    ({"n_feat": [4] * 10}, "its 'arch' entry describes a network that pads its input to multiples of 512"),
    ({"n_feat": []}, "its 'arch' entry is not a valid denoising-syn architecture (n_feat: expected at least 1 value"),
    ({"dep_S": "deep"}, "its 'arch' entry is not a valid denoising-syn architecture (dep_S: expected an integer"),
])
def test_an_absurd_arch_entry_is_named(tmp_path, capsys, kwargs, message):
    ckpt = tmp_path / "odd.pth"
    torch.save({"model_state_dict": {}, "arch": {"task": "denoising-syn", "kwargs": kwargs}}, ckpt)
    assert _demo("denoising-syn", ckpt, "-i", _image(tmp_path / "a.png"), "-o", tmp_path / "out") == 1
    err = _error(capsys, f"checkpoint {ckpt}: {message}")
    assert "--tile" not in err


def test_sr_weights_of_another_scale_are_refused(tmp_path, capsys, released_checkpoint, shared):
    cfg = load_config("configs/sisr_x4_small.json", SISR.schema())
    trained = export_model(SISR(cfg).build_model(), tmp_path / "model_last.pth")  # the trainer records sf 4
    assert compact_checkpoint(trained)["arch"]["sf"] == 4  # and the exporter keeps it
    assert _demo("sisr", trained, "-i", _image(tmp_path / "a.png"), "-o", tmp_path / "out", "--sf", "2") == 1
    _error(capsys, f"checkpoint {trained} holds x4 weights (its 'arch' entry says so); run with --sf 4")
    released = shutil.copy(released_checkpoint("sisr"), tmp_path / "virnet_sisr_x4.pth")
    with pytest.raises(UserError, match="holds x4 weights \\(its file name says so\\); run with --sf 4"):
        load_model("sisr", released, released, CPU, sf=3)
    assert load_model("sisr", released, released, CPU, sf=4).weights_info.endswith("M parameters)")
    unnamed = shutil.copy(released, tmp_path / "sr_weights.pth")
    info = load_model("sisr", unnamed, unnamed, CPU, sf=3).weights_info
    assert info.endswith("its scale is not recorded: make sure it was trained for x3)")


# --------------------------------------------------------------------------- flags and disk


@pytest.mark.parametrize("tile, overlap, message", [
    (1, 0, "--tile 1 is too small: tiles of this network must span at least 8 pixels"),  # as typed, not rounded
    (6, 2, "--tile 6 is too small"),
    (64, 0, "--tile_overlap 0 leaves visible seams between tiles"),
])
def test_tiles_that_restore_badly_are_refused(tmp_path, small_checkpoint, capsys, tile, overlap, message):
    ckpt = small_checkpoint("denoising-syn", **SMALL["denoising-syn"])
    out = tmp_path / "out"
    assert _demo("denoising-syn", ckpt, "-i", _image(tmp_path / "a.png"), "-o", out, "--tile", tile,
                 "--tile_overlap", overlap) == 1
    _error(capsys, message)
    assert _files(out) == []
    assert Restorer(load_model("denoising-syn", str(ckpt), ckpt, CPU), tile=0, overlap=0).tile == 0  # never tiles


@pytest.mark.parametrize("task", list(DEMOS))
@pytest.mark.parametrize("prefix", ["/../escaped", "..", "a\\b"])
def test_prefixes_leading_outside_the_output_folder_are_refused(tmp_path, small_checkpoint, capsys, task, prefix):
    ckpt = small_checkpoint(task, **SMALL[task])
    out = tmp_path / "deep" / "out"
    assert _demo(task, ckpt, "-i", _image(tmp_path / "a.png"), "-o", out, "--prefix", prefix) == 1
    _error(capsys, f"--prefix {prefix!r}: a prefix becomes part of file names")
    assert not (tmp_path / "deep").exists()


def _full_disk(monkeypatch):
    """Make every Path.write_bytes fail as write() does on a full disk (an OSError naming no file)."""
    def full(path, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("pathlib.Path.write_bytes", full)


def test_a_full_disk_names_the_file(tmp_path, small_checkpoint, monkeypatch, capsys):
    ckpt = small_checkpoint("denoising-syn", **SMALL["denoising-syn"])
    _full_disk(monkeypatch)
    out = tmp_path / "out"
    assert _demo("denoising-syn", ckpt, "-i", _image(tmp_path / "a.png"), "-o", out) == 1
    assert capsys.readouterr().err == f"error: No space left on device: {out / 'a.png'}\n"
    assert export_weights.main([str(ckpt), str(tmp_path / "zoo.pth")]) == 1
    assert capsys.readouterr().err == f"error: No space left on device: {tmp_path / 'zoo.pth'}\n"
    assert _files(out) == [] and _files(tmp_path) == sorted(["a.png", "out"])
