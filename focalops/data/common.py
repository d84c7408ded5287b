"""What the file-backed datasets share: image reading, the up-front checks and the box rules.

The datasets check everything they can before training starts: every annotation parses, every
image file opens (its header: format and size), every box is finite with positive width and
height and overlaps its image, every label is a known class. A failure is a
:class:`~focalops.errors.DataError` whose one-line message names the file and the object.
"""

import math
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, List, Optional, Sequence, Tuple, TypeVar

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from tqdm import tqdm

from focalops.errors import DataError, one_line

# What a folder of images is taken to hold (VOC image look-up by stem, `focalops predict DIR`).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp", ".gif")

T = TypeVar("T")
R = TypeVar("R")


def image_size(path: str) -> Tuple[int, int]:
    """``(width, height)`` from the image header (nothing is decoded).

    Raises:
        DataError: the file is missing or is not an image PIL can open.
    """
    try:
        with Image.open(path) as im:
            return im.size
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found") from None
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: not a readable image ({one_line(exc)})") from None


def read_image(path: str) -> Tensor:
    """The image as ``Tensor[3, H, W]`` float32 in [0, 1] (RGB).

    Raises:
        DataError: the file is missing or cannot be decoded (truncated, not an image).
    """
    try:
        with Image.open(path) as im:
            array = np.asarray(im.convert("RGB"))
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found") from None
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: cannot decode the image ({one_line(exc)})") from None
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255)


def checked_box(box: Sequence[float], width: int, height: int, where: str) -> List[float]:
    """``box`` (x1, y1, x2, y2) clipped to the ``width x height`` image.

    Raises:
        DataError: a coordinate is not finite, ``x2 <= x1`` or ``y2 <= y1``, or the box lies
            outside the image; the message starts with ``where``.
    """
    if not all(math.isfinite(v) for v in box):
        raise DataError(f"{where}: box {_fmt(box)} has a coordinate that is not a finite number")
    x1, y1, x2, y2 = box
    if x2 <= x1 or y2 <= y1:
        raise DataError(f"{where}: box {_fmt(box)} has no area (needs x2 > x1 and y2 > y1)")
    clipped = [min(max(x1, 0.0), width), min(max(y1, 0.0), height), min(max(x2, 0.0), width), min(max(y2, 0.0), height)]
    if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
        raise DataError(f"{where}: box {_fmt(box)} lies outside the {width} x {height} image")
    return clipped


def _fmt(box: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:g}" for v in box) + ")"


def parallel_map(fn: Callable[[T], R], items: Sequence[T], desc: str, progress: bool) -> List[R]:
    """``[fn(x) for x in items]`` on a few threads (file I/O), in order, with a progress bar; the
    first exception (in item order) is raised."""
    pool = ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) + 4))
    try:
        results: Iterable[R] = pool.map(fn, items)
        return list(tqdm(results, total=len(items), desc=desc, disable=not progress, leave=False))
    finally:
        pool.shutdown(cancel_futures=True)  # after a failure, do not wait for the remaining files


def as_targets(boxes: Optional[np.ndarray], labels: Optional[np.ndarray], image_id: int) -> dict:
    """The target dict of one image from ``boxes [G, 4]`` float32 and ``labels [G]`` int64."""
    return {
        "boxes": torch.from_numpy(np.asarray(boxes, dtype=np.float32).reshape(-1, 4).copy()),
        "labels": torch.from_numpy(np.asarray(labels, dtype=np.int64).reshape(-1).copy()),
        "image_id": image_id,
    }
