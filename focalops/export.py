"""Deployment: a checkpoint -> a ``torch.export`` program of the whole detector (``.pt2``) and,
optionally, an AOTInductor package of it (``focalops export CKPT -o model.pt2 [--aoti]``), or an
ONNX model of standard operators (``focalops export CKPT --onnx -o model.onnx``); a torchvision
RetinaNet -> the same files (:func:`export_torchvision`).

Every file carries the class names and settings as metadata (:func:`read_metadata`). Loading the
program needs no model code::

    import torch, focalops  # focalops registers the custom ops the program calls
    detector = torch.export.load("model.pt2").module()
    boxes, scores, labels, counts = detector(images)  # images: float [B, 3, H, W] in [0, 1]

and the ONNX model needs only ONNX Runtime::

    import onnxruntime
    session = onnxruntime.InferenceSession("model.onnx")
    boxes, scores, labels, counts = session.run(None, {"images": images})  # numpy float32
"""

import json
from typing import Any, Dict, Optional, Sequence, Tuple

import torch

from focalops.models.retinanet import EXPORT_EXAMPLE_MIN_SIZE, PREPROCESSING, export_batch_detector

METADATA_FILE = "focalops.json"  # the .pt2 archive entry (torch.export.save extra_files)
METADATA_KEY = "focalops"  # the AOTInductor package metadata key (a JSON string)
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
    from focalops.engine import load_model

    if onnx:
        from focalops.onnx_export import require_onnx

        require_onnx()  # before the minutes of tracing
    overrides = {} if score_thresh is None else {"score_thresh": score_thresh}
    model, ckpt = load_model(ckpt_path, **overrides)
    size = image_size or ckpt.get("args", {}).get("image_size") or DEFAULT_IMAGE_SIZE
    example = max(size, EXPORT_EXAMPLE_MIN_SIZE)
    program = model.eval().export(example_size=(example, example))
    metadata = _metadata(model, ckpt, size)
    if onnx:
        from focalops.onnx_export import export_program

        return export_program(program, out_path, metadata)
    torch.export.save(program, out_path, extra_files={METADATA_FILE: json.dumps(metadata)})
    if aoti:
        torch._inductor.aoti_compile_and_package(
            program,
            package_path=aoti_path(out_path),
            inductor_configs={"aot_inductor.metadata": {METADATA_KEY: json.dumps(metadata)}},
        )
    return out_path


def read_metadata(path: str) -> Dict[str, Any]:
    """The metadata (class names, settings, input and output description) of a file written by
    :func:`export_checkpoint` or :func:`export_torchvision`: the ``.pt2`` program, the
    AOTInductor package or the ``.onnx`` model.

    Raises:
        ValueError: the file has no focalops metadata.
    """
    if path.endswith(".onnx"):
        from focalops.onnx_export import read_onnx_metadata

        return read_onnx_metadata(path)
    extra = {METADATA_FILE: ""}
    try:
        torch.export.load(path, extra_files=extra)
    except RuntimeError:
        # Not a torch.export archive: an AOTInductor package.
        text = torch._inductor.aoti_load_package(path).get_metadata().get(METADATA_KEY, "")
    else:
        text = extra[METADATA_FILE]
    if not text:
        raise ValueError(f"export: {path} has no focalops metadata")
    return json.loads(text)


def export_torchvision(
    model,
    path: Optional[str] = None,
    *,
    classes: Optional[Sequence[str]] = None,
    example_size: Tuple[int, int] = (512, 512),
    example_batch: int = 2,
    max_batch: int = 1024,
    max_image_size: int = 8192,
) -> "torch.export.ExportedProgram":
    """Exports a torchvision ``RetinaNet`` on focalops' ops (``TorchvisionDetector`` of
    :mod:`focalops.torchvision_retinanet`: the detections of ``focalops.accelerate(model)``) as
    a ``torch.export`` program with dynamic batch, height and width, and writes it to ``path``
    if given: an ONNX model of standard operators for a ``.onnx`` path (needs ``onnx`` and
    ``onnxscript``; runs in ONNX Runtime without torch), else the program
    (``torch.export.save``; load it after ``import focalops``).

    The exported detector does not resize (torchvision's transform does): feed images resized as
    ``model.transform`` would (``min_size`` and ``max_size`` are in the metadata); it normalises
    and pads them itself and returns boxes in the input's pixels, padded to
    ``D = model.detections_per_img``: ``boxes [B, D, 4], scores [B, D], labels [B, D], counts [B]``.
    The model is traced in eval mode (its mode is restored).

    Args:
        model: a torchvision ``RetinaNet`` (see ``TorchvisionDetector``).
        path (str, optional): the ``.onnx`` or ``.pt2`` file to write.
        classes (sequence of str, optional): class names for the metadata; default ``"0", "1", ...``.
        example_size, example_batch, max_batch, max_image_size: as :meth:`focalops.models.RetinaNet.export`.

    Returns:
        torch.export.ExportedProgram: the program.

    Raises:
        TypeError, ValueError: as ``TorchvisionDetector``; an example size out of range.
        ImportError: a ``.onnx`` path without ``onnx`` / ``onnxscript`` installed.
    """
    import focalops
    from focalops.torchvision_retinanet import TorchvisionDetector

    detector = TorchvisionDetector(model)
    if path is not None and path.endswith(".onnx"):
        from focalops.onnx_export import require_onnx

        require_onnx()
    if example_batch < 1 or not all(EXPORT_EXAMPLE_MIN_SIZE <= s <= max_image_size for s in example_size):
        raise ValueError(
            f"export_torchvision: example_size must be in [{EXPORT_EXAMPLE_MIN_SIZE}, {max_image_size}], "
            f"got {example_size}"
        )
    was_training = model.training
    model.eval()
    try:
        program = export_batch_detector(detector, example_size, example_batch, max_batch, max_image_size)
    finally:
        model.train(was_training)
    if path is None:
        return program
    num_classes = model.head.classification_head.num_classes
    transform = model.transform
    metadata = {
        "focalops_version": focalops.__version__,
        "torch_version": torch.__version__,
        "source": "torchvision RetinaNet",
        "classes": list(classes) if classes is not None else [str(k) for k in range(num_classes)],
        "config": {
            "num_classes": num_classes,
            "score_thresh": model.score_thresh,
            "nms_thresh": model.nms_thresh,
            "topk_candidates": model.topk_candidates,
            "detections_per_img": model.detections_per_img,
            "image_mean": list(transform.image_mean),
            "image_std": list(transform.image_std),
        },
        # torchvision's transform resizes to these before the network; the exported detector does not.
        "image_size": min(transform.min_size),
        "max_size": transform.max_size,
        "preprocessing": "images: float32 [B, 3, H, W], RGB in [0, 1], resized as torchvision's transform "
        "(shorter side min_size, longer side at most max_size); the model normalises (image_mean, image_std) "
        "and pads them to a multiple of 32 itself",
        "inputs": "images: float32 Tensor[B, 3, H, W], RGB in [0, 1]",
        "outputs": "boxes [B, D, 4] (x1, y1, x2, y2 pixels), scores [B, D], labels [B, D] int64 (-1 padding), "
        "counts [B] int64: image b's detections are its first counts[b] rows",
    }
    if path.endswith(".onnx"):
        from focalops.onnx_export import export_program

        export_program(program, path, metadata)
    else:
        torch.export.save(program, path, extra_files={METADATA_FILE: json.dumps(metadata)})
    return program
