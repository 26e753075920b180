"""Default tiles: a bound in output pixels for every task, sized from the free memory on CUDA (the
free memory is simulated: no GPU is needed)."""
import argparse

import numpy as np
import pytest
import torch

import networks
from utils.inference import Restorer, add_common_args
from utils.inference import tiling
from utils.inference.tiling import (BYTES_PER_OUTPUT_PIXEL, DEFAULT_TILE, MAX_TILE, cuda_output_bound,
                                    default_tiling, output_bound)

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
GIB = 2**30


@pytest.fixture
def free_memory(monkeypatch):
    """``free_memory(n)``: make ``torch.cuda.mem_get_info`` report ``n`` free bytes (of 80 GiB)."""
    def set_free(free: int) -> None:
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free, 80 * GIB))
    return set_free


@pytest.mark.parametrize("multiple, sf, expected", [
    (4, None, (512, 64)), (8, None, (512, 64)), (4, 1, (512, 64)),
    (4, 4, (128, 16)),   # SR x4: 512 / 4 LR pixels, overlap 64 / 4
    (4, 2, (256, 32)),
    (4, 3, (168, 24)),   # 512 // 3 = 170 rounded down to 168; 64 / 3 = 21.3 rounded up to 24
])
def test_cpu_default_is_an_output_bound(multiple, sf, expected):
    assert default_tiling(CPU, multiple, sf) == expected
    tile, overlap = expected
    assert tile % multiple == 0 and overlap % multiple == 0
    assert tile * (sf or 1) <= DEFAULT_TILE


def test_cuda_bound_from_free_memory(free_memory):
    free_memory(8 * GIB)
    side = output_bound(CUDA)
    # half of 8 GiB at 3.5 KiB per output pixel: 1094^2 pixels fit, 1095^2 do not
    assert side == 1094
    assert side ** 2 * BYTES_PER_OUTPUT_PIXEL <= 4 * GIB < (side + 1) ** 2 * BYTES_PER_OUTPUT_PIXEL
    assert default_tiling(CUDA, 4, 4) == (1094 // 4 // 4 * 4, 16) == (272, 16)
    assert default_tiling(CUDA, 4, None) == (1092, 64)
    free_memory(75 * GIB)
    assert output_bound(CUDA) == cuda_output_bound(75 * GIB) == 3351
    assert default_tiling(CUDA, 4, 4) == (836, 16)


def test_cuda_bound_capped_and_floored(free_memory):
    free_memory(1000 * GIB)
    assert output_bound(CUDA) == MAX_TILE
    assert default_tiling(CUDA, 4, 4) == (MAX_TILE // 4, 16)
    free_memory(100 * 2**20)  # 100 MiB: 120 output pixels, 30 LR pixels for x4: raised to twice the overlap
    assert output_bound(CUDA) == 120
    assert default_tiling(CUDA, 4, 4) == (32, 16)
    free_memory(0)
    assert default_tiling(CUDA, 8, None) == (128, 64)


def test_cpu_ignores_cuda_memory(monkeypatch):
    def absent(device=None):
        raise AssertionError("the CPU default must not ask CUDA")
    monkeypatch.setattr(torch.cuda, "mem_get_info", absent)
    assert output_bound(CPU) == DEFAULT_TILE


def test_restorer_and_demo_flags_take_the_default():
    torch.manual_seed(0)
    sr = networks.build_model("sisr", n_feat=[8, 16], n_resblocks=1, dep_S=2, dep_K=2).eval()
    restorer = Restorer(sr, sf=4)
    assert (restorer.tile, restorer.overlap) == (128, 16)
    assert restorer.will_tile(129, 100) and not restorer.will_tile(128, 128)
    parser = argparse.ArgumentParser()
    add_common_args(parser, "weights.pth")
    args = parser.parse_args([])
    assert args.tile is None and args.tile_overlap is None and args.tf32 is False
    explicit = Restorer(sr, sf=4, tile=args.tile if args.tile is not None else 200, overlap=args.tile_overlap)
    assert (explicit.tile, explicit.overlap) == (200, 16)  # an explicit tile counts input pixels
    denoiser = networks.build_model("denoising-syn", n_feat=[8, 16, 24], n_resblocks=1, dep_S=2).eval()
    assert (Restorer(denoiser).tile, Restorer(denoiser).overlap) == (512, 64)


def test_default_sr_tiles_match_whole_image():
    """SR x4 at the default 128 / 16 LR-pixel windows (64 output pixels of overlap) against one
    whole-image run: tiles meet where seams are far below the blend's outer quarter."""
    torch.manual_seed(0)
    sr = networks.build_model("sisr", n_feat=[8, 16], n_resblocks=1, dep_S=2, dep_K=2).eval()
    im = np.random.default_rng(0).random((150, 140, 3), dtype=np.float32)
    tiled = Restorer(sr, sf=4)(im)
    whole = Restorer(sr, sf=4, tile=0)(im)
    assert tiled.tiled and not whole.tiled
    assert np.abs(tiled.image - whole.image).max() < 1 / 255
    np.testing.assert_array_equal(tiled.kinfo, whole.kinfo)
    assert tiling.DEFAULT_TILE_OVERLAP == 64
