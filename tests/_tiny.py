"""Shared by the CLI and engine tests: the flags of a tiny model, and training on one thread."""

import pytest
import torch

# ResNet-18 with 16-channel heads on 64 px images: a training step takes ~0.2 s on one core.
TINY = [
    "--backbone", "resnet18", "--fpn-channels", "16", "--head-convs", "1", "--image-size", "64",
    "--anchor-sizes", "8,16,32,64,128", "--batch-size", "2", "--train-images", "8", "--val-images", "4",
    "--workers", "0", "--no-progress", "--device", "cpu", "--warmup-iters", "2", "--log-every", "1",
]  # fmt: skip


@pytest.fixture
def one_thread():
    """Training on one thread: on the shared 2-core test machine, two OpenMP threads competing with
    other jobs ran a tiny step 5-10x slower (measured 1.0-2.9 s against 0.17-0.29 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
