"""ONNX export: our RetinaNet (through `focalops export --onnx`) and an accelerated torchvision
RetinaNet (through `focalops.export_torchvision`) as files of standard ONNX operators that ONNX
Runtime runs with the eager model's detections, at several batch and image sizes; the
post-processing alone against our kernel where NMS and top-k meet exact ties."""

import os

import pytest
import torch

import focalops
from focalops import cli
from focalops.engine import save_checkpoint
from focalops.export import read_metadata

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from test_export import CLASSES, SCORE_THRESH, _tiny_model  # noqa: E402

# Batch and image sizes, none of them the traced example (2 x 160 x 160): not multiples of 32
# (the graph pads), 128 px and below (P7 is 1 x 1), down to 17 x 33.
CASES = [(1, 129, 200), (3, 250, 150), (2, 128, 128), (1, 64, 40), (2, 17, 33)]
OUTPUTS = ["boxes", "scores", "labels", "counts"]


def _inputs(seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(b, 3, h, w, generator=g) for b, h, w in CASES]


def _session(path):
    return ort.InferenceSession(path, providers=["CPUExecutionProvider"])


def _run(session, images):
    return [torch.from_numpy(t) for t in session.run(None, {"images": images.numpy()})]


def _check_standard_onnx(path):
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    assert {(o.domain, o.version) for o in model.opset_import} == {("", 18)}
    assert len(model.functions) == 0 and {n.domain for n in model.graph.node} == {""}
    ops = {n.op_type for n in model.graph.node}
    assert {"NonMaxSuppression", "TopK", "Exp", "Conv"} <= ops

    def dims(v):
        return [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]

    assert [(v.name, dims(v)) for v in model.graph.input] == [("images", ["batch", 3, "height", "width"])]
    assert [v.name for v in model.graph.output] == OUTPUTS
    assert all(dims(v)[0] == "batch" for v in model.graph.output)


def _check_matches(results, eager, atol_boxes=1e-3, atol_scores=1e-5):
    """ONNX Runtime's padded outputs against the eager model's per-image detections; returns
    the number of detections compared."""
    boxes, scores, labels, counts = results
    d = boxes.shape[1]
    assert scores.shape == labels.shape == (len(eager), d) and counts.shape == (len(eager),)
    assert counts.dtype == labels.dtype == torch.int64 and boxes.dtype == scores.dtype == torch.float32
    for i, ref in enumerate(eager):
        n = int(counts[i])
        assert n == len(ref["scores"]), f"image {i}: {n} vs {len(ref['scores'])} detections"
        assert torch.equal(labels[i, :n], ref["labels"])
        torch.testing.assert_close(boxes[i, :n], ref["boxes"], atol=atol_boxes, rtol=0)
        torch.testing.assert_close(scores[i, :n], ref["scores"], atol=atol_scores, rtol=0)
        assert (labels[i, n:] == -1).all() and (scores[i, n:] == 0).all() and (boxes[i, n:] == 0).all()
    return int(counts.sum())


# ---- our RetinaNet, through the CLI ------------------------------------------------------------
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("onnx")
    model = _tiny_model()
    path = str(tmp / "last.pth")
    save_checkpoint(
        path,
        {
            "model": model.state_dict(),
            "config": model.config,
            "iteration": 0,
            "classes": CLASSES,
            "args": {"image_size": 160, "max_size": 256},
        },
    )
    return path


@pytest.fixture(scope="module")
def ours(checkpoint):
    """(eager model, .onnx path): the checkpoint exported by `focalops export --onnx`."""
    out = os.path.join(os.path.dirname(checkpoint), "model.onnx")
    argv = ["export", checkpoint, "--onnx", "-o", out, "--score-thresh", str(SCORE_THRESH)]
    assert cli.main(argv) == 0
    model = _tiny_model()
    model.config["score_thresh"] = SCORE_THRESH
    return model, out


def test_onnx_model_is_standard_onnx_with_metadata(ours):
    _, path = ours
    _check_standard_onnx(path)
    meta = read_metadata(path)
    assert meta["classes"] == CLASSES and meta["config"]["score_thresh"] == SCORE_THRESH
    assert meta["image_size"] == 160 and meta["max_size"] == 256 and "ImageNet" in meta["preprocessing"]
    props = _session(path).get_modelmeta().custom_metadata_map  # what an ONNX Runtime user reads
    assert props["classes"] == '["circle", "square", "triangle"]' and props["preprocessing"] == meta["preprocessing"]


def test_onnx_runtime_gives_eager_detections(ours):
    model, path = ours
    session = _session(path)
    total = 0
    for images in _inputs():
        with torch.no_grad():
            eager = model(images)
        total += _check_matches(_run(session, images), eager)
    assert total > 100, "too few detections for the comparison to prove anything"


def test_onnx_export_without_detections(checkpoint, tmp_path, capsys):
    out = str(tmp_path / "none.onnx")
    assert cli.main(["export", checkpoint, "--onnx", "-o", out, "--score-thresh", "0.999"]) == 0
    assert "wrote " + out in capsys.readouterr().out and read_metadata(out)["config"]["score_thresh"] == 0.999
    boxes, scores, labels, counts = _run(_session(out), torch.rand(2, 3, 129, 150))
    assert counts.tolist() == [0, 0] and (labels == -1).all() and (scores == 0).all() and (boxes == 0).all()
    assert boxes.shape == (2, 300, 4)


def test_onnx_and_aoti_flags_exclude_each_other(checkpoint, tmp_path):
    with pytest.raises(SystemExit):
        cli.main(["export", checkpoint, "--onnx", "--aoti", "-o", str(tmp_path / "m.onnx")])


# ---- an accelerated torchvision RetinaNet ------------------------------------------------------
def _torchvision_model():
    detection = pytest.importorskip("torchvision.models.detection")
    from torchvision.models import resnet18
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7

    torch.manual_seed(0)
    layers = {"layer2": "0", "layer3": "1", "layer4": "2"}
    backbone = BackboneWithFPN(resnet18(), layers, [128, 256, 512], 32, extra_blocks=LastLevelP6P7(32, 32))
    model = detection.RetinaNet(backbone, num_classes=3, score_thresh=SCORE_THRESH)
    with torch.no_grad():  # random heads whose scores spread out: a few hundred detections per image
        for m in model.head.modules():
            if isinstance(m, torch.nn.Conv2d):
                torch.nn.init.normal_(m.weight, std=0.05)
        torch.nn.init.normal_(model.head.classification_head.cls_logits.weight, std=0.25)
        model.head.classification_head.cls_logits.bias.fill_(-2.0)
    return focalops.accelerate(model.eval())


def _torchvision_eager(model, images):
    """torchvision's own forward (transform included) on images its transform leaves unresized."""
    h, w = images.shape[-2:]
    model.transform.min_size, model.transform.max_size = (min(h, w),), max(h, w)
    with torch.no_grad():
        return model(list(images))


@pytest.fixture(scope="module")
def torchvision_onnx(tmp_path_factory):
    model = _torchvision_model()
    path = str(tmp_path_factory.mktemp("tv") / "retinanet.onnx")
    program = focalops.export_torchvision(model, path, classes=["a", "b", "c"], example_size=(160, 160))
    return model, path, program


def test_torchvision_onnx_gives_eager_detections(torchvision_onnx):
    model, path, program = torchvision_onnx
    _check_standard_onnx(path)
    meta = read_metadata(path)
    assert meta["classes"] == ["a", "b", "c"] and meta["source"] == "torchvision RetinaNet"
    assert meta["config"]["detections_per_img"] == model.detections_per_img == 300
    session = _session(path)
    total = 0
    for images in _inputs(seed=2):
        eager = _torchvision_eager(model, images)
        total += _check_matches(_run(session, images), eager)
        with torch.no_grad():  # the torch.export program as well
            total += _check_matches(program.module()(images), eager, atol_boxes=1e-4, atol_scores=1e-6)
    assert total > 100


def test_torchvision_detector_rejects_other_models():
    with pytest.raises(TypeError, match="expected a torchvision RetinaNet"):
        focalops.export_torchvision(torch.nn.Linear(2, 2))


# ---- the post-processing alone: exact ties ---------------------------------------------------
class _Postprocess(torch.nn.Module):
    def __init__(self, detections_per_img):
        super().__init__()
        self.d = detections_per_img

    def forward(self, logits1, logits2, deltas1, deltas2, anchors1, anchors2, image_sizes):
        return focalops.postprocess(
            torch.cat([logits1, logits2], 1), torch.cat([deltas1, deltas2], 1), torch.cat([anchors1, anchors2]),
            [logits1.shape[1], logits2.shape[1]], image_sizes,
            score_thresh=0.3, topk_candidates=12, nms_thresh=0.5, detections_per_img=self.d,
        )  # fmt: skip


def _tied_case(b, a1, a2, k, g):
    """Logits on a few levels (many exactly equal scores, some at the top-k boundary), boxes on a
    coarse grid of two sizes: identical boxes, and pairs at IoU exactly 0.5 (kept: IoU must
    exceed the threshold) and above it; zero deltas, so the decoded boxes are the anchors."""
    logits = [torch.randint(-2, 3, (b, a, k), generator=g).float() for a in (a1, a2)]
    deltas = [torch.zeros(b, a, 4) for a in (a1, a2)]
    anchors = []
    for a in (a1, a2):
        xy = torch.randint(0, 4, (a, 2), generator=g).float() * 10
        wide = torch.randint(0, 2, (a, 1), generator=g).float()  # 20 x 10 or 20 x 20: IoU 0.5
        anchors.append(torch.cat([xy, xy + torch.cat([torch.full((a, 1), 20.0), 10 + 10 * wide], 1)], 1))
    sizes = torch.tensor([[45.0, 60.0]]).repeat(b, 1)
    return (*logits, *deltas, *anchors, sizes)


@pytest.mark.parametrize("detections_per_img", [5, 40])
def test_onnx_postprocess_matches_kernel_on_ties(tmp_path, detections_per_img):
    from focalops.onnx_export import export_program

    D = torch.export.Dim
    dims = ({0: D("b"), 1: D("a")}, {0: D("b"), 1: D("a2")}, {0: D("b"), 1: D("a")}, {0: D("b"), 1: D("a2")},
            {0: D("a")}, {0: D("a2")}, {0: D("b")})  # fmt: skip
    g = torch.Generator().manual_seed(0)
    module = _Postprocess(detections_per_img)
    program = torch.export.export(module, _tied_case(2, 10, 6, 3, g), dynamic_shapes=dims)
    path = export_program(program, str(tmp_path / "postprocess.onnx"))
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    for b, a1, a2 in [(1, 7, 5), (3, 30, 9), (2, 50, 20)]:
        inputs = _tied_case(b, a1, a2, 3, g)
        got = session.run(None, dict(zip(names, (t.numpy() for t in inputs))))
        want = module(*inputs)
        assert (want[3] > 0).all()
        boxes, scores, labels, counts = (torch.from_numpy(x) for x in got)
        # Same order and labels exactly; boxes bit for bit (zero deltas: exp(0) = 1 exactly).
        assert torch.equal(counts, want[3]) and torch.equal(labels, want[2]) and torch.equal(boxes, want[0])
        torch.testing.assert_close(scores, want[1], atol=1e-6, rtol=0)


def test_onnx_flag_without_onnx_installed_is_one_line(checkpoint, tmp_path, monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "onnxscript", None)  # import onnxscript -> ImportError
    assert cli.main(["export", checkpoint, "--onnx", "-o", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--onnx" in err and "pip install onnx onnxscript" in err
