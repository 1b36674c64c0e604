"""Prefill benchmark: prompt_flash_attention through the public API, as a fraction of the machine's fp32 FMA peak
measured in the same run.

Prefill is compute bound: Q.K^T and P.V are 4 * D flops per (query, visible key) pair and head. Causal runs
count only the pairs the causal mask keeps (about half), so a kernel that skips masked blocks and one that
computes and discards them are told apart.
"""
import time

import numpy as np
import mindspore as ms
from mindspore import Tensor

from ms_attention import ops

SHAPES = [  # (B, N, S, D, dtype, causal)
    (1, 32, 2048, 128, "float16", False),
    (1, 32, 2048, 128, "float16", True),
    (1, 32, 2048, 128, "bfloat16", False),
    (1, 32, 2048, 128, "bfloat16", True),
    (1, 8, 8192, 128, "float16", False),
    (1, 8, 8192, 128, "float16", True),
    (1, 8, 8192, 128, "bfloat16", False),
    (1, 8, 8192, 128, "bfloat16", True),
]
QUICK_SHAPES = SHAPES[:2]
_CAUSAL_MASK = np.triu(np.ones((2048, 2048), np.bool_), 1)  # the compressed mask of sparse_mode 3


def visible_pairs(s, causal):
    return s * (s + 1) // 2 if causal else s * s


def bench_shape(b, n, s, d, dtype, causal, repeats):
    rng = np.random.default_rng(0)
    ms_type = {"float16": ms.float16, "bfloat16": ms.bfloat16}[dtype]
    q, k, v = (Tensor(rng.standard_normal((b, n, s, d)).astype(np.float32), ms_type) for _ in range(3))
    extra = dict(attn_mask=Tensor(_CAUSAL_MASK), sparse_mode=3) if causal else {}

    def call():
        ops.prompt_flash_attention(q, k, v, num_heads=n, scale_value=d ** -0.5, input_layout="BNSD",
                                   **extra).asnumpy()

    call()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - start)
    flops = 4.0 * b * n * visible_pairs(s, causal) * d
    return {"shape": f"prefill B={b} N={n} S={s} D={d} BNSD {dtype} {'causal' if causal else 'full'}",
            "ms": best * 1e3, "GFLOPs": flops / best / 1e9}


def run(fma_peak_gflops, quick=False):
    """Times every prefill shape; each row gets its fraction of the fp32 FMA peak."""
    ms.set_context(mode=ms.PYNATIVE_MODE)
    rows = []
    for shape in (QUICK_SHAPES if quick else SHAPES):
        row = bench_shape(*shape, repeats=2 if quick else 3)
        row["of_fma_peak"] = row["GFLOPs"] / fma_peak_gflops
        rows.append(row)
        print(f"{row['shape']:58s} {row['ms']:9.1f} ms  {row['GFLOPs']:7.1f} GFLOP/s  "
              f"= {row['of_fma_peak']:.2f} x fp32 FMA peak", flush=True)
    return rows
