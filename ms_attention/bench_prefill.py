"""Prefill benchmark: prompt_flash_attention through the public API, as a fraction of the machine's fp32 FMA peak
measured in the same run, and against torch SDPA and MindSpore's composed attention on the same inputs.

Prefill is compute bound: Q.K^T and P.V are 4 * D flops per (query, visible key) pair and head. Causal runs
(sparse_mode 3 with the (2048, 2048) compressed mask) count only the pairs the causal mask keeps,
S * (S + 1) / 2, so a kernel that skips masked blocks and one that computes and discards them are told apart;
torch runs `is_causal=True` and is timed on the same count. Each shape runs in Graph mode (an nn.Cell) and in
PyNative. bf16 rows are judged against the fp32 FMA peak too (the issue's limit); with AVX512_BF16 the bf16 dot
peak is higher, so the JSON also gives the fraction of that (`of_bf16_peak`).
"""
import numpy as np
import mindspore as ms
from mindspore import nn

from ms_attention import bench_compare, ops
from ms_attention.bench_common import (SHORT, best_time, best_times_alternating, execution_mode, ms_tensor,
                                       progress, random_values, row, speedups)

SHAPES = [(1, 32, 2048, 128), (1, 8, 8192, 128)]   # B, N, S, D (MHA: kvN = N)
CASES = [(dtype, causal) for dtype in ("float16", "bfloat16") for causal in (False, True)]
QUICK_CASES = [("float16", False), ("bfloat16", True)]
SMOKE_SHAPES = [(1, 4, 128, 32)]
COMPOSED_CAP_BYTES = 64 * 2 ** 20       # fp32 scores of the heads and query rows a composed run uses
PEAK_TARGET, TORCH_TARGET = 0.5, 1.5
CAUSAL_MASK_SIZE = 2048


def visible_pairs(s, causal):
    return s * (s + 1) // 2 if causal else s * s


def causal_mask():
    """The compressed (2048, 2048) mask sparse_mode 3 takes (True above the diagonal: discarded)."""
    return ms.Tensor(np.triu(np.ones((CAUSAL_MASK_SIZE, CAUSAL_MASK_SIZE), np.bool_), 1))


class _Prefill(nn.Cell):
    def __init__(self, n, d, extra):
        super().__init__()
        self.n, self.scale, self.extra = n, d ** -0.5, extra

    def construct(self, q, k, v):
        return ops.prompt_flash_attention(q, k, v, num_heads=self.n, scale_value=self.scale, input_layout="BNSD",
                                          **self.extra)


def _composed(settings, q, k, v, scale, causal):
    b, n, s, _ = q.shape
    entries = bench_compare.composed_batch(b, n, s * s * 4, COMPOSED_CAP_BYTES, settings.threads)
    rows = bench_compare.composed_rows(s, s, entries, COMPOSED_CAP_BYTES)
    seconds = {}
    for dtype in ("float16", "float32"):
        composed = bench_compare.ComposedAttention(q, k, v, dtype, scale, causal, entries, rows)
        seconds[dtype] = best_time(lambda: composed.call().asnumpy(), min(settings.repeats, 2),
                                   settings.budget_s) * composed.scaled_by
    notes = [] if entries == b * n and rows == s else \
        [f"MindSpore composed timed on {entries} of {b * n} heads and {rows} of {s} query rows, scaled"]
    return seconds, notes


def run(settings):
    rng = np.random.default_rng(2)
    limits = settings.limits
    fma, bf16_peak = limits.get("fp32_fma_GFLOPs"), limits.get("bf16_dot_GFLOPs")
    rows = []
    for shape in settings.pick(SHAPES, SHAPES[:1], SMOKE_SHAPES):
        b, n, s, d = shape
        q, k, v = (random_values(rng, (b, n, s, d), "float32") for _ in range(3))
        scale = d ** -0.5
        composed = {}
        for dtype, causal in settings.pick(CASES, QUICK_CASES, CASES):
            flops = 4.0 * b * n * visible_pairs(s, causal) * d
            if causal not in composed:
                composed[causal] = _composed(settings, q, k, v, scale, causal)
            composed_s, notes = composed[causal]
            torch_call = None
            if settings.torch is not None:
                torch_call = bench_compare.torch_attention(settings.torch, q, k, v, dtype, scale, causal)
            tq, tk, tv = (ms_tensor(x, dtype) for x in (q, k, v))
            extra = dict(attn_mask=causal_mask(), sparse_mode=3) if causal else {}
            case = f"prefill {SHORT[dtype]} {'causal' if causal else 'full'} B={b} N={n} S={s} D={d}"
            for mode in ("graph", "pynative"):
                with execution_mode(mode):
                    cell = _Prefill(n, d, extra)
                    ours = lambda: cell(tq, tk, tv).asnumpy()  # noqa: E731
                    if torch_call is None:
                        seconds, torch_ms = best_time(ours, settings.repeats, settings.budget_s), None
                    else:  # in turn with torch, so that the ratio sees the same load
                        seconds, torch_s = best_times_alternating([ours, torch_call], settings.repeats,
                                                                  settings.budget_s)
                        torch_ms = torch_s * 1e3
                gflops = flops / seconds / 1e9
                result = row("prefill", case, mode, seconds,
                             shape=dict(B=b, N=n, S=s, D=d, layout="BNSD", dtype=dtype, causal=causal),
                             unit="GFLOP/s", value=gflops, flops=flops, limit="fp32 FMA peak",
                             of_limit=gflops / fma if fma else None,
                             of_bf16_peak=gflops / bf16_peak if bf16_peak and dtype == "bfloat16" else None,
                             torch_ms=torch_ms,
                             ms_fp16_ms=composed_s["float16"] * 1e3 if dtype == "float16" else None,
                             ms_fp32_ms=composed_s["float32"] * 1e3 if dtype == "float16" else None,
                             target=f">= {PEAK_TARGET:.2f} x peak and >= {TORCH_TARGET:.1f} x torch",
                             notes=notes if dtype == "float16" else
                             ["MindSpore composed: n/a (CPU BatchMatMul has no bf16)"])
                speedups(result)
                progress(result)
                rows.append(result)
    return rows
