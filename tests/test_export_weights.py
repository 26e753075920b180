"""utils.export_weights (utils/inference/export.py): a trainer's weights become a float16 model-zoo file that rebuilds its own
architecture and restores like the float32 original; bad input is refused in one line."""
import torch

import networks
from utils.inference.export import main
from utils.inference import load_model

SMALL = dict(n_feat=[16, 32], dep_S=3, n_resblocks=1)


def test_fp16_export_round_trip(small_checkpoint, tmp_path, capsys):
    src = small_checkpoint("denoising-syn", **SMALL)
    dst = tmp_path / "zoo.pth"
    assert main([str(src), str(dst), "--fp16", "--note", "test weights"]) == 0
    assert f"wrote {dst}" in capsys.readouterr().out
    ckpt = torch.load(dst, weights_only=True)
    assert ckpt["meta"] == {"note": "test weights", "source": src.name, "dtype": "float16",
                            "parameters": ckpt["meta"]["parameters"]}
    assert all(v.dtype == torch.float16 for v in ckpt["model_state_dict"].values() if v.is_floating_point())
    assert dst.stat().st_size < 0.6 * src.stat().st_size
    original = load_model("denoising-syn", str(src), src, torch.device("cpu"))
    shipped = load_model("denoising-syn", str(dst), dst, torch.device("cpu"))
    assert "stored as float16; test weights" in shipped.weights_info
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (original(x)[0] - shipped(x)[0]).abs().max() < 1e-2


def test_refusals_are_one_line_and_keep_files(small_checkpoint, released_checkpoint, tmp_path, capsys):
    src = small_checkpoint("denoising-syn", **SMALL)
    dst = tmp_path / "zoo.pth"
    dst.write_bytes(b"keep me")
    cases = [([str(src), str(dst)], f"{dst} exists; pass --force"),
             ([str(tmp_path / "missing.pth"), str(tmp_path / "a.pth")], "checkpoint not found"),
             ([str(released_checkpoint("sisr")), str(tmp_path / "b.pth")], "has no 'arch' entry")]
    for argv, message in cases:
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
    assert dst.read_bytes() == b"keep me"
    assert not (tmp_path / "a.pth").exists() and not (tmp_path / "b.pth").exists()
    assert main([str(src), str(dst), "--force"]) == 0
    networks.load_checkpoint(networks.build_model("denoising-syn", **SMALL), dst)
