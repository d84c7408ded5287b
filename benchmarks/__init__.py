"""focalops benchmark suite: `python -m benchmarks` or `focalops bench`."""
