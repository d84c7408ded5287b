"""Training, evaluation, inference and checkpoints for :class:`focalops.models.RetinaNet`, as library
functions (the CLI parses its flags and calls these).

- :func:`train` (with :class:`TrainConfig`): the training loop; exact resume; Ctrl-C saves.
- :func:`evaluate` / :func:`coco_map`: COCO box mAP (pycocotools).
- :func:`detect`: detections on a whole image, resized or tiled (large rasters).
- :func:`save_checkpoint` / :func:`load_checkpoint` / :func:`load_model`: checkpoints that open
  with ``weights_only=True`` and carry a SHA-256 content digest checked on load.
- :func:`export_checkpoint`: a checkpoint -> a ``torch.export`` program, AOTInductor package or
  ONNX model (``focalops export``).
"""

from focalops.engine.checkpoint import content_digest, load_checkpoint, load_model, save_checkpoint
from focalops.engine.evaluation import amp_dtype, autocast, coco_map, evaluate, resolve_device
from focalops.engine.export import aoti_path, export_checkpoint
from focalops.engine.inference import detect, draw, merge_tiles, records, tile_windows, write_detections
from focalops.engine.training import TrainConfig, TrainingInterrupted, lr_factor, train

__all__ = [
    "TrainConfig",
    "TrainingInterrupted",
    "aoti_path",
    "amp_dtype",
    "autocast",
    "coco_map",
    "content_digest",
    "detect",
    "draw",
    "evaluate",
    "export_checkpoint",
    "load_checkpoint",
    "load_model",
    "lr_factor",
    "merge_tiles",
    "records",
    "resolve_device",
    "save_checkpoint",
    "tile_windows",
    "train",
    "write_detections",
]
