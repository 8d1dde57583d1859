"""Shared fixtures: every package test runs on each available device."""

import pytest
import torch

DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param("cuda", id="cuda", marks=[
        pytest.mark.cuda,
        pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    ]),
]


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    """A torch.device: "cpu", and "cuda" when a GPU is present (marked `cuda`)."""
    return torch.device(request.param)

