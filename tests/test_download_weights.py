"""utils.download_weights: released checkpoints are fetched through torch.hub from file:// mirrors
built here from random weights (never the network), kept only when they load strictly into the
released architecture and match the recorded SHA-256; every failure is one line and leaves
nothing in the destination folder."""
import email.message
import io
import json
import subprocess
import sys
import urllib.error

import pytest
import torch

import networks
from utils import download_weights as dw
from utils.download_weights import RECORD_NAME, WeightsError, fetch_released, main, verify_released


def _random_checkpoint(path, arch, seed, prefix=""):
    """Save random weights with the keys and shapes of the released `arch`, as the authors do."""
    with torch.device("meta"):
        net = networks.build_model(arch)
    gen = torch.Generator().manual_seed(seed)
    state = {prefix + k: torch.randn(v.shape, generator=gen) for k, v in net.state_dict().items()}
    torch.save({"model_state_dict": state}, path)
    return path


@pytest.fixture(scope="module")
def mirror(tmp_path_factory):
    """Source files: two different valid x4 checkpoints, a denoiser, random bytes, a truncated file."""
    folder = tmp_path_factory.mktemp("mirror")
    files = {"sisr": _random_checkpoint(folder / "sisr.pth", "sisr", 0, prefix="module."),
             "sisr_other": _random_checkpoint(folder / "sisr_other.pth", "sisr", 1),
             "denoiser": _random_checkpoint(folder / "denoiser.pth", "denoising-syn", 0)}
    files["corrupt"] = folder / "corrupt.pth"
    files["corrupt"].write_bytes(torch.randint(0, 256, (4096,), dtype=torch.uint8).numpy().tobytes())
    files["truncated"] = folder / "truncated.pth"
    data = files["sisr"].read_bytes()
    files["truncated"].write_bytes(data[: len(data) // 2])
    return files


@pytest.fixture()
def registry(tmp_path, monkeypatch):
    """A copy of the weights catalogue with no pinned SHA-256 (the tests' random files are not the
    release); returns a function pinning one."""
    models = json.loads(dw.CATALOGUE.read_text())["weights"]
    for entry in models.values():
        entry["sha256"] = None
    path = tmp_path / "catalogue.json"

    def pin(task=None, sha256=None):
        if task:
            models[task]["sha256"] = sha256
        path.write_text(json.dumps({"weights": models}))

    pin()
    monkeypatch.setattr(dw, "CATALOGUE", path)
    return pin


@pytest.fixture()
def dest(tmp_path):
    folder = tmp_path / "zoo"
    folder.mkdir()
    return folder


def _fails(capsys, argv, *fragments):
    """Run the CLI, expecting exit 1 with one stderr line holding `fragments`; returns the line."""
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    return err


def test_success_records_sha256_and_refuses_a_changed_file(registry, mirror, dest, capsys):
    url = mirror["sisr"].as_uri()
    assert main(["sisr-x4", "--url", url, "--dest", str(dest)]) == 0
    target = dest / "virnet_sisr_x4.pth"
    assert target.read_bytes() == mirror["sisr"].read_bytes()
    digest = dw.file_sha256(target)
    assert json.loads((dest / RECORD_NAME).read_text()) == {"virnet_sisr_x4.pth": digest}
    assert f"saved {target}" in capsys.readouterr().out
    verify_released(target, "sisr-x4")

    assert main(["sisr-x4", "--url", url, "--dest", str(dest)]) == 0
    assert "already there and verified" in capsys.readouterr().out

    # another valid x4 checkpoint is refused: its SHA-256 is not the recorded one
    _fails(capsys, ["sisr-x4", "--force", "--url", mirror["sisr_other"].as_uri(), "--dest", str(dest)],
           mirror["sisr_other"].as_uri(), digest, RECORD_NAME)
    assert target.read_bytes() == mirror["sisr"].read_bytes()
    assert sorted(p.name for p in dest.iterdir()) == [RECORD_NAME, "virnet_sisr_x4.pth"]

    # a later load of a changed file is refused too
    target.write_bytes(mirror["sisr_other"].read_bytes())
    with pytest.raises(WeightsError, match="fetch it again with: python -m utils.download_weights sisr-x4"):
        verify_released(target, "sisr-x4")
    _fails(capsys, ["sisr-x4", "--dest", str(dest)], str(target), "--force")


def test_pinned_sha256_is_checked_and_nothing_recorded(registry, mirror, dest, capsys):
    registry("sisr-x3", "0" * 64)
    _fails(capsys, ["sisr-x3", "--url", mirror["sisr"].as_uri(), "--dest", str(dest)], "0" * 64)
    assert list(dest.iterdir()) == []
    registry("sisr-x3", dw.file_sha256(mirror["sisr"]))
    fetch_released("sisr-x3", dest, mirror["sisr"].as_uri())
    assert [p.name for p in dest.iterdir()] == ["virnet_sisr_x3.pth"]
    verify_released(dest / "virnet_sisr_x3.pth", "sisr-x3")


@pytest.mark.parametrize("source, message", [
    ("corrupt", "cannot read checkpoint"),
    ("truncated", "cannot read checkpoint"),
    ("denoiser", "these weights are a 'denoising-syn' model"),
    ("missing", "No such file"),
])
def test_bad_source_is_refused_and_leaves_nothing(registry, mirror, dest, capsys, source, message):
    url = (mirror["sisr"].parent / "missing.pth").as_uri() if source == "missing" else mirror[source].as_uri()
    _fails(capsys, ["sisr-x4", "--url", url, "--dest", str(dest)], url, message, "by hand")
    assert list(dest.iterdir()) == []


class _Response(io.BytesIO):
    """A urlopen() answer that sends `data` and then fails with `error`."""

    def __init__(self, data, error):
        super().__init__(data)
        self.error = error

    def info(self):
        headers = email.message.Message()
        headers["Content-Length"] = str(2 * len(self.getvalue()))
        return headers

    def read(self, size=-1):
        chunk = super().read(size)
        if not chunk:
            raise self.error
        return chunk


@pytest.mark.parametrize("error", [ConnectionResetError(104, "Connection reset by peer"), KeyboardInterrupt()])
def test_interrupted_transfer_leaves_nothing(registry, mirror, dest, monkeypatch, capsys, error):
    head = mirror["sisr"].read_bytes()[:1 << 20]
    monkeypatch.setattr(torch.hub, "urlopen", lambda request: _Response(head, error))
    if isinstance(error, KeyboardInterrupt):
        assert main(["sisr-x4", "--dest", str(dest)]) == 130
    else:
        _fails(capsys, ["sisr-x4", "--dest", str(dest)], "Connection reset by peer",
               "check your network or pass --url with a mirror")
    assert list(dest.iterdir()) == []


def test_http_404_names_the_url(registry, dest, monkeypatch, capsys):
    def not_found(request):
        raise urllib.error.HTTPError(request.full_url, 404, "Not Found", {}, None)

    monkeypatch.setattr(torch.hub, "urlopen", not_found)
    url = dw.released_models()["denoising-real"]["url"]
    _fails(capsys, ["denoising-real", "--dest", str(dest)], f"cannot download {url} (HTTP 404 Not Found)")
    assert list(dest.iterdir()) == []


def test_verify_released_names_the_command(tmp_path):
    with pytest.raises(WeightsError, match=f"download_weights sisr-x2 --dest {tmp_path}$"):
        verify_released(tmp_path / "virnet_sisr_x2.pth", "sisr-x2")
    with pytest.raises(WeightsError, match="unknown task 'sisr'"):
        verify_released(tmp_path / "virnet_sisr_x2.pth", "sisr")


def test_cli_failure_is_one_line_without_traceback(tmp_path):
    url = (tmp_path / "absent.pth").as_uri()
    run = subprocess.run([sys.executable, "-m", "utils.download_weights", "sisr-x2", "--url", url,
                          "--dest", str(tmp_path / "zoo")], capture_output=True, text=True,
                         cwd=dw.ZOO.parent, timeout=60)
    assert run.returncode == 1
    assert run.stderr.count("\n") == 1 and "Traceback" not in run.stderr and url in run.stderr
    assert list((tmp_path / "zoo").iterdir()) == []
    multi = subprocess.run([sys.executable, "-m", "utils.download_weights", "all", "--url", url],
                           capture_output=True, text=True, cwd=dw.ZOO.parent, timeout=60)
    assert multi.returncode == 1 and multi.stderr.count("\n") == 1


def test_leftovers_of_a_killed_download_are_removed_at_the_next_start(registry, mirror, dest, capsys):
    tmp = ".virnet_sisr_x4.pth.0123456789ab.tmp.pth"
    leftovers = [dest / tmp, dest / f"{tmp}.{'f' * 32}.partial"]  # as kill -9 leaves atomic_path's and torch.hub's
    others = [dest / ".other.pth.0123456789ab.tmp.pth", dest / "notes.partial", dest / "virnet_sisr_x4.pth.partial"]
    for path in leftovers + others:
        path.write_bytes(b"half")
    assert main(["sisr-x4", "--url", mirror["sisr"].as_uri(), "--dest", str(dest)]) == 0
    assert "removed 2 leftover file(s) of an interrupted download" in capsys.readouterr().out
    assert not any(p.exists() for p in leftovers) and all(p.exists() for p in others)
    assert (dest / "virnet_sisr_x4.pth").is_file()
