"""NMS and batched NMS: focalops vs the reference (and torchvision).

Boxes: uniform centres in a 1000 x 1000 image, sides 10-110 px, uniform scores (many overlaps,
so both suppression and survival are common). The pure-PyTorch reference NMS is a Python loop
over kept boxes; it is skipped where one call would take longer than ~20 s (noted in the row).
"""

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


def _boxes(n, device, num_classes=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    ctr = torch.rand(n, 2, generator=g) * 1000
    half = (10 + torch.rand(n, 2, generator=g) * 100) / 2
    boxes = torch.cat([ctr - half, ctr + half], 1)
    scores = torch.rand(n, generator=g)
    idxs = torch.randint(0, num_classes, (n,), generator=g)
    return boxes.to(device), scores.to(device), idxs.to(device)


def run(device: str, quick: bool):
    rows = []
    reps = dict(warmup=1, repeat=3) if quick else dict(warmup=2, repeat=10)
    tv = _torchvision_ops()
    ref_max = REFERENCE_MAX_BOXES["cuda" if device.startswith("cuda") else "cpu"]
    skip_note = f"reference skipped above {ref_max} boxes (> ~20 s per call)"

    # A GPU's quick run (the first-contact check) covers 1k to 100k boxes in seconds.
    gpu = device.startswith("cuda")
    nms_sizes = [1_000, 5_000] if quick and not gpu else [1_000, 5_000, 20_000, 100_000]
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

    bnms_sizes = [5_000] if quick and not gpu else [5_000, 20_000, 100_000]
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

    return rows
