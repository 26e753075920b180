"""Config files that compose (``"base"``, utils.config.resolve_base): the shipped configs resolve to
the values they held when each was written out whole (tests/data/resolved_configs.json), and a
missing base or a cycle is refused in one line."""
import importlib
import json
from pathlib import Path

import hjson
import pytest
import torch

import networks
from utils.config import REQUIRED, ConfigError, load_config, read_config_file
from utils.training.logs import RunLog
from utils.training.state import config_value

ROOT = Path(__file__).resolve().parents[1]
BEFORE = json.loads((ROOT / "tests" / "data" / "resolved_configs.json").read_text())
SHIPPED = sorted(path.name for path in (ROOT / "configs").glob("*.json"))


def task_class(name):
    """The trainer's ``Task`` whose configs' names start like ``name``."""
    spec = next(spec for spec in networks.TASKS.values() if name.startswith(spec.configs))
    module, cls = spec.trainer.split(":")
    return getattr(importlib.import_module(module), cls)


def test_every_shipped_config_is_in_the_fixture():
    assert SHIPPED == sorted(BEFORE)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_config_resolves_to_its_former_values(name):
    """Each key takes the value it had (in the file, else the schema's default): a base may give a
    derived file a key it used to leave to the default, but only with the default's value."""
    schema = task_class(name).schema()
    now, before = read_config_file(ROOT / "configs" / name), BEFORE[name]
    assert "base" not in now and set(now) <= set(schema)
    for key, entry in schema.items():
        default = None if entry.default is REQUIRED else entry.default
        assert now.get(key, default) == before.get(key, default), key


def test_derived_configs_hold_only_their_changes():
    for name in SHIPPED:
        if name.endswith(("_small.json", "_compact.json")) or name in ("sisr_x2.json", "sisr_x3.json"):
            own = hjson.loads((ROOT / "configs" / name).read_text())
            assert "base" in own, name
            base = read_config_file(ROOT / "configs" / own["base"])
            assert all(base.get(key) != value for key, value in own.items() if key != "base"), name


def test_a_derived_file_overrides_its_base_and_bases_chain(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.json").write_text('{"epochs": 3, "lr": 1e-3, "seed": 7}')
    (tmp_path / "sub" / "b.json").write_text('{"base": "../a.json", "lr": 2e-3}')
    (tmp_path / "sub" / "c.json").write_text('{\n  # on b, so on a too\n  "base": "b.json", "seed": 8\n}')
    assert read_config_file(tmp_path / "sub" / "c.json") == {"epochs": 3, "lr": 2e-3, "seed": 8}


def test_a_run_saves_the_resolved_config(shared, tmp_path):
    cfg = load_config(ROOT / "configs" / "sisr_x3.json", task_class("sisr_x3.json").schema(),
                      [f"save_dir={tmp_path}"])
    assert (cfg.sf, cfg.hr_size, cfg.lr, cfg.epochs, cfg.dep_K) == (3, 144, 2e-4, 120, 8)
    RunLog(cfg, tmp_path).start("sisr", torch.nn.Linear(1, 1), torch.device("cpu"), 1, cfg.batch_size, None)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert "base" not in saved and saved == {key: config_value(value) for key, value in cfg.items()}


@pytest.mark.parametrize("files, message", [
    ({"a.json": '{"base": "gone.json", "lr": 1}'}, "a.json: base config 'gone.json' not found (looked for "),
    ({"a.json": '{"base": "a.json"}'}, "a.json: the base files form a cycle: a.json -> a.json; remove one 'base'"),
    ({"a.json": '{"base": "b.json"}', "b.json": '{"base": "c.json"}', "c.json": '{"base": "a.json"}'},
     "the base files form a cycle: a.json -> b.json -> c.json -> a.json; remove one 'base'"),
    ({"a.json": '{"base": 3}'}, "a.json: 'base' must name a config file, got 3"),
])
def test_bad_bases_are_refused_in_one_line(tmp_path, files, message):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(ConfigError) as err:
        read_config_file(tmp_path / "a.json")
    assert message in str(err.value) and "\n" not in str(err.value)
