"""focalops: fast fused ops for dense one-stage detectors (RetinaNet)."""

from focalops import _meta  # noqa: F401  (fake kernels for torch.compile / opcheck)
from focalops._extension import cpu_capability, has_cuda_kernels
from focalops.export import export_torchvision  # noqa: E402
from focalops.ops.anchors import AnchorGenerator
from focalops.ops.assign import assign, retinanet_targets
from focalops.ops.boxes import box_iou, decode_boxes, encode_boxes
from focalops.ops.focal_loss import SigmoidFocalLoss, sigmoid_focal_loss
from focalops.ops.nms import batched_nms, nms
from focalops.ops.postprocess import postprocess
from focalops.torchvision_retinanet import accelerate, accelerated  # noqa: E402  (uses the ops above)

__version__ = "0.1.0"

__all__ = [
    "SigmoidFocalLoss",
    "sigmoid_focal_loss",
    "has_cuda_kernels",
    "cpu_capability",
    "AnchorGenerator",
    "box_iou",
    "encode_boxes",
    "decode_boxes",
    "assign",
    "retinanet_targets",
    "nms",
    "batched_nms",
    "postprocess",
    "accelerate",
    "accelerated",
    "export_torchvision",
]
