"""Real-noise quality without SIDD: test images with synthesized camera noise, restored by several models.

Every image of a folder (default ``../shared/testsets/CBSD68``, cropped to even sides) gets camera
noise synthesized from its clean version (``datasets.camera_noise.CameraNoiseVal``: unprocess,
Bayer shot + read noise, process; image i draws from ``default_rng([seed, i])``), the same for
every model. Each model restores it as the demos do (``Restorer``, fp32, tiled above 512 px);
PSNR / SSIM on uint8 RGB, border 0, beside the noisy input's.

    python bench/camera_noise.py --out model_zoo/results/camera_noise_cbsd68

Models: ``--models LABEL=TASK:PATH ...`` (default: the shipped synthetic-noise and real-noise compact
denoisers). Writes ``OUT.{csv,json,md}`` (per image, means, machine, command) and prints the table.
"""
import argparse
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.common import command_line, machine_info, versions  # noqa: E402
from datasets.camera_noise import CameraNoiseVal  # noqa: E402
from utils.errors import run_main  # noqa: E402
from utils.image_io import list_images  # noqa: E402
from utils.inference import Restorer, load_model, markdown_table, write_results  # noqa: E402
from utils.metrics import calculate_psnr, calculate_ssim  # noqa: E402

DEFAULT_MODELS = (f"synthetic-noise compact=denoising-syn:{ROOT / 'model_zoo/virnet_denoising_syn_compact.safetensors'}",
                  f"real-noise compact=denoising-real:{ROOT / 'model_zoo/virnet_denoising_real_compact.safetensors'}")
SEED = 2024


def parse_model(text: str) -> tuple[str, str, Path]:
    """argparse type of --models: 'LABEL=TASK:PATH' -> (label, task, path)."""
    label, _, rest = text.partition("=")
    task, _, path = rest.partition(":")
    if not (label and task and path):
        raise argparse.ArgumentTypeError(f"expected LABEL=TASK:PATH, got {text!r}")
    return label, task, Path(path)


def score(im: np.ndarray, clean: np.ndarray) -> tuple[float, float]:
    """PSNR and SSIM of an H x W x 3 float image against the clean one (uint8 RGB, border 0)."""
    return calculate_psnr(im, clean), calculate_ssim(im, clean)


def score_models(files: Sequence[Path], pairs: Sequence[tuple[np.ndarray, np.ndarray]],
                 models: Sequence[tuple[str, str, Path]]) -> tuple[list[dict], dict, dict]:
    """Score the noisy inputs and each model's restorations of them (``Restorer``, fp32, CPU).

    ``pairs``: one (noisy, clean) H x W x 3 float pair in [0, 1] per file; ``models``: (label, task,
    checkpoint). Returns the per-image rows (method ``noisy input`` first), the mean PSNR / SSIM per
    method, and the seconds each model took."""
    rows = [{"image": p.stem, "method": "noisy input", **dict(zip(("psnr", "ssim"), score(n, c)))}
            for p, (n, c) in zip(files, pairs)]
    seconds = {}
    for label, task, ckpt in models:
        restorer = Restorer(load_model(task, str(ckpt), ckpt, torch.device("cpu")))
        started = time.perf_counter()
        for path, (noisy, clean) in zip(files, pairs):
            psnr, ssim = score(restorer(noisy).image, clean)
            rows.append({"image": path.stem, "method": label, "psnr": psnr, "ssim": ssim})
        seconds[label] = time.perf_counter() - started
        print(f"{label}: {seconds[label]:.0f} s", file=sys.stderr)
    methods = ["noisy input"] + [label for label, _, _ in models]
    means = {m: {k: float(np.mean([r[k] for r in rows if r["method"] == m])) for k in ("psnr", "ssim")}
             for m in methods}
    return rows, means, seconds


def write_scores(out: Path, rows: list[dict], means: dict, record: dict, title: str) -> None:
    """Write the rows and the per-method means as OUT.{csv,json,md} (``record`` is the JSON)."""
    table = markdown_table(["method", "PSNR", "SSIM"],
                           [[m, f"{v['psnr']:.2f}", f"{v['ssim']:.4f}"] for m, v in means.items()])
    write_results(out, rows + [{"image": "mean", "method": m, **v} for m, v in means.items()], record, table, title)


def comparison_parser(description: str, out_name: str) -> argparse.ArgumentParser:
    """The options every denoiser comparison takes: --data (clean test images), --images N, --models
    LABEL=TASK:PATH ..., --threads and --out (default ``bench/results/<out_name>``)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "testsets" / "CBSD68",
                        help="folder of clean test images (default ../shared/testsets/CBSD68)")
    parser.add_argument("--images", type=int, default=None, help="use only the first N images")
    parser.add_argument("--models", nargs="+", type=parse_model, default=[parse_model(m) for m in DEFAULT_MODELS])
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / out_name)
    return parser


def clean_images(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[Path]:
    """Apply --threads and list the first --images test images of --data (a parser error if none)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    files = list_images(args.data)[:args.images]
    if not files:
        parser.error(f"no test images in {args.data}")
    return files


def main(argv: Optional[Sequence[str]] = None) -> dict:
    """Run the comparison; returns the JSON record, also written to OUT.json."""
    parser = comparison_parser(__doc__, "camera_noise_cpu")
    args = parser.parse_args(argv)
    files = clean_images(parser, args)
    data = CameraNoiseVal(files, seed=SEED)  # synthesized once, the same input for every model
    pairs = [tuple(t.numpy().transpose(1, 2, 0) for t in data[i]) for i in range(len(files))]
    rows, means, seconds = score_models(files, pairs, args.models)
    record = {"benchmark": "camera_noise", "command": command_line(), "machine": machine_info(torch.device("cpu")),
              "versions": versions(), "data": str(args.data), "images": len(files), "seed": SEED,
              "models": {label: {"task": task, "checkpoint": str(ckpt), "seconds": seconds[label]}
                         for label, task, ckpt in args.models}, "mean": means, "per_image": rows}
    write_scores(args.out, rows, means, record,
                 f"{args.data.name} ({len(files)} images) with synthesized camera noise (seed {SEED})")
    return record


if __name__ == "__main__":
    run_main(main)
