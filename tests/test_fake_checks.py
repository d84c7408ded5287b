"""The fake kernels (focalops/ops/<family>.py: what torch.compile, torch.export and FakeTensor run) state
the C++ checks (csrc/checks/), with the same messages: on each bad call below both refuse, and
say the same thing. Traced code then fails where eager code would, not later at run time."""

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import focalops
from focalops.errors import OpTypeError, OpValueError

F32, F64, I64 = torch.float32, torch.float64, torch.int64


def _t(*shape, dtype=F32):
    return torch.zeros(shape, dtype=dtype)


def _boxes(n):
    return torch.tensor([[0.0, 0.0, 2.0, 2.0]]).repeat(n, 1)


ASSIGN = [  # (anchors, gt_boxes, gt_counts, fg_iou, bg_iou, allow_low_quality)
    (_boxes(5).double(), _t(2, 3, 4), _t(2, dtype=I64), 0.5, 0.4, True),
    (_boxes(5), _t(2, 3, 4, dtype=F64), _t(2, dtype=I64), 0.5, 0.4, True),
    (_boxes(5), _t(2, 3, 4), _t(2, dtype=torch.int32), 0.5, 0.4, True),
    (_t(5, 3), _t(2, 3, 4), _t(2, dtype=I64), 0.5, 0.4, True),
    (_boxes(5), _t(2, 3), _t(2, dtype=I64), 0.5, 0.4, True),
    (_boxes(5), _t(2, 3, 4), _t(3, dtype=I64), 0.5, 0.4, True),
    (_boxes(5), _t(2, 3, 4), _t(2, 1, dtype=I64), 0.5, 0.4, True),
    (_boxes(5), _t(2, 3, 4), _t(2, dtype=I64), 0.4, 0.5, True),
    (_boxes(5), _t(2, 3, 4), _t(2, dtype=I64), 1.5, 0.4, True),
    (_boxes(5), _t(2, 3, 4), _t(2, dtype=I64), 0.5, -0.1, True),
]

W = [1.0, 1.0, 1.0, 1.0]
TARGETS = [  # (matched, gt_boxes, gt_labels, anchors, weights, num_classes)
    (_t(2, 5, dtype=torch.int32), _t(2, 3, 4), _t(2, 3, dtype=I64), _boxes(5), W, None),
    (_t(2, dtype=I64), _t(2, 3, 4), _t(2, 3, dtype=I64), _boxes(5), W, None),
    (_t(2, 5, dtype=I64), _t(2, 3, 4, dtype=I64), _t(2, 3, dtype=I64), _boxes(5), W, None),
    (_t(2, 5, dtype=I64), _t(2, 3, 4), _t(2, 3, dtype=I64), _boxes(5).double(), W, None),
    (_t(2, 5, dtype=I64), _t(3, 3, 4), _t(3, 3, dtype=I64), _boxes(5), W, None),
    (_t(2, 5, dtype=I64), _t(2, 3, 5), _t(2, 3, dtype=I64), _boxes(5), W, None),
    (_t(2, 5, dtype=I64), _t(2, 3, 4), _t(2, 4, dtype=I64), _boxes(5), W, None),
    (_t(2, 5, dtype=I64), _t(2, 3, 4), _t(2, 3, dtype=torch.int32), _boxes(5), W, None),
    (_t(2, 5, dtype=I64), _t(2, 3, 4), _t(2, 3, dtype=I64), _boxes(6), W, None),
    (_t(2, 5, dtype=I64), _t(2, 3, 4), _t(2, 3, dtype=I64), _t(5, 3), W, None),
    (_t(2, 5, dtype=I64), _t(2, 3, 4), _t(2, 3, dtype=I64), _boxes(5), [1.0, 0.0, 1.0, 1.0], None),
    (_t(2, 5, dtype=I64), _t(2, 3, 4), _t(2, 3, dtype=I64), _boxes(5), [1.0, 1.0, 1.0], None),
    (_t(2, 5, dtype=I64), _t(2, 3, 4), _t(2, 3, dtype=I64), _boxes(5), W, -1),
]

BOX_IOU = [
    (_boxes(3).long(), _boxes(2)),
    (_t(3, 5), _boxes(2)),
    (_boxes(3), _t(2, 4, 1)),
    (_boxes(3), _boxes(2).double()),
]
CODER = [  # decode_boxes (deltas, anchors, weights, clamp)
    (_t(2, 5, 4, dtype=I64), _boxes(5), W, 4.0),
    (_t(2, 5, 3), _boxes(5), W, 4.0),
    (_t(2, 5, 4), _t(5, 2), W, 4.0),
    (_t(2, 5, 4), _boxes(5).double(), W, 4.0),
    (_t(2, 5, 4), _boxes(3), W, 4.0),
    (_t(2, 5, 4), _boxes(5), [10.0, 10.0, 5.0, -5.0], 4.0),
    (_t(2, 5, 4), _boxes(5), W, float("nan")),
]

FOCAL = [  # (inputs, targets, alpha, gamma, ignore_index, reduce)
    (_t(4, 3, dtype=I64), _t(4, dtype=I64), 0.25, 2.0, -100, True),
    (_t(4, 3), _t(4, dtype=I64), 0.25, -1.0, -100, True),
    (_t(4, 3), _t(4, dtype=I64), 0.25, float("inf"), -100, True),
    (_t(4, 3), _t(4, dtype=I64), 1.5, 2.0, -100, True),
    (_t(4, 3), _t(4, dtype=I64), 0.25, 2.0, -1, True),
    (_t(4, 3), _t(3, dtype=I64), 0.25, 2.0, -100, False),
    (_t(4, 3), _t(4, 3, dtype=F64), 0.25, 2.0, -100, False),
    (_t(4, 3), _t(4, 2), 0.25, 2.0, -100, False),
]
FOCAL_BACKWARD = [  # (grad, inputs, targets, alpha, gamma, ignore_index, reduce)
    (_t(2), _t(4, 3), _t(4, dtype=I64), 0.25, 2.0, -100, True),
    (_t(4, 2), _t(4, 3), _t(4, 3), 0.25, 2.0, -100, False),
]
NMS = [  # (boxes, scores, iou_threshold)
    (_t(5, 3), _t(5), 0.5),
    (_boxes(5), _t(4), 0.5),
    (_boxes(5).long(), _t(5), 0.5),
    (_boxes(5), _t(5, dtype=I64), 0.5),
    (_boxes(5), _t(5), -0.5),
    (_boxes(5), _t(5), float("nan")),
]
BATCHED_NMS = [(b, s, _t(5, dtype=I64), t) for b, s, t in NMS] + [
    (_boxes(5), _t(5), _t(4, dtype=I64), 0.5),
    (_boxes(5), _t(5), _t(5, dtype=torch.int32), 0.5),
]


def _postprocess(**change):
    args = dict(
        cls_logits=_t(2, 6, 3),
        box_deltas=_t(2, 6, 4),
        anchors=_boxes(6),
        level_sizes=[4, 2],
        image_sizes=_t(2, 2),
        score_thresh=0.05,
        topk_candidates=10,
        nms_thresh=0.5,
        detections_per_img=5,
    )
    args.update(change)
    return tuple(args.values())


POSTPROCESS = [
    _postprocess(cls_logits=_t(2, 6)),
    _postprocess(cls_logits=_t(2, 6, 3, dtype=I64)),
    _postprocess(box_deltas=_t(2, 5, 4)),
    _postprocess(anchors=_t(6, 3)),
    _postprocess(image_sizes=_t(2, 3)),
    _postprocess(box_deltas=_t(2, 6, 4, dtype=F64)),
    _postprocess(cls_logits=_t(2, 6, 3, dtype=F64)),
    _postprocess(level_sizes=[4, 3]),
    _postprocess(level_sizes=[7, -1]),
    _postprocess(score_thresh=1.5),
    _postprocess(topk_candidates=0),
    _postprocess(nms_thresh=-0.1),
    _postprocess(detections_per_img=-1),
]


def _error(fn):
    with pytest.raises(RuntimeError) as info:
        fn()
    return info.value


def _message(fn):
    return str(_error(fn)).splitlines()[0]


@pytest.mark.parametrize(
    "op, args",
    [("sigmoid_focal_loss", a) for a in FOCAL]
    + [("_sigmoid_focal_loss_backward", a) for a in FOCAL_BACKWARD]
    + [("nms", a) for a in NMS]
    + [("batched_nms", a) for a in BATCHED_NMS]
    + [("postprocess", a) for a in POSTPROCESS]
    + [("box_iou", a) for a in BOX_IOU]
    + [("decode_boxes", a) for a in CODER]
    + [("encode_boxes", a[:3]) for a in CODER[:-1]]
    + [("assign", a) for a in ASSIGN]
    + [("retinanet_targets", a) for a in TARGETS],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_fake_kernel_refuses_as_the_op(op, args):
    fn = getattr(torch.ops.focalops, op)
    want = _message(lambda: fn(*args))
    with FakeTensorMode() as mode:
        fake = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args]
        error = _error(lambda: fn(*fake))
    assert str(error).splitlines()[0] == want
    # The Python statement of the checks raises typed errors (as the wrappers do), never a bare RuntimeError.
    assert isinstance(error, (OpTypeError, OpValueError))


# Bad calls that the wrappers pass on unconverted: the wrapper refuses them with the op's own message
# (the check it runs is the one the fake kernel runs), as a ValueError.
WRAPPED = [
    (focalops.nms, (_t(5, 3), _t(5), 0.5), ("nms", (_t(5, 3), _t(5), 0.5))),
    (focalops.batched_nms, (_boxes(5), _t(5), _t(4, dtype=I64), 0.5), ("batched_nms", BATCHED_NMS[-2])),
    (focalops.box_iou, (_boxes(3), _t(2, 4, 1)), ("box_iou", BOX_IOU[2])),
    (focalops.assign, ASSIGN[5][:5], ("assign", ASSIGN[5])),
    (focalops.assign, ASSIGN[7][:5], ("assign", ASSIGN[7])),
    (focalops.retinanet_targets, TARGETS[4][:4], ("retinanet_targets", TARGETS[4])),
    (focalops.retinanet_targets, TARGETS[8][:4], ("retinanet_targets", TARGETS[8])),
    (focalops.postprocess, _postprocess(level_sizes=[4, 3]), ("postprocess", _postprocess(level_sizes=[4, 3]))),
    (focalops.postprocess, _postprocess(anchors=_t(6, 3)), ("postprocess", _postprocess(anchors=_t(6, 3)))),
    (focalops.sigmoid_focal_loss, FOCAL[1][:2] + (0.25, -1.0), ("sigmoid_focal_loss", FOCAL[1])),
    (focalops.sigmoid_focal_loss, FOCAL[5][:2], ("sigmoid_focal_loss", FOCAL[5])),
]


@pytest.mark.parametrize("wrapper, args, op_call", WRAPPED, ids=lambda v: getattr(v, "__name__", ""))
def test_wrapper_refuses_with_the_op_message(wrapper, args, op_call):
    op, op_args = op_call
    want = _message(lambda: getattr(torch.ops.focalops, op)(*op_args))
    error = _error(lambda: wrapper(*args))
    assert isinstance(error, OpValueError) and str(error) == want
