"""COCO-format detection JSON loader (images from a folder)."""

import json
import os
from collections import defaultdict
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from PIL import Image
from torch import Tensor


class CocoDetection(torch.utils.data.Dataset):
    """Detection set from a COCO annotation file.

    Boxes ``[x, y, w, h]`` become ``(x1, y1, x2, y2)``; category ids map to contiguous labels
    ``0..K-1`` in increasing id order (``categories[label]`` is the name,
    ``label_to_category_id[label]`` the original id). Crowd annotations and boxes with no area
    are left out of the targets. Images without annotations are kept (all background).

    Args:
        image_dir (str): folder holding the images (``file_name`` is relative to it).
        ann_file (str): the COCO JSON file.
        transforms (callable, optional): ``(image, target) -> (image, target)``.

    Returns (``dataset[i]``): ``(image Tensor[3, H, W] float32 in [0, 1], {"boxes": Tensor[G, 4],
    "labels": Tensor[G] int64, "image_id": int})``.

    Raises:
        ValueError: the file lacks ``images`` / ``annotations`` / ``categories``, or an annotation
            refers to an unknown category.
    """

    def __init__(self, image_dir: str, ann_file: str, transforms: Optional[Callable] = None):
        with open(ann_file) as f:
            data = json.load(f)
        for key in ("images", "annotations", "categories"):
            if key not in data:
                raise ValueError(f"CocoDetection: {ann_file} has no {key!r} list")
        cats = sorted(data["categories"], key=lambda c: c["id"])
        self.label_to_category_id = [c["id"] for c in cats]
        self.categories = [c["name"] for c in cats]
        cat_to_label = {cid: i for i, cid in enumerate(self.label_to_category_id)}
        self.images = sorted(data["images"], key=lambda im: im["id"])
        per_image: Dict[int, List[Tuple[List[float], int]]] = defaultdict(list)
        for ann in data["annotations"]:
            if ann["category_id"] not in cat_to_label:
                raise ValueError(
                    f"CocoDetection: annotation {ann.get('id')} has unknown category_id {ann['category_id']}"
                )
            x, y, w, h = ann["bbox"]
            if ann.get("iscrowd", 0) or w <= 0 or h <= 0:
                continue
            per_image[ann["image_id"]].append(([x, y, x + w, y + h], cat_to_label[ann["category_id"]]))
        self.annotations = [per_image[im["id"]] for im in self.images]
        self.image_dir = image_dir
        self.transforms = transforms

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Tuple[Tensor, Dict]:
        info = self.images[index]
        with Image.open(os.path.join(self.image_dir, info["file_name"])) as im:
            image = torch.from_numpy(np.asarray(im.convert("RGB")).copy()).permute(2, 0, 1).float().div_(255)
        anns = self.annotations[index]
        target = {
            "boxes": torch.tensor([a[0] for a in anns], dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor([a[1] for a in anns], dtype=torch.int64),
            "image_id": info["id"],
        }
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target
