"""The training floor: the ``Task`` contract (``task``), the loop (``loop``), training state and
checkpoints (``state``), logs (``logs``), processes and devices (``distributed``), and the command
line with its launchers (``launch``). Trainers import what they need from here."""
from .launch import main
from .loop import TrainingError, TrainResult, train
from .task import ENGINE_KEYS, StepContext, StepOutput, Task, ValOutput, ValSet

__all__ = ["ENGINE_KEYS", "StepContext", "StepOutput", "Task", "TrainResult", "TrainingError", "ValOutput",
           "ValSet", "main", "train"]
