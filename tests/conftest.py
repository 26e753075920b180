"""Shared pytest fixtures: repository root, the ground-truth folder ../shared, the margin check of
the conformance tests and their ``--device`` (``pytest -m conformance --device cuda``)."""
import json
import os
import random
import zlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def pytest_addoption(parser):
    """``--device``: where the conformance tests run their torch computations (default cpu)."""
    parser.addoption("--device", default="cpu",
                     help="torch device of the conformance tests: cpu (default), cuda, cuda:N or mps; "
                          "TF32 is turned off, the bounds are the same")


@pytest.fixture(scope="session")
def device(request):
    """The torch device the conformance tests move their inputs and models to (``--device``),
    with CUDA's TF32 turned off so that float32 stays IEEE float32; fails when it is absent."""
    from utils.devices import DeviceError, choose_device, set_tf32

    name = request.config.getoption("--device")
    try:
        chosen = choose_device(name)
    except DeviceError as err:
        pytest.fail(str(err))
    set_tf32(False)
    return chosen


@pytest.fixture(scope="session")
def root() -> Path:
    """The repository root."""
    return ROOT


@pytest.fixture(scope="session")
def shared() -> Path:
    """The ground-truth folder beside the repository (conformance fixtures, test sets, training sample)."""
    if not SHARED.is_dir():
        pytest.fail(f"ground-truth folder not found: {SHARED} (expected ../shared beside the repo)")
    return SHARED


@pytest.fixture
def margin(request):
    """``margin(quantity, error, bound)``: assert a conformance comparison ``error < bound``.

    When the environment variable ``VIRNET_MARGINS`` names a file, every comparison is first
    appended to it as a JSON line {test, quantity, error, bound}; ``bench/margins.py`` runs the
    conformance tests under several CPU capabilities and tabulates those lines."""
    def check(quantity: str, error: float, bound: float) -> None:
        error = float(error)
        log = os.environ.get("VIRNET_MARGINS")
        if log:
            with open(log, "a") as f:
                f.write(json.dumps({"test": request.node.nodeid, "quantity": quantity,
                                    "error": error, "bound": bound}) + "\n")
        assert error < bound, f"{quantity}: error {error:.3g} is not below the bound {bound:g}"

    return check


@pytest.fixture(autouse=True)
def one_thread():
    """Run each test with one torch thread: the test models are tiny, and OpenMP hand-offs
    between many small ops cost more than they save (badly so on shared cores). The previous
    thread count is restored afterwards."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def seeded_rngs(request):
    """Seed Python's, NumPy's and torch's global generators from the test's id before each test, so
    that a test's random inputs are the same in every run and in any order of the suite (a result
    that held once holds again; tests that need other draws seed their own generators)."""
    import numpy as np
    import torch

    seed = zlib.crc32(request.node.nodeid.encode())
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@pytest.fixture(scope="session")
def small_checkpoint(tmp_path_factory):
    """Factory: ``small_checkpoint(task, **overrides)`` saves a randomly initialised (seed 0) model of
    ``task`` with the given constructor overrides, exported with its 'arch' entry, and returns the
    file's path."""
    import torch

    import networks
    from utils.training.state import export_model

    def make(task: str, **overrides) -> Path:
        torch.manual_seed(0)
        net = networks.build_model(task, **overrides)
        return export_model(net, tmp_path_factory.mktemp("ckpt") / f"small_{task}.pth")

    return make


@pytest.fixture(scope="session")
def released_checkpoint(tmp_path_factory):
    """Factory: ``released_checkpoint(task)`` saves ``{'model_state_dict': zeros}`` with exactly the
    keys and shapes of the released ``task`` architecture (no 'arch' entry, as the authors' files)
    and returns the file's path."""
    import torch

    import networks

    def make(task: str) -> Path:
        with torch.device("meta"):
            net = networks.build_model(task)
        path = tmp_path_factory.mktemp("released") / f"{task}.pth"
        torch.save({"model_state_dict": {k: torch.zeros(v.shape) for k, v in net.state_dict().items()}}, path)
        return path

    return make
