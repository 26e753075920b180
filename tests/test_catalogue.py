"""The weights catalogue (model_zoo/catalogue.json, networks.catalogue): every entry fits its task's
architecture and parameter count, the shipped files are the ones described (SHA-256, architecture,
scale, protocol results from model_zoo/results/), the demos' defaults and the download command come
from it, and the model-zoo docs agree with it."""
import json
import re

import pytest
import torch

import networks
from networks import catalogue as cat
from utils import download_weights as dw

ENTRIES = networks.weights_catalogue()
SHIPPED = [e for e in ENTRIES.values() if e.origin == "shipped"]
RELEASE = "https://github.com/zsyOAOA/VIRNet/releases/download/v1.0/"


@pytest.mark.parametrize("entry", ENTRIES.values(), ids=list(ENTRIES))
def test_entry_fits_its_task(entry):
    spec = networks.task_spec(entry.task)
    assert entry.origin in ("shipped", "released")
    assert entry.scale in spec.scales if spec.scales else entry.scale is None
    assert set(entry.architecture) <= set(spec.released)
    with torch.device("meta"):
        net = networks.build_model(entry.task, **entry.architecture)
    assert sum(p.numel() for p in net.parameters()) == entry.parameters
    assert entry.sha256 is None or re.fullmatch("[0-9a-f]{64}", entry.sha256)


@pytest.mark.parametrize("entry", SHIPPED, ids=[e.name for e in SHIPPED])
def test_shipped_file_is_the_one_described(entry):
    assert entry.url is None and entry.path.is_file() and entry.sha256
    assert dw.file_sha256(entry.path) == entry.sha256
    arch = networks.read_checkpoint(entry.path)["arch"]
    assert arch["task"] == entry.task and arch.get("sf") == entry.scale
    assert arch["kwargs"] == networks.model_kwargs(entry.task, **entry.architecture)


@pytest.mark.parametrize("entry", SHIPPED, ids=[e.name for e in SHIPPED])
def test_shipped_results_are_those_of_the_results_files(entry):
    assert entry.results
    for row in entry.results:
        measured = json.loads((cat.MODEL_ZOO / row["source"]).read_text())
        checkpoint = measured.get("checkpoint")
        assert checkpoint is None or checkpoint.endswith(entry.file), row["name"]
        values = measured
        for key in row["at"]:
            values = values[key]
        if "psnr" not in values and "psnr_y" not in values:  # per test kernel: their mean
            values = {m: sum(v[m] for v in values.values()) / len(values) for m in ("psnr_y", "ssim_y")}
        psnr, ssim = (values.get(m, values.get(m + "_y")) for m in ("psnr", "ssim"))
        assert (row["psnr"], row["ssim"]) == (round(psnr, 2), round(ssim, 4)), row["name"]


def test_released_files_are_the_download_commands_tasks():
    released = dw.released_models()
    assert sorted(released) == ["denoising-real", "denoising-syn", "sisr-x2", "sisr-x3", "sisr-x4"]
    for name, entry in released.items():
        assert entry["file"] == f"virnet_{name.replace('-', '_')}.pth" and entry["url"] == RELEASE + entry["file"]
        assert entry["results"] is None  # the authors' files are not measured here


def test_every_task_and_scale_has_a_default():
    for task, spec in networks.TASKS.items():
        for sf in spec.scales or (None,):
            path = networks.default_weights(task, sf)
            assert path.parent == cat.MODEL_ZOO and path.name in {e.file for e in ENTRIES.values()}


def test_default_weights_prefer_the_authors_file(tmp_path, monkeypatch):
    monkeypatch.setattr(cat, "MODEL_ZOO", tmp_path)
    compact = ENTRIES["denoising-real-compact"].file
    assert networks.default_weights("denoising-real") == tmp_path / compact
    (tmp_path / "virnet_denoising_real.pth").write_bytes(b"")
    assert networks.default_weights("denoising-real") == tmp_path / "virnet_denoising_real.pth"
    assert networks.default_weights("denoising-syn") == tmp_path / ENTRIES["denoising-syn-compact"].file
    assert networks.default_weights("sisr", 2) == tmp_path / "virnet_sisr_x2.pth"


def test_a_broken_catalogue_is_named(tmp_path):
    path = tmp_path / "catalogue.json"
    path.write_text('{"weights": {"x": {"task": "sisr"}}}')
    with pytest.raises(ValueError, match=f"cannot read the weights catalogue {re.escape(str(path))} .*restore it"):
        cat.read_catalogue(path)


def test_the_model_zoo_docs_agree_with_the_catalogue(root):
    """Each file's row in docs/model_zoo.md gives its parameter count and, for a shipped file, the PSNR
    of each of its protocol results."""
    lines = (root / "docs" / "model_zoo.md").read_text().splitlines()
    for entry in ENTRIES.values():
        row = next(line for line in lines if line.startswith("|") and f"`{entry.file}`" in line)
        assert f"{entry.parameters / 1e6:.2f} M" in row, entry.name
        for result in entry.results or ():
            assert f"{result['psnr']:.2f}" in row, (entry.name, result["name"])
    assert "catalogue.json" in (root / "model_zoo" / "README.md").read_text()
