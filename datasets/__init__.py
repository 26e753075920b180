"""Data sets and test-pair generators.

The names below are imported from their modules on first use (PEP 562), so that a demo reading the
test protocols' inputs or a restore does not load the training sets."""
import importlib

_MODULES = {
    "noise_maps": ("gauss_kernel_mix", "niid_noise_maps", "normalise_map", "peaks", "resize_map", "sincos_kernel"),
    "synthetic_test": ("synthetic_test_pairs",),
    "denoising_syn": ("SyntheticDenoisingTrain", "SyntheticDenoisingVal"),
    "camera_noise": ("CameraNoiseTrain", "CameraNoiseVal", "synthesize_camera_noise"),
}
_HOME = {name: module for module, names in _MODULES.items() for name in names}
__all__ = sorted(_HOME)


def __getattr__(name: str):
    """The package-level name ``name``, imported from its module the first time it is asked for."""
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_HOME[name]}", __name__), name)
    globals()[name] = value
    return value
