"""Fake (meta) kernels: output shapes and dtypes for torch.compile, opcheck and FakeTensor.

Each fake states the C++ checks of its op (csrc/checks/) in the same order with the same
messages (dtypes and doubles printed as c10 prints them), so traced code refuses what the op
refuses; tests/test_fake_checks.py runs bad calls through both and compares.
"""

import math

import torch

from focalops import _extension  # noqa: F401  (the ops must exist before fakes attach)
from focalops.ops import FLOATS

# How c10 prints a dtype and a double (ostream: 6 significant digits), for the same messages.
_CPP_DTYPES = {
    torch.float32: "Float", torch.float64: "Double", torch.float16: "Half", torch.bfloat16: "BFloat16",
    torch.int64: "Long", torch.int32: "Int", torch.int16: "Short", torch.int8: "Char", torch.uint8: "Byte",
    torch.bool: "Bool", torch.complex64: "ComplexFloat", torch.complex128: "ComplexDouble",
}  # fmt: skip


def _dt(t) -> str:
    return _CPP_DTYPES.get(t.dtype, str(t.dtype))


def _sizes(t) -> str:
    return str(list(t.shape))


def _doubles(values) -> str:
    return "[" + ", ".join(f"{v:g}" for v in values) + "]"


def _check_focal_args(inputs, targets, alpha, gamma, ignore_index):
    op = "sigmoid_focal_loss"
    torch._check(
        inputs.dtype in FLOATS, lambda: f"{op}: inputs must be float32, float64, float16 or bfloat16, got {_dt(inputs)}"
    )
    torch._check(
        inputs.device == targets.device,
        lambda: f"{op}: inputs and targets must be on the same device, got {inputs.device} and {targets.device}",
    )
    torch._check(gamma >= 0 and math.isfinite(gamma), lambda: f"{op}: gamma must be >= 0 and finite, got {gamma:g}")
    torch._check(alpha <= 1, lambda: f"{op}: alpha must be <= 1 (or < 0 to disable), got {alpha:g}")
    torch._check(ignore_index != -1, lambda: f"{op}: ignore_index must not be -1 (the background label)")
    if targets.dtype == torch.int64:
        torch._check(
            inputs.dim() >= 1 and targets.shape == inputs.shape[:-1],
            lambda: (
                f"{op}: class-index targets must have shape inputs.shape[:-1] = "
                f"{list(inputs.shape[:-1])}, got {_sizes(targets)}"
            ),
        )
    else:
        torch._check(
            targets.dtype == inputs.dtype,
            lambda: (
                f"{op}: targets must be int64 class indices or have the dtype of inputs ({_dt(inputs)}), "
                f"got {_dt(targets)}"
            ),
        )
        torch._check(
            targets.shape == inputs.shape,
            lambda: f"{op}: targets must have the shape of inputs {_sizes(inputs)}, got {_sizes(targets)}",
        )


def _focal_sum_dtype(inputs):
    return torch.float64 if inputs.dtype == torch.float64 else torch.float32


@torch.library.register_fake("focalops::sigmoid_focal_loss")
def _sigmoid_focal_loss_fake(inputs, targets, alpha, gamma, ignore_index, reduce):
    _check_focal_args(inputs, targets, alpha, gamma, ignore_index)
    if reduce:
        return inputs.new_empty((), dtype=_focal_sum_dtype(inputs))
    return torch.empty_like(inputs, memory_format=torch.contiguous_format)


@torch.library.register_fake("focalops::_sigmoid_focal_loss_with_grad")
def _sigmoid_focal_loss_with_grad_fake(inputs, targets, alpha, gamma, ignore_index, reduce):
    loss = _sigmoid_focal_loss_fake(inputs, targets, alpha, gamma, ignore_index, reduce)
    return loss, torch.empty_like(inputs, memory_format=torch.contiguous_format)


@torch.library.register_fake("focalops::_sigmoid_focal_loss_backward")
def _sigmoid_focal_loss_backward_fake(grad, inputs, targets, alpha, gamma, ignore_index, reduce):
    _check_focal_args(inputs, targets, alpha, gamma, ignore_index)
    op = "_sigmoid_focal_loss_backward"
    torch._check(grad.device == inputs.device, lambda: f"{op}: grad must be on {inputs.device}")
    if reduce:
        torch._check(
            grad.numel() == 1, lambda: f"{op}: grad of a reduced loss must have one element, got {_sizes(grad)}"
        )
    else:
        torch._check(
            grad.shape == inputs.shape,
            lambda: f"{op}: grad must have the shape of inputs {_sizes(inputs)}, got {_sizes(grad)}",
        )
    return torch.empty_like(inputs, memory_format=torch.contiguous_format)


# Boxes, assignment, box coding (csrc/checks/boxes.h)


def _check_box_dtype(op, name, t):
    torch._check(
        t.dtype in FLOATS,
        lambda: f"{op}: {name} must be float32, float64, float16 or bfloat16, got {_dt(t)}",
    )


@torch.library.register_fake("focalops::box_iou")
def _box_iou_fake(boxes1, boxes2):
    _check_box_dtype("box_iou", "boxes1", boxes1)
    torch._check(
        boxes1.dim() == 2 and boxes1.shape[1] == 4, lambda: f"box_iou: boxes1 must be [N, 4], got {_sizes(boxes1)}"
    )
    torch._check(
        boxes2.dim() == 2 and boxes2.shape[1] == 4, lambda: f"box_iou: boxes2 must be [M, 4], got {_sizes(boxes2)}"
    )
    torch._check(boxes2.dtype == boxes1.dtype, lambda: "box_iou: boxes2 must have the dtype of boxes1")
    torch._check(boxes1.device == boxes2.device, lambda: "box_iou: boxes1 and boxes2 must be on the same device")
    return boxes1.new_empty((boxes1.shape[0], boxes2.shape[0]))


def _check_box_weights(op, weights):
    torch._check(
        len(weights) == 4 and all(w > 0 and math.isfinite(w) for w in weights),
        lambda: f"{op}: weights must be 4 positive finite numbers (wx, wy, ww, wh), got {_doubles(weights)}",
    )


def _check_coder(op, name, a, anchors, weights):
    _check_box_dtype(op, name, a)
    torch._check(a.dim() >= 1 and a.shape[-1] == 4, lambda: f"{op}: {name} must be [..., 4], got {_sizes(a)}")
    torch._check(
        anchors.dim() >= 1 and anchors.shape[-1] == 4, lambda: f"{op}: anchors must be [..., 4], got {_sizes(anchors)}"
    )
    torch._check(anchors.dtype == a.dtype, lambda: f"{op}: anchors must have the dtype of {name}")
    torch._check(anchors.device == a.device, lambda: f"{op}: anchors must be on the device of {name}")
    torch._check(
        a.numel() % anchors.numel() == 0 if anchors.numel() > 0 else a.numel() == 0,
        lambda: f"{op}: anchors {_sizes(anchors)} do not repeat evenly along {name} {_sizes(a)}",
    )
    _check_box_weights(op, weights)


@torch.library.register_fake("focalops::encode_boxes")
def _encode_boxes_fake(gt, anchors, weights):
    _check_coder("encode_boxes", "gt", gt, anchors, weights)
    return torch.empty_like(gt, memory_format=torch.contiguous_format)


@torch.library.register_fake("focalops::decode_boxes")
def _decode_boxes_fake(deltas, anchors, weights, clamp):
    _check_coder("decode_boxes", "deltas", deltas, anchors, weights)
    torch._check(not math.isnan(clamp), lambda: "decode_boxes: clamp must be a number, got nan")
    return torch.empty_like(deltas, memory_format=torch.contiguous_format)


@torch.library.register_fake("focalops::_decode_boxes_backward")
def _decode_boxes_backward_fake(grad, deltas, anchors, weights, clamp):
    _check_coder("_decode_boxes_backward", "deltas", deltas, anchors, weights)
    torch._check(not math.isnan(clamp), lambda: "_decode_boxes_backward: clamp must be a number, got nan")
    torch._check(
        grad.shape == deltas.shape and grad.dtype == deltas.dtype and grad.device == deltas.device,
        lambda: "_decode_boxes_backward: grad must have the shape, dtype and device of deltas",
    )
    return torch.empty_like(deltas, memory_format=torch.contiguous_format)


# Assignment and RetinaNet targets (csrc/checks/boxes.h: check_assign_args, check_targets_args)


@torch.library.register_fake("focalops::assign")
def _assign_fake(anchors, gt_boxes, gt_counts, fg_iou, bg_iou, allow_low_quality):
    torch._check(anchors.dtype == torch.float32, lambda: f"assign: anchors must be float32, got {_dt(anchors)}")
    torch._check(gt_boxes.dtype == torch.float32, lambda: f"assign: gt_boxes must be float32, got {_dt(gt_boxes)}")
    torch._check(gt_counts.dtype == torch.int64, lambda: f"assign: gt_counts must be int64, got {_dt(gt_counts)}")
    torch._check(
        anchors.dim() == 2 and anchors.shape[1] == 4, lambda: f"assign: anchors must be [A, 4], got {_sizes(anchors)}"
    )
    torch._check(
        gt_boxes.dim() == 3 and gt_boxes.shape[2] == 4,
        lambda: f"assign: gt_boxes must be [B, G, 4], got {_sizes(gt_boxes)}",
    )
    torch._check(
        gt_counts.dim() == 1 and gt_counts.shape[0] == gt_boxes.shape[0],
        lambda: f"assign: gt_counts must be [B] = [{gt_boxes.shape[0]}], got {_sizes(gt_counts)}",
    )
    torch._check(
        anchors.device == gt_boxes.device and anchors.device == gt_counts.device,
        lambda: "assign: anchors, gt_boxes and gt_counts must be on one device",
    )
    torch._check(
        0 <= bg_iou <= fg_iou <= 1,
        lambda: f"assign: need 0 <= bg_iou <= fg_iou <= 1, got fg_iou={fg_iou:g} and bg_iou={bg_iou:g}",
    )
    return anchors.new_empty((gt_boxes.shape[0], anchors.shape[0]), dtype=torch.int64)


@torch.library.register_fake("focalops::retinanet_targets")
def _retinanet_targets_fake(matched, gt_boxes, gt_labels, anchors, weights, num_classes=None):
    op = "retinanet_targets"
    torch._check(
        matched.dtype == torch.int64 and matched.dim() == 2,
        lambda: f"{op}: matched must be int64 [B, A], got {_dt(matched)} {_sizes(matched)}",
    )
    _check_box_dtype(op, "gt_boxes", gt_boxes)
    torch._check(anchors.dtype == gt_boxes.dtype, lambda: f"{op}: anchors must have the dtype of gt_boxes")
    B, A = matched.shape
    torch._check(
        gt_boxes.dim() == 3 and gt_boxes.shape[0] == B and gt_boxes.shape[2] == 4,
        lambda: f"{op}: gt_boxes must be [B, G, 4] with B = {B}, got {_sizes(gt_boxes)}",
    )
    torch._check(
        gt_labels.dtype == torch.int64 and gt_labels.dim() == 2 and gt_labels.shape == gt_boxes.shape[:2],
        lambda: f"{op}: gt_labels must be int64 [B, G], got {_dt(gt_labels)} {_sizes(gt_labels)}",
    )
    torch._check(
        anchors.dim() == 2 and anchors.shape[0] == A and anchors.shape[1] == 4,
        lambda: f"{op}: anchors must be [A, 4] with A = {A}, got {_sizes(anchors)}",
    )
    torch._check(
        matched.device == gt_boxes.device == gt_labels.device == anchors.device,
        lambda: f"{op}: matched, gt_boxes, gt_labels and anchors must be on one device",
    )
    _check_box_weights(op, weights)
    torch._check(num_classes is None or num_classes >= 0, lambda: f"{op}: num_classes must be >= 0, got {num_classes}")
    return (
        matched.new_empty((B, A)),
        gt_boxes.new_empty((B, A, 4)),
        matched.new_empty((B, A), dtype=torch.bool),
    )


def _check_nms_args(op, boxes, scores, iou_threshold):
    torch._check(boxes.dim() == 2 and boxes.shape[1] == 4, lambda: f"{op}: boxes must be [N, 4], got {_sizes(boxes)}")
    torch._check(
        scores.dim() == 1 and scores.shape[0] == boxes.shape[0],
        lambda: f"{op}: scores must be [N] with N = {boxes.shape[0]}, got {_sizes(scores)}",
    )
    torch._check(boxes.dtype in FLOATS, lambda: f"{op}: boxes must be floating, got {_dt(boxes)}")
    torch._check(scores.dtype in FLOATS, lambda: f"{op}: scores must be floating, got {_dt(scores)}")
    torch._check(
        boxes.device == scores.device,
        lambda: f"{op}: boxes and scores must be on the same device, got {boxes.device} and {scores.device}",
    )
    torch._check(0 <= iou_threshold <= 1, lambda: f"{op}: iou_threshold must be in [0, 1], got {iou_threshold:g}")


def _nms_output(boxes):
    # The number of kept boxes depends on the data: an unbacked size.
    n = torch.library.get_ctx().new_dynamic_size()
    return boxes.new_empty((n,), dtype=torch.int64)


@torch.library.register_fake("focalops::nms")
def _nms_fake(boxes, scores, iou_threshold):
    _check_nms_args("nms", boxes, scores, iou_threshold)
    return _nms_output(boxes)


@torch.library.register_fake("focalops::batched_nms")
def _batched_nms_fake(boxes, scores, idxs, iou_threshold):
    _check_nms_args("batched_nms", boxes, scores, iou_threshold)
    torch._check(
        idxs.dim() == 1 and idxs.shape[0] == boxes.shape[0],
        lambda: f"batched_nms: idxs must be [N] with N = {boxes.shape[0]}, got {_sizes(idxs)}",
    )
    torch._check(idxs.dtype == torch.int64, lambda: f"batched_nms: idxs must be int64, got {_dt(idxs)}")
    torch._check(idxs.device == boxes.device, lambda: f"batched_nms: idxs must be on {boxes.device}, got {idxs.device}")
    return _nms_output(boxes)


@torch.library.register_fake("focalops::postprocess")
def _postprocess_fake(
    cls_logits, box_deltas, anchors, level_sizes, image_sizes, score_thresh, topk_candidates, nms_thresh, dets_per_img
):
    op = "postprocess"
    torch._check(cls_logits.dim() == 3, lambda: f"{op}: cls_logits must be [B, A, K], got {_sizes(cls_logits)}")
    torch._check(cls_logits.dtype in FLOATS, lambda: f"{op}: cls_logits must be floating, got {_dt(cls_logits)}")
    b, a, _ = cls_logits.shape
    mt = torch.float64 if cls_logits.dtype == torch.float64 else torch.float32
    torch._check(
        box_deltas.dim() == 3 and box_deltas.shape == (b, a, 4),
        lambda: f"{op}: box_deltas must be [B, A, 4] = [{b}, {a}, 4], got {_sizes(box_deltas)}",
    )
    torch._check(
        anchors.dim() == 2 and anchors.shape == (a, 4),
        lambda: f"{op}: anchors must be [A, 4] = [{a}, 4], got {_sizes(anchors)}",
    )
    torch._check(
        image_sizes.dim() == 2 and image_sizes.shape == (b, 2),
        lambda: f"{op}: image_sizes must be [B, 2] = [{b}, 2] (height, width), got {_sizes(image_sizes)}",
    )
    torch._check(
        box_deltas.dtype == mt and anchors.dtype == mt and image_sizes.dtype == mt,
        lambda: (
            f"{op}: box_deltas, anchors and image_sizes must be {_CPP_DTYPES[mt]}, got {_dt(box_deltas)}, "
            f"{_dt(anchors)} and {_dt(image_sizes)}"
        ),
    )
    for t in (box_deltas, anchors, image_sizes):
        torch._check(
            t.device == cls_logits.device, lambda: f"{op}: all tensors must be on {cls_logits.device}, got {t.device}"
        )
    torch._check(
        all(s >= 0 for s in level_sizes) and sum(level_sizes) == a,
        lambda: f"{op}: level_sizes must be >= 0 and sum to A = {a}, got {list(level_sizes)}",
    )
    torch._check(0 <= score_thresh <= 1, lambda: f"{op}: score_thresh must be in [0, 1], got {score_thresh:g}")
    torch._check(topk_candidates >= 1, lambda: f"{op}: topk_candidates must be >= 1, got {topk_candidates}")
    torch._check(0 <= nms_thresh <= 1, lambda: f"{op}: nms_thresh must be in [0, 1], got {nms_thresh:g}")
    torch._check(dets_per_img >= 0, lambda: f"{op}: detections_per_img must be >= 0, got {dets_per_img}")
    d = dets_per_img
    return (
        box_deltas.new_empty((b, d, 4)),
        box_deltas.new_empty((b, d)),
        box_deltas.new_empty((b, d), dtype=torch.int64),
        box_deltas.new_empty((b,), dtype=torch.int64),
    )
