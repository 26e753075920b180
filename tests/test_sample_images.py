"""The small configs on a clone alone: with fallback_to_samples, a data folder of the config file
that is not there becomes scikit-image's sample photographs (one note), an --opt folder never does."""
import json

import pytest

import train_denoising_syn
from utils import sample_images
from utils.config import ConfigError
from utils.image_io import list_images, read_image


@pytest.fixture
def samples(tmp_path, monkeypatch):
    monkeypatch.setattr(sample_images, "SAMPLE_DIR", tmp_path / "samples")
    return tmp_path / "samples"


def _config(tmp_path, **values):
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({"epochs": 1, "lr": 1e-3, **values}))
    return path


def test_missing_folders_become_the_samples_with_one_note(tmp_path, samples, capsys):
    cfg = sample_images.load_config_with_fallback(
        _config(tmp_path, fallback_to_samples=True, train_dirs=["no/such/train"], val_dir="no/such/val"),
        train_denoising_syn.DenoisingSyn.schema())
    assert cfg.train_dirs == [samples / "train"] and cfg.val_dir == samples / "val"
    assert [p.stem for p in list_images(samples / "train")] == sorted(sample_images.TRAIN_PHOTOS)
    assert [p.stem for p in list_images(samples / "val")] == sorted(sample_images.VAL_PHOTOS)
    assert read_image(samples / "val/chelsea.png").shape == (300, 451, 3)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("note: train_dirs ['no/such/train'], val_dir no/such/val not found: "
                                               "using scikit-image's sample photographs instead (7 to train on, 2")


def test_present_folders_and_opt_folders_stay(tmp_path, samples, capsys):
    (tmp_path / "mine").mkdir()
    schema = train_denoising_syn.DenoisingSyn.schema()
    cfg = sample_images.load_config_with_fallback(
        _config(tmp_path, fallback_to_samples=True, train_dirs=[str(tmp_path / "mine")], val_dir=str(tmp_path)), schema)
    assert cfg.train_dirs == [tmp_path / "mine"] and not samples.exists() and capsys.readouterr().err == ""
    with pytest.raises(ConfigError, match="config key 'train_dirs': folder not found: no/such"):
        sample_images.load_config_with_fallback(_config(tmp_path, fallback_to_samples=True, val_dir=str(tmp_path)),
                                                schema, ["train_dirs=no/such"])
    with pytest.raises(ConfigError, match="config key 'train_dirs': folder not found: no/such"):
        sample_images.load_config_with_fallback(_config(tmp_path, train_dirs=["no/such"]), schema)  # switch off


def test_the_small_configs_turn_the_fallback_on():
    for name in ("denoising_syn_small", "sisr_x4_small"):
        text = (sample_images.REPO_ROOT / "configs" / f"{name}.json").read_text()
        assert '"fallback_to_samples": true' in text
