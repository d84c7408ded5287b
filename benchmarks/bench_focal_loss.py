"""Sigmoid focal loss: focalops vs the reference (eager and torch.compile'd), forward and fwd+bwd.

Byte model (class-index form, the RetinaNet hot path), for N anchors x K classes of s bytes:
  forward (sum):   read logits + labels            = N*K*s + 8*N
  fwd+bwd:         read logits twice, write grad   = 3*N*K*s + 2*8*N   (12 B / fp32 element)
The reference moves far more (one-hot targets, p, ce, p_t, ... materialised); GB/s below always
uses this model, so it reads as "fraction of the floor achieved".
"""

import torch

import focalops
from focalops import reference

from . import common


def _cases(device, quick):
    if device == "cpu":
        return [(20_000 if quick else 120_000, 80, torch.float32)]
    # RetinaNet's 16 images x ~120k anchors x 80 classes: a GPU's quick run (the first-contact
    # check) times it too, in fp32 only.
    if quick:
        return [(16 * 120_000, 80, torch.float32)]
    return [(16 * 120_000, 80, torch.float32), (16 * 120_000, 80, torch.bfloat16)]


def _torchvision_loss():
    try:
        from torchvision.ops import sigmoid_focal_loss
    except Exception:  # torchvision absent (e.g. the CPU dev machine)
        return None
    return sigmoid_focal_loss


def run(device: str, quick: bool):
    rows = []
    repeat = 5 if quick else 15
    for n, k, dtype in _cases(device, quick):
        g = torch.Generator(device="cpu").manual_seed(0)
        x = (torch.randn(n, k, generator=g) * 3).to(device=device, dtype=dtype).requires_grad_()
        labels = torch.randint(-1, k, (n,), generator=g).to(device)
        labels[torch.rand(n, generator=g).to(device) < 0.98] = -1  # ~2% foreground, like RetinaNet
        num_fg = (labels >= 0).sum().clamp(min=1)
        size = f"{n}x{k}"
        s = x.element_size()
        fwd_bytes = n * k * s + 8 * n
        fb_bytes = 3 * n * k * s + 16 * n
        elems = n * k

        def fwd(fn):
            return lambda: fn(x.detach(), labels, 0.25, 2.0, "sum", normalizer=num_fg)

        def fwd_bwd(fn):
            def step():
                loss = fn(x, labels, 0.25, 2.0, "sum", normalizer=num_fg)
                torch.autograd.grad(loss, x)

            return step

        impls = [("focalops", focalops.sigmoid_focal_loss), ("reference", reference.sigmoid_focal_loss)]
        # Inductor's C++ code does not compile under ATEN_CPU_CAPABILITY=default (it emits at::vec
        # code without the header; torch 2.14.1): no compiled row for that build.
        inductor_ok = device != "cpu" or torch.backends.cpu.get_cpu_capability() != "DEFAULT"
        if not quick and inductor_ok:
            impls.append(("reference+compile", torch.compile(reference.sigmoid_focal_loss, dynamic=False)))
        elif not quick:
            print("sigmoid_focal_loss: no reference+compile row (Inductor fails under ATEN_CPU_CAPABILITY=default)")
        tv = _torchvision_loss()
        if tv is not None:
            one_hot = torch.zeros(n, k, device=device, dtype=dtype)
            fg = labels >= 0
            one_hot[fg.nonzero()[:, 0], labels[fg]] = 1

            def tv_loss(inp, _labels, alpha, gamma, reduction, normalizer):
                return tv(inp, one_hot, alpha, gamma, reduction) / normalizer

            impls.append(("torchvision", tv_loss))
        # Writing the gradient once: into a fresh buffer (what every composite pays: on CPU mostly
        # first-touch page faults, on GPU write bandwidth), and into one already written (the CPU
        # floor once focalops reuses the previous step's block).
        fresh = common.measure(lambda: torch.empty_like(x).fill_(1), device, warmup=3, repeat=repeat)
        touched = torch.empty_like(x)
        again = common.measure(lambda: touched.fill_(1), device, warmup=3, repeat=repeat)
        # The machine's memory bandwidth at this size: a copy between two written buffers.
        source = x.detach().clone()
        copy = common.measure(lambda: touched.copy_(source), device, warmup=3, repeat=repeat)
        rows.append(
            common.row(
                "memory bandwidth",
                "copy_",
                "read+write",
                device,
                str(dtype)[6:],
                size,
                copy,
                elements=elems,
                bytes_model=2 * n * k * s,
            )
        )
        for impl, t in (("empty_like+fill_", fresh), ("fill_ (written before)", again)):
            rows.append(
                common.row(
                    "grad buffer write",
                    impl,
                    "write",
                    device,
                    str(dtype)[6:],
                    size,
                    t,
                    elements=elems,
                    bytes_model=n * k * s,
                )
            )
        for impl, fn in impls:
            t = common.measure(fwd(fn), device, warmup=3, repeat=repeat)
            rows.append(
                common.row(
                    "sigmoid_focal_loss",
                    impl,
                    "fwd",
                    device,
                    str(dtype)[6:],
                    size,
                    t,
                    elements=elems,
                    bytes_model=fwd_bytes,
                )
            )
            t = common.measure(fwd_bwd(fn), device, warmup=3, repeat=repeat)
            rows.append(
                common.row(
                    "sigmoid_focal_loss",
                    impl,
                    "fwd+bwd",
                    device,
                    str(dtype)[6:],
                    size,
                    t,
                    elements=elems,
                    bytes_model=fb_bytes,
                )
            )
    return rows
