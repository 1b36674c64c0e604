"""The benchmark: decode (incre_flash_attention), prefill (prompt_flash_attention, bench_prefill.py) and training
(flash_attention_score forward + backward, bench_training.py) as fractions of this machine's limits, measured in
the same run.

Decode reads every K/V byte once, so its limit is memory bandwidth: the report gives the kernel's effective
K/V read rate over the best streaming read rate numpy reaches here (sum of a large array) and over copy
bandwidth. The environment (CPU, threads, OPENBLAS_CORETYPE, library variant) is printed with the numbers.
"""
import json
import os
import platform
import time

import numpy as np
import mindspore as ms
from mindspore import Tensor

from ms_attention import bench_prefill, bench_sparse, bench_training, machine, ops
from ms_attention.kernels.cpu import loader


def _best(fn, repeats):
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def machine_limits(size_mb=512, repeats=5):
    """Streaming read bandwidth (np.sum, one pass) and copy bandwidth (read + write), GB/s; the float32 FMA peak
    of the kernel library's own loop on all its threads, GFLOP/s (None without the library)."""
    a = np.ones(size_mb * 2 ** 20 // 4, np.float32)
    b = np.empty_like(a)
    read = a.nbytes / _best(lambda: a.sum(), repeats)
    copy = 2 * a.nbytes / _best(lambda: np.copyto(b, a), repeats)
    return {"read_GBps": read / 1e9, "copy_GBps": copy / 1e9, "fp32_fma_GFLOPs": machine.fp32_fma_gflops()}


def environment():
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    lib = loader.library()
    return {"cpu": cpu, "cores": os.cpu_count(), "MS_ATTENTION_NUM_THREADS": os.environ.get("MS_ATTENTION_NUM_THREADS"),
            "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"), "mindspore": ms.__version__,
            "library": f"{lib.variant} ({' '.join(lib.isa)})" if lib else "none"}


SHAPES = [  # (B, N, kvN, S, D, layout, dtype, kv dtype)
    (8, 32, 8, 4096, 128, "BNSD", "float16", "float16"),
    (8, 32, 8, 4096, 128, "BSH", "bfloat16", "bfloat16"),
    (1, 32, 8, 32768, 128, "BNSD", "float16", "float16"),
    (16, 32, 32, 1024, 128, "BSND", "float16", "float16"),
    (8, 32, 8, 4096, 128, "BNSD", "float16", "int8"),
]


def bench_shape(b, n, kvn, s, d, layout, dtype, kv_dtype, repeats):
    rng = np.random.default_rng(0)
    ms_type = {"float16": ms.float16, "bfloat16": ms.bfloat16}[dtype]
    q_shape = {"BSH": (b, 1, n * d), "BNSD": (b, n, 1, d), "BSND": (b, 1, n, d)}[layout]
    kv_shape = {"BSH": (b, s, kvn * d), "BNSD": (b, kvn, s, d), "BSND": (b, s, kvn, d)}[layout]
    q = Tensor(rng.standard_normal(q_shape).astype(np.float32), ms_type)
    extra = {}
    if kv_dtype == "int8":
        k = Tensor(rng.integers(-128, 128, kv_shape).astype(np.int8))
        v = Tensor(rng.integers(-128, 128, kv_shape).astype(np.int8))
        extra["antiquant_scale"] = Tensor(np.full((2,), 0.01, np.float32), ms_type)
        kv_bytes = 2 * b * kvn * s * d
    else:
        k = Tensor(rng.standard_normal(kv_shape).astype(np.float32), ms_type)
        v = Tensor(rng.standard_normal(kv_shape).astype(np.float32), ms_type)
        kv_bytes = 2 * b * kvn * s * d * 2

    def call():
        ops.incre_flash_attention(q, [k], [v], num_heads=n, num_key_value_heads=kvn, input_layout=layout,
                                  scale_value=d ** -0.5, **extra).asnumpy()

    call()
    seconds = _best(call, repeats)
    return {"shape": f"B={b} N={n} kvN={kvn} S={s} D={d} {layout} q={dtype} kv={kv_dtype}",
            "ms": seconds * 1e3, "kv_GBps": kv_bytes / seconds / 1e9}


def main(quick=False):
    ms.set_context(mode=ms.PYNATIVE_MODE)
    env = environment()
    limits = machine_limits(256 if quick else 512)
    print("environment:", json.dumps(env))
    fma = limits["fp32_fma_GFLOPs"]
    print(f"machine limits: streaming read {limits['read_GBps']:.1f} GB/s, copy {limits['copy_GBps']:.1f} GB/s, "
          f"fp32 FMA peak (kernel library loop) {'n/a' if fma is None else f'{fma:.0f} GFLOP/s'}")
    rows = []
    for shape in (SHAPES[:2] if quick else SHAPES):
        row = bench_shape(*shape, repeats=3 if quick else 10)
        row["of_read_bw"] = row["kv_GBps"] / limits["read_GBps"]
        row["of_copy_bw"] = row["kv_GBps"] / limits["copy_GBps"]
        rows.append(row)
        print(f"{row['shape']:58s} {row['ms']:8.3f} ms  K/V {row['kv_GBps']:6.1f} GB/s  "
              f"= {row['of_read_bw']:.2f} x read bw, {row['of_copy_bw']:.2f} x copy bw", flush=True)
    prefill = bench_prefill.run(fma, quick=quick) if fma else []
    training = bench_training.run(fma, quick=quick) if fma else []
    sparse = bench_sparse.run(limits["read_GBps"], fma, quick=quick)
    return {"environment": env, "limits": limits, "results": rows, "prefill": prefill, "training": training,
            "sparse": sparse}
