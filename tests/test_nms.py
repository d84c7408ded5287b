import math
import os

import pytest
import torch
from conftest import EMULATED, GPU, needs_cuda, needs_real_gpu
from hypothesis import given, settings
from hypothesis import strategies as st

import focalops
from focalops import reference

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def random_boxes(n, seed, size=100.0, dtype=torch.float32, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * size
    wh = torch.rand(n, 2, generator=g) * size * 0.3
    return torch.cat([xy, xy + wh], 1).to(dtype=dtype, device=device)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("thr", [0.0, 0.3, 0.5, 0.9])
def test_nms_matches_reference(device, seed, thr):
    boxes = random_boxes(400, seed, device=device)
    scores = torch.rand(400, generator=torch.Generator().manual_seed(seed + 7)).to(device)
    keep = focalops.nms(boxes, scores, thr)
    assert keep.dtype == torch.int64 and keep.device.type == device
    torch.testing.assert_close(keep.cpu(), reference.nms(boxes.cpu(), scores.cpu(), thr), rtol=0, atol=0)


@pytest.mark.parametrize("thr", [0.0, 0.5])
def test_many_boxes_mixed_sizes(device, thr):
    # Enough boxes for the CPU's grid path: tiny, typical, huge, zero-area and duplicate boxes.
    g = torch.Generator().manual_seed(3)
    n = 3000
    ctr = torch.rand(n, 2, generator=g) * 2000
    side = torch.rand(n, 2, generator=g) * 60 * (1 + 30 * (torch.rand(n, 1, generator=g) < 0.02))
    side[::97] = 0
    boxes = torch.cat([ctr - side / 2, ctr + side / 2], 1)
    boxes[1::50] = boxes[::50][: boxes[1::50].shape[0]]
    scores = torch.rand(n, generator=g)
    keep = focalops.nms(boxes.to(device), scores.to(device), thr)
    torch.testing.assert_close(keep.cpu(), reference.nms(boxes, scores, thr), rtol=0, atol=0)


def test_many_boxes_infinite_coordinates():
    boxes = random_boxes(2500, 4)
    boxes[7, 2] = float("inf")
    scores = torch.rand(2500, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(focalops.nms(boxes, scores, 0.5), reference.nms(boxes, scores, 0.5), rtol=0, atol=0)


@pytest.mark.parametrize("num_classes", [1, 5, 1000, 10**6])
@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("offset", [0, -500, 2**50])  # class ids: 0-based, negative, huge
def test_batched_nms_matches_reference(device, num_classes, seed, offset):
    # Up to 1000 classes the CPU groups by counting; 10**6 classes spread wider than that.
    n = 600
    boxes = random_boxes(n, seed, device=device)
    g = torch.Generator().manual_seed(seed + 11)
    scores = torch.rand(n, generator=g).to(device)
    idxs = (torch.randint(0, num_classes, (n,), generator=g) + offset).to(device)
    keep = focalops.batched_nms(boxes, scores, idxs, 0.4)
    expected = reference.batched_nms(boxes.cpu(), scores.cpu(), idxs.cpu(), 0.4)
    torch.testing.assert_close(keep.cpu(), expected, rtol=0, atol=0)


def test_batched_nms_classes_never_suppress_each_other(device):
    # Identical boxes in huge, negative and sparse categories: one survivor per category.
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0]] * 6, device=device)
    scores = torch.tensor([0.1, 0.9, 0.5, 0.7, 0.3, 0.2], device=device)
    idxs = torch.tensor([2**40, -3, 2**40, 7, -3, 7], device=device)
    assert focalops.batched_nms(boxes, scores, idxs, 0.5).tolist() == [1, 3, 2]


def test_tied_scores_lower_index_first(device):
    boxes = random_boxes(300, 3, device=device)
    scores = torch.randint(0, 4, (300,), generator=torch.Generator().manual_seed(0)).float().to(device)
    keep = focalops.nms(boxes, scores, 0.2)
    torch.testing.assert_close(keep.cpu(), reference.nms(boxes.cpu(), scores.cpu(), 0.2), rtol=0, atol=0)
    s = scores[keep].cpu()
    k = keep.cpu()
    assert all(s[i] > s[i + 1] or (s[i] == s[i + 1] and k[i] < k[i + 1]) for i in range(len(k) - 1))


def test_identical_and_zero_area_boxes(device):
    boxes = torch.tensor(
        [[0, 0, 10, 10], [0, 0, 10, 10], [5, 5, 5, 5], [5, 5, 5, 5], [0, 0, 10, 10], [20, 20, 20, 30]],
        dtype=torch.float32,
        device=device,
    )
    scores = torch.tensor([0.5, 0.9, 0.8, 0.8, 0.9, 0.1], device=device)
    # Identical boxes (IoU 1) suppress each other; zero-area boxes have IoU 0 with everything.
    assert focalops.nms(boxes, scores, 0.5).tolist() == [1, 2, 3, 5]
    # Threshold 1: IoU > 1 never holds, everything is kept.
    assert focalops.nms(boxes, scores, 1.0).tolist() == [1, 4, 2, 3, 0, 5]


@pytest.mark.parametrize("n", [0, 1])
def test_empty_and_single(device, n):
    boxes = random_boxes(n, 0, device=device)
    scores = torch.rand(n).to(device)
    assert focalops.nms(boxes, scores, 0.5).tolist() == list(range(n))
    assert focalops.batched_nms(boxes, scores, torch.zeros(n, dtype=torch.int64, device=device), 0.5).tolist() == list(
        range(n)
    )


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_dtypes(device, dtype):
    # Boxes go to float32 for the IoU (exact for these coordinates); scores keep their order.
    boxes = (random_boxes(200, 1) * 4).round().to(dtype=dtype, device=device)
    scores = torch.randperm(200, generator=torch.Generator().manual_seed(1)).to(dtype=dtype, device=device)
    keep = focalops.nms(boxes, scores, 0.3)
    torch.testing.assert_close(keep.cpu(), reference.nms(boxes.float().cpu(), scores.cpu(), 0.3), rtol=0, atol=0)


def test_non_contiguous(device):
    boxes = random_boxes(200, 2, device=device).t().contiguous().t()
    scores = torch.rand(400).to(device)[::2]
    assert not boxes.is_contiguous() and not scores.is_contiguous()
    torch.testing.assert_close(
        focalops.nms(boxes, scores, 0.3).cpu(), reference.nms(boxes.cpu(), scores.cpu(), 0.3), rtol=0, atol=0
    )


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(0, 60),
    num_classes=st.integers(1, 4),
    thr=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**16),
    grid=st.booleans(),
)
def test_property_matches_reference(n, num_classes, thr, seed, grid):
    boxes = random_boxes(n, seed, size=20.0)
    if grid:  # coordinates on a grid: identical, touching and zero-area boxes are common
        boxes = boxes.round()
    g = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, 5, (n,), generator=g).float()
    idxs = torch.randint(0, num_classes, (n,), generator=g)
    torch.testing.assert_close(
        focalops.batched_nms(boxes, scores, idxs, thr),
        reference.batched_nms(boxes, scores, idxs, thr),
        rtol=0,
        atol=0,
    )


def test_opcheck(device):
    boxes = random_boxes(50, 0, device=device)
    scores = torch.rand(50).to(device)
    idxs = torch.randint(0, 3, (50,)).to(device)
    torch.library.opcheck(torch.ops.focalops.nms.default, (boxes, scores, 0.5))
    torch.library.opcheck(torch.ops.focalops.batched_nms.default, (boxes, scores, idxs, 0.5))


def test_compile(device):
    boxes = random_boxes(80, 0, device=device)
    scores = torch.rand(80).to(device)
    idxs = torch.randint(0, 3, (80,)).to(device)

    def fn(b, s, i):
        keep = focalops.batched_nms(b, s, i, 0.5)
        return b[keep], s[keep]

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    for got, want in zip(compiled(boxes, scores, idxs), fn(boxes, scores, idxs)):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize(
    "boxes, scores, thr, exc, match",
    [
        (torch.zeros(3, 5), torch.zeros(3), 0.5, ValueError, r"boxes must be \[N, 4\]"),
        (torch.zeros(3, 4), torch.zeros(4), 0.5, ValueError, r"scores must be \[N\]"),
        (torch.zeros(3, 4), torch.zeros(3), -0.1, ValueError, "iou_threshold"),
        (torch.zeros(3, 4), torch.zeros(3), float("nan"), ValueError, "iou_threshold"),
        (torch.zeros(3, 4), torch.zeros(3), -1.5, ValueError, r"iou_threshold must be in \[0, 1\], got -1.5"),
        (torch.zeros(3, 4, dtype=torch.int64), torch.zeros(3), 0.5, TypeError, "boxes must be float"),
        ([[0, 0, 1, 1]], torch.zeros(1), 0.5, TypeError, "boxes must be a Tensor"),
    ],
)
def test_bad_input(boxes, scores, thr, exc, match):
    with pytest.raises(exc, match=match):
        focalops.nms(boxes, scores, thr)


def test_bad_idxs():
    boxes, scores = torch.zeros(3, 4), torch.zeros(3)
    with pytest.raises(ValueError, match=r"idxs must be \[N\]"):
        focalops.batched_nms(boxes, scores, torch.zeros(2, dtype=torch.int64), 0.5)
    with pytest.raises(TypeError, match="idxs must be a real or bool tensor"):
        focalops.batched_nms(boxes, scores, torch.zeros(3, dtype=torch.complex64), 0.5)


def test_nan_rejected_on_cpu():
    boxes, scores = random_boxes(4, 0), torch.rand(4)
    with pytest.raises(RuntimeError, match="boxes contain NaN"):
        focalops.nms(boxes.index_fill(0, torch.tensor([2]), float("nan")), scores, 0.5)
    with pytest.raises(RuntimeError, match="scores contain NaN"):
        focalops.nms(boxes, scores.index_fill(0, torch.tensor([1]), float("nan")), 0.5)


def test_cpp_checks_reject_bad_shapes():
    # The C++ entry checks stand on their own (torch.ops bypasses the Python wrapper).
    for thr in (-1.0, 1.5, math.nan):
        with pytest.raises(RuntimeError, match=r"nms: iou_threshold must be in \[0, 1\]"):
            torch.ops.focalops.nms(torch.zeros(2, 4), torch.zeros(2), thr)
        with pytest.raises(RuntimeError, match=r"batched_nms: iou_threshold must be in \[0, 1\]"):
            torch.ops.focalops.batched_nms(torch.zeros(2, 4), torch.zeros(2), torch.zeros(2, dtype=torch.long), thr)
    with pytest.raises(RuntimeError, match="idxs must be int64"):
        torch.ops.focalops.batched_nms(torch.zeros(2, 4), torch.zeros(2), torch.zeros(2, dtype=torch.int32), 0.5)


def test_cuda_kernels_registered():
    if torch.version.cuda is None or not focalops.has_cuda_kernels():
        pytest.skip("focalops was built without CUDA kernels")
    for op in ("nms", "batched_nms", "postprocess"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"focalops::{op}", "CUDA")


@pytest.mark.skipif(not EMULATED, reason="runs on the emulated CUDA device")
def test_emulated_kernels_registered():
    for op in ("nms", "batched_nms", "postprocess"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"focalops::{op}", "PrivateUse1")


# --- CUDA: large inputs and the tiled bitmask ---------------------------------------------------

def _crowd(n, seed, classes=None):
    """n boxes in a crowded scene (many overlaps at every threshold), distinct scores."""
    g = torch.Generator().manual_seed(seed)
    ctr = torch.rand(n, 2, generator=g) * 1500
    side = 10 + torch.rand(n, 2, generator=g) * 80
    boxes = torch.cat([ctr - side / 2, ctr + side / 2], 1)
    scores = torch.randperm(n, generator=g).float() / n
    idxs = None if classes is None else torch.randint(0, classes, (n,), generator=g)
    return boxes, scores, idxs


@needs_real_gpu  # (on the emulator: test_cuda_tiled_mask_matches_cpu, with a small tile budget)
@pytest.mark.parametrize("n", [20_000, 50_000])
def test_cuda_many_boxes_match_cpu(n):
    """> 16,384 boxes; 50,000 needs two mask tiles at the default 256 MiB budget."""
    boxes, scores, idxs = _crowd(n, 0, classes=20)
    for thr in (0.3, 0.7):
        want = focalops.nms(boxes, scores, thr)
        got = focalops.nms(boxes.cuda(), scores.cuda(), thr)
        assert torch.equal(got.cpu(), want)
        want = focalops.batched_nms(boxes, scores, idxs, thr)
        got = focalops.batched_nms(boxes.cuda(), scores.cuda(), idxs.cuda(), thr)
        assert torch.equal(got.cpu(), want)


@needs_cuda
@pytest.mark.parametrize("n", [1, 63, 64, 65, 1000, 3001])
def test_cuda_tiled_mask_matches_cpu(monkeypatch, n):
    """A 64 KiB tile budget splits the mask of a few thousand boxes into tiles of 11 blocks:
    boxes kept in earlier tiles suppress later ones without their mask ever being stored."""
    boxes, scores, idxs = _crowd(n, n, classes=3)
    scores[: n // 3] = scores[: n // 3].round()  # ties too: lower index first
    monkeypatch.setenv("FOCALOPS_NMS_TILE_BYTES", str(64 << 10))
    for thr in (0.0, 0.5):
        assert torch.equal(focalops.nms(boxes.to(GPU), scores.to(GPU), thr).cpu(), focalops.nms(boxes, scores, thr))
        assert torch.equal(
            focalops.batched_nms(boxes.to(GPU), scores.to(GPU), idxs.to(GPU), thr).cpu(),
            focalops.batched_nms(boxes, scores, idxs, thr),
        )


@needs_real_gpu
def test_cuda_mask_beyond_memory_is_a_clear_error(monkeypatch):
    """With the tile budget lifted, 2M boxes would need one 500 GB mask: the allocation failure
    says what it was for instead of a bare out-of-memory."""
    monkeypatch.setenv("FOCALOPS_NMS_TILE_BYTES", str(1 << 50))
    boxes, scores, _ = _crowd(2_000_000, 1)
    with pytest.raises(torch.cuda.OutOfMemoryError, match="NMS bitmask tile of 2000000 boxes"):
        focalops.nms(boxes.cuda(), scores.cuda(), 0.5)
    monkeypatch.setenv("FOCALOPS_NMS_TILE_BYTES", "lots")
    with pytest.raises(RuntimeError, match="FOCALOPS_NMS_TILE_BYTES must be a positive integer"):
        focalops.nms(boxes[:10].cuda(), scores[:10].cuda(), 0.5)
