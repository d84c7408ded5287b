"""An embedded synthetic detection set: coloured shapes on textured, noisy backgrounds.

Generated on the fly (nothing to download), deterministic by ``(seed, index)``. Shapes of
several classes, random colours, sizes from small to large, drawn in order so later shapes
occlude earlier ones; each box is the visible extent of its shape, and shapes left mostly
hidden are dropped.
"""

import math
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor

CLASSES = ("rectangle", "ellipse", "triangle", "cross", "diamond", "ring")


def _polygon(kind: str, x: float, y: float, w: float, h: float, rng: np.random.Generator) -> List[Tuple[float, float]]:
    if kind == "triangle":
        apex = x + w * rng.uniform(0.2, 0.8)
        return [(apex, y), (x + w, y + h), (x, y + h)]
    if kind == "diamond":
        return [(x + w / 2, y), (x + w, y + h / 2), (x + w / 2, y + h), (x, y + h / 2)]
    # A plus sign whose arms are a third of the box.
    a, b = x + w / 3, x + 2 * w / 3
    c, d = y + h / 3, y + 2 * h / 3
    return [
        (a, y),
        (b, y),
        (b, c),
        (x + w, c),
        (x + w, d),
        (b, d),
        (b, y + h),
        (a, y + h),
        (a, d),
        (x, d),
        (x, c),
        (a, c),
    ]


def _draw_mask(
    kind: str, size: Tuple[int, int], box: Tuple[float, float, float, float], rng: np.random.Generator
) -> np.ndarray:
    w_img, h_img = size
    x, y, w, h = box
    mask = Image.new("L", (w_img, h_img), 0)
    draw = ImageDraw.Draw(mask)
    if kind == "rectangle":
        draw.rectangle([x, y, x + w, y + h], fill=255)
    elif kind == "ellipse":
        draw.ellipse([x, y, x + w, y + h], fill=255)
    elif kind == "ring":
        draw.ellipse([x, y, x + w, y + h], fill=255)
        t = 0.3
        draw.ellipse([x + t * w, y + t * h, x + (1 - t) * w, y + (1 - t) * h], fill=0)
    else:
        draw.polygon(_polygon(kind, x, y, w, h, rng), fill=255)
    return np.asarray(mask) > 127


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A colour gradient, low-frequency blotches, a few stripes and pixel noise."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    c0, c1 = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
    angle = rng.uniform(0, 2 * math.pi)
    t = ((xx * math.cos(angle) + yy * math.sin(angle)) / max(h, w) + 1) / 2
    img = c0 * (1 - t[..., None]) + c1 * t[..., None]
    coarse = rng.uniform(-0.25, 0.25, (max(2, h // 24), max(2, w // 24), 3)).astype(np.float32)
    blotch = np.asarray(Image.fromarray(((coarse + 0.25) * 510).astype(np.uint8)).resize((w, h), Image.BILINEAR))
    img = img + blotch.astype(np.float32) / 510 - 0.25
    freq, phase = rng.uniform(0.05, 0.3), rng.uniform(0, 2 * math.pi)
    img = img + rng.uniform(0, 0.12) * np.sin(freq * (xx + yy * rng.uniform(-1, 1)) + phase)[..., None]
    img = img + rng.normal(0, rng.uniform(0.02, 0.08), (h, w, 3))
    return img.astype(np.float32)


class ShapesDataset(torch.utils.data.Dataset):
    """Synthetic shapes detection set (the CLI default; works offline).

    Args:
        num_images (int): length of the dataset.
        image_size (int or (height, width)): image size in pixels. Default 192.
        num_classes (int): how many shape classes to use, from ``CLASSES`` in order
            (rectangle, ellipse, triangle, cross, diamond, ring). Default 3.
        max_objects (int): at most this many shapes per image (at least one). Default 5.
        min_size, max_size (float): object size range as a fraction of the shorter image
            side, sampled log-uniformly. Default 0.12, 0.6.
        seed (int): base seed; image ``i`` depends only on ``(seed, i)``. Use different seeds
            for the training and validation splits. Default 0.
        transforms (callable, optional): ``(image, target) -> (image, target)``.

    Returns (``dataset[i]``):
        ``(image Tensor[3, H, W] float32 in [0, 1], {"boxes": Tensor[G, 4] float32 (x1, y1, x2, y2),
        "labels": Tensor[G] int64, "image_id": int})``.
    """

    def __init__(
        self,
        num_images: int,
        image_size=192,
        num_classes: int = 3,
        max_objects: int = 5,
        min_size: float = 0.12,
        max_size: float = 0.6,
        seed: int = 0,
        transforms: Optional[Callable] = None,
    ):
        if not 1 <= num_classes <= len(CLASSES):
            raise ValueError(f"ShapesDataset: num_classes must be in [1, {len(CLASSES)}], got {num_classes}")
        if not 0 < min_size <= max_size <= 1:
            raise ValueError(f"ShapesDataset: need 0 < min_size <= max_size <= 1, got {min_size}, {max_size}")
        self.num_images = num_images
        self.image_size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        self.classes = list(CLASSES[:num_classes])
        self.max_objects, self.min_size, self.max_size = max_objects, min_size, max_size
        self.seed = seed
        self.transforms = transforms

    def describe(self) -> str:
        """What the images are, in words (for logs)."""
        h, w = self.image_size
        return f"the synthetic shapes set ({w} x {h} px, seed {self.seed})"

    def __len__(self) -> int:
        return self.num_images

    def generate(self, index: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Image ``index`` as (uint8 [H, W, 3], boxes float32 [G, 4], labels int64 [G])."""
        rng = np.random.default_rng([self.seed, index])
        h, w = self.image_size
        img = _background(rng, h, w)
        owner = np.full((h, w), -1, dtype=np.int64)
        n = int(rng.integers(1, self.max_objects + 1))
        labels = rng.integers(0, len(self.classes), n)
        full_area = np.zeros(n)
        side = min(h, w)
        for i in range(n):
            size = side * math.exp(rng.uniform(math.log(self.min_size), math.log(self.max_size)))
            aspect = math.exp(rng.uniform(-0.5, 0.5))
            bw, bh = min(size * aspect, w - 1), min(size / aspect, h - 1)
            x, y = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
            mask = _draw_mask(self.classes[labels[i]], (w, h), (x, y, bw, bh), rng)
            colour = rng.uniform(0, 1, 3)
            shade = rng.uniform(0.85, 1.15, (h, w, 1))  # some texture on the shape too
            img[mask] = (colour * shade)[mask]
            owner[mask] = i
            full_area[i] = mask.sum()
        img = np.clip(img + rng.normal(0, 0.02, img.shape), 0, 1)
        boxes, keep = np.zeros((n, 4), dtype=np.float32), np.zeros(n, dtype=bool)
        for i in range(n):
            ys, xs = np.nonzero(owner == i)
            # Drop shapes that later ones hide for the most part.
            if xs.size >= 0.4 * max(full_area[i], 1) and xs.size > 0:
                boxes[i] = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
                keep[i] = True
        return (img * 255).round().astype(np.uint8), boxes[keep], labels[keep].astype(np.int64)

    def __getitem__(self, index: int) -> Tuple[Tensor, Dict]:
        if not 0 <= index < self.num_images:
            raise IndexError(f"ShapesDataset: index {index} out of range [0, {self.num_images})")
        img, boxes, labels = self.generate(index)
        image = torch.from_numpy(img).permute(2, 0, 1).float().div_(255)
        target = {"boxes": torch.from_numpy(boxes), "labels": torch.from_numpy(labels), "image_id": index}
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target
