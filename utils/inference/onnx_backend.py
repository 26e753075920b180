"""Exported VIRNet models run by ONNX Runtime: reading a ``.onnx`` file and the ``onnx`` backend.

A file written by ``onnx_export`` (``python -m utils.export_weights SRC DST.onnx``) holds up to two
graphs side by side, both for batch 1 and any height and width:

- the restoring graph: inputs ``x`` (1 x 3 x h x w float32) and, for each whole-image estimator
  <name> of the model (``whole_image_estimators``: the K-Net, a pooled S-Net), ``given.<name>``,
  that estimator's raw output on the whole image; outputs the model's ``OUTPUTS``;
- when the model has such estimators, the estimating graph: input ``estimate.whole`` (the whole
  input image), outputs ``estimate.<name>``;

and metadata (``virnet.*`` keys: format, task, scale factor, output names, padding multiple,
estimators, architecture, parameter count, FLOPs at 256 x 256 (``complexity``), source file, note,
and a SHA-256 of the serialised graph together with every other ``virnet.*`` entry, so that damaged
weights or edited metadata are refused rather than run).
``load_onnx`` checks the metadata (every value of the type and range the code needs) against what
the demo runs, the graphs' input and output names against the metadata, separates the two graphs,
opens an ONNX Runtime CPU session for each and runs the restoring one on a small probe: its output
must have the size the recorded scale factor gives, so a graph relabelled with another scale (or
task) is refused. Any problem is one line naming the file.
``OnnxBackend`` computes the estimates on the whole input (or uses the pinned ones), then runs the
restoring graph, so tiled windows share the whole image's kernel and noise level as with PyTorch.
``onnx`` and ``onnxruntime`` are imported when a file is loaded, not before.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import os
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch

import networks
from utils.errors import UserError, one_line

FORMAT = "2"
"""The version of the file layout above (metadata key ``virnet.format``)."""
META = "virnet."
INPUT, GIVEN, ESTIMATE = "x", "given.", "estimate."
WHOLE = ESTIMATE + "whole"
DIGEST = "sha256"
RECORDED = ("task", "sf", "outputs", "pad_multiple", "estimators", "arch", "parameters", "flops_256", "source", "note",
            DIGEST)
"""The metadata keys (after ``META``) of an export of this ``FORMAT``."""


def _module(name: str):
    """Import the package ``name`` (onnx, onnxruntime); a UserError says how to install it."""
    try:
        return importlib.import_module(name)
    except ImportError:
        raise UserError(f"running .onnx models needs the '{name}' package: pip install -r requirements.txt") from None


def _runtime_errors() -> tuple[type[BaseException], ...]:
    """The exceptions ONNX Runtime raises for a model it cannot load or run."""
    state = _module("onnxruntime.capi.onnxruntime_pybind11_state")
    return (state.Fail, state.InvalidArgument, state.InvalidGraph, state.InvalidProtobuf, state.NoSuchFile,
            state.NotImplemented, state.RuntimeException)


def _session(model_bytes: bytes):
    """An ONNX Runtime CPU session of a serialised model, with torch's intra-op thread count."""
    ort = _module("onnxruntime")
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = torch.get_num_threads(), 1
    options.log_severity_level = 3  # errors only
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


class OnnxModel:
    """An exported model opened by ``load_onnx``: what backends read of a model (``OUTPUTS``,
    ``pad_multiple``, ``device``: the CPU), its ``task``, scale factor ``sf`` (None for a denoiser),
    ``estimators`` (names), ``complexity`` (parameters and FLOPs, ``complexity.model_complexity``),
    ``weights_info`` (one line), ``path``, and its ONNX Runtime sessions."""

    device = torch.device("cpu")

    def __init__(self, path: Path, meta: dict, restoring, estimating):
        self.path, self.restoring, self.estimating = path, restoring, estimating
        self.task = meta["task"]
        self.sf = int(meta["sf"]) if meta.get("sf") else None
        self.OUTPUTS = tuple(meta["outputs"].split(","))
        self.pad_multiple = int(meta["pad_multiple"])
        self.estimators = tuple(name for name in meta["estimators"].split(",") if name)
        self.complexity = {"parameters": int(meta["parameters"]), "flops_256": int(meta["flops_256"])}
        self.weights_info = _describe(path, meta)

    def estimate(self, x: torch.Tensor) -> dict[str, np.ndarray]:
        """The restoring graph's ``given.<name>`` inputs computed on ``x`` (1 x 3 x h x w float32 CPU);
        empty for a model without whole-image estimators."""
        if not self.estimators:
            return {}
        values = self.estimating.run([ESTIMATE + name for name in self.estimators], {WHOLE: _array(x)})
        return {GIVEN + name: value for name, value in zip(self.estimators, values)}


def _array(x: torch.Tensor) -> np.ndarray:
    """A C-contiguous float32 NumPy array of a CPU tensor (tiled windows are views)."""
    return np.ascontiguousarray(x.detach().numpy(), dtype=np.float32)


def _describe(path: Path, meta: dict) -> str:
    """One line naming the file, its architecture (released or compact), parameters, scale, source
    checkpoint and note."""
    task, kwargs = meta["task"], json.loads(meta["arch"])
    kind = "released" if kwargs == dict(networks.TASKS[task].released) else "compact"
    scale = f" x{meta['sf']}" if meta.get("sf") else ""
    note = f"; {meta['note']}" if meta.get("note") else ""
    return (f"{path} (ONNX for ONNX Runtime: {kind} {task}{scale} architecture, "
            f"{int(meta['parameters']) / 1e6:.2f} M parameters, exported from {meta['source']}{note})")


def content_digest(model) -> str:
    """The SHA-256 (hex) of a ModelProto's serialised graph followed by its ``virnet.*`` metadata but
    the digest itself (sorted ``key=value`` lines): metadata ``sha256``."""
    digest = hashlib.sha256(model.graph.SerializeToString())
    for key, value in sorted((p.key, p.value) for p in model.metadata_props if p.key.startswith(META)):
        if key != META + DIGEST:
            digest.update(f"\n{key}={value}".encode("utf-8", "surrogatepass"))
    return digest.hexdigest()


def _checked_values(path: Path, meta: dict) -> None:
    """Refuse (UserError naming the file and the key) a metadata value of the wrong type or range."""
    def bad(key: str, allowed: str) -> UserError:
        return UserError(f"{path}: metadata {META}{key} = {meta[key][:60]!r} is not {allowed} (damaged or edited); "
                         f"export it again")

    for key, low, high in (("pad_multiple", 1, 256), ("parameters", 1, None), ("flops_256", 0, None)):
        if not meta[key].isdigit() or not low <= int(meta[key]) <= (high or int(meta[key])):
            raise bad(key, f"an integer in [{low}, {high}]" if high else f"an integer >= {low}")
    scales = networks.TASKS[meta["task"]].scales
    if (meta["sf"] != "" or scales) and (not meta["sf"].isdigit() or int(meta["sf"]) not in scales):
        raise bad("sf", f"one of {', '.join(map(str, scales))}" if scales else "empty (a denoiser)")
    if meta["outputs"].split(",") != list(networks.TASKS[meta["task"]].outputs):
        raise bad("outputs", f"the '{meta['task']}' model's outputs {','.join(networks.TASKS[meta['task']].outputs)}")
    try:
        arch = json.loads(meta["arch"])
    except (ValueError, RecursionError):
        arch = None
    if not isinstance(arch, dict):
        raise bad("arch", "a JSON object of constructor arguments")


def _checked_graph(path: Path, model, meta: dict) -> None:
    """Refuse (UserError) a graph whose input or output names are not those the metadata implies."""
    estimators = [name for name in meta["estimators"].split(",") if name]
    inputs = {i.name for i in model.graph.input} - {init.name for init in model.graph.initializer}
    outputs = {o.name for o in model.graph.output}
    want_in = {INPUT, *(GIVEN + n for n in estimators), *([WHOLE] if estimators else [])}
    want_out = {*meta["outputs"].split(","), *(ESTIMATE + n for n in estimators)}
    if inputs != want_in or outputs != want_out:
        raise UserError(f"{path}: its graph's inputs {sorted(inputs)} and outputs {sorted(outputs)} are not those "
                        f"its metadata describes ({sorted(want_in)} -> {sorted(want_out)}); export it again")


def _metadata(path: Path, model, task: str, sf: Optional[int]) -> dict:
    """The ``virnet.*`` metadata of a loaded ModelProto (keys without the prefix), checked against the
    demo's ``task`` and scale ``sf``; raises UserError naming the file and what to do."""
    meta = {p.key[len(META):]: p.value for p in model.metadata_props if p.key.startswith(META)}
    if meta.get("format", FORMAT) != FORMAT and meta.get("format", "").isdigit():
        raise UserError(f"{path} was exported in layout {meta['format']!r}, not this version's {FORMAT!r}; export it "
                        f"again with: python -m utils.export_weights CHECKPOINT {path.name}")
    if meta.get("format") != FORMAT or meta.get("task") not in networks.TASKS:
        raise UserError(f"{path} is not a VIRNet model exported by this project (no or unknown 'virnet.' metadata); "
                        f"export one with: python -m utils.export_weights CHECKPOINT {path.name}")
    missing = [key for key in RECORDED if key not in meta]
    if missing:
        raise UserError(f"{path}: its metadata lacks {META}{missing[0]} (damaged or edited); export it again")
    if content_digest(model) != meta[DIGEST]:
        raise UserError(f"{path} is damaged or edited (its graph, weights and metadata differ from the SHA-256 "
                        f"recorded at export); export it again")
    _checked_values(path, meta)
    if meta["task"] != task:
        raise UserError(f"{path} holds a '{meta['task']}' model; this demo needs '{task}'")
    recorded = int(meta["sf"]) if meta.get("sf") else None
    if sf is not None and recorded != sf:
        raise UserError(f"{path} was exported for x{recorded}; run with --sf {recorded}, or export x{sf} weights "
                        f"with python -m utils.export_weights CHECKPOINT DST.onnx --sf {sf}")
    return meta


def _graphs(model, meta: dict) -> tuple[bytes, Optional[bytes]]:
    """The serialised restoring and estimating graphs of a loaded ModelProto (no estimating graph
    without estimators)."""
    names = [name for name in meta["estimators"].split(",") if name]
    if not names:
        return model.SerializeToString(), None
    extractor = _module("onnx.utils").Extractor(model)
    restoring = extractor.extract_model([INPUT] + [GIVEN + n for n in names], meta["outputs"].split(","))
    estimating = extractor.extract_model([WHOLE], [ESTIMATE + n for n in names])
    return restoring.SerializeToString(), estimating.SerializeToString()


def load_onnx(task: str, path: os.PathLike, sf: Optional[int] = None) -> OnnxModel:
    """Open the exported model ``path`` for the demo of ``task`` (``sf``: its scale factor, SR only).

    Raises UserError (one line naming the file) when the file is missing, is not a readable ONNX
    model, was not exported by this project, holds another task's model or was exported for
    another scale factor, or when ONNX Runtime cannot run it.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no ONNX model at {path}")
    onnx = _module("onnx")
    try:
        model = onnx.load(str(path))
    except (OSError, ValueError, _module("google.protobuf.message").DecodeError, onnx.checker.ValidationError) as err:
        raise UserError(f"{path} is not a readable ONNX model ({one_line(err)}); export it again") from None
    meta = _metadata(path, model, task, sf)
    _checked_graph(path, model, meta)
    try:
        restoring, estimating = _graphs(model, meta)
        sessions = [_session(graph) if graph is not None else None for graph in (restoring, estimating)]
        opened = OnnxModel(path, meta, *sessions)
        _probe(opened)
    except (ValueError, onnx.checker.ValidationError, *_runtime_errors()) as err:
        raise UserError(f"{path}: ONNX Runtime cannot run it ({one_line(err)}); export it again") from None
    return opened


def _probe(model: "OnnxModel") -> None:
    """Run the restoring graph on a small random input (sides twice the padding multiple) and refuse
    (UserError) an output image that is not the input's size times the recorded scale factor."""
    side = 2 * model.pad_multiple
    x = torch.rand(1, 3, side, side + model.pad_multiple, generator=torch.Generator().manual_seed(0))
    image = OnnxBackend(model)(x, *((model.sf,) if model.sf else ()))[0]
    scale = model.sf or 1
    want = (1, 3, x.shape[2] * scale, x.shape[3] * scale)
    if tuple(image.shape) != want:
        raise UserError(f"{model.path}: its graph turns a {x.shape[3]} x {x.shape[2]} input into a {image.shape[-1]} x "
                        f"{image.shape[-2]} image, not the x{scale} its metadata claims; export it again")


class OnnxBackend:
    """The ``onnx`` backend: an ``OnnxModel`` run by ONNX Runtime on the CPU, fp32 (see the module
    docstring; the members are those of ``backends``). Raises UserError for another precision or a
    PyTorch model."""

    def __init__(self, model: OnnxModel, precision: str = "fp32"):
        if not isinstance(model, OnnxModel):
            raise UserError("the onnx backend runs exported .onnx files (python -m utils.export_weights SRC DST.onnx)")
        if precision != "fp32":
            raise UserError(f"an ONNX model runs in fp32, not {precision}")
        self.model, self._given = model, None
        self.outputs, self.pad_multiple, self.device = model.OUTPUTS, model.pad_multiple, model.device

    def _check(self, args: tuple) -> None:
        """Refuse forward arguments other than the model's scale factor (SR) or none (denoisers)."""
        expected = (self.model.sf,) if self.model.sf else ()
        if args != expected:
            raise UserError(f"{self.model.path} takes the forward arguments {expected}, not {args}")

    def __call__(self, x: torch.Tensor, *args) -> tuple[torch.Tensor, ...]:
        """The outputs for ``x`` (1 x 3 x h x w float32 CPU) as float32 CPU tensors."""
        self._check(args)
        feeds = {INPUT: _array(x), **(self._given if self._given is not None else self.model.estimate(x))}
        return tuple(torch.from_numpy(out) for out in self.model.restoring.run(list(self.outputs), feeds))

    @contextlib.contextmanager
    def pinned(self, x: torch.Tensor, *args) -> Iterator[None]:
        """Within the block every call uses the estimates of ``x``, computed once."""
        self._check(args)
        self._given = self.model.estimate(x)
        try:
            yield
        finally:
            self._given = None
