import math

import pytest
import torch
from conftest import GPU, needs_cuda, one_grid, run_device_code
from hypothesis import given, settings
from hypothesis import strategies as st

import focalops
from focalops import reference


def make_batch(B, G, A, seed, device="cpu", dtype=torch.float32, scale=200.0):
    g = torch.Generator().manual_seed(seed)
    anchors, _ = focalops.AnchorGenerator(sizes=(16, 32), strides=(8, 16)).for_image_size(64, 64)
    anchors = anchors[:A] if A else anchors
    xy = torch.rand(B, G, 2, generator=g) * scale * 0.4
    wh = torch.rand(B, G, 2, generator=g) * scale * 0.3 + 2
    gt = torch.cat([xy, xy + wh], -1)
    counts = torch.randint(0, G + 1, (B,), generator=g)
    return anchors.to(device, dtype), gt.to(device, dtype), counts.to(device)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("allow_low_quality", [True, False])
def test_assign_matches_reference(device, seed, allow_low_quality):
    anchors, gt, counts = make_batch(4, 9, 0, seed, device)
    out = focalops.assign(anchors, gt, counts, allow_low_quality=allow_low_quality)
    ref = reference.assign(anchors, gt, counts, allow_low_quality=allow_low_quality)
    assert out.dtype == torch.int64 and out.shape == (4, anchors.shape[0])
    assert torch.equal(out, ref)
    assert (out >= 0).any() and (out == -1).any()


def test_assign_float64_input_is_computed_in_float32(device):
    anchors, gt, counts = make_batch(3, 7, 0, 5, device, dtype=torch.float64)
    out = focalops.assign(anchors, gt, counts)
    assert torch.equal(out, focalops.assign(anchors.float(), gt.float(), counts))
    assert torch.equal(out, reference.assign(anchors, gt, counts))


def test_assign_low_quality_ties_and_zero_best():
    anchors = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10], [100, 100, 110, 110], [0, 0, 5, 5]])
    # box 0 overlaps anchors 0 and 1 equally (IoU 0.25 < bg): both tie its best IoU -> matched;
    # box 1 overlaps nothing: best IoU 0 -> makes no low-quality match; box 2 is padding.
    gt = torch.tensor([[[0.0, 0, 20, 20], [500, 500, 510, 510], [0, 0, 10, 10]]])
    out = focalops.assign(anchors, gt, torch.tensor([2]))
    assert out.tolist() == [[0, 0, -1, -1]]
    assert torch.equal(out, reference.assign(anchors, gt, torch.tensor([2])))
    out = focalops.assign(anchors, gt, torch.tensor([2]), allow_low_quality=False)
    assert out.tolist() == [[-1, -1, -1, -1]]


def test_assign_ties_lowest_box_wins_and_own_best():
    anchors = torch.tensor([[0.0, 0, 10, 10], [0, 0, 12, 12]])
    # boxes 0 and 1 are identical: anchor 0 goes to box 0 (first of the tie);
    # box 2's best anchor is anchor 1 (IoU 0.44) but anchor 1's own best box is box 0.
    gt = torch.tensor([[[0.0, 0, 10, 10], [0, 0, 10, 10], [4, 4, 12, 12]]])
    out = focalops.assign(anchors, gt, torch.tensor([3]))
    assert torch.equal(out, reference.assign(anchors, gt, torch.tensor([3])))
    assert out[0, 0] == 0 and out[0, 1] == 0


def test_assign_thresholds_are_inclusive(device):
    """IoU exactly fg_iou is foreground, exactly bg_iou is ignored (Matcher: >= fg, < bg is background)."""
    gt = torch.tensor([[[0.0, 0, 10, 10]]], device=device)
    # IoU with the box: 1, 0.5, 0.4, 0.3 (40 / 100 rounds to the float32 nearest 0.4, as bg_iou does)
    anchors = torch.tensor([[0.0, 0, 10, 10], [0, 0, 5, 10], [0, 0, 4, 10], [0, 0, 3, 10]], device=device)
    for lq in (True, False):
        out = focalops.assign(anchors, gt, torch.tensor([1], device=device), 0.5, 0.4, lq)
        assert out.tolist() == [[0, 0, -2, -1]]


def test_assign_empty_and_padding(device):
    anchors, gt, _ = make_batch(3, 5, 40, 0, device)
    counts = torch.tensor([0, 5, 2], device=device)
    gt[2, 2:] = anchors[0]  # padding identical to an anchor: must still never be matched
    out = focalops.assign(anchors, gt, counts)
    assert (out[0] == -1).all()
    assert (out[2] < 2).all()
    assert torch.equal(out, reference.assign(anchors, gt, counts))
    # G = 0, B = 0, A = 0
    assert (focalops.assign(anchors, gt[:, :0], torch.zeros(3, dtype=torch.long, device=device)) == -1).all()
    assert focalops.assign(anchors, gt[:0], counts[:0]).shape == (0, 40)
    assert focalops.assign(anchors[:0], gt, counts).shape == (3, 0)


def test_assign_many_boxes(device):
    anchors, gt, _ = make_batch(2, 2000, 200, 3, device, scale=60.0)
    counts = torch.tensor([2000, 1500], device=device)
    out = focalops.assign(anchors, gt, counts)
    assert torch.equal(out, reference.assign(anchors, gt, counts))


def grid_boxes(draw_ints, n):
    b = torch.tensor(draw_ints, dtype=torch.float32).view(n, 4)
    return torch.cat([b[:, :2].minimum(b[:, 2:]), b[:, :2].maximum(b[:, 2:])], 1)


@settings(max_examples=50, deadline=None)
@given(data=st.data(), B=st.integers(1, 3), G=st.integers(0, 6), A=st.integers(1, 20), lq=st.booleans())
def test_assign_property(data, B, G, A, lq):
    coord = st.integers(0, 8)
    anchors = grid_boxes(data.draw(st.lists(coord, min_size=4 * A, max_size=4 * A)), A)
    gt = grid_boxes(data.draw(st.lists(coord, min_size=4 * B * G, max_size=4 * B * G)), B * G).view(B, G, 4)
    if G and data.draw(st.booleans()):
        gt[0, 0] = anchors[0]  # a box identical to an anchor
    if G > 1 and data.draw(st.booleans()):
        gt[:, 1] = gt[:, 0]  # duplicate boxes
    if G and data.draw(st.booleans()):
        gt[-1, -1] = torch.tensor([1000.0, 1000, 1010, 1010])  # far away: best IoU 0
    counts = torch.tensor(data.draw(st.lists(st.integers(0, G), min_size=B, max_size=B)))
    fg = data.draw(st.sampled_from([0.5, 0.3]))
    bg = data.draw(st.sampled_from([0.4, 0.3, 0.1, 0.0]))
    bg = min(bg, fg)
    out = focalops.assign(anchors, gt, counts, fg, bg, lq)
    assert torch.equal(out, reference.assign(anchors, gt, counts, fg, bg, lq))


def test_assign_bad_input():
    anchors, gt, counts = make_batch(2, 3, 10, 0)
    with pytest.raises(ValueError, match=r"assign: anchors must be \[A, 4\], got \[10, 3\]"):
        focalops.assign(anchors[:, :3], gt, counts)
    with pytest.raises(ValueError, match=r"gt_boxes must be \[B, G, 4\]"):
        focalops.assign(anchors, gt[0], counts)
    with pytest.raises(ValueError, match=r"gt_counts must be \[B\] = \[2\], got \[1\]"):
        focalops.assign(anchors, gt, counts[:1])
    with pytest.raises(TypeError, match="gt_counts must be an integer"):
        focalops.assign(anchors, gt, counts.float())
    for fg, bg in ((0.3, 0.4), (1.5, 0.4), (0.5, -1.0), (math.nan, 0.4), (0.5, math.nan)):
        with pytest.raises(ValueError, match=r"need 0 <= bg_iou <= fg_iou <= 1"):
            focalops.assign(anchors, gt, counts, fg_iou=fg, bg_iou=bg)
        with pytest.raises(RuntimeError, match=r"need 0 <= bg_iou <= fg_iou <= 1"):
            torch.ops.focalops.assign(anchors, gt, counts, fg, bg, True)
    with pytest.raises(RuntimeError, match=r"gt_counts must be in \[0, G\]"):
        focalops.assign(anchors, gt, torch.tensor([4, 0]))
    with pytest.raises(RuntimeError, match=r"gt_counts must be in \[0, G\]"):
        focalops.assign(anchors, gt, torch.tensor([-1, 0]))
    bad = gt.clone()
    bad[0, 0, 1] = float("nan")
    with pytest.raises(RuntimeError, match="gt_boxes contain NaN"):
        focalops.assign(anchors, bad, torch.tensor([1, 0]))
    focalops.assign(anchors, bad, torch.tensor([0, 0]))  # NaN in padding is not read
    bad_anchors = anchors.clone()
    bad_anchors[3, 2] = float("nan")
    with pytest.raises(RuntimeError, match="anchors contain NaN"):
        focalops.assign(bad_anchors, gt, counts)


# ---- RetinaNet targets


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_retinanet_targets_match_reference(device, seed, dtype):
    anchors, gt, counts = make_batch(3, 6, 0, seed, device, dtype=dtype)
    labels = torch.randint(0, 80, (3, 6), generator=torch.Generator().manual_seed(seed)).to(device)
    matched = focalops.assign(anchors, gt, counts)
    w = (10.0, 10.0, 5.0, 5.0)
    cls, box, fg = focalops.retinanet_targets(matched, gt, labels, anchors, w)
    rcls, rbox, rfg = reference.retinanet_targets(matched, gt, labels, anchors, w)
    assert torch.equal(cls, rcls) and torch.equal(fg, rfg)
    assert box.dtype == dtype and box.shape == (3, anchors.shape[0], 4)
    torch.testing.assert_close(box, rbox)
    assert (box[~fg] == 0).all()
    assert fg.any() and (cls == -2).any() and (cls == -1).any()
    # the class-index targets feed the focal loss directly
    logits = torch.randn(3, anchors.shape[0], 80, device=device, dtype=dtype)
    torch.testing.assert_close(
        focalops.sigmoid_focal_loss(logits, cls, reduction="sum"),
        reference.sigmoid_focal_loss(logits, cls, reduction="sum"),
    )


def test_retinanet_targets_past_one_grid(device):
    """More anchors than one grid has threads: the kernel's grid-stride loop's second step."""
    g = torch.Generator().manual_seed(3)
    B, G = 2, 5
    A = one_grid(device) // B + 37
    anchors = torch.rand(A, 2, generator=g) * 100
    anchors = torch.cat([anchors, anchors + 1 + torch.rand(A, 2, generator=g) * 50], dim=1)
    gt = torch.rand(B, G, 2, generator=g) * 100
    gt = torch.cat([gt, gt + 1 + torch.rand(B, G, 2, generator=g) * 50], dim=2)
    labels = torch.randint(0, 80, (B, G), generator=g)
    matched = torch.randint(-2, G, (B, A), generator=g)
    got = focalops.retinanet_targets(*(t.to(device) for t in (matched, gt, labels, anchors)))
    want = reference.retinanet_targets(matched, gt, labels, anchors)
    assert torch.equal(got[0].cpu(), want[0]) and torch.equal(got[2].cpu(), want[2])
    torch.testing.assert_close(got[1].cpu(), want[1])


def test_retinanet_targets_no_boxes(device):
    anchors, gt, _ = make_batch(2, 0, 30, 0, device)
    matched = torch.full((2, 30), -1, dtype=torch.long, device=device)
    cls, box, fg = focalops.retinanet_targets(matched, gt, torch.zeros(2, 0, dtype=torch.long, device=device), anchors)
    assert (cls == -1).all() and (box == 0).all() and not fg.any()


def test_retinanet_targets_bad_input():
    anchors, gt, counts = make_batch(2, 3, 10, 0)
    labels = torch.zeros(2, 3, dtype=torch.long)
    matched = focalops.assign(anchors, gt, counts)
    with pytest.raises(TypeError, match="matched must be int64"):
        focalops.retinanet_targets(matched.int(), gt, labels, anchors)
    with pytest.raises(ValueError, match=r"anchors must be \[A, 4\] with A = 10, got \[5, 4\]"):
        focalops.retinanet_targets(matched, gt, labels, anchors[:5])
    with pytest.raises(ValueError, match=r"gt_labels must be \[B, G\] = \[2, 3\], got \[2, 2\]"):
        focalops.retinanet_targets(matched, gt, labels[:, :2], anchors)
    with pytest.raises(RuntimeError, match="matched values must be -2, -1 or a box index"):
        focalops.retinanet_targets(torch.full_like(matched, 3), gt, labels, anchors)
    with pytest.raises(RuntimeError, match="matched values must be -2, -1 or a box index"):
        focalops.retinanet_targets(torch.full_like(matched, -3), gt, labels, anchors)
    with pytest.raises(RuntimeError, match=r"weights must be 4 positive finite numbers"):
        torch.ops.focalops.retinanet_targets(matched, gt, labels, anchors, [1.0, 1.0, math.nan, 1.0])
    with pytest.raises(ValueError, match="num_classes must be >= 0, got -1"):
        focalops.retinanet_targets(matched, gt, labels, anchors, num_classes=-1)
    with pytest.raises(RuntimeError, match="num_classes must be >= 0"):
        torch.ops.focalops.retinanet_targets(matched, gt, labels, anchors, [1.0] * 4, -1)


def test_retinanet_targets_no_boxes_index_zero_is_an_error():
    """G = 0: matched 0 points at no box (0 is not a "no error" value)."""
    anchors, gt, _ = make_batch(2, 0, 30, 0)
    matched = torch.full((2, 30), -1, dtype=torch.long)
    matched[1, 7] = 0
    with pytest.raises(RuntimeError, match=r"box index in \[0, G = 0\), got 0 for anchor 7 of image 1"):
        focalops.retinanet_targets(matched, gt, torch.zeros(2, 0, dtype=torch.long), anchors)


@pytest.mark.parametrize("label", [-5, -1, -2, 2**40])
def test_retinanet_targets_bad_labels_of_matched_boxes(label):
    anchors = torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 1, 1]])
    gt = torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60]]).expand(2, 3, 4)
    matched = focalops.assign(anchors, gt, torch.tensor([3, 3]))
    assert matched.tolist() == [[0, 1, -1]] * 2
    # box 2 is matched by no anchor: its label is never read; box 1 of image 1 is
    labels = torch.tensor([[3, 4, label], [3, label, label]])
    if label >= 0:
        cls, _, _ = focalops.retinanet_targets(matched, gt, labels, anchors)  # no upper bound without num_classes
        assert cls.tolist() == [[3, 4, -1], [3, label, -1]]
        with pytest.raises(RuntimeError, match=rf"in \[0, num_classes = 80\), got {label} for box 1 of image 1"):
            focalops.retinanet_targets(matched, gt, labels, anchors, num_classes=80)
    else:
        with pytest.raises(RuntimeError, match=rf"matched box must be >= 0, got {label} for box 1 of image 1"):
            focalops.retinanet_targets(matched, gt, labels, anchors)
    labels[1, 1] = 7
    cls, _, _ = focalops.retinanet_targets(matched, gt, labels, anchors, num_classes=8)
    assert cls.tolist() == [[3, 4, -1], [3, 7, -1]]


# ---- torch.library / torch.compile


def test_opcheck_assign(device):
    anchors, gt, counts = make_batch(2, 4, 40, 1, device)
    torch.library.opcheck(torch.ops.focalops.assign, (anchors, gt, counts, 0.5, 0.4, True))
    matched = focalops.assign(anchors, gt, counts)
    labels = torch.randint(0, 5, (2, 4)).to(device)
    torch.library.opcheck(torch.ops.focalops.retinanet_targets, (matched, gt, labels, anchors, [1.0, 1.0, 1.0, 1.0]))


def test_compile_assign():
    anchors, gt, counts = make_batch(2, 4, 60, 2)
    labels = torch.randint(0, 5, (2, 4))

    @torch.compile(fullgraph=True, backend="aot_eager")
    def f(anchors, gt, counts, labels):
        matched = focalops.assign(anchors, gt, counts)
        return focalops.retinanet_targets(matched, gt, labels, anchors)

    out = f(anchors, gt, counts, labels)
    ref = reference.retinanet_targets(reference.assign(anchors, gt, counts), gt, labels, anchors)
    for a, b in zip(out, ref):
        torch.testing.assert_close(a, b)


@needs_cuda
def test_assign_cuda_identical_to_cpu():
    anchors, gt, _ = make_batch(4, 300, 0, 7, scale=64.0)
    counts = torch.tensor([300, 0, 17, 250])
    cpu = focalops.assign(anchors, gt, counts)
    cuda = focalops.assign(anchors.to(GPU), gt.to(GPU), counts.to(GPU))
    assert torch.equal(cpu, cuda.cpu())


@needs_cuda
def test_cuda_kernels_registered():
    for op in (
        "assign",
        "box_iou",
        "encode_boxes",
        "decode_boxes",
        "_decode_boxes_backward",
        "retinanet_targets",
    ):
        key = "CUDA" if GPU == "cuda" else "PrivateUse1"
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"focalops::{op}", key), op


# --- CUDA: block and tile boundaries, device-side asserts -----------------------------------------


@needs_cuda
@pytest.mark.parametrize("A", [1023, 1024, 1025, 2049, 12_345])
def test_cuda_assign_across_block_and_tile_boundaries(A):
    """A block of the best-IoU kernel holds 1,024 anchors (256 threads x 4) and stages boxes in
    tiles of 1,024: anchor counts around those, 1,500 boxes, exact IoU ties at the edges."""
    anchors = focalops.AnchorGenerator().for_image_size(512, 512)[0][:A].contiguous()
    g = torch.Generator().manual_seed(A)
    G = 1500
    xy = torch.rand(3, G, 2, generator=g) * 400
    gt = torch.cat([xy, xy + 8 + torch.rand(3, G, 2, generator=g) * 120], -1)
    gt[0, 5] = anchors[A - 1]  # IoU 1 with the last anchor of the last block
    gt[0, 1024] = anchors[min(1024, A - 1)]  # first box of the second tile
    gt[2, 1099] = anchors[0]  # last counted box of image 2
    gt[2, 1100] = anchors[1]  # padding: never matched
    counts = torch.tensor([G, 0, 1100])
    labels = torch.randint(0, 80, (3, G), generator=g)
    for low_quality in (True, False):
        cpu = focalops.assign(anchors, gt, counts, allow_low_quality=low_quality)
        cuda = focalops.assign(anchors.to(GPU), gt.to(GPU), counts.to(GPU), allow_low_quality=low_quality)
        assert torch.equal(cpu, cuda.cpu())
    assert cpu[0, A - 1] == 5 and cpu[2, 0] == 1099 and (cpu[2] != 1100).all() and (cpu[1] == -1).all()
    want = focalops.retinanet_targets(cpu, gt, labels, anchors)
    got = focalops.retinanet_targets(cuda, gt.to(GPU), labels.to(GPU), anchors.to(GPU))
    for a, b in zip(got, want):
        torch.testing.assert_close(a.cpu(), b, rtol=1e-6, atol=1e-6)


_ASSERT_SETUP = (
    "a = focalops.AnchorGenerator().for_image_size(256, 256, device='{dev}')[0].clone()\n"
    "gt = torch.tensor([[[0.0, 0, 50, 50], [10, 10, 90, 90], [5, 5, 20, 30], [100, 100, 200, 180]]], device='{dev}')\n"
    "c = torch.tensor([4], device='{dev}')\n"
)
_ASSERT_CASES = {
    "valid": "focalops.assign(a, gt, c)",
    "count_above_G": "focalops.assign(a, gt, torch.tensor([5], device='{dev}'))",
    "negative_count": "focalops.assign(a, gt, torch.tensor([-1], device='{dev}'))",
    "nan_anchor_in_second_block": "a[1500, 2] = float('nan')\nfocalops.assign(a, gt, c)",
    "nan_gt_box": "gt[0, 1, 0] = float('nan')\nfocalops.assign(a, gt, c)",
    "matched_out_of_range": (
        "m = torch.full((1, a.shape[0]), 4, device='{dev}')\n"
        "focalops.retinanet_targets(m, gt, torch.zeros(1, 4, dtype=torch.long, device='{dev}'), a)"
    ),
}


@needs_cuda
@pytest.mark.parametrize("case", sorted(_ASSERT_CASES))
def test_cuda_bad_values_are_device_asserts(case):
    """Checks of data on the GPU are device-side asserts (no host synchronisation)."""
    finished, out = run_device_code(_ASSERT_SETUP + _ASSERT_CASES[case])
    if case == "valid":
        assert finished, out
    else:
        assert not finished and "assert" in out.lower(), out
