"""ONNX export and the onnx backend (utils/inference/onnx_export.py, onnx_backend.py): outputs of ONNX
Runtime within 1e-4 of PyTorch for every task, at any size, tiled, SR with the whole image's
estimates; the export command line; one-line errors for a file that cannot run.

Tiny models are exported once per session (``exported``): each export traces one or two graphs
(a few seconds each)."""
import re

import numpy as np
import onnx
import pytest
import torch

import demo_test_sisr
import demo_test_syn
import networks
from utils.errors import UserError
from utils.inference import Restorer
from utils.inference.export import main as export_main
from utils.inference.onnx_backend import OnnxBackend, load_onnx
from utils.inference.onnx_export import TOLERANCE, write_onnx
from helpers import tiny_architecture

TINY = {task: tiny_architecture(task) for task in networks.TASKS}
SF = 4


def _scale(task: str):
    return SF if networks.TASKS[task].scales else None


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """``exported(task)``: (the tiny eval-mode model of ``task``, the path of its ONNX export), made once."""
    folder, cache = tmp_path_factory.mktemp("onnx"), {}

    def get(task: str):
        if task not in cache:
            torch.manual_seed(0)
            net = networks.build_model(task, sf=_scale(task), **TINY[task]).eval()
            path = folder / f"{task}.onnx"
            write_onnx(net, _scale(task), path, source="tiny.pth", note="tiny test model")
            cache[task] = net, path
        return cache[task]

    return get


def _largest_difference(got, want) -> float:
    assert [g.shape for g in got] == [w.shape for w in want]
    return max((g - w).abs().max().item() for g, w in zip(got, want))


@pytest.mark.parametrize("task", list(TINY))
def test_onnx_runtime_matches_pytorch_at_any_size(exported, task):
    net, path = exported(task)
    model = load_onnx(task, path, _scale(task))
    backend, args = OnnxBackend(model), (() if _scale(task) is None else (SF,))
    assert model.OUTPUTS == net.OUTPUTS and model.pad_multiple == net.pad_multiple
    assert model.estimators == tuple(net.whole_image_estimators())
    for height, width in ((13, 11), (16, 24), (29, 37)):  # odd sides, multiples of the padding, wide
        x = torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(height))
        with torch.no_grad():
            want = net(x, *args)
        assert _largest_difference(backend(x, *args), want) < TOLERANCE


def test_tiled_sr_uses_the_whole_images_estimates(exported):
    net, path = exported("sisr")
    lr = np.random.default_rng(0).random((40, 36, 3), dtype=np.float32)
    onnx_tiled = Restorer(load_onnx("sisr", path, SF), sf=SF, tile=16, overlap=8)
    torch_tiled = Restorer(net, sf=SF, tile=16, overlap=8, precision="fp32")
    whole = Restorer(net, sf=SF, tile=0, precision="fp32")(lr)
    got, want = onnx_tiled(lr), torch_tiled(lr)
    assert got.tiled and onnx_tiled.plan.backend == "onnx"
    assert np.abs(got.image - want.image).max() < TOLERANCE
    np.testing.assert_allclose(got.kinfo, whole.kinfo, atol=1e-5)  # the K-Net saw the whole LR image
    np.testing.assert_allclose(got.noise_var, whole.noise_var, rtol=1e-4)


def test_tiled_denoiser_matches_pytorch(exported):
    net, path = exported("denoising-real")
    im = np.random.default_rng(1).random((45, 70, 3), dtype=np.float32)
    got = Restorer(load_onnx("denoising-real", path), tile=32, overlap=8)(im)
    want = Restorer(net, tile=32, overlap=8, precision="fp32")(im)
    assert got.tiled and np.abs(got.image - want.image).max() < TOLERANCE
    assert np.abs(got.noise_var - want.noise_var).max() < TOLERANCE


def test_weights_line_and_complexity_come_from_the_file(exported):
    _, path = exported("sisr")
    model = load_onnx("sisr", path, SF)
    assert f"{path} (ONNX for ONNX Runtime: compact sisr x4 architecture" in model.weights_info
    assert "exported from tiny.pth; tiny test model" in model.weights_info
    assert model.complexity["parameters"] == sum(p.numel() for p in exported("sisr")[0].parameters())


def test_files_that_cannot_run_are_one_line_errors(exported, tmp_path):
    _, sr = exported("sisr")
    data = sr.read_bytes()
    cases = {"garbage.onnx": (b"not an onnx file\n", "is not a readable ONNX model"),
             "cut.onnx": (data[:len(data) // 2], None)}
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x20
    cases["flipped.onnx"] = (bytes(flipped), None)
    model = onnx.load(str(sr))
    del model.metadata_props[:]
    cases["foreign.onnx"] = (model.SerializeToString(), "is not a VIRNet model exported by this project")
    for name, (content, message) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(UserError, match=message) as err:
            load_onnx("sisr", tmp_path / name, SF)
        assert "\n" not in str(err.value) and str(tmp_path / name) in str(err.value)
    with pytest.raises(UserError, match="holds a 'sisr' model; this demo needs 'denoising-syn'"):
        load_onnx("denoising-syn", sr)
    with pytest.raises(UserError, match="was exported for x4; run with --sf 4"):
        load_onnx("sisr", sr, 2)
    with pytest.raises(UserError, match="no ONNX model at"):
        load_onnx("sisr", tmp_path / "missing.onnx", SF)


def test_demos_run_an_onnx_file_and_refuse_a_wrong_one(exported, tmp_path, capsys):
    _, syn = exported("denoising-syn")
    _, sr = exported("sisr")
    assert demo_test_syn.main(["--ckpt_path", str(syn), "-o", str(tmp_path / "syn")]) == 0
    out = capsys.readouterr().out
    assert "run: fp32, ONNX Runtime (an ONNX model runs with ONNX Runtime)" in out
    assert (tmp_path / "syn" / "chelsea_noise_std.png").is_file()
    assert demo_test_sisr.main(["--sf", "2", "--ckpt_path", str(sr), "-o", str(tmp_path / "sr")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "exported for x4" in err
    for flags, message in ((["--precision", "bf16"], "runs with ONNX Runtime in fp32"),
                           (["--fast"], "runs with ONNX Runtime in fp32"),
                           (["--device", "cuda"], "runs with ONNX Runtime on the CPU")):
        assert demo_test_syn.main(["--ckpt_path", str(syn), "-o", str(tmp_path / "e"), *flags]) == 1
        assert message in capsys.readouterr().err


def test_export_command_line_errors(small_checkpoint, tmp_path, capsys):
    syn = small_checkpoint("denoising-syn", **TINY["denoising-syn"])
    sr = small_checkpoint("sisr", **TINY["sisr"])  # its name records no scale
    for argv, message in (([str(syn), str(tmp_path / "a.onnx"), "--fp16"], "an ONNX export keeps float32 weights"),
                          ([str(syn), str(tmp_path / "a.onnx"), "--n_feat", "24", "40"], "export the grown file, then"),
                          ([str(syn), str(tmp_path / "a.onnx"), "--sf", "4"], "--sf applies to SR checkpoints"),
                          ([str(sr), str(tmp_path / "a.onnx")], "pass --sf (2, 3, 4)"),
                          ([str(syn), str(tmp_path / "a.onnx"), "--task", "sisr"], "holds a 'denoising-syn' model")):
        assert export_main(argv) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err
    assert not (tmp_path / "a.onnx").exists()


@pytest.mark.slow  # traces the graph: 5-20 s
def test_export_command_writes_a_file(small_checkpoint, tmp_path, capsys):
    src = small_checkpoint("denoising-syn", **TINY["denoising-syn"])
    dst = tmp_path / "syn.onnx"
    assert export_main([str(src), str(dst), "--note", "exported in a test"]) == 0
    assert f"wrote {dst} (" in capsys.readouterr().out
    assert export_main([str(src), str(dst)]) == 1 and "exists; pass --force" in capsys.readouterr().err
    model = load_onnx("denoising-syn", dst)
    assert "exported in a test" in model.weights_info and src.name in model.weights_info


def _edited(exported_path, tmp_path, name, change, resign=True):
    """The export at ``exported_path`` with its ``virnet.*`` metadata changed by ``change(dict)``, its
    digest recomputed as an editor who knows the scheme would (``resign``), saved as ``name``."""
    from utils.inference.onnx_backend import DIGEST, META, content_digest

    model = onnx.load(str(exported_path))
    meta = {p.key: p.value for p in model.metadata_props}
    change(meta)
    onnx.helper.set_model_props(model, meta)
    if resign:
        onnx.helper.set_model_props(model, {**meta, META + DIGEST: content_digest(model)})
    (tmp_path / name).write_bytes(model.SerializeToString())
    return tmp_path / name


def test_files_whose_metadata_lie_are_one_line_errors(exported, tmp_path, capsys):
    _, sr = exported("sisr")
    _, syn = exported("denoising-syn")
    relabelled = _edited(sr, tmp_path, "x2.onnx", lambda m: m.update({"virnet.sf": "2"}), resign=False)
    with pytest.raises(UserError, match="damaged or edited .*graph, weights and metadata"):  # the digest covers it
        load_onnx("sisr", relabelled, 2)
    resigned = _edited(sr, tmp_path, "x2_resigned.onnx", lambda m: m.update({"virnet.sf": "2"}))
    with pytest.raises(UserError, match=r"a 12 x 8 input into a 48 x 32 image, not the x2 its metadata claims"):
        load_onnx("sisr", resigned, 2)
    assert demo_test_sisr.main(["--sf", "2", "--ckpt_path", str(resigned), "-o", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not the x2 its metadata claims" in err and not (tmp_path / "o" / "astronaut_x2.png").exists()
    for key, value, allowed in (("pad_multiple", "0", "an integer in [1, 256]"), ("pad_multiple", "x", "an integer"),
                                ("arch", "{not json", "a JSON object"), ("arch", "[" * 5000 + "]" * 5000, "a JSON object"),
                                ("parameters", "-3", "an integer >= 1"), ("sf", "", "one of 2, 3, 4"),
                                ("outputs", "mu", "the 'sisr' model's outputs")):
        junk = _edited(sr, tmp_path, f"{key}.onnx", lambda m: m.update({f"virnet.{key}": value}))
        with pytest.raises(UserError, match=f"metadata virnet.{key} = .* is not {re.escape(allowed)}") as err:
            load_onnx("sisr", junk, SF)
        assert "\n" not in str(err.value)
    other_task = _edited(syn, tmp_path, "task.onnx", lambda m: m.update({"virnet.task": "denoising-real"}))
    load_onnx("denoising-real", other_task)  # same outputs and scale: the layout cannot tell, the weights line names it


def test_external_data_outside_the_folder_is_one_line(exported, tmp_path):
    from onnx.external_data_helper import set_external_data

    _, syn = exported("denoising-syn")
    model = onnx.load(str(syn))
    tensor = max(model.graph.initializer, key=lambda t: len(t.raw_data))
    set_external_data(tensor, location="../../outside.bin")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    tensor.ClearField("raw_data")
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "ext.onnx").write_bytes(model.SerializeToString())
    with pytest.raises(UserError, match="is not a readable ONNX model") as err:
        load_onnx("denoising-syn", tmp_path / "in" / "ext.onnx")
    assert "\n" not in str(err.value)
