"""Deployment latency: the RetinaNet inference path eager (``model.detect_batch``) vs the
``torch.export`` program (``model.export()``, run with ``.module()``) vs the AOTInductor package of
that program vs its ONNX model in ONNX Runtime (where onnx, onnxscript and onnxruntime are
installed; the CUDA execution provider on a GPU where ONNX Runtime has it, timed from and to host
numpy arrays), at batch 1 and 8, one program per impl serving both batch sizes (dynamic shapes).

Not in the default suite: AOTInductor compiles C++ for minutes on a few cores. Run it with
``python -m benchmarks --only export [--device cpu|cuda] [--quick]``; ``speedup`` is vs eager.
"""

import os
import tempfile
from typing import Dict, List

import torch

from focalops.models import RetinaNet

from . import common

NUM_CLASSES = 80


def run(device: str, quick: bool) -> List[Dict]:
    # The traced example: at least 129 px (no 1 x 1 pyramid level while tracing).
    if device.startswith("cuda"):
        backbone, size = "resnet50", (512 if quick else 800)
    else:
        backbone, size = "resnet18", (160 if quick else 256)
    torch.manual_seed(0)
    model = RetinaNet(NUM_CLASSES, backbone).to(device).eval()
    program = model.export(example_size=(size, size))
    with tempfile.TemporaryDirectory() as tmp:
        package = torch._inductor.aoti_compile_and_package(program, package_path=os.path.join(tmp, "model.pt2"))
        impls = {
            "eager": model.detect_batch,
            "export": program.module(),
            "aoti": torch._inductor.aoti_load_package(package),
        }
        session = _onnx_session(program, os.path.join(tmp, "model.onnx"), device)
        if session is not None:
            impls["onnxruntime"] = lambda images: session.run(None, {"images": images.cpu().numpy()})
        g = torch.Generator().manual_seed(0)
        rows = []
        for batch in (1, 8):
            images = torch.rand(batch, 3, size, size, generator=g).to(device)
            shape = f"{backbone} {batch}x3x{size}x{size} K={NUM_CLASSES}"
            for impl, fn in impls.items():
                with torch.no_grad():
                    t = common.measure(lambda: fn(images), device, warmup=2, repeat=3 if quick else 10, max_seconds=30)
                note = f"{batch / (t['ms'] * 1e-3):.1f} img/s"
                rows.append(common.row("retinanet_infer", impl, "fwd", device, "float32", shape, t, note=note))
    common.add_speedups(rows, baseline="eager")
    return rows


def _onnx_session(program, path: str, device: str):
    """An ONNX Runtime session of the program's ONNX model, or None without onnx / onnxruntime."""
    try:
        import onnxruntime

        from focalops.onnx_export import export_program, require_onnx

        require_onnx()
    except ImportError:
        return None
    export_program(program, path)
    providers = ["CPUExecutionProvider"]
    if device.startswith("cuda") and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    return onnxruntime.InferenceSession(path, providers=providers)
