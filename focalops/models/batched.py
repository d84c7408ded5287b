"""The batch plumbing both RetinaNet paths share (ours, :class:`focalops.models.RetinaNet`, and a
torchvision RetinaNet under :func:`focalops.accelerate`): ground truth padded into one batch, the
L1 box loss of the foreground anchors, and padded detections split per image.

TorchScript-compatible: the accelerated torchvision model's ``compute_loss`` and
``postprocess_detections`` call them, and torchvision's models can be scripted.
"""

from typing import Dict, List, Tuple

import torch
from torch import Tensor


def pad_targets(boxes: List[Tensor], labels: List[Tensor]) -> Tuple[Tensor, Tensor, Tensor]:
    """Per image ``boxes [G_i, 4]`` and ``labels [G_i]`` -> ``boxes [B, G, 4]`` float32, ``labels
    [B, G]`` int64 (zero padding, ``G = max G_i``) on the first image's device, and ``counts [B]``
    int64 on the host (from the shapes: no device synchronisation)."""
    sizes = [b.shape[0] for b in boxes]
    counts = torch.tensor(sizes, dtype=torch.int64)
    g = max(sizes + [0])
    gt_boxes = torch.zeros(len(boxes), g, 4, dtype=torch.float32, device=boxes[0].device)
    gt_labels = torch.zeros(len(labels), g, dtype=torch.int64, device=labels[0].device)
    for i in range(len(boxes)):
        gt_boxes[i, : boxes[i].shape[0]] = boxes[i]
        gt_labels[i, : labels[i].shape[0]] = labels[i]
    return gt_boxes, gt_labels, counts


def foreground_l1(box_deltas: Tensor, box_targets: Tensor, foreground: Tensor) -> Tensor:
    """``[B]``, float32: per image, the L1 distance of the predicted deltas ``[B, A, 4]`` to their
    targets, summed over the foreground anchors (``foreground [B, A]``); the RetinaNet box loss
    before its normaliser."""
    l1 = (box_deltas.float() - box_targets.float()).abs().sum(-1)
    return torch.where(foreground, l1, torch.zeros_like(l1)).sum(1)


def split_detections(boxes: Tensor, scores: Tensor, labels: Tensor, counts: Tensor) -> List[Dict[str, Tensor]]:
    """Padded detections ``boxes [B, D, 4], scores [B, D], labels [B, D], counts [B]`` -> one
    ``{"boxes", "scores", "labels"}`` per image, its first ``counts[b]`` rows (views). Reads the
    counts on the host: the one synchronisation of an eval step."""
    detections: List[Dict[str, Tensor]] = []
    counts_list: List[int] = counts.tolist()
    for i, n in enumerate(counts_list):
        detections.append({"boxes": boxes[i, :n], "scores": scores[i, :n], "labels": labels[i, :n]})
    return detections
