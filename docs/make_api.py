"""Writes docs/api.md, the API reference, from the docstrings of the public API.

    python docs/make_api.py          # rewrite docs/api.md
    python docs/make_api.py --check  # exit 1 if docs/api.md is out of date (tests/test_docs.py)
"""

import inspect
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import focalops  # noqa: E402
import focalops.models  # noqa: E402, F401  (documented below)

PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "api.md")

# One section per op family (its module's docstring and __all__), then the rest of the API.
SECTIONS = [(family.__doc__.strip().splitlines()[0].rstrip("."), family.__all__) for family in focalops.OP_FAMILIES] + [
    ("Model", ["models.RetinaNet", "models.RetinaNet.from_torchvision"]),
    ("torchvision integration", ["accelerate", "accelerated"]),
    ("Deployment", ["models.RetinaNet.export", "models.RetinaNet.export_onnx", "export_torchvision"]),
    ("Build and CPU capability", ["cpu_capability", "has_cuda_kernels"]),
]

HEADER = """# focalops API reference

Generated from the docstrings by `python docs/make_api.py` (a test checks it is current). Every op
is also reachable as `torch.ops.focalops.<name>` with the argument checks of its C++ kernels; the
Python functions below convert types and add defaults and reductions, and raise the same messages as
`OpTypeError` / `OpValueError` (both also `RuntimeError`). Floating ops accept float32,
float16, bfloat16 (computed in float32) and float64 (CPU; for gradcheck), any layout; empty
inputs give empty results. CPU and CUDA kernels share their math (`csrc/math/`); where results or
error reporting differ between the devices, the entry says so.
"""


def _resolve(name):
    obj = focalops
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


def render() -> str:
    out = [HEADER]
    for title, names in SECTIONS:
        out.append(f"\n## {title}\n")
        for name in names:
            obj = _resolve(name)
            try:
                sig = str(inspect.signature(obj))
            except (TypeError, ValueError):
                sig = "(...)"
            out.append(f"\n### `focalops.{name}{sig}`\n\n```text\n{inspect.getdoc(obj)}\n```\n")
    return "".join(out)


if __name__ == "__main__":
    text = render()
    if "--check" in sys.argv:
        with open(PATH) as f:
            sys.exit(0 if f.read() == text else 1)
    with open(PATH, "w") as f:
        f.write(text)
    print(f"wrote {PATH}")
