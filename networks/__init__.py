"""VIRNet networks: model classes, the released configurations and checkpoint loading."""
from .attresunet import AttResUNet
from .dncnn import DnCNN
from .factory import (RELEASED_CONFIGS, TASKS, CheckpointError, build_model, load_checkpoint,
                      matching_task, model_kwargs, read_checkpoint)
from .knet import KernelNet
from .virnet import VIRAttResUNet, VIRAttResUNetSR

__all__ = ["AttResUNet", "DnCNN", "KernelNet", "VIRAttResUNet", "VIRAttResUNetSR",
           "RELEASED_CONFIGS", "TASKS", "CheckpointError", "build_model", "load_checkpoint",
           "matching_task", "model_kwargs", "read_checkpoint"]
