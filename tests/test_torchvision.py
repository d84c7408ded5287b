"""Against the real torchvision: RetinaNet.from_torchvision and focalops.accelerate."""

import copy

import pytest
import torch

import focalops
from focalops.models import RetinaNet
from focalops.torchvision_retinanet import _AcceleratedRetinaNet

detection = pytest.importorskip("torchvision.models.detection")

# Sizes torchvision's transform leaves as they are (min_size / max_size), one of them not a
# multiple of 128 so that its P6/P7 anchor strides are torchvision's image // feature sizes.
SIZES = [(256, 384), (256, 352)]


def _torchvision_model(num_classes=5, seed=0):
    torch.manual_seed(seed)
    model = detection.retinanet_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=num_classes, min_size=256, max_size=384
    )
    with torch.no_grad():  # a random model that still detects things, with non-trivial BatchNorm
        model.head.classification_head.cls_logits.bias.fill_(-1.0)
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model


def _images(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(3, h, w, generator=g) for h, w in SIZES]


def _targets(seed=0, num_classes=5):
    g = torch.Generator().manual_seed(seed + 1)
    out = []
    for (h, w), n in zip(SIZES, (3, 0)):
        xy = torch.rand(n, 2, generator=g) * torch.tensor([w - 80.0, h - 80.0])
        wh = torch.rand(n, 2, generator=g) * 60 + 16
        out.append({"boxes": torch.cat([xy, xy + wh], 1), "labels": torch.randint(0, num_classes, (n,), generator=g)})
    return out


def _assert_same_detections(got, want, atol=1e-4):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g["boxes"].shape == w["boxes"].shape and g["boxes"].shape[0] > 0
        torch.testing.assert_close(g["scores"], w["scores"], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(g["boxes"], w["boxes"], rtol=1e-5, atol=atol)
        assert torch.equal(g["labels"], w["labels"])


def test_from_torchvision_gives_torchvision_detections():
    tv = _torchvision_model().eval()
    model = RetinaNet.from_torchvision(tv).eval()
    assert model.config["p6_from"] == "p5" and model.config["detections_per_img"] == 300
    with torch.no_grad():
        _assert_same_detections(model(_images()), tv(_images()))


def test_from_torchvision_state_dict_file(tmp_path):
    tv = _torchvision_model().eval()
    path = tmp_path / "retinanet.pth"
    torch.save(tv.state_dict(), path)
    model = RetinaNet.from_torchvision(str(path)).eval()  # settings: focalops' defaults = torchvision's
    with torch.no_grad():
        _assert_same_detections(model(_images()), tv(_images()))


def test_from_torchvision_rejects_what_it_cannot_load():
    with pytest.raises(TypeError, match="expected a torchvision RetinaNet"):
        RetinaNet.from_torchvision(42)
    with pytest.raises(ValueError, match="not a torchvision RetinaNet state dict"):
        RetinaNet.from_torchvision({"conv.weight": torch.zeros(1)})
    v2 = detection.retinanet_resnet50_fpn_v2(weights=None, weights_backbone=None, num_classes=3)
    with pytest.raises(ValueError, match="normalisation layers"):
        RetinaNet.from_torchvision(v2.state_dict())
    with pytest.raises(ValueError, match="box loss 'giou'"):
        RetinaNet.from_torchvision(v2)


def _losses_and_grads(model, images, targets):
    model.zero_grad()
    losses = model(images, targets)
    sum(losses.values()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return {k: v.detach() for k, v in losses.items()}, grads


def test_accelerate_same_losses_and_gradients():
    tv = _torchvision_model().train()
    fast = focalops.accelerate(copy.deepcopy(tv))
    assert fast.compute_loss.__func__ is not tv.compute_loss.__func__
    want, want_g = _losses_and_grads(tv, _images(), _targets())
    got, got_g = _losses_and_grads(fast, _images(), _targets())
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-6)
    assert want_g.keys() == got_g.keys()
    for name in want_g:  # float32 sums in another order, through 50 layers: compare as vectors
        err = (got_g[name] - want_g[name]).norm() / want_g[name].norm().clamp(min=1e-12)
        assert err < 1e-4, f"{name}: relative error {err:.2e}"


def test_accelerate_same_detections_and_undo():
    tv = _torchvision_model().eval()
    with torch.no_grad():
        want = tv(_images())
        with focalops.accelerated(tv):
            assert isinstance(tv, _AcceleratedRetinaNet)
            got = tv(_images())
            again = tv(_images())  # anchors from the cache
        assert type(tv) is detection.RetinaNet
        assert type(tv.anchor_generator) is detection.anchor_utils.AnchorGenerator
        assert not hasattr(tv.anchor_generator, "_focalops_anchor_cache")
    _assert_same_detections(got, want)
    _assert_same_detections(again, want)


def test_accelerate_under_autocast_trains():
    tv = focalops.accelerate(_torchvision_model().train())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = tv(_images(), _targets())
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()


def test_accelerate_rejects_other_models():
    with pytest.raises(TypeError, match="expected a torchvision RetinaNet"):
        focalops.accelerate(torch.nn.Linear(2, 2))
    v2 = detection.retinanet_resnet50_fpn_v2(weights=None, weights_backbone=None, num_classes=3)
    with pytest.raises(ValueError, match="box loss 'giou'"):
        focalops.accelerate(v2)


def test_accelerated_loss_and_postprocess_compile():
    """The patched methods trace under torch.compile (aot_eager: graph capture, not codegen)."""
    tv = focalops.accelerate(_torchvision_model())
    images, targets = tv.transform(_images(), _targets())
    with torch.no_grad():
        features = list(tv.backbone(images.tensors).values())
        head_outputs = tv.head(features)
    anchors = tv.anchor_generator(images, features)
    want = tv.compute_loss(targets, head_outputs, anchors)
    got = torch.compile(tv.compute_loss, backend="aot_eager")(targets, head_outputs, anchors)
    for k in want:
        torch.testing.assert_close(got[k], want[k])
    per_level = [f.shape[-2] * f.shape[-1] * 9 for f in features]
    split = {k: list(v.split(per_level, dim=1)) for k, v in head_outputs.items()}
    split_anchors = [list(a.split(per_level)) for a in anchors]
    want = tv.postprocess_detections(split, split_anchors, images.image_sizes)
    got = torch.compile(tv.postprocess_detections, backend="aot_eager")(split, split_anchors, images.image_sizes)
    _assert_same_detections(got, want)
