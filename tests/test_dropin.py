"""focalops as a drop-in for torchvision 0.29, side by side on the same inputs (issue 21).

Each test states one behaviour a torchvision user relies on and checks it against torchvision
itself: values, dtypes, exceptions (caught by the same ``except`` clauses), gradients,
TorchScript, and torchvision's RetinaNet model-test conventions on an accelerated model
(scripting, gradient to the inputs in eval mode, images without boxes, bad targets), pickling,
and the anchor generator's interface and cache.
"""

import copy
import io
import pickle
import warnings
from collections import OrderedDict
from typing import Dict

import pytest
import torch
from torch import Tensor, nn

import focalops
from focalops.torchvision_retinanet import _AcceleratedRetinaNet, _joined

tv_ops = pytest.importorskip("torchvision.ops")
detection = pytest.importorskip("torchvision.models.detection")
AnchorGenerator = detection.anchor_utils.AnchorGenerator

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")


def _boxes(n, seed, integer=False, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    if integer:
        xy = torch.randint(0, 8, (n, 2), generator=g)
        return torch.cat([xy, xy + torch.randint(1, 6, (n, 2), generator=g)], 1)
    xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * 20
    return torch.cat([xy, xy + 1 + torch.rand(n, 2, generator=g, dtype=torch.float64) * 10], 1).to(dtype)


def _raised(fn, *args):
    try:
        fn(*args)
    except Exception as e:  # noqa: BLE001 (the test compares the types)
        return e
    return None


# 1. Gradients: box_iou has torchvision's; postprocess says it has none


@pytest.mark.parametrize("fmt", ["xyxy", "xywh", "cxcywh"])
def test_box_iou_gradient_is_torchvision(fmt):
    # Integer coordinates in float64: touching boxes, shared corners, equal boxes (the ties of
    # torch.max / torch.min and clamp at exactly 0 are where a hand-written backward goes wrong).
    a = _boxes(9, 0, integer=True).double().requires_grad_()
    b = torch.cat([a.detach()[:3], _boxes(6, 1, integer=True).double()]).requires_grad_()
    g = torch.randn(9, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    got = focalops.box_iou(a, b, fmt=fmt)
    want = tv_ops.box_iou(a, b, fmt=fmt)
    torch.testing.assert_close(got, want)
    got_grads = torch.autograd.grad((got * g).sum(), (a, b))
    want_grads = torch.autograd.grad((want * g).sum(), (a, b))
    for x, y in zip(got_grads, want_grads):
        torch.testing.assert_close(x, y)


def test_box_iou_gradcheck():
    a, b = _boxes(5, 3, dtype=torch.float64), _boxes(4, 4, dtype=torch.float64)
    b[0] = a[0] + 0.25  # overlapping pairs
    a.requires_grad_(), b.requires_grad_()
    assert torch.autograd.gradcheck(focalops.box_iou, (a, b))
    assert torch.autograd.gradcheck(focalops.box_iou, (a.t().contiguous().t(), b[::1]))


def test_box_iou_float32_gradient_reaches_inputs():
    a = _boxes(4, 5).requires_grad_()
    focalops.box_iou(a, _boxes(3, 6)).sum().backward()
    assert a.grad is not None and a.grad.abs().sum() > 0


def test_postprocess_outputs_do_not_require_grad():
    logits = torch.randn(1, 18, 2, requires_grad=True)
    deltas = torch.randn(1, 18, 4, requires_grad=True)
    anchors = _boxes(18, 7)
    out = focalops.postprocess(logits, deltas, anchors, [18], torch.tensor([[64.0, 64.0]]))
    assert not any(t.requires_grad for t in out)


def test_joined_head_outputs_are_a_view_only_of_consecutive_slices():
    whole = torch.randn(2, 30, 5)
    parts = list(whole.split([16, 0, 10, 4], dim=1))  # as RetinaNet.forward hands them over
    joined = _joined(parts, 1)
    assert torch.equal(joined, whole) and joined.data_ptr() == whole.data_ptr()
    anchors = torch.randn(30, 4)
    assert _joined(list(anchors.split([16, 14])), 0).data_ptr() == anchors.data_ptr()
    # anything else is concatenated: separate tensors, slices out of order or with a gap, other strides
    cases = [
        [t.clone() for t in parts],
        [parts[2], parts[0]],
        [whole[:, :10], whole[:, 12:]],
        [whole[:, :10], whole[:, 10:].contiguous()],
        [whole[:1, :10], whole[1:, 10:]],
    ]
    for case in cases:
        joined = _joined(case, 1)
        assert torch.equal(joined, torch.cat(case, 1)) and joined.data_ptr() != whole.data_ptr()


def test_focal_loss_soft_target_gradient_is_torchvision():
    g = torch.Generator().manual_seed(8)
    x = torch.randn(6, 5, dtype=torch.float64, generator=g).requires_grad_()
    t = torch.rand(6, 5, dtype=torch.float64, generator=g).requires_grad_()
    for reduction in ("none", "mean", "sum"):
        got = torch.autograd.grad(focalops.sigmoid_focal_loss(x, t, reduction=reduction).sum(), (x, t))
        want = torch.autograd.grad(tv_ops.sigmoid_focal_loss(x, t, reduction=reduction).sum(), (x, t))
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b)
    assert torch.autograd.gradcheck(lambda x, t: focalops.sigmoid_focal_loss(x, t, reduction="sum"), (x, t))


# 2. TorchScript


def _script(fn):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.jit.script(fn)


def test_ops_script_and_agree_with_eager():
    boxes, scores = _boxes(30, 9), torch.rand(30, generator=torch.Generator().manual_seed(9))
    idxs = torch.randint(0, 3, (30,), generator=torch.Generator().manual_seed(10))
    assert torch.equal(_script(focalops.nms)(boxes, scores, 0.3), tv_ops.nms(boxes, scores, 0.3))
    assert torch.equal(
        _script(focalops.batched_nms)(boxes, scores, idxs, 0.3), tv_ops.batched_nms(boxes, scores, idxs, 0.3)
    )
    iou = _script(focalops.box_iou)(boxes, boxes[:5], "xywh")
    torch.testing.assert_close(iou, tv_ops.box_iou(boxes, boxes[:5], "xywh"))
    x, t = torch.randn(4, 3), torch.rand(4, 3)
    torch.testing.assert_close(
        _script(focalops.sigmoid_focal_loss)(x, t, 0.25, 2.0, "mean"), tv_ops.sigmoid_focal_loss(x, t, reduction="mean")
    )


def test_scripted_op_errors_are_runtime_errors():
    # Under TorchScript the op's own (C++) checks raise, as torchvision's do: RuntimeError.
    with pytest.raises(RuntimeError, match="boxes must be"):
        _script(focalops.nms)(torch.rand(4), torch.rand(3), 0.5)
    with pytest.raises(RuntimeError):
        _script(tv_ops.nms)(torch.rand(4), torch.rand(3), 0.5)


class _TinyBackbone(nn.Module):
    """Five feature maps at strides 8 to 128 with 8 channels: a RetinaNet that runs in milliseconds."""

    def __init__(self):
        super().__init__()
        self.out_channels = 8
        self.stem = nn.Conv2d(3, 8, 3, stride=8, padding=1)
        self.down = nn.ModuleList([nn.Conv2d(8, 8, 3, stride=2, padding=1) for _ in range(4)])

    def forward(self, x: Tensor) -> Dict[str, Tensor]:
        x = torch.relu(self.stem(x))
        out: Dict[str, Tensor] = OrderedDict()
        out["0"] = x
        for i, conv in enumerate(self.down):
            x = conv(x)
            out[str(i + 1)] = x
        return out


def _tiny_retinanet(seed=0, **kwargs):
    torch.manual_seed(seed)
    model = detection.RetinaNet(_TinyBackbone(), num_classes=3, min_size=64, max_size=64, **kwargs)
    with torch.no_grad():  # spread scores, many above 0.05: detections on every image, no ties
        for m in model.head.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.normal_(0, 0.1)
                m.bias.uniform_(-0.1, 0.1)
        model.head.classification_head.cls_logits.bias.fill_(-1.0)
        model.head.regression_head.bbox_reg.weight.mul_(0.1)
    return model


def _images(seed=0):
    g = torch.Generator().manual_seed(seed)
    # no padding (a padded region gives equal logits, and torchvision leaves the order of tied
    # scores unspecified)
    return [torch.rand(3, 64, 64, generator=g), torch.rand(3, 64, 64, generator=g)]


def _targets(seed=0, counts=(3, 0)):
    g = torch.Generator().manual_seed(seed + 1)
    out = []
    for (h, w), n in zip([(64, 64), (64, 64)], counts):
        xy = torch.rand(n, 2, generator=g) * torch.tensor([w - 30.0, h - 30.0])
        wh = torch.rand(n, 2, generator=g) * 20 + 8
        out.append({"boxes": torch.cat([xy, xy + wh], 1), "labels": torch.randint(0, 3, (n,), generator=g)})
    return out


def _assert_same_detections(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g["boxes"].shape[0] == w["boxes"].shape[0] > 0
        torch.testing.assert_close(g["scores"], w["scores"], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(g["boxes"], w["boxes"], rtol=1e-5, atol=1e-4)
        assert torch.equal(g["labels"], w["labels"])


def test_accelerated_model_scripts_and_detects_as_torchvision():
    tv = _tiny_retinanet().eval()
    fast = focalops.accelerate(copy.deepcopy(tv))
    scripted = _script(fast)
    with torch.no_grad():
        want = tv(_images())
        _, got = scripted(_images())
    _assert_same_detections(got, want)
    buf = io.BytesIO()
    torch.jit.save(scripted, buf)  # deployable: saved and loaded without Python source
    buf.seek(0)
    with torch.no_grad():
        _, again = torch.jit.load(buf)(_images())
    _assert_same_detections(again, want)
    # a scripted accelerated model still trains (with torchvision's loss under TorchScript)
    scripted.train()
    losses, _ = scripted(_images(), _targets())
    want_losses = tv.train()(_images(), _targets())
    for k in want_losses:
        torch.testing.assert_close(losses[k], want_losses[k], rtol=1e-5, atol=1e-6)


def test_torchvision_model_scripts_after_the_readme_focal_loss_swap(monkeypatch):
    retinanet_module = detection.retinanet
    monkeypatch.setattr(retinanet_module, "sigmoid_focal_loss", focalops.sigmoid_focal_loss)
    tv = _tiny_retinanet().train()
    want = tv(_images(), _targets())
    scripted = _script(tv)
    got, _ = scripted(_images(), _targets())
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-6)


# 3. Exceptions: caught by the same except clauses as torchvision's


_BAD_CALLS = {
    "nms 1-d boxes": lambda m: m.nms(torch.rand(4), torch.rand(3), 0.5),
    "nms scores length": lambda m: m.nms(_boxes(4, 0), torch.rand(5), 0.5),
    "nms integer boxes": lambda m: m.nms(_boxes(4, 0, integer=True), torch.rand(4), 0.5),
    "nms boxes on another device": lambda m: m.nms(_boxes(4, 0).to("meta"), torch.rand(4), 0.5),
    "batched_nms idxs length": lambda m: m.batched_nms(_boxes(4, 0), torch.rand(4), torch.zeros(3).long(), 0.5),
    "box_iou on another device": lambda m: m.box_iou(_boxes(4, 0), _boxes(3, 1).to("meta")),
    "box_iou unknown fmt": lambda m: m.box_iou(_boxes(4, 0), _boxes(3, 1), fmt="yxyx"),
    "focal loss shape": lambda m: m.sigmoid_focal_loss(torch.randn(4, 3), torch.rand(4, 2)),
    "focal loss reduction": lambda m: m.sigmoid_focal_loss(torch.randn(4, 3), torch.rand(4, 3), reduction="max"),
    "focal loss devices": lambda m: m.sigmoid_focal_loss(torch.randn(4, 3), torch.rand(4, 3, device="meta")),
}


@pytest.mark.parametrize("case", sorted(_BAD_CALLS))
def test_errors_are_caught_like_torchvision(case):
    call = _BAD_CALLS[case]
    want = _raised(call, tv_ops)
    assert want is not None, f"torchvision accepts {case}"
    got = _raised(call, focalops)
    assert got is not None, f"focalops accepts {case}"
    assert isinstance(got, type(want)), f"{case}: focalops raised {type(got).__mro__}, torchvision {type(want)}"
    assert "\n" not in str(got).strip(), "one-line message"


def test_stricter_inputs_raise_what_torchvision_users_catch():
    # Deliberate differences (README): torchvision computes on; focalops refuses, with errors
    # that `except RuntimeError` (torchvision's error type) still catches.
    nan_boxes = _boxes(3, 0)
    nan_boxes[1, 0] = float("nan")
    for call in (
        lambda: focalops.nms(nan_boxes, torch.rand(3), 0.5),
        lambda: focalops.sigmoid_focal_loss(torch.randn(2, 2), torch.rand(2, 2), gamma=-1.0),
        lambda: focalops.nms(_boxes(3, 0), torch.rand(3), -0.5),
    ):
        with pytest.raises(RuntimeError):
            call()


# 4. Inputs torchvision accepts


def test_box_iou_integer_half_and_mixed_dtypes():
    ints = _boxes(6, 0, integer=True)
    for a, b in [
        (ints, ints[:4]),
        (ints.int(), ints[:4].long()),
        (_boxes(5, 1).half(), _boxes(4, 2).half()),
        (_boxes(5, 1).bfloat16(), _boxes(4, 2)),
        (_boxes(5, 1, dtype=torch.float64), _boxes(4, 2)),
        (ints, _boxes(4, 2)),
    ]:
        got, want = focalops.box_iou(a, b), tv_ops.box_iou(a, b)
        assert got.dtype == want.dtype, (a.dtype, b.dtype)
        atol = 1e-6 if a.dtype in (torch.int64, torch.int32, torch.float64) else 2e-3
        torch.testing.assert_close(got, want, atol=atol, rtol=0)


def test_focal_loss_type_promotion():
    x, t = torch.randn(5, 3), torch.rand(5, 3)
    for xd, td in [(torch.float16, torch.float32), (torch.bfloat16, torch.float32), (torch.float32, torch.float64)]:
        got = focalops.sigmoid_focal_loss(x.to(xd), t.to(td), reduction="sum")
        want = tv_ops.sigmoid_focal_loss(x.to(xd), t.to(td), reduction="sum")
        assert got.dtype == want.dtype
        # torchvision takes the sigmoid of half logits in half; focalops computes in float32
        rtol = 1e-6 if xd == torch.float32 else 1e-2
        torch.testing.assert_close(got, want, rtol=rtol, atol=0)


def test_nms_threshold_tie_is_torchvision():
    # torchvision compares the float32 IoU with the threshold as a double: an IoU of exactly 3/10
    # (0.30000001 in float32) is above 0.3 and suppressed.
    boxes = torch.tensor([[0.0, 0.0, 10.0, 1.0], [0.0, 0.0, 3.0, 1.0], [20.0, 0.0, 30.0, 1.0], [20.0, 0.0, 23.0, 1.0]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    idxs = torch.tensor([0, 0, 1, 1])
    assert focalops.nms(boxes, scores, 0.3).tolist() == tv_ops.nms(boxes, scores, 0.3).tolist() == [0, 2]
    assert torch.equal(focalops.batched_nms(boxes, scores, idxs, 0.3), tv_ops.batched_nms(boxes, scores, idxs, 0.3))
    assert _script(focalops.nms)(boxes, scores, 0.3).tolist() == [0, 2]


def test_nms_threshold_above_one_keeps_every_box():
    boxes = _boxes(10, 3)
    boxes[1] = boxes[0]  # identical boxes: IoU exactly 1
    scores = torch.rand(10, generator=torch.Generator().manual_seed(3))
    for thr in (1.0, 1.5):
        assert torch.equal(focalops.nms(boxes, scores, thr), tv_ops.nms(boxes, scores, thr))
        assert focalops.nms(boxes, scores, thr).numel() == 10


def test_batched_nms_float_and_bool_idxs():
    # crowded integer boxes: much suppression, and torchvision's coordinate offsets stay exact
    boxes = _boxes(40, 4, integer=True).float()
    g = torch.Generator().manual_seed(4)
    scores = torch.rand(40, generator=g)
    # whole-number float categories (torchvision's offsets mix the categories of non-integral ones)
    for idxs in (torch.randint(0, 3, (40,), generator=g).float(), torch.randint(0, 2, (40,), generator=g).bool()):
        assert torch.equal(focalops.batched_nms(boxes, scores, idxs, 0.3), tv_ops.batched_nms(boxes, scores, idxs, 0.3))


def test_batched_nms_of_zero_boxes_is_empty_whatever_the_rest():
    for boxes, scores, idxs in [
        (torch.empty(0, 4), torch.empty(0), torch.empty(0, dtype=torch.long)),
        (torch.empty(0, 4), torch.rand(3), torch.zeros(5)),
        (torch.empty(0, 5), torch.empty(0, 2), torch.empty(0)),
    ]:
        got, want = focalops.batched_nms(boxes, scores, idxs, 0.5), tv_ops.batched_nms(boxes, scores, idxs, 0.5)
        assert got.dtype == want.dtype == torch.int64 and got.shape == want.shape == (0,)


def test_nms_quantized_boxes_and_scores():
    boxes, scores = _boxes(20, 5) / 2, torch.rand(20, generator=torch.Generator().manual_seed(5))
    qboxes = torch.quantize_per_tensor(boxes, 0.05, 0, torch.quint8)
    qscores = torch.quantize_per_tensor(scores, 1 / 256, 0, torch.quint8)
    keep = focalops.nms(qboxes, qscores, 0.4)
    want = tv_ops.nms(qboxes, qscores, 0.4)
    assert set(keep.tolist()) == set(want.tolist())  # ties among quantized scores: order may differ
    assert torch.equal(keep, focalops.nms(qboxes.dequantize(), qscores.dequantize(), 0.4))


def test_decode_boxes_multi_class_deltas_as_box_coder():
    weights = (10.0, 10.0, 5.0, 5.0)
    anchors = _boxes(7, 6)
    deltas = torch.randn(7, 4 * 3, generator=torch.Generator().manual_seed(6))
    want = detection._utils.BoxCoder(weights).decode_single(deltas, anchors)
    got = focalops.decode_boxes(deltas, anchors, weights)
    assert got.shape == want.shape == (7, 12)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)


# RetinaNet model-test conventions on an accelerated model


def test_accelerated_eval_gradient_reaches_the_inputs_as_torchvision():
    tv = _tiny_retinanet().eval()
    fast = focalops.accelerate(copy.deepcopy(tv))
    grads = []
    for model in (tv, fast):
        images = [i.requires_grad_() for i in _images()]
        out = model(images)
        (out[0]["scores"].sum() + out[0]["boxes"].sum() + out[1]["scores"].sum()).backward()
        assert all(i.grad is not None for i in images)
        grads.append([i.grad for i in images])
        assert out[0]["scores"].numel() > 0
    for got, want in zip(*reversed(grads)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_accelerated_negative_samples_as_torchvision():
    tv = _tiny_retinanet().train()
    fast = focalops.accelerate(copy.deepcopy(tv))
    targets = _targets(counts=(0, 0))
    want = tv(_images(), targets)
    got = fast(_images(), targets)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-6)
    assert got["bbox_regression"] == 0


@pytest.mark.parametrize(
    "target",
    [
        {"boxes": torch.tensor([[10.0, 10.0, 5.0, 20.0]]), "labels": torch.tensor([1])},  # x2 < x1
        {"boxes": torch.tensor([[1.0, 2.0, 3.0]]), "labels": torch.tensor([1])},  # not [N, 4]
        {"boxes": torch.tensor([[1.0, 2.0, 30.0, 30.0]]), "labels": torch.tensor([7])},  # label >= K
    ],
    ids=["degenerate", "shape", "label"],
)
def test_accelerated_bad_targets_raise_as_torchvision(target):
    tv = _tiny_retinanet().train()
    fast = focalops.accelerate(copy.deepcopy(tv))
    targets = [target, _targets()[1]]
    want = _raised(tv, _images(), targets)
    got = _raised(fast, _images(), targets)
    assert want is not None and got is not None
    assert isinstance(got, type(want)), (type(got), type(want))


# 6. Pickle, deepcopy, torch.save, state_dict, undo


def test_accelerated_model_survives_pickle_deepcopy_and_torch_save():
    fast = focalops.accelerate(_tiny_retinanet().eval())
    with torch.no_grad():
        want = fast(_images())
    buf = io.BytesIO()
    torch.save(fast, buf)
    buf.seek(0)
    copies = {
        "pickle": pickle.loads(pickle.dumps(fast)),
        "deepcopy": copy.deepcopy(fast),
        "torch.save": torch.load(buf, weights_only=False),
    }
    for name, model in copies.items():
        assert isinstance(model, _AcceleratedRetinaNet), name
        assert isinstance(model.anchor_generator, AnchorGenerator), name
        with torch.no_grad():
            _assert_same_detections(model(_images()), want)
        focalops.accelerate(model, undo=True)
        assert type(model) is detection.RetinaNet, name


def test_state_dict_round_trip_and_undo():
    tv = _tiny_retinanet(seed=1).eval()
    fast = focalops.accelerate(_tiny_retinanet(seed=2).eval())
    assert fast.state_dict().keys() == tv.state_dict().keys()
    fast.load_state_dict(tv.state_dict())
    with torch.no_grad():
        want = tv(_images())
        _assert_same_detections(fast(_images()), want)
        focalops.accelerate(fast, undo=True)
        assert type(fast) is detection.RetinaNet and type(fast.anchor_generator) is AnchorGenerator
        _assert_same_detections(fast(_images()), want)


# 7. The anchor generator keeps its interface; the cache follows what the anchors depend on


def test_anchor_generator_interface_is_kept():
    tv = _tiny_retinanet()
    gen = tv.anchor_generator
    want = (gen.num_anchors_per_location(), gen.sizes, gen.aspect_ratios, [c.clone() for c in gen.cell_anchors])
    fast = focalops.accelerate(tv)
    assert fast.anchor_generator is gen and isinstance(gen, AnchorGenerator)
    assert gen.num_anchors_per_location() == want[0]
    assert gen.sizes == want[1] and gen.aspect_ratios == want[2]
    assert all(torch.equal(a, b) for a, b in zip(gen.cell_anchors, want[3]))


def test_anchor_cache_follows_changes_to_the_generator():
    tv = _tiny_retinanet().eval()
    fast = focalops.accelerate(copy.deepcopy(tv))
    images, _ = tv.transform(_images())
    features = list(tv.backbone(images.tensors).values())

    def same(a, b):
        return all(torch.equal(x, y) for x, y in zip(a, b))

    assert same(fast.anchor_generator(images, features), tv.anchor_generator(images, features))
    for gen in (tv.anchor_generator, fast.anchor_generator):  # in place
        gen.cell_anchors[0].mul_(2)
    assert same(fast.anchor_generator(images, features), tv.anchor_generator(images, features))
    new_sizes = ((16,), (32,), (64,), (128,), (256,))
    for gen in (tv.anchor_generator, fast.anchor_generator):  # replaced
        gen.sizes = new_sizes
        gen.aspect_ratios = ((1.0,),) * 5
        gen.cell_anchors = [gen.generate_anchors(s, (1.0,)) for s in new_sizes]
    got, want = fast.anchor_generator(images, features), tv.anchor_generator(images, features)
    assert same(got, want) and got[0].shape == want[0].shape
    # a different batch size or image size is a different key
    smaller, _ = tv.transform([_images()[0]])
    assert same(fast.anchor_generator(smaller, features), tv.anchor_generator(smaller, features))
