"""The demos' noise heat map: drawn with OpenCV (no plotting library), colours on one viridis scale
for the estimate and the truth, the colour bar spanning their range, panels of a fixed width."""
import subprocess
import sys

import cv2
import numpy as np

from utils.image_io import read_image_uint8
from utils.inference.pictures import HEATMAP_WIDTH, LABEL_HEIGHT, noise_heatmap


def _viridis_rgb(level: int) -> np.ndarray:
    return cv2.applyColorMap(np.array([[level]], np.uint8), cv2.COLORMAP_VIRIDIS)[0, 0, ::-1]


def test_heatmap_shows_both_maps_on_one_colour_scale(tmp_path):
    estimate = np.full((60, 90, 3), 10.0, np.float32)
    truth = np.full((60, 90), 30.0, np.float32)
    noise_heatmap(tmp_path / "heat.png", estimate, truth)
    heat = read_image_uint8(tmp_path / "heat.png")
    panel_height = round(60 * HEATMAP_WIDTH / 90)
    assert heat.shape[0] == LABEL_HEIGHT + panel_height and heat.shape[1] > 2 * HEATMAP_WIDTH
    middle = LABEL_HEIGHT + panel_height // 2
    assert (heat[middle, HEATMAP_WIDTH // 2] == _viridis_rgb(0)).all()  # the minimum of both maps
    assert (heat[middle, HEATMAP_WIDTH + HEATMAP_WIDTH // 2 + 8] == _viridis_rgb(255)).all()  # their maximum


def test_heatmap_of_a_large_map_shows_its_block_means(tmp_path):
    rng = np.random.default_rng(3)
    std = rng.uniform(5, 45, (2 * HEATMAP_WIDTH, 4 * HEATMAP_WIDTH)).astype(np.float32)
    noise_heatmap(tmp_path / "big.png", std)
    heat = read_image_uint8(tmp_path / "big.png")
    panel = heat[LABEL_HEIGHT:, :HEATMAP_WIDTH].astype(int)
    assert panel.shape[0] == HEATMAP_WIDTH // 2
    means = std.reshape(HEATMAP_WIDTH // 2, 4, HEATMAP_WIDTH, 4).mean(axis=(1, 3))  # 4 x 4 blocks
    levels = np.round((means - std.min()) / (std.max() - std.min()) * 255).astype(np.uint8)
    expected = cv2.applyColorMap(levels, cv2.COLORMAP_VIRIDIS)[:, :, ::-1].astype(int)
    same = (np.abs(panel - expected).max(axis=2) <= 2).mean()
    assert same > 0.99, f"only {same:.1%} of the panel shows the block means' colours"


def test_drawing_the_heatmap_loads_no_plotting_library(tmp_path):
    code = ("import sys, numpy as np; from utils.inference.pictures import noise_heatmap; "
            f"noise_heatmap({str(tmp_path / 'h.png')!r}, np.ones((8, 8))); "
            "print(any(m == 'matplotlib' or m.startswith('matplotlib.') for m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False" and (tmp_path / "h.png").is_file()
