"""Whole-process time of one restore: the demo against the authors' plain restore (docs/benchmarks.md).

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
reference's output. Targets: at least 2x faster on a CPU where ``--precision auto`` runs bf16 (bf16
units), 1.5x elsewhere; 50 dB. Rounds alternate the order of the variants, and the load average is
recorded before every run: these shared machines vary by 10-20 % from run to run, so the spread
(fastest and slowest run) and the ratio of every round (the reference's time over ours in that
round) are reported beside the medians. Printed: the phase breakdown of every variant and of the
reference (median seconds: start-up, imports, loading the weights, forward, reading and writing),
then the ratio of ``auto``, the path the demo takes by default. Results go to
``bench/results/startup_denoising-syn_<device class>.json`` (``bench.common.result_path``, e.g.
``amd-epyc-zen5`` or ``amd-epyc-zen5-emulated``; ``--out`` to name it otherwise); the record also
holds the CPU class (``bench.common.cpu_class``: bf16 units, instruction-set limits, what auto ran).
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
from bench.common import command_line, device_class, machine_info, result_path, versions  # noqa: E402
from bench.inference import reference_info  # noqa: E402
from utils.errors import run_main  # noqa: E402
from utils.image_io import read_image_uint8, write_image  # noqa: E402
from utils.inference.tables import markdown_table, write_json  # noqa: E402
from utils.metrics import calculate_psnr  # noqa: E402

VARIANTS = {"auto": [], "fp32": ["--precision", "fp32"], "fast": ["--fast"], "onnx": []}
PHASES = ("start", "import", "load", "forward", "rest")
PHASE_LABELS = ("start", "imports", "loading", "forward", "reading + writing")
TASK = "denoising-syn"
SIGMA = 25.0
TARGET_PSNR = 50.0
TARGET_SPEEDUP = {True: 2.0, False: 1.5}
"""Whole-restore speed-up over the reference that ``auto`` must reach, by whether it runs bf16 there."""


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
                        help="JSON file (default: bench/results/startup_denoising-syn_<device class>.json)")
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
    load = os.getloadavg()[0]
    start = time.perf_counter()
    done = subprocess.run(child, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{kind} restore failed: {done.stderr.strip().splitlines()[-1:]}")
    info = json.loads(record.read_text())
    seconds = {"start": wall - info["total"], **info["seconds"]}
    return {"wall": wall, "seconds": seconds, "load_before": load, "stubbed": info["stubbed"],
            "output": out / "noisy.png", "stdout": done.stdout}


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
            order = list(commands) if round_ % 2 == 0 else list(commands)[::-1]
            for name in order:
                kind, target, child_argv = commands[name]
                print(f"round {round_ + 1}: {name} ...", file=sys.stderr, flush=True)
                folder = tmp / f"{name}_{round_}"
                folder.mkdir()
                run = run_child(kind, target, child_argv, folder, env)
                outputs[name] = read_image_uint8(run.pop("output"))
                runs.setdefault(name, []).append(run)
    bf16 = machine["cpu_class"]["auto_bf16"]
    summary = summarise(runs, outputs, TARGET_SPEEDUP[bf16])
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
              "target": {"speedup": TARGET_SPEEDUP[bf16], "psnr_db": TARGET_PSNR,
                         "criterion": f"auto's whole process >= {TARGET_SPEEDUP[bf16]:g}x faster than the reference "
                                      f"({'bf16' if bf16 else 'no bf16'} here; median of the rounds' ratios), "
                                      f"output >= {TARGET_PSNR:g} dB PSNR against the reference's output"}}
    out = args.out or result_path(TASK, "startup", device_class(torch.device("cpu")))
    write_json(out, record)
    print(table(summary))
    print(verdict(summary, record["plan_lines"].get("auto"), TARGET_SPEEDUP[bf16]))
    print(f"wrote {out}")
    return record


def summarise(runs: dict[str, list[dict]], outputs: dict[str, np.ndarray], target: float) -> list[dict]:
    """Per variant: median, fastest and slowest wall time, the median phase times and load average,
    the speed-up over the reference (ratio of the medians, and the median and range of the rounds'
    own ratios), the PSNR of its output against the reference's (and ours in fp32 when run), and
    whether it meets ``target`` (the median round ratio) and ``TARGET_PSNR``."""
    reference = [r["wall"] for r in runs["reference"]] if "reference" in runs else None
    rows = []
    for name, items in runs.items():
        walls = [r["wall"] for r in items]
        wall = statistics.median(walls)
        row = {"variant": name, "wall_s": wall, "min_s": min(walls), "max_s": max(walls),
               "spread": (max(walls) - min(walls)) / wall, "times_s": walls,
               "phases_s": {p: statistics.median(r["seconds"][p] for r in items) for p in PHASES},
               "load_before": statistics.median(r["load_before"] for r in items)}
        if reference:
            ratios = [ref / own for ref, own in zip(reference, walls)]
            row.update(speedup_vs_reference=statistics.median(reference) / wall, round_ratios=ratios,
                       round_ratio_median=statistics.median(ratios), round_ratio_min=min(ratios),
                       round_ratio_max=max(ratios))
        for base in ("reference", "fp32"):
            if base in outputs and base != name:
                psnr = float(calculate_psnr(outputs[name], outputs[base]))
                row[f"psnr_vs_{base}"] = psnr if np.isfinite(psnr) else "identical"
        if reference and name != "reference":
            psnr = row["psnr_vs_reference"]
            row["met"] = row["round_ratio_median"] >= target and (psnr == "identical" or psnr >= TARGET_PSNR)
        rows.append(row)
    return rows


def _psnr(value) -> str:
    """A PSNR cell: '-' when not measured, 'identical', or dB with one decimal."""
    return "-" if value is None else value if isinstance(value, str) else f"{value:.1f}"


def table(rows: Sequence[dict]) -> str:
    """The summary as a markdown table: median wall time with its range, the phase breakdown, the
    ratio to the reference and the PSNR against its output."""
    def fmt(value, spec):
        return "-" if value is None else format(value, spec)

    header = ["variant", "wall s (min-max)", *[f"{p} s" for p in PHASE_LABELS], "x reference (rounds)",
              "PSNR vs reference", "load"]
    body = [[r["variant"], f"{r['wall_s']:.2f} ({r['min_s']:.2f}-{r['max_s']:.2f})",
             *[fmt(r["phases_s"][p], ".2f") for p in PHASES],
             "-" if r.get("round_ratio_median") is None else
             f"{r['round_ratio_median']:.2f} ({r['round_ratio_min']:.2f}-{r['round_ratio_max']:.2f})",
             _psnr(r.get("psnr_vs_reference")), f"{r['load_before']:.1f}"] for r in rows]
    return markdown_table(header, body, pad=False).rstrip("\n")


def verdict(rows: Sequence[dict], plan_line: Optional[str], target: float) -> str:
    """One line on the demo's default path: what auto ran, its ratio to the reference, the target."""
    auto = next((r for r in rows if r["variant"] == "auto"), None)
    if auto is None or auto.get("round_ratio_median") is None:
        return "auto: not compared (run the 'auto' variant with --reference)"
    return (f"auto ({plan_line}): {auto['round_ratio_median']:.2f}x the reference's whole restore (median of "
            f"{len(auto['round_ratios'])} rounds, {auto['round_ratio_min']:.2f}-{auto['round_ratio_max']:.2f}; "
            f"medians {auto['speedup_vs_reference']:.2f}x), {_psnr(auto['psnr_vs_reference'])} dB; target "
            f"{target:g}x: {'met' if auto['met'] else 'NOT met'}")


if __name__ == "__main__":
    run_main(main)
