"""Runs the authors' VIRNet network classes for ``bench/inference.py``, in a process of its own.

Usage (by ``bench/inference.py``): ``python bench/reference_child.py REFERENCE_DIR CASE_DIR``.

The authors' ``networks/AttResUNet.py`` does ``from utils import util_net``, which would collide
with this project's ``utils`` package, so their code runs here with ``REFERENCE_DIR`` first on
``sys.path`` and nothing of this project imported. ``util_net`` imports ``thop`` (a FLOP counter
used only by their profiling helpers) and ``util_image`` imports ``lpips`` (used by their metrics);
when one is not installed a stub module stands in (``use_reference``, also used by
``bench/restore_child.py``).

``CASE_DIR`` holds ``spec.json`` (``task``, ``kwargs``, ``sf``, ``threads``, ``device``),
``state.pt`` (the state dict, loaded with ``strict=True``) and ``input.pt``. After printing
``ready`` the child serves one command per line on stdin:

* ``run``: one forward pass; replies with its duration in seconds;
* ``save``: one forward pass whose outputs go to ``CASE_DIR/outputs.pt``; replies ``saved``.

End of input ends the child.
"""
import json
import sys
import time
import types
from pathlib import Path


OPTIONAL = {"thop": "profile", "lpips": "LPIPS"}
"""Packages the authors' modules import for helpers a restore does not call -> the name they use."""


def use_reference(reference_dir: str) -> list[str]:
    """Put ``reference_dir`` first on ``sys.path`` (in place of this script's folder) and stub the
    ``OPTIONAL`` packages that are not installed; returns the names of the stubbed ones."""
    sys.path[0] = reference_dir
    stubbed = []
    for name, attribute in OPTIONAL.items():
        try:
            __import__(name)
        except ImportError:
            def missing(*args, name=name, **kwargs):
                raise NotImplementedError(f"{name} is not installed (stub from bench/reference_child.py)")

            stub = types.ModuleType(name)
            setattr(stub, attribute, missing)
            sys.modules[name] = stub
            stubbed.append(name)
    return stubbed


def _import_reference(reference_dir: str):
    """The authors' ``networks.VIRNet`` module, imported from ``reference_dir``."""
    use_reference(reference_dir)
    from networks import VIRNet
    return VIRNet


def main(reference_dir: str, case_dir: str) -> None:
    import torch

    case = Path(case_dir)
    spec = json.loads((case / "spec.json").read_text())
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    virnet = _import_reference(reference_dir)
    cls = virnet.VIRAttResUNetSR if spec["task"] == "sisr" else virnet.VIRAttResUNet
    net = cls(**spec["kwargs"])
    net.load_state_dict(torch.load(case / "state.pt", weights_only=True), strict=True)
    net = net.eval().to(device)
    x = torch.load(case / "input.pt", weights_only=True).to(device)
    args = (x, spec["sf"]) if spec["sf"] else (x,)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    print("ready", flush=True)
    with torch.inference_mode():
        for line in sys.stdin:
            command = line.strip()
            if command == "run":
                sync()
                start = time.perf_counter()
                net(*args)
                sync()
                print(time.perf_counter() - start, flush=True)
            elif command == "save":
                outputs = [o.float().cpu() for o in net(*args)]
                torch.save(outputs, case / "outputs.pt")
                print("saved", flush=True)
            else:
                raise ValueError(f"unknown command {command!r}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
