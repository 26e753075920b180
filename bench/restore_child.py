"""One restore in a process of its own, timed phase by phase, for ``bench/startup.py``.

    python bench/restore_child.py RECORD.json ours DEMO.py [demo flags...]
    python bench/restore_child.py RECORD.json reference REFERENCE_DIR [their flags...]

``ours`` imports the demo script (``import``), then runs its ``main`` with the flags, timing the model
loading (``utils.inference.runner.restorer_from_args``: device, weights, run plan) as ``load`` and
every ``Restorer`` call as ``forward``. ``reference`` does the same with the authors'
``scripts/testing_demo.py`` from a checkout of their repository (``--reference``): its imports, their
``load_model`` and ``process_image``; their code hard-codes ``.cuda()``, which is made a no-op so that
it runs on the CPU, and the packages it imports for helpers a restore does not call are stubbed when
missing (``reference_child.use_reference``). ``rest`` is the remainder of ``main``: reading the
image, writing the outputs and pictures. The phases, the total and the exit status go to RECORD.json;
``bench/startup.py`` adds the interpreter's start-up from its own clock.
"""
import importlib
import importlib.util
import json
import sys
import time
from pathlib import Path

START = time.perf_counter()
ROOT = Path(__file__).resolve().parents[1]


class Phases:
    """Seconds spent per phase, accumulated by wrapped functions."""

    def __init__(self):
        self.seconds = {"load": 0.0, "forward": 0.0}

    def timed(self, phase: str, fn):
        """``fn`` wrapped so that its calls add their duration to ``phase``."""
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[phase] += time.perf_counter() - start
        return wrapper


def run_ours(demo: str, argv: list[str], phases: Phases):
    """Import the demo script ``demo`` and run its ``main(argv)``; returns (import end, exit status)."""
    sys.path[0] = str(ROOT)
    module = importlib.import_module(Path(demo).stem)
    imported = time.perf_counter()
    from utils.inference import restorer, runner

    runner.restorer_from_args = phases.timed("load", runner.restorer_from_args)
    restorer.Restorer.__call__ = phases.timed("forward", restorer.Restorer.__call__)
    return imported, module.main(argv)


def run_reference(reference_dir: str, argv: list[str], phases: Phases):
    """Import the authors' ``scripts/testing_demo.py`` and run its ``main`` with ``argv`` on the CPU;
    returns (import end, exit status 0) and records the stubbed packages in ``phases.stubbed``."""
    from reference_child import use_reference  # beside this script

    phases.stubbed = use_reference(reference_dir)
    spec = importlib.util.spec_from_file_location("testing_demo", Path(reference_dir) / "scripts" / "testing_demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    imported = time.perf_counter()
    import torch

    torch.nn.Module.cuda = lambda self, *args, **kwargs: self
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    module.load_model = phases.timed("load", module.load_model)
    module.process_image = phases.timed("forward", module.process_image)
    sys.argv = ["testing_demo.py", *argv]
    module.main()
    return imported, 0


def main(record: str, kind: str, target: str, *argv: str) -> int:
    """Run one restore (see the module docstring) and write its RECORD.json; returns its exit status."""
    phases = Phases()
    phases.stubbed = []
    run = run_ours if kind == "ours" else run_reference
    imported, status = run(target, list(argv), phases)
    end = time.perf_counter()
    seconds = {"import": imported - START, **phases.seconds}
    seconds["rest"] = end - imported - phases.seconds["load"] - phases.seconds["forward"]
    Path(record).write_text(json.dumps({"seconds": seconds, "total": end - START, "status": status,
                                        "stubbed": phases.stubbed}))
    return status


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
