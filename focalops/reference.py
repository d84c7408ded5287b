"""Pure-PyTorch reference ops: the baseline that the tests and benchmarks compare against.

Written the way torchvision / detectron2 compute them (composites of standard torch ops).
"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def sigmoid_focal_loss(
    inputs: Tensor,
    targets: Tensor,
    alpha: float = 0.25,
    gamma: float = 2.0,
    reduction: str = "none",
    *,
    normalizer=None,
    ignore_index: int = -2,
) -> Tensor:
    """torchvision.ops.sigmoid_focal_loss; class-index targets go through a one-hot tensor."""
    weight = None
    if not (targets.dtype.is_floating_point or targets.dtype == torch.bool):
        labels = targets.long()
        keep = labels != ignore_index
        cls = torch.where(keep & (labels >= 0), labels, torch.full_like(labels, inputs.shape[-1]))
        targets = F.one_hot(cls, inputs.shape[-1] + 1)[..., :-1]
        weight = keep.unsqueeze(-1).to(inputs.dtype)
    targets = targets.to(inputs.dtype)
    p = torch.sigmoid(inputs)
    ce_loss = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce_loss * ((1 - p_t) ** gamma)
    if alpha >= 0:
        alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
        loss = alpha_t * loss
    if weight is not None:
        loss = loss * weight
    if reduction == "mean":
        loss = loss.mean()
    elif reduction == "sum":
        loss = loss.sum()
    if normalizer is not None:
        loss = loss / normalizer
    return loss


# ---------------------------------------------------------------------------------------------
# Boxes, assignment, box coding (torchvision.ops.boxes / detection._utils.Matcher, BoxCoder)


def box_area(boxes: Tensor) -> Tensor:
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """torchvision.ops.box_iou, except that an empty union gives 0 instead of NaN."""
    area1 = box_area(boxes1)
    area2 = box_area(boxes2)
    lt = torch.max(boxes1[:, None, :2], boxes2[:, :2])
    rb = torch.min(boxes1[:, None, 2:], boxes2[:, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[:, :, 0] * wh[:, :, 1]
    union = area1[:, None] + area2 - inter
    return torch.where(union > 0, inter / union, torch.zeros_like(inter))


def _match(quality: Tensor, fg_iou: float, bg_iou: float, allow_low_quality: bool) -> Tensor:
    """torchvision Matcher.__call__ on quality [G, A] (G >= 1), plus the SPEC's exception: a box
    whose best IoU is 0 makes no low-quality match."""
    matched_vals, matches = quality.max(dim=0)
    all_matches = matches.clone() if allow_low_quality else None
    below_low_threshold = matched_vals < bg_iou
    between_thresholds = (matched_vals >= bg_iou) & (matched_vals < fg_iou)
    matches[below_low_threshold] = -1
    matches[between_thresholds] = -2
    if allow_low_quality:
        # Matcher.set_low_quality_matches_
        highest_quality_foreach_gt, _ = quality.max(dim=1)
        ties = (quality == highest_quality_foreach_gt[:, None]) & (highest_quality_foreach_gt[:, None] > 0)
        pred_inds_to_update = torch.where(ties)[1]
        matches[pred_inds_to_update] = all_matches[pred_inds_to_update]
    return matches


def assign(
    anchors: Tensor,
    gt_boxes: Tensor,
    gt_counts: Tensor,
    fg_iou: float = 0.5,
    bg_iou: float = 0.4,
    allow_low_quality: bool = True,
) -> Tensor:
    """Per image: box_iou (float32) then torchvision's Matcher; padding boxes are dropped and an
    image without boxes is all background (-1)."""
    anchors = anchors.float()
    out = []
    for b in range(gt_boxes.shape[0]):
        boxes = gt_boxes[b, : int(gt_counts[b])].float()
        if boxes.shape[0] == 0 or anchors.shape[0] == 0:
            out.append(torch.full((anchors.shape[0],), -1, dtype=torch.int64, device=anchors.device))
        else:
            out.append(_match(box_iou(boxes, anchors), fg_iou, bg_iou, allow_low_quality))
    if not out:
        return torch.empty((0, anchors.shape[0]), dtype=torch.int64, device=anchors.device)
    return torch.stack(out)


def encode_boxes(gt: Tensor, anchors: Tensor, weights=(1.0, 1.0, 1.0, 1.0)) -> Tensor:
    """torchvision BoxCoder.encode_single, broadcast over leading dimensions."""
    gt, anchors = torch.broadcast_tensors(gt, anchors)
    wx, wy, ww, wh = weights
    ex_widths = anchors[..., 2] - anchors[..., 0]
    ex_heights = anchors[..., 3] - anchors[..., 1]
    ex_ctr_x = anchors[..., 0] + 0.5 * ex_widths
    ex_ctr_y = anchors[..., 1] + 0.5 * ex_heights
    gt_widths = gt[..., 2] - gt[..., 0]
    gt_heights = gt[..., 3] - gt[..., 1]
    gt_ctr_x = gt[..., 0] + 0.5 * gt_widths
    gt_ctr_y = gt[..., 1] + 0.5 * gt_heights
    targets_dx = wx * (gt_ctr_x - ex_ctr_x) / ex_widths
    targets_dy = wy * (gt_ctr_y - ex_ctr_y) / ex_heights
    targets_dw = ww * torch.log(gt_widths / ex_widths)
    targets_dh = wh * torch.log(gt_heights / ex_heights)
    return torch.stack((targets_dx, targets_dy, targets_dw, targets_dh), dim=-1)


def decode_boxes(
    deltas: Tensor, anchors: Tensor, weights=(1.0, 1.0, 1.0, 1.0), clamp: float = math.log(1000.0 / 16)
) -> Tensor:
    """torchvision BoxCoder.decode_single, broadcast over leading dimensions."""
    deltas, anchors = torch.broadcast_tensors(deltas, anchors.to(deltas.dtype))
    wx, wy, ww, wh = weights
    widths = anchors[..., 2] - anchors[..., 0]
    heights = anchors[..., 3] - anchors[..., 1]
    ctr_x = anchors[..., 0] + 0.5 * widths
    ctr_y = anchors[..., 1] + 0.5 * heights
    dx = deltas[..., 0] / wx
    dy = deltas[..., 1] / wy
    dw = torch.clamp(deltas[..., 2] / ww, max=clamp)
    dh = torch.clamp(deltas[..., 3] / wh, max=clamp)
    pred_ctr_x = dx * widths + ctr_x
    pred_ctr_y = dy * heights + ctr_y
    pred_w = torch.exp(dw) * widths
    pred_h = torch.exp(dh) * heights
    c_to_c_w = 0.5 * pred_w
    c_to_c_h = 0.5 * pred_h
    return torch.stack(
        (pred_ctr_x - c_to_c_w, pred_ctr_y - c_to_c_h, pred_ctr_x + c_to_c_w, pred_ctr_y + c_to_c_h), dim=-1
    )


def retinanet_targets(
    matched: Tensor, gt_boxes: Tensor, gt_labels: Tensor, anchors: Tensor, weights=(1.0, 1.0, 1.0, 1.0)
):
    """torchvision RetinaNet's per-image target gathering, batched with gather/where."""
    fg_mask = matched >= 0
    if gt_boxes.shape[1] == 0:  # nothing to gather from: every anchor is background or ignored
        gt_boxes = torch.zeros(gt_boxes.shape[0], 1, 4, dtype=gt_boxes.dtype, device=gt_boxes.device)
        gt_labels = torch.zeros(gt_labels.shape[0], 1, dtype=gt_labels.dtype, device=gt_labels.device)
    idx = matched.clamp(min=0)
    cls_targets = torch.where(fg_mask, torch.gather(gt_labels.long(), 1, idx), matched)
    matched_boxes = torch.gather(gt_boxes, 1, idx[..., None].expand(-1, -1, 4))
    anchors = anchors.to(gt_boxes.dtype)
    box_targets = encode_boxes(torch.where(fg_mask[..., None], matched_boxes, anchors), anchors, weights)
    box_targets = torch.where(fg_mask[..., None], box_targets, torch.zeros_like(box_targets))
    return cls_targets, box_targets, fg_mask


# ---------------------------------------------------------------------------------------------
# NMS and RetinaNet post-processing (torchvision.ops.nms / batched_nms, RetinaNet
# postprocess_detections), greedy and per image, per level.


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy NMS: indices of the kept boxes by decreasing score (ties: lower index first)."""
    idxs = torch.zeros(scores.shape[0], dtype=torch.int64, device=scores.device)
    return batched_nms(boxes, scores, idxs, iou_threshold)


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """NMS within each category of idxs (boxes of different categories never suppress each other)."""
    order = torch.sort(scores, descending=True, stable=True).indices
    boxes, idxs = boxes[order], idxs[order]
    n = order.numel()
    suppressed = torch.zeros(n, dtype=torch.bool, device=boxes.device)
    keep = []
    for i in range(n):
        if suppressed[i]:
            continue
        keep.append(i)
        if i + 1 < n:
            iou = box_iou(boxes[i : i + 1].float(), boxes[i + 1 :].float())[0]
            # torchvision's kernel compares the float32 IoU with the threshold as a double
            suppressed[i + 1 :] |= (iou.double() > iou_threshold) & (idxs[i + 1 :] == idxs[i])
    return order[torch.tensor(keep, dtype=torch.int64, device=boxes.device)]


def postprocess(
    cls_logits: Tensor,
    box_deltas: Tensor,
    anchors: Tensor,
    level_sizes,
    image_sizes: Tensor,
    score_thresh: float = 0.05,
    topk_candidates: int = 1000,
    nms_thresh: float = 0.5,
    detections_per_img: int = 100,
):
    """torchvision RetinaNet.postprocess_detections, padded to detections_per_img per image.

    The top-k of a level is a stable sort (tied scores: lower flat index first), where
    torchvision's topk leaves the order of ties unspecified; otherwise the same."""
    num_images, _, num_classes = cls_logits.shape
    dtype = torch.promote_types(cls_logits.dtype, torch.float32)
    device = cls_logits.device
    out_boxes = torch.zeros(num_images, detections_per_img, 4, dtype=dtype, device=device)
    out_scores = torch.zeros(num_images, detections_per_img, dtype=dtype, device=device)
    out_labels = torch.full((num_images, detections_per_img), -1, dtype=torch.int64, device=device)
    counts = torch.zeros(num_images, dtype=torch.int64, device=device)
    for b in range(num_images):
        height, width = (float(v) for v in image_sizes[b])
        image_boxes, image_scores, image_labels = [], [], []
        split = list(level_sizes)
        levels = zip(cls_logits[b].split(split), box_deltas[b].split(split), anchors.split(split))
        for logits_l, deltas_l, anchors_l in levels:
            scores_l = torch.sigmoid(logits_l.to(dtype)).flatten()
            keep_idxs = scores_l > score_thresh
            scores_l = scores_l[keep_idxs]
            topk_idxs = torch.where(keep_idxs)[0]
            num_topk = min(topk_candidates, topk_idxs.numel())
            scores_l, idxs = scores_l.sort(descending=True, stable=True)
            scores_l, idxs = scores_l[:num_topk], idxs[:num_topk]
            topk_idxs = topk_idxs[idxs]
            anchor_idxs = torch.div(topk_idxs, num_classes, rounding_mode="floor")
            labels_l = topk_idxs % num_classes
            # the boxes decoded must come from finite numbers (the others are never read)
            if not bool(deltas_l[anchor_idxs].isfinite().all()):
                raise RuntimeError("postprocess: box_deltas contains NaN or inf")
            if not bool(anchors_l[anchor_idxs].isfinite().all()):
                raise RuntimeError("postprocess: anchors contain NaN or inf")
            boxes_l = decode_boxes(deltas_l[anchor_idxs].to(dtype), anchors_l[anchor_idxs].to(dtype))
            boxes_l = torch.stack(
                (
                    boxes_l[:, 0].clamp(0, width),
                    boxes_l[:, 1].clamp(0, height),
                    boxes_l[:, 2].clamp(0, width),
                    boxes_l[:, 3].clamp(0, height),
                ),
                dim=1,
            )
            image_boxes.append(boxes_l)
            image_scores.append(scores_l)
            image_labels.append(labels_l)
        boxes_b, scores_b, labels_b = torch.cat(image_boxes), torch.cat(image_scores), torch.cat(image_labels)
        keep = batched_nms(boxes_b, scores_b, labels_b, nms_thresh)[:detections_per_img]
        n = keep.numel()
        out_boxes[b, :n], out_scores[b, :n], out_labels[b, :n] = boxes_b[keep], scores_b[keep], labels_b[keep]
        counts[b] = n
    return out_boxes, out_scores, out_labels, counts
