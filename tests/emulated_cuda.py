"""The emulated CUDA device for the tests: focalops' CUDA launchers and kernels (csrc/cuda) built
as host C++ on the SIMT emulator (focalops._C_emu, `FOCALOPS_CUDA_EMULATE=1` builds; see
csrc/emu/simt.h), reached as PyTorch's PrivateUse1 backend, named "cuda_emu", whose memory is
host memory and whose other ATen ops run the CPU kernels.

Used when no GPU is visible and the emulation module was built (FOCALOPS_TEST_EMULATED=0 turns
it off): every test written for "cuda" runs the real kernel sources on it.
"""

import importlib.util
import os
import types

import torch

NAME = "cuda_emu"


def available() -> bool:
    return importlib.util.find_spec("focalops._C_emu") is not None


def load() -> bool:
    """Loads the emulated device once; False if it was not built or is turned off."""
    if os.environ.get("FOCALOPS_TEST_EMULATED", "1") == "0" or not available():
        return False
    if getattr(torch, NAME, None) is not None:
        return True
    import focalops._C_emu  # noqa: F401  (the PrivateUse1 backend and our kernels for it)

    import focalops  # noqa: F401  (the schemas first)

    torch.utils.rename_privateuse1_backend(NAME)
    module = types.ModuleType(f"torch.{NAME}")
    module.is_available = lambda: True
    module.device_count = lambda: 1
    module.current_device = lambda: 0
    module._is_in_bad_fork = lambda: False
    # Random numbers come from the CPU generator (the tensors are host memory).
    module.manual_seed_all = lambda seed: None
    module.get_rng_state = lambda device=None: torch.get_rng_state()
    module.set_rng_state = lambda state, device=None: torch.set_rng_state(state)
    torch._register_device_module(NAME, module)
    torch.library.opcheck = _opcheck_without_registration_check(torch.library.opcheck)
    return True


def _opcheck_without_registration_check(opcheck):
    """opcheck's autograd-registration check supports only CPU / CUDA / XPU tensors: on the
    emulated device the other checks run (the test's CPU case runs that one)."""

    def wrapped(op, args, kwargs=None, *, test_utils=torch.library._OPCHECK_DEFAULT_UTILS, **kw):
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        if any(t.device.type == NAME for t in tensors):
            test_utils = tuple(u for u in test_utils if u != "test_autograd_registration")
        return opcheck(op, args, kwargs, test_utils=test_utils, **kw)

    return wrapped
