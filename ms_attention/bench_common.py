"""What every benchmark section shares: timing, inputs, the execution mode, and the progress line.

Timing: one warm-up call (Graph compilation, first-touch of buffers), then the best of `repeats` timed calls,
stopping early once `budget_s` seconds have been spent (at least one timed call). Every call ends with
`.asnumpy()` on its output (or an explicit sync), so asynchronous dispatch is included in the time.
"""
import fcntl
import time
from contextlib import contextmanager

import numpy as np
import mindspore as ms


_LOCK = {"path": None}


def use_lock(path):
    """Take the file lock at `path` (flock) around every timed section from now on (None: no lock), so timing
    runs of several users of one machine take turns per section instead of overlapping."""
    _LOCK["path"] = path


@contextmanager
def timing_lock():
    if _LOCK["path"] is None:
        yield
        return
    with open(_LOCK["path"], "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def best_time(fn, repeats, budget_s=None):
    """Seconds of the fastest of up to `repeats` calls of fn after one warm-up call (under the timing lock)."""
    with timing_lock():
        return _best_time(fn, repeats, budget_s)


def _best_time(fn, repeats, budget_s):
    fn()
    best, spent = float("inf"), 0.0
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        fn()
        elapsed = time.perf_counter() - start
        best, spent = min(best, elapsed), spent + elapsed
        if budget_s is not None and spent >= budget_s:
            break
    return best


def best_times_alternating(fns, repeats, budget_s=None):
    """Seconds of the fastest call of each of fns, called in turn (one warm-up each, then up to `repeats`
    rounds), so that an A/B ratio is not decided by load that came and went between A's calls and B's."""
    with timing_lock():
        for fn in fns:
            fn()
        best, spent = [float("inf")] * len(fns), 0.0
        for _ in range(max(1, repeats)):
            for i, fn in enumerate(fns):
                start = time.perf_counter()
                fn()
                elapsed = time.perf_counter() - start
                best[i], spent = min(best[i], elapsed), spent + elapsed
            if budget_s is not None and spent >= budget_s * len(fns):
                break
        return best


def median_time(fn, calls, warmup=10):
    """Median seconds per call of fn over `calls` calls, after `warmup` calls (for per-call latencies)."""
    with timing_lock():
        return _median_time(fn, calls, warmup)


def _median_time(fn, calls, warmup):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


@contextmanager
def execution_mode(mode):
    """Graph ("graph") or PyNative ("pynative") for the block; PyNative afterwards."""
    ms.set_context(mode=ms.GRAPH_MODE if mode == "graph" else ms.PYNATIVE_MODE)
    try:
        yield
    finally:
        ms.set_context(mode=ms.PYNATIVE_MODE)


def random_values(rng, shape, dtype):
    """float32 values in [-1, 1) that bfloat16 and float16 represent exactly (8 significant bits, in fp16 range),
    so MindSpore, torch and numpy all see the same numbers whatever their conversion's rounding; numpy dtype
    `dtype` (float16 / float32), or float32 for "bfloat16"."""
    values = rng.random(shape, dtype=np.float32) * 2 - 1
    values = (values.view(np.uint32) & np.uint32(0xFFFF0000)).view(np.float32)
    values[np.abs(values) < 2 ** -14] = 0  # keep fp16 out of its subnormals
    return values.astype(np.float16) if dtype == "float16" else values


MS_DTYPES = {"float16": ms.float16, "bfloat16": ms.bfloat16, "float32": ms.float32, "int8": ms.int8}
SHORT = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32", "int8": "int8"}


def ms_tensor(values, dtype):
    """A MindSpore tensor of `dtype` (a name) from numpy values."""
    if dtype == "int8":
        return ms.Tensor(values.astype(np.int8))
    return ms.Tensor(values, MS_DTYPES[dtype])


def progress(row):
    """The one line printed as each case finishes."""
    parts = [f"{row['case']:<62s}", f"{row['mode']:>8s}", "" if row["ms"] is None else f"{row['ms']:10.3f} ms"]
    if row.get("value") is not None:
        parts.append(f"{row['value']:8.1f} {row['unit']}")
    if row.get("of_limit") is not None:
        parts.append(f"= {row['of_limit']:.2f} x {row['limit']}")
    if row.get("of_roof") is not None:
        parts.append(f"({row['of_roof']:.2f} x roof)")
    for key, label in (("speedup_vs_torch", "vs torch"), ("speedup_vs_ms_fp16", "vs ms fp16"),
                       ("speedup_vs_ms_fp32", "vs ms fp32")):
        if row.get(key) is not None:
            parts.append(f"speedup {label} {row[key]:.2f}")
    for key, label in (("time_over_native_op", "native op"), ("time_over_contiguous", "contiguous")):
        if row.get(key) is not None:
            parts.append(f"time {row[key]:.2f} x {label}'s")
    print("  " + "  ".join(parts), flush=True)


def speedups(result):
    """Adds the speedups over each alternative: its time over ours (> 1: ours is faster; None: not measured)."""
    for key, ratio in (("torch_ms", "speedup_vs_torch"), ("ms_fp16_ms", "speedup_vs_ms_fp16"),
                       ("ms_fp32_ms", "speedup_vs_ms_fp32")):
        result[ratio] = result[key] / result["ms"] if result.get(key) else None


def row(group, case, mode, seconds, **fields):
    """A result row: `ms` is the time in milliseconds; the other fields are the section's."""
    result = {"group": group, "case": case, "mode": mode, "ms": None if seconds is None else seconds * 1e3}
    result.update(fields)
    return result


class Settings:
    """What a section needs from the run: the size ("full", "quick" or "smoke": tiny shapes that only check the
    harness), the machine limits, the kernel pool's threads and torch (None when absent)."""

    def __init__(self, size, limits, torch):
        self.size, self.limits, self.torch = size, limits, torch
        self.threads = limits.get("threads") or 1
        self.repeats = {"full": 5, "quick": 3, "smoke": 1}[size]
        self.budget_s = {"full": 4.0, "quick": 2.0, "smoke": 0.5}[size]

    def pick(self, full, quick, smoke):
        return {"full": full, "quick": quick, "smoke": smoke}[self.size]
