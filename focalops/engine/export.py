"""``focalops export``: a training checkpoint -> a ``torch.export`` program of the whole detector
(``.pt2``) and, optionally, an AOTInductor package of it, or an ONNX model of standard operators
(the files of :mod:`focalops.export`)."""

from typing import Any, Dict, Optional

import torch

from focalops.engine.checkpoint import load_model
from focalops.export import write_program
from focalops.models.retinanet import EXPORT_EXAMPLE_MIN_SIZE, PREPROCESSING

DEFAULT_IMAGE_SIZE = 512


def aoti_path(out_path: str) -> str:
    """Where ``--aoti`` writes the AOTInductor package: ``model.pt2`` -> ``model.aoti.pt2``."""
    stem = out_path[: -len(".pt2")] if out_path.endswith(".pt2") else out_path
    return stem + ".aoti.pt2"


def _metadata(model, ckpt: Dict[str, Any], image_size: int) -> Dict[str, Any]:
    import focalops

    saved = ckpt.get("args", {})
    return {
        "focalops_version": focalops.__version__,
        "torch_version": torch.__version__,
        "classes": list(ckpt.get("classes") or [str(k) for k in range(model.num_classes)]),
        "config": {k: list(v) if isinstance(v, tuple) else v for k, v in model.config.items()},
        # The resize the model was trained with (focalops.data.Resize: shorter side, cap on the
        # longer side); the program itself accepts any size.
        "image_size": image_size,
        "max_size": saved.get("max_size"),
        "preprocessing": PREPROCESSING,
        "inputs": "images: float32 Tensor[B, 3, H, W], RGB in [0, 1]",
        "outputs": "boxes [B, D, 4] (x1, y1, x2, y2 pixels), scores [B, D], labels [B, D] int64 (-1 padding), "
        "counts [B] int64: image b's detections are its first counts[b] rows",
    }


def export_checkpoint(
    ckpt_path: str,
    out_path: str,
    score_thresh: Optional[float] = None,
    image_size: Optional[int] = None,
    aoti: bool = False,
    onnx: bool = False,
) -> str:
    """Exports a training checkpoint (``last.pth``) as a ``torch.export`` program (CPU, float32),
    or as an ONNX model.

    Args:
        ckpt_path (str): a checkpoint written by ``focalops train``.
        out_path (str): the ``.pt2`` to write (``torch.export.save``).
        score_thresh (float, optional): detection score threshold baked into the program;
            default the checkpoint's.
        image_size (int, optional): recorded in the metadata as the resize to apply before
            inference, and the size the example batch is traced at (at least 129); default the
            checkpoint's training size, else 512. The program accepts any ``H, W`` in [1, 8192].
        aoti (bool): also write an AOTInductor package at :func:`aoti_path` (compiles C++ code:
            minutes on a few cores).
        onnx (bool): write an ONNX model (standard operators, opset 18; needs ``onnx`` and
            ``onnxscript``) to ``out_path`` instead of the program; it takes any ``H, W >= 1``.

    Returns:
        str: ``out_path``.
    """
    if onnx:
        from focalops.onnx_export import require_onnx

        require_onnx()  # before the minutes of tracing
    overrides = {} if score_thresh is None else {"score_thresh": score_thresh}
    model, ckpt = load_model(ckpt_path, **overrides)
    size = image_size or ckpt.get("args", {}).get("image_size") or DEFAULT_IMAGE_SIZE
    example = max(size, EXPORT_EXAMPLE_MIN_SIZE)
    program = model.eval().export(example_size=(example, example))
    metadata = _metadata(model, ckpt, size)
    return write_program(program, out_path, metadata, onnx=onnx, aoti_package=aoti_path(out_path) if aoti else None)
