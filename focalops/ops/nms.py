"""Non-maximum suppression and fused RetinaNet post-processing."""

from numbers import Real
from typing import Sequence, Tuple

import torch
from torch import Tensor

from focalops import _extension  # noqa: F401  (registers torch.ops.focalops)
from focalops.ops import FLOATS


def _check_tensor(op: str, name: str, t, floating: bool = True) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{op}: {name} must be a Tensor, got {type(t).__name__}")
    if floating and t.dtype not in FLOATS:
        raise TypeError(f"{op}: {name} must be float32, float64, float16 or bfloat16, got {t.dtype}")


def _check_threshold(op: str, name: str, value) -> None:
    # IoU and score thresholds: beyond 1 nothing is ever suppressed (or kept), silently.
    if not isinstance(value, Real) or not 0 <= value <= 1:
        raise ValueError(f"{op}: {name} must be a number in [0, 1], got {value!r}")


def _check_boxes_scores(op: str, boxes, scores, iou_threshold) -> None:
    _check_tensor(op, "boxes", boxes)
    _check_tensor(op, "scores", scores)
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{op}: boxes must be [N, 4], got {list(boxes.shape)}")
    if scores.dim() != 1 or scores.shape[0] != boxes.shape[0]:
        raise ValueError(f"{op}: scores must be [N] with N = {boxes.shape[0]}, got {list(scores.shape)}")
    if boxes.device != scores.device:
        raise ValueError(f"{op}: boxes and scores must be on the same device, got {boxes.device} and {scores.device}")
    _check_threshold(op, "iou_threshold", iou_threshold)


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
        scores (Tensor[N]): box scores, floating.
        iou_threshold (float): boxes with IoU ``> iou_threshold`` are suppressed; in ``[0, 1]``.

    Returns:
        Tensor[K] (int64): indices of the kept boxes, by decreasing score.

    Raises:
        TypeError: a non-tensor or non-floating input.
        ValueError: wrong shapes, different devices, a threshold outside ``[0, 1]``.
        RuntimeError: NaN in ``boxes`` or ``scores`` (checked on CPU; on CUDA NaN is not checked:
            a NaN box suppresses nothing and is never suppressed).
    """
    _check_boxes_scores("nms", boxes, scores, iou_threshold)
    return torch.ops.focalops.nms(boxes, scores, float(iou_threshold))


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """NMS within each category (a drop-in for ``torchvision.ops.batched_nms``).

    Boxes with different ``idxs`` never suppress each other. The categories are separated
    inside the kernel (no coordinate-offset trick), so any number of categories and any box
    coordinates work. Order and ties as :func:`nms`.

    Args:
        boxes (Tensor[N, 4]): ``(x1, y1, x2, y2)`` boxes, floating.
        scores (Tensor[N]): box scores, floating.
        idxs (Tensor[N]): integer category of each box (any values).
        iou_threshold (float): boxes with IoU ``> iou_threshold`` are suppressed; in ``[0, 1]``.

    Returns:
        Tensor[K] (int64): indices of the kept boxes, by decreasing score.

    Raises:
        TypeError, ValueError, RuntimeError: as :func:`nms`; ``idxs`` not an integer [N] tensor.
    """
    _check_boxes_scores("batched_nms", boxes, scores, iou_threshold)
    _check_tensor("batched_nms", "idxs", idxs, floating=False)
    if idxs.dtype.is_floating_point or idxs.dtype.is_complex or idxs.dtype == torch.bool:
        raise TypeError(f"batched_nms: idxs must be an integer tensor, got {idxs.dtype}")
    if idxs.shape != scores.shape:
        raise ValueError(f"batched_nms: idxs must be [N] with N = {boxes.shape[0]}, got {list(idxs.shape)}")
    if idxs.device != boxes.device:
        raise ValueError(f"batched_nms: idxs must be on {boxes.device}, got {idxs.device}")
    return torch.ops.focalops.batched_nms(boxes, scores, idxs.long(), float(iou_threshold))


def postprocess(
    cls_logits: Tensor,
    box_deltas: Tensor,
    anchors: Tensor,
    level_sizes: Sequence[int],
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
        score_thresh (float): minimum score (exclusive), in ``[0, 1]``. Default 0.05.
        topk_candidates (int): candidates kept per image and level, ``>= 1``. Default 1000.
        nms_thresh (float): IoU threshold of the NMS, in ``[0, 1]``. Default 0.5.
        detections_per_img (int): ``D``, detections kept per image, ``>= 0``. Default 100.

    Returns:
        (boxes Tensor[B, D, 4], scores Tensor[B, D], labels Tensor[B, D] int64, counts Tensor[B] int64):
        image ``b``'s detections are the first ``counts[b]`` rows, by decreasing score; the
        rest is padding (boxes and scores 0, labels -1). Boxes and scores are float32 (float64
        for float64 logits).

    Raises:
        TypeError: a non-tensor or non-floating input.
        ValueError: wrong shapes or devices, ``level_sizes`` not summing to ``A``, a threshold
            outside ``[0, 1]``, a count out of range.
        RuntimeError: NaN in ``cls_logits`` (found while scanning the scores, so not when
            ``detections_per_img`` is 0), NaN or inf in ``box_deltas`` or ``anchors``, a negative
            or non-finite image size. On CUDA, where a data check would cost a synchronisation,
            only the image sizes are checked (a device-side assertion); a NaN logit is never a
            detection but may take one of its level's top-k slots, and non-finite deltas or
            anchors give NaN boxes that suppress nothing.
    """
    op = "postprocess"
    _check_tensor(op, "cls_logits", cls_logits)
    _check_tensor(op, "box_deltas", box_deltas)
    _check_tensor(op, "anchors", anchors)
    _check_tensor(op, "image_sizes", image_sizes, floating=False)
    if cls_logits.dim() != 3:
        raise ValueError(f"{op}: cls_logits must be [B, A, K], got {list(cls_logits.shape)}")
    num_images, num_anchors, _ = cls_logits.shape
    if box_deltas.shape != (num_images, num_anchors, 4):
        raise ValueError(
            f"{op}: box_deltas must be [B, A, 4] = {[num_images, num_anchors, 4]}, got {list(box_deltas.shape)}"
        )
    if anchors.shape != (num_anchors, 4):
        raise ValueError(f"{op}: anchors must be [A, 4] = {[num_anchors, 4]}, got {list(anchors.shape)}")
    if image_sizes.shape != (num_images, 2):
        raise ValueError(
            f"{op}: image_sizes must be [B, 2] = {[num_images, 2]} (height, width), got {list(image_sizes.shape)}"
        )
    for name, t in (("box_deltas", box_deltas), ("anchors", anchors), ("image_sizes", image_sizes)):
        if t.device != cls_logits.device:
            raise ValueError(f"{op}: {name} must be on {cls_logits.device}, got {t.device}")
    # Symbolic sizes (torch.export / torch.compile tracing) stay symbolic: the schema takes SymInt[].
    level_sizes = [s if isinstance(s, torch.SymInt) else int(s) for s in level_sizes]
    if any(s < 0 for s in level_sizes) or sum(level_sizes) != num_anchors:
        raise ValueError(f"{op}: level_sizes must be >= 0 and sum to A = {num_anchors}, got {level_sizes}")
    _check_threshold(op, "score_thresh", score_thresh)
    _check_threshold(op, "nms_thresh", nms_thresh)
    if not isinstance(topk_candidates, int) or topk_candidates < 1:
        raise ValueError(f"{op}: topk_candidates must be an int >= 1, got {topk_candidates!r}")
    if not isinstance(detections_per_img, int) or detections_per_img < 0:
        raise ValueError(f"{op}: detections_per_img must be an int >= 0, got {detections_per_img!r}")
    dtype = torch.float64 if cls_logits.dtype == torch.float64 else torch.float32
    return torch.ops.focalops.postprocess(
        cls_logits,
        box_deltas.to(dtype),
        anchors.to(dtype),
        level_sizes,
        image_sizes.to(dtype),
        float(score_thresh),
        topk_candidates,
        float(nms_thresh),
        detections_per_img,
    )
