"""Sigmoid focal loss (Lin et al., 2017), fused forward and backward."""

import math
from numbers import Real
from typing import Optional, Union

import torch
from torch import Tensor, nn

from focalops import _extension  # noqa: F401  (registers torch.ops.focalops)
from focalops.errors import OpTypeError, OpValueError
from focalops.ops.checks import (
    check_float,
    check_type,
    check_value,
    dtype_name,
    require_int,
    require_number,
    require_tensor,
    sizes,
)

__all__ = ["sigmoid_focal_loss", "SigmoidFocalLoss"]

_REDUCTIONS = ("none", "mean", "sum")


def check_focal_args(inputs: Tensor, targets: Tensor, alpha: float, gamma: float, ignore_index: int) -> None:
    """csrc/checks/focal_loss.h ``check_focal_args``."""
    op = "sigmoid_focal_loss"
    check_float(op, "inputs", inputs)
    check_value(
        inputs.device == targets.device,
        lambda: f"{op}: inputs and targets must be on the same device, got {inputs.device} and {targets.device}",
    )
    check_value(gamma >= 0 and math.isfinite(gamma), lambda: f"{op}: gamma must be >= 0 and finite, got {gamma:g}")
    check_value(alpha <= 1, lambda: f"{op}: alpha must be <= 1 (or < 0 to disable), got {alpha:g}")
    check_value(ignore_index != -1, lambda: f"{op}: ignore_index must not be -1 (the background label)")
    if targets.dtype == torch.int64:
        check_value(
            inputs.dim() >= 1 and targets.shape == inputs.shape[:-1],
            lambda: (
                f"{op}: class-index targets must have shape inputs.shape[:-1] = {list(inputs.shape[:-1])}, "
                f"got {sizes(targets)} (for one-hot targets pass a floating tensor)"
            ),
        )
    else:
        check_type(
            targets.dtype == inputs.dtype,
            lambda: (
                f"{op}: targets must be int64 class indices or have the dtype of inputs ({dtype_name(inputs)}), "
                f"got {dtype_name(targets)}"
            ),
        )
        check_value(
            targets.shape == inputs.shape,
            lambda: f"{op}: targets must have the shape of inputs {sizes(inputs)}, got {sizes(targets)}",
        )


def check_focal_grad(grad: Tensor, inputs: Tensor, reduce: bool) -> None:
    """csrc/checks/focal_loss.h ``check_focal_grad``."""
    op = "_sigmoid_focal_loss_backward"
    check_value(grad.device == inputs.device, lambda: f"{op}: grad must be on {inputs.device}")
    if reduce:
        check_value(grad.numel() == 1, lambda: f"{op}: grad of a reduced loss must have one element, got {sizes(grad)}")
    else:
        check_value(
            grad.shape == inputs.shape,
            lambda: f"{op}: grad must have the shape of inputs {sizes(inputs)}, got {sizes(grad)}",
        )


@torch.library.register_fake("focalops::sigmoid_focal_loss")
def _sigmoid_focal_loss_fake(inputs, targets, alpha, gamma, ignore_index, reduce):
    check_focal_args(inputs, targets, alpha, gamma, ignore_index)
    if reduce:  # accumulated and returned in float32 (float64 for float64 inputs)
        return inputs.new_empty((), dtype=torch.float64 if inputs.dtype == torch.float64 else torch.float32)
    return torch.empty_like(inputs, memory_format=torch.contiguous_format)


@torch.library.register_fake("focalops::_sigmoid_focal_loss_with_grad")
def _sigmoid_focal_loss_with_grad_fake(inputs, targets, alpha, gamma, ignore_index, reduce):
    loss = _sigmoid_focal_loss_fake(inputs, targets, alpha, gamma, ignore_index, reduce)
    return loss, torch.empty_like(inputs, memory_format=torch.contiguous_format)


@torch.library.register_fake("focalops::_sigmoid_focal_loss_backward")
def _sigmoid_focal_loss_backward_fake(grad, inputs, targets, alpha, gamma, ignore_index, reduce):
    check_focal_args(inputs, targets, alpha, gamma, ignore_index)
    check_focal_grad(grad, inputs, reduce)
    return torch.empty_like(inputs, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output):
    x, targets, alpha, gamma, ignore_index, reduce = inputs
    ctx.save_for_backward(x, targets)
    ctx.args = (alpha, gamma, ignore_index, reduce)


def _backward(ctx, grad):
    x, targets = ctx.saved_tensors
    alpha, gamma, ignore_index, reduce = ctx.args
    grad_x = grad_t = None
    if ctx.needs_input_grad[0]:
        grad_x = torch.ops.focalops._sigmoid_focal_loss_backward(grad, x, targets, alpha, gamma, ignore_index, reduce)
    if ctx.needs_input_grad[1]:
        grad_t = _soft_target_grad(grad, x, targets, alpha, gamma)
    return grad_x, grad_t, None, None, None, None


def _soft_target_grad(grad: Tensor, x: Tensor, targets: Tensor, alpha: float, gamma: float) -> Tensor:
    """d loss / d targets (dense soft targets) of torchvision's formula, by differentiating that
    formula (ATen ops) in float32 (float64 for float64): torchvision's gradient, its limits included."""
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    with torch.enable_grad():
        x = x.detach().to(dtype)
        t = targets.detach().to(dtype).requires_grad_()
        p = torch.sigmoid(x)
        loss = nn.functional.binary_cross_entropy_with_logits(x, t, reduction="none")
        loss = loss * (1 - (p * t + (1 - p) * (1 - t))) ** gamma
        if alpha >= 0:
            loss = (alpha * t + (1 - alpha) * (1 - t)) * loss
        (grad_t,) = torch.autograd.grad(loss, t, grad.to(dtype).expand_as(loss))
    return grad_t.to(targets.dtype)


def _no_double_backward(ctx, grad):
    raise RuntimeError("sigmoid_focal_loss: double backward (gradient of the gradient) is not supported")


def _setup_nothing(ctx, inputs, output):
    pass


torch.library.register_autograd("focalops::sigmoid_focal_loss", _backward, setup_context=_setup_context)
torch.library.register_autograd(
    "focalops::_sigmoid_focal_loss_backward", _no_double_backward, setup_context=_setup_nothing
)


class _LossAndGradient(torch.autograd.Function):
    """The CPU eager training path: the forward also writes d loss / d inputs (one pass over
    the logits: the loss and its gradient share every exponential, and the gradient buffer is
    the only fresh one of the step) and the backward scales it in place. A second backward of
    the same graph (``retain_graph``), or one that builds a graph, recomputes from the inputs."""

    @staticmethod
    def forward(inputs, targets, alpha, gamma, ignore_index, reduce):
        return torch.ops.focalops._sigmoid_focal_loss_with_grad(inputs, targets, alpha, gamma, ignore_index, reduce)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, targets, alpha, gamma, ignore_index, reduce = inputs
        ctx.mark_non_differentiable(output[1])
        ctx.set_materialize_grads(False)  # no zero gradient the size of the logits for output[1]
        ctx.save_for_backward(x, targets)
        ctx.args = (alpha, gamma, ignore_index, reduce)
        ctx.grad = output[1]

    @staticmethod
    def backward(ctx, grad_loss, _):
        grad, ctx.grad = ctx.grad, None
        if grad_loss is None:  # the loss was not used
            return None, None, None, None, None, None
        if grad is None or torch.is_grad_enabled():
            x, targets = ctx.saved_tensors
            grad_x = torch.ops.focalops._sigmoid_focal_loss_backward(grad_loss, x, targets, *ctx.args)
        else:
            grad_x = grad.mul_(grad_loss)
        return grad_x, None, None, None, None, None


def sigmoid_focal_loss(
    inputs: Tensor,
    targets: Tensor,
    alpha: float = 0.25,
    gamma: float = 2.0,
    reduction: str = "none",
    normalizer: Optional[Union[float, Tensor]] = None,
    ignore_index: int = -2,
) -> Tensor:
    """Sigmoid focal loss ``-alpha_t (1 - p_t)^gamma log(p_t)`` with ``p = sigmoid(inputs)``.

    A drop-in for ``torchvision.ops.sigmoid_focal_loss`` (dense form) that also takes class
    indices (the form a detector has) without building a one-hot tensor. Forward and backward
    are fused kernels: the forward reads the logits once, the backward recomputes from them and
    writes the gradient in one pass (on CPU, in eager mode with ``inputs.requires_grad``, the
    forward writes the gradient as it goes and the backward only scales it). Computed from the
    logit (log-sigmoid form): finite loss and gradient for every finite logit and every
    ``gamma >= 0``. At ``+-inf`` logits the loss and gradient are their limits (loss 0 or inf,
    gradient finite); a NaN logit gives a NaN loss and gradient (as torch's own losses), except
    where its weight is 0 (ignored rows, and ``alpha_t = 0``): those are always 0.

    Args:
        inputs (Tensor[..., K]): logits, float32 / float16 / bfloat16 / float64 (half types are
            computed in float32). Any layout.
        targets (Tensor): either
            - dense: a floating (or bool) tensor of the shape of ``inputs`` with values in
              [0, 1] (soft targets allowed, torchvision's formula). Checked on CPU; on CUDA,
              where a check would cost a synchronisation, a value outside [0, 1] is not
              detected and gives a meaningless (possibly negative) loss. Types promote as
              torchvision's (float16 logits with float32 targets give a float32 loss); soft
              targets of float16 / bfloat16 logits are rounded to that type (0.9 is 0.8984375 in
              bfloat16). Targets that require grad get torchvision's gradient; or
            - class indices: an integer tensor of shape ``inputs.shape[:-1]``; ``c`` in
              ``[0, K)`` makes class ``c`` the positive and the other ``K - 1`` negatives, ``-1``
              is background (all ``K`` negative), ``ignore_index`` rows add nothing to the loss
              or the gradient.
        alpha (float): weight of positives in [0, 1] (negatives get ``1 - alpha``); ``alpha < 0``
            disables the weighting. Default 0.25.
        gamma (float): focusing exponent, ``>= 0`` (0 gives alpha-weighted BCE). Default 2.
        reduction (str): ``"none"`` (loss per element, shape and dtype of ``inputs``),
            ``"sum"`` or ``"mean"`` (0-d, dtype of ``inputs``; accumulated in float32 and
            divided by ``normalizer`` before the conversion, but a float16 sum above 65504
            without one is inf, as torchvision's).
        normalizer (float or 0-d Tensor, optional): divides the (reduced) loss, e.g. the number
            of foreground anchors (RetinaNet: ``reduction="sum", normalizer=max(1, num_fg)``).
            Must be positive and finite. A number or a CPU tensor is checked (a CPU tensor in
            eager mode; it is moved to the loss's device without blocking); a device tensor is
            never read back to the host, so its value is not checked: ``<= 0`` there gives an
            infinite or negative loss.
        ignore_index (int): class index of rows to skip in the class-index form. Default -2.

    Returns:
        Tensor: the loss. ``mean`` over an empty input is NaN, as ``torch.mean``.

    Raises:
        OpTypeError (a ``TypeError`` and a ``RuntimeError``): ``inputs`` or ``targets`` is not a
            tensor, or has an unsupported dtype.
        OpValueError (a ``ValueError`` and a ``RuntimeError``): unknown ``reduction``,
            ``gamma < 0``, ``alpha > 1``, a ``normalizer`` that is not a positive finite number
            (numbers and CPU tensors), mismatched shapes or devices.
        RuntimeError: a class index outside ``[0, K)`` that is neither -1 nor ``ignore_index``
            (on CUDA a device-side assertion, so the check costs no host synchronisation); dense
            targets outside [0, 1] (CPU). Under TorchScript the op's own checks raise
            ``RuntimeError``, as torchvision's would.
    """
    if not torch.jit.is_scripting():
        alpha, gamma, ignore_index = _converted_args(inputs, targets, alpha, gamma, reduction, ignore_index)
    if targets.is_floating_point() and inputs.is_floating_point():
        dtype = torch.promote_types(inputs.dtype, targets.dtype)  # torchvision's type promotion
        inputs, targets = inputs.to(dtype), targets.to(dtype)
    elif targets.dtype == torch.bool:
        targets = targets.to(inputs.dtype)
    elif not targets.is_floating_point():
        targets = targets.long()
    if not torch.jit.is_scripting():
        check_focal_args(inputs, targets, alpha, gamma, ignore_index)
    if reduction != "none" and reduction != "mean" and reduction != "sum":
        raise ValueError("sigmoid_focal_loss: reduction must be 'none', 'mean' or 'sum', got " + reduction)
    loss = _loss(inputs, targets, float(alpha), float(gamma), ignore_index, reduction != "none")
    if reduction == "mean":
        n = inputs.numel()
        loss = loss / n if n > 0 else loss / 0.0
    if normalizer is not None:
        if torch.jit.is_scripting():
            if isinstance(normalizer, Tensor):
                loss = loss / normalizer.reshape(()).to(loss.device)
            else:
                loss = loss / normalizer
        else:
            loss = loss / _checked_normalizer(normalizer, loss.device)
    return loss.to(inputs.dtype)


def _loss(inputs: Tensor, targets: Tensor, alpha: float, gamma: float, ignore_index: int, reduce: bool) -> Tensor:
    if not torch.jit.is_scripting():
        if (
            inputs.requires_grad
            and not targets.requires_grad
            and inputs.device.type == "cpu"
            and inputs.dtype in (torch.float32, torch.float64)
            and torch.is_grad_enabled()
            and not torch.compiler.is_compiling()
        ):
            return _LossAndGradient.apply(inputs, targets, alpha, gamma, ignore_index, reduce)[0]
    return torch.ops.focalops.sigmoid_focal_loss(inputs, targets, alpha, gamma, ignore_index, reduce)


def _converted_args(inputs, targets, alpha, gamma, reduction, ignore_index):
    """What :func:`sigmoid_focal_loss` converts before the op's checks (:func:`check_focal_args`)."""
    op = "sigmoid_focal_loss"
    require_tensor(op, "inputs", inputs)
    require_tensor(op, "targets", targets)
    if targets.is_complex():
        raise OpTypeError(f"{op}: targets must be floating, bool or integer, got {targets.dtype}")
    if reduction not in _REDUCTIONS:
        raise OpValueError(f"{op}: reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    return (
        require_number(op, "alpha", alpha),
        require_number(op, "gamma", gamma),
        require_int(op, "ignore_index", ignore_index),
    )


def _checked_normalizer(normalizer, device: torch.device) -> Union[float, Tensor]:
    """The divisor of the loss, checked > 0 and finite where that costs no synchronisation."""
    if isinstance(normalizer, Tensor):
        if normalizer.numel() != 1 or normalizer.is_complex():
            raise OpValueError(
                "sigmoid_focal_loss: normalizer must be a number or a real 0-d tensor, got "
                f"{normalizer.dtype} {list(normalizer.shape)}"
            )
        on_cpu = normalizer.device.type == "cpu"
        if on_cpu and not torch.compiler.is_compiling():
            value = normalizer.item()
            if not (value > 0 and math.isfinite(value)):
                raise OpValueError(f"sigmoid_focal_loss: normalizer must be positive and finite, got {value}")
        # Host to device never blocks; a device tensor brought to the host must (its value is read).
        return normalizer.reshape(()).to(device=device, non_blocking=on_cpu)
    if isinstance(normalizer, Real) and normalizer > 0 and math.isfinite(normalizer):
        return float(normalizer)
    raise OpValueError(
        f"sigmoid_focal_loss: normalizer must be a positive finite number or a tensor, got {normalizer!r}"
    )


class SigmoidFocalLoss(nn.Module):
    """Module form of :func:`sigmoid_focal_loss` (same arguments; ``normalizer`` per call)."""

    def __init__(self, alpha: float = 0.25, gamma: float = 2.0, reduction: str = "none", ignore_index: int = -2):
        super().__init__()
        if reduction not in _REDUCTIONS:
            raise OpValueError(f"SigmoidFocalLoss: reduction must be one of {_REDUCTIONS}, got {reduction!r}")
        self.alpha, self.gamma, self.reduction, self.ignore_index = alpha, gamma, reduction, ignore_index

    def forward(self, inputs: Tensor, targets: Tensor, normalizer: Optional[Union[float, Tensor]] = None) -> Tensor:
        return sigmoid_focal_loss(
            inputs,
            targets,
            self.alpha,
            self.gamma,
            self.reduction,
            normalizer=normalizer,
            ignore_index=self.ignore_index,
        )

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, gamma={self.gamma}, reduction={self.reduction!r}"
