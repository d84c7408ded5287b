"""Pascal VOC XML: the VOCdevkit layout or a flat folder of XML files beside their images."""

import os
import warnings
import xml.etree.ElementTree as ET
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from focalops.data.common import IMAGE_EXTENSIONS, as_targets, checked_box, image_size, parallel_map, read_image
from focalops.errors import DataError

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
    "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip

_COORDS = ("xmin", "ymin", "xmax", "ymax")


class _Object:
    """One ``<object>`` as parsed: class name, box as written, difficult flag, and where it is."""

    __slots__ = ("name", "box", "difficult", "where")

    def __init__(self, name: str, box: List[float], difficult: bool, where: str):
        self.name, self.box, self.difficult, self.where = name, box, difficult, where


class VOCDetection(torch.utils.data.Dataset):
    """Detection set from Pascal VOC XML annotations, in either layout:

    - **VOCdevkit** (``root`` holds ``Annotations/``, ``JPEGImages/``, ``ImageSets/Main/``): the
      image ids come from ``ImageSets/Main/<image_set>.txt`` when ``image_set`` is given, else from
      every ``Annotations/*.xml``.
    - **flat folder** (LabelImg, DeepForest): ``root`` holds the ``*.xml`` files beside their
      images; ``image_set`` must be None.

    Each XML's image is ``<filename>`` (in ``JPEGImages/`` or beside the XML) when that file
    exists, else the one image of any extension (``.jpg .jpeg .png .tif .tiff .bmp .webp .gif``)
    with the XML's stem.

    Boxes: the Pascal devkit writes 1-based inclusive pixel indices, which become 0-based
    ``(xmin - 1, ymin - 1, xmax, ymax)`` (detectron2's convention; ``one_based=True``, the
    default). Tools that write 0-based pixel coordinates (LabelImg, DeepForest) need
    ``one_based=False`` (boxes taken as written); with ``one_based=True`` and boxes at ``xmin`` or
    ``ymin`` 0 (impossible in 1-based data), a warning says so. Boxes are clipped to the image.

    Everything is checked when the dataset is built: every XML parses, every object has a name,
    a known class and a ``<bndbox>`` with four finite numbers, positive width and height and a
    part inside the image, and every image file opens (header only; a file that fails to decode
    later raises :class:`~focalops.errors.DataError` naming it).

    Args:
        root (str): the VOCdevkit year folder (e.g. ``VOCdevkit/VOC2007``) or a flat folder.
        image_set (str, optional): VOCdevkit only: ``"trainval"``, ``"test"``, ...
        classes (Sequence[str], optional): class names, label ``i`` is ``classes[i]``. Default:
            discovered, the sorted names found in the annotations.
        one_based (bool): the devkit's 1-based coordinates (see above). Default True.
        keep_difficult (bool): keep objects marked difficult. Default False.
        transforms (callable, optional): ``(image, target) -> (image, target)``.
        progress (bool): a progress bar while checking. Default False.

    Returns (``dataset[i]``): ``(image Tensor[3, H, W] float32 in [0, 1], {"boxes": Tensor[G, 4],
    "labels": Tensor[G] int64, "image_id": int})`` (``image_id`` is the index).

    Raises:
        DataError: a missing folder, split file or image; an XML that does not parse; an object
            without a name, an unknown class (with ``classes`` given), a missing or malformed
            ``<bndbox>``, a box with no area or outside its image; an image that does not open.
    """

    def __init__(
        self,
        root: str,
        image_set: Optional[str] = None,
        classes: Optional[Sequence[str]] = None,
        *,
        one_based: bool = True,
        keep_difficult: bool = False,
        transforms: Optional[Callable] = None,
        progress: bool = False,
    ):
        self.root, self.image_set, self.one_based = root, image_set, one_based
        self.transforms = transforms
        xml_paths, self.image_dir = _annotation_files(root, image_set)
        available = _images_by_stem(self.image_dir)
        parsed = parallel_map(_parse, xml_paths, f"read {os.path.basename(root.rstrip(os.sep)) or root}", progress)
        found = sorted({obj.name for _, objects in parsed for obj in objects})
        self.classes = list(found if classes is None else classes)
        index = {c: i for i, c in enumerate(self.classes)}
        # One image per XML, found and opened (header: format and size) before any training.
        self.image_paths = [
            _image_for(xml, filename, self.image_dir, available) for xml, (filename, _) in zip(xml_paths, parsed)
        ]
        sizes = parallel_map(image_size, self.image_paths, "open images", progress)
        self.annotations: List[Tuple[np.ndarray, np.ndarray]] = []
        at_zero = 0
        for (_, objects), (width, height) in zip(parsed, sizes):
            boxes, labels = [], []
            for obj in objects:
                if obj.name not in index:
                    raise DataError(f"{obj.where}: class {obj.name!r} is not one of the classes {self.classes}")
                if obj.difficult and not keep_difficult:
                    continue
                x1, y1, x2, y2 = obj.box
                if x1 == 0 or y1 == 0:
                    at_zero += 1
                if one_based:
                    x1, y1 = x1 - 1, y1 - 1
                boxes.append(checked_box((x1, y1, x2, y2), width, height, obj.where))
                labels.append(index[obj.name])
            self.annotations.append((np.asarray(boxes, np.float32), np.asarray(labels, np.int64)))
        if one_based and at_zero:
            warnings.warn(
                f"{root}: {at_zero} box(es) have xmin or ymin 0, which 1-based (Pascal devkit) coordinates "
                "never have: if these annotations are 0-based (LabelImg, DeepForest), pass one_based=False "
                "(--no-voc-one-based)",
                stacklevel=2,
            )

    def describe(self) -> str:
        """Where the images come from, in words (for logs)."""
        if self.image_dir == self.root:
            return f"Pascal VOC flat folder {os.path.abspath(self.root)}"
        split = f" split {self.image_set!r}" if self.image_set else ""
        return f"Pascal VOC folder {os.path.abspath(self.root)}{split}"

    def __len__(self) -> int:
        return len(self.image_paths)

    def __getitem__(self, index: int) -> Tuple[Tensor, Dict]:
        boxes, labels = self.annotations[index]
        image, target = read_image(self.image_paths[index]), as_targets(boxes, labels, index)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target


def _annotation_files(root: str, image_set: Optional[str]) -> Tuple[List[str], str]:
    """The XML files to read and the folder of their images, for either layout."""
    if not os.path.isdir(root):
        raise DataError(f"{root}: folder not found")
    ann_dir = os.path.join(root, "Annotations")
    if os.path.isdir(ann_dir):  # VOCdevkit
        image_dir = os.path.join(root, "JPEGImages")
        if image_set is None:
            names = sorted(n[:-4] for n in os.listdir(ann_dir) if n.endswith(".xml"))
        else:
            split_file = os.path.join(root, "ImageSets", "Main", f"{image_set}.txt")
            if not os.path.isfile(split_file):
                main = os.path.dirname(split_file)
                listed = os.listdir(main) if os.path.isdir(main) else []
                have = sorted(n[:-4] for n in listed if n.endswith(".txt") and "_" not in n)  # not <class>_<split>
                raise DataError(
                    f"{split_file}: split file not found (splits here: {', '.join(have) or 'none'}; "
                    "without a split every Annotations/*.xml is used)"
                )
            with open(split_file) as f:
                names = [line.split()[0] for line in f if line.strip()]
        if not names:
            raise DataError(f"{ann_dir}: no annotations" + (f" in split {image_set!r}" if image_set else ""))
        return [os.path.join(ann_dir, n + ".xml") for n in names], image_dir
    xml_paths = sorted(os.path.join(root, n) for n in os.listdir(root) if n.lower().endswith(".xml"))
    if not xml_paths:
        years = sorted(n for n in os.listdir(root) if os.path.isdir(os.path.join(root, n, "Annotations")))
        hint = f"; it holds {', '.join(years)}: pass one of them" if years else ""
        raise DataError(
            f"{root}: neither a VOCdevkit folder (Annotations/, JPEGImages/) nor a flat folder of .xml files{hint}"
        )
    if image_set is not None:
        raise DataError(
            f"{root}: a flat folder of XML files has no image sets (split {image_set!r} asked for): "
            "splits apply to the VOCdevkit layout (ImageSets/Main/<split>.txt)"
        )
    return xml_paths, root


def _images_by_stem(folder: str) -> Dict[str, List[str]]:
    if not os.path.isdir(folder):
        raise DataError(f"{folder}: image folder not found")
    found: Dict[str, List[str]] = {}
    for name in sorted(os.listdir(folder)):
        stem, ext = os.path.splitext(name)
        if ext.lower() in IMAGE_EXTENSIONS:
            found.setdefault(stem, []).append(name)
    return found


def _image_for(xml: str, filename: str, image_dir: str, available: Dict[str, List[str]]) -> str:
    """``<filename>`` when it exists, else the one image with the XML's stem."""
    if filename and os.path.isfile(os.path.join(image_dir, filename)):
        return os.path.join(image_dir, filename)
    stem = os.path.splitext(os.path.basename(xml))[0]
    candidates = available.get(stem, [])
    if len(candidates) == 1:
        return os.path.join(image_dir, candidates[0])
    named = f"<filename> {filename!r} is not in {image_dir}" if filename else "no <filename>"
    if candidates:
        raise DataError(f"{xml}: {named}, and several images have the stem {stem!r}: {', '.join(candidates)}")
    raise DataError(f"{xml}: {named}, and no image named {stem}.* ({', '.join(IMAGE_EXTENSIONS)}) is there")


def _parse(xml: str) -> Tuple[str, List[_Object]]:
    """``(<filename>, objects)`` of one annotation file; DataError naming the file and object."""
    try:
        tree = ET.parse(xml).getroot()
    except FileNotFoundError:
        raise DataError(f"{xml}: annotation file not found") from None
    except ET.ParseError as exc:
        raise DataError(f"{xml}: not valid XML ({exc})") from None
    if tree.tag != "annotation":
        raise DataError(f"{xml}: not a Pascal VOC annotation (root element <{tree.tag}>, expected <annotation>)")
    objects = []
    for k, obj in enumerate(tree.iter("object"), 1):
        name = (obj.findtext("name") or "").strip()
        where = f"{xml}: object {k}" + (f" ({name!r})" if name else "")
        if not name:
            raise DataError(f"{where} has no <name>")
        bndbox = obj.find("bndbox")
        if bndbox is None:
            raise DataError(f"{where} has no <bndbox>")
        box = []
        for key in _COORDS:
            text = bndbox.findtext(key)
            if text is None:
                raise DataError(f"{where}: <bndbox> has no <{key}>")
            try:
                box.append(float(text))
            except ValueError:
                raise DataError(f"{where}: <{key}> is {text.strip()!r}, not a number") from None
        difficult = (obj.findtext("difficult") or "0").strip()
        if difficult not in ("0", "1"):
            raise DataError(f"{where}: <difficult> is {difficult!r}, expected 0 or 1")
        objects.append(_Object(name, box, difficult == "1", where))
    return (tree.findtext("filename") or "").strip(), objects
