"""One module per op family; each wraps torch.ops.focalops.* with argument checks and defaults."""
