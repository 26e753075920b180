"""Safe weights: python -m utils.export_weights SRC DST.safetensors writes the weights in safetensors
with the architecture and note in its metadata; every loader (networks.read_checkpoint, load_model,
the demos, the exporter itself) reads .pth and .safetensors alike; the shipped files are named in the
weights catalogue (model_zoo/catalogue.json, tests/test_catalogue.py)."""
import json

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import demo_test_syn
import networks
from networks import CheckpointError
from utils.inference import Restorer, load_model
from utils.inference.export import main as export
from one_line import one_line_error as _error

SMALL = dict(n_feat=[16, 32], dep_S=3, n_resblocks=1)
CPU = torch.device("cpu")


def test_export_to_safetensors_keeps_arch_and_note(small_checkpoint, tmp_path, capsys):
    src = small_checkpoint("denoising-syn", **SMALL)
    dst = tmp_path / "zoo.safetensors"
    assert export([str(src), str(dst), "--fp16", "--note", "safe weights"]) == 0
    assert f"wrote {dst}" in capsys.readouterr().out
    with safe_open(str(dst), framework="pt") as f:
        metadata = f.metadata()
        assert all(f.get_tensor(k).dtype == torch.float16 for k in f.keys())
    assert metadata["format"] == "pt" and json.loads(metadata["arch"])["kwargs"]["n_feat"] == [16, 32]
    assert json.loads(metadata["meta"])["note"] == "safe weights"
    ckpt = networks.read_checkpoint(dst)
    assert ckpt["arch"]["task"] == "denoising-syn" and ckpt["meta"]["dtype"] == "float16"
    pth = tmp_path / "zoo.pth"
    assert export([str(src), str(pth), "--fp16", "--note", "safe weights"]) == 0
    x = np.random.default_rng(0).random((24, 28, 3), dtype=np.float32)
    from_pth, from_safe = (Restorer(load_model("denoising-syn", str(p), p, CPU))(x) for p in (pth, dst))
    assert np.array_equal(from_pth.image, from_safe.image)
    assert "stored as float16; safe weights" in load_model("denoising-syn", str(dst), dst, CPU).weights_info


def test_converting_a_model_zoo_file_keeps_its_note(small_checkpoint, tmp_path):
    src = small_checkpoint("denoising-syn", **SMALL)
    zoo = tmp_path / "zoo.pth"
    assert export([str(src), str(zoo), "--fp16", "--note", "the shipped note"]) == 0
    safe = tmp_path / "zoo.safetensors"
    assert export([str(zoo), str(safe), "--fp16"]) == 0
    assert networks.read_checkpoint(safe)["meta"] == networks.read_checkpoint(zoo)["meta"]
    back = tmp_path / "back.pth"
    assert export([str(safe), str(back), "--fp16"]) == 0  # safetensors is a source too
    assert all(torch.equal(a, b) for a, b in zip(networks.read_checkpoint(back)["model_state_dict"].values(),
                                                 networks.read_checkpoint(zoo)["model_state_dict"].values()))


def test_demo_reads_safetensors(small_checkpoint, tmp_path, capsys):
    src = small_checkpoint("denoising-syn", **SMALL)
    dst = tmp_path / "w.safetensors"
    assert export([str(src), str(dst)]) == 0
    assert demo_test_syn.main(["--ckpt_path", str(dst), "--device", "cpu", "-o", str(tmp_path / "out")]) == 0
    assert f"weights: {dst} (compact denoising-syn architecture" in capsys.readouterr().out


def test_damaged_safetensors_are_one_line(small_checkpoint, tmp_path, capsys):
    src = small_checkpoint("denoising-syn", **SMALL)
    dst = tmp_path / "w.safetensors"
    assert export([str(src), str(dst)]) == 0
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(dst.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=f"cannot read checkpoint {cut}: truncated or damaged safetensors"):
        networks.read_checkpoint(cut)
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        networks.read_checkpoint(tmp_path / "missing.safetensors")
    assert demo_test_syn.main(["--ckpt_path", str(cut), "--device", "cpu", "-o", str(tmp_path / "out")]) == 1
    assert "truncated or damaged safetensors file" in _error(capsys)
    bad = tmp_path / "bad.safetensors"
    save_file({"w": torch.zeros(2)}, str(bad), metadata={"arch": "{not json"})
    with pytest.raises(CheckpointError, match="its 'arch' metadata is not JSON"):
        networks.read_checkpoint(bad)
