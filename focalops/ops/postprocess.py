"""RetinaNet post-processing for a whole batch (torchvision ``RetinaNet.postprocess_detections``)."""

from numbers import Real
from typing import List, Tuple

import torch
from torch import Tensor

from focalops import _extension  # noqa: F401  (registers torch.ops.focalops)
from focalops.errors import OpValueError
from focalops.ops.nms import _check_tensor, _iou_threshold


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
    if not torch.jit.is_scripting():
        level_sizes = _checked_postprocess_args(
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
    dtype = torch.float64 if cls_logits.dtype == torch.float64 else torch.float32
    # Not differentiable (detached inputs: no output requires grad); the accelerated torchvision
    # model takes torchvision's differentiable path when its head outputs require grad.
    return torch.ops.focalops.postprocess(
        cls_logits.detach(),
        box_deltas.detach().to(dtype),
        anchors.detach().to(dtype),
        level_sizes,
        image_sizes.to(dtype),
        min(float(score_thresh), 1.0),
        topk_candidates,
        _iou_threshold(nms_thresh),
        detections_per_img,
    )


def _checked_postprocess_args(
    cls_logits,
    box_deltas,
    anchors,
    level_sizes,
    image_sizes,
    score_thresh,
    topk_candidates,
    nms_thresh,
    detections_per_img,
) -> List[int]:
    """The eager argument checks of :func:`postprocess`; returns ``level_sizes`` as a list of
    ints (SymInts, under tracing, stay symbolic: the schema takes ``SymInt[]``)."""
    op = "postprocess"
    _check_tensor(op, "cls_logits", cls_logits)
    _check_tensor(op, "box_deltas", box_deltas)
    _check_tensor(op, "anchors", anchors)
    _check_tensor(op, "image_sizes", image_sizes, floating=False)
    if cls_logits.dim() != 3:
        raise OpValueError(f"{op}: cls_logits must be [B, A, K], got {list(cls_logits.shape)}")
    num_images, num_anchors, _ = cls_logits.shape
    if box_deltas.shape != (num_images, num_anchors, 4):
        raise OpValueError(
            f"{op}: box_deltas must be [B, A, 4] = {[num_images, num_anchors, 4]}, got {list(box_deltas.shape)}"
        )
    if anchors.shape != (num_anchors, 4):
        raise OpValueError(f"{op}: anchors must be [A, 4] = {[num_anchors, 4]}, got {list(anchors.shape)}")
    if image_sizes.shape != (num_images, 2):
        raise OpValueError(
            f"{op}: image_sizes must be [B, 2] = {[num_images, 2]} (height, width), got {list(image_sizes.shape)}"
        )
    for name, t in (("box_deltas", box_deltas), ("anchors", anchors), ("image_sizes", image_sizes)):
        if t.device != cls_logits.device:
            raise OpValueError(f"{op}: {name} must be on {cls_logits.device}, got {t.device}")
    level_sizes = [s if isinstance(s, torch.SymInt) else int(s) for s in level_sizes]
    if any(s < 0 for s in level_sizes) or sum(level_sizes) != num_anchors:
        raise OpValueError(f"{op}: level_sizes must be >= 0 and sum to A = {num_anchors}, got {level_sizes}")
    for name, value in (("score_thresh", score_thresh), ("nms_thresh", nms_thresh)):
        # Above 1 nothing is kept (a score) or suppressed (an IoU), as torchvision: passed on as 1.
        if not isinstance(value, Real) or not value >= 0:
            raise OpValueError(f"{op}: {name} must be a number >= 0, got {value!r}")
    if not isinstance(topk_candidates, int) or topk_candidates < 1:
        raise OpValueError(f"{op}: topk_candidates must be an int >= 1, got {topk_candidates!r}")
    if not isinstance(detections_per_img, int) or detections_per_img < 0:
        raise OpValueError(f"{op}: detections_per_img must be an int >= 0, got {detections_per_img!r}")
    return level_sizes
