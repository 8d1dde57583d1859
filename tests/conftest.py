"""Shared fixtures: every package test runs on each available device."""

import os

import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Each xdist worker already has a core; more torch threads than cores make every small op
    # wait for a descheduled thread (tiny-model tests ran up to 100x slower).
    torch.set_num_threads(1)

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

