"""Training-speed benchmark of the trainers' configs: iterations/s and images/s, and DDP scaling.

Each measurement is one real training run of a config in a child process (the trainers'
``utils.training.main``), on the shared engine with validation, checkpoints and TensorBoard images
off (``val_freq=0 save_freq=0 image_freq=0``) and ``epochs=1``,
``iters_per_epoch = warmup + iters + 1``. The child's task class is the trainer's, with
``train_step`` wrapped to record a timestamp at the start of every step (after a device
synchronisation on CUDA). Step k's time is the gap between the stamps of steps k and k + 1, so it
holds everything an iteration costs: data loading, forward, loss, backward, gradient clipping,
the optimiser step and logging. The first ``warmup`` steps are dropped; the reported figures are
over the next ``iters`` steps (the extra last step only closes the last gap). images/s is it/s
times the global batch size (HR patches for SR).

Runs:

* every config of ``--configs``, one process, with ``--threads`` torch threads (default: torch's
  choice), once per ``--variants`` entry: bf16 autocast + channels-last off (``fp32``) or on
  (``bf16``), whatever the config says (default: both where the device computes bf16 natively,
  CUDA with bf16 or a CPU with AVX512-BF16 / AMX; fp32 alone elsewhere);
* with ``--ddp``: the small configs again under ``torchrun --standalone --nproc_per_node=N`` for
  N = 1 and 2 (``--device cpu`` on the CPU: gloo; on CUDA: NCCL, needs two GPUs), the same global
  batch (the configs' ``batch_size`` is global), ``--threads`` (default: the logical cores)
  split over the processes, at least one each (``--threads 1``: one thread per process).

On shared or few cores pass ``--threads 1``: OpenMP's spin-waiting makes a multi-threaded run
many times slower as soon as another process takes a core.

A run whose trainer stops with an error (e.g. the SIDD data of the real-noise configs is not
there) is reported as skipped with the trainer's message; a run past ``--timeout`` as timed out.
DataLoader workers: ``--num_workers`` (default 0, data loading in the training process).

Run ``python bench/training.py --help``; results go to ``bench/results/training_<device>.json``.
"""
import argparse
import importlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import networks  # noqa: E402
from bench.common import RESULTS_DIR, command_line, machine_info, synchronize, versions  # noqa: E402
from utils.errors import run_main  # noqa: E402
from utils.devices import choose_device, native_bf16  # noqa: E402
from utils.inference.tables import markdown_table, write_json  # noqa: E402

CONFIGS = ("denoising_syn_small", "sisr_x4_small", "denoising_real_small", "denoising_syn_compact",
           "sisr_x4_compact", "denoising_real_compact", "denoising_syn", "sisr_x2", "sisr_x3", "sisr_x4",
           "denoising_real")
VARIANTS = ("fp32", "bf16")
WORKER = "_worker"
"""First argument of the child mode: ``training.py _worker CONFIG STAMPS_FILE TRAINER_ARGS...``."""


def trainer_class(config: str) -> type:
    """The Task class of the trainer that reads ``configs/<config>.json``: the registry's trainer of
    the task whose config stem begins the name."""
    for spec in networks.TASKS.values():
        if config.startswith(spec.configs):
            module, name = spec.trainer.split(":")
            return getattr(importlib.import_module(module), name)
    raise ValueError(f"no trainer for config {config!r}")


def timed_task(task_cls: type, stamps: List[float]) -> type:
    """A subclass of ``task_cls`` whose ``train_step`` first appends ``time.perf_counter()`` to
    ``stamps`` (after the device's queued work is done)."""

    class Timed(task_cls):
        def train_step(self, model, batch, ctx):
            synchronize(ctx.device)
            stamps.append(time.perf_counter())
            return super().train_step(model, batch, ctx)

    Timed.__name__ = Timed.__qualname__ = task_cls.__name__
    return Timed


def worker(argv: Sequence[str]) -> int:
    """Child mode: train ``config`` with the trainer arguments; rank 0 writes the step stamps
    and its torch thread count."""
    from utils import training
    config, stamps_file, *train_argv = argv
    stamps: List[float] = []
    status = training.main(timed_task(trainer_class(config), stamps), train_argv)
    if int(os.environ.get("RANK", "0")) == 0:
        Path(stamps_file).write_text(json.dumps({"stamps": stamps,
                                                 "threads": torch.get_num_threads()}))
    return status


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--configs", nargs="+", choices=CONFIGS,
                        default=["denoising_syn_small", "sisr_x4_small"],
                        help="configs/<name>.json to time")
    parser.add_argument("--iters", type=int, default=20, help="timed iterations per run")
    parser.add_argument("--warmup", type=int, default=3, help="untimed iterations before them")
    parser.add_argument("--ddp", action="store_true",
                        help="also time the small configs with 1 and 2 torchrun processes")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=None,
                        help="precisions to time, each set explicitly whatever the config says: fp32, "
                             "bf16 (autocast + channels-last) (default: fp32, and bf16 where the device computes "
                             "bf16 natively)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads of a one-process run, split over DDP processes "
                             "(default: torch's choice; the logical cores for DDP)")
    parser.add_argument("--num_workers", type=int, default=0, help="DataLoader workers in total")
    parser.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE",
                        help="extra config override for every run (repeatable)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds allowed per run")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON file (default: bench/results/training_<device>.json)")
    args = parser.parse_args(argv)
    args.device = choose_device(args.device).type
    if args.iters < 1 or args.warmup < 0:
        parser.error("--iters must be >= 1 and --warmup >= 0")
    return args


def trainer_args(config: str, save_dir: Path, args: argparse.Namespace,
                 extra: Sequence[str]) -> List[str]:
    """Command-line arguments of one timed training run."""
    opts = {"epochs": 1, "iters_per_epoch": args.warmup + args.iters + 1, "warmup_epochs": 0,
            "val_freq": 0, "save_freq": 0, "image_freq": 0, "print_freq": 10**6,
            "num_workers": args.num_workers}
    out = ["--config", str(ROOT / "configs" / f"{config}.json"), "--save_dir", str(save_dir),
           "--device", args.device]
    for item in [f"{k}={v}" for k, v in opts.items()] + list(args.opt) + list(extra):
        out += ["--opt", item]
    return out


def variant_opts(variant: str) -> List[str]:
    """Config overrides of a precision variant: bf16 autocast and channels-last both on for 'bf16',
    both off for 'fp32', so that the label holds whatever the config itself says."""
    flag = "true" if variant == "bf16" else "false"
    return [f"bf16={flag}", f"channels_last={flag}"]


def run_one(config: str, variant: str, processes: int, threads: Optional[int],
            args: argparse.Namespace, tmp: Path) -> dict:
    """Time one training run in a child process; returns its result row."""
    name = f"{config}-{variant}-{processes}p"
    save_dir = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=tmp))
    stamps_file = save_dir / "stamps.json"
    extra = variant_opts(variant)
    launcher = [sys.executable]
    if processes > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    command = launcher + [str(Path(__file__).resolve()), WORKER, config, str(stamps_file),
                          *trainer_args(config, save_dir, args, extra)]
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    row = {"config": config, "variant": variant, "processes": processes,
           "threads_per_process": threads, "status": "ok"}
    print(f"{name} ...", file=sys.stderr, flush=True)
    started = time.perf_counter()
    try:
        proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {**row, "status": f"timed out after {args.timeout:g} s"}
    row["run_s"] = time.perf_counter() - started
    if proc.returncode != 0 or not stamps_file.is_file():
        lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        return {**row, "status": "skipped: " + (lines[-1].strip() if lines else
                                                f"exit status {proc.returncode}")}
    child = json.loads(stamps_file.read_text())
    stamps = child["stamps"][args.warmup:args.warmup + args.iters + 1]
    cfg = json.loads((save_dir / "config.json").read_text())
    steps = [b - a for a, b in zip(stamps, stamps[1:])]
    s_per_it = sum(steps) / len(steps)
    return {**row, "threads_per_process": child["threads"], "global_batch": cfg["batch_size"],
            "patch": cfg.get("patch_size") or cfg.get("hr_size"),
            "iters": len(steps), "warmup": args.warmup, "s_per_it": s_per_it,
            "median_s_per_it": statistics.median(steps), "it_per_s": 1 / s_per_it,
            "images_per_s": cfg["batch_size"] / s_per_it, "step_times_s": steps}


def ddp_scaling(rows: Sequence[dict]) -> List[dict]:
    """Per config: it/s with 2 processes over it/s with 1 (same global batch)."""
    out = []
    for config in dict.fromkeys(r["config"] for r in rows):
        speed = {r["processes"]: r.get("it_per_s") for r in rows if r["config"] == config}
        if speed.get(1) and speed.get(2):
            out.append({"config": config, "speedup_2_vs_1": speed[2] / speed[1],
                        "efficiency": speed[2] / speed[1] / 2})
    return out


def _fmt(value: Optional[float], spec: str) -> str:
    return "-" if value is None else format(value, spec)


def results_table(rows: Sequence[dict]) -> str:
    """The results as a markdown table."""
    header = ["config", "variant", "procs", "threads/proc", "batch", "patch", "iters", "s/it",
              "it/s", "images/s", "status"]
    body = [[r["config"], r["variant"], r["processes"], r["threads_per_process"] or "-",
             r.get("global_batch", "-"), r.get("patch", "-"), r.get("iters", "-"),
             _fmt(r.get("s_per_it"), ".3f"), _fmt(r.get("it_per_s"), ".2f"),
             _fmt(r.get("images_per_s"), ".1f"), r["status"]] for r in rows]
    return markdown_table(header, body, pad=False).rstrip("\n")


def default_variants(device: torch.device) -> List[str]:
    """The variants timed without ``--variants``: fp32, and bf16 too where ``device`` computes bf16
    natively (``utils.devices.native_bf16``: CUDA with bf16, a CPU with AVX512-BF16 or AMX)."""
    return list(VARIANTS) if native_bf16(device)[0] else ["fp32"]


def main(argv: Optional[Sequence[str]] = None) -> dict:
    """Run the benchmark; returns the JSON record, also written to disk."""
    args = parse_args(argv)
    device = torch.device(args.device)
    variants = args.variants or default_variants(device)
    started = time.perf_counter()
    rows: List[dict] = []
    ddp_rows: List[dict] = []
    ddp_note = None
    with tempfile.TemporaryDirectory() as tmp:
        for config in args.configs:
            for variant in variants:
                rows.append(run_one(config, variant, 1, args.threads, args, Path(tmp)))
        if args.ddp:
            small = [c for c in args.configs if c.endswith("_small")]
            if device.type == "cuda" and torch.cuda.device_count() < 2:
                ddp_note = "skipped: DDP on CUDA needs two GPUs"
            elif not small:
                ddp_note = "skipped: no small config in --configs"
            else:
                total = args.threads or os.cpu_count()
                for config in small:
                    for processes in (1, 2):
                        ddp_rows.append(run_one(config, variants[0], processes,
                                                max(1, total // processes), args, Path(tmp)))
    record = {
        "benchmark": "training", "command": command_line(), "machine": machine_info(device),
        "versions": versions(),
        "settings": {"configs": args.configs, "iters": args.iters, "warmup": args.warmup,
                     "threads": args.threads, "num_workers": args.num_workers, "opt": args.opt,
                     "variants": variants, "ddp": args.ddp},
        "total_s": time.perf_counter() - started,
        "results": rows,
        "ddp": {"results": ddp_rows, "scaling": ddp_scaling(ddp_rows), "note": ddp_note},
    }
    out = args.out or RESULTS_DIR / f"training_{device.type}.json"
    write_json(out, record)
    print(results_table(rows))
    if ddp_rows:
        print("\nDDP (same global batch):\n" + results_table(ddp_rows))
    for s in record["ddp"]["scaling"]:
        print(f"DDP {s['config']}: 2 processes {s['speedup_2_vs_1']:.2f}x 1 process "
              f"(efficiency {s['efficiency']:.0%})")
    if ddp_note:
        print(f"DDP {ddp_note}")
    print(f"wrote {out}")
    return record


if __name__ == "__main__":
    if sys.argv[1:2] == [WORKER]:
        sys.exit(worker(sys.argv[2:]))
    run_main(main)
