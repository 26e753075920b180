"""Exporting a VIRNet checkpoint to ONNX for ONNX Runtime: ``python -m utils.export_weights SRC DST.onnx``.

SRC is any checkpoint the demos load: the authors' released files (their task is recognised from
the weights' keys and shapes, the SR scale from the file name) or this project's (their 'arch'
entry). DST holds the graphs and metadata ``onnx_backend`` describes: the restoring graph, in which
each whole-image estimator (``whole_image_estimators``: the K-Net, a pooled S-Net) is replaced by
an input, so that tiled windows can share the estimates of the whole image; and, for models with
such estimators, the estimating graph that computes them. SR graphs are exported for one scale
factor (``--sf``, else the one the checkpoint records), which the metadata records.

Both graphs are traced by ``torch.onnx.export`` (dynamo) for batch 1 with dynamic height and width.
The R-Net's ``pad_to_multiple`` skips its padding when the sides already divide, a branch the
tracer would fix to the example's size; while tracing, it is replaced by the same reflect padding
done every time (a zero-width padding is the identity), so the graph pads any size exactly as
PyTorch does: no padding on the host, no change to the architecture. Before DST is written the
file runs on two inputs of odd and even sizes through ``onnx_backend`` and must match PyTorch within
``TOLERANCE``; DST is written atomically and an existing one is kept unless ``--force``.
"""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Iterator, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

import networks
from networks import attresunet
from utils.errors import UserError
from utils.image_io import atomic_path

from .complexity import model_complexity
from .loading import load_model, recorded_scale
from .onnx_backend import DIGEST, ESTIMATE, FORMAT, GIVEN, INPUT, META, OnnxBackend, content_digest, load_onnx

TOLERANCE = 1e-4
"""Largest difference of any output from PyTorch fp32, relative to max(1, the output's magnitude)."""


def _reflect_pad_always(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """``attresunet.pad_to_multiple`` without its shortcut for sides that already divide."""
    height, width = x.shape[-2:]
    return F.pad(x, (0, -width % multiple, 0, -height % multiple), mode="reflect")


@contextlib.contextmanager
def _padding_for_tracing() -> Iterator[None]:
    """Within the block the R-Net pads with ``_reflect_pad_always`` (see the module docstring)."""
    original = attresunet.pad_to_multiple
    attresunet.pad_to_multiple = _reflect_pad_always
    try:
        yield
    finally:
        attresunet.pad_to_multiple = original


@contextlib.contextmanager
def _returning(modules: Sequence[nn.Module], values: Sequence[torch.Tensor]) -> Iterator[None]:
    """Within the block each module's forward returns the matching value (the tracer records the
    value, a graph input, in place of the module's computation)."""
    try:
        for module, value in zip(modules, values):
            module.forward = lambda *_, value=value: value
        yield
    finally:
        for module in modules:
            module.__dict__.pop("forward", None)


class _Restoring(nn.Module):
    """forward(x, *given): the model's outputs for x, each whole-image estimator's output given."""

    def __init__(self, net: nn.Module, sf: Optional[int]):
        super().__init__()
        self.net, self.args = net, () if sf is None else (sf,)

    def forward(self, x: torch.Tensor, *given: torch.Tensor):
        with _returning(list(self.net.whole_image_estimators().values()), given):
            return self.net(x, *self.args)


class _Estimating(nn.Module):
    """forward(whole): the raw output of each whole-image estimator on the whole image."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.parts = nn.ModuleList(net.whole_image_estimators().values())

    def forward(self, whole: torch.Tensor):
        return tuple(part(whole) for part in self.parts)


def _trace(module: nn.Module, args: tuple, dynamic: tuple, inputs: list[str], outputs: list[str]):
    """The ONNX ModelProto of ``module`` traced on ``args`` (``dynamic``: torch.export's dynamic shapes)."""
    try:
        import onnxscript  # noqa: F401  (torch's ONNX exporter needs it)
    except ImportError:
        raise UserError("exporting to ONNX needs the 'onnxscript' package: pip install -r requirements.txt") from None
    with _padding_for_tracing(), contextlib.redirect_stdout(io.StringIO()):  # the exporter's progress lines
        program = torch.onnx.export(module.eval(), args, dynamo=True, dynamic_shapes=dynamic, input_names=inputs,
                                    output_names=outputs)
    return program.model_proto


def onnx_model(net: nn.Module, sf: Optional[int], meta: dict):
    """The ONNX ModelProto of the eval-mode model ``net`` (scale ``sf`` for SR): the restoring graph,
    the estimating graph beside it when ``net`` has whole-image estimators, and ``meta`` (plus the
    layout entries) as ``virnet.*`` metadata (see ``onnx_backend``)."""
    import onnx.compose

    names = list(net.whole_image_estimators())
    side = net.pad_multiple
    x = torch.rand(1, 3, 2 * side + 3, 3 * side + 1)  # height != width: each gets its own dimension
    spatial = {2: torch.export.Dim.DYNAMIC, 3: torch.export.Dim.DYNAMIC}
    with torch.no_grad():
        given = _Estimating(net)(x)
    dynamic = (spatial, (None,) * len(given)) if given else (spatial,)  # the estimates: one vararg
    model = _trace(_Restoring(net, sf), (x, *given), dynamic, [INPUT] + [GIVEN + name for name in names],
                   list(net.OUTPUTS))
    if names:
        estimating = _trace(_Estimating(net), (x,), (spatial,), ["whole"], names)
        model = onnx.compose.merge_models(model, estimating, io_map=[], prefix2=ESTIMATE)
    layout = {"format": FORMAT, "outputs": ",".join(net.OUTPUTS), "pad_multiple": str(net.pad_multiple),
              "estimators": ",".join(names), "sf": str(sf or "")}
    props = {META + key: str(value) for key, value in {**meta, **layout}.items()}
    onnx.helper.set_model_props(model, props)
    onnx.helper.set_model_props(model, {**props, META + DIGEST: content_digest(model)})
    return model


def _largest_difference(path: Path, net: nn.Module, sf: Optional[int]) -> float:
    """The largest difference (see ``TOLERANCE``) between the outputs of the exported file and of
    ``net`` on two random inputs, of odd and of even sides."""
    backend = OnnxBackend(load_onnx(net.arch["task"], path, sf))
    args = () if sf is None else (sf,)
    side, worst = net.pad_multiple, 0.0
    for height, width in ((3 * side + 3, 2 * side + 5), (4 * side, 2 * side + 2)):
        x = torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(height))
        with torch.no_grad():
            expected = net(x, *args)
        for got, want in zip(backend(x, *args), expected):
            scale = max(1.0, want.abs().max().item())
            worst = max(worst, (got - want.reshape(got.shape)).abs().max().item() / scale)
    return worst


def _task_of(ckpt: dict, src: Path, task: Optional[str]) -> str:
    """The task of a checkpoint: its 'arch' entry's, else the released task its weights match; ``task``
    (--task) must agree. Raises UserError when none is known."""
    arch = ckpt.get("arch")
    found = arch.get("task") if isinstance(arch, dict) else networks.matching_task(ckpt["model_state_dict"])
    if task is not None and found is not None and task != found:
        raise UserError(f"{src} holds a '{found}' model, not '{task}'")
    if task is None and found is None:
        raise UserError(f"{src}: its task is not recorded and its weights match no released architecture; "
                        f"pass --task ({', '.join(networks.TASKS)})")
    return task or found


def _scale_of(ckpt: dict, src: Path, task: str, sf: Optional[int]) -> Optional[int]:
    """The scale factor to export an SR checkpoint for: ``sf`` (--sf), else the one it records.
    Raises UserError for a denoiser with --sf or an SR checkpoint whose scale is unknown."""
    scales = networks.TASKS[task].scales
    if not scales:
        if sf is not None:
            raise UserError(f"--sf applies to SR checkpoints; {src} holds a '{task}' model")
        return None
    sf = sf or recorded_scale(ckpt, src)[0]
    if sf not in scales:
        raise UserError(f"{src}: pass --sf ({', '.join(map(str, scales))}): the scale the SR graph is exported for")
    return sf


def write_onnx(net: nn.Module, sf: Optional[int], dst: Path, source: str, note: str = "") -> float:
    """Export the eval-mode CPU model ``net`` (built by ``networks.build_model``; scale ``sf`` for SR)
    to ``dst``, recording ``source`` (the checkpoint's name) and ``note``; the file is written
    atomically once it matches PyTorch within ``TOLERANCE``. Returns the largest difference.
    Raises UserError when it does not match."""
    meta = {"task": net.arch["task"], "arch": json.dumps(net.arch["kwargs"]), "source": source,
            **model_complexity(net, sf), "note": note}
    model = onnx_model(net, sf, meta)
    dst.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dst) as tmp:
        tmp.write_bytes(model.SerializeToString())
        difference = _largest_difference(tmp, net, sf)
        if difference > TOLERANCE:
            raise UserError(f"the ONNX export of {source} differs from PyTorch by {difference:.1e} (more than "
                            f"{TOLERANCE:g}); nothing written")
    return difference


def export_onnx(src: Path, dst: Path, task: Optional[str] = None, sf: Optional[int] = None,
                note: Optional[str] = None, force: bool = False) -> int:
    """Write the ONNX export ``dst`` of the checkpoint ``src`` (see the module docstring) and print one
    line about it; ``note`` None keeps the note ``src`` records. Returns 0. Raises UserError (or
    ``networks.CheckpointError``), one line."""
    if dst.exists() and not force:
        raise UserError(f"{dst} exists; pass --force to replace it")
    ckpt = networks.read_checkpoint(src)
    task = _task_of(ckpt, src, task)
    sf = _scale_of(ckpt, src, task, sf)
    net = load_model(task, str(src), src, torch.device("cpu"), sf)
    recorded = ckpt.get("meta") if isinstance(ckpt.get("meta"), dict) else {}
    difference = write_onnx(net, sf, dst, recorded.get("source", src.name),
                            recorded.get("note", "") if note is None else note)
    scale = f" x{sf}" if sf else ""
    print(f"wrote {dst} ({dst.stat().st_size / 2 ** 20:.2f} MiB, {task}{scale}, "
          f"{sum(p.numel() for p in net.parameters()) / 1e6:.2f} M parameters; outputs within {difference:.1e} "
          f"of PyTorch)")
    return 0
