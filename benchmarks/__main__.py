"""Run the benchmark suite: a table on stdout, JSON and a PNG chart under benchmarks/results/ (installed,
`focalops bench`: under ./focalops-bench-results)."""

import argparse
import importlib
import json
import os
import subprocess
import sys
import time

import torch

import focalops

from . import common

# The suite is the checkout's `benchmarks` package and, installed, `focalops.benchmarks` (the same
# files: setup.py maps it): `focalops bench` runs it from any install, writing to the working
# directory rather than into site-packages.
_INSTALLED = __package__ != "benchmarks"
DEFAULT_OUT = "focalops-bench-results" if _INSTALLED else os.path.join(os.path.dirname(__file__), "results")

# Every benchmark module, in the order they run.
FAMILIES = ["focal_loss", "assign", "nms", "postprocess", "retinanet"]

COLUMNS = [
    "op",
    "impl",
    "pass",
    "dtype",
    "size",
    "ms",
    "speedup",
    "vs_torchvision",
    "melem_per_s",
    "gbps",
    "pct_copy_bw",
    "peak_mib",
    "note",
]


def _table(rows):
    cols = [c for c in COLUMNS if any(c in r for r in rows)]
    cells = [[str(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(c), *(len(x[i]) for x in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths))]
    lines += ["  ".join(x.ljust(w) for x, w in zip(line, widths)) for line in cells]
    return "\n".join(lines)


def _chart(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [r for r in rows if "speedup" in r]
    if not shown:
        return None
    labels = [f"{r['op']} {r['pass']} {r['dtype']}\n{r['size']} [{r['impl']}]" for r in shown]
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(shown) + 1.5))
    ax.barh(range(len(shown)), [r["speedup"] for r in shown], color="tab:blue")
    ax.set_yticks(range(len(shown)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.axvline(1.0, color="k", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("speed-up over the baseline: focalops.reference (export: eager) (median time, log scale)")
    ax.set_title(f"focalops on {common.device_name(shown[0]['device'])}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="focalops bench" if _INSTALLED else "python -m benchmarks", description=__doc__
    )
    parser.add_argument(
        "--only", default=",".join(FAMILIES), help="comma-separated families (default: all: %(default)s)"
    )
    parser.add_argument("--device", default="auto", help="cpu, cuda, or auto (cpu, plus cuda when present)")
    parser.add_argument("--quick", action="store_true", help="smaller sizes and fewer repeats (a smoke run)")
    parser.add_argument("--out", default=DEFAULT_OUT, help="output folder (default: %(default)s)")
    parser.add_argument(
        "--cpu-capability",
        choices=["default", "avx2", "avx512"],
        help="time this CPU build of focalops (and of torch) instead of the CPU's best (ATEN_CPU_CAPABILITY; "
        "never above what the CPU has); results get the suffix -<capability>",
    )
    args = parser.parse_args(argv)
    if args.cpu_capability and args.cpu_capability != focalops.cpu_capability():
        if os.environ.get("ATEN_CPU_CAPABILITY") == args.cpu_capability:
            best = focalops.cpu_capability()
            print(f"this CPU cannot run the {args.cpu_capability} build (best: {best})", file=sys.stderr)
            return 2
        # Both libraries choose their kernels when they load: run again in a fresh process. (Only
        # then: inductor's CPU code is much slower under an explicit ATEN_CPU_CAPABILITY=avx512.)
        env = {**os.environ, "ATEN_CPU_CAPABILITY": args.cpu_capability}
        args_again = argv if argv is not None else sys.argv[1:]
        return subprocess.call([sys.executable, "-m", __package__, *args_again], env=env)

    if args.device == "auto":
        devices = ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]
    else:
        devices = args.device.split(",")
        if any(d.startswith("cuda") for d in devices) and not torch.cuda.is_available():
            print(f"--device {args.device}: torch sees no CUDA device", file=sys.stderr)
            return 2
    os.makedirs(args.out, exist_ok=True)
    for device in devices:
        tag = "cuda" if device.startswith("cuda") else "cpu"
        # A run of some families (or of export, outside the default suite) gets its own file
        # instead of overwriting the whole suite's.
        families = args.only.split(",")
        suffix = "" if families == FAMILIES else "-" + "-".join(families)
        suffix += ("-quick" if args.quick else "") + (f"-{args.cpu_capability}" if args.cpu_capability else "")
        json_path = os.path.join(args.out, f"{tag}{suffix}.json")
        meta = {
            "device": common.device_name(device),
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "threads": torch.get_num_threads(),
            "cpu_model": common.cpu_model(),
            "cpu_capability": focalops.cpu_capability(),
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cpu_flags": common.cpu_vector_flags(),
            "copy_gbps": common.copy_bandwidth_gbps(device),
            "quick": args.quick,
            "date": time.strftime("%Y-%m-%d %H:%M"),
        }
        rows = []
        for done, family in enumerate(families, 1):
            try:
                module = importlib.import_module(f"{__package__}.bench_{family}")
            except ModuleNotFoundError:
                print(f"[{family}: no benchmark module yet]", file=sys.stderr)
                continue
            print(f"== {family} on {device} ({common.device_name(device)})", flush=True)
            new = module.run(device, args.quick)
            common.add_speedups(new)
            common.add_speedups(new, baseline="torchvision", column="vs_torchvision")
            print(_table(new), flush=True)
            rows += new
            # Written after every family: a run stopped part-way keeps what it measured.
            meta["families_done"] = families[:done]
            with open(json_path, "w") as f:
                json.dump({"meta": meta, "rows": rows}, f, indent=1)
        png = _chart(rows, os.path.join(args.out, f"{tag}{suffix}.png"))
        print(f"wrote {json_path}" + (f" and {png}" if png else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
