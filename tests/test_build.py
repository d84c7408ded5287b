"""The build: CUDA kernels registered when torch has CUDA; CUDA kernel headers compile with nvcc."""

import os
import shutil
import subprocess

import pytest
import torch

import focalops

CSRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "csrc")


def test_cpu_kernels_registered():
    assert torch._C._dispatch_has_kernel_for_dispatch_key("focalops::sigmoid_focal_loss", "CPU")
    assert torch._C._dispatch_has_kernel_for_dispatch_key("focalops::_sigmoid_focal_loss_backward", "CPU")


@pytest.mark.skipif(torch.version.cuda is None, reason="torch without CUDA: the library has CPU kernels only")
def test_cuda_kernels_registered_when_torch_has_cuda():
    assert focalops.has_cuda_kernels(), "torch has CUDA but focalops was built without its CUDA kernels"


FOCAL_INSTANTIATIONS = """
#include "cuda/focal_loss.cuh"
namespace fc = focalops::cuda;
#define FO_INST(T, A) template cudaError_t fc::launch_focal<T>(int, bool, int, const T*, const T*, const int64_t*, \\
    const T*, T*, A*, A*, const fc::FocalArgs<A>&, int, cudaStream_t);
FO_INST(float, float)
FO_INST(double, double)
FO_INST(__half, float)
FO_INST(__nv_bfloat16, float)
"""


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not found")
def test_focal_loss_cuda_kernels_compile(tmp_path):
    src = tmp_path / "focal_loss_check.cu"
    src.write_text(FOCAL_INSTANTIATIONS)
    proc = subprocess.run(
        ["nvcc", "-std=c++17", "-arch=sm_90", "-I", CSRC, "-c", str(src), "-o", str(tmp_path / "out.o")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
