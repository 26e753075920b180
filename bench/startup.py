"""Whole-process time of one restore: the demo against the authors' plain restore (issue 15).

Every run is a fresh Python process restoring the same noisy image with the same weights (default:
the released synthetic-denoising architecture with seeded random weights, stored as the authors'
files are; ``--ckpt_path`` for others): from starting the process to its exit, split into the
interpreter's start-up, imports, loading the model, the forward pass(es) and the rest (reading the
image, writing the outputs and the noise heat map), as ``bench/restore_child.py`` measures them.

Variants of ours (``demo_test_syn.py -i IMAGE -o DIR --ckpt_path CKPT`` plus):

* ``auto``: no flag, the demo's default ``--precision auto`` (``utils.inference.auto``);
* ``fp32``: ``--precision fp32``, eager float32 (the reference's arithmetic);
* ``fast``: ``--fast``, the NNPACK fp32 path;
* ``onnx``: ``--ckpt_path CKPT.onnx``, the checkpoint exported once beforehand (not timed) and run
  by ONNX Runtime.

``--reference DIR`` (a checkout of the authors' repository) adds their ``scripts/testing_demo.py
--task denoising-syn`` on the same image and weights (their ``.cuda()`` calls made no-ops, so on
the CPU; packages they import only for helpers a restore does not call are stubbed when missing,
which makes their start-up shorter than in their own environment). Rounds interleave the variants;
medians are reported, with the speed-up over the reference and the PSNR of each output against the
reference's output (target: 1.5x faster, 50 dB). Results go to
``bench/results/startup_<cpu class>.json`` (``bench.common.cpu_class``) with a markdown table.
Threads: ``--threads`` sets OMP_NUM_THREADS (and MKL_NUM_THREADS) of the children.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from skimage import data as skimage_data  # noqa: E402

import networks  # noqa: E402
from bench.common import RESULTS_DIR, class_slug, command_line, machine_info, versions  # noqa: E402
from bench.inference import reference_info  # noqa: E402
from utils.image_io import read_image_uint8, write_image  # noqa: E402
from utils.inference.tables import markdown_table, write_json  # noqa: E402
from utils.metrics import calculate_psnr  # noqa: E402

VARIANTS = {"auto": [], "fp32": ["--precision", "fp32"], "fast": ["--fast"], "onnx": []}
PHASES = ("start", "import", "load", "forward", "rest")
TASK = "denoising-syn"
SIGMA = 25.0
TARGET_SPEEDUP, TARGET_PSNR = 1.5, 50.0


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=384, help="side of the test image (default 384)")
    parser.add_argument("--variants", nargs="+", choices=tuple(VARIANTS), default=["auto", "fp32"],
                        help="our runs (default: auto fp32)")
    parser.add_argument("--ckpt_path", type=Path, default=None,
                        help="synthetic-denoising weights (default: the released architecture, seeded random weights)")
    parser.add_argument("--reference", type=Path, default=None, help="a checkout of the authors' VIRNet repository")
    parser.add_argument("--repeats", type=int, default=3, help="rounds (default 3)")
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS of the children")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON file (default: bench/results/startup_<cpu class>.json)")
    args = parser.parse_args(argv)
    if args.reference is not None and not (args.reference / "scripts" / "testing_demo.py").is_file():
        parser.error(f"{args.reference} has no scripts/testing_demo.py (not a VIRNet checkout)")
    if args.repeats < 1 or args.size < 16:
        parser.error("--repeats must be >= 1 and --size >= 16")
    return args


def make_inputs(folder: Path, size: int, ckpt: Optional[Path]) -> tuple[Path, Path]:
    """The test image (a ``size`` x ``size`` crop of scikit-image's 'astronaut' with i.i.d. noise of
    std ``SIGMA``, seed 0) and the checkpoint (``ckpt``, or the released architecture with weights of
    seed 0 as ``{'model_state_dict': ...}``) in ``folder``."""
    clean = skimage_data.astronaut()
    top, left = (clean.shape[0] - size) // 2, (clean.shape[1] - size) // 2
    clean = clean[max(top, 0):max(top, 0) + size, max(left, 0):max(left, 0) + size] / 255.0
    noisy = clean + np.random.default_rng(0).standard_normal(clean.shape) * SIGMA / 255
    image = folder / "noisy.png"
    write_image(image, np.clip(noisy, 0, 1).astype(np.float32))
    if ckpt is None:
        torch.manual_seed(0)
        ckpt = folder / "virnet_syn_random.pth"
        torch.save({"model_state_dict": networks.build_model(TASK).state_dict()}, ckpt)
    return image, ckpt


def export_onnx(ckpt: Path, folder: Path) -> Path:
    """The ONNX export of ``ckpt`` (``python -m utils.export_weights``) in ``folder``."""
    dst = folder / "model.onnx"
    subprocess.run([sys.executable, "-m", "utils.export_weights", str(ckpt), str(dst), "--task", TASK],
                   cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return dst


def run_child(kind: str, target: str, argv: list[str], folder: Path, env: dict) -> dict:
    """One timed restore (``bench/restore_child.py``): its phases with the interpreter's start-up
    (the wall time not seen by the child), the wall time and the output image."""
    record = folder / "record.json"
    out = folder / "out"
    child = [sys.executable, str(ROOT / "bench" / "restore_child.py"), str(record), kind, target, *argv,
             "-o", str(out)]
    start = time.perf_counter()
    done = subprocess.run(child, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{kind} restore failed: {done.stderr.strip().splitlines()[-1:]}")
    info = json.loads(record.read_text())
    seconds = {"start": wall - info["total"], **info["seconds"]}
    return {"wall": wall, "seconds": seconds, "stubbed": info["stubbed"], "output": out / "noisy.png",
            "stdout": done.stdout}


def main(argv: Optional[Sequence[str]] = None) -> dict:
    """Run the benchmark; returns the JSON record, also written to disk."""
    args = parse_args(argv)
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)  # the children must not see this project on the reference's path
    if args.threads:
        env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    machine = machine_info(torch.device("cpu"))
    runs: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        image, ckpt = make_inputs(tmp, args.size, args.ckpt_path)
        onnx = export_onnx(ckpt, tmp) if "onnx" in args.variants else None
        commands = {name: ("ours", "demo_test_syn.py",
                           ["-i", str(image), "--ckpt_path", str(onnx if name == "onnx" else ckpt), *VARIANTS[name]])
                    for name in args.variants}
        if args.reference is not None:
            commands["reference"] = ("reference", str(args.reference.resolve()),
                                     ["--task", TASK, "-i", str(image), "--ckpt_path", str(ckpt)])
        outputs = {}
        for round_ in range(args.repeats):
            for name, (kind, target, child_argv) in commands.items():
                print(f"round {round_ + 1}: {name} ...", file=sys.stderr, flush=True)
                folder = tmp / f"{name}_{round_}"
                folder.mkdir()
                run = run_child(kind, target, child_argv, folder, env)
                outputs[name] = read_image_uint8(run.pop("output"))
                runs.setdefault(name, []).append(run)
    summary = summarise(runs, outputs)
    record = {"benchmark": "startup", "command": command_line(), "machine": machine, "versions": versions(),
              "settings": {"size": args.size, "variants": args.variants, "repeats": args.repeats,
                           "threads": args.threads, "task": TASK, "sigma": SIGMA,
                           "ckpt_path": str(args.ckpt_path) if args.ckpt_path else "released architecture, seed 0",
                           "reference": reference_info(args.reference)},
              "runs": {name: [{k: v for k, v in run.items() if k != "stdout"} for run in items]
                       for name, items in runs.items()},
              "plan_lines": {name: next((line for line in items[0]["stdout"].splitlines() if line.startswith("run:")),
                                        None) for name, items in runs.items() if name != "reference"},
              "summary": summary,
              "target": {"criterion": f"whole process >= {TARGET_SPEEDUP}x faster than the reference, output >= "
                                      f"{TARGET_PSNR:g} dB PSNR against the reference's output"}}
    out = args.out or RESULTS_DIR / f"startup_{class_slug(machine['cpu_class'])}.json"
    write_json(out, record)
    print(table(summary))
    print(f"wrote {out}")
    return record


def summarise(runs: dict[str, list[dict]], outputs: dict[str, np.ndarray]) -> list[dict]:
    """Per variant: median wall time and phase times, speed-up over the reference, PSNR of its
    output against the reference's (and ours in fp32 when run)."""
    reference = statistics.median(r["wall"] for r in runs["reference"]) if "reference" in runs else None
    rows = []
    for name, items in runs.items():
        wall = statistics.median(r["wall"] for r in items)
        row = {"variant": name, "wall_s": wall, "times_s": [r["wall"] for r in items],
               "phases_s": {p: statistics.median(r["seconds"][p] for r in items) for p in PHASES},
               "speedup_vs_reference": reference / wall if reference else None}
        for base in ("reference", "fp32"):
            if base in outputs and base != name:
                psnr = float(calculate_psnr(outputs[name], outputs[base]))
                row[f"psnr_vs_{base}"] = psnr if np.isfinite(psnr) else "identical"
        if reference and name != "reference":
            psnr = row["psnr_vs_reference"]
            row["met"] = row["speedup_vs_reference"] >= TARGET_SPEEDUP and (psnr == "identical" or psnr >= TARGET_PSNR)
        rows.append(row)
    return rows


def _psnr(value) -> str:
    """A PSNR cell: '-' when not measured, 'identical', or dB with one decimal."""
    return "-" if value is None else value if isinstance(value, str) else f"{value:.1f}"


def table(rows: Sequence[dict]) -> str:
    """The summary as a markdown table."""
    def fmt(value, spec):
        return "-" if value is None else format(value, spec)

    header = ["variant", "wall s", *[f"{p} s" for p in PHASES], "x reference", "PSNR vs reference"]
    body = [[r["variant"], fmt(r["wall_s"], ".2f"), *[fmt(r["phases_s"][p], ".2f") for p in PHASES],
             fmt(r["speedup_vs_reference"], ".2f"), _psnr(r.get("psnr_vs_reference"))] for r in rows]
    return markdown_table(header, body, pad=False).rstrip("\n")


if __name__ == "__main__":
    main()
