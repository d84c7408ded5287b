"""Pascal VOC detection loader (``Annotations/*.xml`` + ``JPEGImages/`` folder layout)."""

import os
import xml.etree.ElementTree as ET
from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from torch import Tensor

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
    "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip


class VOCDetection(torch.utils.data.Dataset):
    """Detection set from a Pascal VOC folder (e.g. ``VOCdevkit/VOC2007``).

    Image ids come from ``ImageSets/Main/<image_set>.txt`` when ``image_set`` is given, else
    from every ``Annotations/*.xml``. VOC's 1-based inclusive pixel boxes become 0-based
    ``(x1 - 1, y1 - 1, x2, y2)`` (detectron2's convention). Labels index ``classes``.

    Args:
        root (str): the folder holding ``Annotations`` and ``JPEGImages``.
        image_set (str, optional): e.g. ``"trainval"`` or ``"test"``.
        classes (Sequence[str]): class names; default the 20 VOC classes.
        keep_difficult (bool): keep objects marked difficult. Default False.
        transforms (callable, optional): ``(image, target) -> (image, target)``.

    Returns (``dataset[i]``): ``(image Tensor[3, H, W] float32 in [0, 1], {"boxes": Tensor[G, 4],
    "labels": Tensor[G] int64, "image_id": int})`` (``image_id`` is the index).

    Raises:
        ValueError: an object's class is not in ``classes``.
        FileNotFoundError: the folder layout is not found.
    """

    def __init__(
        self,
        root: str,
        image_set: Optional[str] = None,
        classes: Sequence[str] = VOC_CLASSES,
        keep_difficult: bool = False,
        transforms: Optional[Callable] = None,
    ):
        ann_dir = os.path.join(root, "Annotations")
        if image_set is not None:
            with open(os.path.join(root, "ImageSets", "Main", f"{image_set}.txt")) as f:
                self.ids = [line.strip() for line in f if line.strip()]
        else:
            if not os.path.isdir(ann_dir):
                raise FileNotFoundError(f"VOCDetection: no Annotations folder under {root}")
            self.ids = sorted(n[:-4] for n in os.listdir(ann_dir) if n.endswith(".xml"))
        self.root, self.classes, self.transforms = root, list(classes), transforms
        self.categories = self.classes
        index = {c: i for i, c in enumerate(self.classes)}
        self.annotations = []
        for name in self.ids:
            tree = ET.parse(os.path.join(ann_dir, name + ".xml")).getroot()
            boxes, labels = [], []
            for obj in tree.iter("object"):
                cls = obj.findtext("name", "").strip()
                if cls not in index:
                    raise ValueError(f"VOCDetection: {name}.xml has an object of unknown class {cls!r}")
                if not keep_difficult and int(obj.findtext("difficult", "0") or 0):
                    continue
                bb = obj.find("bndbox")
                x1, y1, x2, y2 = (float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
                boxes.append([x1 - 1, y1 - 1, x2, y2])
                labels.append(index[cls])
            self.annotations.append((tree.findtext("filename") or name + ".jpg", boxes, labels))

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> Tuple[Tensor, Dict]:
        filename, boxes, labels = self.annotations[index]
        with Image.open(os.path.join(self.root, "JPEGImages", filename)) as im:
            image = torch.from_numpy(np.asarray(im.convert("RGB")).copy()).permute(2, 0, 1).float().div_(255)
        target = {
            "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.int64),
            "image_id": index,
        }
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target
