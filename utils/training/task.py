"""The contract between a trainer and the training engine: the ``Task`` with its hooks, the
values they exchange and the engine's own config keys.

A trainer subclasses ``Task`` and supplies only what is specific to it:

- ``task``: its name in the task registry (``networks.TASKS``), which gives the model class, the
  architecture config keys with the released defaults, and the default config file;
- ``keys``: its other config keys (``utils.config.Key``), added to ``ENGINE_KEYS``;
- ``build_model()``: the network (by default the registry's model built from the architecture
  keys); its ``parts()`` by short name X get the gradient clipping of config key ``clip_grad_X``;
- ``build_train_set(length)``: a map-style data set of ``length`` samples with ``set_epoch(e)``,
  whose sample ``i`` depends only on (seed, epoch, i) (``utils.seeding.sample_rng``), made from the
  image files that pass ``checked_images`` (the start-up check of every training file);
- ``build_val_sets()``: ``ValSet`` entries (validation data sets and batch sizes);
- ``build_optimizer(parameters)``, ``build_scheduler(optimizer)``: by default those of config keys
  ``optimizer`` and ``scheduler`` (``optim``; override only for one the registry lacks);
- ``train_step(model, batch, ctx)`` -> ``StepOutput`` (loss, loss terms, image callback);
- ``val_step(model, batch, ctx)`` -> ``ValOutput`` (metrics such as PSNR / SSIM, image callback).

The script then calls ``sys.exit(utils.training.main(MyTask))``.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

import networks
from utils.config import REQUIRED, Config, ConfigError, Key
from utils.image_io import list_images

from . import optim

Batch = Sequence[torch.Tensor]
Visuals = Callable[[], Mapping[str, torch.Tensor]]

ENGINE_KEYS: dict[str, Key] = {
    "seed": Key("int", 1234, "seed of weight initialisation, sample draws and shuffling", minimum=0,
                maximum=2 ** 32 - 1),
    "fallback_to_samples": Key("bool", False, "a data folder of the config file (train_dirs, val_dir) that is not "
                               "there is replaced by scikit-image's sample photographs, saying so "
                               "(utils.sample_images; the *_small configs)"),
    "batch_size": Key("int", 16, "global batch size, split evenly over the processes", minimum=1),
    "epochs": Key("int", REQUIRED, "number of epochs", minimum=1),
    "iters_per_epoch": Key("int", 10000, "iterations per epoch; an epoch draws iters_per_epoch * "
                           "batch_size samples (the reference: 10000)", minimum=1),
    "warmup_epochs": Key("int", 0, "epochs of linear learning-rate warm-up before the cosine decay",
                         minimum=0),
    "lr": Key("float", REQUIRED, "learning rate after the warm-up", above=0),
    "lr_min": Key("float", 1e-6, "learning rate reached by the cosine decay at the last epoch", minimum=0),
    **optim.OPTIM_KEYS,
    "print_freq": Key("int", 100, "iterations between log lines and TensorBoard scalars", minimum=1),
    "image_freq": Key("int", 5000, "iterations between TensorBoard training images (0: never)", minimum=0),
    "save_freq": Key("int", 1000, "iterations between mid-epoch checkpoints (0: at epoch ends only)",
                     minimum=0),
    "val_freq": Key("int", 1, "epochs between validations (0: never); when > 0 the last epoch is "
                    "always validated", minimum=0),
    "val_images": Key("int", 4, "validation samples whose images go to TensorBoard", minimum=0),
    "num_workers": Key("int", 8, "DataLoader workers per node, divided among the processes on that node "
                       "(at least 1 each when > 0; 0: each process loads its own batches); each worker is a "
                       "process holding a copy of the data set", minimum=0, maximum=256),
    "prefetch_factor": Key("int", 2, "batches loaded ahead by each worker, held in memory", minimum=1, maximum=64),
    "bf16": Key("auto_bool", False, "bfloat16 autocast of the forward pass: true, false, or auto (on where "
                "the device computes bf16 natively: a GPU of compute capability 8.0 or later, a CPU with "
                "AVX512-BF16 or AMX); read only when 'precision' is unset"),
    "precision": Key("str", None, "autocast of the forward pass, replacing 'bf16' when set: fp32; bf16; "
                     "fp16 (with a gradient scaler, for GPUs without bf16 units such as V100 or T4); auto (bf16 "
                     "where the device computes it natively, else fp32: auto never picks fp16, whose range "
                     "can overflow where bf16 and fp32 do not)", choices=("auto", "fp32", "bf16", "fp16")),
    "tf32": Key("bool", False, "let float32 convolutions and matrix products run in TF32 on GPUs of compute "
                "capability 8.0 or later (faster, about 1e-3 relative error per product); off by default so that "
                "fp32 training computes in IEEE float32 as on any other device"),
    "ddp": Key("str", "auto", "auto: DDP when several processes run; always: also a single process under a "
               "launcher (torchrun --nproc_per_node=1), which checks the NCCL / gloo + DDP path on one device",
               choices=("auto", "always")),
    "channels_last": Key("bool", False, "channels-last memory format for model and inputs (CUDA)"),
    "deterministic": Key("bool", False, "torch.use_deterministic_algorithms (slower on CUDA)"),
    "max_bad_steps": Key("int", 20, "stop after this many steps in a row with a NaN/inf loss or "
                         "gradient (such steps are skipped, and no checkpoint is written over the last "
                         "good one meanwhile)", minimum=1),
    "skip_bad_images": Key("bool", False, "leave training images that cannot be read out, with a warning "
                           "(false: stop at start, naming them)"),
    "ddp_timeout_s": Key("float", 1800, "seconds a process waits for the others (DDP) before the run "
                         "stops, naming the process", minimum=1),
    "save_dir": Key("str", "train_record", "folder for checkpoints, exports and logs (--save_dir)"),
    "resume": Key("str", "", "training checkpoint to continue, 'auto' for "
                  "<save_dir>/checkpoints/latest.pth if present, '' for a fresh run (--resume)"),
    "fresh": Key("bool", False, "start over in a save_dir that holds an earlier run: its checkpoints, model "
                 "exports and TensorBoard events are deleted first (--fresh)"),
    "port": Key("int", 0, "reference config key, unused (the launcher chooses the port)"),
    "ema_decay": Key("float", 0.0, "decay of an exponential moving average of the weights, updated after "
                     "every step (0: off; e.g. 0.999); when on, validation and the models/ exports use the "
                     "averaged weights, and checkpoints hold both", minimum=0, maximum=0.9999),
    "init_weights": Key("file", None, "weights a fresh run starts from, to fine-tune a model: a model_zoo "
                        ".safetensors file, an export (models/*.pth) or a released checkpoint of the same "
                        "architecture, loaded strictly (a resumed run keeps its checkpoint's weights)"),
}

RESUME_FIXED = ("seed", "batch_size", "iters_per_epoch", "optimizer")
"""Engine keys a resumed run cannot change: they fix which samples each iteration draws, or which
optimiser the checkpoint's state belongs to. The
architecture keys and a task's ``resume_fixed`` are fixed as well; every other key may change on
resume and takes effect from there (the learning-rate schedule keys: see ``state.apply_schedule``)."""

MAX_EPOCH_SAMPLES = 2 ** 26
"""Most samples an epoch may draw (``iters_per_epoch * batch_size``): the sampler holds the epoch's
shuffled order as a Python list of about 36 bytes per sample, 2.4 GB at this bound (the reference
draws 160 000)."""

MAX_CROP = 2048
"""Largest side of a training crop (config key ``Task.crop_key``): one sample's training step of the
released denoiser needs about 1.3 GiB at 256 x 256 (fp32, measured on the CPU) and grows with the
pixel count, so a 2048 x 2048 crop already needs about 82 GiB, more than an 80 GB GPU holds."""

IMAGE_CHECK_CACHE = "image_check.json"
"""File under ``save_dir`` where a run keeps the verdicts of its start-up image check."""

ImageCheck = Callable[..., list]
"""``check(paths, cache_path=..., skip_bad=...) -> good paths``, e.g. ``datasets.image_check.check_images``."""


@dataclass
class StepOutput:
    """What ``Task.train_step`` returns.

    loss: scalar tensor to minimise. terms: scalar tensors logged beside it (e.g. the ELBO
    parts). visuals: called only when images are due; returns name -> N x C x H x W tensors.
    """

    loss: torch.Tensor
    terms: Mapping[str, torch.Tensor] = field(default_factory=dict)
    visuals: Visuals | None = None

    def scalars(self) -> dict[str, torch.Tensor]:
        """What the engine logs and averages over an epoch: 'loss', then the terms by name."""
        return {"loss": self.loss, **self.terms}


@dataclass
class ValOutput:
    """What ``Task.val_step`` returns: per-batch mean ``metrics`` (name -> value; the engine averages
    each over the validation set) and an optional image callback as in ``StepOutput``."""

    metrics: Mapping[str, float]
    visuals: Visuals | None = None


@dataclass
class ValSet:
    """A validation data set: ``name`` (used in log tags), the data set, its batch size."""

    name: str
    dataset: Dataset
    batch_size: int = 1


@dataclass
class StepContext:
    """Run information handed to ``train_step`` / ``val_step``.

    device: where the batch and model live. epoch: 0-based. iteration: global iteration count
    before this step. rank, world_size: the process and the number of processes. val_set: name
    of the validation set being evaluated (None while training). bf16 / fp16: the autocast requested.
    """

    device: torch.device
    epoch: int
    iteration: int
    rank: int = 0
    world_size: int = 1
    val_set: str | None = None
    bf16: bool = False
    fp16: bool = False

    def autocast(self):
        """Context manager: bfloat16 (``bf16``) or float16 (``fp16``) autocast as the config asks,
        else a no-op."""
        dtype = torch.float16 if self.fp16 else torch.bfloat16
        return torch.autocast(device_type=self.device.type, dtype=dtype, enabled=self.bf16 or self.fp16)


class Task:
    """Base class of a trainer; see the module docstring. ``self.cfg`` is the checked config."""

    task: str | None = None
    """Name in ``networks.TASKS``; None for a model outside the registry (then override
    ``build_model`` and pass --config)."""
    description = ""
    data_key: str | None = None
    """Config key that chose the training data: a ValueError of a training sample (e.g. an image
    smaller than the crop) is then reported as a one-line config error of that key."""
    keys: Mapping[str, Key] = {}
    best_metric = "psnr"
    """The validation metric (higher is better) whose mean over the validation sets picks 'best'."""
    crop_key: str | None = None
    """Config key of the side of the training crops the network sees, checked at start against the
    network's padding multiple (``check_config``)."""
    resume_fixed: tuple[str, ...] = ()
    """The task's config keys that a resumed run cannot change (see ``RESUME_FIXED``)."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.image_cache: Path | None = None  # checked_images' verdicts; the engine sets <save_dir>/IMAGE_CHECK_CACHE

    @classmethod
    def label(cls) -> str:
        """The task's name in logs: its registry name, else the class name."""
        return cls.task or cls.__name__

    @classmethod
    def default_config(cls) -> str:
        """The task's default config file (the registry's, the reference's values); '' outside it."""
        return networks.task_spec(cls.task).config if cls.task else ""

    @classmethod
    def schema(cls) -> dict[str, Key]:
        """Every config key: the engine's, the architecture's (released defaults), then the task's
        (a task may redefine a default)."""
        architecture = networks.architecture_keys(cls.task) if cls.task else {}
        return {**ENGINE_KEYS, **{name: Key(**fields) for name, fields in architecture.items()}, **cls.keys}

    def architecture(self) -> dict[str, Any]:
        """The constructor arguments set by the config's architecture keys."""
        return {name: self.cfg[name] for name in networks.architecture_keys(self.task)}

    def refuse_if(self, condition: bool, message: str) -> None:
        """Raise ConfigError with ``message`` when ``condition`` (the problem) holds: the checks that
        span several config keys."""
        if condition:
            raise ConfigError(message)

    def check_config(self) -> None:
        """The engine's checks between config keys, made at start before anything is written: the
        training crop (``crop_key``) must span at least the network's padding multiple, else the
        network cannot pad it, and at most ``MAX_CROP``; the architecture keys must give every layer
        weights (a width divided down to 0 channels is refused); with the cosine schedule ``lr_min``
        must not exceed ``lr``; an epoch draws at most ``MAX_EPOCH_SAMPLES``. A trainer checks its own
        keys in ``__init__`` (``refuse_if``)."""
        cfg = self.cfg
        self.refuse_if(cfg.iters_per_epoch * cfg.batch_size > MAX_EPOCH_SAMPLES,
                       f"config keys 'iters_per_epoch' and 'batch_size': an epoch draws iters_per_epoch x batch_size "
                       f"samples, at most 2^26 = {MAX_EPOCH_SAMPLES} (the sampler holds their order in memory), got "
                       f"{cfg.iters_per_epoch} x {cfg.batch_size}")
        self.refuse_if(cfg.scheduler == "cosine" and cfg.lr_min > cfg.lr,
                       f"config keys 'lr_min' and 'lr': the cosine decay goes from lr down to lr_min, so lr_min "
                       f"must be <= lr, got lr_min={cfg.lr_min:g} > lr={cfg.lr:g}")
        if self.crop_key is None:
            return
        self.refuse_if(cfg[self.crop_key] > MAX_CROP,
                       f"config key {self.crop_key!r}: at most {MAX_CROP} (one {MAX_CROP} x {MAX_CROP} training "
                       f"crop already needs about 82 GiB of memory), got {cfg[self.crop_key]}")
        with torch.device("meta"), warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Initializing zero-element tensors")  # refused below, in one line
            model = self.build_model()
        multiple = getattr(model, "pad_multiple", 1)
        crop, depth = self.cfg[self.crop_key], "'n_feat'" if "n_feat" in self.cfg else "the architecture keys"
        empty = [name for name, weight in model.named_parameters() if weight.numel() == 0]
        self.refuse_if(crop < multiple, f"config keys {self.crop_key!r} and {depth}: the network pads its input "
                                        f"to multiples of {multiple}, so {self.crop_key} must be at least {multiple}, "
                                        f"got {crop}; raise it or use fewer U-Net levels")
        self.refuse_if(bool(empty), f"config keys {depth}: the widths leave {len(empty)} layer(s) of the network "
                                    f"without weights (e.g. {empty[0] if empty else ''}); use wider levels")

    def fixed_on_resume(self) -> tuple[str, ...]:
        """The config keys a resumed run cannot change: ``RESUME_FIXED``, the architecture keys and
        ``resume_fixed``."""
        architecture = tuple(networks.architecture_keys(self.task)) if self.task else ()
        return (*RESUME_FIXED, *architecture, *self.resume_fixed)

    def checked_images(self, paths: Sequence[Path], check: ImageCheck) -> list[Path]:
        """The training images of ``paths`` that read, after the start-up check ``check`` (the trainers
        pass ``datasets.image_check.check_images``: the engine does not import ``datasets``). Its
        verdicts are kept in ``image_cache`` (a resumed run checks only new or changed files). A bad
        file stops the run with one line naming it, or with ``skip_bad_images`` is left out with a
        warning. Raises ConfigError when no image is left."""
        good = check(paths, cache_path=self.image_cache, skip_bad=self.cfg.skip_bad_images)
        if paths and not good:
            raise ConfigError(f"config key 'skip_bad_images': none of the {len(paths)} training images can be "
                              f"read")
        return good

    def image_files(self, key: str, extra: Sequence[Path] = (), limit: int = 0) -> list[Path]:
        """The image files of the folder (or list of folders) of config key ``key`` and of ``extra``
        folders: each once, sorted by path, the first ``limit`` (0: all). Raises ConfigError naming
        the key when there is no folder or no image."""
        value = self.cfg[key]
        folders = [*(value if isinstance(value, list) else [value] if value is not None else []), *extra]
        if not folders:
            raise ConfigError(f"config key {key!r}: no training image folder given")
        paths = sorted({p for folder in folders for p in list_images(folder)}, key=str)[:limit or None]
        if not paths:
            raise ConfigError(f"config key {key!r}: no images in {', '.join(map(str, folders))}")
        return paths

    def build_model(self) -> nn.Module:
        """The network, on the CPU in float32: the registry's model with ``architecture()``."""
        return networks.build_model(self.task, **self.architecture())

    def build_optimizer(self, parameters: Sequence[nn.Parameter]) -> torch.optim.Optimizer:
        """The optimiser of ``parameters`` (the model's): by default the one of config key ``optimizer``
        (``optim.OPTIMIZERS``: Adam, AdamW) at learning rate ``lr``."""
        return optim.build_optimizer(parameters, self.cfg)

    def build_scheduler(self, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
        """The learning-rate schedule, stepped once per epoch: by default the one of config key
        ``scheduler`` (``optim.SCHEDULES``: warm-up, then cosine or multistep). It must be a ``LambdaLR``
        whose factors depend on the config and the epoch only (exact resume, ``state.apply_schedule``)."""
        return optim.build_scheduler(optimizer, self.cfg)

    def build_train_set(self, length: int) -> Dataset:
        """The training set of ``length`` samples; it must have ``set_epoch(epoch)``."""
        raise NotImplementedError

    def build_val_sets(self) -> Sequence[ValSet]:
        """Validation sets (may be empty)."""
        return []

    def train_step(self, model: nn.Module, batch: Batch, ctx: StepContext) -> StepOutput:
        """Forward pass and loss for one batch (already on ``ctx.device``); no backward."""
        raise NotImplementedError

    def val_step(self, model: nn.Module, batch: Batch, ctx: StepContext) -> ValOutput:
        """Metrics of one validation batch (model in eval mode, gradients off)."""
        raise NotImplementedError
