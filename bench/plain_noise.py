"""Denoisers on plain per-pixel Poisson-Gaussian noise (no camera pipeline): the noise a new user adds
to a photo to try a denoiser, which the real-noise compact file must remove as well as the synthetic one.

Every image of a folder (default ``../shared/testsets/CBSD68``; ``--images N``: the first N, centre
crops of at most ``--max_side``) gets ``datasets.plain_noise.add_plain_noise`` at fixed levels
(variance ``shot * x + read`` per sample; defaults 0.01 and 0.0005: about 23 dB on CBSD68), image i
drawn from ``default_rng([seed, i])``, the same for every model; each model restores it as the demos do
(``Restorer``, fp32). PSNR / SSIM on uint8 RGB, border 0, beside the noisy input's.

    python bench/plain_noise.py --images 20 --max_side 256 --out bench/results/plain_noise_cbsd68

Models: ``--models LABEL=TASK:PATH ...`` (default: the shipped synthetic-noise and real-noise compact
denoisers). Writes ``OUT.{csv,json,md}`` and prints the table.
"""
import sys
from pathlib import Path
from typing import Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.camera_noise import comparison_parser, score_models, clean_images, write_scores  # noqa: E402
from bench.common import command_line, machine_info, versions  # noqa: E402
from bench.strength import centre_crop  # noqa: E402
from datasets.denoising_syn import to_float  # noqa: E402
from datasets.plain_noise import add_plain_noise  # noqa: E402
from utils.errors import run_main  # noqa: E402
from utils.image_io import read_image_uint8  # noqa: E402

SEED = 2025


def main(argv: Optional[Sequence[str]] = None) -> dict:
    """Run the comparison; returns the JSON record, also written to OUT.json."""
    parser = comparison_parser(__doc__, "plain_noise_cpu")
    parser.add_argument("--max_side", type=int, default=0, help="centre crop of at most this side (0: whole images)")
    parser.add_argument("--shot", type=float, default=0.01, help="signal-dependent variance factor (0-1 scale)")
    parser.add_argument("--read", type=float, default=0.0005, help="constant variance (0-1 scale)")
    args = parser.parse_args(argv)
    files = clean_images(parser, args)
    pairs = []
    for i, path in enumerate(files):
        clean = to_float(centre_crop(read_image_uint8(path), args.max_side))
        pairs.append((add_plain_noise(clean, args.shot, args.read, np.random.default_rng([SEED, i])), clean))
    rows, means, seconds = score_models(files, pairs, args.models)
    record = {"benchmark": "plain_noise", "command": command_line(), "machine": machine_info(torch.device("cpu")),
              "versions": versions(), "data": str(args.data), "images": len(files), "max_side": args.max_side,
              "seed": SEED, "shot": args.shot, "read": args.read,
              "models": {label: {"task": task, "checkpoint": str(ckpt), "seconds": seconds[label]}
                         for label, task, ckpt in args.models}, "mean": means, "per_image": rows}
    write_scores(args.out, rows, means, record,
                 f"{args.data.name} ({len(files)} images) with plain Poisson-Gaussian noise "
                 f"(shot {args.shot:g}, read {args.read:g}, seed {SEED})")
    return record


if __name__ == "__main__":
    run_main(main)
