"""The documentation holds: every relative link of README.md, ARCHITECTURE.md, docs/*.md and the
READMEs of bench/ and model_zoo/ resolves (files and #anchors), every repository file they name and
every flag they give a demo exists, the README stays a front page, its quick-start commands run as written and write what it
says, and docs/api.md's example runs on the shipped files."""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from skimage import data

REPO = Path(__file__).resolve().parents[1]
PAGES = sorted([REPO / "README.md", REPO / "ARCHITECTURE.md", REPO / "bench" / "README.md", REPO / "model_zoo" / "README.md",
                *(REPO / "docs").glob("*.md")])
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^```")


def _prose(text: str) -> str:
    """``text`` without its fenced code blocks (links there are code, not links)."""
    keep, inside = [], False
    for line in text.splitlines():
        if FENCE.match(line.strip()):
            inside = not inside
            continue
        if not inside:
            keep.append(line)
    return "\n".join(keep)


def _slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation other than '-' and '_' dropped,
    spaces to hyphens (inline code marks dropped too)."""
    text = heading.strip().lower().replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    """The anchors of a markdown page's headings (repeated headings get -1, -2, ... as on GitHub)."""
    seen: dict[str, int] = {}
    out = set()
    for line in _prose(page.read_text(encoding="utf-8")).splitlines():
        match = re.match(r"^#{1,6}\s+(.*)$", line)
        if match:
            slug = _slug(match[1])
            count = seen.get(slug, 0)
            out.add(slug if count == 0 else f"{slug}-{count}")
            seen[slug] = count + 1
    return out


def _links(page: Path) -> list[str]:
    """The link targets of a page's prose (images included)."""
    return LINK.findall(_prose(page.read_text(encoding="utf-8")))


def test_the_pages_exist_and_have_links():
    names = {p.relative_to(REPO).as_posix() for p in PAGES}
    for name in ("README.md", "bench/README.md", "docs/install.md", "docs/inference.md", "docs/training.md",
                 "docs/reproduce.md", "docs/model_zoo.md", "docs/faithfulness.md", "docs/benchmarks.md",
                 "docs/api.md", "docs/glossary.md"):
        assert name in names, name
    assert len(_links(REPO / "README.md")) > 15


def test_slugs_follow_github():
    assert _slug("Blind super-resolution (`demo_test_sisr.py`)") == "blind-super-resolution-demo_test_sisrpy"
    assert _slug("The SR loss's blur: FFT against grouped convolution") == "the-sr-losss-blur-fft-against-grouped-convolution"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_relative_link_resolves(page):
    broken = []
    for target in _links(page):
        if re.match(r"^[a-z]+:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = page if not path else (page.parent / path).resolve()
        if not file.exists():
            broken.append(f"{target}: no file {file}")
        elif anchor and file.suffix == ".md" and anchor not in _anchors(file):
            broken.append(f"{target}: no heading '#{anchor}' in {file.relative_to(REPO)}")
    assert not broken, "\n".join(broken)


def test_readme_is_a_front_page():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 250
    first_screen = text[:text.index("## Model zoo")]
    for command in ("demo_test_syn.py -i", "demo_test_denoising_real.py -i", "demo_test_sisr.py --sf 4 -i"):
        assert command in first_screen, command
    assert "source .venv/bin/activate" in text and "../shared" in first_screen
    assert "@article{" in text and "@inproceedings{" in text and "arxiv.org/abs/2008.10796" in text
    assert (REPO / "LICENSE").read_text().startswith("MIT License")


def test_the_framework_figure_is_drawn_small(tmp_path):
    sys.path.insert(0, str(REPO / "docs"))
    try:
        import make_figures
    finally:
        sys.path.pop(0)
    out = make_figures.draw(tmp_path / "framework.png")
    assert cv2.imread(str(out)) is not None and out.stat().st_size < 300_000
    assert (REPO / "docs/figures/framework.png").stat().st_size < 300_000


def _marked_blocks(page: Path, marker: str) -> list[str]:
    """The fenced code blocks that follow a ``<!-- marker -->`` line."""
    lines, blocks = page.read_text(encoding="utf-8").splitlines(), []
    for i, line in enumerate(lines):
        if line.strip() == f"<!-- {marker} -->":
            start = i + 2 if lines[i + 1].startswith("```") else None
            assert start is not None, f"{page.name}: <!-- {marker} --> is not followed by a fenced block"
            end = next(j for j in range(start, len(lines)) if lines[j].startswith("```"))
            blocks.append("\n".join(lines[start:end]))
    return blocks


def _promised_files(comment: str) -> list[str]:
    """The result files a command's comment names: 'results/x/NAME.png + NAME_noise_std.png' and
    'noise_levels.{csv,json,md}' after a results/ folder, braces expanded."""
    folder, files = None, []
    for token in re.findall(r"[\w./{},-]+\.(?:png|csv|json|md|\{[a-z,]+\})", comment):
        if token.startswith("results/"):
            folder, token = token.rsplit("/", 1)
        if folder is None:
            continue
        brace = re.match(r"^(.*)\.\{([a-z,]+)\}$", token)
        names = [f"{brace[1]}.{ext}" for ext in brace[2].split(",")] if brace else [token]
        files += [f"{folder}/{name}" for name in names]
    return files


def _workspace(tmp_path: Path) -> Path:
    """A copy of the repository's top level made of links (outputs land in the copy), with the
    README's example inputs: noisy.png, photo.jpg and lr.png (small, so the commands take seconds)."""
    work = tmp_path / "clone"
    work.mkdir()
    for entry in REPO.iterdir():
        if entry.name not in (".git", "outputs", "results", "runs", "data"):
            (work / entry.name).symlink_to(entry)
    clean = data.chelsea()[:96, :128]
    noisy = np.clip(clean + np.random.default_rng(0).normal(0, 20, clean.shape), 0, 255).astype(np.uint8)
    cv2.imwrite(str(work / "noisy.png"), noisy[:, :, ::-1])
    cv2.imwrite(str(work / "photo.jpg"), noisy[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])
    cv2.imwrite(str(work / "lr.png"), cv2.resize(clean, (32, 24), interpolation=cv2.INTER_AREA)[:, :, ::-1])
    return work


@pytest.mark.slow
def test_readme_quick_start_commands_run_as_written(tmp_path):
    blocks = _marked_blocks(REPO / "README.md", "quickstart")
    commands = [line for block in blocks for line in block.splitlines() if line.strip()]
    assert len(commands) >= 5
    work = _workspace(tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for line in commands:
        command, _, comment = line.partition("#")
        argv = command.split()
        assert argv[0] == "python", line
        done = subprocess.run([sys.executable, *argv[1:]], cwd=work, env=env, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, f"{line}\n{done.stderr[-2000:]}"
        for name in _promised_files(comment):
            assert (work / name).is_file(), f"{line}: {name} not written"


def test_the_promised_files_are_read_from_the_comments():
    comment = " Gaussian noise: results/syn/noisy.png + noisy_noise_std.png (heat map), noise_levels.{csv,json}"
    assert _promised_files(comment) == ["results/syn/noisy.png", "results/syn/noisy_noise_std.png",
                                        "results/syn/noise_levels.csv", "results/syn/noise_levels.json"]


@pytest.mark.slow
def test_api_example_runs_on_the_shipped_files(tmp_path):
    (block,) = _marked_blocks(REPO / "docs/api.md", "api-example")
    script = tmp_path / "example.py"
    script.write_text(block)
    done = subprocess.run([sys.executable, str(script)], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert lines[0] == "denoising-syn 4 model_zoo/virnet_denoising_syn_compact.safetensors"
    assert float(lines[1].split(" dB")[0]) > 30  # chelsea crop, noise 25: the shipped denoiser restores it
    assert lines[2] == "(1, 3, 128, 128) (1, 3, 512, 512) (1, 3)"
    assert lines[3].startswith("['denoising-real', 'denoising-syn', 'sisr']")


def _demo_commands() -> list[tuple[str, str, list[str]]]:
    """(page, script, flags) of every demo command in the fenced blocks of the pages."""
    out = []
    for page in PAGES:
        inside = False
        for line in page.read_text(encoding="utf-8").splitlines():
            if FENCE.match(line.strip()):
                inside = not inside
                continue
            match = re.search(r"python (demo_test_\w+)\.py(.*)", line) if inside else None
            if match:
                command = match[2].split("#")[0]
                out.append((page.name, match[1], re.findall(r"(?<!\S)(--?[a-z][\w-]*)", command)))
    return out


def test_every_flag_the_docs_give_a_demo_exists():
    import demo_test_denoising_real
    import demo_test_sisr
    import demo_test_syn
    parsers = {m.__name__: m.build_parser() for m in (demo_test_syn, demo_test_sisr, demo_test_denoising_real)}
    known = {name: {s for action in p._actions for s in action.option_strings} for name, p in parsers.items()}
    commands = _demo_commands()
    assert len(commands) > 20
    unknown = [f"{page}: {script} {flag}" for page, script, flags in commands for flag in flags
               if flag not in known[script]]
    assert not unknown, "\n".join(unknown)


def test_every_repository_file_the_pages_name_exists():
    named = set()
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        named |= {f"tests/{m}" for m in re.findall(r"(?<![/\w])(test_\w+\.py)", text)}
        named |= set(re.findall(r"`((?:utils|bench|datasets|networks|loss|configs|tests|docs)/[\w/]+\.(?:py|json|sh|md))`",
                                text))
    assert len(named) > 30
    missing = sorted(name for name in named if not (REPO / name).is_file())
    assert not missing, missing
