"""Devices, mixed precision, and COCO box mAP of a detector on a dataset."""

import contextlib
import io
from typing import Dict, Iterable, List, Optional

import torch
from torch import nn

from focalops.errors import ConfigError

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``; a bare
    ``"cuda"`` is the process's ``local_rank`` GPU.

    Raises:
        ConfigError: an unknown device name, or CUDA asked for without a GPU.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device must be cpu, cuda, cuda:N or auto, got {name!r}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {name}: no CUDA device is available")
        if device.index is None:
            device = torch.device("cuda", local_rank)
    elif device.type != "cpu":
        raise ConfigError(f"--device must be cpu, cuda, cuda:N or auto, got {name!r}")
    return device


def amp_dtype(name: Optional[str], device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype for ``name`` (``None``, ``"bf16"`` or ``"fp16"``) on ``device``.

    Raises:
        ConfigError: an unknown name, or fp16 on CPU (bf16 only there).
    """
    if name is None:
        return None
    if name not in AMP_DTYPES:
        raise ConfigError(f"--amp-dtype must be one of {', '.join(sorted(AMP_DTYPES))}, got {name!r}")
    if device.type == "cpu" and name != "bf16":
        raise ConfigError("--amp on CPU supports --amp-dtype bf16 only")
    return AMP_DTYPES[name]


def autocast(device: torch.device, dtype: Optional[torch.dtype]):
    """``torch.autocast`` on ``device`` with ``dtype``, or a no-op context when ``dtype`` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def evaluate(
    model: nn.Module,
    dataset: torch.utils.data.Dataset,
    *,
    batch_size: int = 8,
    workers: int = 0,
    device: str = "auto",
    amp: Optional[str] = None,
    progress: bool = True,
) -> Dict[str, float]:
    """COCO box mAP (``{"AP", "AP50", "AP75"}``) of ``model`` on ``dataset`` (its labels index the
    model's classes), on ``device`` with ``amp`` (None, ``"bf16"`` or ``"fp16"``) autocast.

    Raises:
        ConfigError: a bad device, amp setting or batch size.
        DataError: an image of the dataset does not load.
    """
    from focalops.data import collate

    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
    target = resolve_device(device)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, num_workers=workers, collate_fn=collate, persistent_workers=False
    )
    return coco_map(model.to(target), loader, model.num_classes, target, amp_dtype(amp, target), progress=progress)


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
