"""Anchor assignment (fused focalops.assign vs per-image box_iou + Matcher: the pure-PyTorch
reference and, where installed, torchvision's own), RetinaNet targets, and box coding
(encode_boxes / decode_boxes vs the reference and torchvision's BoxCoder).

Box coding byte model, n boxes with their anchors: read 2 x 16 B, write 16 B = 48 B per box.

Peak memory is reported on CUDA (extra bytes over the inputs). The reference materialises
the A x G IoU matrix per image (A * G * 4 bytes, plus temporaries); focalops needs
O(B * A + B * G) whatever G is.
"""

from typing import Dict, List

import torch

import focalops
from focalops import reference

from . import common


def _inputs(B: int, A: int, G: int, device: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    gen = focalops.AnchorGenerator()
    side = 128
    while True:  # smallest square padded image with at least A anchors
        anchors, _ = gen.for_image_size(side, side)
        if anchors.shape[0] >= A:
            break
        side += 128
    anchors = anchors[:A]
    xy = torch.rand(B, G, 2, generator=g) * (side * 0.8)
    wh = torch.rand(B, G, 2, generator=g) * (side * 0.2) + 8
    gt = torch.cat([xy, xy + wh], -1)
    counts = torch.full((B,), G, dtype=torch.int64)
    labels = torch.randint(0, 80, (B, G), generator=g)
    return anchors.to(device), gt.to(device), counts.to(device), labels.to(device)


def _torchvision_assign():
    """torchvision's own matching: box_iou + Matcher(0.5, 0.4, allow_low_quality_matches=True) per image."""
    try:
        from torchvision.models.detection._utils import Matcher
        from torchvision.ops import box_iou
    except Exception:  # torchvision absent
        return None
    matcher = Matcher(0.5, 0.4, allow_low_quality_matches=True)

    def assign(anchors, gt, counts):
        return torch.stack([matcher(box_iou(gt[b, : int(counts[b])], anchors)) for b in range(gt.shape[0])])

    return assign


def _case(rows: List[Dict], B: int, A: int, G: int, device: str, quick: bool, with_reference: bool = True) -> None:
    anchors, gt, counts, labels = _inputs(B, A, G, device)
    size = f"B={B} A={A} G={G}"
    repeat = 3 if quick else 10
    impls = {"focalops": focalops.assign}
    if with_reference:
        impls["reference"] = reference.assign
        if _torchvision_assign() is not None:
            impls["torchvision"] = _torchvision_assign()
    results = {}
    for impl, fn in impls.items():
        try:
            t = common.measure(lambda fn=fn: fn(anchors, gt, counts), device, warmup=1, repeat=repeat)
            peak = common.peak_memory(lambda fn=fn: fn(anchors, gt, counts), device)
        except torch.cuda.OutOfMemoryError:
            rows[-1]["note"] = f"reference ran out of memory (its IoU matrix alone is {A * G * 4 / 2**30:.1f} GiB)"
            with_reference = False
            break
        results[impl] = fn(anchors, gt, counts)
        rows.append(
            common.row("assign", impl, "forward", device, "float32", size, t, elements=B * A * G, peak_bytes=peak)
        )
    for impl in ("reference", "torchvision"):
        if impl in results:
            assert torch.equal(results["focalops"], results[impl]), f"focalops.assign disagrees with {impl}"
    if "reference" not in results:
        rows[-1]["note"] = f"reference skipped: its IoU matrix alone is A*G*4 = {A * G * 4 / 2**30:.1f} GiB per image"

    matched = results["focalops"]
    for impl, fn in (("focalops", focalops.retinanet_targets), ("reference", reference.retinanet_targets)):
        if impl == "reference" and not with_reference:
            continue
        t = common.measure(lambda fn=fn: fn(matched, gt, labels, anchors), device, warmup=1, repeat=repeat)
        peak = common.peak_memory(lambda fn=fn: fn(matched, gt, labels, anchors), device)
        rows.append(common.row("retinanet_targets", impl, "forward", device, "float32", size, t, peak_bytes=peak))


def _torchvision_coder():
    try:
        from torchvision.models.detection._utils import BoxCoder
    except Exception:  # torchvision absent
        return None
    return BoxCoder(weights=(1.0, 1.0, 1.0, 1.0))


def _coding_case(rows: List[Dict], B: int, A: int, device: str, quick: bool) -> None:
    anchors, gt, _, _ = _inputs(B, A, 1, device)
    g = torch.Generator().manual_seed(1)
    deltas = (torch.randn(B, A, 4, generator=g) * 0.5).to(device)
    # Ground truth per anchor: each anchor jittered (what retinanet_targets encodes).
    boxes = anchors + (torch.randn(B, A, 4, generator=g) * 4).to(device)
    boxes = torch.cat([boxes[..., :2], torch.maximum(boxes[..., 2:], boxes[..., :2] + 1)], -1)
    size, repeat = f"B={B} A={A}", 3 if quick else 10
    flat_anchors = anchors.repeat(B, 1)
    impls = {
        "encode_boxes": {
            "focalops": lambda: focalops.encode_boxes(boxes, anchors),
            "reference": lambda: reference.encode_boxes(boxes, anchors),
        },
        "decode_boxes": {
            "focalops": lambda: focalops.decode_boxes(deltas, anchors),
            "reference": lambda: reference.decode_boxes(deltas, anchors),
        },
    }
    coder = _torchvision_coder()
    if coder is not None:
        impls["encode_boxes"]["torchvision"] = lambda: coder.encode_single(boxes.view(-1, 4), flat_anchors)
        impls["decode_boxes"]["torchvision"] = lambda: coder.decode_single(deltas.view(-1, 4), flat_anchors)
    for op, fns in impls.items():
        want = fns["reference"]().view(-1, 4)
        for impl, fn in fns.items():
            torch.testing.assert_close(fn().view(-1, 4), want, rtol=1e-5, atol=1e-4)
            t = common.measure(fn, device, warmup=2, repeat=repeat)
            rows.append(
                common.row(op, impl, "forward", device, "float32", size, t, elements=B * A, bytes_model=48 * B * A)
            )


def run(device: str, quick: bool) -> List[Dict]:
    rows: List[Dict] = []
    _coding_case(rows, 2 if quick else 8, 120000, device, quick)
    if device == "cpu":
        if quick:
            _case(rows, 2, 30000, 50, device, quick)
        else:
            _case(rows, 8, 120000, 100, device, quick)
            # peak extra memory does not grow with G: 200k anchors x 400 vs 4000 boxes
            _case(rows, 1, 200000, 400, device, quick)
            # The reference's Matcher at 200k x 4000 was OOM-killed on a 24 GiB machine.
            _case(rows, 1, 200000, 4000, device, quick, with_reference=False)
    else:
        _case(rows, 16, 120000, 100, device, quick)
        _case(rows, 4, 120000, 1000, device, quick)
        # peak extra memory does not grow with G: 200k anchors x 4000 boxes
        _case(rows, 1, 200000, 400, device, quick)
        _case(rows, 1, 200000, 4000, device, quick)
    return rows
