"""Prefill benchmark: prompt_flash_attention through the public API, as a fraction of the machine's fp32 FMA peak
measured in the same run.

Prefill is compute bound: Q.K^T and P.V are 4 * D flops per (query, visible key) pair and head. Causal runs
count only the pairs the causal mask keeps (about half), so a kernel that skips masked blocks and one that
computes and discards them are told apart. Each shape runs in Graph mode (an nn.Cell) and in PyNative. PyNative
dispatches asynchronously: while a long kernel runs, the Python thread waiting for its result keeps a core busy,
which on a 2-core machine costs the kernel a third of its speed (`ms.set_context(pynative_synchronize=True)`
avoids it); Graph mode has no such waiter.
"""
import time

import numpy as np
import mindspore as ms
from mindspore import Tensor, nn

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


class _Prefill(nn.Cell):
    def __init__(self, n, d, extra):
        super().__init__()
        self.n, self.scale, self.extra = n, d ** -0.5, extra

    def construct(self, q, k, v):
        return ops.prompt_flash_attention(q, k, v, num_heads=self.n, scale_value=self.scale, input_layout="BNSD",
                                          **self.extra)


def bench_shape(b, n, s, d, dtype, causal, mode, repeats):
    rng = np.random.default_rng(0)
    ms_type = {"float16": ms.float16, "bfloat16": ms.bfloat16}[dtype]
    q, k, v = (Tensor(rng.standard_normal((b, n, s, d)).astype(np.float32), ms_type) for _ in range(3))
    extra = dict(attn_mask=Tensor(_CAUSAL_MASK), sparse_mode=3) if causal else {}
    ms.set_context(mode=ms.GRAPH_MODE if mode == "graph" else ms.PYNATIVE_MODE)
    cell = _Prefill(n, d, extra)

    def call():
        cell(q, k, v).asnumpy()

    call()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - start)
    ms.set_context(mode=ms.PYNATIVE_MODE)
    flops = 4.0 * b * n * visible_pairs(s, causal) * d
    return {"shape": f"prefill B={b} N={n} S={s} D={d} BNSD {dtype} {'causal' if causal else 'full'} {mode}",
            "mode": mode, "ms": best * 1e3, "GFLOPs": flops / best / 1e9}


def run(fma_peak_gflops, quick=False):
    """Times every prefill shape in Graph mode and in PyNative; each row gets its fraction of the fp32 FMA peak."""
    rows = []
    for shape in (QUICK_SHAPES if quick else SHAPES):
        for mode in ("graph", "pynative"):
            row = bench_shape(*shape, mode=mode, repeats=2 if quick else 3)
            row["of_fma_peak"] = row["GFLOPs"] / fma_peak_gflops
            rows.append(row)
            print(f"{row['shape']:66s} {row['ms']:9.1f} ms  {row['GFLOPs']:7.1f} GFLOP/s  "
                  f"= {row['of_fma_peak']:.2f} x fp32 FMA peak", flush=True)
    return rows
