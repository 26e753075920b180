"""The task registry: one entry per task, read by the trainers, the demos, the exporter and bench/.

A task's name (``'denoising-syn'``, ``'denoising-real'``, ``'sisr'``) is the key everywhere; the
entry says which model class it trains, the constructor arguments of the authors' released
model, the SR scale factors, the trainer that trains it and the stem of its configs. The config
keys that set the architecture (``architecture_keys``) take their defaults from the released
model, so every trainer offers the same ones. Weights files are described in the catalogue
(``networks.catalogue``), not here. Like the rest of ``networks``, this module imports nothing of
the project.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Mapping, Tuple

from .virnet import VIRAttResUNet, VIRAttResUNetSR


@dataclass(frozen=True)
class TaskSpec:
    """One task.

    model: the network class (a ``virnet.ModelContract``). released: constructor arguments of the
    released model. trainer: ``'module:Class'`` of the trainer script's ``Task``. configs: the prefix
    of the names of the task's training configs (``configs/<configs>*.json``). config: the trainer's
    default config file (the reference's values). scales: the scale factors of an SR task (empty
    for a denoiser).
    """

    model: type
    released: Mapping[str, Any]
    trainer: str
    configs: str
    config: str
    scales: Tuple[int, ...] = ()

    @property
    def outputs(self) -> Tuple[str, ...]:
        """Names of the model's forward outputs, in order."""
        return self.model.OUTPUTS


TASKS: Dict[str, TaskSpec] = {
    "denoising-syn": TaskSpec(
        model=VIRAttResUNet,
        released=dict(im_chn=3, sigma_chn=1, n_feat=[96, 192, 288], dep_S=5, n_resblocks=3, noise_cond=True,
                      extra_mode="Input", noise_avg=False),
        trainer="train_denoising_syn:DenoisingSyn", configs="denoising_syn", config="configs/denoising_syn.json"),
    "denoising-real": TaskSpec(
        model=VIRAttResUNet,
        released=dict(im_chn=3, sigma_chn=3, n_feat=[96, 160, 224, 288], dep_S=8, n_resblocks=3, noise_cond=True,
                      extra_mode="Input", noise_avg=False),
        trainer="train_denoising_real:DenoisingReal", configs="denoising_real", config="configs/denoising_real.json"),
    "sisr": TaskSpec(
        model=VIRAttResUNetSR,
        released=dict(im_chn=3, sigma_chn=1, dep_S=5, dep_K=8, n_feat=[96, 160, 224], n_resblocks=2,
                      extra_mode="Both", noise_avg=True, noise_cond=True, kernel_cond=True),
        trainer="train_sisr:SISR", configs="sisr", config="configs/sisr_x4.json", scales=(2, 3, 4)),
}
"""Task name -> TaskSpec."""

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
