"""The thin RetinaNet end to end: a training step and the post-processing, on focalops ops vs
the same model (same weights, same inputs) on focalops.reference ops; plus the loss pieces
(assignment, target building, focal loss forward + backward) timed alone on the step's own
tensors, with their share of the step. Where torchvision is installed (full runs), also
torchvision's retinanet_resnet50_fpn against focalops' RetinaNet with its weights
(RetinaNet.from_torchvision) and against itself under focalops.accelerate: the training step,
the loss with matching (compute_loss) and its share, and inference."""

import copy
from typing import Dict, List

import torch

import focalops
from focalops.models import RetinaNet

from . import common

NUM_CLASSES = 80
BOXES_PER_IMAGE = 12


def _inputs(batch: int, size: int, device: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, 3, size, size, generator=g).to(device)
    targets = []
    for _ in range(batch):
        xy = torch.rand(BOXES_PER_IMAGE, 2, generator=g) * size * 0.7
        wh = 16 + torch.rand(BOXES_PER_IMAGE, 2, generator=g) * size * 0.3
        boxes = torch.cat([xy, (xy + wh).clamp(max=size)], 1)
        targets.append({"boxes": boxes, "labels": torch.randint(0, NUM_CLASSES, (BOXES_PER_IMAGE,), generator=g)})
    return images, targets


def _autocast(device: str, amp: bool):
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16, enabled=amp)


def _step_fn(model, impl: str, case: Dict):
    device, amp, images, targets, optimizer = (
        case["device"],
        case["amp"],
        case["images"],
        case["targets"],
        case["optimizer"],
    )

    def step():
        with _autocast(device, amp):
            losses = model(images, targets)
        optimizer.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        optimizer.step()

    return step


def _bench_impl(model, impl: str, case: Dict, t_step: Dict) -> List[Dict]:
    device, amp, repeat, shape = case["device"], case["amp"], case["repeat"], case["shape"]
    cls_logits, box_deltas, anchors = case["cls_logits"], case["box_deltas"], case["anchors"]
    gt_boxes, gt_labels, gt_counts = case["gt"]
    model.ops = impl
    model.train()
    batch = len(case["targets"])
    rows = [
        common.row(
            "retinanet_train_step", impl, "fwd+bwd", device, "bf16-amp" if amp else "float32", shape, t_step,
            peak_bytes=common.peak_memory(_step_fn(model, impl, case), device),
            note=f"{batch / (t_step['ms'] * 1e-3):.1f} img/s; {anchors.shape[0]} anchors/img",
        )
    ]  # fmt: skip

    ops, cfg = model._ops, model.config
    logits = cls_logits.detach().requires_grad_(True)
    logit_dtype = str(cls_logits.dtype).replace("torch.", "")

    def assign():
        return ops.assign(anchors, gt_boxes, gt_counts, cfg["fg_iou"], cfg["bg_iou"], True)

    def build_targets(matched):
        cls_t, _, fg = ops.retinanet_targets(matched, gt_boxes, gt_labels, anchors)
        return cls_t, fg.sum().clamp(min=1).to(torch.float32)

    def focal(cls_t, num_fg):
        ops.sigmoid_focal_loss(logits, cls_t, 0.25, 2.0, "sum", normalizer=num_fg).backward()

    matched = assign()
    cls_t, num_fg = build_targets(matched)
    pieces = [
        ("retinanet_assign", "fwd", assign),
        ("retinanet_targets", "fwd", lambda: build_targets(matched)),
        ("retinanet_focal_loss", "fwd+bwd", lambda: focal(cls_t, num_fg)),
        ("retinanet_loss_pieces", "fwd+bwd", lambda: focal(*build_targets(assign()))),
    ]
    for op, pass_, fn in pieces:
        t = common.measure(fn, device, warmup=2, repeat=repeat)
        what = "assign + targets + focal loss: " if op == "retinanet_loss_pieces" else ""
        note = f"{what}{100 * t['ms'] / t_step['ms']:.1f}% of the step"
        rows.append(common.row(op, impl, pass_, device, logit_dtype, shape, t, note=note))

    def post():
        with torch.no_grad():
            model.detect(cls_logits, box_deltas, anchors, case["level_sizes"], case["image_sizes"])

    t_post = common.measure(post, device, warmup=2, repeat=repeat)
    note = f"{batch} images"
    rows.append(common.row("retinanet_postprocess", impl, "fwd", device, logit_dtype, shape, t_post, note=note))
    return rows


def run(device: str, quick: bool) -> List[Dict]:
    if device.startswith("cuda"):
        backbone, batch, size, amp = "resnet50", (4 if quick else 16), (512 if quick else 800), True
    else:
        backbone, batch, size, amp = "resnet18", 2, (128 if quick else 256), False
    torch.manual_seed(0)
    model = RetinaNet(NUM_CLASSES, backbone).to(device)
    images, targets = _inputs(batch, size, device)
    # Head outputs and padded ground truth of one step, for the pieces and the post-processing.
    with torch.no_grad(), _autocast(device, amp):
        batch_t, sizes = model._batch_images(images)
        features = model.fpn(model.backbone(batch_t))
        cls_logits = model.classification_head(features)
        box_deltas = model.regression_head(features)
        anchors, level_sizes = model._anchors(features, batch_t.shape[-2:])
    case = {
        "device": device,
        "amp": amp,
        "repeat": 3 if quick else 10,
        "shape": f"{backbone} {batch}x{size}x{size} K={NUM_CLASSES}",
        "images": images,
        "targets": targets,
        "optimizer": torch.optim.SGD(model.parameters(), lr=1e-5, momentum=0.9),
        "cls_logits": cls_logits,
        "box_deltas": box_deltas,
        "anchors": anchors,
        "level_sizes": level_sizes,
        "image_sizes": torch.tensor(sizes, device=device),
        "gt": model._pad_targets(targets, batch, torch.device(device)),
    }
    impls = ("focalops", "reference")
    # The step is long and the other impl's step is its baseline: time them alternately, twice,
    # and keep each one's better median, so a burst of load on a shared machine hits both alike.
    steps: Dict[str, Dict] = {}
    for _ in range(2):
        for impl in impls:
            model.ops = impl
            t = common.measure(_step_fn(model, impl, case), device, warmup=2, repeat=case["repeat"], max_seconds=30)
            if impl not in steps or t["ms"] < steps[impl]["ms"]:
                steps[impl] = t
    rows: List[Dict] = []
    for impl in impls:
        rows += _bench_impl(model, impl, case, steps[impl])
    if not quick:
        rows += _torchvision_rows(device)
    return rows


def _torchvision_rows(device: str) -> List[Dict]:
    """torchvision's RetinaNet-R50 (v1) vs focalops' model with its weights vs it accelerated."""
    try:
        from torchvision.models.detection import retinanet_resnet50_fpn
    except Exception:  # torchvision absent
        return []
    batch, size, amp = (16, 800, True) if device.startswith("cuda") else (2, 512, False)
    torch.manual_seed(0)
    tv = retinanet_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=NUM_CLASSES, min_size=size, max_size=size
    ).to(device)
    models = {
        "torchvision": tv,
        "focalops": RetinaNet.from_torchvision(tv).to(device),
        "torchvision+accelerate": focalops.accelerate(copy.deepcopy(tv)),
    }
    images, targets = _inputs(batch, size, device)
    image_list = list(images)
    targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
    shape = f"resnet50 {batch}x{size}x{size} K={NUM_CLASSES}"
    dtype = "bf16-amp" if amp else "float32"
    repeat = 5

    def step_fn(model):
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-5, momentum=0.9)
        case = {"device": device, "amp": amp, "images": image_list, "targets": targets, "optimizer": optimizer}
        return _step_fn(model, "", case)

    steps: Dict[str, Dict] = {}
    for model in models.values():
        model.train()
    for _ in range(2):  # alternately, keeping each one's better median (shared machines)
        for impl, model in models.items():
            t = common.measure(step_fn(model), device, warmup=1, repeat=repeat, max_seconds=60)
            if impl not in steps or t["ms"] < steps[impl]["ms"]:
                steps[impl] = t
    rows = []
    for impl, t in steps.items():
        rows.append(
            common.row(
                "r50_train_step", impl, "fwd+bwd", device, dtype, shape, t,
                note=f"{batch / (t['ms'] * 1e-3):.2f} img/s",
            )
        )  # fmt: skip

    # The loss with matching alone, on one step's head outputs: torchvision's and accelerated.
    with torch.no_grad(), _autocast(device, amp):
        image_batch, tv_targets = tv.transform(image_list, targets)
        features = list(tv.backbone(image_batch.tensors).values())
        head_outputs = tv.head(features)
        anchors = tv.anchor_generator(image_batch, features)
    for impl in ("torchvision", "torchvision+accelerate"):
        model = models[impl]
        t = common.measure(lambda m=model: m.compute_loss(tv_targets, head_outputs, anchors), device, repeat=repeat)
        share = 100 * t["ms"] / steps[impl]["ms"]
        rows.append(
            common.row(
                "r50_compute_loss", impl, "fwd", device, dtype, shape, t,
                note=f"matching + losses: {share:.1f}% of the step",
            )
        )  # fmt: skip

    for num_classes, post_size in ((NUM_CLASSES, size), (1, 400)):  # 1 class, 400 px: DeepForest's windows
        rows += _postprocess_rows(models, batch, post_size, num_classes, device)

    for impl, model in models.items():
        model.eval()
        with torch.no_grad(), _autocast(device, amp):
            t = common.measure(lambda m=model: m(image_list), device, warmup=1, repeat=repeat, max_seconds=60)
        rows.append(common.row("r50_inference", impl, "fwd", device, dtype, shape, t))
    return rows


def _postprocess_rows(models: Dict, batch: int, size: int, num_classes: int, device: str) -> List[Dict]:
    """postprocess_detections alone, torchvision's vs accelerated, on head outputs laid out as
    torchvision's RetinaNet.forward hands them over (per-level views of one tensor). The logits
    are random with ~6% of the scores above score_thresh (0.05), as a trained model's are."""
    from torchvision.models.detection.image_list import ImageList

    tv = models["torchvision"]
    levels = [size // stride for stride in (8, 16, 32, 64, 128)]
    per_level = [n * n * tv.anchor_generator.num_anchors_per_location()[0] for n in levels]
    images = ImageList(torch.zeros(batch, 3, size, size, device=device), [(size, size)] * batch)
    features = [torch.zeros(batch, 1, n, n, device=device) for n in levels]
    anchors = [list(a.split(per_level)) for a in tv.anchor_generator(images, features)]
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(batch, sum(per_level), num_classes, generator=g) - 4.5
    deltas = torch.randn(batch, sum(per_level), 4, generator=g) * 0.5
    head_outputs = {
        "cls_logits": list(logits.to(device).split(per_level, dim=1)),
        "bbox_regression": list(deltas.to(device).split(per_level, dim=1)),
    }
    above = float((logits.sigmoid() > tv.score_thresh).float().mean())
    shape = f"{batch}x{size}x{size} A={sum(per_level)} K={num_classes}"
    rows = []
    for impl in ("torchvision", "torchvision+accelerate"):
        model = models[impl].eval()
        with torch.no_grad():
            t = common.measure(
                lambda m=model: m.postprocess_detections(head_outputs, anchors, images.image_sizes), device, repeat=9
            )
        note = f"{100 * above:.1f}% of scores above {tv.score_thresh}"
        rows.append(common.row("r50_postprocess_detections", impl, "fwd", device, "float32", shape, t, note=note))
    return rows
