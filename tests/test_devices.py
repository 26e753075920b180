"""The device helpers: the TF32 switch, the bf16 probe of a chosen GPU, ``--device cuda:N``."""
from __future__ import annotations

import warnings

import pytest
import torch

from utils import devices


@pytest.fixture
def tf32_restored():
    """Put the process-wide TF32 settings back as they were after the test."""
    before = (torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision)
    yield
    torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision = before


@pytest.mark.parametrize("enabled, precision", [(True, "tf32"), (False, "ieee")])
def test_set_tf32_sets_matmul_and_convolutions_without_warnings(tf32_restored, enabled, precision):
    torch.backends.cuda.matmul.fp32_precision = "none"
    torch.backends.cudnn.conv.fp32_precision = "none"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        devices.set_tf32(enabled)
    assert torch.backends.cuda.matmul.fp32_precision == precision
    assert torch.backends.cudnn.conv.fp32_precision == precision

