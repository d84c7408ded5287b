"""torchvision's RetinaNet on focalops' ops, in place: ``focalops.accelerate(model)``."""

import contextlib
import types
from collections import OrderedDict
from typing import Dict, List, Tuple

import torch
from torch import Tensor, nn

import focalops

_PATCHED = ("compute_loss", "postprocess_detections")
_CACHE_SIZE = 8


def _padded_targets(targets: List[Dict[str, Tensor]], device) -> Tuple[Tensor, Tensor, Tensor]:
    """``boxes [B, G, 4]``, ``labels [B, G]``, ``counts [B]`` from torchvision's list of dicts."""
    boxes = [t["boxes"].float() for t in targets]
    labels = [t["labels"].long() for t in targets]
    counts = torch.tensor([b.shape[0] for b in boxes], dtype=torch.int64)  # shapes: known on the host
    g = int(counts.max()) if len(boxes) else 0
    gt_boxes = boxes[0].new_zeros(len(boxes), g, 4)
    gt_labels = labels[0].new_zeros(len(labels), g)
    for i, (b, lab) in enumerate(zip(boxes, labels)):
        gt_boxes[i, : b.shape[0]] = b
        gt_labels[i, : lab.shape[0]] = lab
    return gt_boxes, gt_labels, counts.to(device, non_blocking=True)


def _compute_loss(self, targets: List[Dict[str, Tensor]], head_outputs: Dict[str, Tensor], anchors: List[Tensor]):
    """torchvision's ``RetinaNet.compute_loss`` on one batched ``assign`` and ``retinanet_targets``
    and the class-index focal loss: the same losses, normalised per image by its foreground
    count and averaged over the images, as torchvision."""
    cls_logits, box_deltas = head_outputs["cls_logits"], head_outputs["bbox_regression"]
    anchors0 = anchors[0]  # one padded batch: every image has the same anchors
    gt_boxes, gt_labels, counts = _padded_targets(targets, anchors0.device)
    matcher = self.proposal_matcher
    matched = focalops.assign(
        anchors0.float(),
        gt_boxes,
        counts,
        matcher.high_threshold,
        matcher.low_threshold,
        matcher.allow_low_quality_matches,
    )
    cls_targets, box_targets, foreground = focalops.retinanet_targets(
        matched, gt_boxes, gt_labels, anchors0.float(), weights=tuple(self.box_coder.weights)
    )
    num_fg = foreground.sum(1).clamp(min=1).float()  # [B], stays on the device
    cls_loss = torch.stack(
        [
            focalops.sigmoid_focal_loss(cls_logits[b], cls_targets[b], reduction="sum", normalizer=num_fg[b])
            for b in range(cls_logits.shape[0])
        ]
    ).float()
    l1 = (box_deltas.float() - box_targets).abs().sum(-1)
    box_loss = torch.where(foreground, l1, torch.zeros_like(l1)).sum(1) / num_fg
    n = max(1, len(targets))
    return {"classification": cls_loss.sum() / n, "bbox_regression": box_loss.sum() / n}


def _postprocess_detections(self, head_outputs: Dict[str, List[Tensor]], anchors: List[List[Tensor]], image_shapes):
    """torchvision's ``RetinaNet.postprocess_detections`` as one batched ``focalops.postprocess``."""
    level_sizes = [t.shape[1] for t in head_outputs["cls_logits"]]
    cls_logits = torch.cat(head_outputs["cls_logits"], dim=1)
    box_deltas = torch.cat(head_outputs["bbox_regression"], dim=1)
    math_dtype = torch.float64 if cls_logits.dtype == torch.float64 else torch.float32
    anchors0 = torch.cat(anchors[0]).to(math_dtype)
    image_sizes = torch.tensor(image_shapes, dtype=math_dtype).to(cls_logits.device, non_blocking=True)
    boxes, scores, labels, counts = focalops.postprocess(
        cls_logits,
        box_deltas.to(math_dtype),
        anchors0,
        level_sizes,
        image_sizes,
        score_thresh=self.score_thresh,
        topk_candidates=self.topk_candidates,
        nms_thresh=self.nms_thresh,
        detections_per_img=self.detections_per_img,
    )
    return [
        {"boxes": b[:n], "scores": s[:n], "labels": lab[:n]}
        for b, s, lab, n in zip(boxes, scores, labels, counts.tolist())
    ]


class _CachedAnchors(nn.Module):
    """torchvision's anchor generator, remembered per (batch size, padded size, feature sizes,
    device, dtype) on the device: its anchors are recomputed from Python lists every step."""

    def __init__(self, generator: nn.Module):
        super().__init__()
        self.generator = generator
        self._cache: OrderedDict[tuple, List[Tensor]] = OrderedDict()

    def forward(self, image_list, feature_maps: List[Tensor]) -> List[Tensor]:
        key = (
            len(image_list.image_sizes),
            tuple(image_list.tensors.shape[-2:]),
            tuple(tuple(f.shape[-2:]) for f in feature_maps),
            feature_maps[0].device,
            feature_maps[0].dtype,
        )
        if key not in self._cache:
            self._cache[key] = self.generator(image_list, feature_maps)
            if len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)
        self._cache.move_to_end(key)
        return list(self._cache[key])


def accelerate(model: nn.Module, undo: bool = False) -> nn.Module:
    """Puts a torchvision ``RetinaNet`` (any backbone) on focalops' ops, in place.

    Replaces, on this instance only and with torchvision's signatures:
    ``compute_loss`` (one batched ``assign`` + ``retinanet_targets``, the class-index focal loss
    and the L1 box loss; per-image normalisation by the foreground count, as torchvision),
    ``postprocess_detections`` (one batched ``postprocess`` for all images and levels) and the
    anchor generator (cached on the device). Losses, gradients and detections are torchvision's
    (to float tolerance; one documented difference: a ground-truth box that overlaps no anchor
    at all makes no low-quality matches, where torchvision's Matcher would match it to anchors
    at IoU 0). Works in train and eval mode, under autocast and ``torch.compile``.

    Args:
        model: a ``torchvision.models.detection.RetinaNet`` with an L1 box loss (the v1 model;
            v2's GIoU loss is not accelerated).
        undo (bool): restore torchvision's own methods instead. Default False.

    Returns:
        The same model object.

    Raises:
        TypeError: ``model`` is not a torchvision RetinaNet.
        ValueError: its box loss is not L1.
    """
    from torchvision.models.detection import RetinaNet as TorchvisionRetinaNet

    if not isinstance(model, TorchvisionRetinaNet):
        raise TypeError(f"focalops.accelerate: expected a torchvision RetinaNet, got {type(model).__name__}")
    if undo:
        for name in _PATCHED:
            model.__dict__.pop(name, None)
        if isinstance(model.anchor_generator, _CachedAnchors):
            model.anchor_generator = model.anchor_generator.generator
        return model
    loss_type = getattr(model.head.regression_head, "_loss_type", "l1")
    if loss_type != "l1":
        raise ValueError(f"focalops.accelerate: box loss {loss_type!r} is not supported (only 'l1')")
    model.compute_loss = types.MethodType(_compute_loss, model)
    model.postprocess_detections = types.MethodType(_postprocess_detections, model)
    if not isinstance(model.anchor_generator, _CachedAnchors):
        model.anchor_generator = _CachedAnchors(model.anchor_generator)
    return model


@contextlib.contextmanager
def accelerated(model: nn.Module):
    """``with focalops.accelerated(model): ...`` runs ``model`` on focalops' ops, then restores it."""
    accelerate(model)
    try:
        yield model
    finally:
        accelerate(model, undo=True)


# ---- deployment: the whole torchvision detector as one exportable module ---------------------
class _CellAnchors(focalops.AnchorGenerator):
    """focalops' anchor generator (cached eagerly, traceable with symbolic sizes) on the cell
    anchors of a torchvision ``AnchorGenerator``, with torchvision's strides
    (``padded image size // feature size``)."""

    def __init__(self, cell_anchors: List[Tensor]):
        levels = len(cell_anchors)
        super().__init__(sizes=(1,) * levels, strides=(1,) * levels)
        self._cells = [c.detach().to("cpu", torch.float64) for c in cell_anchors]

    def _cell_anchors_host(self, level: int, dtype: torch.dtype) -> Tensor:
        return self._cells[level].to(dtype)


class TorchvisionDetector(nn.Module):
    """The inference path of a torchvision ``RetinaNet`` on focalops' ops, batched and with
    padded outputs, for ``torch.export`` and ONNX: ``images [B, 3, H, W] -> (boxes [B, D, 4],
    scores [B, D], labels [B, D], counts [B])`` as :func:`focalops.postprocess`.

    Same detections as ``focalops.accelerate(model)`` (hence torchvision's) on images that
    torchvision's transform does not resize: the module normalises (the transform's mean and
    std) and pads to its ``size_divisible`` as torchvision, and leaves resizing (``min_size``,
    ``max_size``) to the caller, so boxes are in the input's pixels. The model's own modules run
    (backbone, head); the anchors are its anchor generator's cell anchors on torchvision's grid;
    the post-processing is one ``focalops.postprocess`` with the model's thresholds.

    Args:
        model: a torchvision ``RetinaNet`` (accelerated or not), with ``BoxCoder`` weights (1, 1, 1, 1).

    Raises:
        TypeError: ``model`` is not a torchvision RetinaNet.
        ValueError: its box coder weights are not (1, 1, 1, 1).
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        from torchvision.models.detection import RetinaNet as TorchvisionRetinaNet

        if not isinstance(model, TorchvisionRetinaNet):
            raise TypeError(f"TorchvisionDetector: expected a torchvision RetinaNet, got {type(model).__name__}")
        if tuple(float(w) for w in model.box_coder.weights) != (1.0, 1.0, 1.0, 1.0):
            raise ValueError(
                f"TorchvisionDetector: box coder weights must be (1, 1, 1, 1), got {tuple(model.box_coder.weights)}"
            )
        self.model = model
        generator = model.anchor_generator
        if isinstance(generator, _CachedAnchors):
            generator = generator.generator
        self.anchor_generator = _CellAnchors(list(generator.cell_anchors))
        transform = model.transform
        self.register_buffer("mean", torch.tensor(transform.image_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(transform.image_std).view(1, 3, 1, 1), persistent=False)
        self.size_divisible = int(transform.size_divisible)

    def forward(self, images: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        m = self.model
        batch = (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)
        batch = torch.nn.functional.pad(
            batch, (0, -images.shape[-1] % self.size_divisible, 0, -images.shape[-2] % self.size_divisible)
        )
        features = list(m.backbone(batch).values())
        head = m.head(features)
        anchors, level_sizes = self.anchor_generator(
            [tuple(f.shape[-2:]) for f in features],
            device=batch.device,
            dtype=batch.dtype,
            image_size=tuple(batch.shape[-2:]),
        )
        n, _, h, w = images.shape
        image_sizes = torch.stack([images.new_full((n,), h), images.new_full((n,), w)], dim=1)
        return focalops.postprocess(
            head["cls_logits"],
            head["bbox_regression"],
            anchors,
            level_sizes,
            image_sizes,
            score_thresh=m.score_thresh,
            topk_candidates=m.topk_candidates,
            nms_thresh=m.nms_thresh,
            detections_per_img=m.detections_per_img,
        )
