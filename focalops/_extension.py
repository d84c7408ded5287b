"""Loads the compiled operator library (focalops._C), which registers torch.ops.focalops.*.

A build loads only with the torch it was compiled against (the same release line, and a CUDA
torch of the same CUDA major for a build with CUDA kernels): before loading, the torch that
setup.py recorded in focalops/_build_info.py is compared with the installed one, and a mismatch
is one line saying both and the command that fixes it, instead of the loader's undefined symbol.
``FOCALOPS_SKIP_TORCH_CHECK=1`` loads regardless.
"""

import os
from typing import Optional

import torch

_SOURCE_TREE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _release_line(version: str) -> str:
    """ "2.14.1+cu130" -> "2.14" """
    return ".".join(version.split("+")[0].split(".")[:2])


def _describe(version: str, cuda: Optional[str]) -> str:
    return f"torch {version} ({'CUDA ' + cuda if cuda else 'no CUDA'})"


def _fix_command(built: dict) -> str:
    """The command that makes the installed pair agree: rebuilding against the installed torch
    where the source tree is at hand, else installing the torch this build needs."""
    if os.path.isfile(os.path.join(_SOURCE_TREE, "setup.py")):
        return f"pip install --no-build-isolation -e {_SOURCE_TREE} (rebuild against the installed torch)"
    line = _release_line(built["torch_version"])
    command = f"pip install 'torch=={line}.*'"
    if built["cuda"]:
        command += " --index-url https://download.pytorch.org/whl/cu" + built["torch_cuda"].replace(".", "")
    return command + " (or a focalops build for the installed torch)"


def torch_mismatch(built: dict, version: str, cuda: Optional[str], cxx11_abi: bool) -> Optional[str]:
    """One line naming what focalops was built against, what is installed and the fix; None when
    the installed torch is one this build loads with. `built` is focalops/_build_info.py's record."""
    problems = []
    if _release_line(built["torch_version"]) != _release_line(version):
        problems.append(f"a build loads only with torch {_release_line(built['torch_version'])}.x")
    if built["cuda"] and not cuda:
        problems.append("its CUDA kernels need a CUDA torch")
    elif built["cuda"] and cuda.split(".")[0] != built["torch_cuda"].split(".")[0]:
        problems.append(f"its CUDA kernels need a CUDA {built['torch_cuda'].split('.')[0]}.x torch")
    if built.get("cxx11_abi", cxx11_abi) != cxx11_abi:
        problems.append("the two use different C++ ABIs (_GLIBCXX_USE_CXX11_ABI)")
    if not problems:
        return None
    kernels = "CUDA and CPU kernels" if built["cuda"] else "CPU kernels only"
    return (
        f"focalops was built against {_describe(built['torch_version'], built['torch_cuda'])}, {kernels}, "
        f"but {_describe(version, cuda)} is installed ({'; '.join(problems)}). Fix: {_fix_command(built)}"
    )


def _build_info() -> Optional[dict]:
    try:
        from focalops import _build_info as info
    except ImportError:  # a build made before setup.py recorded it
        return None
    return {k: v for k, v in vars(info).items() if not k.startswith("_")}


_BUILT = _build_info()
if _BUILT is not None and os.environ.get("FOCALOPS_SKIP_TORCH_CHECK", "0") in ("0", ""):
    _mismatch = torch_mismatch(_BUILT, torch.__version__, torch.version.cuda, bool(torch._C._GLIBCXX_USE_CXX11_ABI))
    if _mismatch is not None:
        raise ImportError(_mismatch)

try:
    from focalops import _C  # noqa: F401  (importing it runs the TORCH_LIBRARY registrations)
except ImportError as exc:  # pragma: no cover - exercised only on a broken install
    built = f" (built against torch {_BUILT['torch_version']})" if _BUILT else ""
    raise ImportError(
        f"focalops: the compiled library focalops._C{built} could not be loaded ({exc}). Build it against the "
        f"installed torch {torch.__version__} with `pip install --no-build-isolation -e .` from the source tree "
        "(after upgrading torch, rebuild)."
    ) from exc


def build_info() -> dict:
    """What the compiled library was built against, as setup.py recorded it: ``torch_version``,
    ``torch_cuda`` (torch's CUDA version or None), ``cuda`` (whether the CUDA kernels were built),
    ``cuda_forced`` (``FOCALOPS_CUDA`` at build time: True/False, None when unset),
    ``cuda_arch_list`` and ``cxx11_abi``. Empty for a build older than the record."""
    return dict(_BUILT or {})


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
