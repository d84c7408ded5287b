"""Every focalops CUDA kernel on small and odd sizes, for compute-sanitizer (gpu_check.sh sanitize).

Sizes of 0, 1 and non-multiples of the vector width, unaligned views (`x.view(-1)[1:]`), 16-bit
and float64, stride-0 and misaligned incoming gradients, boxes around the 64-box mask word and
the 1,024-anchor block, and the tiled NMS bitmask (FOCALOPS_NMS_TILE_BYTES set small). Results
are compared with the CPU kernels, so the run also fails on a wrong answer. Run it as

    PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck python3 benchmarks/cuda_small_cases.py

(without the caching allocator every tensor is its own allocation, so an access past its end is
caught rather than landing in a neighbour inside a cached block).
"""

import os
import sys

import torch

import focalops

TOL = {torch.float32: 1e-5, torch.float64: 1e-12, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def _close(got, want, dtype=torch.float32):
    tol = TOL.get(dtype, 1e-5)
    torch.testing.assert_close(got.cpu(), want, rtol=tol, atol=tol * 1e-2, equal_nan=True)


def _focal(x, targets, reduction, grad=None):
    x = x.detach().requires_grad_()
    loss = focalops.sigmoid_focal_loss(x, targets, 0.25, 2.0, reduction)
    g = torch.ones_like(loss) if grad is None else grad
    (dx,) = torch.autograd.grad(loss, x, g)
    return loss.detach(), dx


def focal_loss_cases():
    n = 0
    for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        for rows, K in ((1, 1), (3, 5), (7, 3), (33, 13), (0, 4)):
            for offset in (0, 1):
                g = torch.Generator().manual_seed(rows * K + offset)
                base = (torch.randn(rows * K + offset, generator=g) * 4).to(dtype)
                x = base[offset:].view(rows, K)
                labels = torch.randint(-2, K, (rows,), generator=g)
                soft = torch.rand(rows, K, generator=g).to(dtype)
                gbase = torch.randn(rows * K + 1, generator=g).to(dtype)
                grad_mis = gbase[1:].view(rows, K)
                xc = base.cuda()[offset:].view(rows, K)
                for targets in (labels, soft):
                    tc = targets.cuda()
                    for reduction, grad in (("none", None), ("none", grad_mis), ("sum", None)):
                        gc = None if grad is None else gbase.cuda()[1:].view(rows, K)
                        got = _focal(xc, tc, reduction, gc)
                        want = _focal(x, targets, reduction, grad)
                        for a, b in zip(got, want):
                            _close(a, b, dtype)
                        n += 1
                    # loss(reduction="none").sum(): a stride-0 incoming gradient
                    xg = xc.detach().requires_grad_()
                    (dx,) = torch.autograd.grad(focalops.sigmoid_focal_loss(xg, tc).sum(), xg)
                    _close(dx, _focal(x, targets, "sum")[1], dtype)
                    n += 1
    return n


def box_cases():
    n = 0
    g = torch.Generator().manual_seed(0)
    for N, M in ((1, 1), (1, 3), (37, 1031), (0, 5)):
        b1 = torch.rand(N, 4, generator=g) * 50
        b1[:, 2:] += b1[:, :2]
        b2 = torch.rand(M, 4, generator=g) * 50
        b2[:, 2:] += b2[:, :2]
        assert torch.equal(focalops.box_iou(b1.cuda(), b2.cuda()).cpu(), focalops.box_iou(b1, b2))
        n += 1
    for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        for A in (1, 7, 129):
            anchors = torch.rand(A, 4, generator=g) * 100
            anchors[:, 2:] += anchors[:, :2] + 4
            gt = anchors + torch.randn(A, 4, generator=g)
            anchors, gt = anchors.to(dtype), gt.to(dtype)
            _close(focalops.encode_boxes(gt.cuda(), anchors.cuda()), focalops.encode_boxes(gt, anchors), dtype)
            deltas = (torch.randn(3, A, 4, generator=g) * 0.5).to(dtype)
            dc = deltas.cuda().requires_grad_()
            out = focalops.decode_boxes(dc, anchors.cuda())
            (grad,) = torch.autograd.grad(out.sum(), dc)
            d = deltas.clone().requires_grad_()
            ref = focalops.decode_boxes(d, anchors)
            (grad_ref,) = torch.autograd.grad(ref.sum(), d)
            _close(out.detach(), ref.detach(), dtype)
            _close(grad, grad_ref, dtype)
            n += 2
    return n


def assign_cases():
    n = 0
    gen = focalops.AnchorGenerator(sizes=(16, 32), strides=(8, 16))
    all_anchors, _ = gen.for_image_size(128, 128)  # 2,880 anchors
    for A in (1, 5, 1023, 1025, 2880):
        anchors = all_anchors[:A].contiguous()
        for G, counts in ((0, [0, 0]), (1, [1, 0]), (3, [3, 2]), (1030, [1030, 1025])):
            g = torch.Generator().manual_seed(A + G)
            xy = torch.rand(2, G, 2, generator=g) * 100
            gt = torch.cat([xy, xy + 4 + torch.rand(2, G, 2, generator=g) * 40], -1)
            counts_t = torch.tensor(counts)
            labels = torch.randint(0, 80, (2, G), generator=g)
            want = focalops.assign(anchors, gt, counts_t)
            got = focalops.assign(anchors.cuda(), gt.cuda(), counts_t.cuda())
            assert torch.equal(got.cpu(), want)
            tw = focalops.retinanet_targets(want, gt, labels, anchors)
            tg = focalops.retinanet_targets(got, gt.cuda(), labels.cuda(), anchors.cuda())
            for a, b in zip(tg, tw):
                _close(a.float(), b.float())
            n += 2
    return n


def _crowd(n, seed, classes):
    g = torch.Generator().manual_seed(seed)
    ctr = torch.rand(n, 2, generator=g) * 300
    side = 10 + torch.rand(n, 2, generator=g) * 60
    boxes = torch.cat([ctr - side / 2, ctr + side / 2], 1)
    scores = (torch.rand(n, generator=g) * 8).round() / 8  # ties
    return boxes, scores, torch.randint(0, classes, (n,), generator=g)


def nms_cases():
    n = 0
    for tile in (None, 64 << 10):
        if tile is not None:
            os.environ["FOCALOPS_NMS_TILE_BYTES"] = str(tile)
        for count in (0, 1, 2, 63, 64, 65, 130, 1000):
            boxes, scores, idxs = _crowd(count, count, 3)
            for thr in (0.0, 0.5):
                assert torch.equal(
                    focalops.nms(boxes.cuda(), scores.cuda(), thr).cpu(), focalops.nms(boxes, scores, thr)
                )
                assert torch.equal(
                    focalops.batched_nms(boxes.cuda(), scores.cuda(), idxs.cuda(), thr).cpu(),
                    focalops.batched_nms(boxes, scores, idxs, thr),
                )
                n += 2
    os.environ.pop("FOCALOPS_NMS_TILE_BYTES", None)
    return n


def postprocess_cases():
    n = 0
    g = torch.Generator().manual_seed(0)
    level_sizes = [30, 9, 2]
    A, K, B = sum(level_sizes), 3, 3
    count = A * K
    logits = torch.stack([torch.linspace(-4, 3, count)[torch.randperm(count, generator=g)] for _ in range(B)])
    logits = logits.view(B, A, K)
    xy = torch.rand(A, 2, generator=g) * 60
    anchors = torch.cat([xy, xy + 8 + torch.rand(A, 2, generator=g) * 30], 1)
    deltas = torch.randn(B, A, 4, generator=g) * 0.3
    sizes = torch.tensor([[80.0, 90.0], [64.0, 64.0], [100.0, 40.0]])
    for tile in (None, 4 << 10):
        if tile is not None:
            os.environ["FOCALOPS_NMS_TILE_BYTES"] = str(tile)
        for dtype in (torch.float32, torch.float64, torch.bfloat16):
            for topk, dets, thr in ((20, 7, 0.5), (1000, 100, 0.3), (5, 1, 0.7)):
                args = (logits.to(dtype), deltas.to(dtype), anchors.to(dtype))
                want = focalops.postprocess(*args, level_sizes, sizes, 0.05, topk, thr, dets)
                got = focalops.postprocess(*[a.cuda() for a in args], level_sizes, sizes.cuda(), 0.05, topk, thr, dets)
                assert torch.equal(got[3].cpu(), want[3]) and torch.equal(got[2].cpu(), want[2])
                _close(got[0], want[0])
                n += 1
    os.environ.pop("FOCALOPS_NMS_TILE_BYTES", None)
    return n


def main() -> int:
    if not torch.cuda.is_available() or not focalops.has_cuda_kernels():
        print("needs a GPU and focalops built with its CUDA kernels", file=sys.stderr)
        return 2
    for name, fn in (
        ("focal_loss", focal_loss_cases),
        ("boxes", box_cases),
        ("assign", assign_cases),
        ("nms", nms_cases),
        ("postprocess", postprocess_cases),
    ):
        count = fn()
        torch.cuda.synchronize()
        print(f"{name}: {count} cases ok", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
