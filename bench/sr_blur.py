"""Speed of the SR loss's blur: FFT correlation (ours) against the grouped convolution (reference).

The SR ELBO blurs each restored HR image with its own 21 x 21 kernel drawn from the K-Net's
posterior (``utils.degradation.blur_downsample``). The reference computes that blur as one grouped
``conv2d`` (a group per sample and channel); we compute it by FFT (``correlate_fft``), which gives
the same values up to rounding. This benchmark times both, interleaved round by round:

* ``blur``: the blur alone, forward + backward into the image and the kernels, at the config's
  batch and HR crop (reflect-padded by k // 2, as the loss pads it);
* ``step``: a whole training step of the config's model (forward, SR ELBO, backward, Adam) on one
  fixed batch of its training set, without data loading, with bf16 autocast + channels-last where
  the device computes bf16 natively (``--precision``).

The grouped convolution is swapped in for ``utils.degradation.correlate_fft`` while its variant
runs. Before timing, both variants blur the same random images (``blur_max_abs_diff``, images in
[0, 1], kernels of positive entries summing to 1) and compute the ELBO's likelihood term (the term that blurs)
of one batch with the same weights and posterior draws (``lh_rel_diff``; the conformance tolerance of
the losses is 1e-4).
Medians over ``--rounds`` rounds of ``--steps`` calls each; results go to
``bench/results/sr_blur_sisr_<device class>.json`` (``bench.common.result_path``: the CPU class, e.g.
``amd-epyc-zen5``, or the GPU, e.g. ``nvidia-h100``) and a markdown table.

    python bench/sr_blur.py --threads 1
"""
import argparse
import statistics
import sys
from pathlib import Path
from typing import Callable, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import utils.degradation as degradation  # noqa: E402
from bench.common import command_line, device_class, machine_info, result_path, time_call, versions  # noqa: E402
from loss.steps import sisr_train_step  # noqa: E402
from train_sisr import SISR  # noqa: E402
from utils.errors import run_main  # noqa: E402
from utils.config import load_config  # noqa: E402
from utils.devices import choose_device, native_bf16, set_tf32  # noqa: E402
from utils.inference.tables import markdown_table, write_json  # noqa: E402
from utils.training.task import StepContext  # noqa: E402


def grouped_conv(im: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """The reference's blur: im N x C x H x W correlated with kernel N x 1 x k x k as one grouped
    convolution of N * C groups. Returns N x C x (H - k + 1) x (W - k + 1)."""
    n, c = im.shape[:2]
    out = F.conv2d(im.reshape(1, n * c, *im.shape[-2:]), kernel.repeat_interleave(c, dim=0), groups=n * c)
    return out.view(n, c, *out.shape[-2:])


VARIANTS = {"fft": degradation.correlate_fft, "conv": grouped_conv}


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", default="configs/sisr_x4_compact.json", help="SR training config")
    p.add_argument("--rounds", type=int, default=6, help="interleaved rounds of every variant")
    p.add_argument("--steps", type=int, default=4, help="timed calls per variant and round")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                   help="of the training step; auto: bf16 + channels-last where the device computes bf16 natively")
    p.add_argument("--out", type=Path, default=None,
                   help="JSON file (default: bench/results/sr_blur_sisr_<device class>.json)")
    return p.parse_args(argv)


def _use(variant: str) -> None:
    degradation.correlate_fft = VARIANTS[variant]


def _median_times(calls: dict[str, Callable[[], object]], rounds: int, steps: int,
                  device: torch.device) -> dict[str, list[float]]:
    """Seconds per call of each variant, one list entry per round, variants interleaved."""
    times = {name: [] for name in calls}
    for _ in range(rounds):
        for name, fn in calls.items():
            _use(name)
            fn()                                                   # untimed: caches, allocator
            times[name].append(sum(time_call(fn, device) for _ in range(steps)) / steps)
    return times


def main(argv: Optional[Sequence[str]] = None) -> dict:
    """Run the benchmark; returns the record written to the JSON file."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = choose_device(args.device)
    set_tf32(False)  # fp32 means IEEE float32 on every GPU
    bf16 = native_bf16(device)[0] if args.precision == "auto" else args.precision == "bf16"
    cfg = load_config(args.config, SISR.schema(), [])
    task = SISR(cfg)
    torch.manual_seed(cfg.seed)
    model = task.build_model().to(device)
    if bf16:
        model = model.to(memory_format=torch.channels_last)
    data = task.build_train_set(cfg.batch_size)
    batch = [torch.stack(x).to(device) for x in zip(*(data[i] for i in range(cfg.batch_size)))]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-6)
    ctx = StepContext(device, 0, 0, bf16=bf16)

    lh = {}                                      # the ELBO's likelihood term: the one that blurs
    for name in VARIANTS:
        _use(name)
        torch.manual_seed(0)                     # the same posterior draws for both variants
        with torch.no_grad():
            lh[name] = sisr_train_step(model, batch, cfg, ctx).terms["lh"].item()
        _use("fft")

    def step():
        loss = sisr_train_step(model, batch, cfg, ctx).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    pad = cfg.k_size // 2
    im = torch.rand(cfg.batch_size, cfg.im_chn, cfg.hr_size + 2 * pad, cfg.hr_size + 2 * pad, device=device,
                    requires_grad=True)
    kernel = torch.rand(cfg.batch_size, 1, cfg.k_size, cfg.k_size, device=device)
    kernel = (kernel / kernel.sum(dim=(-2, -1), keepdim=True)).requires_grad_()

    with torch.no_grad():
        blur_diff = (grouped_conv(im, kernel) - degradation.correlate_fft(im, kernel)).abs().max().item()

    def blur():
        degradation.correlate_fft(im, kernel).square().sum().backward()

    try:
        times = {"blur": _median_times({n: blur for n in VARIANTS}, args.rounds, args.steps, device),
                 "step": _median_times({n: step for n in VARIANTS}, args.rounds, args.steps, device)}
    finally:
        _use("fft")
    results = []
    for what, per_variant in times.items():
        medians = {n: statistics.median(t) for n, t in per_variant.items()}
        for name, t in per_variant.items():
            results.append({"what": what, "variant": name, "median_s": medians[name], "times_s": t,
                            "speedup_vs_conv": medians["conv"] / medians[name]})
    record = {"benchmark": "sr_blur", "command": command_line(), "machine": machine_info(device),
              "versions": versions(),
              "settings": {"config": str(args.config), "batch_size": cfg.batch_size, "hr_size": cfg.hr_size,
                           "k_size": cfg.k_size, "rounds": args.rounds, "steps": args.steps, "bf16": bf16},
              "blur_max_abs_diff": blur_diff, "lh": lh,
              "lh_rel_diff": abs(lh["fft"] - lh["conv"]) / abs(lh["conv"]),
              "results": results}
    out = args.out or result_path("sisr", "sr_blur", device_class(device))
    write_json(out, record)
    print(markdown_table(["what", "variant", "median s", "speed-up vs conv"],
                         [[r["what"], r["variant"], f"{r['median_s']:.4f}", f"{r['speedup_vs_conv']:.2f}x"]
                          for r in results]), end="")
    print(f"fft vs conv: blur max abs difference {blur_diff:.1e}, likelihood term relative difference "
          f"{record['lh_rel_diff']:.1e}; wrote {out}")
    return record


if __name__ == "__main__":
    run_main(main)
