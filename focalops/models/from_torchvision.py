"""torchvision's RetinaNet weights in focalops' RetinaNet (``RetinaNet.from_torchvision``).

torchvision names (``retinanet_resnet50_fpn``, the v1 model: ResNet + FPN with P6 from P5,
plain conv heads, L1 box loss) map one to one onto focalops' modules:

    backbone.body.*                                   -> backbone.*
    backbone.fpn.inner_blocks.{i}[.0].*               -> fpn.lateral.{i}.*
    backbone.fpn.layer_blocks.{i}[.0].*               -> fpn.output.{i}.*
    backbone.fpn.extra_blocks.p6 / p7.*               -> fpn.p6 / p7.*
    head.classification_head.conv.{j}.0.*             -> classification_head.convs.{2j}.*
    head.classification_head.cls_logits.*             -> classification_head.out.*
    head.regression_head.conv.{j}.0.* / bbox_reg.*    -> regression_head.convs.{2j}.* / out.*
"""

import re
from typing import Dict, Tuple, Union

import torch
from torch import Tensor, nn

_RESNETS = {
    ("basic", 2): "resnet18",
    ("basic", 6): "resnet34",
    ("bottleneck", 6): "resnet50",
    ("bottleneck", 23): "resnet101",
}
_IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def _rename(key: str) -> str:
    rules = [
        (r"^backbone\.body\.", "backbone."),
        (r"^backbone\.fpn\.inner_blocks\.(\d+)\.(?:0\.)?", r"fpn.lateral.\1."),
        (r"^backbone\.fpn\.layer_blocks\.(\d+)\.(?:0\.)?", r"fpn.output.\1."),
        (r"^backbone\.fpn\.extra_blocks\.", "fpn."),
        (r"^head\.(classification|regression)_head\.(?:cls_logits|bbox_reg)\.", r"\1_head.out."),
    ]
    for pattern, repl in rules:
        key, n = re.subn(pattern, repl, key)
        if n:
            return key
    m = re.match(r"^head\.(classification|regression)_head\.conv\.(\d+)\.0\.(.*)$", key)
    if m:  # torchvision >= 0.13: conv.{j} = Conv2dNormActivation(conv, relu)
        return f"{m.group(1)}_head.convs.{2 * int(m.group(2))}.{m.group(3)}"
    m = re.match(r"^head\.(classification|regression)_head\.conv\.(\d+)\.(weight|bias)$", key)
    if m:  # older torchvision: conv = Sequential(conv, relu, conv, relu, ...)
        return f"{m.group(1)}_head.convs.{m.group(2)}.{m.group(3)}"
    return key


def _architecture(sd: Dict[str, Tensor]) -> Dict:
    """The focalops RetinaNet arguments that a torchvision state dict implies."""
    if any(".norm" in k or re.search(r"_head\.conv\.\d+\.1\.", k) for k in sd if k.startswith("head.")):
        raise ValueError(
            "RetinaNet.from_torchvision: heads with normalisation layers (torchvision's retinanet_resnet50_fpn_v2) "
            "are not supported; the v1 model (retinanet_resnet50_fpn) is"
        )
    kind = "bottleneck" if "backbone.body.layer1.0.conv3.weight" in sd else "basic"
    layer3 = {int(m.group(1)) for k in sd for m in [re.match(r"backbone\.body\.layer3\.(\d+)\.", k)] if m}
    backbone = _RESNETS.get((kind, len(layer3)))
    if backbone is None:
        raise ValueError(f"RetinaNet.from_torchvision: unsupported backbone ({kind} blocks, {len(layer3)} in layer3)")
    cls_out = sd["head.classification_head.cls_logits.weight"]
    fpn_channels = cls_out.shape[1]
    num_anchors = sd["head.regression_head.bbox_reg.weight"].shape[0] // 4
    if num_anchors != 9:
        raise ValueError(f"RetinaNet.from_torchvision: expected 9 anchors per location, got {num_anchors}")
    # conv.{j}.0 (torchvision >= 0.13) or conv.{2j} (older): one index per conv either way.
    convs = {int(m.group(1)) for k in sd for m in [re.match(r"head\.classification_head\.conv\.(\d+)\.", k)] if m}
    p6_in = sd["backbone.fpn.extra_blocks.p6.weight"].shape[1]
    return dict(
        backbone=backbone,
        num_classes=cls_out.shape[0] // num_anchors,
        fpn_channels=fpn_channels,
        head_convs=len(convs),
        p6_from="p5" if p6_in == fpn_channels else "c5",
        # torchvision's trained models use frozen BatchNorm, whose state has no batch counter.
        frozen_bn=not any(k.endswith("num_batches_tracked") for k in sd),
    )


def _settings(tv_model: nn.Module) -> Dict:
    """Post-processing, matching and anchor settings of a torchvision RetinaNet instance."""
    transform = tv_model.transform
    if (tuple(transform.image_mean), tuple(transform.image_std)) != _IMAGENET:
        raise ValueError(
            "RetinaNet.from_torchvision: the model normalises with mean "
            f"{transform.image_mean} and std {transform.image_std}; focalops' RetinaNet uses ImageNet's"
        )
    loss_type = getattr(tv_model.head.regression_head, "_loss_type", "l1")
    if loss_type != "l1":
        raise ValueError(f"RetinaNet.from_torchvision: box loss {loss_type!r} is not supported (only 'l1')")
    sizes = tv_model.anchor_generator.sizes
    ratios = tv_model.anchor_generator.aspect_ratios
    base = tuple(level[0] for level in sizes)
    want = tuple((x, int(x * 2 ** (1 / 3)), int(x * 2 ** (2 / 3))) for x in base)
    if tuple(tuple(s) for s in sizes) != want or any(tuple(r) != (0.5, 1.0, 2.0) for r in ratios):
        raise ValueError(f"RetinaNet.from_torchvision: unsupported anchors (sizes {sizes}, ratios {ratios})")
    matcher = tv_model.proposal_matcher
    return dict(
        anchor_sizes=base,
        fg_iou=matcher.high_threshold,
        bg_iou=matcher.low_threshold,
        score_thresh=tv_model.score_thresh,
        nms_thresh=tv_model.nms_thresh,
        topk_candidates=tv_model.topk_candidates,
        detections_per_img=tv_model.detections_per_img,
    )


def retinanet_from_torchvision(source: Union[nn.Module, Dict[str, Tensor], str], **overrides) -> Tuple[Dict, Dict]:
    """(RetinaNet keyword arguments, state dict in focalops names) for a torchvision RetinaNet,
    its state dict, or the path of a saved state dict."""
    settings: Dict = {}
    if isinstance(source, nn.Module):
        settings = _settings(source)
        sd = source.state_dict()
    elif isinstance(source, str):
        sd = torch.load(source, map_location="cpu", weights_only=True)
    elif isinstance(source, dict):
        sd = source
    else:
        raise TypeError(
            "RetinaNet.from_torchvision: expected a torchvision RetinaNet, its state dict or a file path, "
            f"got {type(source).__name__}"
        )
    if "head.classification_head.cls_logits.weight" not in sd:
        raise ValueError("RetinaNet.from_torchvision: not a torchvision RetinaNet state dict (no classification head)")
    kwargs = {**_architecture(sd), **settings, **overrides}
    renamed = {_rename(k): v for k, v in sd.items() if not k.endswith("num_batches_tracked") or not kwargs["frozen_bn"]}
    return kwargs, renamed
