"""Peak memory of training and restoring: each trainer at its config's batch and patch, a default
restore at 512 x 512 output pixels and of a large image.

Training (``--configs``; default the paper's three: ``denoising_syn``, ``denoising_real``,
``sisr_x4``): the trainer's model, its optimiser and ``--steps`` training steps (the trainer's own
``train_step``: forward, the negative ELBO, backward, optimiser step) on one synthetic batch of the
config's shapes (random images in [0, 1], SR kernels of the training range; memory does not depend
on the values, and no training data is needed), in fp32 and in bf16 autocast + channels-last
(``--variants``). Restoring (``--restore_sizes``, output pixels per side): the released
architecture of every task (random weights) through ``Restorer`` with its default tiling
(``utils.inference.tiling.default_tiling``), fp32 and bf16.

Memory: on CUDA the peak of ``torch.cuda.max_memory_allocated`` over the whole measurement (model,
gradients, optimiser state and activations; the caching allocator reserves somewhat more, recorded
as ``reserved_mib``); on a CPU the growth of the resident set (``bench.common.peak_memory_mb``),
which follows the same tensors. ``--batch_sizes B1 B2`` measures each config at those batch sizes
instead and extrapolates linearly to the config's batch (``estimate_mib``): how the GPU figures in
docs/gpu.md were estimated on a CPU.

Without CUDA (or with ``--tiny``), unless ``--batch_sizes`` is given, it runs tiny sizes (batch 2, 32 / 64 pixel patches, restores of
1/8 the ``--restore_sizes`` sides) and says that no CUDA was present, so CI proves it runs. Results:
``bench/results/gpu_memory_all_<device class>.json`` (``gpu_memory_estimate_...`` with ``--batch_sizes``,
``gpu_memory_tiny_...`` at tiny sizes; ``bench.common.result_path``) or the same name under ``--out DIR``.

    python bench/gpu_memory.py                      # on a GPU: the paper's settings
    python bench/gpu_memory.py --batch_sizes 1 2    # estimates from two small batches
"""
import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import networks  # noqa: E402
from bench.common import (command_line, device_class, machine_info, peak_memory_mb, result_path,  # noqa: E402
                          synchronize, versions)
from bench.training import trainer_class  # noqa: E402
from utils.errors import run_main  # noqa: E402
from utils.config import build_config, parse_overrides, read_config_file  # noqa: E402
from utils.devices import choose_device, set_tf32  # noqa: E402
from utils.inference import Restorer  # noqa: E402
from utils.inference.tables import markdown_table, write_json  # noqa: E402
from utils.training.task import StepContext  # noqa: E402

PAPER_CONFIGS = ("denoising_syn", "denoising_real", "sisr_x4")
RESTORE_TASKS = (("denoising-syn", None), ("denoising-real", None), ("sisr", 4))
TINY = {"batch_size": 2, "patch_size": 32, "hr_size": 64}
"""The tiny training sizes of a run without CUDA."""


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--configs", nargs="+", default=list(PAPER_CONFIGS), help="configs/<name>.json to train")
    p.add_argument("--variants", nargs="+", choices=("fp32", "bf16"), default=["fp32", "bf16"])
    p.add_argument("--steps", type=int, default=3, help="training steps per measurement")
    p.add_argument("--batch_sizes", nargs=2, type=int, default=None, metavar=("B1", "B2"),
                   help="measure at these batch sizes and extrapolate linearly to the config's batch")
    p.add_argument("--restore_sizes", nargs="*", type=int, default=[512, 2048],
                   help="restored images' sides in output pixels (default tiling); none: skip restoring")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--tiny", action="store_true", help="tiny sizes (the default without CUDA)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--out", type=Path, default=None,
                   help="folder of the JSON file (default bench/results)")
    return p.parse_args(argv)


def synthetic_batch(task, cfg, batch_size: int, device: torch.device) -> tuple:
    """One batch of the shapes ``task.train_step`` takes, random values in the data's ranges."""
    gen = torch.Generator().manual_seed(0)

    def image(side: int) -> torch.Tensor:
        return torch.rand(batch_size, 3, side, side, generator=gen)

    if task.task == "sisr":
        lr_side = cfg.hr_size // cfg.sf
        hr, lr = image(cfg.hr_size), image(lr_side)
        variances = (torch.rand(batch_size, 2, generator=gen) * 0.5 + 0.2) * cfg.sf ** 2
        kinfo = torch.cat([variances, torch.rand(batch_size, 1, generator=gen) * 0.4 - 0.2], dim=1)
        nlevel = torch.full((batch_size, 1, 1, 1), 5 / 255)
        batch = (hr, lr, lr.clone(), kinfo, nlevel)
    else:
        clean = image(cfg.patch_size)
        noisy = (clean + 0.1 * torch.randn(clean.shape, generator=gen)).clamp(0, 1)
        batch = (noisy, clean, torch.full((batch_size, 1, cfg.patch_size, cfg.patch_size), 0.01)) \
            if task.task == "denoising-syn" else (noisy, clean)
    return tuple(t.to(device) for t in batch)


def data_free_config(config: str, overrides: Sequence[str] = ()):
    """The checked config ``configs/<config>.json`` with its data folders pointed at the repository
    (they must exist to pass the checks; no data is read here) and its data files left out."""
    schema = trainer_class(config).schema()
    values = read_config_file(ROOT / "configs" / f"{config}.json")
    for name, key in schema.items():
        if name in values and key.kind in ("dir", "dirs"):
            values[name] = str(ROOT) if key.kind == "dir" else [str(ROOT)]
        elif name in values and key.kind == "file" and key.default is None:
            del values[name]
    return build_config(schema, values, parse_overrides(overrides), source=f"configs/{config}.json")


def train_peak(config: str, variant: str, batch_size: Optional[int], steps: int, device: torch.device,
               tiny: bool) -> dict:
    """Peak memory (MiB) of building the model and optimiser of ``config`` and ``steps`` training steps."""
    cls = trainer_class(config)
    overrides = {**({k: v for k, v in TINY.items()} if tiny else {}),
                 **({"batch_size": batch_size} if batch_size else {})}
    cfg = data_free_config(config, [f"{k}={v}" for k, v in overrides.items() if k in cls.schema()])
    task = cls(cfg)
    bf16 = variant == "bf16"
    batch = synthetic_batch(task, cfg, cfg.batch_size, device)
    torch.manual_seed(cfg.seed)

    def run():
        model = task.build_model().to(device)
        if bf16:
            model = model.to(memory_format=torch.channels_last)
        model.train()
        optimizer = task.build_optimizer(list(model.parameters()))
        ctx = StepContext(device, 0, 0, bf16=bf16)
        for _ in range(steps):
            loss = task.train_step(model, batch, ctx).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        synchronize(device)

    peak = peak_memory_mb(run, device)
    side = cfg.hr_size if task.task == "sisr" else cfg.patch_size
    return {"config": config, "variant": variant, "batch_size": cfg.batch_size, "patch": side,
            "steps": steps, "peak_mib": peak, **_reserved(device)}


def _reserved(device: torch.device) -> dict:
    """{'reserved_mib': the caching allocator's peak reservation} on CUDA, else {}."""
    return {"reserved_mib": torch.cuda.max_memory_reserved(device) / 2**20} if device.type == "cuda" else {}


def restore_peak(task: str, sf: Optional[int], side: int, variant: str, device: torch.device) -> dict:
    """Peak memory (MiB) of loading the released ``task`` architecture and restoring one image of
    ``side`` x ``side`` output pixels with the default tiling."""
    in_side = side // (sf or 1)
    im = np.random.default_rng(0).random((in_side, in_side, 3), dtype=np.float32)
    info = {}

    def run():
        torch.manual_seed(0)
        net = networks.build_model(task).eval().to(device)
        restorer = Restorer(net, sf=sf, precision=variant)
        restored = restorer(im)
        info.update(tile=restorer.tile, overlap=restorer.overlap, tiled=restored.tiled)

    peak = peak_memory_mb(run, device)
    return {"task": task, "sf": sf, "output_side": side, "variant": variant, "peak_mib": peak, **info,
            **_reserved(device)}


def main(argv: Optional[Sequence[str]] = None) -> dict:
    """Run the measurements; returns the record written to the JSON file."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = choose_device(args.device)
    set_tf32(False)
    tiny = args.tiny or (device.type != "cuda" and not args.batch_sizes)
    note = ("" if device.type == "cuda" else
            f"no CUDA device was present: {'tiny sizes' if tiny else 'estimates'} on the CPU, peak resident-set "
            f"growth (not GPU memory)")
    if note:
        print(f"note: {note}")
    variants = list(dict.fromkeys(args.variants))
    training, restoring = [], []
    for config in args.configs:
        for variant in variants:
            if args.batch_sizes:
                points = [train_peak(config, variant, b, args.steps, device, tiny) for b in args.batch_sizes]
                full = data_free_config(config).batch_size
                (b1, m1), (b2, m2) = [(p["batch_size"], p["peak_mib"]) for p in points]
                per_sample = (m2 - m1) / (b2 - b1)
                training.append({**points[-1], "points": [(b1, m1), (b2, m2)], "estimate_batch_size": full,
                                 "estimate_mib": m1 + per_sample * (full - b1), "per_sample_mib": per_sample})
            else:
                training.append(train_peak(config, variant, None, args.steps, device, tiny))
            print(f"{config} {variant}: {training[-1]['peak_mib']:.0f} MiB", flush=True)
    sizes = [s // 8 for s in args.restore_sizes[:2]] if tiny else args.restore_sizes
    for task, sf in RESTORE_TASKS:
        for side in sizes:
            for variant in variants:
                restoring.append(restore_peak(task, sf, side, variant, device))
    record = {"benchmark": "gpu_memory", "command": command_line(), "machine": machine_info(device),
              "versions": versions(), "tiny": tiny, "note": note, "tf32": False,
              "training": training, "restoring": restoring}
    measurement = "gpu_memory_tiny" if tiny else "gpu_memory_estimate" if args.batch_sizes else "gpu_memory"
    out = result_path("all", measurement, device_class(device), results_dir=args.out)
    write_json(out, record)
    if args.batch_sizes:
        print(markdown_table(["config", "variant", "patch", "peak MiB at batch B1, B2", "estimate MiB at the config's batch"],
                             [[r["config"], r["variant"], r["patch"],
                               ", ".join(f"{m:.0f} (batch {b})" for b, m in r["points"]),
                               f"{r['estimate_mib']:.0f} (batch {r['estimate_batch_size']})"] for r in training]), end="")
    else:
        print(markdown_table(["config", "variant", "batch", "patch", "peak MiB"],
                             [[r["config"], r["variant"], r["batch_size"], r["patch"], f"{r['peak_mib']:.0f}"]
                              for r in training]), end="")
    if restoring:
        print(markdown_table(["task", "output side", "variant", "tile (input px)", "peak MiB"],
                             [[r["task"], r["output_side"], r["variant"], r["tile"] if r["tiled"] else "whole",
                               f"{r['peak_mib']:.0f}"] for r in restoring]), end="")
    print(f"wrote {out}")
    return record


if __name__ == "__main__":
    run_main(main)
