"""ResNet-18/34/50/101 backbones (He et al., 2016) returning the C3, C4, C5 feature maps.

Module and parameter names follow torchvision's ``resnet*`` so a torchvision ImageNet state
dict loads with ``load_state_dict(..., strict=False)`` (its ``fc.*`` keys are the only extras).
"""

from typing import Dict, List, Type, Union

import torch
from torch import Tensor, nn


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d with fixed statistics and affine parameters (buffers, not parameters).

    The usual choice for a detector fine-tuned from ImageNet weights with small per-GPU
    batches, where batch statistics would be too noisy.
    """

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # A BatchNorm2d state dict carries num_batches_tracked, which has no meaning here.
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: Tensor) -> Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale.reshape(1, -1, 1, 1).to(x.dtype) + shift.reshape(1, -1, 1, 1).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, width: int, stride: int, norm: Type[nn.Module]):
        super().__init__()
        cout = width * self.expansion
        self.conv1 = _conv3x3(cin, width, stride)
        self.bn1 = norm(width)
        self.conv2 = _conv3x3(width, width)
        self.bn2 = norm(width)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), norm(cout))

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int, norm: Type[nn.Module]):
        super().__init__()
        cout = width * self.expansion
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = norm(width)
        # Stride on the 3x3 conv (ResNet v1.5, as torchvision).
        self.conv2 = _conv3x3(width, width, stride)
        self.bn2 = norm(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = norm(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), norm(cout))

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


_ARCHS: Dict[str, tuple] = {
    "resnet18": (BasicBlock, [2, 2, 2, 2]),
    "resnet34": (BasicBlock, [3, 4, 6, 3]),
    "resnet50": (Bottleneck, [3, 4, 6, 3]),
    "resnet101": (Bottleneck, [3, 4, 23, 3]),
}


class ResNet(nn.Module):
    """ResNet trunk without the classifier; ``forward`` returns ``[C3, C4, C5]`` (strides 8, 16, 32).

    Args:
        name (str): ``"resnet18"``, ``"resnet34"``, ``"resnet50"`` or ``"resnet101"``.
        frozen_bn (bool): use :class:`FrozenBatchNorm2d` (for fine-tuning from pretrained
            weights) instead of ``nn.BatchNorm2d`` (for training from scratch). Default False.

    Attributes:
        out_channels (list[int]): channels of C3, C4, C5.

    Raises:
        ValueError: unknown ``name``.
    """

    def __init__(self, name: str = "resnet50", frozen_bn: bool = False):
        super().__init__()
        if name not in _ARCHS:
            raise ValueError(f"ResNet: backbone must be one of {sorted(_ARCHS)}, got {name!r}")
        block, depths = _ARCHS[name]
        norm = FrozenBatchNorm2d if frozen_bn else nn.BatchNorm2d
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = norm(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        cin = 64
        layers: List[nn.Sequential] = []
        for i, depth in enumerate(depths):
            width = 64 * 2**i
            blocks = []
            for j in range(depth):
                blocks.append(block(cin, width, 2 if (j == 0 and i > 0) else 1, norm))
                cin = width * block.expansion
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.out_channels = [64 * 2**i * block.expansion for i in (1, 2, 3)]
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        # Zero-init the last norm of each residual branch: every block starts as the identity,
        # which makes training from scratch markedly more stable (Goyal et al., 2017).
        for m in self.modules():
            last = getattr(m, "bn3", None) if isinstance(m, Bottleneck) else getattr(m, "bn2", None)
            if isinstance(m, (BasicBlock, Bottleneck)) and isinstance(last, nn.BatchNorm2d):
                nn.init.zeros_(last.weight)

    def forward(self, x: Tensor) -> List[Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c2 = self.layer1(x)
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return [c3, c4, c5]


def backbone_names() -> List[str]:
    """The supported backbone names."""
    return sorted(_ARCHS)


def load_torchvision_weights(backbone: ResNet, state_dict: Union[str, Dict[str, Tensor]]) -> None:
    """Load a torchvision ImageNet ResNet state dict (a dict or a local ``.pth`` path) into ``backbone``.

    The classifier (``fc.*``) keys are dropped; every other key must match.

    Raises:
        ValueError: the state dict misses backbone keys or has unexpected ones.
    """
    if isinstance(state_dict, str):
        state_dict = torch.load(state_dict, map_location="cpu", weights_only=True)
    state_dict = {k: v for k, v in state_dict.items() if not k.startswith("fc.")}
    missing, unexpected = backbone.load_state_dict(state_dict, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"load_torchvision_weights: state dict does not match the backbone (missing {missing[:5]}, "
            f"unexpected {unexpected[:5]})"
        )
