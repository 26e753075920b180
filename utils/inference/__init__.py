"""The inference floor: model loading (``loading``; ``load_model_file(path)`` builds the architecture a
weights file describes), backends (``backends``, ``fast``), tiling
(``tiling``), the ``Restorer`` (``restorer``), the demos' run, image loop and protocol scoring
(``runner``), their flags and errors (``cli``), the denoisers' strength control (``noise_control``),
model size and FLOPs (``complexity``), LPIPS (``perceptual``), results tables (``tables``), pictures
(``pictures``) and model-zoo export (``export``). Demos and bench/ import what they need from here."""
from .backends import BACKENDS, PRECISIONS
from .cli import (add_common_args, add_protocol_args, check_no_overwrite, input_files, prepare_output_dir,
                  protocol_dirs, report_errors, restorer_from_args)
from .loading import load_model, load_model_file
from .noise_control import NoiseControl, add_denoiser_args
from .restorer import InputImageError, Restored, Restorer
from .pictures import noise_heatmap
from .runner import QUICK_LOOK_TAILS, SSIM_MIN_SIDE, Runner, Source, file_sources, progress
from .tables import grouped_means, markdown_table, write_csv, write_json, write_results, write_text
from .tiling import DEFAULT_TILE, DEFAULT_TILE_OVERLAP, run_model, tile_spans, tiled_call, tiling_params

__all__ = ["BACKENDS", "DEFAULT_TILE", "DEFAULT_TILE_OVERLAP", "PRECISIONS", "QUICK_LOOK_TAILS", "SSIM_MIN_SIDE",
           "InputImageError", "NoiseControl", "Restored", "Restorer", "add_denoiser_args",
           "Runner", "Source", "add_common_args", "add_protocol_args", "check_no_overwrite", "file_sources",
           "grouped_means", "input_files", "load_model", "load_model_file", "markdown_table", "noise_heatmap", "prepare_output_dir", "progress",
           "protocol_dirs", "report_errors", "restorer_from_args", "run_model", "tile_spans", "tiled_call",
           "tiling_params", "write_csv", "write_json", "write_results", "write_text"]
