"""focalops: fast fused ops for dense one-stage detectors (RetinaNet).

The public API: each op family's ``__all__`` (``focalops/ops/<family>.py``), then the
torchvision integration, deployment and build information.
"""

from focalops._extension import cpu_capability, has_cuda_kernels
from focalops.export import export_torchvision
from focalops.ops import anchors as _anchors
from focalops.ops import assign as _assign
from focalops.ops import boxes as _boxes
from focalops.ops import focal_loss as _focal_loss
from focalops.ops import nms as _nms
from focalops.ops import postprocess as _postprocess
from focalops.ops.anchors import *  # noqa: F403
from focalops.ops.assign import *  # noqa: F403
from focalops.ops.boxes import *  # noqa: F403
from focalops.ops.focal_loss import *  # noqa: F403
from focalops.ops.nms import *  # noqa: F403
from focalops.ops.postprocess import *  # noqa: F403
from focalops.torchvision_retinanet import accelerate, accelerated  # noqa: E402  (uses the ops above)

__version__ = "0.1.0"

OP_FAMILIES = (_focal_loss, _anchors, _boxes, _assign, _nms, _postprocess)

__all__ = [
    *(name for family in OP_FAMILIES for name in family.__all__),
    "accelerate",
    "accelerated",
    "export_torchvision",
    "cpu_capability",
    "has_cuda_kernels",
]
