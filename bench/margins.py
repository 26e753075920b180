"""Tolerance margins of the conformance tests under several CPU capabilities.

Runs ``pytest -m conformance`` once per setting in a child process, with ``VIRNET_MARGINS``
pointing at a JSON-lines log that the tests' ``margin`` fixture fills (tests/conftest.py), and
tabulates, for every checked quantity (worst case over the test's parametrisations), the
bound, the largest error under each setting and the margin = bound / largest error.

    python bench/margins.py                       # native, ATen default and AVX2, oneDNN capped at AVX2
    python bench/margins.py --out bench/results/margins_cpu.json

Writes the JSON (machine, versions, command, every comparison) and a markdown table beside it.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import RESULTS_DIR, command_line, cpu_class, versions  # noqa: E402
from utils.errors import run_main  # noqa: E402
from utils.inference.tables import markdown_table, write_json  # noqa: E402

# (label, environment): ATen's vector kernels and oneDNN's ISA are chosen at start-up.
SETTINGS = {
    "native": {},
    "ATen default": {"ATEN_CPU_CAPABILITY": "default"},
    "ATen avx2": {"ATEN_CPU_CAPABILITY": "avx2"},
    "oneDNN AVX2": {"ONEDNN_MAX_CPU_ISA": "AVX2"},
}


def run_setting(env_extra: dict, log: Path) -> list:
    """Run the conformance tests with `env_extra`; returns the logged comparisons. A failing
    test is reported (its comparison is in the log) but does not stop the table."""
    env = {**os.environ, **env_extra, "VIRNET_MARGINS": str(log), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "conformance", "-p", "no:cacheprovider"],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr.strip()
    print(f"  {env_extra or 'native'}: {summary}")
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def group_key(record: dict) -> tuple:
    """(test file::function, quantity): parametrisations of one test fall into one row."""
    test = re.sub(r"\[.*\]$", "", record["test"]).replace("tests/", "")
    return test, record["quantity"]


def tabulate(results: dict) -> tuple:
    """Rows (test, quantity, bound(s), worst error per setting, worst margin) and the header; the
    margin is the smallest bound / error over every case and setting of the row."""
    worst, bounds, margins = defaultdict(dict), defaultdict(set), {}
    for label, records in results.items():
        for r in records:
            key = group_key(r)
            worst[key][label] = max(worst[key].get(label, 0.0), r["error"])
            bounds[key].add(r["bound"])
            ratio = r["bound"] / r["error"] if r["error"] > 0 else float("inf")
            margins[key] = min(margins.get(key, float("inf")), ratio)
    header = ["test", "quantity", "bound", *[f"error ({label})" for label in results], "margin"]
    rows = []
    for key in sorted(worst):
        errors = [worst[key].get(label) for label in results]
        bound = " / ".join(f"{b:.1e}" for b in sorted(bounds[key]))
        margin = "exact" if margins[key] == float("inf") else f"{margins[key]:.3g}x"
        rows.append([*key, bound, *[("-" if e is None else f"{e:.2e}") for e in errors], margin])
    return header, rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    parser.add_argument("--out", default=None, help="JSON file (default: bench/results/margins_cpu.json)")
    args = parser.parse_args()
    out = Path(args.out) if args.out else RESULTS_DIR / "margins_cpu.json"
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, label in enumerate(args.settings):
            results[label] = run_setting(SETTINGS[label], Path(tmp) / f"{i}.jsonl")
    header, rows = tabulate(results)
    table = markdown_table(header, rows, pad=False).rstrip("\n")
    machine = cpu_class()
    cpu = (f"{machine['cpu']}; AVX512-BF16 {'yes' if machine['avx512_bf16'] else 'no'}, "
           f"AMX {'yes' if machine['amx'] else 'no'}")
    write_json(out, {"machine": machine, "versions": versions(), "command": command_line(),
                     "settings": {label: SETTINGS[label] for label in results}, "comparisons": results})
    out.with_suffix(".md").write_text(f"CPU: {cpu}\n\n{table}\n")
    print(f"CPU: {cpu}\n{table}")
    failed = [row for row in rows if row[-1] != "exact" and float(row[-1][:-1]) <= 1]
    return 1 if failed else 0


if __name__ == "__main__":
    run_main(main)
