import pytest
import torch

import focalops
from focalops import reference


def test_smoke(device):
    x = torch.randn(64, 7, device=device, dtype=torch.float64)
    lab = torch.randint(-2, 7, (64,), device=device)
    torch.testing.assert_close(focalops.sigmoid_focal_loss(x, lab), reference.sigmoid_focal_loss(x, lab))


def test_bad_reduction():
    with pytest.raises(ValueError, match="reduction"):
        focalops.sigmoid_focal_loss(torch.zeros(2, 3), torch.zeros(2, 3), reduction="avg")
