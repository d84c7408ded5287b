"""Hostile input for every op: NaN and inf, inverted and degenerate boxes, huge and negative
indices, out-of-range arguments, mismatched shapes and dtypes, stride-0 and other views.

Each example may poison one argument with a value the contract forbids. The test knows from
the contract whether the call must then fail: if so, both the Python wrapper and the op itself
(``torch.ops.focalops.*``, which skips the wrapper) raise a clear error that starts with the
op's name; otherwise both return what the reference returns (NaN where it has NaN).
"""

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import focalops
from focalops import reference
from focalops.ops.nms import _iou_threshold

NAN, INF = math.nan, math.inf
HOSTILE = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FLOAT_TYPES = st.sampled_from([torch.float32, torch.float64])
LAYOUTS = st.sampled_from(["contiguous", "transposed", "strided", "expanded"])
# Box coordinates: a small grid (ties, touching, zero-area and inverted boxes are common) and
# values that overflow or underflow. NaN comes in as poison where the op rejects it.
COORDS = st.one_of(st.integers(-2, 6).map(float), st.sampled_from([INF, -INF, -0.0, 1e-30, 1e30, -1e30, 3e38]))
HUGE_INDICES = [2**62, 2**63 - 1, -(2**63), -(2**40)]


def values(data, n, good, bad=(), poison=False):
    """n draws from the strategy `good`; if `poison`, one of them replaced by a value of `bad`."""
    out = data.draw(st.lists(good, min_size=n, max_size=n))
    if poison and n:
        out[data.draw(st.integers(0, n - 1))] = data.draw(st.sampled_from(bad))
    return out


def layout(t: torch.Tensor, kind: str) -> torch.Tensor:
    """The values of t (every row equal to the first for "expanded") in a non-standard layout."""
    if t.dim() < 2 or t.numel() == 0 or kind == "contiguous":
        return t
    if kind == "transposed":
        return t.transpose(0, 1).contiguous().transpose(0, 1)
    if kind == "strided":
        return torch.stack([t, torch.full_like(t, NAN)], -1)[..., 0]  # stride 2, NaN in the gaps
    return t[:1].expand_as(t)  # stride 0


def tensor(vals, shape, dtype, kind="contiguous"):
    return layout(torch.tensor(vals, dtype=dtype).reshape(shape), kind)


def raises_naming(op: str, fn, *args, **kwargs):
    with pytest.raises((ValueError, TypeError, RuntimeError)) as info:
        fn(*args, **kwargs)
    assert str(info.value).startswith(op + ":"), str(info.value)


def assert_same(got, want, **tol):
    torch.testing.assert_close(got, want, equal_nan=True, check_dtype=False, **tol)


def poison_of(data, *names):
    """Which argument to poison: none in about half of the examples."""
    return data.draw(st.sampled_from(["none"] * len(names) + list(names)), "poison")


# --- sigmoid focal loss --------------------------------------------------------------------------

LOGITS = st.one_of(st.floats(-20, 20), st.sampled_from([NAN, INF, -INF, -0.0, 100.0, -100.0, 1e4, -1e4, 3e38, -3e38]))


def focal_expected(x, t, w, alpha, gamma):
    """Elementwise loss and d loss / dx: the float64 reference at finite logits, the limits at
    +-inf, NaN for NaN; elements of weight 0 (ignored rows: w = 0, or alpha_t = 0) are 0
    whatever the logit."""
    finite = torch.isfinite(x)
    xr = torch.where(finite, x, 0.0).requires_grad_()
    loss = reference.sigmoid_focal_loss(xr, t, alpha, gamma)
    (grad,) = torch.autograd.grad(loss.sum(), xr)
    q = torch.where(x > 0, 1 - t, t)  # 1 - p_t at x = +-inf, also the weight of |x| in ce
    alpha_t = torch.ones_like(t) if alpha < 0 else alpha * t + (1 - alpha) * (1 - t)
    slope = alpha_t * q**gamma * q
    loss = torch.where(finite, loss.detach(), torch.where(slope > 0, INF, 0.0).double())
    grad = torch.where(finite, grad, torch.where(x > 0, slope, -slope))
    loss, grad = (torch.where(torch.isnan(x), NAN, v) for v in (loss, grad))
    return (torch.where((w == 0) | (alpha_t == 0), 0.0, v).double() for v in (loss, grad))


@HOSTILE
@given(data=st.data(), rows=st.integers(0, 4), K=st.integers(0, 19), dtype=FLOAT_TYPES, kind=LAYOUTS)
def test_focal_loss(data, rows, K, dtype, kind):
    poison = poison_of(data, "targets", "alpha", "gamma")
    dense = data.draw(st.booleans(), "dense")
    alpha = data.draw(st.sampled_from([1.5, NAN] if poison == "alpha" else [0.25, -1.0, 0.0, 1.0, -INF]), "alpha")
    # A huge gamma turns a one-ulp rounding of p_t near 1 into 0 vs 1: tests/test_focal_loss.py
    # checks 1e30 where the result does not hang on that ulp.
    gamma = data.draw(
        st.sampled_from([-1.0, INF, NAN] if poison == "gamma" else [2.0, 0.0, 0.5, 1.0, 3.7, 1e-50, 50.0]), "gamma"
    )
    reduction = data.draw(st.sampled_from(["none", "sum", "mean"]), "reduction")
    x = tensor(values(data, rows * K, LOGITS), (rows, K), dtype, kind)
    if dense:
        soft = st.sampled_from([0.0, 1.0, 0.3, 0.5, 1e-7])
        t = tensor(values(data, rows * K, soft, [-0.1, 1.1, NAN, INF], poison == "targets"), (rows, K), dtype)
        bad_targets = bool(((t < 0) | (t > 1) | t.isnan()).any())
        one_hot, w = t.double(), torch.ones(rows, K, dtype=torch.float64)
    else:
        label = st.integers(-2, K - 1)
        t = torch.tensor(values(data, rows, label, [K, -3, *HUGE_INDICES], poison == "targets"), dtype=torch.long)
        bad_targets = bool(((t < -2) | (t >= K)).any())
        one_hot = (t[:, None] == torch.arange(K)).double()
        w = (t != -2)[:, None].double().expand(rows, K)
    bad = bad_targets or not alpha <= 1 or not (gamma >= 0 and math.isfinite(gamma))
    call = (focalops.sigmoid_focal_loss, x, t, alpha, gamma, reduction)
    op = (torch.ops.focalops.sigmoid_focal_loss, x, t, alpha, gamma, -2, reduction != "none")
    if bad:
        raises_naming("sigmoid_focal_loss", *call)
        raises_naming("sigmoid_focal_loss", *op)
        return
    xg = x.detach().requires_grad_()
    loss = focalops.sigmoid_focal_loss(xg, t, alpha, gamma, reduction)
    (grad,) = torch.autograd.grad(loss.sum(), xg)
    gamma_used = float(torch.tensor(gamma, dtype=dtype))  # the op computes in the input's type
    each, each_grad = focal_expected(x.double(), one_hot, w, alpha, gamma_used)
    scale = 1 if reduction != "mean" else x.numel()
    total = each.sum().to(dtype)  # like torch's, a float32 sum beyond the float range is inf
    want = each.to(dtype) if reduction == "none" else total / scale
    # float64: the reference's 1 - p_t cancels for targets near 0 or 1 (t = 1e-7: ~1e-9 relative)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-7, atol=1e-12)
    assert_same(loss, want, **tol)
    assert_same(op[0](*op[1:]), each.to(dtype) if reduction == "none" else total, **tol)
    # Where the reference's autograd hits 0 * inf at a finite logit (saturation), the op's
    # gradient must still be finite.
    known = torch.isfinite(each_grad) | ~torch.isfinite(x)
    assert_same(grad.double()[known], (each_grad / max(scale, 1))[known], **tol)
    assert torch.isfinite(grad[~known]).all()


@HOSTILE
@given(normalizer=st.sampled_from([0, -1, 2, 1e-300, 0.5, NAN, INF, True]), as_tensor=st.booleans())
def test_focal_loss_normalizer(normalizer, as_tensor):
    x, labels = torch.randn(4, 3, dtype=torch.float64), torch.tensor([0, 1, -1, -2])
    n = torch.tensor(normalizer, dtype=torch.float64) if as_tensor else normalizer
    if not (normalizer > 0 and math.isfinite(normalizer)):
        raises_naming("sigmoid_focal_loss", focalops.sigmoid_focal_loss, x, labels, reduction="sum", normalizer=n)
        return
    got = focalops.sigmoid_focal_loss(x, labels, reduction="sum", normalizer=n)
    assert_same(got, reference.sigmoid_focal_loss(x, labels, reduction="sum") / float(normalizer))


# --- boxes ---------------------------------------------------------------------------------------


@HOSTILE
@given(data=st.data(), n=st.integers(0, 18), m=st.integers(0, 5), dtype=FLOAT_TYPES, kind=LAYOUTS)
def test_box_iou(data, n, m, dtype, kind):
    """NaN is a valid coordinate here: the IoU of a NaN box is 0, as torchvision's where() gives."""
    coords = st.one_of(COORDS, st.just(NAN))
    b1 = tensor(values(data, 4 * n, coords), (n, 4), dtype, kind)
    b2 = tensor(values(data, 4 * m, coords), (m, 4), dtype)
    want = reference.box_iou(b1, b2)
    assert_same(focalops.box_iou(b1, b2), want)
    assert_same(torch.ops.focalops.box_iou(b1, b2), want)


@HOSTILE
@given(data=st.data(), n=st.integers(0, 6), dtype=FLOAT_TYPES, kind=LAYOUTS)
def test_box_coder(data, n, dtype, kind):
    poison = poison_of(data, "weights", "clamp")
    weights = values(data, 4, st.sampled_from([1.0, 10.0, 0.5]), [0.0, -1.0, NAN, INF], poison == "weights")
    clamp = data.draw(st.sampled_from([NAN] if poison == "clamp" else [math.log(1000.0 / 16), INF, -INF, 0.0, 1e30]))
    deltas_values = st.sampled_from([0.0, 0.5, -0.5, 6.0, -6.0, 100.0, NAN, INF, -INF, 1e30])  # NaN is valid here
    anchors = tensor(values(data, 4 * n, COORDS), (n, 4), dtype)
    gt = tensor(values(data, 8 * n, COORDS), (2 * n, 4), dtype, kind).reshape(2, n, 4)
    deltas = tensor(values(data, 8 * n, deltas_values), (2 * n, 4), dtype, kind).reshape(2, n, 4)
    if poison == "weights":
        for name, args in (("encode_boxes", (gt, anchors, weights)), ("decode_boxes", (deltas, anchors, weights))):
            raises_naming(name, getattr(focalops, name), *args)
            raises_naming(name, getattr(torch.ops.focalops, name), *args, *([1.0] if name == "decode_boxes" else []))
        return
    want = reference.encode_boxes(gt, anchors, weights)
    assert_same(focalops.encode_boxes(gt, anchors, weights), want, rtol=1e-6, atol=1e-6)
    assert_same(torch.ops.focalops.encode_boxes(gt, anchors, weights), want, rtol=1e-6, atol=1e-6)
    if poison == "clamp":
        raises_naming("decode_boxes", focalops.decode_boxes, deltas, anchors, weights, clamp)
        raises_naming("decode_boxes", torch.ops.focalops.decode_boxes, deltas, anchors, weights, clamp)
        return
    want = reference.decode_boxes(deltas, anchors, weights, clamp)
    assert_same(focalops.decode_boxes(deltas, anchors, weights, clamp), want, rtol=1e-6, atol=1e-6)
    assert_same(torch.ops.focalops.decode_boxes(deltas, anchors, weights, clamp), want, rtol=1e-6, atol=1e-6)


# --- assignment and targets ----------------------------------------------------------------------


@HOSTILE
@given(data=st.data(), B=st.integers(0, 2), G=st.integers(0, 3), A=st.integers(0, 18), kind=LAYOUTS)
def test_assign(data, B, G, A, kind):
    poison = poison_of(data, "anchors", "gt_boxes", "gt_counts", "thresholds")
    anchors = tensor(values(data, 4 * A, COORDS, [NAN], poison == "anchors"), (A, 4), torch.float32, kind)
    gt = tensor(values(data, 4 * B * G, COORDS, [NAN], poison == "gt_boxes"), (B, G, 4), torch.float32)
    counts = values(data, B, st.sampled_from([0, G, G // 2]), [-1, G + 1, *HUGE_INDICES], poison == "gt_counts")
    counts = torch.tensor(counts, dtype=torch.long)
    iou = st.sampled_from([0.5, 0.4, 0.0, 1.0, 0.3, 1.5, -1.0, NAN] if poison == "thresholds" else [0.5, 0.4, 0.0, 1.0])
    fg, bg = data.draw(iou, "fg_iou"), data.draw(iou, "bg_iou")
    lq = data.draw(st.booleans(), "allow_low_quality")
    bad_counts = bool(((counts < 0) | (counts > G)).any())
    valid_gt = torch.arange(G)[None, :] < counts.clamp(0, G)[:, None]  # padding boxes are never read
    bad = (
        bad_counts or not 0 <= bg <= fg <= 1 or bool(anchors.isnan().any()) or bool(gt.isnan().any(-1)[valid_gt].any())
    )
    args = (anchors, gt, counts, fg, bg, lq)
    if bad:
        raises_naming("assign", focalops.assign, *args)
        raises_naming("assign", torch.ops.focalops.assign, *args)
        return
    want = reference.assign(*args)
    assert torch.equal(focalops.assign(*args), want)
    assert torch.equal(torch.ops.focalops.assign(*args), want)


@HOSTILE
@given(data=st.data(), B=st.integers(0, 2), G=st.integers(0, 3), A=st.integers(0, 5), dtype=FLOAT_TYPES)
def test_retinanet_targets(data, B, G, A, dtype):
    poison = poison_of(data, "matched", "gt_labels", "num_classes")
    anchors = tensor(values(data, 4 * A, COORDS), (A, 4), dtype)
    gt = tensor(values(data, 4 * B * G, st.one_of(COORDS, st.just(NAN))), (B, G, 4), dtype)  # encodes to NaN
    index = st.integers(-2, G - 1)
    matched = values(data, B * A, index, [-3, G, *HUGE_INDICES], poison == "matched")
    matched = torch.tensor(matched, dtype=torch.long).reshape(B, A)
    labels = values(data, B * G, st.sampled_from([0, 3, 79]), [-1, -5, 2**40], poison == "gt_labels")
    labels = torch.tensor(labels, dtype=torch.long).reshape(B, G)
    num_classes = data.draw(st.sampled_from([4, 0] if poison == "num_classes" else [None, 80]), "num_classes")
    fg = matched >= 0
    used = torch.gather(labels, 1, matched.clamp(0, max(G - 1, 0))) if G else torch.zeros_like(matched)
    limit = num_classes if num_classes is not None else 2**63 - 1
    bad = bool(((matched < -2) | (matched >= G)).any()) or bool(((used < 0) | (used >= limit))[fg].any())
    w = [1.0, 1.0, 1.0, 1.0]
    op = torch.ops.focalops.retinanet_targets
    if bad:
        raises_naming(
            "retinanet_targets", focalops.retinanet_targets, matched, gt, labels, anchors, num_classes=num_classes
        )
        raises_naming("retinanet_targets", op, matched, gt, labels, anchors, w, num_classes)
        return
    want = reference.retinanet_targets(matched, gt, labels, anchors)
    for got in (
        focalops.retinanet_targets(matched, gt, labels, anchors, num_classes=num_classes),
        op(matched, gt, labels, anchors, w, num_classes),
    ):
        assert torch.equal(got[0], want[0]) and torch.equal(got[2], want[2])
        assert_same(got[1], want[1], rtol=1e-6, atol=1e-6)


# --- NMS and post-processing ---------------------------------------------------------------------


@HOSTILE
@given(data=st.data(), n=st.integers(0, 20), dtype=FLOAT_TYPES, kind=LAYOUTS)
def test_nms(data, n, dtype, kind):
    poison = poison_of(data, "boxes", "scores", "iou_threshold")
    b = tensor(values(data, 4 * n, COORDS, [NAN], poison == "boxes"), (n, 4), dtype, kind)
    scores = values(data, n, st.sampled_from([0.0, 0.5, 1.0, -1.0, 1e30, INF, -INF]), [NAN], poison == "scores")
    scores = torch.tensor(scores, dtype=dtype)
    idxs = torch.tensor(values(data, n, st.sampled_from([0, 1, -1, *HUGE_INDICES])), dtype=torch.long)
    # above 1 (inf included) nothing is suppressed, as torchvision: not an error
    thr = data.draw(st.sampled_from([-0.1, NAN] if poison == "iou_threshold" else [0.5, 0.0, 0.3, 1.0, 1.5, INF]))
    if not thr >= 0 or bool(b.isnan().any() or scores.isnan().any()):
        for name, args in (("nms", (b, scores, thr)), ("batched_nms", (b, scores, idxs, thr))):
            raises_naming(name, getattr(torch.ops.focalops, name), *args)
            if name == "batched_nms" and n == 0:
                # torchvision's batched_nms returns before looking at the other arguments
                assert torch.equal(focalops.batched_nms(*args), torch.empty(0, dtype=torch.long))
            else:
                raises_naming(name, getattr(focalops, name), *args)
        return
    want = reference.nms(b, scores, thr)
    assert torch.equal(focalops.nms(b, scores, thr), want)
    op_thr = _iou_threshold(thr)  # the wrapper's: torchvision's double comparison, in float32
    assert torch.equal(torch.ops.focalops.nms(b, scores, op_thr), want)
    want = reference.batched_nms(b, scores, idxs, thr)
    assert torch.equal(focalops.batched_nms(b, scores, idxs, thr), want)
    assert torch.equal(torch.ops.focalops.batched_nms(b, scores, idxs, op_thr), want)


@HOSTILE
@given(data=st.data(), B=st.integers(1, 2), K=st.integers(1, 3), dtype=FLOAT_TYPES, kind=LAYOUTS)
def test_postprocess(data, B, K, dtype, kind):
    poison = poison_of(
        data, "cls_logits", "box_deltas", "anchors", "image_sizes", "level_sizes", "score_thresh", "nms_thresh"
    )
    level_sizes = data.draw(st.lists(st.integers(0, 4), min_size=1, max_size=3), "level_sizes")
    A = sum(level_sizes)
    logits = st.sampled_from([-INF, -30.0, -3.0, -1.0, 0.0, 2.0, 2.0, 30.0, INF])
    logits = tensor(values(data, B * A * K, logits, [NAN], poison == "cls_logits"), (B, A, K), dtype)
    deltas = st.sampled_from([0.0, 0.5, -0.5, 6.0, -30.0])
    deltas = tensor(values(data, B * A * 4, deltas, [NAN, INF, -INF], poison == "box_deltas"), (B, A, 4), dtype, kind)
    anchors = tensor(values(data, 4 * A, COORDS.filter(math.isfinite), [NAN, INF], poison == "anchors"), (A, 4), dtype)
    sizes = values(data, 2 * B, st.sampled_from([0.0, 50.0, 100.0]), [-10.0, NAN, INF], poison == "image_sizes")
    sizes = torch.tensor(sizes, dtype=dtype).reshape(B, 2)
    score_thresh = data.draw(st.sampled_from([-0.1, NAN] if poison == "score_thresh" else [0.05, 0.0, 0.5, 0.99]))
    nms_thresh = data.draw(st.sampled_from([-0.1, NAN] if poison == "nms_thresh" else [0.5, 0.0, 1.0]))
    topk = data.draw(st.sampled_from([1, 2, 1000, 2**62]), "topk")
    dets = data.draw(st.sampled_from([1, 5, 100, 0]), "dets")
    if poison == "level_sizes":
        if data.draw(st.booleans(), "overflow"):
            level_sizes = [2**63 - 1, 2**63 - 1, A + 2]  # sums to A in wrapping int64 arithmetic
        else:
            level_sizes = [*level_sizes, -1]
            level_sizes[0] += 1
    bad = (
        any(s < 0 for s in level_sizes)
        or sum(level_sizes) != A
        or not score_thresh >= 0
        or not nms_thresh >= 0
        or bool(((sizes < 0) | ~torch.isfinite(sizes)).any())
        or (dets > 0 and bool(logits.isnan().any()))  # found by the candidate scan, which D = 0 skips
    )
    args = (logits, deltas, anchors, level_sizes, sizes, score_thresh, topk, nms_thresh, dets)
    want = None
    if not bad and dets > 0:
        try:  # non-finite deltas or anchors: an error where a candidate's box is decoded from them
            want = reference.postprocess(*args)
        except RuntimeError:
            bad = True
    if bad:
        raises_naming("postprocess", focalops.postprocess, *args)
        raises_naming("postprocess", torch.ops.focalops.postprocess, *args)
        return
    if want is None:  # D = 0: nothing is decoded
        want = (
            torch.zeros(B, 0, 4),
            torch.zeros(B, 0),
            torch.zeros(B, 0, dtype=torch.long),
            torch.zeros(B, dtype=torch.long),
        )
        want = (want[0].to(dtype), want[1].to(dtype), want[2], want[3])
    for got in (focalops.postprocess(*args), torch.ops.focalops.postprocess(*args)):
        assert torch.equal(got[3], want[3]) and torch.equal(got[2], want[2])
        assert_same(got[0], want[0], rtol=1e-6, atol=1e-5)
        assert_same(got[1], want[1], rtol=1e-6, atol=0)


# --- anchors -------------------------------------------------------------------------------------


@HOSTILE
@given(data=st.data(), hw=st.sampled_from([(1, 1), (2, 4096), (0, 3), (3, 0)]))
def test_anchor_generator(data, hw):
    poison = poison_of(data, "size", "ratio", "stride", "feature_size")
    bad_number = [0, -32, NAN, INF]
    size = data.draw(st.sampled_from(bad_number if poison == "size" else [32, 0.5, 1e6]), "size")
    ratio = data.draw(st.sampled_from(bad_number if poison == "ratio" else [1.0, 0.5, 3.0]), "ratio")
    stride = data.draw(st.sampled_from([0.5, *bad_number] if poison == "stride" else [8, 2**20, 2**40, 8.0]), "stride")
    if poison in ("size", "ratio", "stride"):
        raises_naming("AnchorGenerator", focalops.AnchorGenerator, (size,), (stride,), (ratio,), (1.0,))
        return
    gen = focalops.AnchorGenerator((size,), (stride,), (ratio,), (1.0,))
    if poison == "feature_size":
        raises_naming("AnchorGenerator", gen, [(hw[0], -1 - hw[1])])
        return
    anchors, level_sizes = gen([hw], dtype=torch.float64)
    h, w = hw
    assert level_sizes == [h * w] and anchors.shape == (h * w, 4)
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    shifts = torch.stack([xs, ys, xs, ys], -1).reshape(-1, 4) * int(stride)
    assert torch.equal(anchors, shifts + gen.cell_anchors(0, dtype=torch.float64))


# --- shapes and dtypes the C++ checks must reject on their own -----------------------------------

_F, _L = torch.zeros(3, 4), torch.zeros(3, dtype=torch.long)
_OPS = torch.ops.focalops
BAD_CALLS = [
    ("sigmoid_focal_loss", _OPS.sigmoid_focal_loss, (_F, torch.zeros(3, dtype=torch.long)[:2], 0.25, 2.0, -2, False)),
    ("sigmoid_focal_loss", _OPS.sigmoid_focal_loss, (_F, _F.double(), 0.25, 2.0, -2, False)),
    ("sigmoid_focal_loss", _OPS.sigmoid_focal_loss, (_F.long(), _L, 0.25, 2.0, -2, False)),
    (
        "sigmoid_focal_loss",
        _OPS.sigmoid_focal_loss,
        (torch.zeros(()), torch.zeros((), dtype=torch.long), 0.25, 2.0, -2, False),
    ),
    ("_sigmoid_focal_loss_backward", _OPS._sigmoid_focal_loss_backward, (torch.ones(2), _F, _L, 0.25, 2.0, -2, True)),
    (
        "_sigmoid_focal_loss_backward",
        _OPS._sigmoid_focal_loss_backward,
        (torch.ones(3, 3), _F, _L, 0.25, 2.0, -2, False),
    ),
    ("box_iou", _OPS.box_iou, (_F, _F.double())),
    ("box_iou", _OPS.box_iou, (_F[:, :3], _F)),
    ("box_iou", _OPS.box_iou, (_F.long(), _F.long())),
    ("encode_boxes", _OPS.encode_boxes, (_F, torch.zeros(2, 4), [1.0] * 4)),
    ("encode_boxes", _OPS.encode_boxes, (_F, _F.half(), [1.0] * 4)),
    ("decode_boxes", _OPS.decode_boxes, (_F[:, :3], _F, [1.0] * 4, 1.0)),
    ("_decode_boxes_backward", _OPS._decode_boxes_backward, (_F.double(), _F, _F, [1.0] * 4, 1.0)),
    ("assign", _OPS.assign, (_F.double(), _F[None], torch.tensor([3]), 0.5, 0.4, True)),
    ("assign", _OPS.assign, (_F, _F[None], torch.tensor([3, 3]), 0.5, 0.4, True)),
    ("assign", _OPS.assign, (_F, _F[None], torch.tensor([3], dtype=torch.int32), 0.5, 0.4, True)),
    ("retinanet_targets", _OPS.retinanet_targets, (_L[None], _F[None], _L[None, :2], _F, [1.0] * 4)),
    ("retinanet_targets", _OPS.retinanet_targets, (_L[None], _F[None], _L[None], _F.double(), [1.0] * 4)),
    ("retinanet_targets", _OPS.retinanet_targets, (_L[None].int(), _F[None], _L[None], _F, [1.0] * 4)),
    ("nms", _OPS.nms, (_F, torch.zeros(2), 0.5)),
    ("nms", _OPS.nms, (_F.long(), torch.zeros(3), 0.5)),
    ("batched_nms", _OPS.batched_nms, (_F, torch.zeros(3), _L[:2], 0.5)),
    ("batched_nms", _OPS.batched_nms, (_F, torch.zeros(3), _L.int(), 0.5)),
    (
        "postprocess",
        _OPS.postprocess,
        (torch.zeros(1, 3, 2), _F[None], _F, [3], torch.zeros(1, 2).double(), 0.05, 9, 0.5, 9),
    ),
    ("postprocess", _OPS.postprocess, (torch.zeros(1, 3, 2), _F[None], _F, [3], torch.zeros(2, 2), 0.05, 9, 0.5, 9)),
    ("postprocess", _OPS.postprocess, (torch.zeros(1, 3, 2), _F[None], _F, [3], torch.zeros(1, 2), 0.05, 0, 0.5, 9)),
    ("postprocess", _OPS.postprocess, (torch.zeros(1, 3, 2), _F[None], _F, [3], torch.zeros(1, 2), 0.05, 9, 0.5, -1)),
]


@pytest.mark.parametrize("name, op, args", BAD_CALLS, ids=[f"{c[0]}-{i}" for i, c in enumerate(BAD_CALLS)])
def test_op_rejects_bad_shapes_and_dtypes(name, op, args):
    raises_naming(name, op, *args)
