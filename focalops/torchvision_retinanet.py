"""torchvision's RetinaNet on focalops' ops, in place: ``focalops.accelerate(model)``.

The model (and its anchor generator, when it is torchvision's ``AnchorGenerator``) changes class
in place to a subclass that overrides ``compute_loss`` and ``postprocess_detections`` (and
caches the anchors): every attribute, method and module stays where it was, ``isinstance``
holds, TorchScript compiles the subclass's methods, and pickling goes through
``__reduce_ex__`` to module-level functions that rebuild the accelerated object (pickle,
``copy.deepcopy``, ``torch.save`` of the whole model). ``undo`` restores the original class.
The subclasses are created once per original class (torchvision is imported only by
``accelerate``).
"""

import contextlib
import functools
import types
from typing import Dict, List, Tuple

import torch
from torch import Tensor, nn

import focalops
from focalops.errors import OpIndexError
from focalops.models.batched import foreground_l1, pad_targets, split_detections
from focalops.models.retinanet import per_anchor_rows
from focalops.ops.anchors import LruCache

_CACHE_SIZE = 8
_CACHE_ATTR = "_focalops_anchor_cache"


def _check_labels(targets: List[Dict[str, Tensor]], num_classes: int) -> None:
    """Labels outside ``[0, num_classes)`` raise what torchvision's loss raises for them (an
    ``IndexError``), naming the image. Checked where the labels are on the CPU; on a GPU the
    check would cost a synchronisation, and the focal loss kernel's device-side assertion stops
    the step instead (as torchvision's indexing does there)."""
    for i, target in enumerate(targets):
        labels = target["labels"]
        if labels.device.type == "cpu" and labels.numel() > 0:
            low, high = int(labels.min()), int(labels.max())
            if low < 0 or high >= num_classes:
                bad = low if low < 0 else high
                raise OpIndexError(f"targets[{i}]['labels'] holds {bad}, outside [0, {num_classes}) (num_classes)")


def _compute_loss(self, targets: List[Dict[str, Tensor]], head_outputs: Dict[str, Tensor], anchors: List[Tensor]):
    """torchvision's ``RetinaNet.compute_loss`` on one batched ``assign`` and ``retinanet_targets``
    and the class-index focal loss: the same losses, normalised per image by its foreground
    count and averaged over the images, as torchvision."""
    cls_logits, box_deltas = head_outputs["cls_logits"], head_outputs["bbox_regression"]
    _check_labels(targets, cls_logits.shape[-1])
    anchors0 = anchors[0]  # one padded batch: every image has the same anchors
    gt_boxes, gt_labels, counts = pad_targets([t["boxes"] for t in targets], [t["labels"] for t in targets])
    counts = counts.to(anchors0.device, non_blocking=True)
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
    box_loss = foreground_l1(box_deltas, box_targets, foreground) / num_fg
    n = max(1, len(targets))
    return {"classification": cls_loss.sum() / n, "bbox_regression": box_loss.sum() / n}


def _postprocess_detections(
    head_outputs: Dict[str, List[Tensor]],
    anchors: List[List[Tensor]],
    image_shapes: List[Tuple[int, int]],
    score_thresh: float,
    topk_candidates: int,
    nms_thresh: float,
    detections_per_img: int,
) -> List[Dict[str, Tensor]]:
    """torchvision's ``RetinaNet.postprocess_detections`` as one batched ``focalops.postprocess``."""
    detections: List[Dict[str, Tensor]] = []
    if len(image_shapes) == 0:
        return detections
    level_sizes = [t.shape[1] for t in head_outputs["cls_logits"]]
    if torch.jit.is_scripting() or torch.compiler.is_compiling():
        cls_logits = torch.cat(head_outputs["cls_logits"], dim=1)
        box_deltas = torch.cat(head_outputs["bbox_regression"], dim=1)
        anchors0 = torch.cat(anchors[0])
    else:
        cls_logits = _joined(head_outputs["cls_logits"], 1)
        box_deltas = _joined(head_outputs["bbox_regression"], 1)
        anchors0 = _joined(anchors[0], 0)
    # (focalops.postprocess converts deltas, anchors and sizes to the logits' math type)
    sizes = [[float(h), float(w)] for h, w in image_shapes]
    image_sizes = torch.tensor(sizes).to(cls_logits.device, non_blocking=True)
    boxes, scores, labels, counts = focalops.postprocess(
        cls_logits,
        box_deltas,
        anchors0,
        level_sizes,
        image_sizes,
        score_thresh,
        topk_candidates,
        nms_thresh,
        detections_per_img,
    )
    return split_detections(boxes, scores, labels, counts)


def _joined(parts: List[Tensor], dim: int) -> Tensor:
    """``torch.cat(parts, dim)``, as a view when the parts are consecutive slices along ``dim``
    of one tensor: torchvision's ``RetinaNet.forward`` splits its head outputs and anchors per
    level, and joining them back is a copy of every logit (half the accelerated method's time at 80
    classes)."""
    first = parts[0]
    offset = first.storage_offset()
    storage = first.untyped_storage().data_ptr()
    for p in parts:
        next_slice = (
            p.dim() == first.dim()
            and p.dtype == first.dtype
            and p.device == first.device
            and p.untyped_storage().data_ptr() == storage
            and p.stride() == first.stride()
            and p.storage_offset() == offset
            and p.shape[:dim] + p.shape[dim + 1 :] == first.shape[:dim] + first.shape[dim + 1 :]
        )
        if not next_slice:
            return torch.cat(parts, dim)
        offset += p.shape[dim] * p.stride(dim)
    size = list(first.shape)
    size[dim] = sum(p.shape[dim] for p in parts)
    # element i along dim of the whole is element i - start of the part holding it, at the same
    # address: the view reads exactly what the concatenation would hold
    return first.as_strided(size, first.stride(), first.storage_offset())


def _requires_grad(tensors: List[Tensor]) -> bool:
    for t in tensors:
        if t.requires_grad:
            return True
    return False


class _AcceleratedRetinaNet(nn.Module):
    """The methods an accelerated torchvision ``RetinaNet`` overrides (a mixin placed before
    the model's own class). ``_torchvision_compute_loss`` and ``_torchvision_postprocess_detections``
    are the original class's methods, set per subclass."""

    def compute_loss(
        self, targets: List[Dict[str, Tensor]], head_outputs: Dict[str, Tensor], anchors: List[Tensor]
    ) -> Dict[str, Tensor]:
        if torch.jit.is_scripting():
            # A scripted model trains with torchvision's loss (focalops' batched target building
            # is eager Python); its inference runs on focalops.postprocess.
            return self._torchvision_compute_loss(targets, head_outputs, anchors)
        else:
            return _compute_loss(self, targets, head_outputs, anchors)

    def postprocess_detections(
        self,
        head_outputs: Dict[str, List[Tensor]],
        anchors: List[List[Tensor]],
        image_shapes: List[Tuple[int, int]],
    ) -> List[Dict[str, Tensor]]:
        if torch.is_grad_enabled() and (
            _requires_grad(head_outputs["cls_logits"]) or _requires_grad(head_outputs["bbox_regression"])
        ):
            # focalops.postprocess has no gradient: where the scores and boxes must carry one
            # (eval mode with autograd on), torchvision's own differentiable path runs instead.
            return self._torchvision_postprocess_detections(head_outputs, anchors, image_shapes)
        return _postprocess_detections(
            head_outputs,
            anchors,
            image_shapes,
            self.score_thresh,
            self.topk_candidates,
            self.nms_thresh,
            self.detections_per_img,
        )

    def __reduce_ex__(self, protocol):
        # Rebuilt through a module-level function (the subclass is made at run time), so that
        # pickle, deepcopy and torch.save give back an accelerated model.
        return _new_accelerated, (self._focalops_base,), self.__dict__.copy()


def _new_accelerated(base: type) -> nn.Module:
    """An empty instance of the accelerated subclass of ``base`` (unpickling fills its state)."""
    cls = _subclass(_AcceleratedRetinaNet, base)
    return cls.__new__(cls)


def _new_cached_anchors(base: type) -> nn.Module:
    cls = _subclass(_anchor_mixin(), base)
    return cls.__new__(cls)


@functools.cache
def _subclass(mixin: type, base: type) -> type:
    """The subclass of ``base`` with ``mixin``'s overrides, one per (mixin, base)."""
    if mixin is _AcceleratedRetinaNet:
        attrs = {
            "_torchvision_compute_loss": _renamed(base.compute_loss, "_torchvision_compute_loss"),
            "_torchvision_postprocess_detections": _renamed(
                base.postprocess_detections, "_torchvision_postprocess_detections"
            ),
        }
    else:
        attrs = {"_uncached_forward": _renamed(base.forward, "_uncached_forward")}
    attrs.update(_focalops_base=base, __module__=__name__, __doc__=base.__doc__)
    return type(f"Accelerated{base.__name__}", (mixin, base), attrs)


def _renamed(fn, name: str):
    """``fn`` under another name: the original class's method kept beside the override. TorchScript
    compiles a method called from another under the function's ``__name__``, which must not be
    the override's."""
    copy = types.FunctionType(fn.__code__, fn.__globals__, name, fn.__defaults__, fn.__closure__)
    copy.__annotations__ = dict(fn.__annotations__)
    copy.__kwdefaults__ = fn.__kwdefaults__
    copy.__qualname__ = fn.__qualname__.rsplit(".", 1)[0] + "." + name
    return copy


@functools.cache
def _anchor_mixin() -> type:
    """The mixin of a cached ``AnchorGenerator`` (made on first use: its ``forward`` signature
    names torchvision's ``ImageList``, for TorchScript)."""
    # A module global, not a local: TorchScript resolves the annotation through the globals.
    global ImageList
    from torchvision.models.detection.image_list import ImageList

    class _CachedAnchors(nn.Module):
        """torchvision's ``AnchorGenerator``, remembering its anchors on the device for the
        last few inputs. The key holds everything they depend on: the batch size, the padded
        image size, the feature sizes, device and dtype, the generator's ``sizes`` and
        ``aspect_ratios``, and its ``cell_anchors`` (the tensors themselves and their version
        counters: replacing them or changing them in place is a new key)."""

        __jit_ignored_attributes__ = [_CACHE_ATTR]  # eager only: TorchScript's forward is uncached

        def forward(self, image_list: ImageList, feature_maps: List[Tensor]) -> List[Tensor]:
            if torch.jit.is_scripting():
                return self._uncached_forward(image_list, feature_maps)
            else:
                return _cached_anchors(self, image_list, feature_maps)

        def __reduce_ex__(self, protocol):
            state = {k: v for k, v in self.__dict__.items() if k != _CACHE_ATTR}
            return _new_cached_anchors, (self._focalops_base,), state

    return _CachedAnchors


def _cached_anchors(gen: nn.Module, image_list, feature_maps: List[Tensor]) -> List[Tensor]:
    if torch.compiler.is_compiling():
        return gen._uncached_forward(image_list, feature_maps)
    cells = tuple(gen.cell_anchors)
    key = (
        len(image_list.image_sizes),
        tuple(image_list.tensors.shape[-2:]),
        tuple(tuple(f.shape[-2:]) for f in feature_maps),
        feature_maps[0].device,
        feature_maps[0].dtype,
        repr(gen.sizes),
        repr(gen.aspect_ratios),
        tuple((id(c), c._version) for c in cells),
    )
    cache = gen.__dict__.setdefault(_CACHE_ATTR, LruCache(_CACHE_SIZE))
    hit = cache.get(key)
    if hit is None or any(a is not b for a, b in zip(hit[0], cells)):  # an id reused by a new tensor
        hit = cache.put(key, (cells, gen._uncached_forward(image_list, feature_maps)))
    return list(hit[1])


def accelerate(model: nn.Module, undo: bool = False) -> nn.Module:
    """Puts a torchvision ``RetinaNet`` (any backbone) on focalops' ops, in place.

    The model changes class, in place, to a subclass of its own class (``AcceleratedRetinaNet``)
    whose ``compute_loss`` (one batched ``assign`` + ``retinanet_targets``, the class-index focal
    loss and the L1 box loss; per-image normalisation by the foreground count, as torchvision)
    and ``postprocess_detections`` (one batched ``postprocess`` for all images and levels) run on
    focalops, with torchvision's signatures; a torchvision ``AnchorGenerator`` likewise becomes a
    subclass that caches its anchors on the device (keyed on everything they depend on; its
    interface is unchanged). Losses, gradients and detections are torchvision's (to float
    tolerance; one documented difference: a ground-truth box that overlaps no anchor at all makes
    no low-quality matches, where torchvision's Matcher would match it to anchors at IoU 0).
    Works in train and eval mode, under autocast and ``torch.compile``. Where the head outputs
    require grad in ``postprocess_detections`` (eval mode with autograd on), torchvision's own
    differentiable post-processing runs, so the scores and boxes carry its gradient. The model
    scripts (``torch.jit.script``: its inference runs on ``focalops.postprocess``, its training
    on torchvision's loss) and survives ``pickle``, ``copy.deepcopy``, ``torch.save`` /
    ``torch.load`` and ``state_dict`` round trips, still accelerated.

    Args:
        model: a ``torchvision.models.detection.RetinaNet`` with an L1 box loss (the v1 model;
            v2's GIoU loss is not accelerated).
        undo (bool): restore the original classes instead. Default False.

    Returns:
        The same model object.

    Raises:
        TypeError: ``model`` is not a torchvision RetinaNet.
        ValueError: its box loss is not L1.
    """
    from torchvision.models.detection import RetinaNet as TorchvisionRetinaNet
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    if not isinstance(model, TorchvisionRetinaNet):
        raise TypeError(f"focalops.accelerate: expected a torchvision RetinaNet, got {type(model).__name__}")
    gen = model.anchor_generator
    if undo:
        if isinstance(model, _AcceleratedRetinaNet):
            model.__class__ = model._focalops_base
        if isinstance(gen, _anchor_mixin()):
            gen.__class__ = gen._focalops_base
            gen.__dict__.pop(_CACHE_ATTR, None)
        return model
    loss_type = getattr(model.head.regression_head, "_loss_type", "l1")
    if loss_type != "l1":
        raise ValueError(f"focalops.accelerate: box loss {loss_type!r} is not supported (only 'l1')")
    if not isinstance(model, _AcceleratedRetinaNet):
        model.__class__ = _subclass(_AcceleratedRetinaNet, type(model))
    # Only torchvision's own generator is cached: a subclass's anchors may depend on more.
    if type(gen) is AnchorGenerator:
        gen.__class__ = _subclass(_anchor_mixin(), type(gen))
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
        # (accelerate keeps torchvision's AnchorGenerator, cell_anchors included)
        self.anchor_generator = _CellAnchors(list(model.anchor_generator.cell_anchors))
        transform = model.transform
        self.register_buffer("mean", torch.tensor(transform.image_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(transform.image_std).view(1, 3, 1, 1), persistent=False)
        self.size_divisible = int(transform.size_divisible)

    def _head(self, features: List[Tensor]) -> Tuple[Tensor, Tensor]:
        """The head's ``cls_logits [B, A, K]`` and ``bbox_regression [B, A, 4]``. torchvision's
        own head classes run their layers here, and their outputs take the layout of
        ``per_anchor_rows`` (the same values; an exported program then runs 1 x 1 levels too);
        a head of another class runs as it is."""
        from torchvision.models.detection.retinanet import RetinaNetClassificationHead, RetinaNetRegressionHead

        head = self.model.head
        cls_head, reg_head = head.classification_head, head.regression_head
        if type(cls_head) is not RetinaNetClassificationHead or type(reg_head) is not RetinaNetRegressionHead:
            out = head(features)
            return out["cls_logits"], out["bbox_regression"]
        cls_logits = [per_anchor_rows(cls_head.cls_logits(cls_head.conv(f)), cls_head.num_classes) for f in features]
        box_deltas = [per_anchor_rows(reg_head.bbox_reg(reg_head.conv(f)), 4) for f in features]
        return torch.cat(cls_logits, dim=1), torch.cat(box_deltas, dim=1)

    def forward(self, images: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        m = self.model
        batch = (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)
        batch = torch.nn.functional.pad(
            batch, (0, -images.shape[-1] % self.size_divisible, 0, -images.shape[-2] % self.size_divisible)
        )
        features = list(m.backbone(batch).values())
        cls_logits, box_deltas = self._head(features)
        anchors, level_sizes = self.anchor_generator(
            [tuple(f.shape[-2:]) for f in features],
            device=batch.device,
            dtype=batch.dtype,
            image_size=tuple(batch.shape[-2:]),
        )
        n, _, h, w = images.shape
        image_sizes = torch.stack([images.new_full((n,), h), images.new_full((n,), w)], dim=1)
        return focalops.postprocess(
            cls_logits,
            box_deltas,
            anchors,
            level_sizes,
            image_sizes,
            score_thresh=m.score_thresh,
            topk_candidates=m.topk_candidates,
            nms_thresh=m.nms_thresh,
            detections_per_img=m.detections_per_img,
        )
