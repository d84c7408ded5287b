"""RetinaNet post-processing: focalops vs the reference and torchvision's postprocess_detections.

RetinaNet-like logits (N(-4.6, 1.5^2): prior bias log(0.01/0.99), ~13% of scores above 0.05),
120k anchors split over P3-P7 in the 256:64:16:4:1 ratio, 80 classes, default thresholds.
"""

import types

import torch

import focalops
from focalops import reference

from . import common


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
