"""A thin RetinaNet (Lin et al., 2017) whose loss and post-processing run on focalops ops."""

import contextlib
import math
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from focalops.models.batched import foreground_l1, pad_targets, split_detections
from focalops.models.fpn import FPN
from focalops.models.resnet import ResNet

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_PAD_MULTIPLE = 32  # torchvision's size_divisible; anchors then use torchvision's strides
# Smallest H, W of the example batch an export traces: every level P3-P7 (stride up to 128) at
# least 2 x 2, so no size is 1 while tracing. The program then takes any size from 1 pixel up.
EXPORT_EXAMPLE_MIN_SIZE = 129


class _Ops(NamedTuple):
    """The ops the detector calls; one table per implementation, chosen by ``ops=``."""

    anchor_generator: type
    assign: object
    retinanet_targets: object
    sigmoid_focal_loss: object
    postprocess: object


def _ops_table(name: str) -> _Ops:
    import focalops
    from focalops import reference

    if name not in ("focalops", "reference"):
        raise ValueError(f"RetinaNet: ops must be 'focalops' or 'reference', got {name!r}")
    src = focalops if name == "focalops" else reference

    # Anchors are generated once per feature-map size and cached: one generator serves both.
    return _Ops(focalops.AnchorGenerator, src.assign, src.retinanet_targets, src.sigmoid_focal_loss, src.postprocess)


class _Subnet(nn.Module):
    """``num_convs`` x (conv3x3 + ReLU) then a conv3x3 predicting ``per_anchor`` values for each
    of ``num_anchors`` anchors; shared across pyramid levels."""

    def __init__(self, channels: int, num_anchors: int, per_anchor: int, num_convs: int, bias_init: float):
        super().__init__()
        layers: List[nn.Module] = []
        for _ in range(num_convs):
            layers += [nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(inplace=True)]
        self.convs = nn.Sequential(*layers)
        self.out = nn.Conv2d(channels, num_anchors * per_anchor, 3, padding=1)
        self.num_anchors, self.per_anchor = num_anchors, per_anchor
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)
        nn.init.constant_(self.out.bias, bias_init)

    def forward(self, features: List[Tensor]) -> Tensor:
        return torch.cat([per_anchor_rows(self.out(self.convs(x)), self.per_anchor) for x in features], dim=1)


def per_anchor_rows(y: Tensor, per_anchor: int) -> Tensor:
    """A head's output ``[N, A*C, H, W]`` as ``[N, H*W*A, C]`` rows (``C = per_anchor``), in the
    (y, x, anchor) order of the anchors.

    Always a copy (``clone`` to the contiguous layout, then a view): ``reshape`` of the permuted
    tensor would be a view when ``H = W = 1``, and tracing that choice for a symbolic size makes
    an exported program refuse 1 x 1 levels (images up to 128 px)."""
    n, _, h, w = y.shape
    y = y.view(n, -1, per_anchor, h, w).permute(0, 3, 4, 1, 2)
    return y.clone(memory_format=torch.contiguous_format).view(n, -1, per_anchor)


class _BatchDetector(nn.Module):
    """The module `RetinaNet.export` traces: ``forward`` is the model's :meth:`RetinaNet.detect_batch`."""

    def __init__(self, model: "RetinaNet"):
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        return self.model.detect_batch(images)


PREPROCESSING = (
    "images: float32 [B, 3, H, W], RGB in [0, 1] (resized as in training: see image_size / max_size); "
    "the model normalises them (ImageNet mean and std) and pads them to a multiple of 32 itself"
)


def export_batch_detector(
    module: nn.Module, example_size: Tuple[int, int], example_batch: int, max_batch: int, max_image_size: int
) -> "torch.export.ExportedProgram":
    """``torch.export`` of a module ``images [B, 3, H, W] -> padded detections`` (in eval mode, on
    the device and dtype of its first parameter) with a dynamic batch size in ``[1, max_batch]``
    and dynamic height and width in ``[1, max_image_size]``.

    Traced size-obliviously (``backed_size_oblivious``): a size the trace sees as >= 2 is not
    assumed to stay >= 2, so nothing specialises on sizes of 1 (broadcasts in the backbone,
    1 x 1 pyramid levels) and the program runs every size in range. Height and width are
    ``Dim.DYNAMIC``: the export fails if they would specialise, and a guard the trace adds
    stays an input check of the program (torch 2.11's max-pool shape rule guards the parity of
    ``(padded - 1) // 2``, odd for every multiple of 32, which a named ``Dim`` turns into an
    export error)."""
    from torch.fx.experimental import _config as fx_config

    weight = next(module.parameters())
    example = torch.rand(example_batch, 3, *example_size, device=weight.device, dtype=weight.dtype)
    side = torch.export.Dim.DYNAMIC(min=1, max=max_image_size)
    dims = {0: torch.export.Dim("batch", min=1, max=max_batch), 2: side, 3: side}
    # A private option (torch 2.11 to 2.14 have it): where a torch lacks it, the export still
    # runs, with whatever guards that torch adds for sizes of 1 as input checks.
    oblivious = (
        fx_config.patch(backed_size_oblivious=True)
        if hasattr(fx_config, "backed_size_oblivious")
        else contextlib.nullcontext()
    )
    with oblivious:
        return torch.export.export(module, (example,), dynamic_shapes=(dims,))


class RetinaNet(nn.Module):
    """RetinaNet: ResNet + FPN P3-P7 + class and box subnets, with the focalops hot path.

    Follows torchvision's detection calling convention. In training mode
    ``model(images, targets)`` returns ``{"classification": Tensor[], "bbox_regression": Tensor[]}``:
    the class-index sigmoid focal loss (``alpha``, ``gamma``, summed, divided by the number of
    foreground anchors in the batch, at least 1) and the L1 loss of the encoded box deltas of the
    foreground anchors (same normaliser). In eval mode ``model(images)`` returns one
    ``{"boxes": Tensor[D, 4], "scores": Tensor[D], "labels": Tensor[D]}`` per image.
    The whole batch goes through anchor assignment, target building, the loss and the
    post-processing at once (no Python loop over images).

    Args:
        num_classes (int): number of object classes ``K`` (no background class).
        backbone (str): ``"resnet18"``, ``"resnet34"``, ``"resnet50"`` (default) or ``"resnet101"``.
        frozen_bn (bool): frozen BatchNorm in the backbone (fine-tuning from pretrained weights);
            default False (trainable BatchNorm, for training from scratch).
        ops (str): ``"focalops"`` (default) or ``"reference"`` (the same model on the
            ``focalops.reference`` ops, for tests and benchmarks). Settable later: ``model.ops = ...``.
        fpn_channels (int): channels of the pyramid and the heads. Default 256.
        head_convs (int): conv3x3 + ReLU layers in each subnet. Default 4.
        anchor_sizes (Sequence[int]): base anchor size per level P3-P7. Default (32, 64, 128, 256, 512).
        fg_iou, bg_iou (float): assignment thresholds. Default 0.5, 0.4.
        focal_alpha, focal_gamma (float): focal loss parameters. Default 0.25, 2.
        score_thresh, nms_thresh (float), topk_candidates, detections_per_img (int):
            post-processing, as torchvision (0.05, 0.5, 1000, 300).
        p6_from (str): ``"c5"`` (the paper; default) or ``"p5"`` (torchvision's v1
            ``retinanet_resnet50_fpn``; `from_torchvision` sets it).

    Inputs:
        images: a list of float ``Tensor[3, H, W]`` in [0, 1] (sizes may differ) or one
            ``Tensor[B, 3, H, W]``. The model normalises them with the ImageNet mean and std and
            pads them (bottom / right) to a multiple of 32, as torchvision; the anchors of a
            level are then spaced ``padded_size // feature_size`` apart, as torchvision's (the
            nominal stride 8 ... 128 whenever the padded size is a multiple of 128). Resizing
            is the data pipeline's job.
        targets (training only): a list of ``{"boxes": Tensor[G, 4] float (x1, y1, x2, y2) in
            pixels, "labels": Tensor[G] int64 in [0, num_classes)}``; ``G`` may be 0.

    Raises:
        ValueError: unknown backbone or ops; images of the wrong shape; missing targets in
            training mode; a target of the wrong shape or type, a label outside
            ``[0, num_classes)``, a box with ``x2 < x1`` or ``y2 < y1`` or a non-finite
            coordinate (the message names the image index).
    """

    def __init__(
        self,
        num_classes: int,
        backbone: str = "resnet50",
        *,
        frozen_bn: bool = False,
        ops: str = "focalops",
        fpn_channels: int = 256,
        head_convs: int = 4,
        anchor_sizes: Sequence[int] = (32, 64, 128, 256, 512),
        fg_iou: float = 0.5,
        bg_iou: float = 0.4,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        score_thresh: float = 0.05,
        nms_thresh: float = 0.5,
        topk_candidates: int = 1000,
        detections_per_img: int = 300,
        p6_from: str = "c5",
    ):
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"RetinaNet: num_classes must be a positive int, got {num_classes!r}")
        self.config = dict(
            num_classes=num_classes,
            backbone=backbone,
            frozen_bn=frozen_bn,
            fpn_channels=fpn_channels,
            head_convs=head_convs,
            anchor_sizes=tuple(anchor_sizes),
            fg_iou=fg_iou,
            bg_iou=bg_iou,
            focal_alpha=focal_alpha,
            focal_gamma=focal_gamma,
            score_thresh=score_thresh,
            nms_thresh=nms_thresh,
            topk_candidates=topk_candidates,
            detections_per_img=detections_per_img,
            p6_from=p6_from,
        )
        self.num_classes = num_classes
        self.backbone = ResNet(backbone, frozen_bn=frozen_bn)
        self.fpn = FPN(self.backbone.out_channels, fpn_channels, p6_from=p6_from)
        num_anchors = 9
        prior = 0.01
        self.classification_head = _Subnet(
            fpn_channels, num_anchors, num_classes, head_convs, -math.log((1 - prior) / prior)
        )
        self.regression_head = _Subnet(fpn_channels, num_anchors, 4, head_convs, 0.0)
        self.register_buffer("pixel_mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.ops = ops

    @classmethod
    def from_torchvision(cls, source, **overrides) -> "RetinaNet":
        """A focalops RetinaNet with the weights and settings of a torchvision RetinaNet.

        With the same weights it gives torchvision's detections on the same images (to float
        tolerance), on focalops' hot path: a user with torchvision's COCO weights file gets that
        model here. torchvision resizes images in its transform; focalops leaves resizing to the
        data pipeline, so feed images at the size torchvision would have resized them to.

        Args:
            source: a torchvision ``RetinaNet`` (its post-processing, matching and anchor
                settings are copied too), its ``state_dict()``, or the path of a saved state dict
                (e.g. ``retinanet_resnet50_fpn_coco-eeacb38b.pth``; loaded with
                ``weights_only=True``).
            **overrides: RetinaNet arguments to set differently (e.g. ``score_thresh``).

        Raises:
            TypeError: ``source`` is none of these.
            ValueError: not a RetinaNet state dict, or a variant focalops does not have (heads
                with normalisation layers, as torchvision's ``retinanet_resnet50_fpn_v2``; a GIoU
                box loss; other anchors or image normalisation).
        """
        from focalops.models.from_torchvision import retinanet_from_torchvision

        kwargs, state_dict = retinanet_from_torchvision(source, **overrides)
        model = cls(**kwargs)
        missing, unexpected = model.load_state_dict(state_dict, strict=False)
        if missing or unexpected:
            raise ValueError(
                f"RetinaNet.from_torchvision: weights do not match (missing {missing[:5]}, unexpected {unexpected[:5]})"
            )
        return model

    @property
    def ops(self) -> str:
        return self._ops_name

    @ops.setter
    def ops(self, name: str) -> None:
        self._ops = _ops_table(name)
        self._ops_name = name
        # Both tables share the generator class: keep its cache across switches.
        if not isinstance(getattr(self, "anchor_generator", None), self._ops.anchor_generator):
            self.anchor_generator = self._ops.anchor_generator(sizes=self.config["anchor_sizes"])

    # ---- input handling -------------------------------------------------------------------
    def _batch_images(self, images: Union[Tensor, List[Tensor]]) -> Tuple[Tensor, List[Tuple[int, int]]]:
        if isinstance(images, Tensor):
            if images.dim() != 4 or images.shape[1] != 3:
                raise ValueError(
                    f"RetinaNet: images must be [B, 3, H, W] or a list of [3, H, W], got {list(images.shape)}"
                )
            sizes = [(images.shape[-2], images.shape[-1])] * images.shape[0]
            return self._normalize_and_pad(images), sizes
        if not isinstance(images, (list, tuple)) or len(images) == 0:
            raise ValueError("RetinaNet: images must be a non-empty list of [3, H, W] tensors or a [B, 3, H, W] tensor")
        for i, img in enumerate(images):
            if not isinstance(img, Tensor) or img.dim() != 3 or img.shape[0] != 3:
                shape = list(img.shape) if isinstance(img, Tensor) else type(img).__name__
                raise ValueError(f"RetinaNet: image {i} must be a [3, H, W] tensor, got {shape}")
        sizes = [(img.shape[-2], img.shape[-1]) for img in images]
        height = -(-max(h for h, _ in sizes) // _PAD_MULTIPLE) * _PAD_MULTIPLE
        width = -(-max(w for _, w in sizes) // _PAD_MULTIPLE) * _PAD_MULTIPLE
        # Normalise, then pad with zeros (the padding is the mean colour), as torchvision.
        batch = images[0].new_zeros(len(images), 3, height, width)
        mean, std = self.pixel_mean[0].to(batch.dtype), self.pixel_std[0].to(batch.dtype)
        for img, pad in zip(images, batch):
            pad[:, : img.shape[-2], : img.shape[-1]].copy_((img - mean) / std)
        return batch, sizes

    def _normalize_and_pad(self, images: Tensor) -> Tensor:
        """``[B, 3, H, W]`` in [0, 1] -> normalised ``[B, 3, H', W']``, zero-padded at the bottom and
        right to ``H', W'``, the next multiples of 32 (shape arithmetic only: traceable with
        symbolic sizes)."""
        batch = (images - self.pixel_mean) / self.pixel_std
        pad_h = -images.shape[-2] % _PAD_MULTIPLE
        pad_w = -images.shape[-1] % _PAD_MULTIPLE
        return F.pad(batch, (0, pad_w, 0, pad_h))

    @torch.compiler.disable
    def _pad_targets(self, targets, num_images: int, device) -> Tuple[Tensor, Tensor, Tensor]:
        """Checks the targets and pads them to ``boxes [B, Gmax, 4], labels [B, Gmax], counts [B]``.

        The value checks run batched on the tensors as given (usually CPU tensors from the data
        loader, so no device synchronisation); they are skipped by torch.compile tracing.
        """
        if not isinstance(targets, (list, tuple)) or len(targets) != num_images:
            got = len(targets) if isinstance(targets, (list, tuple)) else type(targets).__name__
            raise ValueError(
                f"RetinaNet: training needs a list of {num_images} target dicts (one per image), got {got}"
            )
        boxes, labels = [], []
        for i, t in enumerate(targets):
            if not isinstance(t, dict) or "boxes" not in t or "labels" not in t:
                raise ValueError(f"RetinaNet: target of image {i} must be a dict with 'boxes' and 'labels'")
            b, lab = t["boxes"], t["labels"]
            if not isinstance(b, Tensor) or b.dim() != 2 or b.shape[-1] != 4 or not b.dtype.is_floating_point:
                shape = list(b.shape) if isinstance(b, Tensor) else type(b).__name__
                raise ValueError(f"RetinaNet: boxes of image {i} must be a floating [G, 4] tensor, got {shape}")
            if (
                not isinstance(lab, Tensor)
                or lab.shape != b.shape[:1]
                or lab.dtype.is_floating_point
                or lab.dtype == torch.bool
            ):
                shape = list(lab.shape) if isinstance(lab, Tensor) else type(lab).__name__
                raise ValueError(
                    f"RetinaNet: labels of image {i} must be an integer [{b.shape[0]}] tensor, got {shape}"
                )
            boxes.append(b)
            labels.append(lab)
        gt_boxes, gt_labels, counts = pad_targets(boxes, labels)
        valid = (
            torch.arange(gt_boxes.shape[1], device=gt_boxes.device)
            < counts.to(gt_boxes.device, non_blocking=True)[:, None]
        )
        bad_label = ((gt_labels < 0) | (gt_labels >= self.num_classes)) & valid
        bad_box = (
            (gt_boxes[..., 2] < gt_boxes[..., 0]) | (gt_boxes[..., 3] < gt_boxes[..., 1]) | ~gt_boxes.isfinite().all(-1)
        ) & valid
        bad = (bad_label | bad_box).any(1)
        if bad.is_cuda:
            # Targets already on the GPU: a device-side assert, so the step stays free of host syncs.
            torch._assert_async(
                ~bad.any(),
                "RetinaNet: a target has a label outside [0, num_classes) or a box that is not finite with "
                "x2 >= x1 and y2 >= y1 (pass CPU targets for a message naming the image)",
            )
        elif bad.any():
            i = int(bad.nonzero()[0, 0])
            if bad_label[i].any():
                value = int(gt_labels[i][bad_label[i]][0])
                raise ValueError(f"RetinaNet: labels of image {i} must be in [0, {self.num_classes}), got {value}")
            box = gt_boxes[i][bad_box[i]][0].tolist()
            raise ValueError(
                f"RetinaNet: boxes of image {i} must be finite (x1, y1, x2, y2) with x2 >= x1 and y2 >= y1, got {box}"
            )
        # non_blocking: a blocking host-to-device copy would synchronise the step with the host.
        return tuple(t.to(device, non_blocking=True) for t in (gt_boxes, gt_labels, counts))

    # ---- forward ---------------------------------------------------------------------------
    def forward(self, images: Union[Tensor, List[Tensor]], targets: Optional[List[Dict[str, Tensor]]] = None):
        batch, sizes = self._batch_images(images)
        gt = None
        if self.training:
            if targets is None:
                raise ValueError("RetinaNet: targets are required in training mode (call model.eval() for inference)")
            gt = self._pad_targets(targets, batch.shape[0], batch.device)
        cls_logits, box_deltas, anchors, level_sizes = self._heads(batch)
        if self.training:
            return self.compute_loss(cls_logits, box_deltas, anchors, *gt)
        image_sizes = torch.tensor(sizes, dtype=torch.int64)  # then a non-blocking copy: no host sync
        image_sizes = (image_sizes.pin_memory() if batch.is_cuda else image_sizes).to(batch.device, non_blocking=True)
        return self.detect(cls_logits, box_deltas, anchors, level_sizes, image_sizes)

    def detect_batch(self, images: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """Padded detections of a batch of same-size images with no host read: the inference
        path that `export` traces (normalise, pad to 32, backbone, FPN, heads, anchors,
        post-processing), valid for symbolic ``B``, ``H`` and ``W``.

        Args:
            images (Tensor[B, 3, H, W]): float images in [0, 1].

        Returns:
            (boxes Tensor[B, D, 4], scores Tensor[B, D], labels Tensor[B, D] int64, counts Tensor[B] int64)
            with ``D = detections_per_img``: image ``b``'s detections are the first ``counts[b]``
            rows, by decreasing score (padding: boxes and scores 0, labels -1), as
            :func:`focalops.postprocess`.

        Raises:
            ValueError: ``images`` is not ``[B, 3, H, W]``.
        """
        if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1] != 3:
            shape = list(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise ValueError(f"RetinaNet.detect_batch: images must be [B, 3, H, W], got {shape}")
        cls_logits, box_deltas, anchors, level_sizes = self._heads(self._normalize_and_pad(images))
        # (height, width) of every image from shape arithmetic, not a host list.
        n, _, h, w = images.shape
        image_sizes = torch.stack([images.new_full((n,), h), images.new_full((n,), w)], dim=1)
        return self._postprocess(cls_logits, box_deltas, anchors, level_sizes, image_sizes)

    def export(
        self,
        example_size: Tuple[int, int] = (512, 512),
        *,
        example_batch: int = 2,
        max_batch: int = 1024,
        max_image_size: int = 8192,
    ) -> "torch.export.ExportedProgram":
        """A ``torch.export`` program of the inference path (:meth:`detect_batch`) with dynamic
        batch size, height and width.

        The program takes a float ``Tensor[B, 3, H, W]`` in [0, 1] (``1 <= B <= max_batch``,
        ``1 <= H, W <= max_image_size``) and returns the padded
        ``(boxes [B, D, 4], scores [B, D], labels [B, D], counts [B])`` of :meth:`detect_batch`;
        the settings (thresholds, ``D``) are the model's at export time. It is traced in eval
        mode on the model's device and dtype (the model's mode is restored).
        Running the loaded program needs only ``import focalops`` (for ``torch.ops.focalops``)
        and ``torch.export.load(path).module()``; a size out of range fails its input guard.

        Args:
            example_size ((int, int)): ``(H, W)`` of the example batch traced, each at least 129
                (no pyramid level of size 1 while tracing); any size in range runs afterwards.
                Default (512, 512).
            example_batch (int): ``B`` of the example batch, ``>= 2`` (torch.export specialises
                sizes 0 and 1). Default 2.
            max_batch, max_image_size (int): upper bounds of the dynamic sizes. Default 1024, 8192.

        Raises:
            ValueError: ``ops`` is not ``"focalops"`` (the reference ops read sizes on the host), an
                example size out of range.
        """
        if self.ops != "focalops":
            raise ValueError(f"RetinaNet.export: needs ops='focalops', got {self.ops!r}")
        if example_batch < 2 or example_batch > max_batch:
            raise ValueError(f"RetinaNet.export: example_batch must be in [2, {max_batch}], got {example_batch}")
        if not all(EXPORT_EXAMPLE_MIN_SIZE <= s <= max_image_size for s in example_size):
            raise ValueError(
                f"RetinaNet.export: example_size must be in [{EXPORT_EXAMPLE_MIN_SIZE}, {max_image_size}], "
                f"got {example_size}"
            )
        was_training = self.training
        self.eval()
        try:
            return export_batch_detector(_BatchDetector(self), example_size, example_batch, max_batch, max_image_size)
        finally:
            self.train(was_training)

    def export_onnx(
        self,
        path: str,
        example_size: Tuple[int, int] = (512, 512),
        *,
        classes: Optional[Sequence[str]] = None,
        metadata: Optional[Dict] = None,
    ) -> str:
        """Writes the inference path (:meth:`detect_batch`) as an ONNX model of standard
        operators (opset 18) that ONNX Runtime runs with no focalops or torch installed.

        Input ``images`` (float32 ``[batch, 3, height, width]`` in [0, 1], any size: the graph
        has no size guard), outputs ``boxes, scores, labels, counts`` as :meth:`detect_batch`:
        the same detections (see :mod:`focalops.onnx_export` for how the post-processing maps
        onto ONNX ``TopK`` and ``NonMaxSuppression``). Traced through :meth:`export` at
        ``example_size``.

        Args:
            path (str): the ``.onnx`` file to write.
            example_size ((int, int)): as :meth:`export`. Default (512, 512).
            classes (sequence of str, optional): class names, stored in the model's metadata
                (``metadata_props["classes"]``, a JSON list); default ``"0", "1", ...``.
            metadata (dict, optional): more metadata, stored as JSON in ``metadata_props["focalops"]``.

        Returns:
            str: ``path``.

        Raises:
            ImportError: ``onnx`` or ``onnxscript`` is not installed.
            ValueError: as :meth:`export`.
        """
        from focalops.onnx_export import export_program, require_onnx

        require_onnx()
        info = {
            "classes": list(classes) if classes is not None else [str(k) for k in range(self.num_classes)],
            "config": {k: list(v) if isinstance(v, tuple) else v for k, v in self.config.items()},
            "preprocessing": PREPROCESSING,
            **(metadata or {}),
        }
        return export_program(self.export(example_size=example_size), path, info)

    def _heads(self, batch: Tensor) -> Tuple[Tensor, Tensor, Tensor, List[int]]:
        """Head outputs ``[B, A, K]``, ``[B, A, 4]`` and anchors ``[A, 4]`` with the anchors per
        level of a normalised, padded ``[B, 3, H, W]`` batch."""
        features = self.fpn(self.backbone(batch))
        anchors, level_sizes = self._anchors(features, batch.shape[-2:])
        return self.classification_head(features), self.regression_head(features), anchors, level_sizes

    def _anchors(self, features: List[Tensor], padded_size) -> Tuple[Tensor, List[int]]:
        return self.anchor_generator(
            [tuple(f.shape[-2:]) for f in features], device=features[0].device, image_size=tuple(padded_size)
        )

    def compute_loss(
        self,
        cls_logits: Tensor,
        box_deltas: Tensor,
        anchors: Tensor,
        gt_boxes: Tensor,
        gt_labels: Tensor,
        gt_counts: Tensor,
    ) -> Dict[str, Tensor]:
        """The batched RetinaNet losses from head outputs ``[B, A, K]``, ``[B, A, 4]``, anchors
        ``[A, 4]`` and padded ground truth ``[B, G, 4]``, ``[B, G]``, ``[B]``."""
        ops, cfg = self._ops, self.config
        matched = ops.assign(anchors, gt_boxes, gt_counts, cfg["fg_iou"], cfg["bg_iou"], True)
        cls_targets, box_targets, foreground = ops.retinanet_targets(matched, gt_boxes, gt_labels, anchors)
        # A device tensor: no host synchronisation in the step.
        num_fg = foreground.sum().clamp(min=1).to(torch.float32)
        cls_loss = ops.sigmoid_focal_loss(
            cls_logits, cls_targets, cfg["focal_alpha"], cfg["focal_gamma"], "sum", normalizer=num_fg
        )
        box_loss = foreground_l1(box_deltas, box_targets, foreground).sum() / num_fg
        return {"classification": cls_loss.float(), "bbox_regression": box_loss}

    def detect(
        self,
        cls_logits: Tensor,
        box_deltas: Tensor,
        anchors: Tensor,
        level_sizes: List[int],
        image_sizes: Tensor,
    ) -> List[Dict[str, Tensor]]:
        """Per-image detections from the head outputs (batched post-processing, then one split)."""
        return split_detections(*self._postprocess(cls_logits, box_deltas, anchors, level_sizes, image_sizes))

    def _postprocess(
        self, cls_logits: Tensor, box_deltas: Tensor, anchors: Tensor, level_sizes: List[int], image_sizes: Tensor
    ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """The padded ``(boxes, scores, labels, counts)`` of the batch with the model's settings."""
        cfg = self.config
        return self._ops.postprocess(
            cls_logits,
            box_deltas,
            anchors,
            level_sizes,
            image_sizes,
            score_thresh=cfg["score_thresh"],
            topk_candidates=cfg["topk_candidates"],
            nms_thresh=cfg["nms_thresh"],
            detections_per_img=cfg["detections_per_img"],
        )
