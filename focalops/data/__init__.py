"""Detection datasets (synthetic shapes, COCO JSON, Pascal VOC), transforms, and ``DataSpec``."""

from focalops.data.coco import CocoDetection
from focalops.data.common import IMAGE_EXTENSIONS, read_image
from focalops.data.shapes import ShapesDataset
from focalops.data.spec import DATASETS, DataSpec
from focalops.data.transforms import Compose, RandomHorizontalFlip, Resize, collate
from focalops.data.voc import VOC_CLASSES, VOCDetection
from focalops.errors import DataError

__all__ = [
    "DATASETS",
    "IMAGE_EXTENSIONS",
    "CocoDetection",
    "Compose",
    "DataError",
    "DataSpec",
    "RandomHorizontalFlip",
    "Resize",
    "ShapesDataset",
    "VOCDetection",
    "VOC_CLASSES",
    "collate",
    "read_image",
]
