"""The synthetic denoising test protocol against conformance/protocol/syn_test_noise.{npz,json}."""
import json

import numpy as np
import pytest

from datasets import niid_noise_maps, resize_map, synthetic_test_pairs
from utils.image_io import list_images

N_CASES = 3


@pytest.fixture(scope="module")
def reference(shared):
    """The stored arrays (npz) and the whole-image sums and shapes (json)."""
    folder = shared / "conformance" / "protocol"
    with np.load(folder / "syn_test_noise.npz") as npz:
        arrays = dict(npz)
    return arrays, json.loads((folder / "syn_test_noise.json").read_text())


@pytest.fixture(scope="module")
def cbsd68(shared):
    return shared / "testsets" / "CBSD68"


@pytest.fixture(scope="module", params=["niid", "iid"])
def run(request, cbsd68, reference):
    """One full pass of the generator over CBSD68: the yield order and the records under test."""
    noise_type = request.param
    _, sums = reference
    order, records = [], {}
    for dataset, case, name, im_gt, im_noisy in synthetic_test_pairs(noise_type, {"CBSD68": cbsd68}):
        order.append((dataset, case, name))
        key = f"{noise_type}_{dataset}_case{case}_{name}"
        if key in sums:
            records[key] = (im_gt, im_noisy)
    return noise_type, order, records


@pytest.mark.conformance
def test_noise_maps(reference, margin):
    arrays, _ = reference
    assert {k for k in arrays if k.startswith("niid_map")} == {"niid_map1", "niid_map2", "niid_map3"}
    maps = niid_noise_maps(np.random.default_rng(1000))
    for i, level in enumerate(maps, start=1):
        expected = arrays[f"niid_map{i}"]
        assert level.shape == expected.shape == (256, 256)
        margin(f"niid_map{i}", np.abs(level - expected).max(), 1e-6)
        assert np.isclose(level.min(), 10 / 255) and np.isclose(level.max(), 75 / 255)


def test_resize_map_is_nearest():
    level = np.arange(256 * 256, dtype=np.float32).reshape(256, 256)
    out = resize_map(level, 481, 321)
    assert out.shape == (321, 481) and out.dtype == np.float32
    assert np.isin(out, level).all()
    assert out[0, 0] == level[0, 0] and out[-1, -1] == level[-1, -1]


@pytest.mark.conformance
def test_yield_order(run, cbsd68):
    _, order, _ = run
    names = [p.stem for p in list_images(cbsd68)]
    assert len(names) == 68
    assert order == [("CBSD68", case, n) for case in range(1, N_CASES + 1) for n in names]


@pytest.mark.conformance
def test_every_reference_key_checked(run, reference):
    noise_type, _, records = run
    arrays, sums = reference
    expected = {k for k in sums if k.startswith(noise_type + "_")}
    assert set(records) == expected and len(expected) == 2 * N_CASES
    crops = {k for k in arrays if k.startswith(noise_type + "_") and not k.startswith("niid_map")}
    assert {k + "_crop" for k in expected} == crops


@pytest.mark.conformance
def test_crops_exact_and_sums(run, reference, margin):
    _, _, records = run
    arrays, sums = reference
    for key, (im_gt, im_noisy) in records.items():
        assert im_gt.dtype == np.uint8 and im_noisy.dtype == np.float32
        assert list(im_noisy.shape) == sums[key]["shape"] == list(im_gt.shape)
        np.testing.assert_array_equal(im_noisy[:32, :32], arrays[key + "_crop"], err_msg=key)
        margin(f"{key} sum", abs(im_noisy.sum(dtype=np.float64) - sums[key]["sum"]), 1e-3)


def test_list_of_folders_and_bad_type(cbsd68):
    first = next(synthetic_test_pairs("IID", [cbsd68]))
    assert first[:3] == ("CBSD68", 1, "101085")
    with pytest.raises(ValueError, match="noise_type"):
        synthetic_test_pairs("gaussian", [cbsd68])
