"""Anchor to ground-truth assignment (torchvision Matcher) and RetinaNet training targets."""

from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor

from focalops import _extension  # noqa: F401  (registers torch.ops.focalops)
from focalops.ops.boxes import check_box_weights, converted_weights
from focalops.ops.checks import (
    check_float,
    check_type,
    check_value,
    dtype_name,
    require_int,
    require_integer,
    require_number,
    require_tensor,
    sizes,
)

__all__ = ["assign", "retinanet_targets"]


# The checks of csrc/checks/assign.h.


def check_assign_args(anchors: Tensor, gt_boxes: Tensor, gt_counts: Tensor, fg_iou: float, bg_iou: float) -> None:
    op = "assign"
    check_type(anchors.dtype == torch.float32, lambda: f"{op}: anchors must be float32, got {dtype_name(anchors)}")
    check_type(gt_boxes.dtype == torch.float32, lambda: f"{op}: gt_boxes must be float32, got {dtype_name(gt_boxes)}")
    check_type(gt_counts.dtype == torch.int64, lambda: f"{op}: gt_counts must be int64, got {dtype_name(gt_counts)}")
    check_value(
        anchors.dim() == 2 and anchors.shape[1] == 4, lambda: f"{op}: anchors must be [A, 4], got {sizes(anchors)}"
    )
    check_value(
        gt_boxes.dim() == 3 and gt_boxes.shape[2] == 4,
        lambda: f"{op}: gt_boxes must be [B, G, 4], got {sizes(gt_boxes)}",
    )
    check_value(
        gt_counts.dim() == 1 and gt_counts.shape[0] == gt_boxes.shape[0],
        lambda: f"{op}: gt_counts must be [B] = [{gt_boxes.shape[0]}], got {sizes(gt_counts)}",
    )
    check_value(
        anchors.device == gt_boxes.device and anchors.device == gt_counts.device,
        lambda: f"{op}: anchors, gt_boxes and gt_counts must be on one device",
    )
    check_value(
        0 <= bg_iou <= fg_iou <= 1,
        lambda: f"{op}: need 0 <= bg_iou <= fg_iou <= 1, got fg_iou={fg_iou:g} and bg_iou={bg_iou:g}",
    )


def check_targets_args(matched, gt_boxes, gt_labels, anchors, weights, num_classes) -> None:
    op = "retinanet_targets"
    check_type(matched.dtype == torch.int64, lambda: f"{op}: matched must be int64, got {dtype_name(matched)}")
    check_value(matched.dim() == 2, lambda: f"{op}: matched must be [B, A], got {sizes(matched)}")
    check_float(op, "gt_boxes", gt_boxes)
    check_type(anchors.dtype == gt_boxes.dtype, lambda: f"{op}: anchors must have the dtype of gt_boxes")
    B, A = matched.shape
    check_value(
        gt_boxes.dim() == 3 and gt_boxes.shape[0] == B and gt_boxes.shape[2] == 4,
        lambda: f"{op}: gt_boxes must be [B, G, 4] with B = {B}, got {sizes(gt_boxes)}",
    )
    check_type(gt_labels.dtype == torch.int64, lambda: f"{op}: gt_labels must be int64, got {dtype_name(gt_labels)}")
    check_value(
        gt_labels.dim() == 2 and gt_labels.shape == gt_boxes.shape[:2],
        lambda: f"{op}: gt_labels must be [B, G] = {list(gt_boxes.shape[:2])}, got {sizes(gt_labels)}",
    )
    check_value(
        anchors.dim() == 2 and anchors.shape[0] == A and anchors.shape[1] == 4,
        lambda: f"{op}: anchors must be [A, 4] with A = {A}, got {sizes(anchors)}",
    )
    check_value(
        matched.device == gt_boxes.device == gt_labels.device == anchors.device,
        lambda: f"{op}: matched, gt_boxes, gt_labels and anchors must be on one device",
    )
    check_box_weights(op, weights)
    check_value(num_classes is None or num_classes >= 0, lambda: f"{op}: num_classes must be >= 0, got {num_classes}")


@torch.library.register_fake("focalops::assign")
def _assign_fake(anchors, gt_boxes, gt_counts, fg_iou, bg_iou, allow_low_quality):
    check_assign_args(anchors, gt_boxes, gt_counts, fg_iou, bg_iou)
    return anchors.new_empty((gt_boxes.shape[0], anchors.shape[0]), dtype=torch.int64)


@torch.library.register_fake("focalops::retinanet_targets")
def _retinanet_targets_fake(matched, gt_boxes, gt_labels, anchors, weights, num_classes=None):
    check_targets_args(matched, gt_boxes, gt_labels, anchors, weights, num_classes)
    B, A = matched.shape
    return matched.new_empty((B, A)), gt_boxes.new_empty((B, A, 4)), matched.new_empty((B, A), dtype=torch.bool)


def assign(
    anchors: Tensor,
    gt_boxes: Tensor,
    gt_counts: Tensor,
    fg_iou: float = 0.5,
    bg_iou: float = 0.4,
    allow_low_quality: bool = True,
) -> Tensor:
    """Match every anchor of every image to a ground-truth box, for the whole batch at once.

    torchvision ``Matcher(fg_iou, bg_iou, allow_low_quality_matches)`` applied to the IoU of
    each image's boxes with the anchors, with these rules:

    - an anchor gets the index of its best box (ties: the lowest box index) if that IoU is
      ``>= fg_iou``, ``-2`` (ignored) if it is in ``[bg_iou, fg_iou)``, ``-1`` (background)
      below ``bg_iou``;
    - ``allow_low_quality``: every anchor whose IoU with some box equals that box's best IoU
      over all anchors (exact float equality, every tie) gets its own best box index even
      below ``bg_iou``; a box whose best IoU is 0 makes no such match (torchvision would);
    - boxes ``gt_boxes[b, gt_counts[b]:]`` are padding and never matched; an image without
      boxes is all background.

    IoU is computed in float32 from float32 coordinates with one formula on CPU and CUDA, so
    both devices give identical indices. The ``A x G`` IoU matrix is never built: a fused
    kernel finds each box's best IoU, then each anchor's best box (memory ``O(B*A + B*G)``).
    No host synchronisation on CUDA.

    Args:
        anchors (Tensor[A, 4]): ``(x1, y1, x2, y2)``, any floating dtype (converted to float32).
        gt_boxes (Tensor[B, G, 4]): padded ground-truth boxes, same device.
        gt_counts (Tensor[B]): integer number of valid boxes of each image, in ``[0, G]``.
        fg_iou (float): foreground threshold, in ``[0, 1]``. Default 0.5.
        bg_iou (float): background threshold, in ``[0, fg_iou]``. Default 0.4.
        allow_low_quality (bool): keep each box's best anchors. Default True.

    Returns:
        Tensor[B, A] int64: matched box index, -1 background, -2 ignored. Not differentiable.

    Raises:
        TypeError: non-tensors, non-floating boxes or non-integer counts.
        ValueError: wrong shapes, different devices, not ``0 <= bg_iou <= fg_iou <= 1``.
        RuntimeError: a count outside ``[0, G]`` or a NaN coordinate (on CUDA a device-side
            assertion, so the check costs no host synchronisation).
    """
    op = "assign"
    for name, t in (("anchors", anchors), ("gt_boxes", gt_boxes)):
        require_tensor(op, name, t)
        check_float(op, name, t)
    require_integer(op, "gt_counts", gt_counts)
    fg_iou, bg_iou = require_number(op, "fg_iou", fg_iou), require_number(op, "bg_iou", bg_iou)
    anchors, gt_boxes, gt_counts = anchors.detach().float(), gt_boxes.detach().float(), gt_counts.long()
    check_assign_args(anchors, gt_boxes, gt_counts, fg_iou, bg_iou)
    return torch.ops.focalops.assign(anchors, gt_boxes, gt_counts, fg_iou, bg_iou, bool(allow_low_quality))


def retinanet_targets(
    matched: Tensor,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    anchors: Tensor,
    weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
    *,
    num_classes: Optional[int] = None,
) -> Tuple[Tensor, Tensor, Tensor]:
    """RetinaNet training targets of a batch, in one fused pass over the anchors.

    Args:
        matched (Tensor[B, A] int64): the output of :func:`assign`.
        gt_boxes (Tensor[B, G, 4]): the padded ground-truth boxes given to :func:`assign`.
        gt_labels (Tensor[B, G]): integer class of each box; the label of every box that an
            anchor is matched to must be ``>= 0`` (padding boxes are never read).
        anchors (Tensor[A, 4]): the anchors given to :func:`assign`.
        weights (sequence of 4 floats): BoxCoder weights. Default (1, 1, 1, 1).
        num_classes (int, optional): when given, those labels must also be ``< num_classes``;
            without it a label ``>= K`` is caught by the class-index focal loss.

    Returns:
        (Tensor[B, A] int64, Tensor[B, A, 4], Tensor[B, A] bool):
        ``cls_targets`` (the matched box's label, -1 background, -2 ignored: ready for
        ``sigmoid_focal_loss(..., ignore_index=-2)``), ``box_targets`` (``encode_boxes`` of the
        matched box for foreground anchors, 0 elsewhere; dtype of ``gt_boxes`` promoted with
        ``anchors``) and ``fg_mask`` (``matched >= 0``). Static shapes, no host
        synchronisation, not differentiable.

    Raises:
        TypeError: non-tensors or wrong dtypes.
        ValueError: inconsistent shapes or devices, bad weights, ``num_classes < 0``.
        RuntimeError: a ``matched`` value ``>= G`` or ``< -2``, or a matched box's label outside
            ``[0, num_classes)`` (device-side assertions on CUDA).
    """
    op = "retinanet_targets"
    for name, t in (("matched", matched), ("gt_boxes", gt_boxes), ("anchors", anchors)):
        require_tensor(op, name, t)
    require_integer(op, "gt_labels", gt_labels)
    check_float(op, "gt_boxes", gt_boxes)
    check_float(op, "anchors", anchors)
    w = converted_weights(op, weights)
    if num_classes is not None:
        num_classes = require_int(op, "num_classes", num_classes)
    dtype = torch.promote_types(gt_boxes.dtype, anchors.dtype)
    gt_boxes, gt_labels, anchors = gt_boxes.detach().to(dtype), gt_labels.long(), anchors.detach().to(dtype)
    check_targets_args(matched, gt_boxes, gt_labels, anchors, w, num_classes)
    return torch.ops.focalops.retinanet_targets(matched, gt_boxes, gt_labels, anchors, w, num_classes)
