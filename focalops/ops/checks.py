"""What the ops' Python checks are written with.

Each family states the C++ checks of its ops (``csrc/checks/<family>.h``) once, in Python, as
``check_<op>_args``: its fake kernel runs it (torch.compile, torch.export, FakeTensor) and so
does its wrapper, on the arguments it passes to the op. The conditions, their order and their
messages are the C++ ones (dtypes and numbers printed as c10 prints them); tests/test_fake_checks.py
runs bad calls through the C++ and the Python and compares. A dtype condition raises
:class:`OpTypeError`, any other :class:`OpValueError` (both also ``RuntimeError``, what the C++
raises); a condition on symbolic sizes becomes a run-time assertion of the traced program.
"""

from numbers import Integral, Real
from typing import Callable, Sequence

import torch

from focalops.errors import OpTypeError, OpValueError

# The floating dtypes every floating op accepts (half types are computed in float32).
FLOATS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
FLOAT_NAMES = "float32, float64, float16 or bfloat16"

# How c10 prints a dtype and a double (ostream: 6 significant digits).
_CPP_DTYPES = {
    torch.float32: "Float", torch.float64: "Double", torch.float16: "Half", torch.bfloat16: "BFloat16",
    torch.int64: "Long", torch.int32: "Int", torch.int16: "Short", torch.int8: "Char", torch.uint8: "Byte",
    torch.bool: "Bool", torch.complex64: "ComplexFloat", torch.complex128: "ComplexDouble",
}  # fmt: skip


def dtype_name(t) -> str:
    """A tensor's dtype (or a dtype) as c10 prints it: ``Float``, ``Long``, ..."""
    dtype = t if isinstance(t, torch.dtype) else t.dtype
    return _CPP_DTYPES.get(dtype, str(dtype))


def sizes(t) -> str:
    return str(list(t.shape))


def doubles(values: Sequence[float]) -> str:
    return "[" + ", ".join(f"{v:g}" for v in values) + "]"


def _check(error: type, cond, message: Callable[[], str]) -> None:
    if torch.compiler.is_dynamo_compiling():
        # Dynamo traces this (a wrapper under torch.compile): a plain test, a guard on symbolic
        # sizes; the fake kernel then runs the checks again as a deferred assertion.
        if not cond:
            raise error(message())
    else:
        torch._check_with(error, cond if isinstance(cond, torch.SymBool) else bool(cond), message)


def check_type(cond, message: Callable[[], str]) -> None:
    _check(OpTypeError, cond, message)


def check_value(cond, message: Callable[[], str]) -> None:
    _check(OpValueError, cond, message)


def check_float(op: str, name: str, t) -> None:
    """csrc/checks/boxes.h ``check_box_dtype``."""
    check_type(t.dtype in FLOATS, lambda: f"{op}: {name} must be {FLOAT_NAMES}, got {dtype_name(t)}")


# The wrappers' own checks: what they convert before the op's checks run.


def require_tensor(op: str, name: str, t) -> None:
    if not isinstance(t, torch.Tensor):
        raise OpTypeError(f"{op}: {name} must be a Tensor, got {type(t).__name__}")


def require_integer(op: str, name: str, t) -> None:
    """An integer tensor, which the wrapper converts to int64."""
    require_tensor(op, name, t)
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise OpTypeError(f"{op}: {name} must be an integer tensor, got {t.dtype}")


def require_number(op: str, name: str, value) -> float:
    """A real number (Python or NumPy), passed on to the op as a float."""
    if not isinstance(value, Real):
        raise OpValueError(f"{op}: {name} must be a number, got {value!r}")
    return float(value)


def require_int(op: str, name: str, value):
    """An int (or, under tracing, a SymInt), passed on to the op as it is."""
    if isinstance(value, bool) or not isinstance(value, (Integral, torch.SymInt)):
        raise OpValueError(f"{op}: {name} must be an int, got {value!r}")
    return value if isinstance(value, torch.SymInt) else int(value)
