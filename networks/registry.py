"""The task registry: one entry per task, read by the trainers, the demos, the exporter and bench/.

A task's name (``'denoising-syn'``, ``'denoising-real'``, ``'sisr'``) is the key everywhere; the
entry says which model class it trains, the constructor arguments of the authors' released
model, the weights the demos load by default, the trainer that trains it and the stem of its
configs. The config keys that set the architecture (``architecture_keys``) take their defaults
from the released model, so every trainer offers the same ones. Like the rest of ``networks``,
this module imports nothing of the project.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple, Union

from .virnet import VIRAttResUNet, VIRAttResUNetSR

MODEL_ZOO = Path(__file__).resolve().parents[1] / "model_zoo"
"""The folder of the shipped weights and of the authors' released files."""
SHIPPED_FORMAT = ".safetensors"
"""The suffix of the shipped compact weights (``shipped``): '.pth' (``torch.save``) or '.safetensors'.
The one switch to flip once the model-zoo files are converted (``python -m utils.export_weights``)."""


def shipped(stem: str) -> str:
    """The file name of the shipped compact weights ``stem`` (e.g. 'virnet_denoising_syn_compact')."""
    return stem + SHIPPED_FORMAT


@dataclass(frozen=True)
class TaskSpec:
    """One task.

    model: the network class (a ``virnet.ModelContract``). released: constructor arguments of the
    released model. weights: default weights file in ``MODEL_ZOO`` per scale factor (key None for
    a denoiser), or a tuple of candidates (see ``default_weights``). trainer: ``'module:Class'`` of the trainer script's ``Task``. configs: the prefix
    of the names of the task's training configs (``configs/<configs>*.json``). config: the trainer's
    default config file (the reference's values).
    """

    model: type
    released: Mapping[str, Any]
    weights: Mapping[Optional[int], Union[str, Tuple[str, ...]]]
    trainer: str
    configs: str
    config: str

    @property
    def outputs(self) -> Tuple[str, ...]:
        """Names of the model's forward outputs, in order."""
        return self.model.OUTPUTS

    @property
    def scales(self) -> Tuple[int, ...]:
        """The scale factors of an SR task (empty for a denoiser)."""
        return tuple(sf for sf in self.weights if sf is not None)


TASKS: Dict[str, TaskSpec] = {
    "denoising-syn": TaskSpec(
        model=VIRAttResUNet,
        released=dict(im_chn=3, sigma_chn=1, n_feat=[96, 192, 288], dep_S=5, n_resblocks=3, noise_cond=True,
                      extra_mode="Input", noise_avg=False),
        weights={None: shipped("virnet_denoising_syn_compact")}, trainer="train_denoising_syn:DenoisingSyn",
        configs="denoising_syn", config="configs/denoising_syn.json"),
    "denoising-real": TaskSpec(
        model=VIRAttResUNet,
        released=dict(im_chn=3, sigma_chn=3, n_feat=[96, 160, 224, 288], dep_S=8, n_resblocks=3, noise_cond=True,
                      extra_mode="Input", noise_avg=False),
        weights={None: ("virnet_denoising_real.pth", shipped("virnet_denoising_real_compact"))},
        trainer="train_denoising_real:DenoisingReal",
        configs="denoising_real", config="configs/denoising_real.json"),
    "sisr": TaskSpec(
        model=VIRAttResUNetSR,
        released=dict(im_chn=3, sigma_chn=1, dep_S=5, dep_K=8, n_feat=[96, 160, 224], n_resblocks=2,
                      extra_mode="Both", noise_avg=True, noise_cond=True, kernel_cond=True),
        weights={2: "virnet_sisr_x2.pth", 3: "virnet_sisr_x3.pth", 4: shipped("virnet_sisr_x4_compact")},
        trainer="train_sisr:SISR", configs="sisr", config="configs/sisr_x4.json"),
}
"""Task name -> TaskSpec (SPEC section 2 for the released constructor arguments)."""

ARCHITECTURE_KEYS: Dict[str, dict] = {
    "im_chn": dict(kind="int", help="image channels (RGB only)", choices=(3,)),
    "sigma_chn": dict(kind="int", help="channels of the S-Net variance map (3: one per colour)", choices=(1, 3)),
    "dep_S": dict(kind="int", help="S-Net (DnCNN) depth", minimum=2),
    "dep_K": dict(kind="int", help="K-Net residual blocks", minimum=1),
    "n_feat": dict(kind="ints", help="R-Net (U-Net) widths per scale", minimum=1, min_items=1),
    "n_resblocks": dict(kind="int", help="residual blocks per U-Net scale", minimum=1),
    "noise_cond": dict(kind="bool", help="feed sqrt(variance) from the S-Net to the R-Net"),
    "kernel_cond": dict(kind="bool", help="feed kinfo from the K-Net to the R-Net"),
    "extra_mode": dict(kind="str", help="where the S-Net (and K-Net) maps enter the R-Net",
                       choices=("Null", "Input", "Down", "Both")),
}
"""Config keys that set constructor arguments: the fields of ``utils.config.Key`` but the default."""


def task_spec(task: str) -> TaskSpec:
    """The registry entry of ``task``; raises ValueError naming the known tasks."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    return TASKS[task]


def architecture_keys(task: str) -> Dict[str, dict]:
    """The config keys of ``task``'s constructor arguments (``utils.config.Key`` fields), each with
    the released value as its default."""
    released = task_spec(task).released
    return {name: {**key, "default": released[name]} for name, key in ARCHITECTURE_KEYS.items()
            if name in released}


def default_weights(task: str, sf: Optional[int] = None) -> Path:
    """The weights file the demos load for ``task`` (and scale ``sf`` for SR) when none is given.
    An entry may list candidates: the first one present in ``MODEL_ZOO`` (e.g. the authors' released
    file once downloaded), else the last (the shipped compact file)."""
    names = task_spec(task).weights[sf]
    if isinstance(names, str):
        return MODEL_ZOO / names
    return next((MODEL_ZOO / n for n in names if (MODEL_ZOO / n).is_file()), MODEL_ZOO / names[-1])
