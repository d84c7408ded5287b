"""RetinaNet anchors for the pyramid levels P3-P7 (torchvision's AnchorGenerator convention)."""

import math
from collections import OrderedDict
from numbers import Real
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

__all__ = ["AnchorGenerator"]

_RETINANET_SCALES = (2.0**0, 2.0 ** (1.0 / 3), 2.0 ** (2.0 / 3))


class AnchorGenerator:
    """Anchors for every level of a feature pyramid, generated on the target device.

    Convention (torchvision's ``AnchorGenerator`` as built by ``retinanet_resnet50_fpn``):

    - level ``l`` has the anchor sizes ``int(sizes[l] * s)`` for each ``s`` in ``scales``
      (torchvision truncates them to ints) and the aspect ratios ``ratios`` (height / width);
    - the cell anchors of a level are ``round(stack([-ws, -hs, ws, hs]) / 2)`` with
      ``hs = sqrt(r) * size`` and ``ws = size / sqrt(r)``, ordered ratio-major, size-minor;
    - the anchors of a location are the cell anchors shifted by ``(x * stride, y * stride)``
      (the top-left corner of the cell, not its centre). Given the (padded) ``image_size``,
      the stride of a level is torchvision's ``image_size // feature_size`` per axis instead:
      the same for a multiple of the largest stride, e.g. 61 and not 64 for P6 of an 800 px
      input - the strides torchvision's detectors were trained with.

    Anchors are ordered level, then y, then x, then cell anchor: ``[A, 4]`` with
    ``A = sum_l H_l * W_l * len(ratios) * len(scales)``, as ``(x1, y1, x2, y2)``.
    Eager results are cached per (feature sizes, strides, device, dtype), the ``cache_size``
    most recently used (multi-scale training or varied eval sizes cannot grow it without
    bound); the cached tensor is returned as is, so treat it as read-only. Under tracing
    (``torch.export``, ``torch.compile``) the anchors are built with tensor ops from the
    (possibly symbolic) feature sizes instead, uncached.

    On CUDA the anchors are built on the device (``arange`` grids plus the few cell anchors,
    computed on the host and sent with one non-blocking copy from pinned memory): a new size
    never synchronises with the host, and a cached size launches no work at all.

    Args:
        sizes (sequence of float): base anchor size of each level. Default (32, 64, 128, 256, 512).
        strides (sequence of int): stride in pixels of each level, whole numbers (a float such
            as 8.0 is accepted). Default (8, 16, 32, 64, 128).
        ratios (sequence of float): aspect ratios (height / width). Default (0.5, 1.0, 2.0).
        scales (sequence of float): size multipliers. Default (2**0, 2**(1/3), 2**(2/3)).
        cache_size (int): feature-map sizes (per device and dtype) kept in the cache. Default 8.

    Raises:
        ValueError: ``sizes`` and ``strides`` differ in length, a size, stride, ratio or scale
            is not a positive finite number, a stride is not a whole number, or ``cache_size``
            is not an int >= 1.
    """

    def __init__(
        self,
        sizes: Sequence[float] = (32, 64, 128, 256, 512),
        strides: Sequence[int] = (8, 16, 32, 64, 128),
        ratios: Sequence[float] = (0.5, 1.0, 2.0),
        scales: Sequence[float] = _RETINANET_SCALES,
        cache_size: int = 8,
    ):
        if len(sizes) != len(strides):
            raise ValueError(
                f"AnchorGenerator: sizes and strides must have one entry per level, got {len(sizes)} and {len(strides)}"
            )
        for name, values in (("sizes", sizes), ("strides", strides), ("ratios", ratios), ("scales", scales)):
            if len(values) == 0 or not all(isinstance(v, Real) and v > 0 and math.isfinite(v) for v in values):
                raise ValueError(
                    f"AnchorGenerator: {name} must be a non-empty sequence of positive finite numbers, "
                    f"got {tuple(values)}"
                )
        if not all(float(s).is_integer() for s in strides):  # int() would truncate 0.5 to 0
            raise ValueError(f"AnchorGenerator: strides must be whole numbers of pixels, got {tuple(strides)}")
        if not isinstance(cache_size, int) or isinstance(cache_size, bool) or cache_size < 1:
            raise ValueError(f"AnchorGenerator: cache_size must be an int >= 1, got {cache_size!r}")
        self.sizes = tuple(sizes)
        self.strides = tuple(int(s) for s in strides)
        self.ratios = tuple(float(r) for r in ratios)
        self.scales = tuple(float(s) for s in scales)
        self.cache_size = cache_size
        self._cache = LruCache(cache_size)

    @property
    def num_anchors_per_location(self) -> int:
        return len(self.ratios) * len(self.scales)

    def cell_anchors(self, level: int, device=None, dtype: torch.dtype = torch.float32) -> Tensor:
        """The ``[len(ratios) * len(scales), 4]`` anchors of one location of ``level`` at the origin."""
        return _to_device(self._cell_anchors_host(level, dtype), device)

    def _cell_anchors_host(self, level: int, dtype: torch.dtype) -> Tensor:
        # On the host: a handful of values, which would otherwise each need a host-to-device copy.
        sizes = torch.tensor([int(self.sizes[level] * s) for s in self.scales], dtype=dtype)
        ratios = torch.tensor(self.ratios, dtype=dtype)
        h_ratios = torch.sqrt(ratios)
        w_ratios = 1 / h_ratios
        ws = (w_ratios[:, None] * sizes[None, :]).view(-1)
        hs = (h_ratios[:, None] * sizes[None, :]).view(-1)
        return (torch.stack([-ws, -hs, ws, hs], dim=1) / 2).round()

    def __call__(
        self,
        feature_sizes: Sequence[Tuple[int, int]],
        device=None,
        dtype: torch.dtype = torch.float32,
        image_size: Optional[Tuple[int, int]] = None,
    ) -> Tuple[Tensor, List[int]]:
        """Anchors for feature maps of the given ``(height, width)`` per level (of an input of
        ``image_size = (height, width)`` pixels, if given: torchvision's strides).

        Returns:
            (Tensor[A, 4], list[int]): the anchors and the number of anchors of each level.

        Raises:
            ValueError: ``feature_sizes`` does not have one ``(height, width)`` per level, or a
                size is negative.
        """
        if len(feature_sizes) != len(self.strides):
            raise ValueError(
                "AnchorGenerator: feature_sizes must give one (height, width) per level "
                f"({len(self.strides)}), got {len(feature_sizes)}"
            )
        device = torch.device(device if device is not None else "cpu")
        if torch.compiler.is_compiling():
            # Traced (torch.export, torch.compile): sizes may be symbolic (SymInt) and the
            # anchors are graph ops of them; the int-keyed cache is for eager calls only.
            sizes = tuple((h, w) for h, w in feature_sizes)
            return self._build(sizes, self._level_strides(sizes, image_size), device, dtype, traced=True)
        sizes = tuple((int(h), int(w)) for h, w in feature_sizes)
        if any(h < 0 or w < 0 for h, w in sizes):
            raise ValueError(f"AnchorGenerator: feature sizes must be >= 0, got {list(sizes)}")
        image_size = None if image_size is None else (int(image_size[0]), int(image_size[1]))
        strides = self._level_strides(sizes, image_size)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        key = (sizes, strides, device, dtype)
        entry = self._cache.get(key)
        if entry is None:
            entry = self._cache.put(key, self._build(sizes, strides, device, dtype))
        anchors, level_sizes = entry
        return anchors, list(level_sizes)

    def _level_strides(self, sizes, image_size) -> Tuple:
        """``(stride_y, stride_x)`` per level: nominal, or torchvision's ``image_size // feature_size``."""
        if image_size is None:
            return tuple((s, s) for s in self.strides)
        return tuple((image_size[0] // h, image_size[1] // w) for h, w in sizes)

    def for_image_size(
        self, height: int, width: int, device=None, dtype: torch.dtype = torch.float32
    ) -> Tuple[Tensor, List[int]]:
        """Anchors for an input of ``height x width`` pixels: level ``l`` has
        ``ceil(height / stride_l) x ceil(width / stride_l)`` locations (exact for a padded
        multiple of the largest stride)."""
        return self([(math.ceil(height / s), math.ceil(width / s)) for s in self.strides], device, dtype)

    def _build(self, sizes, strides, device, dtype, traced: bool = False):
        # The cell anchors of every level in one copy (traced: graph constants); the location
        # grids from arange on the device.
        cells = torch.stack([self._cell_anchors_host(level, dtype) for level in range(len(sizes))])
        cells = cells.to(device) if traced else _to_device(cells, device)
        levels, counts = [], []
        for level, ((h, w), (stride_y, stride_x)) in enumerate(zip(sizes, strides)):
            base = cells[level]
            # float64: exact up to 2^53 (int32 wrapped at x * stride >= 2^31), never wraps.
            shifts_x = torch.arange(0, w, dtype=torch.float64, device=device) * stride_x
            shifts_y = torch.arange(0, h, dtype=torch.float64, device=device) * stride_y
            # The [h, w] grids by broadcasting sums, not meshgrid: its expanded views, reshaped,
            # make a traced program specialise on sizes of 1 (and refuse 1 x 1 levels).
            shift_x = (shifts_x.view(1, -1) + torch.zeros_like(shifts_y).view(-1, 1)).view(-1)
            shift_y = (shifts_y.view(-1, 1) + torch.zeros_like(shifts_x).view(1, -1)).view(-1)
            shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=1).to(dtype)
            levels.append((shifts.view(-1, 1, 4) + base.view(1, -1, 4)).reshape(-1, 4))
            counts.append(levels[-1].shape[0])
        return torch.cat(levels), counts


class LruCache:
    """The ``capacity`` most recently used entries of a dict: the anchor caches of
    :class:`AnchorGenerator` and of an accelerated torchvision model's generator."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._entries: OrderedDict = OrderedDict()

    def get(self, key):
        """The value of ``key`` (now the most recently used), or None."""
        value = self._entries.get(key)
        if value is not None:
            self._entries.move_to_end(key)
        return value

    def put(self, key, value):
        """Stores ``value`` as the most recently used, dropping the least recently used past
        ``capacity``; returns ``value``."""
        self._entries[key] = value
        self._entries.move_to_end(key)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)
        return value

    def __len__(self) -> int:
        return len(self._entries)


def _to_device(t: Tensor, device) -> Tensor:
    """``t`` (a small host tensor) on ``device``; to CUDA by a non-blocking copy from pinned
    memory, so the host never waits (a copy from pageable memory synchronises with the GPU)."""
    device = torch.device(device if device is not None else "cpu")
    if device.type == "cpu":
        return t
    if device.type == "cuda":
        t = t.pin_memory()
    return t.to(device, non_blocking=True)
