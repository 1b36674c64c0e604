"""Training benchmark: flash_attention_score forward + backward through the public API and MindSpore autodiff
(`mindspore.grad`), against torch SDPA forward + autograd backward on the same inputs, and as a fraction of the
fp32 FMA peak measured in the same run.

Shape B=1 N=16 S=2048 D=128 bfloat16 BNSD, causal (sparse_mode 3 with the (2048, 2048) compressed mask, which
equals sparse_mode 2 when S1 == S2; torch `is_causal=True`) and full. FLOPs: the forward is 4 * D per visible
(query, key) pair and head (S^2, or S (S + 1) / 2 causal), the backward 2.5 times that (it recomputes Q.K^T and
adds dO.V^T, dV, dK and dQ: five products instead of two), so forward + backward is 3.5 times the forward. The
loss is sum(out * w) with a fixed random float32 w, so dO is dense. Each step runs in Graph mode (an nn.Cell)
and in PyNative; the forward alone is timed too, so the backward's share shows.
"""
import numpy as np
import mindspore as ms
from mindspore import nn

from ms_attention import bench_compare, ops
from ms_attention.bench_common import (SHORT, best_time, best_times_alternating, execution_mode, ms_tensor, progress,
                                       random_values, row, speedups)
from ms_attention.bench_prefill import causal_mask, visible_pairs

SHAPE = (1, 16, 2048, 128, "bfloat16")  # B, N, S, D, dtype
QUICK_SHAPE = (1, 16, 1024, 128, "bfloat16")
SMOKE_SHAPE = (1, 2, 128, 32, "bfloat16")
BACKWARD_FACTOR = 2.5
TORCH_TARGET = 1.0


class _Attention(nn.Cell):
    def __init__(self, n, d, causal):
        super().__init__()
        self.n, self.scale = n, d ** -0.5
        self.mask, self.sparse_mode = (causal_mask(), 3) if causal else (None, 0)

    def construct(self, q, k, v):
        return ops.flash_attention_score(q, k, v, self.n, attn_mask=self.mask, scalar_value=self.scale,
                                         input_layout="BNSD", sparse_mode=self.sparse_mode)


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


def run(settings):
    b, n, s, d, dtype = settings.pick(SHAPE, QUICK_SHAPE, SMOKE_SHAPE)
    rng = np.random.default_rng(3)
    q, k, v = (random_values(rng, (b, n, s, d), "float32") for _ in range(3))
    weight = rng.standard_normal((b, n, s, d)).astype(np.float32)
    tq, tk, tv = (ms_tensor(x, dtype) for x in (q, k, v))
    tw = ms.Tensor(weight)
    fma = settings.limits.get("fp32_fma_GFLOPs")
    scale = d ** -0.5
    rows = []
    for causal in (True, False):
        forward = 4.0 * b * n * visible_pairs(s, causal) * d
        torch_calls = {}
        if settings.torch is not None:
            torch_calls["forward"] = bench_compare.torch_attention(settings.torch, q, k, v, dtype, scale, causal)
            torch_calls["forward+backward"] = bench_compare.torch_training_step(settings.torch, q, k, v, weight,
                                                                                dtype, scale, causal)
        for mode in ("graph", "pynative"):
            with execution_mode(mode):
                attention = _Attention(n, d, causal)
                step = _TrainStep(_Loss(attention, tw))
                for what, fn, flops in (("forward", lambda: attention(tq, tk, tv).asnumpy(), forward),
                                        ("forward+backward", lambda: [g.asnumpy() for g in step(tq, tk, tv)],
                                         (1 + BACKWARD_FACTOR) * forward)):
                    if what in torch_calls:  # in turn with torch, so that the ratio sees the same load
                        seconds, torch_s = best_times_alternating([fn, torch_calls[what]], settings.repeats,
                                                                  settings.budget_s)
                        torch_ms = torch_s * 1e3
                    else:
                        seconds, torch_ms = best_time(fn, settings.repeats, settings.budget_s), None
                    gflops = flops / seconds / 1e9
                    result = row("training", f"training {what} {SHORT[dtype]} {'causal' if causal else 'full'} "
                                             f"B={b} N={n} S={s} D={d}", mode, seconds,
                                 shape=dict(B=b, N=n, S=s, D=d, layout="BNSD", dtype=dtype, causal=causal), what=what,
                                 unit="GFLOP/s", value=gflops, flops=flops, limit="fp32 FMA peak",
                                 of_limit=gflops / fma if fma else None, torch_ms=torch_ms,
                                 target=f">= {TORCH_TARGET:.1f} x torch" if what == "forward+backward" else None,
                                 notes=["MindSpore composed: n/a (CPU BatchMatMul has no bf16)"])
                    speedups(result)
                    progress(result)
                    rows.append(result)
    return rows
