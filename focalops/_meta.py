"""Fake (meta) kernels: output shapes and dtypes for torch.compile, opcheck and FakeTensor.

The messages mirror the C++ checks in csrc/checks/.
"""

import torch

from focalops import _extension  # noqa: F401  (the ops must exist before fakes attach)

_FLOATS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _check_focal_args(inputs, targets, alpha, gamma):
    torch._check(
        inputs.dtype in _FLOATS,
        lambda: f"sigmoid_focal_loss: inputs must be float32, float64, float16 or bfloat16, got {inputs.dtype}",
    )
    torch._check(gamma >= 0, lambda: f"sigmoid_focal_loss: gamma must be >= 0, got {gamma}")
    torch._check(alpha <= 1, lambda: f"sigmoid_focal_loss: alpha must be <= 1 (or < 0 to disable), got {alpha}")
    if targets.dtype == torch.int64:
        torch._check(
            inputs.dim() >= 1 and targets.shape == inputs.shape[:-1],
            lambda: (
                "sigmoid_focal_loss: class-index targets must have shape inputs.shape[:-1] = "
                f"{list(inputs.shape[:-1])}, got {list(targets.shape)}"
            ),
        )
    else:
        torch._check(
            targets.dtype == inputs.dtype,
            lambda: (
                "sigmoid_focal_loss: targets must be int64 class indices or have the dtype of inputs "
                f"({inputs.dtype}), got {targets.dtype}"
            ),
        )
        torch._check(
            targets.shape == inputs.shape,
            lambda: (
                f"sigmoid_focal_loss: targets must have the shape of inputs {list(inputs.shape)}, "
                f"got {list(targets.shape)}"
            ),
        )


def _focal_sum_dtype(inputs):
    return torch.float64 if inputs.dtype == torch.float64 else torch.float32


@torch.library.register_fake("focalops::sigmoid_focal_loss")
def _sigmoid_focal_loss_fake(inputs, targets, alpha, gamma, ignore_index, reduce):
    _check_focal_args(inputs, targets, alpha, gamma)
    if reduce:
        return inputs.new_empty((), dtype=_focal_sum_dtype(inputs))
    return torch.empty_like(inputs, memory_format=torch.contiguous_format)


@torch.library.register_fake("focalops::_sigmoid_focal_loss_backward")
def _sigmoid_focal_loss_backward_fake(grad, inputs, targets, alpha, gamma, ignore_index, reduce):
    _check_focal_args(inputs, targets, alpha, gamma)
    return torch.empty_like(inputs, memory_format=torch.contiguous_format)
