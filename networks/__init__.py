"""VIRNet networks: model classes (with the contract generic code reads), the task registry, the
weights catalogue, building and checkpoint loading."""
from .attresunet import AttResUNet
from .catalogue import MODEL_ZOO, WeightsEntry, default_weights, weights_catalogue
from .dncnn import DnCNN
from .factory import (SAFETENSORS_ENTRIES, SAFETENSORS_SUFFIX, CheckpointError, build_model, load_checkpoint,
                      load_file, matching_task, model_kwargs, read_checkpoint, read_safetensors)
from .knet import KernelNet
from .registry import TASKS, TaskSpec, architecture_keys, task_spec
from .virnet import ModelContract, VIRAttResUNet, VIRAttResUNetSR
from .widen import widen

__all__ = ["AttResUNet", "DnCNN", "KernelNet", "ModelContract", "VIRAttResUNet", "VIRAttResUNetSR",
           "MODEL_ZOO", "TASKS", "TaskSpec", "WeightsEntry", "architecture_keys", "default_weights", "weights_catalogue",
           "task_spec",
           "CheckpointError", "build_model", "load_checkpoint", "load_file", "matching_task", "model_kwargs",
           "read_checkpoint", "read_safetensors", "SAFETENSORS_ENTRIES", "SAFETENSORS_SUFFIX", "widen"]
