"""Helpers shared by the benchmarks: machine and version records, peak-memory measurement and
timing. Results are written with ``utils.inference.tables`` (JSON, markdown) like the demos' tables;
``--device`` is read by ``utils.devices.choose_device``."""
import ctypes
import ctypes.util
import os
import platform
import shlex
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def cpu_model() -> str:
    """The CPU model name with its family and model numbers, e.g. 'Intel(R) Xeon(R) Processor
    (family 6 model 207)' (from /proc/cpuinfo on Linux, where virtual machines often report a generic
    name; else ``platform.processor()``)."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break  # the first processor's block is enough
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        pass
    if "model name" not in fields:
        return platform.processor() or platform.machine()
    numbers = f" (family {fields['cpu family']} model {fields['model']})" if "cpu family" in fields else ""
    return fields["model name"] + numbers


CAPABILITY_LIMITS = ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY")
"""Environment variables that limit the vector instructions oneDNN and ATen use (emulating an older CPU)."""


def cpu_class() -> dict:
    """The CPU's class for inference: its model, whether it has bf16 units (AVX512-BF16, AMX), the
    instruction-set limits set in the environment, and whether ``--precision auto`` runs bf16 on it
    (``utils.devices.cpu_bf16``) and why."""
    from utils.devices import cpu_bf16  # torch's CPU probes

    bf16, why = cpu_bf16()
    return {"cpu": cpu_model(), "avx512_bf16": torch.cpu._is_avx512_bf16_supported(),
            "amx": torch.cpu._is_amx_tile_supported(),
            "limits": {name: os.environ[name] for name in CAPABILITY_LIMITS if name in os.environ},
            "auto_bf16": bf16, "auto_bf16_why": why}


def class_slug(info: dict) -> str:
    """A file-name part naming a ``cpu_class``: the CPU model's first two words, then 'bf16' or
    'no-bf16' (what auto runs), e.g. 'amd-epyc_bf16'."""
    words = "-".join(info["cpu"].lower().replace("(r)", "").replace("(tm)", "").split()[:2])
    return f"{''.join(c for c in words if c.isalnum() or c == '-')}_{'bf16' if info['auto_bf16'] else 'no-bf16'}"


AMD_ZEN = {23: "zen2", 25: "zen3", 26: "zen5"}
"""AMD CPU family -> core generation (family 23 holds Zen 1 and 2, family 25 Zen 3 and 4: see
``_amd_generation``)."""
ZEN4_MODELS = set(range(0x10, 0x20)) | set(range(0x60, 0x80)) | set(range(0xA0, 0xB0))
"""Family 25 models that are Zen 4 (the others are Zen 3)."""


def _amd_generation(family: int, model: int) -> str:
    """'zen1' ... 'zen5' for an AMD family / model number, '' when unknown."""
    if family == 23:
        return "zen2" if model >= 0x30 else "zen1"
    if family == 25:
        return "zen4" if model in ZEN4_MODELS else "zen3"
    return AMD_ZEN.get(family, "")


def _slug(words: Sequence[str]) -> str:
    """Lower-case words joined by '-', keeping letters, digits and '-' only."""
    return "-".join("".join(c for c in w.lower() if c.isalnum()) for w in words if w)


def device_class(device: torch.device) -> str:
    """The class of machine a measurement belongs to, for result file names.

    CUDA: the GPU's name without memory size and form factor ('NVIDIA H100 80GB HBM3' ->
    'nvidia-h100', 'NVIDIA A100-SXM4-40GB' -> 'nvidia-a100'). Otherwise the CPU: vendor, line and
    core generation or AMX ('amd-epyc-zen5', 'intel-xeon-amx'), with '-emulated' when the
    environment limits the instruction sets (``CAPABILITY_LIMITS``).
    """
    if device.type == "cuda":
        words = torch.cuda.get_device_name(device).replace("-", " ").lower().split()
        return _slug([w for w in words if not (w.endswith("gb") or w.startswith(("hbm", "sxm", "pcie", "nvl")))])
    if device.type == "mps":
        return "apple-mps"
    name = cpu_model()
    words = name.lower().replace("(r)", "").replace("(tm)", "").split()[:2]
    fields = name.rpartition("(family ")[2].rstrip(")").split(" model ")
    generation = ""
    if words and words[0] == "amd" and len(fields) == 2 and all(f.isdigit() for f in fields):
        generation = _amd_generation(int(fields[0]), int(fields[1]))
    elif words and words[0] == "intel" and torch.cpu._is_amx_tile_supported():
        generation = "amx"
    emulated = "emulated" if any(v in os.environ for v in CAPABILITY_LIMITS) else ""
    return _slug([*words, generation, emulated])


def result_path(task: str, measurement: str, device_class: str, suffix: str = ".json",
                results_dir: Optional[Path] = None) -> Path:
    """The one naming scheme of new result files: ``<results_dir>/<measurement>_<task>_<device class>
    <suffix>`` (``results_dir`` default ``bench/results``), e.g. ``bench/results/sr_blur_sisr_nvidia-h100.json``;
    ``device_class`` as ``device_class`` gives it, so CPU and GPU runs never overwrite each other."""
    return (results_dir or RESULTS_DIR) / f"{measurement}_{task}_{device_class}{suffix}"


def machine_info(device: torch.device) -> dict:
    """CPU model, logical cores, the torch thread count, the CPU class (``cpu_class``) and, on CUDA,
    the GPU name."""
    info = {"cpu": cpu_model(), "logical_cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
            "device": device.type, "cpu_class": cpu_class()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def versions() -> dict:
    """Python and torch versions, and the CPU convolution back ends torch was built with."""
    out = {"python": platform.python_version(), "torch": torch.__version__,
           "mkldnn": torch.backends.mkldnn.is_available(),
           "nnpack": torch.backends.nnpack.is_available()}
    if torch.version.cuda:
        out["cuda"] = torch.version.cuda
    return out


def command_line() -> str:
    """The command line of this process, shell-quoted."""
    return " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv])


def baseline_first(paths: Sequence[str], baseline: str = "fp32") -> list[str]:
    """The baseline path, then the other requested paths once each, in their order."""
    return [baseline] + [p for p in dict.fromkeys(paths) if p != baseline]


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds taken by one call of ``fn``, device work included."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


class _RssSampler:
    """Peak resident set size of this process while running, sampled by a thread reading
    /proc/self/statm every ``interval`` seconds (the sampler misses spikes shorter than that)."""

    def __init__(self, interval: float = 0.001):
        self.interval = interval
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(self.interval)

    def __enter__(self):
        self.peak = self.rss()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())


def release_free_heap() -> None:
    """Give the C heap's free pages back to the system (glibc ``malloc_trim``; a no-op
    elsewhere), so that a later resident-set measurement sees them being used again."""
    name = ctypes.util.find_library("c")
    if name is None:
        return
    libc = ctypes.CDLL(name)
    if hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def peak_memory_mb(fn: Callable[[], object], device: torch.device) -> Optional[float]:
    """Peak memory added by one call of ``fn``, in MiB.

    CUDA: ``torch.cuda.max_memory_allocated`` during the call minus the allocation before it.
    CPU: the peak resident set size sampled during the call minus the size before it, after
    returning the heap's free pages to the system (Linux only; None elsewhere). Buffers a back
    end keeps from an earlier call (e.g. NNPACK's workspace, oneDNN's primitive cache) are not
    counted again, so call this on the first call of a path."""
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    if not os.path.exists("/proc/self/statm"):
        return None
    release_free_heap()
    sampler = _RssSampler()
    before = sampler.rss()
    with sampler:
        fn()
    return (sampler.peak - before) / 2**20
