"""Every CPU build the host can run (csrc/cpu/stub.h): the capability chosen, agreement between
capabilities, the op tests under each one, and vector code in each build's hot functions.

The library picks its kernels when it loads, so another capability needs another process:
`ATEN_CPU_CAPABILITY=<cap>` in a subprocess.
"""

import json
import os
import platform
import re
import shutil
import subprocess
import sys

import pytest
import torch

import focalops
from focalops import _C

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
X86 = platform.machine().lower() in ("x86_64", "amd64")
ORDER = ["default", "avx2", "avx512"]
# ATen's own choice for this host (it never exceeds what the CPU has).
BEST = {"AVX512": "avx512", "AVX2": "avx2"}.get(torch.backends.cpu.get_cpu_capability(), "default")
RUNNABLE = ORDER[: ORDER.index(BEST) + 1] if X86 else ["default"]
with open(os.path.join(ROOT, "tests", "op_tests.txt")) as f:  # the one list (the Makefile reads it too)
    OP_TESTS = [line.strip() for line in f if line.strip() and not line.startswith("#")]
IN_SUBPROCESS = "FOCALOPS_CAPABILITY_SUBPROCESS"


def _env(cap):
    # The subprocesses import the focalops under test (a script's own folder comes first on its
    # path, so without this they would find whatever focalops is installed).
    path = os.pathsep.join(
        p for p in (os.path.dirname(os.path.dirname(focalops.__file__)), os.environ.get("PYTHONPATH")) if p
    )
    # The emulated CUDA kernels do not depend on the CPU capability: they run in the main process.
    return {
        **os.environ,
        "ATEN_CPU_CAPABILITY": cap,
        IN_SUBPROCESS: "1",
        "PYTHONPATH": path,
        "FOCALOPS_TEST_EMULATED": "0",
    }


def test_capability_follows_aten():
    assert focalops.cpu_capability() == _C.cpu_capability()
    want = os.environ.get("ATEN_CPU_CAPABILITY", BEST).lower()
    assert focalops.cpu_capability() == (want if want in RUNNABLE else BEST)


@pytest.mark.parametrize("cap", RUNNABLE)
def test_override_chooses_capability(cap):
    out = subprocess.run(
        [sys.executable, "-c", "import focalops; print(focalops.cpu_capability())"],
        env=_env(cap),
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == cap


# Fixed inputs, written by this process and read by each subprocess: the outputs of every
# vectorised kernel on sizes that leave vector tails.
_AGREEMENT = r"""
import sys, torch, focalops
inp = torch.load(sys.argv[1])
x, labels, soft, boxes, scores, classes = (inp[k] for k in ("x", "labels", "soft", "boxes", "scores", "classes"))
out = {}
for gamma in (0.0, 1.0, 2.0, 2.5):
    out[f"loss{gamma}"] = focalops.sigmoid_focal_loss(x, labels, gamma=gamma)
    out[f"soft{gamma}"] = focalops.sigmoid_focal_loss(x, soft, gamma=gamma)
    out[f"sum{gamma}"] = focalops.sigmoid_focal_loss(x, labels, gamma=gamma, reduction="sum")
    xr = x.clone().requires_grad_()
    focalops.sigmoid_focal_loss(xr, labels, gamma=gamma, reduction="sum").backward()
    out[f"grad{gamma}"] = xr.grad
    xr = x.clone().requires_grad_()
    focalops.sigmoid_focal_loss(xr, soft, gamma=gamma, reduction="mean").backward()
    out[f"soft_grad{gamma}"] = xr.grad
out["iou"] = focalops.box_iou(boxes, boxes[:203])
anchors = boxes[:1001]
gt = boxes[1001:2002] + 3
deltas = x[:2002].reshape(2, 1001, 83)[..., :4].contiguous() * 0.5
out["encode"] = focalops.encode_boxes(gt, anchors)
dr = deltas.clone().requires_grad_()
out["decode"] = focalops.decode_boxes(dr, anchors)
out["decode"].backward(torch.ones_like(out["decode"]) + boxes[:2002].reshape(2, 1001, 4) / 100)
out["decode_grad"] = dr.grad
out["nms"] = focalops.nms(boxes, scores, 0.5)
out["batched_nms"] = focalops.batched_nms(boxes, scores, classes, 0.3)
gt = boxes[:40].reshape(2, 20, 4)
out["assign"] = focalops.assign(boxes, gt, torch.tensor([20, 7]))
logits = x[: 2 * 1000].reshape(2, 1000, 83)[..., :80].contiguous()
deltas = torch.zeros(2, 1000, 4)
anchors = boxes[:1000]
pp = focalops.postprocess(logits, deltas, anchors, [600, 400], torch.tensor([[300.0, 400.0]] * 2), score_thresh=0.3)
out.update({f"postprocess{i}": t for i, t in enumerate(pp)})
torch.save(out, sys.argv[2])
"""


def _agreement_inputs(path):
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(3000, 2, generator=g) * 300
    wh = torch.rand(3000, 2, generator=g) * 60 + 1
    inp = {
        "x": torch.randn(2003, 83, generator=g) * 6,
        "labels": torch.randint(-2, 83, (2003,), generator=g),
        "soft": torch.rand(2003, 83, generator=g),
        "boxes": torch.cat([xy, xy + wh], 1),
        "scores": torch.rand(3000, generator=g),
        "classes": torch.randint(0, 5, (3000,), generator=g),
    }
    torch.save(inp, path)


def _outputs(cap, tmp_path):
    inp = tmp_path / "inputs.pt"
    if not inp.exists():
        _agreement_inputs(inp)
    out = tmp_path / f"{cap}.pt"
    script = tmp_path / "agreement.py"
    script.write_text(_AGREEMENT)
    subprocess.run([sys.executable, str(script), str(inp), str(out)], env=_env(cap), check=True)
    return torch.load(out)


@pytest.mark.skipif(len(RUNNABLE) < 2, reason="this host runs one capability only")
def test_capabilities_agree(tmp_path):
    """The FMA builds (avx2, avx512) agree bit for bit; default (no FMA; on x86 math's exp / log
    polynomials in the box coder, at::vec's elsewhere) to float32 rounding."""
    outs = {cap: _outputs(cap, tmp_path) for cap in RUNNABLE}
    ref = outs[RUNNABLE[-1]]
    for cap, out in outs.items():
        for key, want in ref.items():
            got = out[key]
            if cap != "default" or not got.is_floating_point():
                assert torch.equal(got, want), f"{cap} differs from {RUNNABLE[-1]} in {key}"
            else:
                # atol relative to the largest value: decoded boxes near 0 are differences of
                # terms in the thousands (x1 = cx - w / 2).
                atol = 1e-6 * max(1.0, want.abs().max().item())
                torch.testing.assert_close(got, want, rtol=2e-6, atol=atol, msg=f"{cap}: {key}")


@pytest.mark.slow
@pytest.mark.skipif(bool(os.environ.get(IN_SUBPROCESS)), reason="already one capability's run")
@pytest.mark.parametrize("cap", [c for c in RUNNABLE if c != BEST])
def test_op_tests_pass_on_capability(cap):
    """The op test files, on a capability this process does not run (the host's best runs here)."""
    files = [os.path.join(ROOT, "tests", f) for f in OP_TESTS]
    proc = subprocess.run(
        # Inductor's own C++ codegen fails under ATEN_CPU_CAPABILITY=default (it emits at::vec code
        # without the header), a torch matter; the aot_eager compile tests still run.
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-k", "not inductor", *files],
        env=_env(cap),
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


# Instructions that only vector code has, per build.
_VECTOR_INSN = {
    "avx512": re.compile(r"%zmm"),
    "avx2": re.compile(r"%ymm"),
    "default": re.compile(r"\t(mul|add|sub|div|max|min|cmp[a-z]*|and|andn|or|xor)ps ")
    if X86
    else re.compile(r"\tf(mul|add|sub|div|fma)\s+v\d+\.4s"),
}
_HOT = ["focal_tile", "iou_row", "code_rows", "max_iou", "match_box", "suppress", "first_above"]


def _disassembly():
    so = _C.__file__
    text = subprocess.run(["objdump", "-d", "--no-show-raw-insn", "-C", so], capture_output=True, text=True).stdout
    funcs, name = {}, None
    for line in text.splitlines():
        m = re.match(r"[0-9a-f]+ <(.*)>:$", line)
        if m:
            name = m.group(1)
            funcs[name] = []
        elif name is not None and line.startswith(" "):
            funcs[name].append(line)
    return funcs


def _vector_count(funcs, name, pattern):
    """Vector instructions in `name` and in the functions it calls, transitively (a build may
    leave at::vec operators or the kernel's templates out of line)."""
    seen, todo, count = set(), [name], 0
    while todo:
        fn = todo.pop()
        if fn in seen or fn not in funcs:
            continue
        seen.add(fn)
        for line in funcs[fn]:
            count += bool(pattern.search(line))
            call = re.search(r"\t(call|jmp)\s+[0-9a-f]+ <(.*)>$", line)  # calls and tail calls
            if call and not re.search(r"\+0x[0-9a-f]+$", call.group(2)):  # not a jump within a function
                todo.append(call.group(2))
    return count


@pytest.mark.skipif(shutil.which("objdump") is None, reason="needs objdump")
def test_every_build_is_vector_code():
    funcs = _disassembly()
    counts = {}
    for cap in ORDER if X86 else ["default"]:
        for fn in _HOT:
            prefix = f"focalops::cpu::{cap.upper()}::(anonymous namespace)::{fn}("
            names = [name for name in funcs if name.startswith(prefix)]
            assert names, f"no {fn} in the {cap} build"
            counts[f"{cap}/{fn}"] = sum(_vector_count(funcs, name, _VECTOR_INSN[cap]) for name in names)
    scalar = {k: v for k, v in counts.items() if v < 4}
    assert not scalar, f"hot functions without vector instructions: {scalar}; all: {json.dumps(counts)}"
