"""Box IoU and torchvision BoxCoder encoding / decoding as fused kernels."""

import math
from numbers import Real
from typing import Sequence, Tuple

import torch
from torch import Tensor

from focalops import _extension  # noqa: F401  (registers torch.ops.focalops)
from focalops.ops import FLOATS

_DEFAULT_CLAMP = math.log(1000.0 / 16)


def _decode_setup_context(ctx, inputs, output):
    deltas, anchors, weights, clamp = inputs
    ctx.save_for_backward(deltas, anchors)
    ctx.args = (weights, clamp)


def _decode_backward(ctx, grad):
    deltas, anchors = ctx.saved_tensors
    weights, clamp = ctx.args
    grad_deltas = torch.ops.focalops._decode_boxes_backward(grad.contiguous(), deltas, anchors, weights, clamp)
    return grad_deltas, None, None, None


def _no_double_backward(ctx, grad):
    raise RuntimeError("decode_boxes: double backward (gradient of the gradient) is not supported")


torch.library.register_autograd("focalops::decode_boxes", _decode_backward, setup_context=_decode_setup_context)
torch.library.register_autograd(
    "focalops::_decode_boxes_backward", _no_double_backward, setup_context=lambda ctx, inputs, output: None
)


def _check_boxes(name: str, op: str, t, dims=None) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{op}: {name} must be a Tensor, got {type(t).__name__}")
    if t.dtype not in FLOATS:
        raise TypeError(f"{op}: {name} must be float32, float64, float16 or bfloat16, got {t.dtype}")
    if t.dim() == 0 or t.shape[-1] != 4 or (dims is not None and t.dim() != dims):
        shape = "[N, 4]" if dims == 2 else "[..., 4]"
        raise ValueError(f"{op}: {name} must have shape {shape}, got {list(t.shape)}")


def _check_weights(op: str, weights) -> Tuple[float, float, float, float]:
    if len(weights) != 4 or not all(isinstance(w, Real) and w > 0 and math.isfinite(w) for w in weights):
        raise ValueError(f"{op}: weights must be 4 positive finite numbers (wx, wy, ww, wh), got {tuple(weights)}")
    return tuple(float(w) for w in weights)


def _broadcast_pair(op: str, a: Tensor, b: Tensor, names: Tuple[str, str]) -> Tuple[Tensor, Tensor]:
    """Common dtype, and b reduced to rows [M, 4] that repeat along a ([N, 4] with N % M == 0)
    when b's shape is a suffix of the broadcast shape (the usual deltas [B, A, 4] with anchors
    [A, 4]): then nothing is copied. Otherwise both are expanded to the broadcast shape."""
    if a.device != b.device:
        raise ValueError(f"{op}: {names[0]} and {names[1]} must be on the same device, got {a.device} and {b.device}")
    try:
        shape = torch.broadcast_shapes(a.shape, b.shape)
    except RuntimeError:
        raise ValueError(f"{op}: {names[0]} {list(a.shape)} and {names[1]} {list(b.shape)} do not broadcast") from None
    dtype = torch.promote_types(a.dtype, b.dtype)
    a, b = a.to(dtype), b.to(dtype)
    if a.shape != shape:
        a = a.expand(shape)
    b_rows = b.reshape(-1, 4) if b.numel() > 0 else b.new_empty((0, 4))
    core = list(b.shape)
    while len(core) > 1 and core[0] == 1:
        core.pop(0)
    if list(shape[len(shape) - len(core) :]) != core:
        b_rows = b.expand(shape)
    return a, b_rows


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise intersection over union of two sets of ``(x1, y1, x2, y2)`` boxes.

    torchvision.ops.box_iou semantics, except that a pair with an empty union (two zero-area
    boxes) gives 0 instead of NaN.

    Args:
        boxes1 (Tensor[N, 4]): float32, float64, float16 or bfloat16.
        boxes2 (Tensor[M, 4]): same device; the dtypes are promoted.

    Returns:
        Tensor[N, M]: the IoUs, in the promoted dtype (float16 / bfloat16 computed in float32).

    Raises:
        TypeError: a non-tensor or an unsupported dtype.
        ValueError: a shape other than ``[*, 4]`` or different devices.
    """
    _check_boxes("boxes1", "box_iou", boxes1, dims=2)
    _check_boxes("boxes2", "box_iou", boxes2, dims=2)
    if boxes1.device != boxes2.device:
        raise ValueError(
            f"box_iou: boxes1 and boxes2 must be on the same device, got {boxes1.device} and {boxes2.device}"
        )
    dtype = torch.promote_types(boxes1.dtype, boxes2.dtype)
    return torch.ops.focalops.box_iou(boxes1.to(dtype), boxes2.to(dtype))


def encode_boxes(gt: Tensor, anchors: Tensor, weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0)) -> Tensor:
    """Regression targets ``(dx, dy, dw, dh)`` that move ``anchors`` onto ``gt``.

    torchvision ``BoxCoder(weights).encode_single`` semantics, broadcast over the leading
    dimensions (e.g. ``gt [B, A, 4]`` with ``anchors [A, 4]`` reads the anchors in place).
    Targets are constants: the result does not require grad.

    Args:
        gt (Tensor[..., 4]): target boxes, float32 / float64 / float16 / bfloat16.
        anchors (Tensor[..., 4]): reference boxes, broadcastable with ``gt``.
        weights (sequence of 4 floats): ``(wx, wy, ww, wh)``. Default (1, 1, 1, 1).

    Returns:
        Tensor[broadcast shape]: the deltas, in the promoted dtype.

    Raises:
        TypeError: a non-tensor or an unsupported dtype.
        ValueError: a last dimension other than 4, shapes that do not broadcast, different
            devices, or weights that are not 4 positive numbers.
    """
    _check_boxes("gt", "encode_boxes", gt)
    _check_boxes("anchors", "encode_boxes", anchors)
    w = _check_weights("encode_boxes", weights)
    gt, anchor_rows = _broadcast_pair("encode_boxes", gt.detach(), anchors.detach(), ("gt", "anchors"))
    return torch.ops.focalops.encode_boxes(gt, anchor_rows, list(w))


def decode_boxes(
    deltas: Tensor,
    anchors: Tensor,
    weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
    clamp: float = _DEFAULT_CLAMP,
) -> Tensor:
    """Boxes from regression deltas and anchors (torchvision ``BoxCoder.decode_single``).

    Broadcast over the leading dimensions: ``deltas [B, A, 4]`` with ``anchors [A, 4]`` reads
    the anchors in place. ``dw`` and ``dh`` (after dividing by the weights) are clamped at
    ``clamp`` so that ``exp`` cannot overflow. Differentiable with respect to ``deltas`` (one
    fused backward kernel); anchors are constants.

    Args:
        deltas (Tensor[..., 4]): ``(dx, dy, dw, dh)``, float32 / float64 / float16 / bfloat16
            (half types computed in float32).
        anchors (Tensor[..., 4]): reference boxes, broadcastable with ``deltas``.
        weights (sequence of 4 floats): ``(wx, wy, ww, wh)``. Default (1, 1, 1, 1).
        clamp (float): upper bound of ``dw`` and ``dh`` (``inf``: none); not NaN. Default
            ``log(1000 / 16)``. A NaN delta gives a NaN box, as torchvision.

    Returns:
        Tensor[broadcast shape]: ``(x1, y1, x2, y2)`` boxes in the promoted dtype.

    Raises:
        TypeError: a non-tensor or an unsupported dtype.
        ValueError: a last dimension other than 4, shapes that do not broadcast, different
            devices, bad weights, a NaN ``clamp``, or ``anchors.requires_grad`` (no gradient for
            anchors).
    """
    _check_boxes("deltas", "decode_boxes", deltas)
    _check_boxes("anchors", "decode_boxes", anchors)
    w = _check_weights("decode_boxes", weights)
    if not isinstance(clamp, Real) or math.isnan(clamp):
        raise ValueError(f"decode_boxes: clamp must be a number, got {clamp!r}")
    if anchors.requires_grad:
        raise ValueError("decode_boxes: anchors.requires_grad is set; the gradient for anchors is not supported")
    deltas, anchor_rows = _broadcast_pair("decode_boxes", deltas, anchors, ("deltas", "anchors"))
    return torch.ops.focalops.decode_boxes(deltas, anchor_rows, list(w), float(clamp))
