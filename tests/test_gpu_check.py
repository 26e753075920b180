"""bench/gpu_check.sh: its CPU mode runs every step at tiny sizes and writes the summary a GPU run
would write, so the script a lent GPU machine runs in one call does not rot."""
import json
import subprocess

import pytest


@pytest.mark.slow
def test_cpu_mode_runs_every_step(tmp_path, root):
    out = tmp_path / "check"
    proc = subprocess.run(["bash", str(root / "bench/gpu_check.sh"), "--cpu", "--out", str(out)],
                          cwd=root, capture_output=True, text=True, timeout=900)
    summary = json.loads((out / "summary.json").read_text())
    steps = {row["step"]: row for row in summary["steps"]}
    assert proc.returncode == 0, (proc.stdout[-3000:], summary["required_failed"])
    assert summary["mode"] == "cpu" and summary["required_failed"] == []
    assert summary["environment"]["cuda_available"] is False and summary["environment"]["torch"]
    expected = {"environment", "cuda_tests", "conformance", "train_syn_fp32", "train_sisr_fp32", "train_real_fp32",
                "launch_distributed", "ddp_world_size_1", "demo_syn", "demo_sisr", "demo_real",
                "inference_bench", "gpu_memory"}
    assert set(steps) == expected
    assert steps["cuda_tests"]["status"] == "skipped"
    assert all(steps[name]["status"] == "ok" for name in expected - {"cuda_tests"}), steps
    assert "passed" in steps["conformance"]["note"] and "export.safetensors" in steps["train_syn_fp32"]["note"]
    table = (out / "summary.md").read_text()
    assert "| demo_sisr | required | ok |" in table and "required steps failed: none" in table
    records = {p.name: json.loads(p.read_text()) for p in out.glob("*.json") if p.name != "summary.json"}
    gpu_memory = [r for name, r in records.items() if name.startswith("gpu_memory_tiny_all_")]
    assert len(gpu_memory) == 1 and gpu_memory[0]["tiny"] and "no CUDA" in gpu_memory[0]["note"]
    assert all(row["peak_mib"] > 0 for row in gpu_memory[0]["training"] + gpu_memory[0]["restoring"])
    inference = [r for name, r in records.items() if name.startswith("inference_tiny_all_")]
    paths = {row["path"] for row in inference[0]["results"]}
    assert paths == {"fp32", "tf32"}
    assert len(list(out.iterdir())) <= 8  # what the device tool brings back from $OUT


def test_bad_option_is_one_line(root):
    proc = subprocess.run(["bash", str(root / "bench/gpu_check.sh"), "--gpus", "2"], cwd=root,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: unknown option --gpus (see --help)"
