"""Property-based tests of the trainers' configs: any value of any key, one line or a valid config.

For every key of every trainer's schema (engine keys, architecture keys, the trainer's), values of
every type and range (None, booleans, integers up to 2^70, floats with NaN and infinities, strings
with NUL and path-like or number-like text, lists and dicts nested a few levels, the key's
bounds and choices nudged) go into the config as a file value and as ``--opt KEY=TEXT``. The
config check (``utils.config.build_config``) and the trainer's start-up checks (its ``__init__``
and ``Task.check_config``) must either accept the config or raise one ``UserError`` whose message
is one short line naming the key; any other exception is a bug this suite found.

Budget: ``VIRNET_HYPOTHESIS_EXAMPLES`` examples per key (default 4, about 20 s on 2 cores, with a
fixed derandomised search so that CI is stable). By hand, a larger random search:
``VIRNET_HYPOTHESIS_EXAMPLES=200 VIRNET_HYPOTHESIS_RANDOM=1 pytest tests/test_hostile_config.py``
(docs/reliability.md).
"""
import json
import math
import os
import warnings
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from train_denoising_real import DenoisingReal
from train_denoising_syn import DenoisingSyn
from train_sisr import SISR
from utils.config import REQUIRED, ConfigError, build_config, load_config, parse_overrides, read_config_file
from utils.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT.parent / "shared" / "trainsets" / "CBSD432-sample"
EXAMPLES = int(os.environ.get("VIRNET_HYPOTHESIS_EXAMPLES", "4"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, database=None,
                    derandomize=os.environ.get("VIRNET_HYPOTHESIS_RANDOM", "") != "1",
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

TRAINERS = {
    "syn": (DenoisingSyn, "configs/denoising_syn_small.json", {}),
    "real": (DenoisingReal, "configs/denoising_real_small.json",
             {"train_source": "camera_synthetic", "train_dirs": str(SAMPLES), "val_dir": str(SAMPLES),
              "train_pch_dir": None, "test_noisy_path": None, "test_gt_path": None}),
    "sisr": (SISR, "configs/sisr_x4_small.json", {}),
}
"""Trainer, its small config and the values that make it valid here (data from ../shared)."""

NAMES = ["auto", "true", "False", "", "0", "-1", "1e999", "nan", "inf", "[]", "[1,", "a,b", "\0", "x" * 300,
         "~nobody_here/x", "../" * 40, str(SAMPLES), "configs", "{}", "[[[[[[]]]]]]", "ij", "bicubic"]
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-1000, 1000), st.integers(-2 ** 70, 2 ** 70),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12), st.sampled_from(NAMES))
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4),
                                                                                           inner, max_size=3),
                      max_leaves=8)


def _near(key) -> st.SearchStrategy:
    """Values at and around the bounds, choices and default of one schema entry."""
    edges = [*([] if key.default is REQUIRED else [key.default]), *key.choices]
    for bound in (key.minimum, key.maximum, key.above):
        if bound is not None:
            edges += [bound, bound - 1, bound + 1, bound - 1e-9, bound * 10 + 1, -bound]
    edges += [[e] for e in edges if isinstance(e, (int, float))] + [[key.minimum or 0] * n for n in (0, 1, 2, 3, 9)]
    plain = [e for e in edges if not isinstance(e, Path)] + [str(e) for e in edges if isinstance(e, Path)]
    return st.sampled_from(plain)


def _keys():
    return [pytest.param(name, key, id=f"{name}-{key}") for name, (cls, _, _) in TRAINERS.items()
            for key in cls.schema()]


@pytest.fixture(scope="module")
def bases(shared):
    """Each trainer's base config values (its small config made valid here), checked once."""
    out = {}
    for name, (cls, path, extra) in TRAINERS.items():
        values = {**read_config_file(ROOT / path), **extra}
        build_config(cls.schema(), values, source=path)
        out[name] = values
    return out


def _text(value) -> str:
    """How a user would type ``value`` after ``--opt KEY=``."""
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value)
    except ValueError:  # NaN / inf: JSON has no spelling, a user types these
        return str(value)


def _check(trainer: str, values: dict, overrides: dict) -> None:
    """Build the config and run the trainer's start-up checks: accepted, or one UserError line (a
    warning, which would print lines before it, fails too)."""
    cls, path, _ = TRAINERS[trainer]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            cfg = build_config(cls.schema(), values, overrides, source=path)
            cls(cfg).check_config()
    except UserError as err:
        message = str(err)
        assert "\n" not in message and 0 < len(message) <= 400, message
        assert "config key" in message or "--opt" in message or "config keys" in message, message


@pytest.mark.parametrize("trainer, key", _keys())
def test_any_value_of_any_key_is_accepted_or_one_line(bases, trainer, key):
    schema_key = TRAINERS[trainer][0].schema()[key]

    @SETTINGS
    @given(value=st.one_of(VALUES, _near(schema_key)))
    def check(value):
        _check(trainer, {**bases[trainer], key: value}, {})
        _check(trainer, bases[trainer], parse_overrides([f"{key}={_text(value)}"]))

    check()


def test_deeply_nested_config_json_is_one_line(tmp_path, capsys):
    deep = tmp_path / "deep.json"
    deep.write_text('{"lr": ' + "[" * 100000 + "]" * 100000 + "}")
    with pytest.raises(ConfigError, match=r"deep\.json: nested too deeply to read") as caught:
        load_config(deep, DenoisingSyn.schema())
    assert "\n" not in str(caught.value)
    with pytest.raises(ConfigError, match="--opt n_feat: value nested too deeply to read"):
        parse_overrides(["n_feat=" + "[" * 100000 + "]" * 100000])
    nested = {"lr": 1e-3, "epochs": 1, "n_feat": [[[[[[1]]]]]]}
    with pytest.raises(ConfigError, match=r"config key 'n_feat': expected an integer, got \[\[\[\[\[1\]\]\]\]\] "):
        build_config(DenoisingSyn.schema(), nested)


@pytest.mark.parametrize("trainer, opts, message", [
    ("syn", ["patch_size=99999"], "config key 'patch_size': at most 2048 (one 2048 x 2048 training crop already "
                                  "needs about 82 GiB of memory), got 99999"),
    ("sisr", ["k_size=4"], "config keys 'k_size' and 'sf': the kernel side must be odd (the blur is centred on a "
                           "pixel) and at least 21 at x4 (it must hold the widest training kernel), got 4"),
    ("sisr", ["k_size=19"], "and at least 21 at x4"),
    ("sisr", ["sf=2", "hr_size=96", "k_size=11"], None),
    ("sisr", ["n_feat=[4,8]"], "config keys 'n_feat': the widths leave 6 layer(s) of the network without weights"),
    ("sisr", ["penalty_K=[]"], "config key 'penalty_K': expected at least 2 value(s), got [] (list)"),
    ("sisr", ["penalty_K=[1,2,3]"], "config key 'penalty_K': expected at most 2 value(s)"),
    ("syn", ["lr=0"], "config key 'lr': must be > 0, got 0.0"),
    ("syn", ["eps2=0"], "config key 'eps2': must be > 0, got 0.0"),
    ("sisr", ["r2=0"], "config key 'r2': must be > 0, got 0.0"),
    ("sisr", ["kappa0=1"], "config key 'kappa0': must be > 1, got 1.0"),
    ("syn", ["iters_per_epoch=1000000000000000"], "config keys 'iters_per_epoch' and 'batch_size': an epoch draws"),
    ("syn", ["num_workers=100000"], "config key 'num_workers': must be <= 256"),
    ("real", ["var_window=65"], "config keys 'var_window' and 'patch_size': the prior's window is reflect-padded"),
    ("real", ["var_window=63"], None),
    ("sisr", ["add_jpeg=true", "var_window=65"], "config keys 'var_window' and 'hr_size': with add_jpeg"),
    ("syn", ["lr=1e-4", "lr_min=1e-3"], "config keys 'lr_min' and 'lr': the cosine decay goes from lr down to "
                                        "lr_min, so lr_min must be <= lr, got lr_min=0.001 > lr=0.0001"),
    ("syn", ["lr=1e-4", "lr_min=1e-3", "scheduler=multistep"], None),
    ("syn", ["seed=4294967296"], "config key 'seed': must be <= 4.29497e+09, got 4294967296"),
    ("syn", ["epochs=9223372036854775808"], "config key 'epochs': must fit in 64 bits"),
])
def test_the_issue_s_extreme_values(bases, trainer, opts, message):
    cls, path, _ = TRAINERS[trainer]
    if message is None:
        cls(build_config(cls.schema(), bases[trainer], parse_overrides(opts), source=path)).check_config()
        return
    with pytest.raises(ConfigError) as caught:
        cls(build_config(cls.schema(), bases[trainer], parse_overrides(opts), source=path)).check_config()
    assert message in str(caught.value)


def test_non_finite_floats_in_a_file_are_refused():
    for value in (math.nan, math.inf, -math.inf):
        with pytest.raises(ConfigError, match="config key 'lr': expected a finite number"):
            build_config(DenoisingSyn.schema(), {"lr": value, "epochs": 1})
