"""Installs that tell the truth: what a build records, what its metadata declares, and the one line
`import focalops` says under a torch the build does not load with.

Nothing here compiles: the metadata comes from `setup.py --version` / `egg_info` / `sdist`, and
an import under another torch is simulated by a copy of the built package whose record names
another torch. The real thing (this build imported by another torch's interpreter) runs when
`make other-torch` has made build/other-torch (or FOCALOPS_OTHER_TORCH_PYTHON names an
interpreter with another torch).
"""

import email
import glob
import os
import shutil
import subprocess
import sys
import tarfile

import pytest
import torch

import focalops
from focalops._extension import build_info, torch_mismatch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILT = build_info()
LINE = ".".join(torch.__version__.split("+")[0].split(".")[:2])
ABI = bool(torch._C._GLIBCXX_USE_CXX11_ABI)

needs_record = pytest.mark.skipif(not BUILT, reason="a build made before setup.py recorded _build_info.py")


def _setup(*args, env=None, cwd=ROOT):
    proc = subprocess.run(
        [sys.executable, "setup.py", *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


@needs_record
def test_build_records_what_it_was_built_against():
    assert BUILT["torch_version"] == torch.__version__
    assert BUILT["torch_cuda"] == torch.version.cuda
    assert BUILT["cuda"] == focalops.has_cuda_kernels()
    assert BUILT["cxx11_abi"] == ABI


def _built(version="2.14.1+cu130", cuda="13.0", with_cuda=True):
    return {"torch_version": version, "torch_cuda": cuda, "cuda": with_cuda, "cxx11_abi": True}


def test_mismatch_none_for_the_same_release_line():
    assert torch_mismatch(_built(), "2.14.1+cu130", "13.0", True) is None
    assert torch_mismatch(_built(), "2.14.0", "13.2", True) is None  # same line, same CUDA major
    assert torch_mismatch(_built("2.14.1+cpu", None, False), "2.14.1+cu130", "13.0", True) is None


@pytest.mark.parametrize(
    "built, installed, says",
    [
        (_built(), ("2.13.0+cpu", None), ["torch 2.14.1+cu130 (CUDA 13.0)", "torch 2.13.0+cpu (no CUDA)", "2.14.x"]),
        (_built(), ("2.14.1+cpu", None), ["need a CUDA torch"]),
        (_built(), ("2.14.1+cu128", "12.8"), ["need a CUDA 13.x torch"]),
        (_built("2.4.0", None, False), ("2.14.1+cu130", "13.0"), ["torch 2.4.0 (no CUDA), CPU kernels only", "2.4.x"]),
    ],
)
def test_mismatch_is_one_line_naming_both_and_the_fix(built, installed, says):
    line = torch_mismatch(built, *installed, True)
    assert line is not None and "\n" not in line
    assert line.startswith("focalops was built against") and "Fix: pip install " in line
    for text in says:
        assert text in line


def test_mismatch_fix_outside_a_source_tree_installs_the_torch(monkeypatch):
    import focalops._extension as ext

    monkeypatch.setattr(ext, "_SOURCE_TREE", "/nonexistent")
    line = torch_mismatch(_built(), "2.13.0+cpu", None, True)
    assert "pip install 'torch==2.14.*' --index-url https://download.pytorch.org/whl/cu130" in line
    line = torch_mismatch(_built("2.13.0+cpu", None, False), "2.14.1", "13.0", True)
    assert line.endswith("Fix: pip install 'torch==2.13.*' (or a focalops build for the installed torch)")


def _package_copy(tmp_path, **record):
    """The built package copied aside (no source tree above it, as a wheel install), its record
    claiming another build."""
    dest = tmp_path / "site" / "focalops"
    shutil.copytree(os.path.dirname(focalops.__file__), dest, ignore=shutil.ignore_patterns("__pycache__"))
    info = {**BUILT, **record}
    (dest / "_build_info.py").write_text("".join(f"{k} = {v!r}\n" for k, v in info.items()))
    return dest.parent


def _import(site, prelude="", python=sys.executable, env=None):
    code = prelude + "import focalops; print('loaded', focalops.__file__)"
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "FOCALOPS_SKIP_TORCH_CHECK")}
    return subprocess.run(
        [python, "-c", code],
        cwd=str(site),
        env={**clean, "PYTHONPATH": str(site), **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


def _last_line(proc):
    return proc.stderr.strip().splitlines()[-1]


@needs_record
def test_import_of_a_build_for_another_torch_says_one_line(tmp_path):
    site = _package_copy(tmp_path, torch_version="2.4.0")
    proc = _import(site)
    assert proc.returncode != 0
    assert _last_line(proc).startswith("ImportError: focalops was built against torch 2.4.0"), proc.stderr
    assert f"but torch {torch.__version__}" in _last_line(proc)
    assert "undefined symbol" not in proc.stderr
    # FOCALOPS_SKIP_TORCH_CHECK=1 loads it regardless (this copy really is built for this torch)
    assert _import(site, env={"FOCALOPS_SKIP_TORCH_CHECK": "1"}).returncode == 0


@needs_record
def test_import_of_a_cuda_build_under_a_cpu_torch_says_one_line(tmp_path):
    site = _package_copy(tmp_path, cuda=True, torch_cuda="13.0")
    proc = _import(site, prelude="import torch; torch.version.cuda = None; ")  # as a CPU torch says
    assert proc.returncode != 0
    line = _last_line(proc)
    assert "(CUDA 13.0), CUDA and CPU kernels" in line and "(no CUDA) is installed" in line, proc.stderr
    assert "--index-url https://download.pytorch.org/whl/cu130" in line


def _other_torch_python():
    default = os.path.join(ROOT, "build", "other-torch", "bin", "python")
    python = os.environ.get("FOCALOPS_OTHER_TORCH_PYTHON") or default
    return python if os.path.isfile(python) else None


@needs_record
@pytest.mark.skipif(_other_torch_python() is None, reason="no other torch (make other-torch)")
def test_import_under_another_installed_torch_says_one_line(tmp_path):
    """This build, imported by an interpreter with another torch (e.g. 2.13.0+cpu)."""
    python = _other_torch_python()
    other = subprocess.run(
        [python, "-c", "import torch; print(torch.__version__)"], capture_output=True, text=True, check=True
    ).stdout.strip()
    site = _package_copy(tmp_path)  # the record unchanged
    proc = _import(site, python=python)
    if other.split(".")[:2] == torch.__version__.split(".")[:2] and not (BUILT["cuda"] and "+cpu" in other):
        pytest.skip(f"the other torch ({other}) is one this build loads with")
    assert proc.returncode != 0
    line = _last_line(proc)
    assert line.startswith(f"ImportError: focalops was built against torch {torch.__version__}"), proc.stderr
    assert f"but torch {other}" in line and "Fix: pip install" in line
    assert "undefined symbol" not in proc.stderr and "cannot open shared object" not in proc.stderr


def _pkg_info(text, requires_txt=None):
    """(version, requirements) from PKG-INFO; setuptools < 68 lists the requirements only in the
    egg-info's requires.txt (its text, when given)."""
    msg = email.message_from_string(text)
    requires = msg.get_all("Requires-Dist")
    if requires is None and requires_txt is not None:
        requires = requires_txt.split("\n[")[0].split()
    return msg["Version"], requires


def test_wheel_metadata_pins_the_build_torch(tmp_path):
    """A build (wheel, editable or source install) requires the torch release line it compiles
    against, and its version names the build: +cpu here (+cu130 & co.: test_build.py)."""
    _setup("-q", "egg_info", "--egg-base", str(tmp_path), env={"FOCALOPS_CUDA": "0"})
    egg = tmp_path / "focalops.egg-info"
    version, requires = _pkg_info((egg / "PKG-INFO").read_text(), (egg / "requires.txt").read_text())
    assert version == f"{focalops.__version__}+cpu"
    assert f"torch=={LINE}.*" in requires


def test_sdist_keeps_the_wide_range_and_every_source(tmp_path):
    _setup("-q", "egg_info", "--egg-base", str(tmp_path), "sdist", "-d", str(tmp_path), env={"FOCALOPS_CUDA": "0"})
    (tarball,) = glob.glob(str(tmp_path / "focalops-*.tar.gz"))
    with tarfile.open(tarball) as tar:
        names = tar.getnames()
        prefix = names[0].split("/")[0]
        requires_txt = (tmp_path / "focalops.egg-info" / "requires.txt").read_text()  # this sdist run's
        version, requires = _pkg_info(tar.extractfile(f"{prefix}/PKG-INFO").read().decode(), requires_txt)
    assert version == focalops.__version__ and "torch>=2.4" in requires
    inside = {n[len(prefix) + 1 :] for n in names}
    tracked = subprocess.run(["git", "ls-files", "csrc"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    if not tracked:
        pytest.skip("not a git checkout")
    assert set(tracked) <= inside, sorted(set(tracked) - inside)
    assert "focalops/_build_info.py" not in inside
    assert "benchmarks/__main__.py" in inside  # installed as focalops.benchmarks (focalops bench)


def _setup_without_torch(*args, cwd=ROOT):
    """setup.py run where `import torch` fails (as in an isolated build environment)."""
    code = "import runpy, sys; sys.modules['torch'] = None; sys.argv[0] = 'setup.py'; runpy.run_path('setup.py')"
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_sdist_builds_without_torch_and_a_wheel_does_not(tmp_path):
    """`python -m build --sdist` (isolated: no torch) makes the source distribution; a build that
    compiles stops at once saying how to build against the installed torch."""
    proc = _setup_without_torch("-q", "egg_info", "--egg-base", str(tmp_path), "sdist", "-d", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    (tarball,) = glob.glob(str(tmp_path / "focalops-*.tar.gz"))
    with tarfile.open(tarball) as tar:
        names = tar.getnames()
    assert any(n.endswith("csrc/cuda/postprocess.cuh") for n in names) and any(n.endswith("/setup.py") for n in names)
    proc = _setup_without_torch("-q", "bdist_wheel", "-d", str(tmp_path))
    assert proc.returncode != 0 and "pip install --no-build-isolation ." in proc.stderr
