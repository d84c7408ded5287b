"""Anchor to ground-truth assignment (torchvision Matcher) and RetinaNet training targets."""

from numbers import Integral, Real
from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor

from focalops import _extension  # noqa: F401  (registers torch.ops.focalops)
from focalops.errors import OpTypeError, OpValueError
from focalops.ops import FLOATS
from focalops.ops.boxes import _check_weights


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
    for name, t in (("anchors", anchors), ("gt_boxes", gt_boxes), ("gt_counts", gt_counts)):
        if not isinstance(t, Tensor):
            raise OpTypeError(f"assign: {name} must be a Tensor, got {type(t).__name__}")
    for name, t in (("anchors", anchors), ("gt_boxes", gt_boxes)):
        if t.dtype not in FLOATS:
            raise OpTypeError(f"assign: {name} must be float32, float64, float16 or bfloat16, got {t.dtype}")
    if gt_counts.dtype.is_floating_point or gt_counts.dtype.is_complex or gt_counts.dtype == torch.bool:
        raise OpTypeError(f"assign: gt_counts must be an integer tensor, got {gt_counts.dtype}")
    if anchors.dim() != 2 or anchors.shape[1] != 4:
        raise OpValueError(f"assign: anchors must have shape [A, 4], got {list(anchors.shape)}")
    if gt_boxes.dim() != 3 or gt_boxes.shape[2] != 4:
        raise OpValueError(f"assign: gt_boxes must have shape [B, G, 4], got {list(gt_boxes.shape)}")
    if gt_counts.shape != gt_boxes.shape[:1]:
        raise OpValueError(
            f"assign: gt_counts must have shape [B] = [{gt_boxes.shape[0]}], got {list(gt_counts.shape)}"
        )
    if not (anchors.device == gt_boxes.device == gt_counts.device):
        raise OpValueError(
            f"assign: anchors, gt_boxes and gt_counts must be on one device, got {anchors.device}, "
            f"{gt_boxes.device} and {gt_counts.device}"
        )
    if not isinstance(fg_iou, Real) or not isinstance(bg_iou, Real) or not 0 <= bg_iou <= fg_iou <= 1:
        raise OpValueError(f"assign: need 0 <= bg_iou <= fg_iou <= 1, got fg_iou={fg_iou} and bg_iou={bg_iou}")
    return torch.ops.focalops.assign(
        anchors.detach().float(),
        gt_boxes.detach().float(),
        gt_counts.long(),
        float(fg_iou),
        float(bg_iou),
        bool(allow_low_quality),
    )


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
    for name, t in (
        ("matched", matched),
        ("gt_boxes", gt_boxes),
        ("gt_labels", gt_labels),
        ("anchors", anchors),
    ):
        if not isinstance(t, Tensor):
            raise OpTypeError(f"retinanet_targets: {name} must be a Tensor, got {type(t).__name__}")
    if matched.dtype != torch.int64:
        raise OpTypeError(f"retinanet_targets: matched must be int64, got {matched.dtype}")
    if gt_labels.dtype.is_floating_point or gt_labels.dtype.is_complex or gt_labels.dtype == torch.bool:
        raise OpTypeError(f"retinanet_targets: gt_labels must be an integer tensor, got {gt_labels.dtype}")
    for name, t in (("gt_boxes", gt_boxes), ("anchors", anchors)):
        if t.dtype not in FLOATS:
            raise OpTypeError(f"retinanet_targets: {name} must be float32, float64, float16 or bfloat16, got {t.dtype}")
    if matched.dim() != 2:
        raise OpValueError(f"retinanet_targets: matched must have shape [B, A], got {list(matched.shape)}")
    B, A = matched.shape
    if anchors.shape != (A, 4):
        raise OpValueError(f"retinanet_targets: anchors must have shape [A, 4] = [{A}, 4], got {list(anchors.shape)}")
    if gt_boxes.dim() != 3 or gt_boxes.shape[0] != B or gt_boxes.shape[2] != 4:
        raise OpValueError(
            f"retinanet_targets: gt_boxes must have shape [B, G, 4] with B = {B}, got {list(gt_boxes.shape)}"
        )
    if gt_labels.shape != gt_boxes.shape[:2]:
        raise OpValueError(
            f"retinanet_targets: gt_labels must have shape [B, G] = {list(gt_boxes.shape[:2])}, "
            f"got {list(gt_labels.shape)}"
        )
    if not (matched.device == gt_boxes.device == gt_labels.device == anchors.device):
        raise OpValueError("retinanet_targets: matched, gt_boxes, gt_labels and anchors must be on one device")
    w = _check_weights("retinanet_targets", weights)
    if num_classes is not None and (not isinstance(num_classes, Integral) or num_classes < 0):
        raise OpValueError(f"retinanet_targets: num_classes must be an int >= 0, got {num_classes!r}")
    dtype = torch.promote_types(gt_boxes.dtype, anchors.dtype)
    return torch.ops.focalops.retinanet_targets(
        matched,
        gt_boxes.detach().to(dtype),
        gt_labels.long(),
        anchors.detach().to(dtype),
        list(w),
        None if num_classes is None else int(num_classes),
    )
