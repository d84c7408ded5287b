"""COCO-format detection JSON loader (images from a folder)."""

import json
import math
import os
from collections import defaultdict
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from focalops.data.common import as_targets, checked_box, image_size, parallel_map, read_image
from focalops.errors import DataError


class CocoDetection(torch.utils.data.Dataset):
    """Detection set from a COCO annotation file.

    Boxes ``[x, y, w, h]`` become ``(x1, y1, x2, y2)``, clipped to the image. Without ``classes``,
    labels are the categories in increasing id order (``classes[label]`` is the name,
    ``label_to_category_id[label]`` the original id); with ``classes``, label ``i`` is the
    category named ``classes[i]``. Crowd annotations and boxes of zero width or height are left
    out of the targets. Images without annotations are kept (all background).

    Everything is checked when the dataset is built: the JSON parses and has ``images``,
    ``annotations`` and ``categories`` lists; every category has an id and a unique name; every
    image an id and a ``file_name`` that opens as an image (header only), of the ``width`` and
    ``height`` the JSON gives; every annotation a known ``image_id`` and ``category_id`` and a
    ``bbox`` of four finite numbers with ``w, h >= 0`` overlapping its image.

    Args:
        image_dir (str): folder holding the images (``file_name`` is relative to it).
        ann_file (str): the COCO JSON file.
        classes (Sequence[str], optional): the category names to use, in label order. Default:
            every category, in id order.
        transforms (callable, optional): ``(image, target) -> (image, target)``.
        progress (bool): a progress bar while checking the images. Default False.

    Returns (``dataset[i]``): ``(image Tensor[3, H, W] float32 in [0, 1], {"boxes": Tensor[G, 4],
    "labels": Tensor[G] int64, "image_id": int})``.

    Raises:
        DataError: naming the file and the entry: the JSON is missing, truncated or lacks a list;
            a category, image or annotation is malformed; an annotation's category is not among
            ``classes``; an image file is missing or not an image.
    """

    def __init__(
        self,
        image_dir: str,
        ann_file: str,
        classes: Optional[Sequence[str]] = None,
        transforms: Optional[Callable] = None,
        progress: bool = False,
    ):
        self.image_dir, self.ann_file, self.transforms = image_dir, ann_file, transforms
        data = _load_json(ann_file)
        categories = _categories(ann_file, data["categories"])
        self.classes = [name for _, name in categories] if classes is None else list(classes)
        by_name = {name: cid for cid, name in categories}
        self.label_to_category_id = [by_name.get(name) for name in self.classes]
        cat_to_label = {cid: i for i, cid in enumerate(self.label_to_category_id) if cid is not None}
        cat_names = dict(categories)
        self.images = _images(ann_file, data["images"])
        position = {im["id"]: i for i, im in enumerate(self.images)}
        paths = [os.path.join(image_dir, im["file_name"]) for im in self.images]
        sizes = parallel_map(image_size, paths, "open images", progress)
        for im, path, (width, height) in zip(self.images, paths, sizes):
            if (im.get("width"), im.get("height")) not in ((None, None), (width, height)):
                raise DataError(
                    f"{ann_file}: image {im['id']} ({im['file_name']}) is {im.get('width')} x {im.get('height')} "
                    f"in the JSON but {path} is {width} x {height}"
                )
        per_image: Dict[int, List[Tuple[List[float], int]]] = defaultdict(list)
        for k, ann in enumerate(data["annotations"]):
            if not isinstance(ann, dict):
                raise DataError(f"{ann_file}: annotations[{k}] is not an object")
            where = f"{ann_file}: annotation {ann.get('id', f'[{k}]')}"
            if ann.get("image_id") not in position:
                raise DataError(f"{where} has unknown image_id {ann.get('image_id')!r}")
            if ann.get("category_id") not in cat_names:
                raise DataError(f"{where} has unknown category_id {ann.get('category_id')!r}")
            box = ann.get("bbox")
            if not (
                isinstance(box, list)
                and len(box) == 4
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in box)
            ):
                raise DataError(f"{where}: bbox must be 4 finite numbers [x, y, w, h], got {box!r}")
            x, y, w, h = box
            if w < 0 or h < 0:
                raise DataError(f"{where}: bbox {box} has a negative width or height")
            if ann.get("iscrowd", 0) or w == 0 or h == 0:
                continue
            name = cat_names[ann["category_id"]]
            if ann["category_id"] not in cat_to_label:
                raise DataError(f"{where}: category {name!r} is not one of the classes {self.classes}")
            i = position[ann["image_id"]]
            image = self.images[i]
            width, height = sizes[i]
            clipped = checked_box((x, y, x + w, y + h), width, height, f"{where} (image {image['file_name']})")
            per_image[image["id"]].append((clipped, cat_to_label[ann["category_id"]]))
        self.paths = paths
        self.annotations = [
            (
                np.asarray([a[0] for a in per_image[im["id"]]], np.float32),
                np.asarray([a[1] for a in per_image[im["id"]]], np.int64),
            )
            for im in self.images
        ]

    def describe(self) -> str:
        """Where the images come from, in words (for logs)."""
        return f"COCO {os.path.abspath(self.ann_file)} (images in {os.path.abspath(self.image_dir)})"

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Tuple[Tensor, Dict]:
        boxes, labels = self.annotations[index]
        image, target = read_image(self.paths[index]), as_targets(boxes, labels, self.images[index]["id"])
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target


def _load_json(ann_file: str) -> Dict:
    try:
        with open(ann_file, "rb") as f:
            data = json.loads(f.read())
    except FileNotFoundError:
        raise DataError(f"{ann_file}: annotation file not found") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{ann_file}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{ann_file}: not valid JSON (not UTF-8 text: {exc.reason} at byte {exc.start})") from None
    if not isinstance(data, dict):
        raise DataError(f"{ann_file}: expected a JSON object with images, annotations and categories")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DataError(f"{ann_file}: has no {key!r} list")
    return data


def _categories(ann_file: str, entries: List) -> List[Tuple[int, str]]:
    """``(id, name)`` in increasing id order; ids and names unique."""
    out: Dict[int, str] = {}
    for k, cat in enumerate(entries):
        if not isinstance(cat, dict) or not isinstance(cat.get("id"), int) or not isinstance(cat.get("name"), str):
            raise DataError(f"{ann_file}: categories[{k}] needs an integer 'id' and a string 'name', got {cat!r}")
        if cat["id"] in out:
            raise DataError(f"{ann_file}: category id {cat['id']} appears twice")
        if cat["name"] in out.values():
            raise DataError(f"{ann_file}: category name {cat['name']!r} appears twice")
        out[cat["id"]] = cat["name"]
    return sorted(out.items())


def _images(ann_file: str, entries: List) -> List[Dict]:
    """The image entries sorted by id; ids unique, each with a file name."""
    seen = set()
    for k, im in enumerate(entries):
        if not isinstance(im, dict) or not isinstance(im.get("id"), int) or not isinstance(im.get("file_name"), str):
            raise DataError(f"{ann_file}: images[{k}] needs an integer 'id' and a string 'file_name', got {im!r}")
        if im["id"] in seen:
            raise DataError(f"{ann_file}: image id {im['id']} appears twice")
        seen.add(im["id"])
    return sorted(entries, key=lambda im: im["id"])
