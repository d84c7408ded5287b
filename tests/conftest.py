"""Device parametrisation: every test that takes `device` runs on CPU, and on CUDA when present.

Without a GPU, the "cuda" cases run on the emulated CUDA device (tests/emulated_cuda.py: the
real CUDA kernel sources on the SIMT emulator) when it was built. `GPU` names the device the
CUDA cases use ("cuda", "cuda_emu", or None); `needs_cuda` skips a test when there is neither,
`needs_real_gpu` when what it checks only a GPU has (streams, graphs, memory statistics, device
asserts that end the process).
"""

import emulated_cuda
import pytest
import torch

import focalops  # noqa: F401  (loads the ops)

_HAS_CUDA = torch.cuda.is_available()
GPU = "cuda" if _HAS_CUDA else (emulated_cuda.NAME if emulated_cuda.load() else None)
EMULATED = GPU == emulated_cuda.NAME

needs_cuda = pytest.mark.skipif(GPU is None, reason="needs a CUDA device or the emulated one")
needs_real_gpu = pytest.mark.skipif(not _HAS_CUDA, reason="needs a CUDA device")

DEVICES = ["cpu", pytest.param(GPU or "cuda", marks=needs_cuda)]


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


def one_grid(device) -> int:
    """Threads in the largest grid our elementwise launchers start on `device`
    (csrc/cuda/common.cuh grid_stride_blocks: kGridBlocksPerSm = 32 blocks of 256 threads per
    multiprocessor): past this many elements a kernel's grid-stride loop takes a second step. 0
    on the CPU."""
    if torch.device(device).type == "cpu":
        return 0
    if EMULATED:
        import focalops._C_emu

        sms = focalops._C_emu.multiprocessors()
    else:
        sms = torch.cuda.get_device_properties(device).multi_processor_count
    return sms * 32 * 256


def run_device_code(code: str):
    """Runs `code` (which names the device `{dev}`) where a device-side assert ends it: on a GPU
    in its own interpreter (the CUDA context is lost), on the emulator in this one (the failed
    launch raises). Returns (finished, output)."""
    import subprocess
    import sys

    if EMULATED:
        try:
            exec("import torch, focalops\n" + code.format(dev=GPU), {})
        except RuntimeError as exc:
            return False, str(exc)
        return True, ""
    full = "import torch, focalops\n" + code.format(dev="cuda") + "\ntorch.cuda.synchronize()\nprint('finished')\n"
    proc = subprocess.run([sys.executable, "-c", full], capture_output=True, text=True, timeout=180)
    out = proc.stdout + proc.stderr
    return proc.returncode == 0 and "finished" in out, out[-3000:]
