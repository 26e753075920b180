"""The real-noise trainer's noise mix (config key plain_noise_fraction): plain per-pixel Poisson-Gaussian
noise (datasets/plain_noise.py) drawn for a share of the camera-noise training samples."""
import numpy as np
import pytest

from datasets.camera_noise import CameraNoiseTrain
from datasets.denoising_syn import to_float
from datasets.plain_noise import PLAIN_READ_RANGE, PLAIN_SHOT_RANGE, add_plain_noise, random_plain_levels


def test_plain_noise_has_the_poisson_gaussian_variance_and_is_white():
    clean = np.full((256, 256, 3), 0.5, np.float32)
    clean[:, 128:] = 0.2
    noisy = add_plain_noise(clean, 0.01, 0.001, np.random.default_rng(0))
    assert noisy.dtype == np.float32 and np.array_equal(noisy, to_float(np.round(noisy * 255).astype(np.uint8)))
    for columns, level in ((slice(0, 128), 0.5), (slice(128, 256), 0.2)):
        residual = noisy[:, columns] - clean[:, columns]
        assert abs(residual.std() / np.sqrt(0.01 * level + 0.001) - 1) < 0.03
        flat = residual.reshape(-1, 3)
        assert np.abs(np.corrcoef(flat.T)[np.triu_indices(3, 1)]).max() < 0.03  # channels independent
        assert abs(np.corrcoef(residual[:, :-1].ravel(), residual[:, 1:].ravel())[0, 1]) < 0.03  # pixels too
    assert np.array_equal(add_plain_noise(clean, 0.0, 0.0, np.random.default_rng(0)),
                          to_float(np.round(clean * 255).astype(np.uint8)))
    with pytest.raises(ValueError, match="non-negative"):
        add_plain_noise(clean, -1.0, 0.0, np.random.default_rng(0))


def test_plain_levels_stay_in_their_ranges():
    rng = np.random.default_rng(1)
    shots, reads = zip(*(random_plain_levels(rng) for _ in range(200)))
    assert PLAIN_SHOT_RANGE[0] <= min(shots) and max(shots) <= PLAIN_SHOT_RANGE[1]
    assert PLAIN_READ_RANGE[0] <= min(reads) and max(reads) <= PLAIN_READ_RANGE[1]


def _neighbour_correlation(noisy, clean):
    """The correlation of the noise of horizontal neighbours (demosaicked camera noise: clearly positive)."""
    residual = (noisy - clean).numpy()
    return float(np.corrcoef(residual[..., :-1].ravel(), residual[..., 1:].ravel())[0, 1])


def test_the_fraction_picks_plain_or_camera_noise_per_sample(shared):
    images = sorted((shared / "trainsets/CBSD432-sample").glob("*.jpg"))[:4]
    camera = CameraNoiseTrain(images, 12, 64, seed=5)
    plain = CameraNoiseTrain(images, 12, 64, seed=5, plain_fraction=1.0)
    mixed = CameraNoiseTrain(images, 12, 64, seed=5, plain_fraction=0.5)
    camera_r = [_neighbour_correlation(*camera[i]) for i in range(12)]
    plain_r = [_neighbour_correlation(*plain[i]) for i in range(12)]
    assert min(camera_r) > 0.3 and max(np.abs(plain_r)) < 0.1, (camera_r, plain_r)
    for i in range(12):  # the same crop either way; the noise is one or the other
        assert np.array_equal(plain[i][1], camera[i][1]) and np.array_equal(mixed[i][1], camera[i][1])
    kinds = [abs(_neighbour_correlation(*mixed[i])) < 0.1 for i in range(12)]
    assert 0 < sum(kinds) < 12
    with pytest.raises(ValueError, match="plain_fraction must be in"):
        CameraNoiseTrain(images, 12, 64, plain_fraction=1.5)
