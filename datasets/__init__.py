"""Data sets and test-pair generators."""
from .noise_maps import gauss_kernel_mix, niid_noise_maps, normalise_map, peaks, resize_map, sincos_kernel
from .synthetic_test import synthetic_test_pairs
from .denoising_syn import SyntheticDenoisingTrain, SyntheticDenoisingVal
from .camera_noise import CameraNoiseTrain, CameraNoiseVal, synthesize_camera_noise
