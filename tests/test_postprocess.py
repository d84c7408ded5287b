import math

import pytest
import torch
from conftest import EMULATED, GPU, needs_cuda, needs_real_gpu

import focalops
from focalops import reference


def make_inputs(
    num_images=2, level_sizes=(300, 80, 20), num_classes=6, seed=0, lo=-5.0, hi=1.0, sizes=None, device="cpu"
):
    """Inputs whose scores are distinct within every (image, level) segment.

    torchvision's top-k leaves the order of exactly tied scores unspecified, so agreement tests
    use logits that are a permutation of evenly spaced values (their sigmoids are distinct).
    """
    g = torch.Generator().manual_seed(seed)
    num_anchors = sum(level_sizes)
    n = num_anchors * num_classes
    logits = torch.stack([torch.linspace(lo, hi, n)[torch.randperm(n, generator=g)] for _ in range(num_images)])
    logits = logits.reshape(num_images, num_anchors, num_classes)
    xy = torch.rand(num_anchors, 2, generator=g) * 200
    anchors = torch.cat([xy, xy + 8 + torch.rand(num_anchors, 2, generator=g) * 60], 1)
    deltas = torch.randn(num_images, num_anchors, 4, generator=g) * 0.5
    deltas[:, :5, 2:] = 6.0  # beyond the log(1000 / 16) clamp
    if sizes is None:
        sizes = [[150 + 40 * b, 260 - 30 * b] for b in range(num_images)]
    image_sizes = torch.tensor(sizes, dtype=torch.float32)
    for seg in torch.split(torch.sigmoid(logits), list(level_sizes), dim=1):
        for img in seg:
            assert img.flatten().unique().numel() == img.numel()
    return [t.to(device) for t in (logits, deltas, anchors)] + [list(level_sizes), image_sizes.to(device)]


def assert_matches(got, want):
    boxes, scores, labels, counts = got
    rboxes, rscores, rlabels, rcounts = want
    assert torch.equal(counts.cpu(), rcounts) and torch.equal(labels.cpu(), rlabels)
    # torch's vectorised exp / sigmoid and libm may differ by an ulp: boxes and scores to ~2 ulp.
    torch.testing.assert_close(boxes.cpu(), rboxes, rtol=3e-7, atol=1e-5)
    torch.testing.assert_close(scores.cpu(), rscores, rtol=3e-7, atol=0)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize(
    "score_thresh, topk, nms_thresh, dets", [(0.05, 1000, 0.5, 100), (0.2, 50, 0.3, 40), (0.0, 30, 0.7, 500)]
)
def test_matches_reference(device, seed, score_thresh, topk, nms_thresh, dets):
    args = make_inputs(seed=seed, device=device)
    got = focalops.postprocess(*args, score_thresh, topk, nms_thresh, dets)
    want = reference.postprocess(
        *[a.cpu() if torch.is_tensor(a) else a for a in args], score_thresh, topk, nms_thresh, dets
    )
    assert_matches(got, want)
    assert got[0].shape == (2, dets, 4) and got[2].dtype == torch.int64


def test_padding_and_counts(device):
    args = make_inputs(num_images=3, device=device)
    boxes, scores, labels, counts = focalops.postprocess(*args, topk_candidates=5, detections_per_img=200)
    assert (counts <= 15).all()
    for b in range(3):
        c = int(counts[b])
        assert (labels[b, c:] == -1).all() and (scores[b, c:] == 0).all() and (boxes[b, c:] == 0).all()
        assert (scores[b, : c - 1] >= scores[b, 1:c]).all()


def test_all_below_threshold(device):
    logits, deltas, anchors, ls, sizes = make_inputs(device=device)
    out = focalops.postprocess(logits - 20, deltas, anchors, ls, sizes)
    assert out[3].tolist() == [0, 0] and (out[2] == -1).all()


@pytest.mark.parametrize("num_classes, level_sizes", [(1, (500, 120, 30)), (1000, (12, 5, 3))])
def test_class_counts(device, num_classes, level_sizes):
    args = make_inputs(num_classes=num_classes, level_sizes=level_sizes, lo=-4.0, hi=3.0, device=device)
    want = reference.postprocess(*[a.cpu() if torch.is_tensor(a) else a for a in args], 0.05, 200, 0.5, 100)
    assert_matches(focalops.postprocess(*args, 0.05, 200, 0.5, 100), want)


def test_images_of_different_sizes_are_clipped(device):
    args = make_inputs(num_images=3, sizes=[[40, 300], [300, 40], [1000, 1000]], device=device)
    boxes, _, _, counts = focalops.postprocess(*args)
    for b, (h, w) in enumerate([[40, 300], [300, 40], [1000, 1000]]):
        bx = boxes[b, : counts[b]]
        assert (bx >= 0).all() and (bx[:, 0::2] <= w).all() and (bx[:, 1::2] <= h).all()
    want = reference.postprocess(*[a.cpu() if torch.is_tensor(a) else a for a in args])
    assert_matches(focalops.postprocess(*args), want)


def test_float64(device):
    args = make_inputs(device=device)
    args = [a.double() if torch.is_tensor(a) else a for a in args]
    got = focalops.postprocess(*args)
    want = reference.postprocess(*[a.cpu() if torch.is_tensor(a) else a for a in args])
    assert got[0].dtype == torch.float64
    assert torch.equal(got[2].cpu(), want[2]) and torch.equal(got[3].cpu(), want[3])
    torch.testing.assert_close(got[0].cpu(), want[0], rtol=1e-14, atol=1e-12)
    torch.testing.assert_close(got[1].cpu(), want[1], rtol=1e-15, atol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_logits(device, dtype):
    # Half logits are read as they are; the math is float32 (the reference upcasts first).
    logits, deltas, anchors, ls, sizes = make_inputs(device=device)
    logits = logits.to(dtype)
    # topk_candidates above the level sizes: no top-k boundary among the (many) tied half values.
    got = focalops.postprocess(logits, deltas, anchors, ls, sizes, 0.05, 10**5, 0.5, 100)
    assert got[0].dtype == torch.float32
    # Half logits tie; check the documented semantics on the float32 values instead.
    want = focalops.postprocess(logits.float(), deltas, anchors, ls, sizes, 0.05, 10**5, 0.5, 100)
    for a, b in zip(got, want):
        assert torch.equal(a, b)


def test_ties_lower_flat_index_first(device):
    # Equal logits everywhere, far-apart anchors: the order is anchor * K + class.
    anchors = torch.tensor([[0, 0, 10, 10], [100, 100, 110, 110], [200, 0, 210, 10]], dtype=torch.float32)
    logits = torch.zeros(1, 3, 2)
    deltas = torch.zeros(1, 3, 4)
    sizes = torch.tensor([[1000.0, 1000.0]])
    args = [t.to(device) for t in (logits, deltas, anchors)]
    boxes, scores, labels, counts = focalops.postprocess(*args, [2, 1], sizes.to(device), 0.05, 1000, 0.5, 10)
    assert counts.tolist() == [6] and labels[0, :6].tolist() == [0, 1, 0, 1, 0, 1]
    assert boxes[0, :6, 0].tolist() == [0, 0, 100, 100, 200, 200]
    if device != "cpu":
        return  # CUDA's top-k picks among logits tied at the top-k boundary in no defined order
    # Top-k at a tie keeps the lower flat indices of the level.
    _, _, labels, counts = focalops.postprocess(*args, [2, 1], sizes.to(device), 0.05, 3, 0.5, 10)
    assert counts.tolist() == [5] and labels[0, :5].tolist() == [0, 1, 0, 0, 1]


def test_empty_shapes(device):
    logits, deltas, anchors, _, sizes = make_inputs(device=device)
    out = focalops.postprocess(logits[:, :0], deltas[:, :0], anchors[:0], [0, 0], sizes)
    assert out[0].shape == (2, 100, 4) and out[3].tolist() == [0, 0]
    out = focalops.postprocess(logits[:0], deltas[:0], anchors, [300, 80, 20], sizes[:0], detections_per_img=0)
    assert out[0].shape == (0, 0, 4) and out[3].shape == (0,)


def test_opcheck(device):
    logits, deltas, anchors, ls, sizes = make_inputs(level_sizes=(40, 10), device=device)
    torch.library.opcheck(
        torch.ops.focalops.postprocess.default, (logits, deltas, anchors, ls, sizes, 0.05, 20, 0.5, 30)
    )


def test_compile_fullgraph(device):
    args = make_inputs(level_sizes=(40, 10), device=device)
    compiled = torch.compile(focalops.postprocess, fullgraph=True, backend="aot_eager")
    for got, want in zip(compiled(*args), focalops.postprocess(*args)):
        assert torch.equal(got, want)


@needs_cuda
def test_cuda_matches_cpu_without_sync():
    args = make_inputs(num_images=4, level_sizes=(900, 200, 50), num_classes=20, seed=5)
    cpu = focalops.postprocess(*args)
    cuda_args = [a.to(GPU) if torch.is_tensor(a) else a for a in args]
    focalops.postprocess(*cuda_args)  # warm-up (allocator, lazy init)
    if EMULATED:  # (a host round trip is only visible on a GPU)
        out = focalops.postprocess(*cuda_args)
    else:
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            out = focalops.postprocess(*cuda_args)
        finally:
            torch.cuda.set_sync_debug_mode(0)
    assert torch.equal(out[2].cpu(), cpu[2]) and torch.equal(out[3].cpu(), cpu[3])
    torch.testing.assert_close(out[0].cpu(), cpu[0], rtol=3e-7, atol=1e-5)
    torch.testing.assert_close(out[1].cpu(), cpu[1], rtol=3e-7, atol=0)


@pytest.mark.parametrize(
    "change, exc, match",
    [
        ({"cls_logits": torch.zeros(2, 400)}, ValueError, r"cls_logits must be \[B, A, K\]"),
        ({"box_deltas": torch.zeros(2, 400, 3)}, ValueError, r"box_deltas must be \[B, A, 4\]"),
        ({"anchors": torch.zeros(399, 4)}, ValueError, r"anchors must be \[A, 4\]"),
        ({"image_sizes": torch.zeros(3, 2)}, ValueError, r"image_sizes must be \[B, 2\]"),
        ({"level_sizes": [300, 80]}, ValueError, "level_sizes must be >= 0 and sum to A"),
        ({"cls_logits": torch.zeros(2, 400, 6, dtype=torch.int64)}, TypeError, "cls_logits must be float"),
        ({"score_thresh": -0.1}, ValueError, "score_thresh"),
        ({"nms_thresh": -0.5}, ValueError, "nms_thresh"),
        ({"nms_thresh": -0.5}, ValueError, r"nms_thresh must be in \[0, 1\], got -0.5"),
        ({"score_thresh": -0.5}, ValueError, r"score_thresh must be in \[0, 1\], got -0.5"),
        ({"level_sizes": [2**63 - 1, 2**63 - 1, 402]}, ValueError, "level_sizes must be >= 0 and sum to A"),
        ({"topk_candidates": 0}, ValueError, "topk_candidates"),
        ({"detections_per_img": -1}, ValueError, "detections_per_img"),
    ],
)
def test_bad_input(change, exc, match):
    logits, deltas, anchors, ls, sizes = make_inputs()
    kwargs = dict(cls_logits=logits, box_deltas=deltas, anchors=anchors, level_sizes=ls, image_sizes=sizes)
    kwargs.update(change)
    with pytest.raises(exc, match=match):
        focalops.postprocess(**kwargs)


def test_nan_rejected_on_cpu():
    logits, deltas, anchors, ls, sizes = make_inputs()
    with pytest.raises(RuntimeError, match="cls_logits contains NaN"):
        focalops.postprocess(logits.index_fill(1, torch.tensor([390]), math.nan), deltas, anchors, ls, sizes)
    with pytest.raises(RuntimeError, match="box_deltas contains NaN"):
        focalops.postprocess(logits, deltas.index_fill(1, torch.tensor([3]), math.nan), anchors, ls, sizes)


def test_non_finite_deltas_anchors_and_bad_image_sizes_rejected_on_cpu():
    logits, deltas, anchors, ls, sizes = make_inputs()
    for v in (math.inf, -math.inf):
        with pytest.raises(RuntimeError, match="box_deltas contains NaN or inf"):
            focalops.postprocess(logits, deltas.index_fill(1, torch.tensor([3]), v), anchors, ls, sizes)
    for v in (math.nan, math.inf):
        with pytest.raises(RuntimeError, match="anchors contain NaN or inf"):
            focalops.postprocess(logits, deltas, anchors.index_fill(0, torch.tensor([399]), v), ls, sizes)
    # rows no candidate reads are not checked (nor read): the result is the finite one's
    quiet = logits.index_fill(1, torch.tensor([3, 399]), -10.0)  # scores below the threshold
    want = focalops.postprocess(quiet, deltas, anchors, ls, sizes)
    got = focalops.postprocess(
        quiet,
        deltas.index_fill(1, torch.tensor([3]), math.nan),
        anchors.index_fill(0, torch.tensor([399]), math.inf),
        ls,
        sizes,
    )
    for g, w in zip(got, want):
        assert torch.equal(g, w)
    for v, text in ((-10.0, "-10"), (math.nan, "nan"), (math.inf, "inf")):
        bad = sizes.clone()
        bad[1, 1] = v
        with pytest.raises(RuntimeError, match=rf"image_sizes must be >= 0 and finite, got {text} for image 1"):
            focalops.postprocess(logits, deltas, anchors, ls, bad)
    with pytest.raises(RuntimeError, match=r"image_sizes must be >= 0 and finite, got -1 for image 0"):
        focalops.postprocess(logits, deltas, anchors, ls, torch.tensor([[-1, 5], [5, 5]]))  # int64, as the model


def test_cpp_checks():
    logits, deltas, anchors, ls, sizes = make_inputs()
    with pytest.raises(RuntimeError, match="level_sizes must be >= 0 and sum to A"):
        torch.ops.focalops.postprocess(logits, deltas, anchors, [1, 2], sizes, 0.05, 10, 0.5, 10)
    # The reproducer: the sizes wrap around to A in int64; the op then read out of bounds.
    c, d, a = torch.zeros(1, 5, 2), torch.zeros(1, 5, 4), torch.zeros(5, 4)
    with pytest.raises(RuntimeError, match="level_sizes must be >= 0 and sum to A = 5"):
        torch.ops.focalops.postprocess(c, d, a, [2**63 - 1, 2**63 - 1, 7], torch.ones(1, 2), 0.05, 1000, 0.5, 100)
    for name, value in (("score_thresh", 1.5), ("nms_thresh", math.nan)):
        args = {"score_thresh": 0.05, "nms_thresh": 0.5, name: value}
        with pytest.raises(RuntimeError, match=rf"{name} must be in \[0, 1\]"):
            torch.ops.focalops.postprocess(
                logits, deltas, anchors, ls, sizes, args["score_thresh"], 10, args["nms_thresh"], 10
            )
    with pytest.raises(RuntimeError, match="box_deltas, anchors and image_sizes must be"):
        torch.ops.focalops.postprocess(logits, deltas.double(), anchors, ls, sizes, 0.05, 10, 0.5, 10)


# --- CUDA: RetinaNet size and the tiled NMS bitmask ----------------------------------------------


def retinanet_size_inputs(num_images=2, num_classes=80, seed=0, device="cpu"):
    """A 640 x 1024 input: 122,760 anchors x 80 classes. Each (image, level) has 1,200 candidate
    logits (evenly spaced, so scores are distinct far beyond an ulp) at random (anchor, class)
    positions over a background below the threshold: M = 5 x 1,000 candidates per image."""
    feature_sizes = [(80, 128), (40, 64), (20, 32), (10, 16), (5, 8)]
    anchors, level_sizes = focalops.AnchorGenerator()(feature_sizes)
    num_anchors = anchors.shape[0]
    g = torch.Generator().manual_seed(seed)
    logits = torch.full((num_images, num_anchors, num_classes), -8.0)
    start = 0
    for level, n in enumerate(level_sizes):
        for b in range(num_images):
            pos = torch.randperm(n * num_classes, generator=g)[:1200]
            vals = torch.linspace(-2.0, 6.0, 1200)[torch.randperm(1200, generator=g)] + 1e-3 * level
            logits[b, start : start + n].view(-1)[pos] = vals
        start += n
    deltas = torch.randn(num_images, num_anchors, 4, generator=g) * 0.2
    sizes = torch.tensor([[640.0, 1024.0]] * num_images)
    return [t.to(device) for t in (logits, deltas, anchors)] + [level_sizes, sizes.to(device)]


@needs_cuda
def test_cuda_retinanet_size_matches_cpu(monkeypatch):
    args = retinanet_size_inputs()
    assert args[0].shape == (2, 122_760, 80) and sum(min(1000, n * 80) for n in args[3]) == 5000
    want = focalops.postprocess(*args, 0.05, 1000, 0.5, 300)
    assert (want[3] > 0).all()
    cuda_args = [a.to(GPU) if torch.is_tensor(a) else a for a in args]
    got = focalops.postprocess(*cuda_args, 0.05, 1000, 0.5, 300)
    assert_matches(got, want)
    # Tiles of 32 column blocks (1 MiB for both images) give the same detections, bit for bit.
    monkeypatch.setenv("FOCALOPS_NMS_TILE_BYTES", str(1 << 20))
    for a, b in zip(focalops.postprocess(*cuda_args, 0.05, 1000, 0.5, 300), got):
        assert torch.equal(a, b)


@needs_cuda
@pytest.mark.parametrize(
    "score_thresh, topk, nms_thresh, dets",
    [(0.05, 1000, 0.5, 100), (0.2, 50, 0.3, 40), (0.0, 30, 0.7, 500), (0.6, 1000, 0.5, 1000), (0.05, 1000, 0.5, 5)],
)
def test_cuda_tiled_nms_matches_reference(monkeypatch, score_thresh, topk, nms_thresh, dets):
    """A 16 KiB budget: tiles of 3 column blocks over 3 images; detections_per_img reached in an
    early tile, padding (scores below the threshold) reached mid-tile, or neither."""
    args = make_inputs(num_images=3, seed=1, device=GPU)
    want = reference.postprocess(
        *[a.cpu() if torch.is_tensor(a) else a for a in args], score_thresh, topk, nms_thresh, dets
    )
    whole = focalops.postprocess(*args, score_thresh, topk, nms_thresh, dets)
    monkeypatch.setenv("FOCALOPS_NMS_TILE_BYTES", str(16 << 10))
    got = focalops.postprocess(*args, score_thresh, topk, nms_thresh, dets)
    assert_matches(got, want)
    for a, b in zip(got, whole):
        assert torch.equal(a, b)


@needs_real_gpu
def test_cuda_shared_memory_opt_in_at_390k_candidates(monkeypatch):
    """390,000 candidates of one image, untiled: 48,752 B of removed-words in dynamic shared
    memory plus the kernel's static shared memory, past the 48 KiB a launch gets without the
    kernel's opt-in (launch_postprocess_nms opts in). The untiled mask is 19 GB: GPU only."""
    if torch.cuda.mem_get_info()[0] < 24 * (1 << 30):
        pytest.skip("needs 24 GB of free GPU memory")
    monkeypatch.setenv("FOCALOPS_NMS_TILE_BYTES", str(1 << 36))
    g = torch.Generator().manual_seed(0)
    level_sizes = [78_000] * 5
    A = sum(level_sizes)
    anchors = torch.rand(A, 2, generator=g) * 900
    anchors = torch.cat([anchors, anchors + 16 + torch.rand(A, 2, generator=g) * 64], 1)
    logits = torch.randn(1, A, 1, generator=g) * 3
    deltas = torch.randn(1, A, 4, generator=g) * 0.1
    sizes = torch.tensor([[1000.0, 1000.0]])
    args = [logits, deltas, anchors, level_sizes, sizes, 0.0, 78_000, 0.5, 100]
    want = focalops.postprocess(*args)
    got = focalops.postprocess(*[a.to(GPU) if torch.is_tensor(a) else a for a in args])
    assert_matches(got, want)
