"""Training benchmark: flash_attention_score forward + backward through the public API and MindSpore autodiff
(`mindspore.grad`), as a fraction of the machine's fp32 FMA peak measured in the same run.

The shape is B=1 N=16 S=2048 D=128 bfloat16, BNSD, causal: sparse_mode 3 (right-down causal, which equals
sparse_mode 2 when S1 == S2) with the (2048, 2048) compressed mask MindSpore networks pass. FLOPs are counted as
the causal forward, 4 * N * S^2 * D / 2 (Q.K^T and P.V over the half of the pairs the mask keeps), and the
backward as 2.5 times that (it recomputes Q.K^T and adds dO.V^T, dV, dK and dQ: five products instead of two),
so forward + backward is 3.5 times the forward. The loss is sum(out * w) with a fixed random w, so dO is dense.
Each step runs in Graph mode (an nn.Cell) and in PyNative; the forward alone is timed too, so the backward's
share shows. PyNative's asynchronous waiter costs a long kernel a core on a small machine (bench_prefill.py).
The fractions use the run's FMA peak, as the prefill rows do; the peak is measured again around this section and
printed, since on a shared machine it can move between sections.
"""
import time

import numpy as np
import mindspore as ms
from mindspore import Tensor, nn

from ms_attention import machine, ops

SHAPE = (1, 16, 2048, 128, "bfloat16")  # B, N, S, D, dtype
QUICK_SHAPE = (1, 16, 1024, 128, "bfloat16")
SPARSE_MODE = 3
BACKWARD_FACTOR = 2.5


def forward_flops(b, n, s, d):
    """The causal forward's count: 4 * D flops per (query, key) pair and head, over S^2 / 2 pairs."""
    return 4.0 * b * n * s * s * d / 2


class _Attention(nn.Cell):
    def __init__(self, n, d, mask):
        super().__init__()
        self.n, self.scale, self.mask = n, d ** -0.5, mask

    def construct(self, q, k, v):
        return ops.flash_attention_score(q, k, v, self.n, attn_mask=self.mask, scalar_value=self.scale,
                                         input_layout="BNSD", sparse_mode=SPARSE_MODE)


class _Loss(nn.Cell):
    def __init__(self, attention, weight):
        super().__init__()
        self.attention, self.weight = attention, weight

    def construct(self, q, k, v):
        return (self.attention(q, k, v).astype(ms.float32) * self.weight).sum()


class _TrainStep(nn.Cell):
    """The loss's gradients with respect to query, key and value (mindspore.grad)."""

    def __init__(self, loss):
        super().__init__()
        self.grad = ms.grad(loss, grad_position=(0, 1, 2))

    def construct(self, q, k, v):
        return self.grad(q, k, v)


def _best(fn, repeats):
    fn()  # compile / warm up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def bench(b, n, s, d, dtype, mode, repeats):
    rng = np.random.default_rng(0)
    ms_type = {"float16": ms.float16, "bfloat16": ms.bfloat16}[dtype]
    q, k, v = (Tensor(rng.standard_normal((b, n, s, d)).astype(np.float32), ms_type) for _ in range(3))
    weight = Tensor(rng.standard_normal((b, n, s, d)).astype(np.float32))
    mask = Tensor(np.triu(np.ones((2048, 2048), np.bool_), 1))
    ms.set_context(mode=ms.GRAPH_MODE if mode == "graph" else ms.PYNATIVE_MODE)
    attention = _Attention(n, d, mask)
    step = _TrainStep(_Loss(attention, weight))
    rows = []
    fwd = forward_flops(b, n, s, d)
    for what, fn, flops in (("forward", lambda: attention(q, k, v).asnumpy(), fwd),
                            ("forward+backward", lambda: [g.asnumpy() for g in step(q, k, v)],
                             (1 + BACKWARD_FACTOR) * fwd)):
        seconds = _best(fn, repeats)
        rows.append({"shape": f"training {what} B={b} N={n} S={s} D={d} BNSD {dtype} causal "
                              f"(sparse_mode {SPARSE_MODE}) {mode}",
                     "what": what, "mode": mode, "ms": seconds * 1e3, "GFLOPs": flops / seconds / 1e9})
    ms.set_context(mode=ms.PYNATIVE_MODE)
    return rows


def run(fma_peak_gflops, quick=False):
    """Times the training step in Graph mode and PyNative; each row gets its fraction of the fp32 FMA peak."""
    print(f"training: FLOPs counted as forward 4*N*S^2*D/2 (causal) and backward {BACKWARD_FACTOR}x forward",
          flush=True)
    shape = QUICK_SHAPE if quick else SHAPE
    rows = []
    before = machine.fp32_fma_gflops()
    for mode in ("graph", "pynative"):
        for row in bench(*shape, mode=mode, repeats=2 if quick else 3):
            row["of_fma_peak"] = row["GFLOPs"] / fma_peak_gflops
            rows.append(row)
            print(f"{row['shape']:86s} {row['ms']:9.1f} ms  {row['GFLOPs']:7.1f} GFLOP/s  "
                  f"= {row['of_fma_peak']:.2f} x fp32 FMA peak", flush=True)
    after = machine.fp32_fma_gflops()
    if before and after:
        print(f"training: fp32 FMA peak measured again around this section: {before:.0f} GFLOP/s before, "
              f"{after:.0f} after (the run's: {fma_peak_gflops:.0f})", flush=True)
    return rows
