import math

import pytest
import torch
from conftest import one_grid
from hypothesis import given, settings
from hypothesis import strategies as st

import focalops
from focalops import reference


def random_boxes(n, generator, scale=100.0, dtype=torch.float32, device="cpu"):
    xy = torch.rand(n, 2, generator=generator, dtype=torch.float64) * scale
    wh = torch.rand(n, 2, generator=generator, dtype=torch.float64) * scale * 0.5 + 1.0
    return torch.cat([xy, xy + wh], dim=1).to(dtype=dtype, device=device)


# ---- box_iou


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_box_iou_matches_reference(device, seed, dtype):
    g = torch.Generator().manual_seed(seed)
    b1, b2 = random_boxes(37, g, dtype=dtype, device=device), random_boxes(53, g, dtype=dtype, device=device)
    out = focalops.box_iou(b1, b2)
    ref = reference.box_iou(b1, b2)
    assert out.dtype == dtype and out.shape == (37, 53)
    if dtype == torch.float32:
        assert torch.equal(out, ref)  # same float32 formula, no FMA: bit-identical
    else:
        torch.testing.assert_close(out, ref)


def test_kernels_past_one_grid(device):
    """More pairs / rows than one grid has threads: the grid-stride loops' second step."""
    g = torch.Generator().manual_seed(7)
    n = math.isqrt(one_grid(device)) + 2
    b1, b2 = random_boxes(n, g), random_boxes(n + 1, g)
    assert torch.equal(focalops.box_iou(b1.to(device), b2.to(device)).cpu(), reference.box_iou(b1, b2))
    rows = one_grid(device) + 37
    anchors = random_boxes(rows, g)
    gt = random_boxes(rows, g)
    deltas = torch.randn(rows, 4, generator=g)
    enc = focalops.encode_boxes(gt.to(device), anchors.to(device)).cpu()
    torch.testing.assert_close(enc, reference.encode_boxes(gt, anchors))
    d = deltas.to(device, copy=True).requires_grad_(True)
    dec = focalops.decode_boxes(d, anchors.to(device))
    torch.testing.assert_close(dec.cpu(), reference.decode_boxes(deltas, anchors))
    w = torch.randn(rows, 4, generator=g)
    (dec * w.to(device)).sum().backward()
    d_ref = deltas.clone().requires_grad_(True)
    (reference.decode_boxes(d_ref, anchors) * w).sum().backward()
    torch.testing.assert_close(d.grad.cpu(), d_ref.grad)


def test_box_iou_degenerate_is_zero_not_nan(device):
    b = torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 5.0], [0.0, 0.0, 2.0, 2.0]], device=device)
    out = focalops.box_iou(b, b)
    assert not out.isnan().any()
    assert out[0, 0] == 0 and out[1, 1] == 0 and out[2, 2] == 1


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_box_iou_half(device, dtype):
    g = torch.Generator().manual_seed(0)
    b1, b2 = random_boxes(8, g, device=device), random_boxes(9, g, device=device)
    out = focalops.box_iou(b1.to(dtype), b2.to(dtype))
    assert out.dtype == torch.float32  # as torchvision: half boxes give float32 IoUs
    torch.testing.assert_close(out, reference.box_iou(b1.to(dtype).float(), b2.to(dtype).float()))


def test_box_iou_empty(device):
    assert focalops.box_iou(torch.zeros(0, 4, device=device), torch.zeros(3, 4, device=device)).shape == (
        0,
        3,
    )


def test_box_iou_bad_input():
    with pytest.raises(ValueError, match=r"box_iou: boxes1 must be \[N, 4\], got \[3, 5\]"):
        focalops.box_iou(torch.zeros(3, 5), torch.zeros(2, 4))
    with pytest.raises(TypeError, match="boxes2 must be a real floating or integer tensor"):
        focalops.box_iou(torch.zeros(3, 4), torch.zeros(2, 4, dtype=torch.bool))
    with pytest.raises(RuntimeError, match="boxes2 must be"):
        torch.ops.focalops.box_iou(torch.zeros(3, 4), torch.zeros(2, 3))


# ---- encode / decode


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)])
def test_encode_decode_match_reference(device, seed, dtype, weights):
    g = torch.Generator().manual_seed(seed)
    anchors = random_boxes(50, g, dtype=dtype, device=device)
    gt = random_boxes(3 * 50, g, dtype=dtype, device=device).view(3, 50, 4)
    enc = focalops.encode_boxes(gt, anchors, weights)
    torch.testing.assert_close(enc, reference.encode_boxes(gt, anchors, weights))
    deltas = torch.randn(3, 50, 4, generator=g, dtype=torch.float64).to(dtype=dtype, device=device) * 3
    dec = focalops.decode_boxes(deltas, anchors, weights)
    torch.testing.assert_close(dec, reference.decode_boxes(deltas, anchors, weights))
    torch.testing.assert_close(focalops.decode_boxes(enc, anchors, weights), gt)


def test_coder_broadcast_general(device):
    g = torch.Generator().manual_seed(1)
    anchors = random_boxes(4, g, device=device).view(4, 1, 4)  # not a suffix of the deltas' shape
    deltas = torch.randn(2, 4, 5, 4, generator=g).to(device)
    out = focalops.decode_boxes(deltas, anchors)
    torch.testing.assert_close(out, reference.decode_boxes(deltas, anchors))
    gt = random_boxes(5, g, device=device)
    torch.testing.assert_close(focalops.encode_boxes(gt, anchors), reference.encode_boxes(gt, anchors))


def test_decode_clamp(device):
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0]], device=device)
    deltas = torch.tensor([[0.0, 0.0, 100.0, 100.0]], device=device)
    out = focalops.decode_boxes(deltas, anchors)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, reference.decode_boxes(deltas, anchors))


@pytest.mark.parametrize("contiguous", [True, False])
def test_decode_gradcheck(device, contiguous):
    g = torch.Generator().manual_seed(0)
    anchors = random_boxes(6, g, dtype=torch.float64, device=device)
    deltas = torch.randn(2, 6, 4, generator=g, dtype=torch.float64).to(device)
    if not contiguous:
        deltas = deltas.transpose(0, 1).contiguous().transpose(0, 1)
    deltas.requires_grad_(True)
    weights = (10.0, 10.0, 5.0, 5.0)
    assert torch.autograd.gradcheck(lambda d: focalops.decode_boxes(d, anchors, weights), (deltas,))
    # clamped dw / dh pass no gradient, like torch.clamp
    big = torch.tensor([[0.0, 0.0, 30.0, 30.0]], dtype=torch.float64, device=device, requires_grad=True)
    focalops.decode_boxes(big, anchors[:1]).sum().backward()
    assert big.grad[0, 2] == 0 and big.grad[0, 3] == 0


def test_decode_grad_matches_reference(device):
    g = torch.Generator().manual_seed(2)
    anchors = random_boxes(20, g, device=device)
    d1 = torch.randn(4, 20, 4, generator=g).to(device).requires_grad_(True)
    d2 = d1.detach().clone().requires_grad_(True)
    w = torch.randn(4, 20, 4, generator=g).to(device)
    (focalops.decode_boxes(d1, anchors) * w).sum().backward()
    (reference.decode_boxes(d2, anchors) * w).sum().backward()
    torch.testing.assert_close(d1.grad, d2.grad)


def test_decode_double_backward_raises():
    anchors = torch.tensor([[0.0, 0.0, 4.0, 4.0]], dtype=torch.float64)
    d = torch.zeros(1, 4, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(focalops.decode_boxes(d, anchors).sum(), d, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        grad.sum().backward()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_coder_half(device, dtype):
    g = torch.Generator().manual_seed(0)
    anchors = random_boxes(16, g, device=device)
    deltas = torch.randn(16, 4, generator=g).to(device)
    out = focalops.decode_boxes(deltas.to(dtype), anchors.to(dtype))
    assert out.dtype == dtype
    ref = reference.decode_boxes(deltas.to(dtype).float(), anchors.to(dtype).float())
    torch.testing.assert_close(out.float(), ref, atol=0.5, rtol=1e-2)


def test_coder_empty(device):
    assert focalops.decode_boxes(torch.zeros(2, 0, 4, device=device), torch.zeros(0, 4, device=device)).shape == (
        2,
        0,
        4,
    )
    assert focalops.encode_boxes(torch.zeros(0, 4, device=device), torch.zeros(0, 4, device=device)).shape == (0, 4)


def test_encode_no_grad():
    anchors = torch.tensor([[0.0, 0.0, 4.0, 4.0]])
    gt = torch.tensor([[1.0, 1.0, 3.0, 5.0]], requires_grad=True)
    assert not focalops.encode_boxes(gt, anchors).requires_grad


def test_coder_bad_input():
    a = torch.zeros(5, 4)
    with pytest.raises(ValueError, match=r"decode_boxes: deltas must be \[\.\.\., 4\], got \[5, 3\]"):
        focalops.decode_boxes(torch.zeros(5, 3), a)
    with pytest.raises(ValueError, match="do not broadcast"):
        focalops.decode_boxes(torch.zeros(3, 4), a)
    with pytest.raises(ValueError, match="weights must be 4 positive"):
        focalops.encode_boxes(a, a, weights=(1.0, 1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="anchors.requires_grad"):
        focalops.decode_boxes(a, a.clone().requires_grad_(True))
    with pytest.raises(TypeError, match="gt must be float32"):
        focalops.encode_boxes(a.long(), a)
    with pytest.raises(RuntimeError, match="do not repeat evenly"):
        torch.ops.focalops.decode_boxes(torch.zeros(5, 4), torch.zeros(2, 4), [1.0, 1.0, 1.0, 1.0], 4.0)
    with pytest.raises(ValueError, match="clamp must be a number, got nan"):
        focalops.decode_boxes(a, a, clamp=math.nan)


@pytest.mark.parametrize("weights", [[1.0, 1.0, 0.0, 1.0], [1.0, -1.0, 1.0, 1.0], [math.inf, 1.0, 1.0, 1.0], [1.0] * 3])
def test_coder_cpp_checks_stand_alone(weights):
    """torch.ops.focalops.* skips the Python wrapper: the C++ checks must hold on their own."""
    a = torch.zeros(5, 4)
    msg = "weights must be 4 positive finite numbers"
    with pytest.raises(RuntimeError, match="encode_boxes: " + msg):
        torch.ops.focalops.encode_boxes(a, a, weights)
    with pytest.raises(RuntimeError, match="decode_boxes: " + msg):
        torch.ops.focalops.decode_boxes(a, a, weights, 4.0)
    with pytest.raises(RuntimeError, match="_decode_boxes_backward: " + msg):
        torch.ops.focalops._decode_boxes_backward(a, a, a, weights, 4.0)


def test_decode_nan_clamp_is_rejected_by_the_op():
    a = torch.zeros(5, 4)
    with pytest.raises(RuntimeError, match="decode_boxes: clamp must be a number, got nan"):
        torch.ops.focalops.decode_boxes(a, a, [1.0] * 4, math.nan)
    with pytest.raises(RuntimeError, match="_decode_boxes_backward: clamp must be a number, got nan"):
        torch.ops.focalops._decode_boxes_backward(a, a, a, [1.0] * 4, math.nan)


def test_decode_nan_and_inf_deltas_follow_torchvision(device):
    """A NaN dw stays NaN (torch.clamp), never the clamp's box; +-inf clamp and deltas are the limits."""
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0]], device=device)
    deltas = torch.tensor(
        [[0.0, 0.0, math.nan, 0.0], [0.0, 0.0, math.inf, -math.inf], [math.inf, 0.0, 1.0, 1.0]], device=device
    )
    for clamp in (math.log(1000.0 / 16), math.inf, -math.inf):
        out = focalops.decode_boxes(deltas, anchors, clamp=clamp)
        torch.testing.assert_close(out, reference.decode_boxes(deltas, anchors, clamp=clamp), equal_nan=True)
    assert torch.isnan(focalops.decode_boxes(deltas[:1], anchors)[0, [0, 2]]).all()


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(0, 12),
    m=st.integers(0, 12),
    seed=st.integers(0, 2**16),
    degenerate=st.booleans(),
)
def test_box_iou_property(n, m, seed, degenerate):
    g = torch.Generator().manual_seed(seed)
    # integer grid coordinates make identical, touching and zero-area boxes common
    p1 = torch.randint(0, 6, (n, 4), generator=g).float()
    p2 = torch.randint(0, 6, (m, 4), generator=g).float()
    b1 = torch.cat([p1[:, :2].minimum(p1[:, 2:]), p1[:, :2].maximum(p1[:, 2:])], 1)
    b2 = torch.cat([p2[:, :2].minimum(p2[:, 2:]), p2[:, :2].maximum(p2[:, 2:])], 1)
    if degenerate and n:
        b1[0, 2] = b1[0, 0]
    out = focalops.box_iou(b1, b2)
    assert torch.equal(out, reference.box_iou(b1, b2))
    assert ((out >= 0) & (out <= 1)).all()


# ---- anchors


def test_anchor_generator_torchvision_convention():
    gen = focalops.AnchorGenerator()
    anchors, level_sizes = gen.for_image_size(256, 384)
    assert level_sizes == [32 * 48 * 9, 16 * 24 * 9, 8 * 12 * 9, 4 * 6 * 9, 2 * 3 * 9]
    assert anchors.shape == (sum(level_sizes), 4)
    # torchvision retinanet_resnet50_fpn, P3 cell anchors (sizes 32, 40, 50; ratios 0.5, 1, 2)
    expected = torch.tensor(
        [[-23, -11, 23, 11], [-28, -14, 28, 14], [-35, -18, 35, 18], [-16, -16, 16, 16], [-20, -20, 20, 20],
         [-25, -25, 25, 25], [-11, -23, 11, 23], [-14, -28, 14, 28], [-18, -35, 18, 35]],
        dtype=torch.float32,
    )  # fmt: skip
    assert torch.equal(anchors[:9], expected)
    # level, then y, then x, then anchor
    assert torch.equal(anchors[9:18], expected + torch.tensor([8.0, 0, 8, 0]))
    assert torch.equal(anchors[48 * 9 : 48 * 9 + 9], expected + torch.tensor([0.0, 8, 0, 8]))
    p7 = anchors[sum(level_sizes[:4]) :]
    assert torch.equal(p7[-9:], gen.cell_anchors(4) + torch.tensor([256.0, 128, 256, 128]))


def test_anchor_generator_cache_and_dtype(device):
    gen = focalops.AnchorGenerator()
    sizes = [(4, 4), (2, 2), (1, 1), (1, 1), (1, 1)]
    a1, l1 = gen(sizes, device, torch.float32)
    a2, _ = gen(sizes, device, torch.float32)
    assert a1 is a2 and a1.device.type == device
    a3, l3 = gen(sizes, device, torch.float64)
    assert a3.dtype == torch.float64 and l1 == l3 and torch.equal(a3.float(), a1)


def test_anchor_generator_cache_is_bounded_lru():
    gen = focalops.AnchorGenerator(cache_size=2)
    sizes = [[(h, h), (2, 2), (1, 1), (1, 1), (1, 1)] for h in (4, 5, 6)]
    first, _ = gen(sizes[0])
    gen(sizes[1])
    assert gen(sizes[0])[0] is first  # a hit makes it the most recently used
    gen(sizes[2])  # evicts sizes[1], the least recently used
    assert len(gen._cache) == 2 and gen(sizes[0])[0] is first
    rebuilt, _ = gen(sizes[1])
    assert torch.equal(rebuilt, focalops.AnchorGenerator()(sizes[1])[0]) and len(gen._cache) == 2
    for bad in (0, 2.0, True):
        with pytest.raises(ValueError, match="cache_size must be an int >= 1"):
            focalops.AnchorGenerator(cache_size=bad)


def test_anchor_generator_large_strides_do_not_wrap():
    """x * stride beyond 2^31 (int32 shifts wrapped to x1 = -1,048,592 here)."""
    gen = focalops.AnchorGenerator(sizes=(32,), strides=(2**20,), ratios=(1.0,), scales=(1.0,))
    anchors, _ = gen([(1, 4096)], dtype=torch.float64)
    assert anchors[:, 0].tolist() == [x * 2**20 - 16 for x in range(4096)]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"strides": (0.5,)}, "strides must be whole numbers"),
        ({"strides": (8.5,)}, "strides must be whole numbers"),
        ({"strides": (math.inf,)}, "strides must be a non-empty sequence of positive finite numbers"),
        ({"sizes": (math.nan,)}, "sizes must be a non-empty sequence of positive finite numbers"),
        ({"sizes": (math.inf,)}, "sizes must be"),
        ({"ratios": (math.inf,)}, "ratios must be"),
        ({"scales": ("2",)}, "scales must be"),
    ],
)
def test_anchor_generator_bad_numbers(kwargs, match):
    args = {"sizes": (32,), "strides": (8,), "ratios": (1.0,), "scales": (1.0,), **kwargs}
    with pytest.raises(ValueError, match=match):
        focalops.AnchorGenerator(**args)


def test_anchor_generator_integral_float_stride_and_negative_feature_size():
    gen = focalops.AnchorGenerator(sizes=(32,), strides=(8.0,), ratios=(1.0,), scales=(1.0,))
    want = focalops.AnchorGenerator(sizes=(32,), strides=(8,), ratios=(1.0,), scales=(1.0,))([(3, 5)])[0]
    assert torch.equal(gen([(3, 5)])[0], want)
    with pytest.raises(ValueError, match=r"feature sizes must be >= 0, got \[\(-1, 5\)\]"):
        gen([(-1, 5)])


def test_anchor_generator_bad_input():
    with pytest.raises(ValueError, match="one entry per level"):
        focalops.AnchorGenerator(sizes=(32, 64), strides=(8,))
    with pytest.raises(ValueError, match="ratios must be"):
        focalops.AnchorGenerator(ratios=(0.0,))
    with pytest.raises(ValueError, match=r"one \(height, width\) per level"):
        focalops.AnchorGenerator()([(4, 4)])


# ---- torch.library / torch.compile


def test_opcheck_boxes(device):
    g = torch.Generator().manual_seed(0)
    b1, b2 = random_boxes(5, g, device=device), random_boxes(7, g, device=device)
    w = [1.0, 1.0, 1.0, 1.0]
    torch.library.opcheck(torch.ops.focalops.box_iou, (b1, b2))
    torch.library.opcheck(torch.ops.focalops.encode_boxes, (random_boxes(14, g, device=device).view(2, 7, 4), b2, w))
    d = torch.randn(2, 7, 4, generator=g, dtype=torch.float64).to(device).requires_grad_(True)
    torch.library.opcheck(torch.ops.focalops.decode_boxes, (d, b2.double(), w, math.log(1000 / 16)))
    torch.library.opcheck(
        torch.ops.focalops._decode_boxes_backward, (torch.randn_like(d), d.detach(), b2.double(), w, 4.0)
    )


def test_compile_boxes():
    g = torch.Generator().manual_seed(0)
    anchors = random_boxes(10, g)

    @torch.compile(fullgraph=True, backend="aot_eager")
    def f(deltas, gt):
        return (
            focalops.decode_boxes(deltas, anchors),
            focalops.encode_boxes(gt, anchors),
            focalops.box_iou(gt, anchors),
        )

    deltas = torch.randn(2, 10, 4, generator=g, requires_grad=True)
    gt = random_boxes(10, g)
    boxes, enc, iou = f(deltas, gt)
    boxes.sum().backward()
    torch.testing.assert_close(boxes, reference.decode_boxes(deltas, anchors))
    torch.testing.assert_close(iou, reference.box_iou(gt, anchors))
    assert deltas.grad is not None
