"""Deployment files of a detector: a ``torch.export`` program (``.pt2``), an AOTInductor package
or an ONNX model of standard operators, each carrying focalops' metadata (:func:`read_metadata`);
a torchvision RetinaNet -> those files (:func:`export_torchvision`). (``focalops export CKPT``, a
training checkpoint -> the same files, is :func:`focalops.engine.export_checkpoint`.)

Loading the program needs no model code::

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

from focalops.models.retinanet import EXPORT_EXAMPLE_MIN_SIZE, export_batch_detector

METADATA_FILE = "focalops.json"  # the .pt2 archive entry (torch.export.save extra_files)
METADATA_KEY = "focalops"  # the AOTInductor package metadata key (a JSON string)


def write_program(
    program: "torch.export.ExportedProgram",
    path: str,
    metadata: Dict[str, Any],
    *,
    onnx: Optional[bool] = None,
    aoti_package: Optional[str] = None,
) -> str:
    """Writes ``program`` with ``metadata`` to ``path``: an ONNX model of standard operators if
    ``onnx`` (default: for a ``.onnx`` path; needs ``onnx`` and ``onnxscript``), else the
    ``torch.export`` archive and, if ``aoti_package`` names a file, an AOTInductor package of it
    there (compiles C++ code: minutes on a few cores).

    Returns:
        str: ``path``.
    """
    if onnx is None:
        onnx = path.endswith(".onnx")
    if onnx:
        from focalops.onnx_export import export_program

        return export_program(program, path, metadata)
    torch.export.save(program, path, extra_files={METADATA_FILE: json.dumps(metadata)})
    if aoti_package is not None:
        torch._inductor.aoti_compile_and_package(
            program,
            package_path=aoti_package,
            inductor_configs={"aot_inductor.metadata": {METADATA_KEY: json.dumps(metadata)}},
        )
    return path


def read_metadata(path: str) -> Dict[str, Any]:
    """The metadata (class names, settings, input and output description) of a file written by
    :func:`focalops.engine.export_checkpoint` or :func:`export_torchvision`: the ``.pt2`` program, the
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
    write_program(program, path, metadata)
    return program
