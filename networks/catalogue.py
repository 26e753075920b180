"""The weights catalogue: reads ``model_zoo/catalogue.json``, the one description of every weights
file (the shipped compact files and the authors' released checkpoints): its task, architecture,
file name, URL, SHA-256, scale, parameter count and protocol results. The demos' default weights,
the download command (``utils.download_weights``), the model-zoo docs and the tests read it here.
Like the rest of ``networks``, this module imports nothing of the project.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

MODEL_ZOO = Path(__file__).resolve().parents[1] / "model_zoo"
"""The folder of the shipped weights and of the authors' released files."""
CATALOGUE = MODEL_ZOO / "catalogue.json"
"""The catalogue file."""


@dataclass(frozen=True)
class WeightsEntry:
    """One weights file of the catalogue (see ``CATALOGUE``'s 'about').

    name: its key (the download command's TASK for a released file). origin: 'shipped' or
    'released'. task: a ``networks.TASKS`` name. architecture: constructor arguments that differ
    from the task's released ones. file: its name in ``MODEL_ZOO``. url: where it is downloaded from
    (None for a shipped file). sha256: its pinned SHA-256 (None: none pinned). scale: the SR scale
    factor (None for a denoiser). parameters: its parameter count. demo_default: a candidate for the
    demos' default of its task and scale. trained_by: how it was made. results: protocol results
    (name, psnr, ssim, source, at), or None where not measured here.
    """

    name: str
    origin: str
    task: str
    architecture: Mapping[str, Any]
    file: str
    url: Optional[str]
    sha256: Optional[str]
    scale: Optional[int]
    parameters: int
    demo_default: bool
    trained_by: str
    results: Optional[List[Mapping[str, Any]]]

    @property
    def path(self) -> Path:
        """Where the file lies (or would lie) in ``MODEL_ZOO``."""
        return MODEL_ZOO / self.file


def read_catalogue(path: Path = CATALOGUE) -> Dict[str, WeightsEntry]:
    """The entries of the catalogue file ``path``, by name, in the file's order. Raises ValueError
    naming the file when it cannot be read or an entry lacks a field."""
    try:
        weights = json.loads(path.read_text(encoding="utf-8"))["weights"]
        return {name: WeightsEntry(name=name, **fields) for name, fields in weights.items()}
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"cannot read the weights catalogue {path} ({err}); restore it from git") from None


@lru_cache(maxsize=None)
def weights_catalogue() -> Dict[str, WeightsEntry]:
    """The entries of ``CATALOGUE`` (read once)."""
    return read_catalogue()


def default_weights(task: str, sf: Optional[int] = None) -> Path:
    """The weights file the demos load for ``task`` (and scale ``sf`` for SR) when none is given: of
    the catalogue's ``demo_default`` entries for them, the first whose file is in ``MODEL_ZOO`` (e.g.
    the authors' released file once downloaded), else the last (a shipped file). Raises ValueError
    when the catalogue has none."""
    candidates = [entry for entry in weights_catalogue().values()
                  if entry.demo_default and entry.task == task and entry.scale == sf]
    if not candidates:
        what = f"{task!r}" + (f" at scale {sf}" if sf is not None else "")
        raise ValueError(f"the weights catalogue {CATALOGUE} names no default weights for {what}")
    return next((e.path for e in candidates if e.path.is_file()), candidates[-1].path)
