"""Non-maximum suppression and fused RetinaNet post-processing."""

import math
from numbers import Real
from typing import List, Tuple

import torch
from torch import Tensor

from focalops import _extension  # noqa: F401  (registers torch.ops.focalops)
from focalops.errors import OpTypeError, OpValueError
from focalops.ops import FLOATS


def _check_tensor(op: str, name: str, t, floating: bool = True) -> None:
    if not isinstance(t, Tensor):
        raise OpTypeError(f"{op}: {name} must be a Tensor, got {type(t).__name__}")
    if floating and t.dtype not in FLOATS:
        raise OpTypeError(f"{op}: {name} must be float32, float64, float16 or bfloat16, got {t.dtype}")


def _check_boxes_scores(op: str, boxes, scores, iou_threshold) -> None:
    _check_tensor(op, "boxes", boxes)
    _check_tensor(op, "scores", scores)
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise OpValueError(f"{op}: boxes must be [N, 4], got {list(boxes.shape)}")
    if scores.dim() != 1 or scores.shape[0] != boxes.shape[0]:
        raise OpValueError(f"{op}: scores must be [N] with N = {boxes.shape[0]}, got {list(scores.shape)}")
    if boxes.device != scores.device:
        raise OpValueError(f"{op}: boxes and scores must be on the same device, got {boxes.device} and {scores.device}")
    # An IoU is at most 1: a threshold above 1 suppresses nothing (as torchvision), so it is
    # passed on as 1. A negative one, which would suppress every box but the best, is refused.
    if not isinstance(iou_threshold, Real) or not iou_threshold >= 0:
        raise OpValueError(f"{op}: iou_threshold must be a number >= 0, got {iou_threshold!r}")


def _iou_threshold(threshold: float) -> float:
    """The threshold for the kernels' float32 test ``iou > t`` that keeps torchvision's test, which
    compares the float32 IoU with the threshold as a double: ``threshold`` (capped at 1: an IoU
    is at most 1) rounded down to a float32. At 0.3, an IoU of exactly 3/10 (0.3 in float32 is
    0.30000001) is then above the threshold, as torchvision has it."""
    threshold = min(float(threshold), 1.0)
    if threshold <= 0.0:
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
        _check_tensor("nms", "boxes", boxes, floating=False)
        _check_tensor("nms", "scores", scores, floating=False)
    boxes, scores = _dequantized(boxes), _dequantized(scores)
    if not torch.jit.is_scripting():
        _check_boxes_scores("nms", boxes, scores, iou_threshold)
    return torch.ops.focalops.nms(boxes, scores, _iou_threshold(iou_threshold))


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
    if not torch.jit.is_scripting():
        _check_tensor("batched_nms", "boxes", boxes)
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    if not torch.jit.is_scripting():
        _check_boxes_scores("batched_nms", boxes, scores, iou_threshold)
        _check_idxs(boxes, idxs)
    if idxs.is_floating_point() or idxs.dtype == torch.bool:
        idxs = torch.unique(idxs, return_inverse=True)[1]
    return torch.ops.focalops.batched_nms(boxes, scores, idxs.long(), _iou_threshold(iou_threshold))


def _check_idxs(boxes: Tensor, idxs) -> None:
    _check_tensor("batched_nms", "idxs", idxs, floating=False)
    if idxs.is_complex():
        raise OpTypeError(f"batched_nms: idxs must be a real or bool tensor, got {idxs.dtype}")
    if idxs.shape != (boxes.shape[0],):
        raise OpValueError(f"batched_nms: idxs must be [N] with N = {boxes.shape[0]}, got {list(idxs.shape)}")
    if idxs.device != boxes.device:
        raise OpValueError(f"batched_nms: idxs must be on {boxes.device}, got {idxs.device}")


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
