"""One module per op family; each wraps torch.ops.focalops.* with argument checks and defaults."""

import torch

# Floating dtypes every floating op accepts (half types are computed in float32).
FLOATS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
