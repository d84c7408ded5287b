"""``DataSpec``: the data of a training run as settings, enough to rebuild its train and validation sets."""

import dataclasses
import os
from typing import Any, Dict, List, Optional

from focalops.errors import ConfigError

DATASETS = ("shapes", "coco", "voc")
_VAL_SEED_OFFSET = 1_000_003  # the shapes validation images: another seed than the training images


@dataclasses.dataclass
class DataSpec:
    """The data flags of ``focalops train`` as one record. Checkpoints store it (``to_dict``:
    plain values), so ``focalops eval CKPT`` and ``predict CKPT`` rebuild the same sets.

    Fields: ``dataset`` (``"shapes"``, ``"coco"`` or ``"voc"``); ``image_size`` (shapes: side of the
    generated images; coco/voc: shorter side after resizing) and ``max_size`` (cap on the longer
    side); ``flip`` (probability of a horizontal flip of a training image); ``classes`` (coco/voc:
    class names; None discovers them from the training annotations); shapes: ``num_classes``,
    ``max_objects``, ``data_seed``, ``train_images``, ``val_images``; coco/voc: ``data_root`` (image
    folder / VOC folder), ``ann_file`` (coco), ``val_root``, ``val_ann_file``; voc: ``train_split``
    and ``val_split`` (VOCdevkit image sets, default ``trainval`` and ``test``) and
    ``voc_one_based`` (the devkit's 1-based box coordinates; False for 0-based tools). Paths are
    made absolute.

    Raises:
        ConfigError: settings out of range or that do not apply to ``dataset`` (the message names
            the ``focalops train`` flag).
    """

    dataset: str = "shapes"
    image_size: int = 192
    max_size: Optional[int] = None
    flip: float = 0.5
    classes: Optional[List[str]] = None
    num_classes: int = 3
    max_objects: int = 5
    data_seed: int = 0
    train_images: int = 2000
    val_images: int = 200
    data_root: Optional[str] = None
    ann_file: Optional[str] = None
    val_root: Optional[str] = None
    val_ann_file: Optional[str] = None
    train_split: Optional[str] = None
    val_split: Optional[str] = None
    voc_one_based: bool = True

    def __post_init__(self):
        if self.dataset not in DATASETS:
            raise ConfigError(f"--dataset must be one of {', '.join(DATASETS)}, got {self.dataset!r}")
        if self.image_size < 1 or (self.max_size is not None and self.max_size < self.image_size):
            raise ConfigError(f"need 1 <= --image-size <= --max-size, got {self.image_size}, {self.max_size}")
        if not 0 <= self.flip <= 1:
            raise ConfigError(f"--flip must be a probability in [0, 1], got {self.flip}")
        for name in ("data_root", "ann_file", "val_root", "val_ann_file"):
            if getattr(self, name) is not None:
                setattr(self, name, os.path.abspath(getattr(self, name)))
        if self.dataset == "shapes":
            self._check_shapes()
        else:
            self._check_files()

    def _check_shapes(self) -> None:
        given = [f for f in ("classes", "data_root", "ann_file", "val_root", "val_ann_file") if getattr(self, f)]
        if given:
            raise ConfigError(f"--{given[0].replace('_', '-')} applies to --dataset coco or voc, not shapes")
        for name, low in (("max_objects", 1), ("train_images", 1), ("val_images", 1)):
            if getattr(self, name) < low:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= {low}, got {getattr(self, name)}")
        from focalops.data.shapes import CLASSES

        if not 1 <= self.num_classes <= len(CLASSES):
            raise ConfigError(f"--num-classes must be in [1, {len(CLASSES)}] for shapes, got {self.num_classes}")

    def _check_files(self) -> None:
        if self.data_root is None:
            raise ConfigError(f"--data-root is required for --dataset {self.dataset}")
        if self.dataset == "coco":
            if self.ann_file is None:
                raise ConfigError("--ann-file is required for --dataset coco")
            if self.train_split or self.val_split:
                raise ConfigError("--train-split/--val-split apply to --dataset voc (VOCdevkit image sets)")
        elif self.ann_file or self.val_ann_file:
            raise ConfigError("--ann-file/--val-ann-file apply to --dataset coco")
        if self.classes is not None:
            if not self.classes or not all(isinstance(c, str) and c.strip() for c in self.classes):
                raise ConfigError(f"--classes needs non-empty names separated by commas, got {self.classes}")
            if len(set(self.classes)) != len(self.classes):
                raise ConfigError(f"--classes names a class twice: {self.classes}")

    @classmethod
    def from_dict(cls, values: Dict[str, Any]) -> "DataSpec":
        """The spec that ``to_dict`` stored (keys this version does not know are left out)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})

    def to_dict(self) -> Dict[str, Any]:
        """Plain values (checkpoints hold only tensors and plain types)."""
        return dataclasses.asdict(self)

    def replace(self, **changes) -> "DataSpec":
        """A copy with ``changes`` applied (and checked)."""
        return dataclasses.replace(self, **changes)

    def val_is_train(self) -> bool:
        """True when the validation images are the training images (coco without a validation
        JSON, a flat VOC folder without ``val_root``)."""
        if self.dataset == "coco":
            return self.val_ann_file in (None, self.ann_file) and self.val_root in (None, self.data_root)
        if self.dataset == "voc":
            root = self.val_root or self.data_root
            return root == self.data_root and _voc_split(root, self.val_split, "test") == _voc_split(
                root, self.train_split, "trainval"
            )
        return False

    def build(self, split: str, classes: Optional[List[str]] = None, progress: bool = False, raw: bool = False):
        """The ``"train"`` or ``"val"`` dataset, with its transforms (resize; flips for training),
        or none with ``raw`` (images at their own size).

        ``classes`` (e.g. the training set's or a checkpoint's) fixes the label order; default
        ``self.classes``, else discovered from the annotations.

        Raises:
            DataError: a missing or malformed file (see the dataset classes).
            ConfigError: ``classes`` differ from the shapes set's.
        """
        from focalops.data import CocoDetection, Compose, RandomHorizontalFlip, Resize, ShapesDataset, VOCDetection

        if split not in ("train", "val"):
            raise ValueError(f"DataSpec.build: split must be 'train' or 'val', got {split!r}")
        train = split == "train"
        steps = [] if self.dataset == "shapes" else [Resize(self.image_size, self.max_size)]
        if train and self.flip > 0:
            steps.append(RandomHorizontalFlip(self.flip))
        transforms = Compose(steps) if steps and not raw else None
        classes = classes if classes is not None else self.classes
        if self.dataset == "shapes":
            dataset = ShapesDataset(
                self.train_images if train else self.val_images,
                image_size=self.image_size,
                num_classes=self.num_classes,
                max_objects=self.max_objects,
                seed=self.data_seed if train else self.data_seed + _VAL_SEED_OFFSET,
                transforms=transforms,
            )
            if classes is not None and list(classes) != dataset.classes:
                raise ConfigError(f"the shapes classes {dataset.classes} differ from the model's {list(classes)}")
            return dataset
        if self.dataset == "coco":
            root = self.data_root if train else (self.val_root or self.data_root)
            ann = self.ann_file if train else (self.val_ann_file or self.ann_file)
            return CocoDetection(root, ann, classes, transforms=transforms, progress=progress)
        root = self.data_root if train else (self.val_root or self.data_root)
        image_set = _voc_split(root, self.train_split if train else self.val_split, "trainval" if train else "test")
        return VOCDetection(
            root, image_set, classes, one_based=self.voc_one_based, transforms=transforms, progress=progress
        )


def _voc_split(root: str, split: Optional[str], devkit_default: str) -> Optional[str]:
    """The image set to read: ``split`` if given, else ``devkit_default`` in the VOCdevkit layout
    and None (every XML) in a flat folder."""
    if split is not None:
        return split
    return devkit_default if os.path.isdir(os.path.join(root, "Annotations")) else None
