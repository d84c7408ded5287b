"""ONNX export: the whole detector as a file of standard ONNX operators (opset 18).

``torch.onnx.export(..., dynamo=True)`` translates the ``torch.export`` program of the
detector; the one focalops op of the inference graph, ``focalops::postprocess``, is written
here in standard ONNX operators (Exp, TopK, GatherElements, NonMaxSuppression, ScatterND,
...), so the file runs in ONNX Runtime with no focalops (and no torch) installed.

How ``postprocess`` maps onto ONNX, and why the detections are ours exactly (up to the rounding
of ``Exp``):

- per image and level, ``TopK`` of the scores, those ``<= score_thresh`` set to -1 first:
  ONNX TopK breaks ties by the lower index, as our kernel (flat index ``anchor * K + class``);
- the candidates of all levels are sorted once more (``TopK`` over all of them: decreasing
  score, ties by level, then by flat index): the visiting order of our class-aware NMS;
- ``NonMaxSuppression`` (per batch, per class: the class-aware NMS) is given the candidate's
  *rank* ``M - position`` as its score, not the score itself. ONNX Runtime visits the boxes of a
  class with a ``std::priority_queue`` ordered by score alone, so equal scores would come out in
  heap order; ranks are distinct and visit them in our order. Boxes are ``(x1, y1, x2, y2)``
  with ``center_point_box=0`` (the operator reads ``[y1, x1, y2, x2]``, but IoU is symmetric in
  the axes and ONNX Runtime's float32 formula is ours term for term:
  ``inter / (area1 + area2 - inter)``, suppressing at ``IoU > iou_threshold``, strictly, as
  ours); ``max_output_boxes_per_class = detections_per_img`` (the best ``D`` of all classes are
  among the best ``D`` of each class);
- the kept candidates with the ``D`` best ranks (``TopK`` again), padded to ``D``: boxes and
  scores 0, labels -1, as our kernel.
"""

import json
from typing import Any, Dict, Optional, Sequence

import torch

from focalops.ops.boxes import BOX_DELTA_CLAMP

try:  # the tensor types of the translation's signature; onnxscript is needed only to export
    from onnxscript.onnx_types import FLOAT, INT64
except ImportError:  # pragma: no cover
    FLOAT = INT64 = Any

OPSET = 18
METADATA_KEY = "focalops"  # metadata_props entry holding the JSON of the file's metadata


def _postprocess_onnx(
    cls_logits: FLOAT,
    box_deltas: FLOAT,
    anchors: FLOAT,
    level_sizes: Sequence[INT64],
    image_sizes: FLOAT,
    score_thresh: float,
    topk_candidates: int,
    nms_thresh: float,
    detections_per_img: int,
):
    """``focalops::postprocess`` in ONNX operators; called by the exporter with ONNX IR values
    (``level_sizes``: values or ints), recording the nodes (see the module docstring)."""
    from onnxscript import ir
    from onnxscript import opset18 as op

    def f32(v: float):
        return op.Constant(value=ir.tensor(float(v), dtype=ir.DataType.FLOAT))

    def i64(v: Sequence[int]):
        return op.Constant(value_ints=list(v))

    def scalar(v):  # an int or a 0-d / 1-element INT64 value -> a [1] INT64 value
        return i64([v]) if isinstance(v, int) else op.Reshape(v, i64([1]))

    D = detections_per_img
    shape = op.Shape(cls_logits)
    batch, num_classes = op.Slice(shape, i64([0]), i64([1])), op.Slice(shape, i64([2]), i64([3]))
    thresh = f32(score_thresh)
    neg = f32(-1.0)
    # 1. Per level: the best topk_candidates (anchor, class) scores above the threshold.
    cand_scores, cand_anchor, cand_label = [], [], []
    start = i64([0])
    for size in level_sizes:
        end = op.Add(start, scalar(size))
        logits = op.Slice(cls_logits, start, end, i64([1]))
        # 1 / (1 + exp(-x)), our kernel's formula: ONNX Runtime's Sigmoid is an approximation
        # off by ~40 ulp near 1 (2.4e-6 at 0.99994), enough to reorder near-tied detections.
        logits = op.Reshape(logits, op.Concat(batch, i64([-1]), axis=0))
        scores = op.Div(f32(1.0), op.Add(f32(1.0), op.Exp(op.Neg(logits))))
        scores = op.Where(op.Greater(scores, thresh), scores, neg)
        n = op.Mul(scalar(size), num_classes)
        k = op.Min(n, i64([topk_candidates]))
        values, flat = op.TopK(scores, k, axis=1, largest=1, sorted=1)
        cand_scores.append(values)
        cand_anchor.append(op.Add(op.Div(flat, num_classes), start))
        cand_label.append(op.Mod(flat, num_classes))
        start = end
    scores = op.Concat(*cand_scores, axis=1)
    # 2. One order for all candidates of an image: decreasing score, ties by level, then index.
    m = op.Slice(op.Shape(scores), i64([1]), i64([2]))
    scores, order = op.TopK(scores, m, axis=1, largest=1, sorted=1)
    anchor_idx = op.GatherElements(op.Concat(*cand_anchor, axis=1), order, axis=1)
    labels = op.GatherElements(op.Concat(*cand_label, axis=1), order, axis=1)
    valid = op.Greater(scores, f32(0.0))  # invalid candidates carry -1 (valid scores are > thresh >= 0)
    # 3. Decode (BoxCoder weights 1, dw and dh clamped) and clip to the image.
    idx4 = op.Expand(op.Unsqueeze(anchor_idx, i64([2])), op.Concat(batch, m, i64([4]), axis=0))
    deltas = op.GatherElements(box_deltas, idx4, axis=1)
    anc = op.Gather(anchors, anchor_idx, axis=0)  # [B, M, 4]

    def col(t, j):
        return op.Slice(t, i64([j]), i64([j + 1]), i64([2]))

    half = f32(0.5)
    aw = op.Sub(col(anc, 2), col(anc, 0))
    ah = op.Sub(col(anc, 3), col(anc, 1))
    ax = op.Add(col(anc, 0), op.Mul(half, aw))
    ay = op.Add(col(anc, 1), op.Mul(half, ah))
    clamp = f32(BOX_DELTA_CLAMP)
    cx = op.Add(op.Mul(col(deltas, 0), aw), ax)
    cy = op.Add(op.Mul(col(deltas, 1), ah), ay)
    half_w = op.Mul(half, op.Mul(op.Exp(op.Min(col(deltas, 2), clamp)), aw))
    half_h = op.Mul(half, op.Mul(op.Exp(op.Min(col(deltas, 3), clamp)), ah))
    height = op.Unsqueeze(op.Slice(image_sizes, i64([0]), i64([1]), i64([1])), i64([2]))  # [B, 1, 1]
    width = op.Unsqueeze(op.Slice(image_sizes, i64([1]), i64([2]), i64([1])), i64([2]))
    zero = f32(0.0)

    def clip(v, hi):
        return op.Min(op.Max(v, zero), op.CastLike(hi, v))

    boxes = op.Concat(
        clip(op.Sub(cx, half_w), width),
        clip(op.Sub(cy, half_h), height),
        clip(op.Add(cx, half_w), width),
        clip(op.Add(cy, half_h), height),
        axis=2,
    )
    # 4. Class-aware NMS: one class row per label, scored by rank (distinct, in our visiting order).
    zero_i, one_i = op.Constant(value_int=0), op.Constant(value_int=1)
    m0 = op.Squeeze(m)
    rank = op.Cast(op.Sub(m0, op.Range(zero_i, m0, one_i)), to=ir.DataType.FLOAT)  # [M]: M ... 1
    classes = op.Reshape(op.Range(zero_i, op.Squeeze(num_classes), one_i), i64([1, -1, 1]))
    in_class = op.And(op.Equal(op.Unsqueeze(labels, i64([1])), classes), op.Unsqueeze(valid, i64([1])))
    nms_scores = op.Where(in_class, rank, zero)  # [B, K, M]
    selected = op.NonMaxSuppression(boxes, nms_scores, i64([D]), f32(nms_thresh), f32(0.5), center_point_box=0)
    where = op.Gather(selected, i64([0, 2]), axis=1)
    ones = op.Expand(i64([1]), op.Slice(op.Shape(selected), i64([0]), i64([1])))
    kept = op.ScatterND(op.Expand(i64([0]), op.Concat(batch, m, axis=0)), where, ones)
    # 5. The D best kept candidates by rank, padded to D.
    key = op.Where(op.Equal(kept, i64([1])), rank, zero)
    k = op.Min(m, i64([D]))
    key, pos = op.TopK(key, k, axis=1, largest=1, sorted=1)
    pad = op.Sub(i64([D]), k)
    pads2 = op.Concat(i64([0, 0, 0]), pad, axis=0)
    pads3 = op.Concat(i64([0, 0, 0, 0]), pad, i64([0]), axis=0)
    found = op.Greater(op.Pad(key, pads2, zero), half)  # [B, D]
    out_scores = op.Pad(op.GatherElements(scores, pos, axis=1), pads2, zero)
    minus_one = op.Constant(value_int=-1)
    out_labels = op.Pad(op.GatherElements(labels, pos, axis=1), pads2, minus_one)
    pos4 = op.Expand(op.Unsqueeze(pos, i64([2])), op.Concat(batch, k, i64([4]), axis=0))
    out_boxes = op.Pad(op.GatherElements(boxes, pos4, axis=1), pads3, zero)
    out_scores = op.Where(found, out_scores, zero)
    out_labels = op.Where(found, out_labels, minus_one)
    out_boxes = op.Where(op.Unsqueeze(found, i64([2])), out_boxes, zero)
    counts = op.ReduceSum(op.Cast(found, to=ir.DataType.INT64), i64([1]), keepdims=0)
    return out_boxes, out_scores, out_labels, counts


def translation_table() -> Dict[Any, Any]:
    """The ``custom_translation_table`` of ``torch.onnx.export``: every focalops op that an
    inference graph holds -> its translation into standard ONNX operators."""
    import focalops  # noqa: F401  (registers torch.ops.focalops)

    return {torch.ops.focalops.postprocess.default: _postprocess_onnx}


def require_onnx() -> None:
    """Raises ``ImportError`` (saying what to install) unless ``onnx`` and ``onnxscript`` import."""
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise ImportError(
            "focalops ONNX export needs the onnx and onnxscript packages: pip install onnx onnxscript"
        ) from e


INPUT_NAMES = ["images"]
OUTPUT_NAMES = ["boxes", "scores", "labels", "counts"]
_DIM_NAMES = ("batch", None, "height", "width")


def export_program(
    program: "torch.export.ExportedProgram", out_path: str, metadata: Optional[Dict[str, Any]] = None
) -> str:
    """Writes the ``torch.export`` program of a detector (``images [B, 3, H, W] -> boxes, scores,
    labels, counts``) as an ONNX model of standard operators (opset 18) at ``out_path``.

    The input is named ``images``, the outputs ``boxes, scores, labels, counts``; the dynamic
    sizes ``batch``, ``height`` and ``width``. ``metadata`` is stored as JSON under the model's
    ``metadata_props["focalops"]``, its class names also as ``metadata_props["classes"]`` (a
    JSON list) and its preprocessing as ``metadata_props["preprocessing"]``: what ONNX Runtime
    users read with ``session.get_modelmeta().custom_metadata_map``.

    Raises:
        ImportError: ``onnx`` or ``onnxscript`` is not installed.
        RuntimeError: the translated graph holds an operator outside the standard ONNX domain
            (an op with no translation here).
    """
    require_onnx()
    onnx_program = torch.onnx.export(
        program,
        dynamo=True,
        custom_translation_table=translation_table(),
        opset_version=OPSET,
        input_names=INPUT_NAMES,
        output_names=OUTPUT_NAMES,
        optimize=True,
        verbose=False,
    )
    model = onnx_program.model
    domains = {node.domain for node in model.graph.all_nodes()} | set(model.functions)
    if domains - {"", "ai.onnx"}:
        raise RuntimeError(f"ONNX export: the graph holds non-standard operator domains {sorted(domains)}")
    _name_dynamic_dims(model)
    if metadata is not None:
        model.metadata_props[METADATA_KEY] = json.dumps(metadata)
        if "classes" in metadata:
            model.metadata_props["classes"] = json.dumps(metadata["classes"])
        if "preprocessing" in metadata:
            model.metadata_props["preprocessing"] = metadata["preprocessing"]
    onnx_program.save(out_path)
    return out_path


def _name_dynamic_dims(model) -> None:
    """The symbolic sizes of the graph's inputs and outputs named ``batch, height, width``
    (torch.export calls them ``s0, s1, ...``)."""
    from onnxscript import ir

    names = {}
    for dim, name in zip(model.graph.inputs[0].shape, _DIM_NAMES):
        if isinstance(dim, ir.SymbolicDim) and name is not None:
            names[dim.value] = name
    for value in [*model.graph.inputs, *model.graph.outputs]:
        if value.shape is not None:
            value.shape = ir.Shape(
                [names.get(d.value, d.value) if isinstance(d, ir.SymbolicDim) else d for d in value.shape]
            )


def read_onnx_metadata(path: str) -> Dict[str, Any]:
    """The focalops metadata of an ONNX model written by :func:`export_program` (the graph and
    weights are not read).

    Raises:
        ValueError: the file has no focalops metadata.
    """
    import onnx

    model = onnx.load(path, load_external_data=False)
    props = {p.key: p.value for p in model.metadata_props}
    if METADATA_KEY not in props:
        raise ValueError(f"export: {path} has no focalops metadata")
    return json.loads(props[METADATA_KEY])
