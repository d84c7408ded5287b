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


def cpu_capability() -> str:
    """The CPU kernels in use: ``"default"``, ``"avx2"`` or ``"avx512"``.

    Chosen once, when the library loads: the best build this CPU runs, as ATen chooses its own
    (``ATEN_CPU_CAPABILITY=default|avx2|avx512`` lowers it; a capability the CPU lacks is never
    chosen). On x86-64 ``"default"`` runs on SSE2 (the baseline every x86-64 CPU has); off x86-64
    only ``"default"`` is built (at::vec maps it to NEON/SVE on ARM).
    """
    return _C.cpu_capability()
