"""Loads the compiled operator library (focalops._C), which registers torch.ops.focalops.*."""

import torch

try:
    from focalops import _C  # noqa: F401  (importing it runs the TORCH_LIBRARY registrations)
except ImportError as exc:  # pragma: no cover - exercised only on a broken install
    raise ImportError(
        f"focalops: the compiled library focalops._C could not be loaded ({exc}). Build it against the "
        f"installed torch {torch.__version__} with `pip install --no-build-isolation -e .` from the source tree "
        "(after upgrading torch, rebuild)."
    ) from exc


def has_cuda_kernels() -> bool:
    """True if the library was built with its CUDA kernels."""
    return torch._C._dispatch_has_kernel_for_dispatch_key("focalops::sigmoid_focal_loss", "CUDA")
