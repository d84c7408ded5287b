"""Build focalops: CPU kernels always, CUDA kernels when torch has CUDA and nvcc is found.

Environment:
  FOCALOPS_CUDA=0/1      force the CUDA kernels off / on (default: on when torch.version.cuda
                         is set and CUDA_HOME points at a toolkit; a visible GPU is not needed)
  TORCH_CUDA_ARCH_LIST   GPU architectures; defaults to "8.0;9.0" when no GPU is visible
  MAX_JOBS               parallel compile jobs (ninja)
  DEBUG=1                -O0 -g instead of -O3
"""

import glob
import os
import sys

import torch
from setuptools import find_packages, setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))


def _flag(name: str):
    value = os.environ.get(name)
    return None if value is None else value not in ("0", "", "false", "False", "no")


def _want_cuda() -> bool:
    forced = _flag("FOCALOPS_CUDA")
    available = torch.version.cuda is not None and CUDA_HOME is not None
    if forced is True and not available:
        raise RuntimeError(
            "FOCALOPS_CUDA=1 but torch has no CUDA (torch.version.cuda is None) or nvcc was not found (set CUDA_HOME)."
        )
    return available if forced is None else forced


def _extension():
    debug = bool(_flag("DEBUG"))
    with_cuda = _want_cuda()
    opt = ["-O0", "-g"] if debug else ["-O3"]
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")) + glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    cxx = opt + ["-DPy_LIMITED_API=0x03090000"]  # the C++ standard is torch's default
    # at::parallel_for is inlined into our kernels: with torch's OpenMP backend it is an
    # `omp parallel` region that runs serially unless we compile with OpenMP too.
    openmp = torch._C.has_openmp and sys.platform.startswith("linux")
    link = ["-fopenmp"] if openmp else []
    cxx += link
    kwargs = dict(
        name="focalops._C",
        include_dirs=[os.path.join(ROOT, "csrc")],
        py_limited_api=True,
        extra_link_args=link,
    )
    if with_cuda:
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
            os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0"
            print("focalops: no GPU visible, TORCH_CUDA_ARCH_LIST defaults to 8.0;9.0")
        sources += sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
        nvcc = opt + ["--expt-relaxed-constexpr", "-lineinfo"]
        ext = CUDAExtension(sources=sources, extra_compile_args={"cxx": cxx, "nvcc": nvcc}, **kwargs)
    else:
        ext = CppExtension(sources=sources, extra_compile_args={"cxx": cxx}, **kwargs)
    print(
        "focalops build: torch {} | cuda kernels: {} (torch.version.cuda={}, CUDA_HOME={}) | "
        "arch list: {} | {} | OpenMP: {} | MAX_JOBS={}".format(
            torch.__version__,
            "on" if with_cuda else "off",
            torch.version.cuda,
            CUDA_HOME,
            os.environ.get("TORCH_CUDA_ARCH_LIST", "-") if with_cuda else "-",
            "debug" if debug else "release",
            "on" if openmp else "off",
            os.environ.get("MAX_JOBS", "auto"),
        )
    )
    return ext


setup(
    name="focalops",
    version="0.1.0",
    description="Fast fused ops for dense one-stage detectors (RetinaNet): focal loss, anchors, NMS.",
    packages=find_packages(include=["focalops", "focalops.*"]),
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildExtension.with_options(no_python_abi_suffix=True)},
    options={"bdist_wheel": {"py_limited_api": "cp39"}},
    python_requires=">=3.9",
    install_requires=["torch>=2.4"],
    entry_points={"console_scripts": ["focalops=focalops.cli:main"]},
)
