"""Training loop and COCO-style evaluation for :class:`focalops.models.RetinaNet` (used by the CLI)."""

import contextlib
import io
import os
from typing import Dict, Iterable, List, Optional, Sequence

import torch
from torch import nn

from focalops.models import RetinaNet


def autocast(device: torch.device, dtype: Optional[torch.dtype]):
    """``torch.autocast`` on ``device`` with ``dtype``, or a no-op context when ``dtype`` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def lr_factor(
    iteration: int, total: int, warmup_iters: int, steps: Sequence[float], warmup_factor: float = 0.001
) -> float:
    """LR multiplier: linear warm-up from ``warmup_factor`` over ``warmup_iters``, then x0.1 at
    each fraction in ``steps`` of ``total`` iterations."""
    factor = 0.1 ** sum(iteration >= int(s * total) for s in steps)
    if iteration < warmup_iters:
        alpha = iteration / warmup_iters
        factor *= warmup_factor * (1 - alpha) + alpha
    return factor


def save_checkpoint(path: str, model: RetinaNet, optimizer, scheduler, iteration: int, extra: Dict) -> None:
    """Writes model weights, optimiser and schedule state atomically (write, then rename)."""
    state = {
        "model": model.state_dict(),
        "config": model.config,
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "iteration": iteration,
        **extra,
    }
    tmp = path + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_model(path: str, map_location="cpu", **overrides) -> tuple:
    """Builds the model a checkpoint describes and loads its weights: returns ``(model, checkpoint)``."""
    ckpt = torch.load(path, map_location=map_location, weights_only=False)
    model = RetinaNet(**{**ckpt["config"], **overrides})
    model.load_state_dict(ckpt["model"])
    return model, ckpt


@torch.no_grad()
def coco_map(
    model: nn.Module,
    loader: Iterable,
    num_classes: int,
    device: torch.device,
    amp_dtype: Optional[torch.dtype] = None,
    progress: bool = True,
) -> Dict[str, float]:
    """COCO box mAP of ``model`` on ``loader`` (pycocotools): ``{"AP", "AP50", "AP75"}`` in [0, 1].

    The ground truth is the loader's targets, in the coordinates the model sees (after the
    loader's transforms); every box counts (no crowd regions).
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    from tqdm import tqdm

    was_training = model.training
    model.eval()
    images_info: List[Dict] = []
    annotations: List[Dict] = []
    detections: List[Dict] = []
    for images, targets in tqdm(loader, desc="eval", disable=not progress, leave=False):
        with autocast(device, amp_dtype):
            outputs = model([im.to(device) for im in images])
        for image, target, out in zip(images, targets, outputs):
            image_id = len(images_info) + 1
            images_info.append({"id": image_id, "height": int(image.shape[-2]), "width": int(image.shape[-1])})
            for box, label in zip(target["boxes"].tolist(), target["labels"].tolist()):
                w, h = box[2] - box[0], box[3] - box[1]
                annotations.append(
                    {"id": len(annotations) + 1, "image_id": image_id, "category_id": int(label) + 1,
                     "bbox": [box[0], box[1], w, h], "area": w * h, "iscrowd": 0}
                )  # fmt: skip
            for box, score, label in zip(
                out["boxes"].float().tolist(), out["scores"].float().tolist(), out["labels"].tolist()
            ):
                detections.append(
                    {"image_id": image_id, "category_id": int(label) + 1,
                     "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]], "score": score}
                )  # fmt: skip
    model.train(was_training)
    if not detections or not annotations:
        return {"AP": 0.0, "AP50": 0.0, "AP75": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {
            "images": images_info,
            "annotations": annotations,
            "categories": [{"id": k + 1} for k in range(num_classes)],
        }
        gt.createIndex()
        evaluator = COCOeval(gt, gt.loadRes(detections), iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    ap, ap50, ap75 = (max(0.0, float(v)) for v in evaluator.stats[:3])
    return {"AP": ap, "AP50": ap50, "AP75": ap75}
