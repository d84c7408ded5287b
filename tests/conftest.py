"""Device parametrisation: every test that takes `device` runs on CPU, and on CUDA when present."""

import pytest
import torch

import focalops  # noqa: F401  (loads the ops)

_HAS_CUDA = torch.cuda.is_available()

needs_cuda = pytest.mark.skipif(not _HAS_CUDA, reason="needs a CUDA device")

DEVICES = ["cpu", pytest.param("cuda", marks=needs_cuda)]


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param
