"""Detection transforms on ``(image Tensor[3, H, W], target dict)`` pairs, and the batch collate."""

from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

Sample = Tuple[Tensor, Dict]


class Compose:
    """Applies ``transforms`` in order."""

    def __init__(self, transforms: Sequence[Callable[[Tensor, Dict], Sample]]):
        self.transforms = list(transforms)

    def __call__(self, image: Tensor, target: Dict) -> Sample:
        for t in self.transforms:
            image, target = t(image, target)
        return image, target


class Resize:
    """Scales the image so its shorter side is ``min_size`` unless the longer side would then
    exceed ``max_size`` (then the longer side is ``max_size``), as torchvision's detection
    transform; boxes are scaled with it (bilinear, antialiased)."""

    def __init__(self, min_size: int, max_size: Optional[int] = None):
        if min_size < 1 or (max_size is not None and max_size < min_size):
            raise ValueError(f"Resize: need 1 <= min_size <= max_size, got {min_size}, {max_size}")
        self.min_size, self.max_size = min_size, max_size

    def __call__(self, image: Tensor, target: Dict) -> Sample:
        h, w = image.shape[-2:]
        scale = self.min_size / min(h, w)
        if self.max_size is not None and max(h, w) * scale > self.max_size:
            scale = self.max_size / max(h, w)
        new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
        if (new_h, new_w) == (h, w):
            return image, target
        image = F.interpolate(image[None], size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=True)[0]
        target = dict(target)
        ratio = torch.tensor([new_w / w, new_h / h, new_w / w, new_h / h], dtype=target["boxes"].dtype)
        target["boxes"] = target["boxes"] * ratio
        return image.clamp_(0, 1), target


class RandomHorizontalFlip:
    """Flips image and boxes left-right with probability ``p`` (torch's global RNG)."""

    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, image: Tensor, target: Dict) -> Sample:
        if torch.rand(()) >= self.p:
            return image, target
        width = image.shape[-1]
        target = dict(target)
        boxes = target["boxes"]
        target["boxes"] = torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1)
        return image.flip(-1), target


def collate(batch: List[Sample]) -> Tuple[List[Tensor], List[Dict]]:
    """DataLoader ``collate_fn``: images of any size stay a list (the model pads them)."""
    images, targets = zip(*batch)
    return list(images), list(targets)
