"""Detection datasets (synthetic shapes, COCO JSON, Pascal VOC) and transforms."""

from focalops.data.coco import CocoDetection
from focalops.data.shapes import ShapesDataset
from focalops.data.transforms import Compose, RandomHorizontalFlip, Resize, collate
from focalops.data.voc import VOC_CLASSES, VOCDetection

__all__ = [
    "CocoDetection",
    "Compose",
    "RandomHorizontalFlip",
    "Resize",
    "ShapesDataset",
    "VOCDetection",
    "VOC_CLASSES",
    "collate",
]
