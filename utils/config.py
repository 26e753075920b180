"""Training configurations: JSON-with-comments files checked against a typed schema.

A config file is JSON that may carry ``#`` (and ``//``) comments, the format of the reference's
``configs/*.json``; it is read with ``hjson``. Every key must be declared in the schema given
by the trainer (``Key`` entries): unknown keys, values of the wrong type, missing required keys
and data paths that do not exist all raise ``ConfigError`` with a one-line message. Booleans are
JSON ``true`` / ``false``; the reference's strings ``"True"`` / ``"False"`` (any case) are still
accepted. Relative data paths are looked up in the current directory first, then in the
repository root, so ``"../shared/..."`` works from a fresh clone whatever the working directory.
"""
from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from numbers import Real
from pathlib import Path
from typing import Any

import hjson

from utils.errors import UserError

REPO_ROOT = Path(__file__).resolve().parents[1]

KINDS = ("int", "float", "bool", "auto_bool", "str", "ints", "floats", "dir", "dirs", "file")
"""Value kinds: scalars (``auto_bool``: true, false or "auto", decided at run time), lists of
numbers, an existing folder, a list of folders, a file."""


class ConfigError(UserError, ValueError):
    """A configuration problem; the message is one line naming the file or key."""


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED = _Required()
"""Default of a key that the config must set."""


@dataclass(frozen=True)
class Key:
    """Schema entry of one config key.

    kind: one of ``KINDS``. default: the value when the file omits the key (``REQUIRED`` makes
    it mandatory; ``None`` makes it optional and unset). choices: allowed values (strings are
    compared case-insensitively and stored in the spelling of ``choices``). minimum: lower bound
    for numbers and for every element of number lists; maximum: upper bound, alike; above: an
    exclusive lower bound (the value must be greater). min_items / max_items: the fewest / most
    elements a list kind accepts. pair: for ``ints`` / ``floats``, the list must be a range
    [low, high] with low <= high (``check_pair``; [] is accepted too where it is the default,
    meaning "off"). help: one sentence for ``--help``.
    """

    kind: str
    default: Any = REQUIRED
    help: str = ""
    choices: tuple = ()
    minimum: float | None = None
    maximum: float | None = None
    min_items: int = 0
    max_items: int | None = None
    pair: bool = False
    above: float | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown key kind {self.kind!r}; expected one of {KINDS}")
        if self.pair and self.kind not in ("ints", "floats"):
            raise ValueError(f"pair applies to kinds 'ints' and 'floats', not {self.kind!r}")


class Config(Mapping):
    """A checked, read-only configuration: ``cfg.lr`` or ``cfg['lr']``; ``dict(cfg)`` copies it."""

    def __init__(self, values: Mapping[str, Any], source: str = "<config>"):
        object.__setattr__(self, "_values", dict(values))
        object.__setattr__(self, "source", source)

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(f"config has no key {name!r}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Config is read-only; build a new one with replace()")

    def __getitem__(self, name: str) -> Any:
        return self._values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"Config({self._values!r})"

    def replace(self, **values: Any) -> "Config":
        """A copy with some values replaced (no checks: pass already valid values)."""
        return Config({**self._values, **values}, self.source)


def _no_duplicates(pairs: list) -> dict:
    seen = {}
    for key, value in pairs:
        if key in seen:
            raise ConfigError(f"key {key!r} appears twice")
        seen[key] = value
    return seen


def read_config_file(path: str | os.PathLike, _chain: tuple[Path, ...] = ()) -> dict:
    """Read a JSON-with-comments file into a dict (no schema checks), its ``"base"`` key resolved
    (``resolve_base``: the base file's values under the file's own).

    A relative ``path`` is looked up like data paths (current directory, then repository root).
    Raises ``ConfigError`` when the file is missing, unreadable, not valid, repeats a key or is
    not a JSON object, or its base is missing or leads back to it.
    """
    found = resolve_path(str(path))
    if found is None or not found.is_file():
        raise ConfigError(f"config file not found: {path}")
    path = found
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read config file {path}: {err}") from None
    try:
        values = hjson.loads(text, object_pairs_hook=_no_duplicates)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    except hjson.HjsonDecodeError as err:
        raise ConfigError(f"{path}: line {err.lineno} column {err.colno}: {err.msg}") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to read (config values are numbers, strings or "
                          f"lists of them)") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: the top level must be an object {{...}}, got {type(values).__name__}")
    return resolve_base(path, values, _chain)


def resolve_base(path: Path, values: dict, chain: tuple[Path, ...] = ()) -> dict:
    """The values of config file ``path`` with its ``"base"`` resolved: the base file (a path relative
    to ``path``'s folder, itself read with ``read_config_file``, so bases chain) gives every key the
    file does not set. ``chain``: the files whose bases led here. Without ``"base"``, ``values``.
    Raises ``ConfigError`` (one line) for a base that is not a string, is not there, or leads back to
    a file of the chain."""
    if "base" not in values:
        return values
    own = {key: value for key, value in values.items() if key != "base"}
    base = values["base"]
    if not isinstance(base, str) or not base:
        raise ConfigError(f"{path}: 'base' must name a config file, got {base!r}")
    target = (path.parent / base).resolve()
    chain = (*chain, path.resolve())
    if target in chain:
        cycle = " -> ".join(p.name for p in chain[chain.index(target):])
        raise ConfigError(f"{path}: the base files form a cycle: {cycle} -> {target.name}; remove one 'base'")
    if not target.is_file():
        raise ConfigError(f"{path}: base config {base!r} not found (looked for {target})")
    return {**read_config_file(target, chain), **own}


def parse_overrides(items: Sequence[str]) -> dict:
    """Turn ``key=value`` strings (``--opt``) into a dict.

    Values are read like config values (numbers, ``true``, ``[1, 2]``, quoted strings); anything
    else is kept as the literal text. Raises ``ConfigError`` for an item without ``=``.
    """
    out = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--opt expects key=value, got {item!r}")
        try:
            value = hjson.loads(text) if text.strip() else ""
        except hjson.HjsonDecodeError:
            value = text
        except RecursionError:
            raise ConfigError(f"--opt {key}: value nested too deeply to read (config values are numbers, "
                              f"strings or lists of them)") from None
        out[key] = value
    return out


DESCRIBE_CHARS = 60
"""Longest quotation of a bad value in an error message (longer ones are cut, keeping one line)."""

INT_BOUND = 2 ** 63
"""Integer config values must lie strictly between -INT_BOUND and INT_BOUND (torch and NumPy hold
them in 64 bits)."""


def _describe(value: Any) -> str:
    try:
        text = repr(value)
    except RecursionError:
        text = f"<{type(value).__name__} nested too deeply>"
    if len(text) > DESCRIBE_CHARS:
        text = text[:DESCRIBE_CHARS - 3] + "..."
    return f"{text} ({type(value).__name__})"


def _number(name: str, value: Any, kind: str, minimum: float | None,
            maximum: float | None = None, above: float | None = None) -> int | float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"config key {name!r}: expected {'an integer' if kind == 'int' else 'a number'}, "
                          f"got {_describe(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"config key {name!r}: expected a finite number, got {value!r}")
    if kind == "int":
        if isinstance(value, float):
            if not value.is_integer():
                raise ConfigError(f"config key {name!r}: expected an integer, got {_describe(value)}")
            value = int(value)
        if not -INT_BOUND < value < INT_BOUND:
            raise ConfigError(f"config key {name!r}: must fit in 64 bits (|value| < 2^63), got {_describe(value)}")
    else:
        try:
            value = float(value)
        except OverflowError:
            raise ConfigError(f"config key {name!r}: too large for a float, got {_describe(value)}") from None
    if minimum is not None and value < minimum:
        raise ConfigError(f"config key {name!r}: must be >= {minimum:g}, got {value!r}")
    if above is not None and value <= above:
        raise ConfigError(f"config key {name!r}: must be > {above:g}, got {value!r}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"config key {name!r}: must be <= {maximum:g}, got {value!r}")
    return value


def check_pair(label: str, bounds: Any, minimum: float | None = None, maximum: float | None = None,
               error: type[Exception] = ValueError) -> tuple:
    """``(low, high)`` from ``bounds`` if it holds two finite numbers with minimum <= low <= high <= maximum.

    One check for every range setting (config keys with ``pair``, the data sets' arguments such as
    ``scale_range`` or ``jpeg_quality``). Otherwise raises ``error`` with the one-line message
    "<label>: expected [low, high] with <bounds>, got <bounds>"; None bounds are not checked.
    """
    values = list(bounds) if isinstance(bounds, (list, tuple)) else [bounds]
    numbers = all(isinstance(v, Real) and not isinstance(v, bool) and math.isfinite(v) for v in values)
    if (len(values) != 2 or not numbers or values[0] > values[1]
            or (minimum is not None and values[0] < minimum) or (maximum is not None and values[1] > maximum)):
        rule = "".join((f"{minimum:g} <= " if minimum is not None else "", "low <= high",
                        f" <= {maximum:g}" if maximum is not None else ""))
        raise error(f"{label}: expected [low, high] with {rule}, got {values}")
    return values[0], values[1]


def _boolean(name: str, value: Any, auto: bool = False) -> bool | str:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    if auto and isinstance(value, str) and value.lower() == "auto":
        return "auto"
    raise ConfigError(f"config key {name!r}: expected true{', false or auto' if auto else ' or false'}, "
                      f"got {_describe(value)}")


def resolve_path(text: str) -> Path | None:
    """The existing file or folder that ``text`` names, or None.

    Absolute paths are taken as they are; a relative path is tried against the current
    directory, then against the repository root.
    """
    try:
        path = Path(text).expanduser()
        candidates = [path] if path.is_absolute() else [Path.cwd() / path, REPO_ROOT / path]
        for candidate in candidates:
            if candidate.exists():
                return candidate.resolve()
    except (OSError, ValueError, RuntimeError):  # a NUL byte, a name too long, an unknown ~user
        return None
    return None


def _existing(name: str, value: Any, want_dir: bool) -> Path:
    what = "folder" if want_dir else "file"
    if not isinstance(value, str) or not value:
        raise ConfigError(f"config key {name!r}: expected a {what} path, got {_describe(value)}")
    path = resolve_path(value)
    if path is None or path.is_dir() != want_dir:
        where = "" if Path(value).is_absolute() else f" (looked in {Path.cwd()} and {REPO_ROOT})"
        raise ConfigError(f"config key {name!r}: {what} not found: {value}{where}")
    return path


def _as_list(name: str, value: Any) -> list:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, list):
        raise ConfigError(f"config key {name!r}: expected a list, got {_describe(value)}")
    return value


def coerce(name: str, key: Key, value: Any) -> Any:
    """Check one value against its schema entry and return it in canonical form.

    Numbers become int / float, boolean strings become bool ("auto" stays "auto" for ``auto_bool``),
    paths become absolute ``Path`` objects (lists of them for ``dirs``). ``None`` is kept for keys
    whose default is ``None``.
    Raises ``ConfigError`` naming the key.
    """
    if value is None and key.default is None:
        return None
    kind = key.kind
    if kind in ("int", "float"):
        out = _number(name, value, kind, key.minimum, key.maximum, key.above)
    elif kind in ("bool", "auto_bool"):
        out = _boolean(name, value, auto=kind == "auto_bool")
    elif kind == "str":
        if not isinstance(value, str):
            raise ConfigError(f"config key {name!r}: expected a string, got {_describe(value)}")
        if "\0" in value:
            raise ConfigError(f"config key {name!r}: the string holds a NUL character, got {_describe(value)}")
        out = value
    elif kind in ("ints", "floats"):
        items = _as_list(name, value)
        try:
            out = [_number(name, v if not isinstance(v, str) else hjson.loads(v), kind[:-1], key.minimum,
                           key.maximum, key.above) for v in items]
        except (hjson.HjsonDecodeError, RecursionError):
            raise ConfigError(f"config key {name!r}: expected a list of numbers, got {_describe(value)}") from None
    elif kind in ("dir", "file"):
        out = _existing(name, value, want_dir=kind == "dir")
    else:  # dirs
        out = [_existing(name, v, want_dir=True) for v in _as_list(name, value)]
    if key.pair and not (out == [] and key.default == []):
        check_pair(f"config key {name!r}", out, key.minimum, key.maximum, error=ConfigError)
    if isinstance(out, list) and len(out) < key.min_items:
        raise ConfigError(f"config key {name!r}: expected at least {key.min_items} value(s), got {_describe(value)}")
    if isinstance(out, list) and key.max_items is not None and len(out) > key.max_items:
        raise ConfigError(f"config key {name!r}: expected at most {key.max_items} value(s), got {_describe(value)}")
    if key.choices:
        out = _choose(name, out, key.choices)
    return out


def _choose(name: str, value: Any, choices: tuple) -> Any:
    for choice in choices:
        if value == choice or (isinstance(value, str) and isinstance(choice, str)
                               and value.lower() == choice.lower()):
            return choice
    allowed = ", ".join(repr(c) for c in choices)
    raise ConfigError(f"config key {name!r}: must be one of {allowed}, got {value!r}")


def build_config(schema: Mapping[str, Key], values: Mapping[str, Any],
                 overrides: Mapping[str, Any] = (), source: str = "<config>") -> Config:
    """Check ``values`` (from a file) updated by ``overrides`` (from the command line).

    Returns a ``Config`` holding every schema key (defaults filled in). Raises ``ConfigError``
    for an unknown key (in ``source`` or in an override), a missing required key, or a bad value.
    """
    overrides = dict(overrides)
    for origin, mapping in ((source, values), ("--opt", overrides)):
        unknown = sorted(set(mapping) - set(schema))
        if unknown:
            raise ConfigError(f"{origin}: unknown config key(s) {', '.join(map(repr, unknown))}; "
                              f"run with --help to list the keys")
    merged = {**values, **overrides}
    out = {}
    for name, key in schema.items():
        if name not in merged:
            if key.default is REQUIRED:
                raise ConfigError(f"{source}: required config key {name!r} is missing")
            out[name] = coerce(name, key, key.default) if key.default is not None else None
        else:
            out[name] = coerce(name, key, merged[name])
    return Config(out, source)


def load_config(path: str | os.PathLike, schema: Mapping[str, Key],
                overrides: Sequence[str] = ()) -> Config:
    """Read ``path``, apply ``key=value`` overrides and check the result against ``schema``."""
    return build_config(schema, read_config_file(path), parse_overrides(overrides), source=str(path))


def describe_schema(schema: Mapping[str, Key]) -> str:
    """A text table of the keys (name, kind, default, help) for ``--help``."""
    lines = []
    for name, key in schema.items():
        default = "required" if key.default is REQUIRED else f"default {key.default!r}"
        choices = f"; one of {', '.join(map(str, key.choices))}" if key.choices else ""
        kind = f"{key.kind[:-1]} range" if key.pair else key.kind
        lines.append(f"  {name} ({kind}, {default}{choices}): {key.help}")
    return "\n".join(lines)
