"""Smoke tests of the bench scripts on narrow models, the shipped files and tiny inputs (timings
meaningless)."""
import json

import pytest
import torch

import networks
from bench import inference
from utils import devices

NARROW = {"denoising-syn": dict(n_feat=[8, 16], dep_S=3, n_resblocks=1),
          "sisr": dict(n_feat=[8, 16], dep_S=3, dep_K=1, n_resblocks=1)}
ROW_KEYS = {"task", "size", "input_side", "output_mp", "path", "median_ms", "min_ms", "ms_per_mp",
            "times_ms", "peak_mem_mb", "compile_s", "plan", "max_abs_diff", "speedup_vs_fp32",
            "speedup_vs_reference"}

# A stand-in for the authors' checkout: its networks/VIRNet.py serves this project's classes,
# loaded under another package name as the child process cannot import ours as `networks`.
FAKE_VIRNET = '''import importlib.util, sys
spec = importlib.util.spec_from_file_location(
    "project_networks", {init!r}, submodule_search_locations=[{pkg!r}])
module = importlib.util.module_from_spec(spec)
sys.modules["project_networks"] = module
spec.loader.exec_module(module)
VIRAttResUNet, VIRAttResUNetSR = module.VIRAttResUNet, module.VIRAttResUNetSR
'''


def test_inference_bench_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    record = inference.main(["--tasks", "denoising-syn", "sisr", "--sizes", "32", "--paths",
                             "tf32", "channels_last", "bf16", "fast", "--repeats", "1", "--warmup", "0",
                             "--device", "cpu", "--out", str(out)],
                            model_overrides=NARROW)
    assert json.loads(out.read_text()) == record
    assert {"command", "machine", "versions", "settings", "results", "target"} <= set(record)
    assert {"python", "torch"} <= set(record["versions"])
    assert record["machine"]["cpu"] and record["machine"]["torch_threads"] >= 1
    rows = record["results"]
    paths = ("fp32", "tf32", "channels_last", "bf16", "fast")
    assert [(r["task"], r["path"]) for r in rows] == [
        (t, p) for t in ("denoising-syn", "sisr") for p in paths]
    for row in rows:
        assert set(row) == ROW_KEYS
        assert row["min_ms"] > 0 and len(row["times_ms"]) == 1
        assert set(row["max_abs_diff"]) == set(networks.TASKS[row["task"]].outputs)
        if row["path"] in ("fp32", "channels_last", "fast"):
            assert max(row["max_abs_diff"].values()) < 1e-4
        if row["path"] == "tf32":  # TF32 is CUDA's: on a CPU the same arithmetic as fp32
            assert max(row["max_abs_diff"].values()) == 0
    sr = [r for r in rows if r["task"] == "sisr"][0]
    assert sr["input_side"] == 8 and sr["output_mp"] == pytest.approx(32 * 32 / 1e6)
    assert "| sisr | 32 | fast |" in capsys.readouterr().out


@pytest.mark.slow  # the child process imports torch: about 5-15 s
def test_inference_bench_reference_child(tmp_path, root):
    ref = tmp_path / "ref"
    (ref / "networks").mkdir(parents=True)
    (ref / "networks" / "__init__.py").write_text("")
    pkg = root / "networks"
    (ref / "networks" / "VIRNet.py").write_text(
        FAKE_VIRNET.format(init=str(pkg / "__init__.py"), pkg=str(pkg)))
    record = inference.main(["--tasks", "sisr", "--sizes", "32", "--paths", "fp32", "--repeats",
                             "2", "--warmup", "0", "--device", "cpu", "--reference", str(ref),
                             "--out", str(tmp_path / "bench.json")], model_overrides=NARROW)
    fp32, reference = record["results"]
    assert reference["path"] == "reference" and len(reference["times_ms"]) == 2
    assert max(reference["max_abs_diff"].values()) == 0.0
    assert fp32["speedup_vs_reference"] > 0
    assert record["settings"]["reference"]["dir"] == str(ref)
    assert record["target"]["cases"][0]["path"] == "fp32"


@pytest.mark.slow  # a real two-step training run of the compact denoiser at batch 2: about 3-9 s
def test_training_bench_worker_times_steps(tmp_path):
    """The training benchmark's child mode on a one-step run: the step stamps come back."""
    from bench import training
    args = training.parse_args(["--iters", "1", "--warmup", "0", "--device", "cpu"])
    assert args.variants is None  # the default is chosen in main (default_variants)
    stamps = tmp_path / "stamps.json"
    # the compact config says bf16: auto (bf16 where the CPU has native bf16): the fp32 variant must turn it off
    extra = ["batch_size=2", "patch_size=32", *training.variant_opts("fp32")]
    argv = training.trainer_args("denoising_syn_compact", tmp_path / "run", args, extra)
    assert training.worker(["denoising_syn_compact", str(stamps), *argv]) == 0
    child = json.loads(stamps.read_text())
    assert len(child["stamps"]) == 2 and child["stamps"][1] > child["stamps"][0]
    assert child["threads"] >= 1
    ran = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (ran["bf16"], ran["channels_last"], ran["batch_size"]) == (False, False, 2)
    rows = [{"config": "c", "processes": 1, "it_per_s": 2.0},
            {"config": "c", "processes": 2, "it_per_s": 3.0}]
    assert training.ddp_scaling(rows) == [{"config": "c", "speedup_2_vs_1": 1.5,
                                           "efficiency": 0.75}]


@pytest.mark.parametrize("native, expected", [(True, ["fp32", "bf16"]), (False, ["fp32"])])
def test_training_bench_times_bf16_where_it_is_native(monkeypatch, native, expected):
    from bench import training
    monkeypatch.setattr(devices, "cpu_bf16", lambda: (native, "probed"))
    assert training.default_variants(torch.device("cpu")) == expected
    assert training.default_variants(torch.device("mps")) == ["fp32"]


def test_tiling_bench_child(tmp_path):
    """The tiling benchmark's child mode on a tiny image: time, memory and the crop of mu."""
    from bench import tiling
    assert tiling.parse_size("40x24") == (40, 24)
    out = tmp_path / "tiled.pt"
    spec = {"size": [40, 24], "tile": 16, "overlap": 8, "fast": False, "ckpt_path": None,
            "threads": 1, "crop": [4, 8, 16], "out": str(out)}
    tiling.child(json.dumps(spec))
    result = torch.load(out, weights_only=True)
    assert result["tiled"] and result["wall_s"] > 0
    assert result["peak_rss_mb"] >= result["rss_before_mb"] > 0
    assert result["crop_mu"].shape == (1, 3, 16, 16)


def test_quality_bench_compares_paths_with_fp32(tmp_path, small_checkpoint, shared, capsys):
    from bench import quality
    from utils.image_io import read_image_uint8, write_image

    data = tmp_path / "data"
    data.mkdir()
    for path in sorted((shared / "testsets/CBSD68").glob("*.png"))[:2]:
        write_image(data / path.name, read_image_uint8(path)[:40, :52])
    ckpt = small_checkpoint("denoising-syn", **NARROW["denoising-syn"])
    out = tmp_path / "quality.json"
    record = quality.main(["--ckpt_path", str(ckpt), "--data", str(data), "--paths", "bf16", "fast",
                           "--device", "cpu", "--out", str(out)])
    assert json.loads(out.read_text()) == record
    rows = {r["path"]: r for r in record["results"]}
    assert list(rows) == ["fp32", "bf16", "fast"] and record["settings"]["images"] == 2
    assert rows["fp32"]["delta_db"] == 0 and rows["fast"]["within_tolerance"]
    assert abs(rows["bf16"]["delta_db"]) < 1 and all(len(r["psnrs"]) == 2 for r in rows.values())
    assert f"| fast | {rows['fast']['mean_psnr']:.3f} |" in capsys.readouterr().out


# A stand-in for the authors' scripts/testing_demo.py: their three functions and flags, restoring by copying.
FAKE_TESTING_DEMO = '''import argparse, os, cv2
def load_model(task, ckpt_path, sf=None):
    return None
def process_image(net, im, task, sf=None):
    return im
def main():
    parser = argparse.ArgumentParser()
    for flag in ("--task", "-i", "-o", "--ckpt_path"):
        parser.add_argument(flag)
    args = parser.parse_args()
    out = process_image(load_model(args.task, args.ckpt_path), cv2.imread(args.i), args.task)
    os.makedirs(args.o, exist_ok=True)
    cv2.imwrite(os.path.join(args.o, os.path.basename(args.i)), out)
'''


@pytest.mark.slow  # two fresh processes, one importing torch: about 5-15 s
def test_startup_bench_times_whole_processes(tmp_path, small_checkpoint):
    from bench import startup
    ref = tmp_path / "ref"
    (ref / "scripts").mkdir(parents=True)
    (ref / "scripts" / "testing_demo.py").write_text(FAKE_TESTING_DEMO)
    ckpt = small_checkpoint("denoising-syn", **NARROW["denoising-syn"])
    out = tmp_path / "startup.json"
    record = startup.main(["--size", "32", "--variants", "fp32", "--repeats", "1", "--threads", "1",
                           "--ckpt_path", str(ckpt), "--reference", str(ref), "--out", str(out)])
    assert json.loads(out.read_text()) == record
    ours, reference = record["summary"]
    assert (ours["variant"], reference["variant"]) == ("fp32", "reference")
    assert set(ours["phases_s"]) == set(startup.PHASES) and ours["phases_s"]["forward"] > 0
    assert ours["wall_s"] >= sum(ours["phases_s"].values()) * 0.99
    assert isinstance(ours["psnr_vs_reference"], float) and ours["speedup_vs_reference"] > 0
    assert record["plan_lines"]["fp32"].startswith("run: fp32, eager PyTorch")
    assert record["machine"]["cpu_class"]["cpu"]


@pytest.mark.slow  # the niid protocol's draws for all of CBSD68 and 16 restorations: about 20-40 s
def test_noise_levels_compares_varying_and_uniform_noise_pixel_by_pixel(tmp_path, shared):
    """Every pixel of the image lands in one level bin; the shipped denoiser's error grows with the
    level, and on the pixels of one level the protocol's varying map and uniform noise score alike."""
    from bench import noise_levels
    record = noise_levels.main(["--images", "1", "--threads", "2", "--out", str(tmp_path / "n")])
    assert json.loads((tmp_path / "n.json").read_text())["rows"] == record["rows"]
    rows = record["rows"]
    totals = [r for r in rows if r["bin"] == "all"]
    assert [r["case"] for r in totals] == [1, 2, 3]
    for total in totals:
        bins = [r for r in rows if r["case"] == total["case"] and r["bin"] != "all"]
        assert sum(r["pixels"] for r in bins) == total["pixels"] == 481 * 321
        assert abs(total["psnr_varying"] - total["psnr_uniform"]) < 0.3
        assert bins[0]["psnr_uniform"] > bins[-1]["psnr_uniform"] + 3  # std 10-15 against 70-75
    assert noise_levels.level_bins()[[0, -1]].tolist() == [10.0, 75.0]


@pytest.mark.slow  # the niid protocol's draws for all of CBSD68: about 10-20 s
def test_estimator_oracle_swaps_in_the_true_noise_map(tmp_path, shared):
    """The shipped denoiser given the true std maps instead of its S-Net's: the same R-Net, so the
    scores move little (the estimate is a few 0-255 units off), and both are far above the input."""
    from bench import estimator_oracle
    record = estimator_oracle.main(["--task", "denoising-syn", "--images", "1", "--out", str(tmp_path / "o")])
    assert json.loads((tmp_path / "o.json").read_text())["mean"] == record["mean"]
    rows = record["per_image"]
    assert [r["case"] for r in rows] == [1, 2, 3]
    for row in rows:
        assert 0.5 < row["std_error_255"] < 6
        assert abs(row["psnr_truth"] - row["psnr_estimate"]) < 0.1
        assert row["psnr_truth"] > 24  # the noisy inputs are at 15.5-16.5 dB


def test_sr_blur_bench_compares_the_same_blur(tmp_path, root):
    from bench import sr_blur
    from utils import degradation
    fft = degradation.correlate_fft
    out = tmp_path / "sr_blur.json"
    record = sr_blur.main(["--config", str(root / "configs/sisr_x4_small.json"), "--rounds", "1", "--steps", "1",
                           "--device", "cpu", "--precision", "fp32", "--out", str(out)])
    assert json.loads(out.read_text()) == record
    assert [(r["what"], r["variant"]) for r in record["results"]] == [
        (w, v) for w in ("blur", "step") for v in ("fft", "conv")]
    assert all(r["median_s"] > 0 for r in record["results"])
    assert record["blur_max_abs_diff"] < 1e-5 and record["lh_rel_diff"] < 1e-5
    assert degradation.correlate_fft is fft                 # the FFT is back in place afterwards


def test_denoiser_comparisons_score_the_same_inputs_for_every_model(tmp_path, shared):
    """bench/plain_noise.py and bench/camera_noise.py on one small image: every model is scored on
    the same noisy input, and the shipped synthetic denoiser restores plain noise above it."""
    from bench import camera_noise, plain_noise

    data = tmp_path / "clean"
    data.mkdir()
    (data / "a.png").write_bytes((shared / "testsets" / "CBSD68" / "101085.png").read_bytes())
    plain = plain_noise.main(["--data", str(data), "--max_side", "64", "--threads", "1",
                              "--out", str(tmp_path / "plain")])
    camera = camera_noise.main(["--data", str(data), "--threads", "1", "--out", str(tmp_path / "camera")])
    for record, out in ((plain, "plain"), (camera, "camera")):
        assert json.loads((tmp_path / f"{out}.json").read_text()) == record
        assert list(record["mean"]) == ["noisy input", *record["models"]]
        assert {r["image"] for r in record["per_image"]} == {"a"}
    assert plain["mean"]["synthetic-noise compact"]["psnr"] > plain["mean"]["noisy input"]["psnr"] + 3
