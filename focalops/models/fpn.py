"""Feature pyramid P3-P7 for RetinaNet (Lin et al., 2017, "Focal Loss for Dense Object Detection")."""

from typing import List, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _strided_conv(conv: nn.Conv2d, x: Tensor) -> Tensor:
    """``conv(x)``, in float32 when CPU autocast meets a map one pixel wide: oneDNN's bfloat16
    weight gradient of a stride-2 convolution over such a map reads uninitialised memory (torch
    2.14.1: a different value, up to 1e21, on every call, then NaN weights). It happens to P6/P7
    of images under 128 px wide; the map is a few pixels, so float32 costs nothing."""
    if torch.is_autocast_enabled("cpu") and x.device.type == "cpu" and x.shape[-1] == 1:
        with torch.autocast("cpu", enabled=False):
            return conv(x.float())
    return conv(x)


class FPN(nn.Module):
    """Top-down pyramid P3-P5 from C3-C5, plus P6 (3x3 stride-2 conv on C5, or on P5) and P7
    (3x3 stride-2 conv on relu(P6)). A lateral map whose size is not twice the one above (an
    input that is not a multiple of 128) gets the upsampled map resized to its own size, as in
    torchvision.

    Args:
        in_channels (Sequence[int]): channels of C3, C4, C5.
        out_channels (int): channels of every pyramid level. Default 256.
        p6_from (str): ``"c5"`` (the paper; default) or ``"p5"`` (torchvision's v1
            ``retinanet_resnet50_fpn``).

    Returns (forward):
        list[Tensor]: ``[P3, P4, P5, P6, P7]`` with strides 8, 16, 32, 64, 128.

    Raises:
        ValueError: ``p6_from`` is neither ``"c5"`` nor ``"p5"``.
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int = 256, p6_from: str = "c5"):
        super().__init__()
        if p6_from not in ("c5", "p5"):
            raise ValueError(f"FPN: p6_from must be 'c5' or 'p5', got {p6_from!r}")
        self.p6_from = p6_from
        self.lateral = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in in_channels)
        self.output = nn.ModuleList(nn.Conv2d(out_channels, out_channels, 3, padding=1) for _ in in_channels)
        p6_in = in_channels[-1] if p6_from == "c5" else out_channels
        self.p6 = nn.Conv2d(p6_in, out_channels, 3, stride=2, padding=1)
        self.p7 = nn.Conv2d(out_channels, out_channels, 3, stride=2, padding=1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, a=1)
                nn.init.zeros_(m.bias)

    def forward(self, features: List[Tensor]) -> List[Tensor]:
        c5 = features[-1]
        inner = self.lateral[-1](c5)
        outs = [self.output[-1](inner)]
        for i in range(len(features) - 2, -1, -1):
            lateral = self.lateral[i](features[i])
            inner = lateral + F.interpolate(inner, size=lateral.shape[-2:], mode="nearest")
            outs.insert(0, self.output[i](inner))
        p6 = _strided_conv(self.p6, c5 if self.p6_from == "c5" else outs[-1])
        p7 = _strided_conv(self.p7, F.relu(p6))
        return outs + [p6, p7]
