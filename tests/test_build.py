"""The build: kernels registered per device; every CUDA source compiles with nvcc.

Without a GPU the CUDA launchers are still compiled here: nvcc with torch's headers and five
stub headers for the CUDA math libraries that torch's CUDA context header includes (only
their handle types are needed) and that this machine's toolkit lacks.
"""

import glob
import os
import re
import shutil
import subprocess
import sys
import sysconfig

import pytest
import torch
import torch.utils.cpp_extension as cpp_extension
from conftest import EMULATED

import focalops
from focalops._extension import build_info

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "csrc", "emu"))
from kernel_resources import find_cuobjdump  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CUDA_SOURCES = sorted(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu")))
# Every schema in csrc/focalops.cpp must have a kernel per device.
OPS = re.findall(r'm\.def\(\s*"(\w+)\(', open(os.path.join(ROOT, "csrc", "focalops.cpp")).read())
# CPU only by design (csrc/focalops.cpp says why).
CPU_ONLY_OPS = {"_sigmoid_focal_loss_with_grad"}
BUILD_INFO = build_info()


def test_every_schema_found():
    assert "sigmoid_focal_loss" in OPS and len(OPS) == len(set(OPS))


def test_cpu_kernels_registered():
    for op in OPS:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"focalops::{op}", "CPU"), op


@pytest.mark.skipif(not EMULATED, reason="the emulated CUDA kernels (focalops._C_emu) are not loaded")
def test_emulated_kernels_registered_for_every_cuda_op():
    """The emulation build compiles every csrc/cuda/*.cu: each op with CUDA kernels has them on
    the emulated device too."""
    for op in OPS:
        has = torch._C._dispatch_has_kernel_for_dispatch_key(f"focalops::{op}", "PrivateUse1")
        assert has != (op in CPU_ONLY_OPS), op


@pytest.mark.skipif(
    not focalops.has_cuda_kernels() or find_cuobjdump() is None, reason="needs focalops' CUDA kernels and cuobjdump"
)
def test_emulator_kernel_resources_are_current():
    """csrc/emu/kernel_resources.inc (registers, static shared memory and launch bounds of every
    kernel, which the emulator checks each launch against) matches this nvcc build."""
    script = os.path.join(ROOT, "csrc", "emu", "kernel_resources.py")
    import focalops._C as lib

    proc = subprocess.run([sys.executable, script, "--check", lib.__file__], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.skipif(torch.version.cuda is None, reason="torch without CUDA: the library has CPU kernels only")
def test_cuda_kernels_registered_when_torch_has_cuda():
    """With a CUDA torch every op has CUDA kernels, unless the build was made with FOCALOPS_CUDA=0
    (recorded in focalops/_build_info.py): then none has."""
    forced_off = BUILD_INFO.get("cuda_forced") is False
    if forced_off:
        assert not focalops.has_cuda_kernels(), "built with FOCALOPS_CUDA=0 but CUDA kernels are registered"
    else:
        assert focalops.has_cuda_kernels(), "torch has CUDA but focalops was built without its CUDA kernels"
    for op in OPS:
        has = torch._C._dispatch_has_kernel_for_dispatch_key(f"focalops::{op}", "CUDA")
        assert has == (not forced_off and op not in CPU_ONLY_OPS), op


def fatbin_archs(library):
    """(architectures with a cubin, architectures with PTX) in a library's fat binary, as ints (75
    for sm_75), read with cuobjdump."""
    tool = find_cuobjdump()

    def listed(flag):
        out = subprocess.run([tool, flag, library], capture_output=True, text=True).stdout
        return {int(m) for m in re.findall(r"\.sm_(\d+)[a-z]?\.(?:cubin|ptx)\b", out)}

    return listed("--list-elf"), listed("--list-ptx")


def arch_list_numbers(arch_list):
    """ "7.5;8.6;12.0+PTX" -> ({75, 86, 120}, {120}) """
    real, ptx = set(), set()
    for arch in arch_list.replace(" ", ";").split(";"):
        m = re.fullmatch(r"(\d+)\.(\d)[a-z]?(\+PTX)?", arch.strip())
        if m:
            real.add(int(m[1]) * 10 + int(m[2]))
            if m[3]:
                ptx.add(int(m[1]) * 10 + int(m[2]))
    return real, ptx


@pytest.mark.skipif(
    not focalops.has_cuda_kernels() or find_cuobjdump() is None or not BUILD_INFO.get("cuda_arch_list"),
    reason="needs focalops' CUDA kernels (with the recorded arch list) and cuobjdump",
)
def test_fat_binary_has_every_listed_architecture():
    """Every architecture of the build's TORCH_CUDA_ARCH_LIST has its kernels in the library, and
    every +PTX one its PTX (what a GPU newer than all of them JIT-compiles)."""
    import focalops._C as lib

    elf, ptx = fatbin_archs(lib.__file__)
    want_elf, want_ptx = arch_list_numbers(BUILD_INFO["cuda_arch_list"])
    assert want_elf and want_elf <= elf, (BUILD_INFO["cuda_arch_list"], sorted(elf))
    assert want_ptx <= ptx, (BUILD_INFO["cuda_arch_list"], sorted(ptx))


def _setup(*args, env=None):
    """`python setup.py ARGS` in the source tree (commands that compile nothing)."""
    proc = subprocess.run(
        [sys.executable, "setup.py", *args], cwd=ROOT, env={**os.environ, **(env or {})}, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.skipif(torch.version.cuda is None or shutil.which("nvcc") is None, reason="needs a CUDA torch and nvcc")
def test_cuda_build_version_and_default_arch_list(tmp_path, monkeypatch):
    """A CUDA build's version carries torch's CUDA (+cu130); without TORCH_CUDA_ARCH_LIST it builds
    for every architecture torch ships kernels for, with PTX for the newest."""
    env = {"FOCALOPS_CUDA": "1", "TORCH_CUDA_ARCH_LIST": ""}
    out = _setup("--version", env=env)
    assert out.strip().splitlines()[-1] == f"{focalops.__version__}+cu{torch.version.cuda.replace('.', '')}"
    line = next(x for x in out.splitlines() if "TORCH_CUDA_ARCH_LIST unset" in x)
    archs = line.rsplit(": ", 1)[1].split(";")
    shipped = sorted(int(a[3:]) for a in torch._C._cuda_getArchFlags().split() if a[3:].isdigit())
    nvcc = subprocess.run(["nvcc", "--list-gpu-arch"], capture_output=True, text=True).stdout
    expected = [f"{a // 10}.{a % 10}" for a in shipped if f"compute_{a}" in nvcc.split()]
    expected[-1] += "+PTX"
    assert archs == expected
    if find_cuobjdump() is None:
        return
    # What torch's extension builder makes of that list: a cubin per architecture, PTX for the newest
    # (the library itself is checked by test_fat_binary_has_every_listed_architecture after a CUDA build).
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", ";".join(archs))
    kernel = tmp_path / "k.cu"
    kernel.write_text("__global__ void k(float* x) { x[threadIdx.x] += 1.f; }\n")
    lib = tmp_path / "k.so"
    flags = cpp_extension._get_cuda_arch_flags()
    subprocess.run(["nvcc", "-shared", "-Xcompiler", "-fPIC", *flags, str(kernel), "-o", str(lib)], check=True)
    assert fatbin_archs(str(lib)) == arch_list_numbers(";".join(archs))


_STUBS = {
    "cusparse.h": "typedef struct cusparseContext* cusparseHandle_t;\ntypedef int cusparseStatus_t;\n",
    "cublas_v2.h": "typedef struct cublasContext* cublasHandle_t;\ntypedef int cublasStatus_t;\n",
    "cublasLt.h": "typedef struct cublasLtContext* cublasLtHandle_t;\n",
    "cusolver_common.h": "typedef int cusolverStatus_t;\n",
    "cusolverDn.h": '#include "cusolver_common.h"\ntypedef struct cusolverDnContext* cusolverDnHandle_t;\n',
    "c10/cuda/impl/cuda_cmake_macros.h": "",
}


@pytest.fixture(scope="module")
def nvcc_include_flags(tmp_path_factory):
    stubs = tmp_path_factory.mktemp("cuda_stubs")
    for name, text in _STUBS.items():
        path = stubs / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    torch_includes = cpp_extension.include_paths()
    dirs = [os.path.join(ROOT, "csrc"), *torch_includes, sysconfig.get_paths()["include"], str(stubs)]
    return [flag for d in dirs for flag in ("-I", d)]


_SKIP_NVCC = pytest.mark.skipif(
    shutil.which("nvcc") is None or focalops.has_cuda_kernels(),
    reason="needs nvcc and a build without CUDA kernels (a CUDA build has compiled these against the real headers)",
)


class _Compiles:
    """nvcc runs, at most MAX_JOBS at a time (default: all at once; they take ~30 s each), started in
    order and handed out by source."""

    def __init__(self, commands, limit):
        self.pending, self.limit, self.running, self.done = list(commands.items()), limit, {}, {}

    def _start(self):
        while self.pending and len(self.running) < self.limit:
            source, cmd = self.pending.pop(0)
            self.running[source] = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def result(self, source):
        """(return code, output) of the compile of `source`."""
        self._start()
        while source not in self.done:
            first, proc = next(iter(self.running.items()))
            output, _ = proc.communicate(timeout=900)
            self.done[first] = (proc.returncode, output)
            del self.running[first]
            self._start()
        return self.done[source]

    def kill(self):
        for proc in self.running.values():
            proc.kill()


@pytest.fixture(scope="module")
def nvcc_jobs(nvcc_include_flags, tmp_path_factory):
    out = tmp_path_factory.mktemp("nvcc_out")
    commands = {
        source: [
            "nvcc",
            "-std=c++20",
            "-arch=sm_90",
            "--expt-relaxed-constexpr",
            *nvcc_include_flags,
            "-c",
            source,
            "-o",
            str(out / (os.path.basename(source) + ".o")),
        ]
        for source in CUDA_SOURCES
    }
    jobs = _Compiles(commands, int(os.environ.get("MAX_JOBS") or len(commands)))
    yield jobs
    jobs.kill()


CUDA_HEADERS = sorted(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cuh")))


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc")
@pytest.mark.parametrize("header", CUDA_HEADERS, ids=os.path.basename)
def test_cuda_kernel_header_is_torch_free(header, tmp_path):
    """The kernel bodies (csrc/cuda/*.cuh) compile with nvcc alone: csrc/ and the CUDA toolkit's
    headers on the include path, no torch (the launchers in the .cu files pass raw pointers)."""
    unit = tmp_path / "unit.cu"
    unit.write_text(f'#include "cuda/{os.path.basename(header)}"\n')
    command = ["nvcc", "-std=c++17", "-arch=sm_90", "--expt-relaxed-constexpr", "-I", os.path.join(ROOT, "csrc"),
               "-c", str(unit), "-o", str(tmp_path / "unit.o")]  # fmt: skip
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]


@_SKIP_NVCC
@pytest.mark.parametrize("source", CUDA_SOURCES, ids=os.path.basename)
def test_cuda_source_compiles(source, nvcc_jobs):
    returncode, output = nvcc_jobs.result(source)
    assert returncode == 0, output[-4000:]
