"""Inference benchmark of the three released VIRNet architectures (docs/benchmarks.md).

For every task and size, each requested path runs on the same seeded random weights
(``torch.manual_seed(0)``, ``net.eval()``, ``torch.inference_mode()``) and the same seeded input.
Sizes are output sides: the SR model (sf = 4) gets a ``size/4`` low-resolution input.

Paths:

* ``fp32``: eager float32, NCHW; the reference's arithmetic and the baseline of every difference
  (IEEE float32: CUDA's TF32 is turned off, ``utils.devices.set_tf32``).
* ``tf32``: eager float32 with TF32 allowed for its calls (CUDA on Ampere and later; the same as
  ``fp32`` elsewhere, so not in the CPU default).
* ``channels_last``: eager float32 with channels-last (NHWC) weights and input.
* ``bf16``: bfloat16 autocast (with channels-last on CUDA, as ``utils.inference.backends`` runs it).
  Not in the CPU default: where oneDNN has no bf16 support (CPUs without AVX-512 / AMX),
  PyTorch falls back to its slow reference convolution (10-100x slower than fp32 on AVX2
  EPYCs); ask for it with ``--paths``.
* ``compile``: ``torch.compile`` (inductor); on the CPU with weight freezing, so oneDNN gets
  pre-packed weights and fused convolution + activation. Compile time is reported apart.
* ``fast``: ``utils.inference.fast.optimize_for_inference`` (NNPACK convolutions on the CPU, one-pixel
  attention layers for SR), float32.
* ``auto``: what the demos' default ``--precision auto`` runs on this device (``utils.inference.auto``:
  bf16 + channels-last where the device computes bf16 natively, else ``fast`` on the CPU); the row's
  ``plan`` says which.
* ``onnx``: the model exported by ``utils.inference.onnx_export`` and run by ONNX Runtime (CPU only;
  the export time is reported as the compile time).
* ``reference`` (with ``--reference DIR``, a checkout of the authors' repository): their
  ``networks.VIRNet`` classes with the same weights and input, run by ``bench/reference_child.py``
  in a child process (their ``utils`` package collides with ours) that is driven line by line, so
  that its timed calls interleave with ours.

Protocol per case: each path's first call is sampled for peak memory (see
``bench.common.peak_memory_mb``) and gives the outputs compared with ``fp32`` (max abs difference
per output); then ``--warmup`` untimed calls each; then ``--repeats`` rounds in which every path
is timed once in turn, so that load changes on a shared machine hit all paths alike. Reported:
median and min time, median milliseconds per output megapixel, speed-ups over ``fp32`` and over
``reference`` (ratios of medians).

Run ``python bench/inference.py --help``; results go to ``bench/results/inference_all_<device class>.json``
(``bench.common.result_path``).
"""
import argparse
import copy
import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import networks  # noqa: E402
from bench.common import (baseline_first, command_line, device_class, machine_info,  # noqa: E402
                          peak_memory_mb, result_path, time_call, versions)
from utils.errors import run_main  # noqa: E402
from utils.devices import choose_device, set_tf32  # noqa: E402
from utils.inference.auto import plan_run  # noqa: E402
from utils.inference.backends import BACKENDS  # noqa: E402
from utils.inference.fast import optimize_for_inference  # noqa: E402
from utils.inference.onnx_backend import OnnxBackend, load_onnx  # noqa: E402
from utils.inference.onnx_export import write_onnx  # noqa: E402
from utils.inference.tables import markdown_table, write_json  # noqa: E402

PATHS = ("fp32", "tf32", "channels_last", "bf16", "compile", "fast", "auto", "onnx")
SF = 4
SEED = 0
TOLERANCE = 1e-4
TARGET_SPEEDUP = 1.5

Outputs = Tuple[torch.Tensor, ...]


@dataclass
class Runner:
    """One path of one case: ``call()`` runs a forward pass; ``timed()`` returns its seconds
    (``call`` returns them itself when ``self_timed``, as the reference child does)."""
    name: str
    call: Callable[[], object]
    device: torch.device
    self_timed: bool = False
    compile_s: Optional[float] = None
    plan: Optional[str] = None
    peak_mb: Optional[float] = None
    outputs: Optional[Outputs] = None
    times: List[float] = field(default_factory=list)

    def timed(self) -> float:
        return self.call() if self.self_timed else time_call(self.call, self.device)


class ReferenceProcess:
    """The authors' network in a child process (``bench/reference_child.py``), fed this case's
    state dict and input through ``case_dir``."""

    def __init__(self, reference_dir: Path, case_dir: Path, net: torch.nn.Module, x: torch.Tensor,
                 task: str, kwargs: dict, sf: Optional[int], threads: Optional[int],
                 device: torch.device):
        torch.save({k: v.cpu() for k, v in net.state_dict().items()}, case_dir / "state.pt")
        torch.save(x.cpu(), case_dir / "input.pt")
        spec = {"task": task, "kwargs": kwargs, "sf": sf, "threads": threads, "device": str(device)}
        (case_dir / "spec.json").write_text(json.dumps(spec))
        self.case_dir = case_dir
        self.stderr = open(case_dir / "stderr.txt", "w+")
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("reference_child.py")),
             str(reference_dir), str(case_dir)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr, text=True)
        try:
            self._expect("ready")
        except RuntimeError:
            self.close()
            raise

    def _reply(self) -> str:
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            self.stderr.seek(0)
            tail = self.stderr.read().strip().splitlines()[-5:]
            raise RuntimeError("reference child failed: " + " | ".join(tail))
        return line.strip()

    def _expect(self, word: str) -> None:
        reply = self._reply()
        if reply != word:
            raise RuntimeError(f"reference child said {reply!r}, expected {word!r}")

    def _send(self, command: str) -> None:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def run(self) -> float:
        """Seconds of one forward pass, timed in the child."""
        self._send("run")
        return float(self._reply())

    def outputs(self) -> Outputs:
        """The outputs of one forward pass (float32, CPU)."""
        self._send("save")
        self._expect("saved")
        return tuple(torch.load(self.case_dir / "outputs.pt", weights_only=True))

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()
        self.proc.stdout.close()
        self.stderr.close()


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--tasks", nargs="+", choices=networks.TASKS, default=list(networks.TASKS))
    parser.add_argument("--sizes", nargs="+", type=int, default=None,
                        help="output sides in pixels (default: 256 512, and 1024 on CUDA)")
    parser.add_argument("--paths", nargs="+", choices=PATHS, default=None,
                        help="fp32 (the baseline) always runs (default: all; on the CPU all "
                             "but bf16)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per path")
    parser.add_argument("--warmup", type=int, default=1,
                        help="untimed calls per path after its first call")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--reference", type=Path, default=None,
                        help="a checkout of the authors' VIRNet repository to time alongside")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON file (default: bench/results/inference_all_<device class>.json)")
    args = parser.parse_args(argv)
    args.device = choose_device(args.device).type
    if args.paths is None:
        args.paths = [p for p in PATHS if p not in (("onnx",) if args.device == "cuda" else ("bf16", "tf32"))]
    if args.device == "cuda" and "onnx" in args.paths:
        parser.error("the onnx path runs ONNX Runtime on the CPU: use --device cpu")
    args.paths = baseline_first(args.paths)
    if args.sizes is None:
        args.sizes = [256, 512, 1024] if args.device == "cuda" else [256, 512]
    if any(networks.TASKS[t].scales for t in args.tasks) and any(s % SF for s in args.sizes):
        parser.error(f"sizes must be multiples of the SR scale factor {SF}")
    if args.repeats < 1 or args.warmup < 0:
        parser.error("--repeats must be >= 1 and --warmup >= 0")
    if args.reference is not None and not (args.reference / "networks" / "VIRNet.py").is_file():
        parser.error(f"{args.reference} has no networks/VIRNet.py (not a VIRNet checkout)")
    return args


def make_runner(name: str, net: torch.nn.Module, x: torch.Tensor, extra: tuple,
                device: torch.device, case_dir: Path) -> Runner:
    """The runner of path ``name`` on a copy of ``net`` (``net`` is left as it is; ``case_dir``: a
    folder for the ONNX export)."""
    if name == "fp32":
        return Runner(name, lambda: net(x, *extra), device)
    if name == "tf32":
        def tf32() -> Outputs:
            set_tf32(True)
            try:
                return net(x, *extra)
            finally:
                set_tf32(False)
        return Runner(name, tf32, device)
    if name == "auto":
        plan = plan_run(net, "auto")
        backend = BACKENDS[plan.backend](copy.deepcopy(net), plan.precision)
        return Runner(name, lambda: backend(x, *extra), device, plan=plan.line)
    if name == "onnx":
        path = case_dir / "model.onnx"
        start = time.perf_counter()
        write_onnx(copy.deepcopy(net), extra[0] if extra else None, path, source="bench")
        backend = OnnxBackend(load_onnx(net.arch["task"], path, extra[0] if extra else None))
        return Runner(name, lambda: backend(x, *extra), device, compile_s=time.perf_counter() - start)
    if name == "fast":
        fast = optimize_for_inference(net, device)
        return Runner(name, lambda: fast(x, *extra), device)
    if name == "channels_last" or (name == "bf16" and device.type == "cuda"):
        net = copy.deepcopy(net).to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    if name == "channels_last":
        return Runner(name, lambda: net(x, *extra), device)
    if name == "bf16":
        def bf16() -> Outputs:
            with torch.autocast(device.type, dtype=torch.bfloat16):
                return net(x, *extra)
        return Runner(name, bf16, device)
    if name == "compile":
        from torch._inductor import config as inductor  # heavy: imported for this path only
        torch._dynamo.reset()
        compiled = torch.compile(copy.deepcopy(net))
        # Compilation happens at the first call; freezing is read then (inference only).
        with inductor.patch(freezing=device.type == "cpu"):
            compile_s = time_call(lambda: compiled(x, *extra), device)
        return Runner(name, lambda: compiled(x, *extra), device, compile_s=compile_s)
    raise ValueError(f"unknown path {name!r}")


def max_abs_diffs(outputs: Outputs, baseline: Outputs, names: Sequence[str]) -> Dict[str, float]:
    """Max abs difference of each output from the baseline's, by output name."""
    return {n: (o.float().cpu() - b.float().cpu()).abs().max().item()
            for n, o, b in zip(names, outputs, baseline)}


def measure(runners: List[Runner], warmup: int, repeats: int) -> None:
    """Warm every runner up, then time ``repeats`` rounds, each runner once per round."""
    for runner in runners:
        for _ in range(warmup):
            runner.call()
    for _ in range(repeats):
        for runner in runners:
            runner.times.append(runner.timed())


def result_rows(runners: Sequence[Runner], task: str, size: int, side: int) -> List[dict]:
    """One result dict per runner; the first runner is fp32, the last the reference if any."""
    baseline = runners[0]
    reference = runners[-1] if runners[-1].name == "reference" else None
    out_mp = size * size / 1e6
    rows = []
    for r in runners:
        median = statistics.median(r.times)
        rows.append({
            "task": task, "size": size, "input_side": side, "output_mp": out_mp, "path": r.name,
            "median_ms": 1e3 * median, "min_ms": 1e3 * min(r.times),
            "ms_per_mp": 1e3 * median / out_mp, "times_ms": [1e3 * t for t in r.times],
            "peak_mem_mb": r.peak_mb, "compile_s": r.compile_s, "plan": r.plan,
            "max_abs_diff": max_abs_diffs(r.outputs, baseline.outputs, networks.TASKS[task].outputs),
            "speedup_vs_fp32": statistics.median(baseline.times) / median,
            "speedup_vs_reference": (statistics.median(reference.times) / median
                                     if reference else None),
        })
    return rows


def run_case(task: str, size: int, args: argparse.Namespace, device: torch.device,
             model_overrides: dict, case_dir: Path) -> List[dict]:
    """Benchmark every path of one (task, size); returns one result dict per path."""
    torch.manual_seed(SEED)
    net = networks.build_model(task, **model_overrides).eval().to(device)
    sf = SF if networks.TASKS[task].scales else None
    side = size // SF if sf else size
    x = torch.rand(1, 3, side, side, generator=torch.Generator().manual_seed(SEED)).to(device)
    extra = (sf,) if sf else ()

    runners: List[Runner] = []
    for name in args.paths:
        runner = make_runner(name, net, x, extra, device, case_dir)
        result: list = []
        runner.peak_mb = peak_memory_mb(lambda: result.append(runner.call()), device)
        runner.outputs = result[0]
        runners.append(runner)
    if args.reference is None:
        measure(runners, args.warmup, args.repeats)
    else:
        ref = ReferenceProcess(args.reference, case_dir, net, x, task,
                               networks.model_kwargs(task, **model_overrides), sf,
                               args.threads, device)
        try:
            runners.append(Runner("reference", ref.run, device, self_timed=True,
                                  outputs=ref.outputs()))
            measure(runners, args.warmup, args.repeats)
        finally:
            ref.close()
    return result_rows(runners, task, size, side)


def _fmt(value: Optional[float], spec: str) -> str:
    return "-" if value is None else format(value, spec)


def results_table(rows: Sequence[dict]) -> str:
    """The results as a markdown table."""
    header = ["task", "size", "path", "median ms", "min ms", "ms/MP", "peak MiB", "maxΔ mu",
              "maxΔ other", "x fp32", "x ref", "compile s"]
    body = []
    for r in rows:
        diffs = r["max_abs_diff"]
        other = [v for k, v in diffs.items() if k != "mu"]
        body.append([r["task"], r["size"], r["path"], _fmt(r["median_ms"], ".0f"),
                     _fmt(r["min_ms"], ".0f"), _fmt(r["ms_per_mp"], ".0f"),
                     _fmt(r["peak_mem_mb"], ".0f"), _fmt(diffs.get("mu"), ".1e"),
                     _fmt(max(other) if other else None, ".1e"), _fmt(r["speedup_vs_fp32"], ".2f"),
                     _fmt(r["speedup_vs_reference"], ".2f"), _fmt(r["compile_s"], ".1f")])
    return markdown_table(header, body, pad=False).rstrip("\n")


def target_summary(rows: Sequence[dict]) -> List[dict]:
    """The target per case: the fastest path whose outputs are all within TOLERANCE of
    fp32 eager, and its speed-up over the reference network code."""
    summary = []
    for task, size in dict.fromkeys((r["task"], r["size"]) for r in rows):
        case = [r for r in rows if r["task"] == task and r["size"] == size
                and r["path"] not in ("reference", "bf16")
                and max(r["max_abs_diff"].values()) <= TOLERANCE]
        if not case or case[0]["speedup_vs_reference"] is None:
            continue
        best = max(case, key=lambda r: r["speedup_vs_reference"])
        summary.append({"task": task, "size": size, "path": best["path"],
                        "speedup_vs_reference": best["speedup_vs_reference"],
                        "max_abs_diff": max(best["max_abs_diff"].values()),
                        "met": best["speedup_vs_reference"] >= TARGET_SPEEDUP})
    return summary


def main(argv: Optional[Sequence[str]] = None, model_overrides: Optional[dict] = None) -> dict:
    """Run the benchmark; ``model_overrides`` maps a task to constructor arguments replacing the
    released ones (tests use narrow models). Returns the JSON record, also written to disk."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    set_tf32(False)
    rows: List[dict] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        for task in args.tasks:
            for size in args.sizes:
                print(f"{task} {size}x{size} ...", file=sys.stderr, flush=True)
                rows += run_case(task, size, args, device, (model_overrides or {}).get(task, {}),
                                 Path(tmp))
    record = {
        "benchmark": "inference", "command": command_line(), "machine": machine_info(device),
        "versions": versions(),
        "settings": {"tasks": args.tasks, "sizes": args.sizes, "paths": args.paths,
                     "repeats": args.repeats, "warmup": args.warmup, "threads": args.threads,
                     "sf": SF, "seed": SEED, "reference": reference_info(args.reference),
                     "model_overrides": model_overrides or None},
        "total_s": time.perf_counter() - started,
        "results": rows,
        "target": {"criterion": f"fp32 path >= {TARGET_SPEEDUP}x faster than the reference "
                                f"network code, all outputs within {TOLERANCE:g} of fp32 eager",
                   "cases": target_summary(rows)},
    }
    out = args.out or result_path("all", "inference", device_class(device))
    write_json(out, record)
    print(results_table(rows))
    for case in record["target"]["cases"]:
        print(f"target {case['task']} {case['size']}: {case['path']} "
              f"{case['speedup_vs_reference']:.2f}x the reference, maxΔ "
              f"{case['max_abs_diff']:.1e} -> {'met' if case['met'] else 'NOT met'}")
    print(f"wrote {out}")
    return record


def reference_info(path: Optional[Path]) -> Optional[dict]:
    """The reference checkout's folder and git commit (None without --reference)."""
    if path is None:
        return None
    try:
        commit = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"],
                                capture_output=True, text=True).stdout.strip()
    except OSError:  # no git
        commit = ""
    return {"dir": str(path), "commit": commit or None}


if __name__ == "__main__":
    run_main(main)
