"""RetinaNet post-processing for a whole batch (torchvision ``RetinaNet.postprocess_detections``)."""

from typing import List, Tuple

import torch
from torch import Tensor

from focalops import _extension  # noqa: F401  (registers torch.ops.focalops)
from focalops.ops.checks import (
    FLOATS,
    check_float,
    check_type,
    check_value,
    dtype_name,
    require_int,
    require_number,
    require_tensor,
    sizes,
)
from focalops.ops.nms import _iou_threshold

__all__ = ["postprocess"]


def check_postprocess_args(
    cls_logits, box_deltas, anchors, level_sizes, image_sizes, score_thresh, topk_candidates, nms_thresh, dets_per_img
) -> None:
    """csrc/checks/postprocess.h ``check_postprocess_args``."""
    op = "postprocess"
    check_value(cls_logits.dim() == 3, lambda: f"{op}: cls_logits must be [B, A, K], got {sizes(cls_logits)}")
    check_type(cls_logits.dtype in FLOATS, lambda: f"{op}: cls_logits must be floating, got {dtype_name(cls_logits)}")
    b, a, _ = cls_logits.shape
    mt = _math_type(cls_logits)
    check_value(
        box_deltas.dim() == 3 and box_deltas.shape == (b, a, 4),
        lambda: f"{op}: box_deltas must be [B, A, 4] = [{b}, {a}, 4], got {sizes(box_deltas)}",
    )
    check_value(
        anchors.dim() == 2 and anchors.shape == (a, 4),
        lambda: f"{op}: anchors must be [A, 4] = [{a}, 4], got {sizes(anchors)}",
    )
    check_value(
        image_sizes.dim() == 2 and image_sizes.shape == (b, 2),
        lambda: f"{op}: image_sizes must be [B, 2] = [{b}, 2] (height, width), got {sizes(image_sizes)}",
    )
    check_type(
        box_deltas.dtype == mt and anchors.dtype == mt and image_sizes.dtype == mt,
        lambda: (
            f"{op}: box_deltas, anchors and image_sizes must be {dtype_name(mt)}, got {dtype_name(box_deltas)}, "
            f"{dtype_name(anchors)} and {dtype_name(image_sizes)}"
        ),
    )
    for t in (box_deltas, anchors, image_sizes):
        check_value(
            t.device == cls_logits.device, lambda: f"{op}: all tensors must be on {cls_logits.device}, got {t.device}"
        )
    check_value(
        all(s >= 0 for s in level_sizes) and sum(level_sizes) == a,
        lambda: f"{op}: level_sizes must be >= 0 and sum to A = {a}, got {list(level_sizes)}",
    )
    check_value(0 <= score_thresh <= 1, lambda: f"{op}: score_thresh must be in [0, 1], got {score_thresh:g}")
    check_value(topk_candidates >= 1, lambda: f"{op}: topk_candidates must be >= 1, got {topk_candidates}")
    check_value(0 <= nms_thresh <= 1, lambda: f"{op}: nms_thresh must be in [0, 1], got {nms_thresh:g}")
    check_value(dets_per_img >= 0, lambda: f"{op}: detections_per_img must be >= 0, got {dets_per_img}")


def _math_type(cls_logits: Tensor) -> torch.dtype:
    # The box and score math type: float32 for float32 / half / bfloat16 logits, float64 for float64.
    return torch.float64 if cls_logits.dtype == torch.float64 else torch.float32


@torch.library.register_fake("focalops::postprocess")
def _postprocess_fake(
    cls_logits, box_deltas, anchors, level_sizes, image_sizes, score_thresh, topk_candidates, nms_thresh, dets_per_img
):
    check_postprocess_args(
        cls_logits,
        box_deltas,
        anchors,
        level_sizes,
        image_sizes,
        score_thresh,
        topk_candidates,
        nms_thresh,
        dets_per_img,
    )
    b, d = cls_logits.shape[0], dets_per_img
    return (
        box_deltas.new_empty((b, d, 4)),
        box_deltas.new_empty((b, d)),
        box_deltas.new_empty((b, d), dtype=torch.int64),
        box_deltas.new_empty((b,), dtype=torch.int64),
    )


def postprocess(
    cls_logits: Tensor,
    box_deltas: Tensor,
    anchors: Tensor,
    level_sizes: List[int],
    image_sizes: Tensor,
    score_thresh: float = 0.05,
    topk_candidates: int = 1000,
    nms_thresh: float = 0.5,
    detections_per_img: int = 100,
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """RetinaNet detections for a whole batch in one call (torchvision ``postprocess_detections``).

    Per image and pyramid level: the (anchor, class) pairs whose score ``sigmoid(logit)``
    exceeds ``score_thresh``, the best ``topk_candidates`` of them, boxes decoded from the
    deltas (``BoxCoder`` weights (1, 1, 1, 1), ``dw, dh`` clamped at ``log(1000 / 16)``) and
    clipped to the image; then class-aware NMS over all levels of the image and the best
    ``detections_per_img``. Scores are computed only for logits that can pass the threshold.
    Candidate order (top-k selection and NMS) is decreasing score with ties broken by the lower
    flat index ``anchor * K + class`` within a level, then by level (torchvision leaves the
    order of exactly tied scores unspecified). On CUDA the top-k is taken on the logits: where
    more than ``topk_candidates`` distinct logits of a level round to the same float score at the
    top-k boundary (float32 sigmoid is exactly 1 above ~16.6), CUDA keeps the larger logits and
    the CPU the lower indices; which of exactly tied logits CUDA keeps there is unspecified. On
    CUDA the output shapes are static and the op never synchronises with the host (CUDA-graph
    capturable); B is limited to 65,535. The class-aware NMS of the ``M`` candidates of an image
    (``M = sum over levels of min(topk_candidates, A_l * K)``, 5,000 for RetinaNet) uses an
    ``M^2 / 8``-byte bitmask per image, built in tiles of at most 256 MiB for the whole batch
    as :func:`nms` does: memory ``O(B * M)`` plus one tile, with no limit on ``M``.

    Args:
        cls_logits (Tensor[B, A, K]): class logits, float32 / float64 / float16 / bfloat16.
        box_deltas (Tensor[B, A, 4]): regression deltas ``(dx, dy, dw, dh)``.
        anchors (Tensor[A, 4]): ``(x1, y1, x2, y2)`` anchors, shared by the images.
        level_sizes (list of int or SymInt): anchors per pyramid level, summing to ``A``.
        image_sizes (Tensor[B, 2]): ``(height, width)`` of each image (boxes are clipped to
            it), ``>= 0`` and finite.
        score_thresh (float): minimum score (exclusive), ``>= 0``. Default 0.05.
        topk_candidates (int): candidates kept per image and level, ``>= 1``. Default 1000.
        nms_thresh (float): IoU threshold of the NMS, ``>= 0``. Default 0.5.
        detections_per_img (int): ``D``, detections kept per image, ``>= 0``. Default 100.

    Returns:
        (boxes Tensor[B, D, 4], scores Tensor[B, D], labels Tensor[B, D] int64, counts Tensor[B] int64):
        image ``b``'s detections are the first ``counts[b]`` rows, by decreasing score; the
        rest is padding (boxes and scores 0, labels -1). Boxes and scores are float32 (float64
        for float64 logits). Not differentiable: no output requires grad.

    Raises:
        TypeError: a non-tensor or non-floating input.
        ValueError: wrong shapes or devices, ``level_sizes`` not summing to ``A``, a negative
            threshold, a count out of range.
        RuntimeError: NaN in ``cls_logits`` (found while scanning the scores, so not when
            ``detections_per_img`` is 0), NaN or inf in the ``box_deltas`` or ``anchors`` rows of a
            candidate (checked as they are decoded: the rows no candidate reads are not), a
            negative or non-finite image size. On CUDA, where a data check would cost a synchronisation,
            only the image sizes are checked (a device-side assertion); a NaN logit is never a
            detection but may take one of its level's top-k slots, and non-finite deltas or
            anchors give NaN boxes that suppress nothing.
    """
    op = "postprocess"
    if not torch.jit.is_scripting():
        for name, t in (("cls_logits", cls_logits), ("box_deltas", box_deltas), ("anchors", anchors)):
            require_tensor(op, name, t)
        require_tensor(op, "image_sizes", image_sizes)
        for name, t in (("box_deltas", box_deltas), ("anchors", anchors)):  # converted to the math type
            check_float(op, name, t)
        level_sizes = [require_int(op, "level_sizes", s) for s in level_sizes]
        score_thresh = require_number(op, "score_thresh", score_thresh)
        nms_thresh = require_number(op, "nms_thresh", nms_thresh)
        topk_candidates = require_int(op, "topk_candidates", topk_candidates)
        detections_per_img = require_int(op, "detections_per_img", detections_per_img)
    # Not differentiable (detached inputs: no output requires grad); the accelerated torchvision
    # model takes torchvision's differentiable path when its head outputs require grad.
    dtype = _math_type(cls_logits)
    cls_logits, box_deltas, anchors = cls_logits.detach(), box_deltas.detach().to(dtype), anchors.detach().to(dtype)
    image_sizes = image_sizes.to(dtype)
    # Above 1 nothing is kept (a score) or suppressed (an IoU), as torchvision: passed on as 1.
    score_thresh, nms_thresh = min(float(score_thresh), 1.0), _iou_threshold(nms_thresh)
    if not torch.jit.is_scripting():
        check_postprocess_args(
            cls_logits,
            box_deltas,
            anchors,
            level_sizes,
            image_sizes,
            score_thresh,
            topk_candidates,
            nms_thresh,
            detections_per_img,
        )
    return torch.ops.focalops.postprocess(
        cls_logits,
        box_deltas,
        anchors,
        level_sizes,
        image_sizes,
        score_thresh,
        topk_candidates,
        nms_thresh,
        detections_per_img,
    )
