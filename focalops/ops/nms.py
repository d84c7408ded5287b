"""Non-maximum suppression (drop-ins for torchvision.ops.nms and batched_nms)."""

import math

import torch
from torch import Tensor

from focalops import _extension  # noqa: F401  (registers torch.ops.focalops)
from focalops.errors import OpTypeError
from focalops.ops.checks import FLOATS, check_type, check_value, dtype_name, require_number, require_tensor, sizes

__all__ = ["nms", "batched_nms"]


# The checks of csrc/checks/nms.h.


def check_nms_args(op: str, boxes: Tensor, scores: Tensor, iou_threshold: float) -> None:
    check_value(boxes.dim() == 2 and boxes.shape[1] == 4, lambda: f"{op}: boxes must be [N, 4], got {sizes(boxes)}")
    check_value(
        scores.dim() == 1 and scores.shape[0] == boxes.shape[0],
        lambda: f"{op}: scores must be [N] with N = {boxes.shape[0]}, got {sizes(scores)}",
    )
    check_type(boxes.dtype in FLOATS, lambda: f"{op}: boxes must be floating, got {dtype_name(boxes)}")
    check_type(scores.dtype in FLOATS, lambda: f"{op}: scores must be floating, got {dtype_name(scores)}")
    check_value(
        boxes.device == scores.device,
        lambda: f"{op}: boxes and scores must be on the same device, got {boxes.device} and {scores.device}",
    )
    check_value(0 <= iou_threshold <= 1, lambda: f"{op}: iou_threshold must be in [0, 1], got {iou_threshold:g}")


def check_batched_nms_idxs(boxes: Tensor, idxs: Tensor) -> None:
    op = "batched_nms"
    check_value(
        idxs.dim() == 1 and idxs.shape[0] == boxes.shape[0],
        lambda: f"{op}: idxs must be [N] with N = {boxes.shape[0]}, got {sizes(idxs)}",
    )
    check_type(idxs.dtype == torch.int64, lambda: f"{op}: idxs must be int64, got {dtype_name(idxs)}")
    check_value(idxs.device == boxes.device, lambda: f"{op}: idxs must be on {boxes.device}, got {idxs.device}")


def _kept(boxes: Tensor) -> Tensor:
    # The number of kept boxes depends on the data: an unbacked size.
    return boxes.new_empty((torch.library.get_ctx().new_dynamic_size(),), dtype=torch.int64)


@torch.library.register_fake("focalops::nms")
def _nms_fake(boxes, scores, iou_threshold):
    check_nms_args("nms", boxes, scores, iou_threshold)
    return _kept(boxes)


@torch.library.register_fake("focalops::batched_nms")
def _batched_nms_fake(boxes, scores, idxs, iou_threshold):
    check_nms_args("batched_nms", boxes, scores, iou_threshold)
    check_batched_nms_idxs(boxes, idxs)
    return _kept(boxes)


def _iou_threshold(threshold: float) -> float:
    """The threshold for the kernels' float32 test ``iou > t`` that keeps torchvision's test, which
    compares the float32 IoU with the threshold as a double: ``threshold`` (capped at 1: an IoU
    is at most 1) rounded down to a float32. At 0.3, an IoU of exactly 3/10 (0.3 in float32 is
    0.30000001) is then above the threshold, as torchvision has it."""
    threshold = min(float(threshold), 1.0)
    if not threshold > 0.0:  # 0, or refused by the op's check (negative, NaN)
        return threshold
    if torch.jit.is_scripting():
        t = torch.tensor(threshold, dtype=torch.float32)
        if t.item() > threshold:
            t = torch.nextafter(t, torch.zeros_like(t))
        return t.item()
    else:
        mantissa, exponent = math.frexp(threshold)  # 24 bits of mantissa, rounded towards 0
        return math.ldexp(math.floor(math.ldexp(mantissa, 24)), exponent - 24)


def _dequantized(t: Tensor) -> Tensor:
    # torchvision's quantized NMS compares the integer values: IoU does not change under the
    # (affine, increasing) dequantisation, nor does the order of the scores.
    return t.dequantize() if t.is_quantized else t


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy non-maximum suppression (a drop-in for ``torchvision.ops.nms``).

    Boxes are visited by decreasing score (equal scores: lower index first); each kept box
    removes the later boxes whose IoU with it is greater than ``iou_threshold``. IoU is
    computed in float32 (an empty union counts as IoU 0). The number of kept boxes depends on
    the data, so on CUDA the op reads that count back to the host (one synchronisation).
    CPU: exact greedy per class bucket (a uniform grid of kept boxes for large buckets). CUDA:
    a 64-box bitmask reduced on the GPU. The whole mask would take ``N^2 / 8`` bytes (2 GB at
    128k boxes), so it is built in square tiles of at most 256 MiB (one tile up to ~46,000
    boxes); the boxes kept in earlier tiles suppress the later ones without their mask being
    stored. Memory: ``O(N)`` plus one tile, for any ``N``; time grows as ``N^2`` (the IoU of every
    pair that is not already suppressed). An allocation that does not fit raises
    ``torch.cuda.OutOfMemoryError`` naming the bitmask tile.

    Args:
        boxes (Tensor[N, 4]): ``(x1, y1, x2, y2)`` boxes, float32 / float64 / float16 / bfloat16.
        scores (Tensor[N]): box scores, floating (quantized boxes and scores are dequantized).
        iou_threshold (float): boxes with IoU ``> iou_threshold`` are suppressed; ``>= 0``
            (above 1 nothing is suppressed).

    Returns:
        Tensor[K] (int64): indices of the kept boxes, by decreasing score.

    Raises:
        OpTypeError (a ``TypeError`` and a ``RuntimeError``): a non-tensor or non-floating input.
        OpValueError (a ``ValueError`` and a ``RuntimeError``): wrong shapes, different devices,
            a negative threshold.
        RuntimeError: NaN in ``boxes`` or ``scores`` (checked on CPU; on CUDA NaN is not checked:
            a NaN box suppresses nothing and is never suppressed). Under TorchScript every
            check is the op's own and raises ``RuntimeError``, as torchvision's.
    """
    if not torch.jit.is_scripting():
        require_tensor("nms", "boxes", boxes)
        require_tensor("nms", "scores", scores)
        iou_threshold = require_number("nms", "iou_threshold", iou_threshold)
    boxes, scores, threshold = _dequantized(boxes), _dequantized(scores), _iou_threshold(iou_threshold)
    if not torch.jit.is_scripting():
        check_nms_args("nms", boxes, scores, threshold)
    return torch.ops.focalops.nms(boxes, scores, threshold)


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """NMS within each category (a drop-in for ``torchvision.ops.batched_nms``).

    Boxes with different ``idxs`` never suppress each other. The categories are separated
    inside the kernel (no coordinate-offset trick), so any number of categories and any box
    coordinates work. Order and ties as :func:`nms`.

    Args:
        boxes (Tensor[N, 4]): ``(x1, y1, x2, y2)`` boxes, floating.
        scores (Tensor[N]): box scores, floating.
        idxs (Tensor[N]): category of each box: integer (any values), or floating or bool
            (each distinct value is a category, as torchvision's coordinate offsets make it).
        iou_threshold (float): boxes with IoU ``> iou_threshold`` are suppressed; ``>= 0``.

    Returns:
        Tensor[K] (int64): indices of the kept boxes, by decreasing score. Zero boxes
        (``boxes.numel() == 0``) give an empty result whatever the other arguments, as torchvision.

    Raises:
        OpTypeError, OpValueError, RuntimeError: as :func:`nms`; ``idxs`` not an [N] tensor.
    """
    op = "batched_nms"
    if not torch.jit.is_scripting():
        require_tensor(op, "boxes", boxes)
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    if not torch.jit.is_scripting():
        require_tensor(op, "scores", scores)
        require_tensor(op, "idxs", idxs)
        if idxs.is_complex():
            raise OpTypeError(f"{op}: idxs must be a real or bool tensor, got {idxs.dtype}")
        iou_threshold = require_number(op, "iou_threshold", iou_threshold)
    if idxs.is_floating_point() or idxs.dtype == torch.bool:
        idxs = torch.unique(idxs, return_inverse=True)[1]
    idxs, threshold = idxs.long(), _iou_threshold(iou_threshold)
    if not torch.jit.is_scripting():
        check_nms_args(op, boxes, scores, threshold)
        check_batched_nms_idxs(boxes, idxs)
    return torch.ops.focalops.batched_nms(boxes, scores, idxs, threshold)
