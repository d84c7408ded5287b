"""Box IoU and torchvision BoxCoder encoding / decoding as fused kernels."""

import math
from numbers import Real
from typing import List, Sequence, Tuple

import torch
from torch import Tensor

from focalops import _extension  # noqa: F401  (registers torch.ops.focalops)
from focalops.errors import OpTypeError, OpValueError
from focalops.ops.checks import (
    check_float,
    check_type,
    check_value,
    doubles,
    require_number,
    require_tensor,
    sizes,
)

__all__ = ["box_iou", "encode_boxes", "decode_boxes"]

# torchvision's bound on dw, dh when decoding (BoxCoder.bbox_xform_clip; csrc/math/box.h kBoxDeltaClamp).
BOX_DELTA_CLAMP = math.log(1000.0 / 16)


# The checks of csrc/checks/boxes.h.


def check_box_iou_args(boxes1: Tensor, boxes2: Tensor) -> None:
    check_float("box_iou", "boxes1", boxes1)
    check_value(
        boxes1.dim() == 2 and boxes1.shape[1] == 4, lambda: f"box_iou: boxes1 must be [N, 4], got {sizes(boxes1)}"
    )
    check_value(
        boxes2.dim() == 2 and boxes2.shape[1] == 4, lambda: f"box_iou: boxes2 must be [M, 4], got {sizes(boxes2)}"
    )
    check_type(boxes2.dtype == boxes1.dtype, lambda: "box_iou: boxes2 must have the dtype of boxes1")
    check_value(boxes1.device == boxes2.device, lambda: "box_iou: boxes1 and boxes2 must be on the same device")


def check_box_weights(op: str, weights: Sequence[float]) -> None:
    check_value(
        len(weights) == 4 and all(w > 0 and math.isfinite(w) for w in weights),
        lambda: f"{op}: weights must be 4 positive finite numbers (wx, wy, ww, wh), got {doubles(weights)}",
    )


def check_box_rows(op: str, name: str, t: Tensor) -> None:
    check_value(t.dim() >= 1 and t.shape[-1] == 4, lambda: f"{op}: {name} must be [..., 4], got {sizes(t)}")


def check_coder_args(op: str, name: str, a: Tensor, anchors: Tensor, weights: Sequence[float]) -> None:
    """Box coding: ``a`` is [..., 4]; ``anchors`` holds M rows of 4 that repeat along a's rows."""
    check_float(op, name, a)
    check_box_rows(op, name, a)
    check_box_rows(op, "anchors", anchors)
    check_type(anchors.dtype == a.dtype, lambda: f"{op}: anchors must have the dtype of {name}")
    check_value(anchors.device == a.device, lambda: f"{op}: anchors must be on the device of {name}")
    check_value(
        a.numel() % anchors.numel() == 0 if anchors.numel() > 0 else a.numel() == 0,
        lambda: f"{op}: anchors {sizes(anchors)} do not repeat evenly along {name} {sizes(a)}",
    )
    check_box_weights(op, weights)


def check_decode_clamp(op: str, clamp: float) -> None:
    # A NaN clamp would turn every box into NaN; +-inf are fine (no clamp, zero-size boxes).
    check_value(not math.isnan(clamp), lambda: f"{op}: clamp must be a number, got nan")


def check_decode_backward_args(grad, deltas, anchors, weights, clamp) -> None:
    op = "_decode_boxes_backward"
    check_coder_args(op, "deltas", deltas, anchors, weights)
    check_decode_clamp(op, clamp)
    check_value(
        grad.shape == deltas.shape and grad.dtype == deltas.dtype and grad.device == deltas.device,
        lambda: f"{op}: grad must have the shape, dtype and device of deltas",
    )


@torch.library.register_fake("focalops::box_iou")
def _box_iou_fake(boxes1, boxes2):
    check_box_iou_args(boxes1, boxes2)
    return boxes1.new_empty((boxes1.shape[0], boxes2.shape[0]))


@torch.library.register_fake("focalops::encode_boxes")
def _encode_boxes_fake(gt, anchors, weights):
    check_coder_args("encode_boxes", "gt", gt, anchors, weights)
    return torch.empty_like(gt, memory_format=torch.contiguous_format)


@torch.library.register_fake("focalops::decode_boxes")
def _decode_boxes_fake(deltas, anchors, weights, clamp):
    check_coder_args("decode_boxes", "deltas", deltas, anchors, weights)
    check_decode_clamp("decode_boxes", clamp)
    return torch.empty_like(deltas, memory_format=torch.contiguous_format)


@torch.library.register_fake("focalops::_decode_boxes_backward")
def _decode_boxes_backward_fake(grad, deltas, anchors, weights, clamp):
    check_decode_backward_args(grad, deltas, anchors, weights, clamp)
    return torch.empty_like(deltas, memory_format=torch.contiguous_format)


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


def _box_tensor(op: str, name: str, t) -> None:
    """What the box coders check before promoting and broadcasting their pair."""
    require_tensor(op, name, t)
    check_float(op, name, t)
    check_box_rows(op, name, t)


def converted_weights(op: str, weights) -> List[float]:
    """BoxCoder weights as the list of floats the ops take (checked by :func:`check_box_weights`)."""
    try:
        values = [float(w) for w in weights if isinstance(w, Real)]
        ok = len(values) == len(weights)
    except TypeError:
        ok = False
    if not ok:
        raise OpValueError(f"{op}: weights must be 4 positive finite numbers (wx, wy, ww, wh), got {weights!r}")
    return values


def _broadcast_pair(op: str, a: Tensor, b: Tensor, names: Tuple[str, str]) -> Tuple[Tensor, Tensor]:
    """Common dtype, and b reduced to rows [M, 4] that repeat along a ([N, 4] with N % M == 0)
    when b's shape is a suffix of the broadcast shape (the usual deltas [B, A, 4] with anchors
    [A, 4]): then nothing is copied. Otherwise both are expanded to the broadcast shape."""
    try:
        shape = torch.broadcast_shapes(a.shape, b.shape)
    except RuntimeError:
        shapes = f"{names[0]} {list(a.shape)} and {names[1]} {list(b.shape)}"
        raise OpValueError(f"{op}: {shapes} do not broadcast") from None
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


def _tie_share(a: Tensor, b: Tensor, a_wins: Tensor) -> Tensor:
    # torch.maximum / torch.minimum's gradient: all to the winner, halves on a tie.
    return torch.where(a == b, 0.5, a_wins.to(a.dtype))


def _box_iou_grad(grad: Tensor, boxes1: Tensor, boxes2: Tensor) -> Tuple[Tensor, Tensor]:
    """d IoU / d boxes of torchvision's formula (``torch.max`` / ``torch.min`` corners,
    ``clamp(min=0)`` sides, ``inter / union``) with ATen ops: torchvision's gradient, ties
    included, and 0 where the union is empty (the forward's 0 in place of torchvision's NaN)."""
    dtype = boxes1.dtype
    if dtype not in (torch.float32, torch.float64):
        grad, boxes1, boxes2 = grad.float(), boxes1.float(), boxes2.float()
    a = boxes1[:, None, :]  # [N, 1, 4]
    b = boxes2[None, :, :]  # [1, M, 4]
    lt = torch.maximum(a[..., :2], b[..., :2])  # [N, M, 2]
    rb = torch.minimum(a[..., 2:], b[..., 2:])
    wh = rb - lt
    whc = wh.clamp(min=0)
    inter = whc[..., 0] * whc[..., 1]
    size1 = boxes1[:, 2:] - boxes1[:, :2]  # [N, 2] (w, h)
    size2 = boxes2[:, 2:] - boxes2[:, :2]
    union = (size1[:, 0] * size1[:, 1])[:, None] + (size2[:, 0] * size2[:, 1])[None, :] - inter
    valid = union > 0
    safe = torch.where(valid, union, torch.ones_like(union))
    g = torch.where(valid, grad, torch.zeros_like(grad))
    g_union = -g * inter / (safe * safe)  # [N, M]
    g_inter = g / safe - g_union  # union = area1 + area2 - inter
    # inter = w * h with w, h clamped at 0 (no gradient at exactly 0, as torch.clamp)
    g_wh = g_inter[..., None] * whc.flip(-1) * (wh > 0).to(whc.dtype)  # [N, M, 2]: (d/dw, d/dh)
    g_lt, g_rb = -g_wh, g_wh
    # area = w * h of each box: d/d(x1, y1) = -(h, w), d/d(x2, y2) = (h, w)
    g_area1, g_area2 = g_union.sum(1), g_union.sum(0)
    d1 = g_area1[:, None] * size1.flip(-1)
    d2 = g_area2[:, None] * size2.flip(-1)
    grad1 = torch.cat(
        [
            (g_lt * _tie_share(a[..., :2], b[..., :2], a[..., :2] > b[..., :2])).sum(1) - d1,
            (g_rb * _tie_share(a[..., 2:], b[..., 2:], a[..., 2:] < b[..., 2:])).sum(1) + d1,
        ],
        dim=1,
    )
    grad2 = torch.cat(
        [
            (g_lt * _tie_share(b[..., :2], a[..., :2], b[..., :2] > a[..., :2])).sum(0) - d2,
            (g_rb * _tie_share(b[..., 2:], a[..., 2:], b[..., 2:] < a[..., 2:])).sum(0) + d2,
        ],
        dim=1,
    )
    return grad1.to(dtype), grad2.to(dtype)


def _box_iou_setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _box_iou_backward(ctx, grad):
    boxes1, boxes2 = ctx.saved_tensors
    return _box_iou_grad(grad, boxes1, boxes2)


torch.library.register_autograd("focalops::box_iou", _box_iou_backward, setup_context=_box_iou_setup_context)

_IOU_FORMATS = ("xyxy", "xywh", "cxcywh")


def _iou_upcast(t: Tensor) -> Tensor:
    # torchvision's _upcast: float32 / float64 stay, half types and integers compute in float32
    # (torchvision keeps int32 / int64 differences exact, then divides into float32).
    return t if t.dtype == torch.float32 or t.dtype == torch.float64 else t.float()


def _to_xyxy(boxes: Tensor, fmt: str) -> Tensor:
    if fmt == "xywh":
        return torch.cat([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], dim=1)
    if fmt == "cxcywh":
        return torch.cat([boxes[:, :2] - boxes[:, 2:] / 2, boxes[:, :2] + boxes[:, 2:] / 2], dim=1)
    return boxes


def _require_iou_args(boxes1, boxes2, fmt) -> None:
    """What :func:`box_iou` converts (integer and half boxes, ``fmt``) before the op's checks."""
    for name, t in (("boxes1", boxes1), ("boxes2", boxes2)):
        require_tensor("box_iou", name, t)
        if t.dtype == torch.bool or t.is_complex():
            raise OpTypeError(f"box_iou: {name} must be a real floating or integer tensor, got {t.dtype}")
    if fmt not in _IOU_FORMATS:
        raise OpValueError(
            f"box_iou: fmt must be one of {_IOU_FORMATS} (rotated formats are torchvision's own), got {fmt!r}"
        )


def box_iou(boxes1: Tensor, boxes2: Tensor, fmt: str = "xyxy") -> Tensor:
    """Pairwise intersection over union of two sets of boxes (``torchvision.ops.box_iou``).

    torchvision's semantics and gradient, except that a pair with an empty union (two zero-area
    boxes) gives 0 instead of NaN (and a zero gradient). Differentiable with respect to both
    sets of boxes (in every ``fmt``); the backward is composed of ATen ops.

    Args:
        boxes1 (Tensor[N, 4]): floating or integer boxes.
        boxes2 (Tensor[M, 4]): same device.
        fmt (str): ``"xyxy"`` (``(x1, y1, x2, y2)``, default), ``"xywh"`` (``(x1, y1, w, h)``) or
            ``"cxcywh"`` (``(cx, cy, w, h)``).

    Returns:
        Tensor[N, M]: the IoUs, float64 if either input is float64, else float32 (float16,
        bfloat16 and integer boxes give float32, as torchvision).

    Raises:
        OpTypeError (a ``TypeError`` and a ``RuntimeError``): a non-tensor, a bool or complex tensor.
        OpValueError (a ``ValueError`` and a ``RuntimeError``): a shape other than ``[*, 4]``,
            different devices, an unknown ``fmt``.
    """
    if not torch.jit.is_scripting():
        _require_iou_args(boxes1, boxes2, fmt)
    boxes1, boxes2 = _iou_upcast(boxes1), _iou_upcast(boxes2)
    dtype = torch.promote_types(boxes1.dtype, boxes2.dtype)
    if fmt != "xyxy" and fmt != "xywh" and fmt != "cxcywh":
        raise ValueError("box_iou: fmt must be 'xyxy', 'xywh' or 'cxcywh', got " + fmt)
    boxes1, boxes2 = boxes1.to(dtype), boxes2.to(dtype)
    if not torch.jit.is_scripting():
        check_box_iou_args(boxes1, boxes2)
    boxes1, boxes2 = _to_xyxy(boxes1, fmt), _to_xyxy(boxes2, fmt)
    return torch.ops.focalops.box_iou(boxes1, boxes2)


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
    op = "encode_boxes"
    _box_tensor(op, "gt", gt)
    _box_tensor(op, "anchors", anchors)
    w = converted_weights(op, weights)
    gt, anchor_rows = _broadcast_pair(op, gt.detach(), anchors.detach(), ("gt", "anchors"))
    check_coder_args(op, "gt", gt, anchor_rows, w)
    return torch.ops.focalops.encode_boxes(gt, anchor_rows, w)


def decode_boxes(
    deltas: Tensor,
    anchors: Tensor,
    weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
    clamp: float = BOX_DELTA_CLAMP,
) -> Tensor:
    """Boxes from regression deltas and anchors (torchvision ``BoxCoder.decode_single``).

    Broadcast over the leading dimensions: ``deltas [B, A, 4]`` with ``anchors [A, 4]`` reads
    the anchors in place. ``dw`` and ``dh`` (after dividing by the weights) are clamped at
    ``clamp`` so that ``exp`` cannot overflow. Differentiable with respect to ``deltas`` (one
    fused backward kernel); anchors are constants.

    Args:
        deltas (Tensor[..., 4] or Tensor[..., 4K]): ``(dx, dy, dw, dh)``, float32 / float64 /
            float16 / bfloat16 (half types computed in float32); ``K`` deltas per anchor (one per
            class, ``BoxCoder.decode_single``'s ``[N, 4K]``) give ``K`` boxes per anchor, ``[..., 4K]``.
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
    if isinstance(deltas, Tensor) and isinstance(anchors, Tensor) and deltas.dim() >= 1 and anchors.dim() >= 1:
        k = deltas.shape[-1] // 4
        if k > 1 and deltas.shape[-1] == 4 * k and anchors.shape[-1] == 4:
            # BoxCoder.decode_single's multi-class deltas [..., 4K] against anchors [..., 4]
            boxes = decode_boxes(deltas.unflatten(-1, (k, 4)), anchors.unsqueeze(-2), weights, clamp)
            return boxes.flatten(-2)
    op = "decode_boxes"
    _box_tensor(op, "deltas", deltas)
    _box_tensor(op, "anchors", anchors)
    w = converted_weights(op, weights)
    clamp = require_number(op, "clamp", clamp)
    if anchors.requires_grad:
        raise OpValueError(f"{op}: anchors.requires_grad is set; the gradient for anchors is not supported")
    deltas, anchor_rows = _broadcast_pair(op, deltas, anchors, ("deltas", "anchors"))
    check_coder_args(op, "deltas", deltas, anchor_rows, w)
    check_decode_clamp(op, clamp)
    return torch.ops.focalops.decode_boxes(deltas, anchor_rows, w, clamp)
