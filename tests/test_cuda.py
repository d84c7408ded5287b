"""CUDA behaviour across ops: no host synchronisation (sync-debug mode), every op on a
non-default stream, CUDA-graph capture of post-processing and of a whole training step.

Every test here needs a GPU and skips without one. Op-specific CUDA tests (alignment, sizes,
device asserts) sit beside the op's other tests in tests/test_<op>.py.
"""

import warnings

import pytest
import torch

import focalops
from focalops.models import RetinaNet

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


class _SyncDebug:
    """torch.cuda.set_sync_debug_mode(mode) inside the block, "default" after it."""

    def __init__(self, mode):
        self.mode = mode

    def __enter__(self):
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode(self.mode)

    def __exit__(self, *exc):
        torch.cuda.set_sync_debug_mode("default")


def _tiny_model(num_classes=3):
    torch.manual_seed(0)
    return RetinaNet(num_classes, "resnet18", fpn_channels=32, head_convs=1).cuda()


def _targets(sizes, num_classes=3, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    targets = []
    for h, w in sizes:
        xy = torch.rand(4, 2, generator=g) * torch.tensor([w * 0.6, h * 0.6])
        wh = 8 + torch.rand(4, 2, generator=g) * torch.tensor([w * 0.4, h * 0.4])
        targets.append(
            {
                "boxes": torch.cat([xy, xy + wh], 1).to(device),
                "labels": torch.randint(0, num_classes, (4,), generator=g).to(device),
            }
        )
    return targets


def _images(sizes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(3, h, w, generator=g).cuda() for h, w in sizes]


# --- no host synchronisation ---------------------------------------------------------------------


def test_anchor_generator_never_syncs_for_new_sizes():
    gen = focalops.AnchorGenerator()
    sizes = [(128, 128), (96, 160), (800, 1088), (640, 1024), (64, 32)]
    with _SyncDebug("error"):
        got = [gen.for_image_size(h, w, device="cuda")[0] for h, w in sizes]
        cached = [gen.for_image_size(h, w, device="cuda")[0] for h, w in sizes]
    for (h, w), a, c in zip(sizes, got, cached):
        assert c is a
        assert torch.equal(a.cpu(), focalops.AnchorGenerator().for_image_size(h, w)[0])


def test_training_step_with_optimizer_never_syncs():
    model = _tiny_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    sizes = [(96, 128), (128, 80)]
    images, targets = _images(sizes), _targets(sizes)  # targets on the CPU, as a data loader gives them

    def step():
        losses = model(images, targets)
        loss = sum(losses.values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss

    step()  # warm-up: anchors cached, momentum buffers created
    with _SyncDebug("error"):
        loss = step()
    assert torch.isfinite(loss)


def test_eval_syncs_only_to_split_the_detections():
    """model.eval()(images) returns a list of per-image tensors, so it reads the detection counts
    back once; everything before (padding, image sizes, anchors for a new size, postprocess) is
    free of host synchronisation."""
    model = _tiny_model().eval()
    images = _images([(96, 128), (128, 80), (200, 136)])
    with torch.no_grad():
        model(images[:1])  # warm-up (cuDNN, allocator), at another size than below
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with _SyncDebug("warn"):
                detections = model(images)
    syncs = [w for w in caught if "synchronizing CUDA operation" in str(w.message)]
    assert len(syncs) == 1, [str(w.message) for w in syncs]
    assert len(detections) == 3 and all(d["boxes"].is_cuda for d in detections)


# --- every op on a non-default stream ------------------------------------------------------------


def _op_cases():
    """(name, inputs on the GPU, function of the inputs returning tensors)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 91, generator=g).cuda()
    labels = torch.randint(-2, 91, (300,), generator=g).cuda()
    soft = torch.rand(300, 91, generator=g).cuda()
    anchors, level_sizes = focalops.AnchorGenerator()([(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)])
    anchors = anchors.cuda()
    A = anchors.shape[0]
    xy = torch.rand(2, 7, 2, generator=g) * 80
    gt = torch.cat([xy, xy + 8 + torch.rand(2, 7, 2, generator=g) * 40], -1).cuda()
    counts = torch.tensor([7, 3]).cuda()
    gt_labels = torch.randint(0, 5, (2, 7), generator=g).cuda()
    deltas = (torch.randn(2, A, 4, generator=g) * 0.3).cuda()
    boxes = torch.cat([xy.view(-1, 2), xy.view(-1, 2) + 20], 1).repeat(30, 1).cuda()
    boxes = boxes + torch.rand(boxes.shape, generator=g).cuda() * 10
    scores = torch.rand(boxes.shape[0], generator=g).cuda()
    idxs = torch.randint(0, 3, (boxes.shape[0],), generator=g).cuda()
    logits = (torch.randn(2, A, 5, generator=g) * 3).cuda()
    image_sizes = torch.tensor([[128.0, 128.0], [100.0, 120.0]]).cuda()

    def focal(x, targets, reduction):
        x = x.requires_grad_()
        loss = focalops.sigmoid_focal_loss(x, targets, reduction=reduction)
        (grad,) = torch.autograd.grad(loss, x, torch.ones_like(loss))
        return loss.detach(), grad

    def decode(d, a):
        d = d.requires_grad_()
        out = focalops.decode_boxes(d, a)
        (grad,) = torch.autograd.grad(out.sum(), d)
        return out.detach(), grad

    def targets(a, gt, counts, gt_labels):
        return focalops.retinanet_targets(focalops.assign(a, gt, counts), gt, gt_labels, a)

    return [
        ("focal_loss_sum", (x, labels), lambda x, t: focal(x, t, "sum")),
        ("focal_loss_none", (x, soft), lambda x, t: focal(x, t, "none")),
        ("box_iou", (anchors, gt[0]), focalops.box_iou),
        ("assign", (anchors, gt, counts), focalops.assign),
        ("retinanet_targets", (anchors, gt, counts, gt_labels), targets),
        ("encode_boxes", (gt[0], anchors[:7]), focalops.encode_boxes),
        ("decode_boxes", (deltas, anchors), decode),
        ("nms", (boxes, scores), lambda b, s: focalops.nms(b, s, 0.5)),
        ("batched_nms", (boxes, scores, idxs), lambda b, s, i: focalops.batched_nms(b, s, i, 0.5)),
        (
            "postprocess",
            (logits, deltas, anchors, image_sizes),
            lambda lg, d, a, s: focalops.postprocess(lg, d, a, level_sizes, s, 0.05, 100, 0.5, 50),
        ),
    ]


def _as_tuple(out):
    return out if isinstance(out, (tuple, list)) else (out,)


_OPS = [
    "focal_loss_sum",
    "focal_loss_none",
    "box_iou",
    "assign",
    "retinanet_targets",
    "encode_boxes",
    "decode_boxes",
    "nms",
    "batched_nms",
    "postprocess",
]


@pytest.mark.parametrize("op", _OPS)
def test_every_op_runs_on_the_current_stream(op):
    """Inputs are produced on a side stream after a ~20 ms GPU sleep; an op that launched on
    another stream than the current one would read them before they exist."""
    cases = _op_cases()
    assert [c[0] for c in cases] == _OPS
    name, inputs, fn = cases[_OPS.index(op)]
    want = [t.clone() for t in _as_tuple(fn(*[t.clone() for t in inputs]))]
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        torch.cuda._sleep(40_000_000)
        fresh = [t.clone() for t in inputs]  # written on the side stream, after the sleep
        got = _as_tuple(fn(*fresh))
    torch.cuda.current_stream().wait_stream(side)
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert torch.equal(a, b), name


# --- CUDA graphs -------------------------------------------------------------------------------


def test_postprocess_captured_in_a_cuda_graph():
    cases = _op_cases()
    _, (logits, deltas, anchors, sizes), fn = cases[-1]
    static = [t.clone() for t in (logits, deltas, anchors, sizes)]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):  # warm-up outside the capture (lazy initialisation, allocator)
            fn(*static)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outs = fn(*static)
    for new_logits in (logits, logits.flip(1), logits * 0.5 - 1):
        static[0].copy_(new_logits)
        graph.replay()
        want = fn(new_logits, deltas, anchors, sizes)
        for a, b in zip(outs, want):
            assert torch.equal(a, b)


def test_training_step_captured_in_a_cuda_graph():
    """Forward (backbone, FPN, heads, anchors, assignment, targets, focal and L1 losses), backward
    and an SGD step, captured once; replays from the same state give the same loss and weights,
    and match the eager step."""
    cudnn = torch.backends.cudnn
    saved = cudnn.deterministic, cudnn.benchmark
    cudnn.deterministic, cudnn.benchmark = True, False
    try:
        model = _tiny_model()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        sizes = [(128, 128), (128, 128)]
        batch, _ = model._batch_images(_images(sizes))
        gt = model._pad_targets(_targets(sizes, device="cuda"), len(sizes), batch.device)

        def step():
            features = model.fpn(model.backbone(batch))
            cls_logits = model.classification_head(features)
            box_deltas = model.regression_head(features)
            anchors, _ = model._anchors(features)
            losses = model.compute_loss(cls_logits, box_deltas, anchors, *gt)
            loss = losses["classification"] + losses["bbox_regression"]
            loss.backward()
            optimizer.step()
            return loss.detach()

        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                optimizer.zero_grad(set_to_none=True)
                step()
        torch.cuda.current_stream().wait_stream(side)
        optimizer.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_loss = step()

        params = list(model.parameters())
        state = [t.detach().clone() for t in params + list(model.buffers())]
        momenta = {p: optimizer.state[p]["momentum_buffer"].clone() for p in params if p in optimizer.state}
        assert momenta

        def restore():
            with torch.no_grad():
                for t, s in zip(params + list(model.buffers()), state):
                    t.copy_(s)
                for p, m in momenta.items():
                    optimizer.state[p]["momentum_buffer"].copy_(m)

        graph.replay()
        loss1, params1 = static_loss.clone(), [p.detach().clone() for p in params]
        assert not torch.equal(params1[0], state[0])  # the step moved the weights
        restore()
        graph.replay()
        assert torch.equal(static_loss, loss1)
        assert all(torch.equal(p, q) for p, q in zip(params, params1))

        restore()
        optimizer.zero_grad(set_to_none=True)
        eager_loss = step()
        torch.testing.assert_close(eager_loss, loss1, rtol=1e-5, atol=1e-6)
        for p, q in zip(params, params1):
            torch.testing.assert_close(p.detach(), q, rtol=1e-5, atol=1e-6)
    finally:
        cudnn.deterministic, cudnn.benchmark = saved
