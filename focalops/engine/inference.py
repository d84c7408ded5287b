"""Detections on whole images at their own size, for ``focalops predict``.

An image is either resized to the training scale and run once, or (large rasters) cut into
overlapping tiles of ``tile`` pixels, each resized as the training images were, run in batches,
mapped back to image pixels and merged: a class-aware NMS in which boxes cut by an inner tile
border rank below whole boxes, then a cut box mostly covered by a better box of its class from
another tile is dropped (the object seen whole in the neighbouring tile wins).
"""

import csv
import json
import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from focalops.errors import ConfigError

_PALETTE = (
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
)  # fmt: skip


def tile_windows(height: int, width: int, tile: int, overlap: float) -> List[Tuple[int, int, int, int]]:
    """``(x1, y1, x2, y2)`` windows of ``tile x tile`` pixels covering the image, neighbours
    overlapping by at least ``overlap`` of a tile; the last row and column end at the image's edge.
    A side shorter than ``tile`` gets one window of the image's size.

    Raises:
        ConfigError: ``tile < 32`` or ``overlap`` outside [0, 1).
    """
    if tile < 32:
        raise ConfigError(f"--tile must be at least 32 pixels, got {tile}")
    if not 0 <= overlap < 1:
        raise ConfigError(f"--tile-overlap must be a fraction in [0, 1), got {overlap}")
    stride = max(1, int(tile * (1 - overlap)))

    def starts(n: int) -> List[int]:
        if n <= tile:
            return [0]
        count = math.ceil((n - tile) / stride) + 1
        return [min(k * stride, n - tile) for k in range(count)]

    return [(x, y, min(x + tile, width), min(y + tile, height)) for y in starts(height) for x in starts(width)]


def merge_tiles(
    boxes: Tensor, scores: Tensor, labels: Tensor, tiles: Tensor, cut: Tensor, iou_thresh: float = 0.5,
    cover_thresh: float = 0.6,
) -> Tensor:  # fmt: skip
    """Indices of the detections to keep after tiling, best first.

    1. Class-aware NMS at ``iou_thresh`` in which every whole box ranks above every box ``cut``
       by an inner tile border (then by score): duplicates of an object seen in two tiles collapse
       onto its whole box.
    2. A remaining cut box that a better kept box of its class from another tile covers by at
       least ``cover_thresh`` of its own area is dropped (the part of an object that a tile border
       cut, when the neighbouring tile saw the object whole).

    Args:
        boxes (Tensor[N, 4]), scores (Tensor[N]), labels (Tensor[N]): detections in image pixels.
        tiles (Tensor[N]): the tile each detection comes from. cut (Tensor[N] bool): touches an
            inner tile border.
    """
    from focalops import batched_nms

    if boxes.shape[0] == 0:
        return torch.zeros(0, dtype=torch.int64)
    priority = scores.float() + 2.0 * (~cut).float()  # scores are in [0, 1]
    keep = batched_nms(boxes.float(), priority, labels, iou_thresh)
    kb, kl, kt, kc = boxes[keep].float(), labels[keep], tiles[keep], cut[keep]
    area = (kb[:, 2] - kb[:, 0]) * (kb[:, 3] - kb[:, 1])
    alive = torch.ones(keep.shape[0], dtype=torch.bool)
    for i in torch.nonzero(kc).flatten().tolist():  # in rank order: a dropped box covers nothing
        better = alive[:i] & (kl[:i] == kl[i]) & (kt[:i] != kt[i])
        if not better.any():
            continue
        other = kb[:i][better]
        w = (torch.minimum(other[:, 2], kb[i, 2]) - torch.maximum(other[:, 0], kb[i, 0])).clamp(min=0)
        h = (torch.minimum(other[:, 3], kb[i, 3]) - torch.maximum(other[:, 1], kb[i, 1])).clamp(min=0)
        if float((w * h).max()) >= cover_thresh * float(area[i]):
            alive[i] = False
    return keep[alive]


@torch.no_grad()
def detect(
    model: nn.Module,
    image: Tensor,
    *,
    image_size: Optional[int] = None,
    max_size: Optional[int] = None,
    tile: Optional[int] = None,
    overlap: float = 0.25,
    batch_size: int = 4,
    score_thresh: float = 0.0,
    progress: bool = False,
) -> Dict:
    """Detections of ``model`` (eval mode, on its device) on one image, in the image's pixels.

    Args:
        image (Tensor[3, H, W]): float in [0, 1].
        image_size, max_size (int, optional): the training scale: the image (or each tile) is
            resized so its shorter side is ``image_size`` (longer side at most ``max_size``), as
            :class:`~focalops.data.Resize`; None runs it at its own size.
        tile (int, optional): cut the image into ``tile``-pixel tiles (see :func:`tile_windows`)
            overlapping by ``overlap`` and merge their detections (:func:`merge_tiles`).
        batch_size (int): tiles per forward pass. Default 4.
        score_thresh (float): keep detections scoring at least this. Default 0.

    Returns:
        ``{"boxes": Tensor[D, 4], "scores": Tensor[D], "labels": Tensor[D], "best_score": float or
        None}``, best first; ``best_score`` is the highest score the model gave, kept or not (None
        when it returned nothing).
    """
    from tqdm import tqdm

    from focalops.data import Resize

    height, width = image.shape[-2:]
    windows = tile_windows(height, width, tile, overlap) if tile else [(0, 0, width, height)]
    resize = Resize(image_size, max_size) if image_size else None
    device = next(model.parameters()).device
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    found: List[Tuple[Tensor, ...]] = []
    bar = tqdm(total=len(windows), desc="tiles", disable=not progress or len(windows) == 1, leave=False)
    for first in range(0, len(windows), batch_size):
        batch = windows[first : first + batch_size]
        crops = [image[:, y1:y2, x1:x2] for x1, y1, x2, y2 in batch]
        inputs = [resize(crop, empty)[0] if resize else crop for crop in crops]
        outputs = model([x.to(device) for x in inputs])
        for k, (window, crop, x, out) in enumerate(zip(batch, crops, inputs, outputs)):
            x1, y1, x2, y2 = window
            sx, sy = crop.shape[-1] / x.shape[-1], crop.shape[-2] / x.shape[-2]
            boxes = out["boxes"].float().cpu() * torch.tensor([sx, sy, sx, sy]) + torch.tensor([x1, y1, x1, y1])
            margin = 2 * max(sx, sy)  # two model pixels
            cut = (
                ((x1 > 0) & (boxes[:, 0] <= x1 + margin))
                | ((x2 < width) & (boxes[:, 2] >= x2 - margin))
                | ((y1 > 0) & (boxes[:, 1] <= y1 + margin))
                | ((y2 < height) & (boxes[:, 3] >= y2 - margin))
            )
            tile_id = torch.full((boxes.shape[0],), first + k, dtype=torch.int64)
            found.append((boxes, out["scores"].float().cpu(), out["labels"].cpu(), tile_id, cut))
        bar.update(len(batch))
    bar.close()
    boxes, scores, labels, tiles, cut = (torch.cat(parts) for parts in zip(*found))
    best = float(scores.max()) if scores.numel() else None
    passed = scores >= score_thresh
    boxes, scores, labels, tiles, cut = boxes[passed], scores[passed], labels[passed], tiles[passed], cut[passed]
    if len(windows) > 1:
        keep = merge_tiles(boxes, scores, labels, tiles, cut, model.config["nms_thresh"])
    else:
        keep = torch.argsort(scores, descending=True, stable=True)
    return {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep], "best_score": best}


def draw(picture, detections: Dict, classes: Sequence[str]):
    """Draws boxes with class names and scores on a PIL image (in place; returns it). Line width
    and text grow with the image."""
    from PIL import ImageDraw, ImageFont

    canvas = ImageDraw.Draw(picture)
    scale = max(picture.size) / 640
    width = max(2, round(2 * scale))
    font = ImageFont.load_default(size=max(11, round(11 * scale)))
    for box, score, label in zip(
        detections["boxes"].tolist(), detections["scores"].tolist(), detections["labels"].tolist()
    ):
        colour = _PALETTE[label % len(_PALETTE)]
        text = f"{classes[label]} {score:.2f}"
        canvas.rectangle(box, outline=colour, width=width)
        left, top, right, bottom = canvas.textbbox((box[0], box[1]), text, font=font)
        y = max(0, box[1] - (bottom - top) - 2)
        canvas.rectangle((box[0], y, box[0] + right - left + 2, y + bottom - top + 2), fill=colour)
        canvas.text((box[0] + 1, y + 1 - (top - box[1])), text, fill=(0, 0, 0), font=font)
    return picture


def records(image_path: str, detections: Dict, classes: Sequence[str]) -> List[Dict]:
    """One ``{"image_path", "xmin", "ymin", "xmax", "ymax", "label", "score"}`` per detection
    (DeepForest's column names), coordinates rounded to 0.1 px."""
    return [
        {
            "image_path": image_path,
            **{k: round(v, 1) for k, v in zip(("xmin", "ymin", "xmax", "ymax"), box)},
            "label": classes[label],
            "score": round(score, 4),
        }
        for box, score, label in zip(
            detections["boxes"].tolist(), detections["scores"].tolist(), detections["labels"].tolist()
        )
    ]


def write_detections(path: str, rows: List[Dict], fmt: str) -> None:
    """Writes detection records (see :func:`records`) as ``fmt`` ``"json"`` (a list of objects) or
    ``"csv"`` (a header row, then one row per detection)."""
    if fmt == "json":
        with open(path, "w") as f:
            json.dump(rows, f, indent=1)
    elif fmt == "csv":
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=("image_path", "xmin", "ymin", "xmax", "ymax", "label", "score"))
            writer.writeheader()
            writer.writerows(rows)
    else:
        raise ValueError(f"write_detections: fmt must be 'json' or 'csv', got {fmt!r}")
