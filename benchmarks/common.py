"""Timing and reporting shared by every benchmark module.

A benchmark module `benchmarks/bench_<family>.py` exposes
    run(device: str, quick: bool) -> list[dict]
returning one row per (case, implementation, pass) made with `row(...)`.
"""

import platform
import statistics
import time
from typing import Callable, Dict, List, Optional

import torch

import focalops


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure(
    fn: Callable[[], object], device: str, warmup: int = 3, repeat: int = 10, max_seconds: float = 20.0
) -> Dict:
    """Median wall time of fn() in ms: warm-up calls first, then `repeat` timed calls.

    On CUDA each call is timed with a pair of CUDA events on the current stream; on CPU with
    perf_counter. Stops early (keeping at least 3 samples) once max_seconds is spent.
    """
    for _ in range(warmup):
        fn()
    sync(device)
    samples: List[float] = []
    start_all = time.perf_counter()
    for _ in range(repeat):
        if device.startswith("cuda"):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t0) * 1e3)
        if len(samples) >= 3 and time.perf_counter() - start_all > max_seconds:
            break
    return {"ms": statistics.median(samples), "min_ms": min(samples), "samples": len(samples)}


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    raise KeyError(field)


def peak_memory(fn: Callable[[], object], device: str) -> Optional[int]:
    """Peak extra memory (bytes) of one fn() call.

    CUDA: the caching allocator's peak above what was allocated before. CPU (Linux): the
    process's peak resident set (VmHWM, reset through /proc/self/clear_refs) above its resident
    set before the call; memory freed earlier but still held by malloc is reused first, so this
    is the extra memory the call needed. None where neither is available.
    """
    if device.startswith("cuda"):
        sync(device)
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        sync(device)
        return torch.cuda.max_memory_allocated() - base
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current VmRSS
        base = _status_kib("VmRSS:")
    except OSError:
        return None
    fn()
    return max(0, _status_kib("VmHWM:") - base) * 1024


_COPY_BW: Dict[str, float] = {}


def copy_bandwidth_gbps(device: str) -> Optional[float]:
    """Measured device-to-device copy bandwidth (read + write bytes / s) on CUDA, else None."""
    if not device.startswith("cuda"):
        return None
    if device not in _COPY_BW:
        src = torch.empty(256 * 2**20, dtype=torch.uint8, device=device)
        dst = torch.empty_like(src)
        t = measure(lambda: dst.copy_(src), device, warmup=5, repeat=30)
        _COPY_BW[device] = 2 * src.numel() / (t["ms"] * 1e-3) / 1e9
    return _COPY_BW[device]


def _cpuinfo(field: str) -> Optional[str]:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.split(":", 1)[0].strip() == field)
    except (OSError, StopIteration):
        return None


def cpu_model() -> str:
    return _cpuinfo("model name") or platform.processor() or platform.machine()


def cpu_vector_flags() -> List[str]:
    """The CPU's vector ISA flags (what decides which focalops / ATen CPU build can run)."""
    flags = (_cpuinfo("flags") or _cpuinfo("Features") or "").split()
    wanted = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512dq", "asimd", "sve")
    return [f for f in wanted if f in flags]


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"{cpu_model()} CPU ({torch.get_num_threads()} threads, focalops {focalops.cpu_capability()})"


def row(
    op: str,
    impl: str,
    pass_: str,
    device: str,
    dtype: str,
    size: str,
    timing: Dict,
    *,
    elements: Optional[int] = None,
    bytes_model: Optional[int] = None,
    peak_bytes: Optional[int] = None,
    note: str = "",
) -> Dict:
    """One result row. bytes_model: the minimal bytes the op must move (for GB/s)."""
    r = {
        "op": op,
        "impl": impl,
        "pass": pass_,
        "device": device,
        "dtype": dtype,
        "size": size,
        "ms": round(timing["ms"], 4),
        "samples": timing["samples"],
    }
    if elements:
        r["melem_per_s"] = round(elements / (timing["ms"] * 1e-3) / 1e6, 1)
    if bytes_model:
        gbps = bytes_model / (timing["ms"] * 1e-3) / 1e9
        r["bytes_model"] = bytes_model
        r["gbps"] = round(gbps, 1)
        peak = copy_bandwidth_gbps(device)
        if peak:
            r["copy_gbps"] = round(peak, 1)
            r["pct_copy_bw"] = round(100 * gbps / peak, 1)
    if peak_bytes is not None:
        r["peak_mib"] = round(peak_bytes / 2**20, 1)
    if note:
        r["note"] = note
    return r


def add_speedups(rows: List[Dict], baseline: str = "reference", column: str = "speedup") -> None:
    """row[column] = baseline ms / row ms for rows sharing (op, pass, device, dtype, size)."""
    base = {(r["op"], r["pass"], r["device"], r["dtype"], r["size"]): r["ms"] for r in rows if r["impl"] == baseline}
    for r in rows:
        key = (r["op"], r["pass"], r["device"], r["dtype"], r["size"])
        if key in base and r["impl"] != baseline:
            r[column] = round(base[key] / r["ms"], 2)
