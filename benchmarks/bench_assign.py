"""Anchor assignment (fused focalops.assign vs per-image box_iou + Matcher: the pure-PyTorch
reference and, where installed, torchvision's own) and RetinaNet targets.

Peak memory is reported on CUDA (extra bytes over the inputs). The reference materialises
the A x G IoU matrix per image (A * G * 4 bytes, plus temporaries); focalops needs
O(B * A + B * G) whatever G is.
"""

from typing import Dict, List

import torch

import focalops
from benchmarks import common
from focalops import reference


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


def run(device: str, quick: bool) -> List[Dict]:
    rows: List[Dict] = []
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
