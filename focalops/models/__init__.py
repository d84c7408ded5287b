"""Detection models built on the focalops ops."""

from focalops.models.fpn import FPN
from focalops.models.resnet import FrozenBatchNorm2d, ResNet, backbone_names, load_torchvision_weights
from focalops.models.retinanet import RetinaNet

__all__ = ["FPN", "FrozenBatchNorm2d", "ResNet", "RetinaNet", "backbone_names", "load_torchvision_weights"]
