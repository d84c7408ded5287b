"""NMS, batched NMS and RetinaNet post-processing: focalops vs the reference (and torchvision).

Boxes: uniform centres in a 1000 x 1000 image, sides 10-110 px, uniform scores (many overlaps,
so both suppression and survival are common). Post-processing: RetinaNet-like logits
(N(-4.6, 1.5^2): prior bias log(0.01/0.99), ~13% of scores above 0.05), 120k anchors split
over P3-P7 in the 256:64:16:4:1 ratio, 80 classes, default thresholds. The pure-PyTorch
reference NMS is a Python loop over kept boxes; it is skipped where one call would take
longer than ~20 s (noted in the row).
"""

import types

import torch

import focalops
from focalops import reference

from . import common

# Largest box count at which the reference loop runs (at 20k boxes one call took 12-27 s on a
# 2-core CPU).
REFERENCE_MAX_BOXES = {"cpu": 5_000, "cuda": 5_000}


def _torchvision_ops():
    try:
        from torchvision.ops import batched_nms, nms
    except Exception:  # torchvision absent
        return None
    return nms, batched_nms


def _torchvision_postprocess(logits, deltas, anchors, level_sizes, image_sizes):
    """torchvision's RetinaNet.postprocess_detections on the same inputs (split per level and
    image as its forward does), with its default settings; None without torchvision."""
    try:
        from torchvision.models.detection import RetinaNet
        from torchvision.models.detection._utils import BoxCoder
    except Exception:
        return None
    settings = types.SimpleNamespace(
        box_coder=BoxCoder(weights=(1.0, 1.0, 1.0, 1.0)),
        score_thresh=0.05,
        topk_candidates=1000,
        nms_thresh=0.5,
        detections_per_img=100,
    )
    head_outputs = {
        "cls_logits": list(logits.split(level_sizes, 1)),
        "bbox_regression": list(deltas.split(level_sizes, 1)),
    }
    per_image = [list(anchors.split(level_sizes))] * logits.shape[0]
    shapes = [tuple(int(v) for v in hw) for hw in image_sizes.tolist()]
    return lambda: RetinaNet.postprocess_detections(settings, head_outputs, per_image, shapes)


def _boxes(n, device, num_classes=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    ctr = torch.rand(n, 2, generator=g) * 1000
    half = (10 + torch.rand(n, 2, generator=g) * 100) / 2
    boxes = torch.cat([ctr - half, ctr + half], 1)
    scores = torch.rand(n, generator=g)
    idxs = torch.randint(0, num_classes, (n,), generator=g)
    return boxes.to(device), scores.to(device), idxs.to(device)


def _postprocess_inputs(num_images, num_anchors, num_classes, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    ratios = [256, 64, 16, 4, 1]
    sizes = [num_anchors * r // sum(ratios) for r in ratios]
    sizes[0] += num_anchors - sum(sizes)
    logits = torch.randn(num_images, num_anchors, num_classes, generator=g) * 1.5 - 4.6
    deltas = torch.randn(num_images, num_anchors, 4, generator=g) * 0.2
    ctr = torch.rand(num_anchors, 2, generator=g) * 800
    half = (16 + torch.rand(num_anchors, 2, generator=g) * 300) / 2
    anchors = torch.cat([ctr - half, ctr + half], 1)
    image_sizes = torch.tensor([[800.0, 800.0]] * num_images)
    return logits.to(device), deltas.to(device), anchors.to(device), sizes, image_sizes.to(device)


def run(device: str, quick: bool):
    rows = []
    reps = dict(warmup=1, repeat=3) if quick else dict(warmup=2, repeat=10)
    tv = _torchvision_ops()
    ref_max = REFERENCE_MAX_BOXES["cuda" if device.startswith("cuda") else "cpu"]
    skip_note = f"reference skipped above {ref_max} boxes (> ~20 s per call)"

    nms_sizes = [1_000, 5_000] if quick else [1_000, 5_000, 20_000, 100_000]
    for n in nms_sizes:
        boxes, scores, _ = _boxes(n, device)
        size = f"{n} boxes"
        impls = {"focalops": lambda b=boxes, s=scores: focalops.nms(b, s, 0.5)}
        if n <= ref_max:
            impls["reference"] = lambda b=boxes, s=scores: reference.nms(b, s, 0.5)
        if tv is not None:
            impls["torchvision"] = lambda b=boxes, s=scores: tv[0](b, s, 0.5)
        for impl, fn in impls.items():
            t = common.measure(fn, device, **reps)
            note = "" if n <= ref_max or impl != "focalops" else skip_note
            rows.append(common.row("nms", impl, "fwd", device, "float32", size, t, elements=n, note=note))

    bnms_sizes = [5_000] if quick else [5_000, 20_000, 100_000]
    for n in bnms_sizes:
        boxes, scores, idxs = _boxes(n, device, num_classes=80)
        size = f"{n} boxes, 80 classes"
        impls = {"focalops": lambda b=boxes, s=scores, i=idxs: focalops.batched_nms(b, s, i, 0.5)}
        if n <= ref_max:
            impls["reference"] = lambda b=boxes, s=scores, i=idxs: reference.batched_nms(b, s, i, 0.5)
        if tv is not None:
            impls["torchvision"] = lambda b=boxes, s=scores, i=idxs: tv[1](b, s, i, 0.5)
        for impl, fn in impls.items():
            t = common.measure(fn, device, **reps)
            note = "" if n <= ref_max or impl != "focalops" else skip_note
            rows.append(common.row("batched_nms", impl, "fwd", device, "float32", size, t, elements=n, note=note))

    if device.startswith("cuda"):
        num_images, num_anchors = (2, 120_000) if quick else (16, 120_000)
    else:
        num_images, num_anchors = (1, 20_000) if quick else (4, 120_000)
    args = _postprocess_inputs(num_images, num_anchors, 80, device)
    size = f"{num_images} img x {num_anchors} anchors x 80 cls"
    logits_bytes = args[0].numel() * args[0].element_size()
    impls = [("focalops", lambda: focalops.postprocess(*args)), ("reference", lambda: reference.postprocess(*args))]
    tv_post = _torchvision_postprocess(*args)
    if tv_post is not None:
        impls.append(("torchvision", tv_post))
        want, got = tv_post(), focalops.postprocess(*args)
        for b, det in enumerate(want):  # same detections, checked in the same run
            n = int(got[3][b])
            assert n == det["boxes"].shape[0] and torch.equal(got[2][b, :n], det["labels"]), "postprocess differs"
    for impl, fn in impls:
        t = common.measure(fn, device, **reps)
        rows.append(
            common.row(
                "postprocess",
                impl,
                "fwd",
                device,
                "float32",
                size,
                t,
                elements=args[0].numel(),
                bytes_model=logits_bytes,
                peak_bytes=common.peak_memory(fn, device),
                note="bytes_model: one read of the logits" if impl == "focalops" else "",
            )
        )
    return rows
