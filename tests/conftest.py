"""Shared set-up: every package test runs on each available device; kernels get their own IPython directory."""

import atexit
import os
import shutil
import tempfile

import pytest
import torch

# Each process running tests gives the kernels it starts (book build, nbval, feedback) an IPython directory
# of its own: kernels of two xdist workers writing one ~/.ipython history database at once can wait on its
# lock, and IPython then prints "history saving thread hit an unexpected error" into a cell's output.
os.environ["IPYTHONDIR"] = tempfile.mkdtemp(prefix=f"ipython-{os.environ.get('PYTEST_XDIST_WORKER', 'main')}-")
atexit.register(shutil.rmtree, os.environ["IPYTHONDIR"], ignore_errors=True)

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

