"""Build focalops: CPU kernels always, CUDA kernels when torch has CUDA and a CUDA toolkit is found.

The CPU kernels in csrc/cpu/kernels/ are compiled once per capability (default, avx2, avx512;
default only off x86-64) and one set is chosen when the library loads (csrc/cpu/stub.h).

A build loads only with the torch release line it was compiled against (torch's C++ ABI changes
between releases), so a built wheel says so: it requires `torch==<build major.minor>.*`, carries a
local version tag naming the build (`+cu130`, `+cpu`), and records torch's version, its CUDA
version and whether the CUDA kernels were built in focalops/_build_info.py, which
focalops/_extension.py checks before loading the library. The source distribution keeps the
range that source builds support (`torch>=2.4`).

Environment:
  FOCALOPS_CUDA=0/1      force the CUDA kernels off / on (default: on when torch.version.cuda
                         is set and a CUDA toolkit is found; a visible GPU is not needed)
  CUDA_HOME              the CUDA toolkit (default: the first of torch's guess, the folder of
                         `nvcc`, /usr/local/cuda, /usr/local/cuda-* that has nvcc and libcudart)
  TORCH_CUDA_ARCH_LIST   GPU architectures (e.g. "7.5;8.0;9.0+PTX"; "native": the visible GPUs only);
                         default: every architecture the build torch ships kernels for (that this
                         nvcc can compile), plus PTX for the newest, which a newer GPU JIT-compiles
  MAX_JOBS               parallel compile jobs (ninja)
  DEBUG=1                -O0 -g instead of -O3
  FOCALOPS_SANITIZE=1    AddressSanitizer + UndefinedBehaviorSanitizer build of the host code (CPU
                         kernels, and the emulated CUDA kernels when built; `make sanitize` builds it
                         aside and runs the op tests under it)
  FOCALOPS_CUDA_EMULATE=1  also build focalops._C_emu: the CUDA launchers and kernels (csrc/cuda) as
                         host C++ on the SIMT emulator (csrc/emu), for the tests on machines without a
                         GPU (`make build` sets it; installs for use leave it off)
  FOCALOPS_EMULATE_TSAN=1  build only focalops._C_emu, with ThreadSanitizer (`make tsan`, which
                         puts the tree's own focalops._C beside it)
"""

import glob
import os
import platform
import re
import shutil
import subprocess
import sys

from setuptools import find_packages, setup

METADATA = dict(
    name="focalops",
    description="Fast fused ops for dense one-stage detectors (RetinaNet): focal loss, anchors, NMS.",
    # The benchmark suite ships as focalops.benchmarks (`focalops bench` after any install).
    packages=find_packages(include=["focalops", "focalops.*"]) + ["focalops.benchmarks"],
    package_dir={"focalops.benchmarks": "benchmarks"},
    extras_require={
        "cli": ["pillow>=10.1", "tqdm", "pycocotools", "matplotlib"],
        "onnx": ["onnx", "onnxscript", "onnxruntime"],
    },
    entry_points={"console_scripts": ["focalops=focalops.cli:main"]},
)
SDIST = "sdist" in sys.argv[1:]  # pip's build_sdist runs `setup.py sdist`; every other command builds
# The source distribution: the sources (MANIFEST.in) and the range of torch they build against.
SDIST_REQUIRES = ["torch>=2.4", "numpy"]

try:
    import torch
except ImportError:  # an isolated build environment has no torch: never let pip fetch one
    if SDIST or sys.argv[1:2] == ["egg_info"]:  # `python -m build --sdist` compiles nothing: no torch needed
        setup(version="0.1.0", install_requires=SDIST_REQUIRES, python_requires=">=3.9", **METADATA)
        sys.exit(0)
    sys.exit(
        "focalops: torch is not importable in this build environment. Install torch first, then build "
        "against it with: pip install --no-build-isolation ."
    )

import torch.utils.cpp_extension as cpp_extension  # noqa: E402  (after the torch check)
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402

ROOT = os.path.dirname(os.path.abspath(__file__))

# Per-ISA builds of csrc/cpu/kernels/*.cpp (ATen's CPU_CAPABILITY macros select at::vec).
CAPABILITY_FLAGS = {
    "default": ["-DCPU_CAPABILITY=DEFAULT", "-DCPU_CAPABILITY_DEFAULT"],
    "avx2": ["-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2", "-mavx2", "-mfma", "-mf16c"],
    "avx512": [
        "-DCPU_CAPABILITY=AVX512",
        "-DCPU_CAPABILITY_AVX512",
        "-mavx512f",
        "-mavx512bw",
        "-mavx512vl",
        "-mavx512dq",
        "-mfma",
        "-mf16c",
    ],
}


QUIET_HEADER_WARNINGS = ["-Wno-unknown-pragmas", "-Wno-maybe-uninitialized"]

# Every UB check stops the process (UBSan would otherwise print and go on). float-cast-overflow
# (a float -> int conversion out of range, e.g. of NaN) is not part of GCC's `undefined`.
# -fno-wrapv: Python's CFLAGS carry -fwrapv, which would define away signed overflow.
SANITIZE = ["-fsanitize=address,undefined,float-cast-overflow"]
SANITIZE_CFLAGS = SANITIZE + [
    "-fno-sanitize-recover=undefined,float-cast-overflow",
    "-fno-wrapv",
    "-fno-omit-frame-pointer",
    "-g",
]


def _flag(name: str):
    value = os.environ.get(name)
    return None if value is None else value not in ("0", "", "false", "False", "no")


def _capabilities():
    x86 = platform.machine().lower() in ("x86_64", "amd64") and not sys.platform.startswith("win")
    return ["default", "avx2", "avx512"] if x86 else ["default"]


def _is_cuda_toolkit(path) -> bool:
    if not path or not os.path.isfile(os.path.join(path, "bin", "nvcc")):
        return False
    return any(glob.glob(os.path.join(path, lib, "libcudart.so*")) for lib in ("lib64", "lib"))


def _cuda_home():
    """The CUDA toolkit to build with: nvcc and libcudart side by side (torch's own guess can be a
    folder that holds only an nvcc wrapper, e.g. /usr/local from /usr/local/bin/nvcc)."""
    explicit = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if explicit:
        return explicit if os.path.isdir(explicit) else None
    nvcc = shutil.which("nvcc")
    candidates = [cpp_extension.CUDA_HOME]
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    candidates += ["/usr/local/cuda", *sorted(glob.glob("/usr/local/cuda-*"), reverse=True)]
    return next((c for c in candidates if _is_cuda_toolkit(c)), None)


def _pip_cuda_includes():
    """Header folders of torch's pip CUDA wheels (nvidia/*/include: cuSPARSE, cuBLAS, ...), which a
    minimal toolkit lacks. They are searched after the toolkit's own headers."""
    site = os.path.dirname(os.path.dirname(torch.__file__))
    return sorted(glob.glob(os.path.join(site, "nvidia", "*", "include")))


def _limited_api():
    """(C macro value, wheel tag). Recent torch defines Py_LIMITED_API itself for py_limited_api
    extensions (cpp_extension.min_supported_cpython); we follow it so that macro and tag agree."""
    version = getattr(cpp_extension, "min_supported_cpython", None)
    if version is None:
        return "0x03090000", "cp39", True
    minor = int(version[4:6], 16)
    return version, f"cp3{minor}", False


def _nvcc_archs(cuda_home):
    """The real architectures (as ints, 75 for sm_75) this nvcc compiles for."""
    nvcc = os.path.join(cuda_home, "bin", "nvcc")
    try:
        out = subprocess.run([nvcc, "--list-gpu-arch"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None  # an nvcc older than 11.0: no filter
    return {int(m) for m in re.findall(r"\bcompute_(\d+)\b", out)}


def _default_arch_list(cuda_home) -> str:
    """Every architecture the build torch ships kernels for (torch._C._cuda_getArchFlags(), known
    without a GPU, e.g. "sm_75 sm_80 sm_86 sm_90 sm_100 sm_120"), less those this nvcc cannot
    build, with PTX for the newest so that GPUs newer than all of them still JIT-compile."""
    flags = torch._C._cuda_getArchFlags() or ""
    archs = sorted({int(m) for m in re.findall(r"\bsm_(\d+)\b", flags)})
    supported = _nvcc_archs(cuda_home)
    if supported is not None:
        archs = [a for a in archs if a in supported]
    if not archs:  # a torch that names no architectures: the Volta-to-Hopper baseline
        archs = [75, 80, 90]
    names = [f"{a // 10}.{a % 10}" for a in archs]
    names[-1] += "+PTX"
    return ";".join(names)


def _want_cuda(cuda_home) -> bool:
    forced = _flag("FOCALOPS_CUDA")
    available = torch.version.cuda is not None and cuda_home is not None
    if forced is True and not available:
        raise RuntimeError(
            "FOCALOPS_CUDA=1 but torch has no CUDA (torch.version.cuda is None) or no CUDA toolkit was found "
            "(set CUDA_HOME to a folder with bin/nvcc and lib64/libcudart.so)."
        )
    return available if forced is None else forced


# What this build is compiled against, filled in by _extension() and written, next to the built
# library, to focalops/_build_info.py (git-ignored; focalops/_extension.py reads it).
BUILD_INFO = {}


def _release_line(version: str) -> str:
    """ "2.14.1+cu130" -> "2.14" """
    return ".".join(version.split("+")[0].split(".")[:2])


def _local_tag(info) -> str:
    """The wheel's local version label: the CUDA version of the build torch (cu130), or cpu."""
    return "cu" + info["torch_cuda"].replace(".", "") if info["cuda"] else "cpu"


def _requirements(sdist: bool):
    """A build requires the torch release line it was compiled against (as torchvision pins its
    torch); the source distribution builds against any torch >= 2.4."""
    if sdist:
        return SDIST_REQUIRES
    return ["torch=={}.*".format(_release_line(BUILD_INFO["torch_version"])), "numpy"]


def _write_build_info(folder):
    path = os.path.join(folder, "_build_info.py")
    text = '"""Written by setup.py when the library was built: what focalops._C was compiled against."""\n\n' + "".join(
        f"{key} = {value!r}\n" for key, value in BUILD_INFO.items()
    )
    os.makedirs(folder, exist_ok=True)
    if not os.path.exists(path) or open(path).read() != text:
        with open(path, "w") as f:
            f.write(text)


class BuildWithCpuKernels(BuildExtension):
    """Compiles csrc/cpu/kernels/*.cpp once per capability and links every copy into the extension.

    The default copy is linked first, so inline functions that several copies emit resolve to
    baseline code (an AVX-512 copy of a shared inline function must never run on an AVX2 CPU).
    Writes focalops/_build_info.py beside the built library (and into the source tree when the
    library is copied there: --inplace and editable installs)."""

    def run(self):
        super().run()
        _write_build_info(os.path.join(self.build_lib, "focalops"))
        if self.inplace or getattr(self, "editable_mode", False):
            _write_build_info(self.get_finalized_command("build_py").get_package_dir("focalops"))

    def build_extension(self, ext):
        if ext.name != "focalops._C":
            return super().build_extension(ext)
        sources = sorted(glob.glob(os.path.join("csrc", "cpu", "kernels", "*.cpp")))
        base = ext.extra_compile_args["cxx"] if isinstance(ext.extra_compile_args, dict) else ext.extra_compile_args
        objects = []
        for cap in _capabilities():
            objects += self.compiler.compile(
                sources,
                output_dir=os.path.join(self.build_temp, "cpu_" + cap),
                include_dirs=ext.include_dirs,
                # at::vec's headers trip these two under GCC 12 (unknown `#pragma unroll`, a false
                # maybe-uninitialized inside avx512fintrin.h): silence them for these files only.
                extra_postargs={"cxx": base + CAPABILITY_FLAGS[cap] + QUIET_HEADER_WARNINGS},
                depends=sorted(glob.glob(os.path.join("csrc", "**", "*.h"), recursive=True)),
            )
        ext.extra_objects = objects + list(ext.extra_objects or [])
        super().build_extension(ext)


def _emulation_extension(cxx, link):
    """focalops._C_emu: every csrc/cuda/*.cu compiled as host C++ against the SIMT emulator.

    One generated wrapper per .cu (`#include "cuda/x.cu"`), so the sources are compiled as they
    are, never copied; csrc/emu/include comes first on the include path (cuda_runtime.h & co.)."""
    wrappers = os.path.join(ROOT, "build", "emu_sources")
    os.makedirs(wrappers, exist_ok=True)
    sources = sorted(glob.glob(os.path.join("csrc", "emu", "*.cpp")))
    for cu in sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu"))):
        name = os.path.splitext(os.path.basename(cu))[0]
        path = os.path.join(wrappers, f"cuda_{name}.cpp")
        text = f'// Generated by setup.py: {cu} for the SIMT emulator.\n#include "cuda/{name}.cu"\n'
        if not os.path.exists(path) or open(path).read() != text:
            with open(path, "w") as f:
                f.write(text)
        sources.append(os.path.relpath(path, ROOT))
    flags = ["-DFOCALOPS_EMULATE", "-Wno-unknown-pragmas"]
    if _flag("FOCALOPS_EMULATE_TSAN"):
        flags += ["-DFOCALOPS_EMULATE_TSAN", "-fsanitize=thread", "-g", "-O1"]
        link = link + ["-fsanitize=thread"]
    return CppExtension(
        name="focalops._C_emu",
        sources=sources,
        include_dirs=[os.path.join(ROOT, "csrc", "emu", "include"), os.path.join(ROOT, "csrc")],
        # -O1: at -O2 GCC turned a kernel's element-by-element load of a misaligned input into
        # the aligned 16-byte load of the other branch (focal_load), a crash no GPU has.
        extra_compile_args={"cxx": flags + [f for f in cxx if f != "-O3"] + (["-O1"] if "-O3" in cxx else [])},
        extra_link_args=link,
        py_limited_api=True,
    )


def _extension():
    debug = bool(_flag("DEBUG"))
    sanitize = bool(_flag("FOCALOPS_SANITIZE"))
    cuda_home = _cuda_home()
    with_cuda = _want_cuda(cuda_home) and not sanitize  # the sanitizers are for the host code
    limited_api, _, define_limited_api = _limited_api()
    opt = ["-O0", "-g"] if debug else ["-O3"]
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")) + glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    # No FMA contraction: every CPU ISA and CUDA round IoU and the focal loss identically.
    cxx = opt + ["-ffp-contract=off"]  # the C++ standard is torch's default
    if sanitize:
        cxx += SANITIZE_CFLAGS
    if define_limited_api:
        cxx.append(f"-DPy_LIMITED_API={limited_api}")
    # at::parallel_for is inlined into our kernels: with torch's OpenMP backend it is an
    # `omp parallel` region that runs serially unless we compile with OpenMP too.
    openmp = torch._C.has_openmp and sys.platform.startswith("linux")
    link = ["-fopenmp"] if openmp else []
    cxx += link
    link += SANITIZE if sanitize else []
    kwargs = dict(
        name="focalops._C",
        include_dirs=[os.path.join(ROOT, "csrc")],
        py_limited_api=True,
        extra_link_args=link,
    )
    if with_cuda:
        os.environ["CUDA_HOME"] = cuda_home
        cpp_extension.CUDA_HOME = cuda_home  # read by CUDAExtension and BuildExtension
        if not os.environ.get("TORCH_CUDA_ARCH_LIST"):
            os.environ["TORCH_CUDA_ARCH_LIST"] = _default_arch_list(cuda_home)
            print(
                "focalops: TORCH_CUDA_ARCH_LIST unset, building for the architectures torch {} ships kernels "
                "for: {}".format(torch.__version__, os.environ["TORCH_CUDA_ARCH_LIST"])
            )
        sources += sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
        nvcc = opt + ["--expt-relaxed-constexpr", "-lineinfo"]
        for inc in _pip_cuda_includes():
            cxx += ["-idirafter", inc]
            nvcc += ["-Xcompiler", "-idirafter," + inc]
        ext = CUDAExtension(sources=sources, extra_compile_args={"cxx": cxx, "nvcc": nvcc}, **kwargs)
    else:
        ext = CppExtension(sources=sources, extra_compile_args={"cxx": cxx}, **kwargs)
    emulate = bool(_flag("FOCALOPS_CUDA_EMULATE") or _flag("FOCALOPS_EMULATE_TSAN"))
    BUILD_INFO.update(
        torch_version=torch.__version__,
        torch_cuda=torch.version.cuda,
        cuda=with_cuda,
        cuda_forced=_flag("FOCALOPS_CUDA"),
        cuda_arch_list=os.environ.get("TORCH_CUDA_ARCH_LIST") if with_cuda else None,
        cxx11_abi=bool(torch._C._GLIBCXX_USE_CXX11_ABI),
    )
    print(
        "focalops build: torch {} | cuda kernels: {} (torch.version.cuda={}, CUDA_HOME={}) | arch list: {} | "
        "emulated cuda kernels: {} | cpu capabilities: {} | {} | OpenMP: {} | MAX_JOBS={}".format(
            torch.__version__,
            "on" if with_cuda else "off",
            torch.version.cuda,
            cuda_home,
            os.environ.get("TORCH_CUDA_ARCH_LIST", "-") if with_cuda else "-",
            "on" if emulate else "off",
            ",".join(_capabilities()),
            ("debug" if debug else "release") + (" + ASan/UBSan" if sanitize else ""),
            "on" if openmp else "off",
            os.environ.get("MAX_JOBS", "auto"),
        )
    )
    if _flag("FOCALOPS_EMULATE_TSAN"):  # the emulated kernels alone (`make tsan` takes the tree's _C)
        return [_emulation_extension(cxx, link)]
    return [ext, _emulation_extension(cxx, link)] if emulate else [ext]


EXTENSIONS = _extension()

setup(
    version="0.1.0" if SDIST else "0.1.0+" + _local_tag(BUILD_INFO),
    ext_modules=EXTENSIONS,
    cmdclass={"build_ext": BuildWithCpuKernels.with_options(no_python_abi_suffix=True)},
    options={"bdist_wheel": {"py_limited_api": _limited_api()[1]}},
    python_requires=f">=3.{_limited_api()[1][3:]}",
    install_requires=_requirements(SDIST),
    **METADATA,
)
