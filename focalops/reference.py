"""Pure-PyTorch reference ops: the baseline that the tests and benchmarks compare against.

Written the way torchvision / detectron2 compute them (composites of standard torch ops).
"""

import torch
import torch.nn.functional as F
from torch import Tensor


def sigmoid_focal_loss(
    inputs: Tensor,
    targets: Tensor,
    alpha: float = 0.25,
    gamma: float = 2.0,
    reduction: str = "none",
    *,
    normalizer=None,
    ignore_index: int = -2,
) -> Tensor:
    """torchvision.ops.sigmoid_focal_loss; class-index targets go through a one-hot tensor."""
    weight = None
    if not (targets.dtype.is_floating_point or targets.dtype == torch.bool):
        labels = targets.long()
        keep = labels != ignore_index
        cls = torch.where(keep & (labels >= 0), labels, torch.full_like(labels, inputs.shape[-1]))
        targets = F.one_hot(cls, inputs.shape[-1] + 1)[..., :-1]
        weight = keep.unsqueeze(-1).to(inputs.dtype)
    targets = targets.to(inputs.dtype)
    p = torch.sigmoid(inputs)
    ce_loss = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce_loss * ((1 - p_t) ** gamma)
    if alpha >= 0:
        alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
        loss = alpha_t * loss
    if weight is not None:
        loss = loss * weight
    if reduction == "mean":
        loss = loss.mean()
    elif reduction == "sum":
        loss = loss.sum()
    if normalizer is not None:
        loss = loss / normalizer
    return loss
