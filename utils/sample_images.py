"""Sample photographs for the small training configs on a clone alone.

The ``*_small`` configs train on ``../shared/trainsets/CBSD432-sample`` and validate on a test set of
``../shared/testsets``, folders that live beside the repository, not in it. With config key
``fallback_to_samples: true`` a data folder of the config file that is not there is replaced by
photographs that scikit-image installs with itself (``skimage.data``), written once as PNG files under
``data/skimage_sample/`` of the repository, and the trainer says so in one line at start.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

from utils.config import REPO_ROOT, Config, Key, build_config, parse_overrides, read_config_file, resolve_path
from utils.image_io import list_images, write_image

SAMPLE_DIR = REPO_ROOT / "data" / "skimage_sample"
"""Where the sample photographs are written (``data/`` is ignored by git)."""
TRAIN_PHOTOS = ("astronaut", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina",
                "motorcycle_left")
"""The ``skimage.data`` colour photographs to train on (7, 300 to 1411 pixels a side)."""
VAL_PHOTOS = ("chelsea", "motorcycle_right")
"""The ``skimage.data`` colour photographs to validate on (none of them is trained on)."""
FALLBACK_KEYS = ("train_dirs", "val_dir")
"""The data keys a missing folder of which is replaced by the samples (train: TRAIN_PHOTOS, val: VAL_PHOTOS)."""


def _photo(name: str):
    """The ``skimage.data`` photograph ``name`` as H x W x 3 uint8 RGB (the stereo pair's views by side)."""
    from skimage import data

    if name.startswith("motorcycle_"):
        left, right, _ = data.stereo_motorcycle()
        return left if name.endswith("left") else right
    return getattr(data, name)()


def sample_folders(root: Path | None = None) -> dict[str, Path]:
    """Write the sample photographs as ``root/train/NAME.png`` and ``root/val/NAME.png`` (``root``:
    ``SAMPLE_DIR`` by default; each file once; atomic writes, so processes started together do not
    clash) and return ``{'train': folder, 'val': folder}``."""
    root = SAMPLE_DIR if root is None else root
    folders = {}
    for split, names in (("train", TRAIN_PHOTOS), ("val", VAL_PHOTOS)):
        folder = root / split
        folder.mkdir(parents=True, exist_ok=True)
        for name in names:
            if not (folder / f"{name}.png").is_file():
                write_image(folder / f"{name}.png", _photo(name))
        folders[split] = folder
    return folders


def _missing(value: Any) -> bool:
    """Whether a config path value (a folder or a list of folders) names a folder that is not there."""
    paths = value if isinstance(value, list) else [value]
    return any(isinstance(p, str) and (resolve_path(p) is None or not resolve_path(p).is_dir()) for p in paths)


def load_config_with_fallback(path: str | os.PathLike, schema: Mapping[str, Key],
                              overrides: Sequence[str] = ()) -> Config:
    """``utils.config.load_config`` with the samples in place of missing data folders.

    When the file and ``overrides`` set ``fallback_to_samples`` true, each of ``FALLBACK_KEYS`` that the
    file itself sets (not an ``--opt``) to a folder that is not there becomes the samples' folder
    (``sample_folders``), and one line on stderr (rank 0) says so. Otherwise the same as ``load_config``.
    Raises ``ConfigError`` as it does.
    """
    values, extra = read_config_file(path), parse_overrides(overrides)
    merged = {**values, **extra}
    if str(merged.get("fallback_to_samples", "false")).lower() in ("true", "1"):
        missing = [k for k in FALLBACK_KEYS if k in values and k not in extra and _missing(values[k])]
        if missing:
            folders = sample_folders()
            for key in missing:
                folder = str(folders["train" if key == "train_dirs" else "val"])
                values = {**values, key: [folder] if isinstance(values[key], list) else folder}
            if os.environ.get("RANK", "0") == "0":
                print(f"note: {', '.join(k + ' ' + str(merged[k]) for k in missing)} not found: using scikit-image's "
                      f"sample photographs instead ({len(list_images(folders['train']))} to train on, "
                      f"{len(list_images(folders['val']))} to validate on, in {folders['train'].parent}; "
                      f"fallback_to_samples)", file=sys.stderr)
    return build_config(schema, values, extra, source=str(path))
