"""This machine's limits, measured in the same run as the benchmarks that report fractions of them.

The kernel library's own loops on all its pool threads give the limits (memory read bandwidth, fp32 FMA peak,
bf16 dot-product peak); numpy's one-thread sum and copy are kept as reference figures only (numpy's sum uses one
thread, so it understates the read bandwidth of a multi-core machine).
"""
import ctypes
import time

import numpy as np

from ms_attention.kernels.cpu import loader


def _function(name):
    lib = loader.library()
    if lib is None or not hasattr(lib.handle, name):
        return None
    return getattr(lib.handle, name)


def num_threads():
    """Threads of the kernel library's pool (MS_ATTENTION_NUM_THREADS, default the CPUs of this process); None
    without the library."""
    fn = _function("msa_num_threads")
    if fn is None:
        return None
    fn.restype = ctypes.c_int
    return int(fn())


def fp32_fma_gflops(seconds=0.2, repeats=3):
    """Float32 GFLOP/s of the kernel library's FMA loop on all its threads (the best of `repeats` runs of about
    `seconds`), with the widest vectors the loaded library variant uses; None without the library."""
    fn = _function("msa_fp32_fma_gflops")
    if fn is None:
        return None
    fn.restype, fn.argtypes = ctypes.c_double, [ctypes.c_double]
    return max(fn(seconds) for _ in range(repeats))


def bf16_dot_gflops(seconds=0.2, repeats=3):
    """GFLOP/s of the library's vdpbf16ps loop (bf16 products accumulated in fp32) on all its threads; None when
    the loaded library is not built with AVX512_BF16 (or there is no library)."""
    fn = _function("msa_bf16_dot_gflops")
    if fn is None:
        return None
    fn.restype, fn.argtypes = ctypes.c_double, [ctypes.c_double]
    best = max(fn(seconds) for _ in range(repeats))
    return best if best > 0 else None


def read_gbps(megabytes=512, repeats=5):
    """Streaming read bandwidth, GB/s: every pool thread sums its own slice of a `megabytes` buffer with vector
    loads (best of `repeats` passes); None without the library."""
    fn = _function("msa_read_gbps")
    if fn is None:
        return None
    fn.restype, fn.argtypes = ctypes.c_double, [ctypes.c_double, ctypes.c_int]
    value = fn(float(megabytes), int(repeats))
    return value if value > 0 else None


def _best(fn, repeats):
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def numpy_bandwidth_gbps(megabytes=512, repeats=5):
    """Reference figures: (np.sum read GB/s, np.copyto copy GB/s counting read + write), numpy on one thread."""
    a = np.ones(int(megabytes * 2 ** 20) // 4, np.float32)
    b = np.empty_like(a)
    read = a.nbytes / _best(a.sum, repeats)
    copy = 2 * a.nbytes / _best(lambda: np.copyto(b, a), repeats)
    return read / 1e9, copy / 1e9


def limits(megabytes=512, repeats=5, seconds=0.2):
    """Every limit the benchmarks use, as one dict (GB/s, GFLOP/s; None where not available)."""
    numpy_read, numpy_copy = numpy_bandwidth_gbps(megabytes, repeats)
    return {"threads": num_threads(), "read_GBps": read_gbps(megabytes, repeats),
            "fp32_fma_GFLOPs": fp32_fma_gflops(seconds), "bf16_dot_GFLOPs": bf16_dot_gflops(seconds),
            "numpy_read_1thread_GBps": numpy_read, "numpy_copy_1thread_GBps": numpy_copy,
            "buffer_MB": megabytes}
