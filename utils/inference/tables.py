"""Results tables as the demos and bench/ write them: CSV, JSON and markdown, atomically."""
from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from utils.image_io import atomic_write


def write_text(path: os.PathLike, text: str) -> None:
    """Write a UTF-8 text file atomically, creating its folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_csv(path: os.PathLike, rows: Sequence[dict]) -> None:
    """Write ``rows`` (dicts with the same keys, in order) as CSV with a header, atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else [], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buffer.getvalue())


def write_json(path: os.PathLike, obj: object) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    write_text(path, json.dumps(obj, indent=2) + "\n")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]], pad: bool = True) -> str:
    """A GitHub markdown table, cells formatted with ``str``, ending in a newline; ``pad`` aligns
    the columns (else one space around each cell and ``---`` rules)."""
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[k]) for row in cells) if pad else 0 for k in range(len(header))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) if pad else "---" for w in widths) + "|")
    return "\n".join(lines) + "\n"


def grouped_means(rows: Sequence[dict], keys: Sequence[str], metrics: Sequence[str]) -> dict:
    """Means of ``metrics`` over ``rows`` grouped by the values of ``keys``, as nested dicts in order
    of first appearance: rows[k][keys[0]] -> ... -> {metric: mean}; without keys {metric: mean}."""
    if not keys:
        return {m: float(np.mean([r[m] for r in rows])) for m in metrics}
    groups: dict = {}
    for row in rows:
        groups.setdefault(row[keys[0]], []).append(row)
    return {value: grouped_means(group, keys[1:], metrics) for value, group in groups.items()}


def mean_rows(means: dict, key: str) -> list[dict]:
    """``grouped_means`` by (dataset, ``key``) as table rows {'dataset', key, 'image': 'mean', metrics}."""
    return [{"dataset": d, key: k, "image": "mean", **values} for d, groups in means.items()
            for k, values in groups.items()]


def score_cell(values: dict, metrics: Sequence[str]) -> str:
    """'PSNR / SSIM[ / LPIPS]': ``values`` of ``metrics`` joined by ' / ', PSNRs with 2 decimals, others with 4."""
    return " / ".join(f"{values[m]:.2f}" if m.startswith("psnr") else f"{values[m]:.4f}" for m in metrics)


def score_table(means: dict, header: Sequence[str], methods: Sequence[tuple[str, ...]]) -> str:
    """A protocol's markdown table: for each dataset of ``means`` (``grouped_means`` by dataset and
    column) one row per method, one 'PSNR / SSIM' cell per column (``header`` names the columns).
    ``methods``: (label, PSNR metric, SSIM metric[, more metrics]), e.g. ('VIRNet', 'psnr', 'ssim');
    a cell shows every metric of its method (``score_cell``)."""
    return markdown_table(["dataset", "method", *header],
                          [[d, label] + [score_cell(values, metrics) for values in groups.values()]
                           for d, groups in means.items() for label, *metrics in methods])


def write_results(stem: Path, rows: Sequence[dict], record: object, table: str,
                  title: Optional[str] = None) -> None:
    """Write ``stem.csv`` (``rows``), ``stem.json`` (``record``) and ``stem.md`` (``table``), then
    print ``title`` (when given) and the table."""
    write_csv(stem.with_name(stem.name + ".csv"), rows)
    write_json(stem.with_name(stem.name + ".json"), record)
    write_text(stem.with_name(stem.name + ".md"), table)
    if title:
        print(title)
    print(table, end="")
