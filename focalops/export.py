"""Deployment: a checkpoint -> a ``torch.export`` program of the whole detector (``.pt2``) and,
optionally, an AOTInductor package of it (``focalops export CKPT -o model.pt2 [--aoti]``).

Both files carry the class names and settings as metadata (:func:`read_metadata`). Loading the
program needs no model code::

    import torch, focalops  # focalops registers the custom ops the program calls
    detector = torch.export.load("model.pt2").module()
    boxes, scores, labels, counts = detector(images)  # images: float [B, 3, H, W] in [0, 1]
"""

import argparse
import json
import os
from typing import Any, Dict, Optional

import torch

from focalops.models.retinanet import EXPORT_MIN_SIZE

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
) -> str:
    """Exports a training checkpoint (``last.pth``) as a ``torch.export`` program (CPU, float32).

    Args:
        ckpt_path (str): a checkpoint written by ``focalops train``.
        out_path (str): the ``.pt2`` to write (``torch.export.save``).
        score_thresh (float, optional): detection score threshold baked into the program;
            default the checkpoint's.
        image_size (int, optional): recorded in the metadata as the resize to apply before
            inference, and the size the example batch is traced at (at least 129); default the
            checkpoint's training size, else 512. The program accepts any ``H, W`` in
            [129, 8192] (every pyramid level at least 2 x 2; pad smaller images).
        aoti (bool): also write an AOTInductor package at :func:`aoti_path` (compiles C++ code:
            minutes on a few cores).

    Returns:
        str: ``out_path``.
    """
    from focalops.engine import load_model

    overrides = {} if score_thresh is None else {"score_thresh": score_thresh}
    model, ckpt = load_model(ckpt_path, **overrides)
    size = image_size or ckpt.get("args", {}).get("image_size") or DEFAULT_IMAGE_SIZE
    example = max(size, EXPORT_MIN_SIZE)
    program = model.eval().export(example_size=(example, example))
    metadata = _metadata(model, ckpt, size)
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
    :func:`export_checkpoint`: the ``.pt2`` program or the AOTInductor package.

    Raises:
        ValueError: the file has no focalops metadata.
    """
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


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``focalops export CKPT -o model.pt2 [--score-thresh T] [--image-size S] [--aoti]``."""
    parser.add_argument("checkpoint", help="a last.pth written by train")
    parser.add_argument("--output", "-o", required=True, help="the torch.export program to write (model.pt2)")
    parser.add_argument("--score-thresh", type=float, help="detection score threshold (default: the checkpoint's)")
    parser.add_argument(
        "--image-size",
        type=int,
        help="example input size traced and recorded as the resize to apply (default: as trained, else 512); "
        "the program takes any size",
    )
    parser.add_argument(
        "--aoti",
        action="store_true",
        help="also write an AOTInductor package (<output stem>.aoti.pt2); compiles C++: minutes",
    )


def run_export(args: argparse.Namespace) -> str:
    """Runs ``focalops export`` from parsed :func:`add_export_arguments`; prints and returns the program path."""
    path = export_checkpoint(args.checkpoint, args.output, args.score_thresh, args.image_size, args.aoti)
    written = [path] + ([aoti_path(path)] if args.aoti else [])
    print("focalops export: wrote " + " and ".join(written) + f" ({os.path.getsize(path) / 2**20:.1f} MiB program)")
    return path
