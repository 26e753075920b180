"""How much do a model's estimators hold it back? The protocol's inputs are restored twice: with
the model's own estimate (the S-Net's noise map for a denoiser, the K-Net's kernel for SR) and with
the truth in its place; the R-Net, weights and inputs are the same.

    python bench/estimator_oracle.py --task denoising-syn --images 8
    python bench/estimator_oracle.py --task sisr --sf 4 --noise_level 2.55 --images 8

Denoiser: the non-i.i.d. protocol on CBSD68 (``datasets.synthetic_test_pairs``, cases 1-3), the true
std map being the case's map stretched to the image; PSNR on RGB, border 0. SR: the SR protocol on
Set14 (``datasets.sr_test.sr_test_pairs``, the 7 test kernels), the truth being the test kernel's
(var1, var2, rho); PSNR on Y, border sf^2. Images are padded (reflect) to the network's multiple and
cropped back, so the 'estimate' column can differ from the demos' tables by a few hundredths.
Writes ``OUT.{csv,json,md}`` (per image, means, machine, command) and prints the table.
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

from bench.common import command_line, machine_info, versions  # noqa: E402
from datasets.noise_maps import niid_noise_maps, resize_map  # noqa: E402
from datasets.sr_test import K_SIZE, sr_test_pairs  # noqa: E402
from datasets.synthetic_test import SEED, synthetic_test_pairs  # noqa: E402
from networks import default_weights  # noqa: E402
from networks.attresunet import pad_to_multiple  # noqa: E402
from utils.errors import run_main  # noqa: E402
from utils.degradation import sr_test_kernels  # noqa: E402
from utils.inference import grouped_means, load_model, markdown_table, write_results  # noqa: E402
from utils.metrics import calculate_psnr  # noqa: E402

TESTSETS = ROOT.parent / "shared" / "testsets"


def cropped(mu: torch.Tensor, height: int, width: int) -> np.ndarray:
    """The top-left height x width of a 1 x 3 x H x W output as an H x W x 3 float image (the
    metrics quantise it to uint8)."""
    return mu[0, :, :height, :width].permute(1, 2, 0).numpy()


def denoiser_rows(net: torch.nn.Module, images: int) -> list[dict]:
    """Per image of the first ``images`` of each non-i.i.d. case: PSNR with the S-Net's std map and
    with the true one, and the mean absolute error of the estimated std (0-255 units)."""
    maps = niid_noise_maps(np.random.default_rng(SEED))  # the protocol builds them first, from its seed
    rows, seen = [], {}
    for _, case, name, gt, noisy in synthetic_test_pairs("niid", {"CBSD68": TESTSETS / "CBSD68"}):
        seen[case] = seen.get(case, 0) + 1
        if seen[case] > images:
            continue
        height, width = gt.shape[:2]
        x = pad_to_multiple(torch.from_numpy(noisy).permute(2, 0, 1)[None], net.pad_multiple)
        true_std = pad_to_multiple(torch.from_numpy(resize_map(maps[case - 1], width, height))[None, None], net.pad_multiple)
        estimate = net.noise_variance(x)
        scores = {label: calculate_psnr(cropped(net.restore(x, variance), height, width), gt)
                  for label, variance in (("estimate", estimate), ("truth", true_std ** 2))}
        error = (estimate.sqrt() - true_std)[..., :height, :width].abs().mean().item() * 255
        rows.append({"case": case, "image": name, "psnr_estimate": scores["estimate"],
                     "psnr_truth": scores["truth"], "std_error_255": error})
    return rows


def sr_rows(net: torch.nn.Module, sf: int, noise_level: float, images: int) -> list[dict]:
    """Per image of the first ``images`` of Set14, for each test kernel: PSNR (Y, border sf^2) with
    the K-Net's kernel and with the test kernel's own (var1, var2, rho)."""
    _, truths = sr_test_kernels(sf, K_SIZE)
    multiple = -(-net.pad_multiple // sf)
    rows, seen = [], {}
    for _, number, path, gt, lr in sr_test_pairs({"Set14": TESTSETS / "Set14"}, sf, noise_level):
        seen[number] = seen.get(number, 0) + 1
        if seen[number] > images:
            continue
        x = pad_to_multiple(torch.from_numpy(lr).permute(2, 0, 1)[None], multiple)
        mu, _, variance = net(x, sf)
        truth = torch.as_tensor(truths[number - 1], dtype=torch.float32).view(1, 3, 1, 1)
        scores = {label: calculate_psnr(cropped(out, *gt.shape[:2]), gt, border=sf ** 2, ycbcr=True)
                  for label, out in (("estimate", mu), ("truth", net.super_resolve(x, sf, truth, variance)))}
        rows.append({"case": number, "image": path.stem, "psnr_estimate": scores["estimate"],
                     "psnr_truth": scores["truth"]})
    return rows


def main(argv: Optional[Sequence[str]] = None) -> dict:
    """Run the comparison; returns the JSON record, also written to OUT.json."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=("denoising-syn", "sisr"), required=True)
    parser.add_argument("--ckpt_path", default=None, help="weights (default: the shipped compact model)")
    parser.add_argument("--sf", type=int, default=4, choices=(2, 3, 4), help="SR scale")
    parser.add_argument("--noise_level", type=float, default=2.55, help="SR noise std (0-255)")
    parser.add_argument("--images", type=int, default=8, help="the first N images per case / kernel")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--out", type=Path, default=None,
                        help="results stem (default bench/results/estimator_oracle_<task>)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    sf = args.sf if args.task == "sisr" else None
    net = load_model(args.task, args.ckpt_path, default_weights(args.task, sf), torch.device("cpu"), sf=sf)
    with torch.inference_mode():
        rows = (sr_rows(net, args.sf, args.noise_level, args.images) if sf
                else denoiser_rows(net, args.images))
    label = "kernel" if sf else "case"
    metrics = [k for k in rows[0] if k.startswith(("psnr", "std"))]
    means = [{"case": case, "image": "mean", **values}
             for case, values in grouped_means(rows, ("case",), metrics).items()]  # cases come in order
    overall = grouped_means(means, (), metrics)
    header = [label, "PSNR with the estimate", "PSNR with the truth"] + (["std error (0-255)"] if not sf else [])

    def cells(name, m):
        return [name, f"{m['psnr_estimate']:.2f}", f"{m['psnr_truth']:.2f}"] + (
            [f"{m['std_error_255']:.2f}"] if not sf else [])

    table = markdown_table(header, [cells(str(m["case"]), m) for m in means] + [cells("mean", overall)])
    out = args.out or ROOT / "bench" / "results" / f"estimator_oracle_{args.task}"
    record = {"benchmark": "estimator_oracle", "command": command_line(), "machine": machine_info(torch.device("cpu")),
              "versions": versions(), "task": args.task, "weights": net.weights_info, "images": args.images,
              **({"sf": args.sf, "noise_level": args.noise_level} if sf else {}), "mean": overall, "per_case": means,
              "per_image": rows}
    write_results(out, rows + means, record, table,
                  f"{args.task}: the first {args.images} images per {label}, estimate vs truth")
    return record


if __name__ == "__main__":
    run_main(main)
