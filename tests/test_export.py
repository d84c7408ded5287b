"""Deployment: the whole detector as a torch.export program (and an AOTInductor package) gives the
eager model's detections in a fresh process at other batch and image sizes; every public op
exports on its own with dynamic sizes."""

import os
import subprocess
import sys

import pytest
import torch

import focalops
from focalops import cli
from focalops.engine import aoti_path, export_checkpoint, save_checkpoint
from focalops.export import read_metadata
from focalops.models import RetinaNet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = ["circle", "square", "triangle"]
SCORE_THRESH = 0.2
# Batch and image sizes, none of them the traced example (2 x 160 x 160): not multiples of 32,
# so the program's padding runs too; 128 px and below, where P7 (and at 32 px, P5 and P6) is
# 1 x 1, down to a 1-pixel image.
CASES = [(1, 129, 200), (3, 250, 150), (2, 128, 128), (3, 64, 40), (2, 17, 33), (1, 1, 1)]

# Runs in a fresh interpreter: loads a program with nothing but torch + focalops, runs every case.
_LOADER = """
import sys, torch, focalops
path, kind, inputs, out = sys.argv[1:]
if kind == "export":
    detector = torch.export.load(path).module()
else:
    detector = torch._inductor.aoti_load_package(path)
with torch.no_grad():
    results = [detector(images) for images in torch.load(inputs)]
torch.save([tuple(t.clone() for t in r) for r in results], out)
"""


def _tiny_model() -> RetinaNet:
    torch.manual_seed(0)
    model = RetinaNet(len(CLASSES), "resnet18", fpn_channels=32, head_convs=1, score_thresh=0.05)
    # Random heads with spread-out logits: scores far apart (no near-ties for NMS and top-k to
    # break differently) and a few hundred above SCORE_THRESH.
    torch.nn.init.normal_(model.classification_head.out.weight, std=0.3)
    torch.nn.init.constant_(model.classification_head.out.bias, -2.0)
    torch.nn.init.normal_(model.regression_head.out.weight, std=0.05)
    return model.eval()


def _inputs():
    g = torch.Generator().manual_seed(1)
    return [torch.rand(b, 3, h, w, generator=g) for b, h, w in CASES]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(eager model, checkpoint path, .pt2 path): a tiny checkpoint exported once for the module."""
    tmp = tmp_path_factory.mktemp("export")
    model = _tiny_model()
    ckpt = str(tmp / "last.pth")
    save_checkpoint(
        ckpt,
        {
            "model": model.state_dict(),
            "config": model.config,
            "iteration": 0,
            "classes": CLASSES,
            "args": {"image_size": 160, "max_size": 256},
        },
    )
    program = export_checkpoint(ckpt, str(tmp / "model.pt2"), score_thresh=SCORE_THRESH)
    model.config["score_thresh"] = SCORE_THRESH
    return model, ckpt, program


def _run_fresh(path: str, kind: str, tmp_path):
    """Loads and runs ``path`` in a fresh interpreter importing this checkout's focalops."""
    inputs, out = tmp_path / "inputs.pt", tmp_path / "outputs.pt"
    torch.save(_inputs(), inputs)
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(
        [sys.executable, "-c", _LOADER, path, kind, str(inputs), str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.load(out)


def _check_matches_eager(model, results, atol):
    total = 0
    for images, (boxes, scores, labels, counts) in zip(_inputs(), results):
        b, d = images.shape[0], model.config["detections_per_img"]
        assert boxes.shape == (b, d, 4) and scores.shape == (b, d) and labels.shape == (b, d)
        assert counts.shape == (b,) and counts.dtype == labels.dtype == torch.int64
        with torch.no_grad():
            eager = model(images)
        for i, ref in enumerate(eager):
            n = int(counts[i])
            assert n == len(ref["scores"]), f"{list(images.shape)} image {i}: {n} vs {len(ref['scores'])} detections"
            torch.testing.assert_close(boxes[i, :n], ref["boxes"], atol=atol, rtol=0)
            torch.testing.assert_close(scores[i, :n], ref["scores"], atol=atol, rtol=0)
            assert torch.equal(labels[i, :n], ref["labels"])
            assert (labels[i, n:] == -1).all() and (scores[i, n:] == 0).all()
            total += n
    assert total > 0, "no detections: the comparison would prove nothing"


def test_exported_program_matches_eager_in_fresh_process(exported, tmp_path):
    model, _, program = exported
    _check_matches_eager(model, _run_fresh(program, "export", tmp_path), atol=1e-5)


def test_exported_program_metadata_and_dynamic_shapes(exported):
    model, _, program = exported
    meta = read_metadata(program)
    assert meta["classes"] == CLASSES
    assert meta["config"]["score_thresh"] == SCORE_THRESH and meta["config"]["num_classes"] == len(CLASSES)
    assert meta["image_size"] == 160 and meta["max_size"] == 256
    ep = torch.export.load(program)
    # One graph for every (B, H, W): the image's batch, height and width are symbols (the
    # last input; the others are weights and buffers), and postprocess is in the graph.
    images = [n for n in ep.graph.nodes if n.op == "placeholder"][-1].meta["val"]
    assert [isinstance(s, torch.SymInt) for s in images.shape] == [True, False, True, True]
    assert any(n.target == torch.ops.focalops.postprocess.default for n in ep.graph.nodes)
    h, w = images.shape[2].node.expr, images.shape[3].node.expr
    assert all((r.lower, r.upper) == (1, 8192) for r in (ep.range_constraints[h], ep.range_constraints[w]))
    with pytest.raises(AssertionError, match="8192"):
        ep.module()(torch.rand(1, 3, 8193, 1))


def _run_command(argv):
    """``focalops export ARGV`` through the CLI; returns the program path."""
    assert cli.main(["export", *argv]) == 0
    return argv[argv.index("-o") + 1]


def test_export_command_arguments(exported, tmp_path, capsys):
    _, ckpt, _ = exported
    out = str(tmp_path / "cli.pt2")
    assert _run_command([ckpt, "-o", out, "--score-thresh", "0.5", "--image-size", "200"]) == out
    assert os.path.exists(out)
    assert "wrote " + out in capsys.readouterr().out
    meta = read_metadata(out)
    assert meta["config"]["score_thresh"] == 0.5 and meta["image_size"] == 200 and meta["classes"] == CLASSES
    assert not os.path.exists(aoti_path(out))
    with pytest.raises(SystemExit):
        cli.main(["export", ckpt])  # -o is required


@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get("FOCALOPS_AOTI_TESTS"),
    reason="AOTInductor compiles C++ for minutes (~2.5 min on 2 cores): set FOCALOPS_AOTI_TESTS=1 to run",
)
def test_aoti_package_matches_eager_in_fresh_process(exported, tmp_path):
    model, ckpt, _ = exported
    out = str(tmp_path / "model.pt2")
    _run_command([ckpt, "-o", out, "--score-thresh", str(SCORE_THRESH), "--aoti"])
    package = aoti_path(out)
    assert package == str(tmp_path / "model.aoti.pt2")
    assert read_metadata(package) == read_metadata(out)
    # Inductor fuses and reorders float math: equal up to rounding, same detections.
    _check_matches_eager(model, _run_fresh(package, "aoti", tmp_path), atol=1e-3)


def test_export_rejects_reference_ops_and_bad_sizes():
    model = _tiny_model()
    with pytest.raises(ValueError, match="example_size must be in"):
        model.export(example_size=(128, 256))
    with pytest.raises(ValueError, match="example_batch must be in"):
        model.export(example_batch=1)
    model.ops = "reference"
    with pytest.raises(ValueError, match="needs ops='focalops'"):
        model.export()


# ---- every public op exported on its own, with dynamic sizes --------------------------------
class _Call(torch.nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *args):
        return self.fn(*args)


def _boxes(n: int, g: torch.Generator, size: float = 100.0) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=g) * size
    return torch.cat([xy, xy + 4 + torch.rand(n, 2, generator=g) * size / 2], 1)


def _postprocess_two_levels(logits1, logits2, deltas1, deltas2, anchors1, anchors2, image_sizes):
    # Two levels of symbolic sizes A1, A2: the schema's SymInt[] level_sizes keeps them so.
    return focalops.postprocess(
        torch.cat([logits1, logits2], 1), torch.cat([deltas1, deltas2], 1), torch.cat([anchors1, anchors2]),
        [logits1.shape[1], logits2.shape[1]], image_sizes,
        score_thresh=0.3, topk_candidates=20, nms_thresh=0.5, detections_per_img=15,
    )  # fmt: skip


def _assign_then_targets(anchors, gt_boxes, gt_labels, gt_counts):
    matched = focalops.assign(anchors, gt_boxes, gt_counts)
    return (matched, *focalops.retinanet_targets(matched, gt_boxes, gt_labels, anchors))


def _op_case(name: str, sizes: dict, seed: int):
    """(function, inputs, dynamic shapes) of one public op at the given sizes."""
    g = torch.Generator().manual_seed(seed)
    N, M, B, A, G, K = (sizes[k] for k in "NMBAGK")
    D = torch.export.Dim
    n, m, b, a, gg = D("n", min=2), D("m", min=2), D("b", min=2), D("a", min=2), D("g", min=2)
    if name == "sigmoid_focal_loss":
        inputs = (torch.randn(N, K, generator=g) * 3, torch.randint(-1, K, (N,), generator=g))
        fn = lambda x, t: (focalops.sigmoid_focal_loss(x, t, reduction="sum"), focalops.sigmoid_focal_loss(x, t))  # noqa: E731
        return fn, inputs, ({0: n}, {0: n})
    if name == "box_iou":
        return focalops.box_iou, (_boxes(N, g), _boxes(M, g)), ({0: n}, {0: m})
    if name == "encode_boxes":
        return focalops.encode_boxes, (_boxes(N, g), _boxes(N, g)), ({0: n}, {0: n})
    if name == "decode_boxes":
        return focalops.decode_boxes, (torch.randn(B, A, 4, generator=g), _boxes(A, g)), ({0: b, 1: a}, {0: a})
    if name == "assign+retinanet_targets":
        inputs = (_boxes(A, g), _boxes(B * G, g).view(B, G, 4), torch.randint(0, K, (B, G), generator=g),
                  torch.randint(0, G + 1, (B,), generator=g))  # fmt: skip
        return _assign_then_targets, inputs, ({0: a}, {0: b, 1: gg}, {0: b, 1: gg}, {0: b})
    if name == "nms":
        return focalops.nms, (_boxes(N, g), torch.rand(N, generator=g), 0.5), ({0: n}, {0: n}, None)
    if name == "batched_nms":
        inputs = (_boxes(N, g), torch.rand(N, generator=g), torch.randint(0, 3, (N,), generator=g), 0.5)
        return focalops.batched_nms, inputs, ({0: n}, {0: n}, {0: n}, None)
    if name == "postprocess":
        a2 = D("a2", min=2)
        inputs = (torch.randn(B, A, K, generator=g), torch.randn(B, M, K, generator=g),
                  torch.randn(B, A, 4, generator=g) * 0.1, torch.randn(B, M, 4, generator=g) * 0.1,
                  _boxes(A, g), _boxes(M, g), torch.tensor([[90.0, 120.0]]).repeat(B, 1))  # fmt: skip
        dims = ({0: b, 1: a}, {0: b, 1: a2}, {0: b, 1: a}, {0: b, 1: a2}, {0: a}, {0: a2}, {0: b})
        return _postprocess_two_levels, inputs, dims
    raise AssertionError(name)


OPS = ["sigmoid_focal_loss", "box_iou", "encode_boxes", "decode_boxes", "assign+retinanet_targets", "nms",
       "batched_nms", "postprocess"]  # fmt: skip


@pytest.mark.parametrize("name", OPS)
def test_public_op_exports_with_dynamic_sizes(name):
    traced = dict(N=40, M=30, B=2, A=50, G=4, K=3)
    other = dict(N=67, M=13, B=3, A=81, G=6, K=3)
    fn, inputs, dynamic = _op_case(name, traced, seed=0)
    program = torch.export.export(_Call(fn), inputs, dynamic_shapes=(dynamic,)).module()
    fn, inputs, _ = _op_case(name, other, seed=1)
    got, want = program(*inputs), fn(*inputs)
    for x, y in zip(*(r if isinstance(r, tuple) else (r,) for r in (got, want))):
        assert x.shape == y.shape
        torch.testing.assert_close(x, y, rtol=0, atol=0)
