"""Decode benchmark: incre_flash_attention (Sq = 1) through the public API, contiguous and paged, and the
small-shape PyNative latency case.

Decode reads every K/V byte once, so its limit is the memory read bandwidth: each row reports the K/V bytes
over the time as a fraction of the read bandwidth measured in the same run (`of_read_bw`, the issue's target)
and of the roofline (`of_roof`). The roof is min(read bandwidth, compute peak / flops per K/V byte): with
G = N / kvN query heads per KV head every K element takes G multiply-adds (scores) and every V element G more
(P.V), so 2 * G flops per element, 4 * B * N * S * D flops in all, and 2 * G / (bytes per element) flops per
byte. The compute peak is the one of the instructions the kernel uses: the vdpbf16ps peak for bf16 K/V when
the library has AVX512_BF16, else the fp32 FMA peak (fp16 and int8 are widened to fp32).

Paged decode reads the same K/V from a block cache (block_size 128, blocks in a shuffled order,
(num_blocks, kvN, block_size, D)) and is reported as its time over the contiguous time of the same shape/mode,
the two calls timed in turn.
"""
import numpy as np
import mindspore as ms
from mindspore import nn
from mindspore import ops as ms_ops

from ms_attention import bench_compare, ops
from ms_attention.bench_common import (SHORT, best_time, best_times_alternating, execution_mode, median_time,
                                       ms_tensor, progress, random_values, row, speedups)

SHAPES = [(8, 32, 8, 4096, 128), (4, 40, 40, 8192, 128), (1, 32, 8, 32768, 128)]  # B, N, kvN, S, D
QUICK_SHAPES = SHAPES[:1]
SMOKE_SHAPES = [(2, 4, 2, 256, 32)]
DTYPES = ["float16", "bfloat16", "int8"]   # K/V dtype (the query is fp16 for int8 K/V)
BLOCK_SIZE = 128
LATENCY_SHAPE = (1, 8, 8, 256, 64)
COMPOSED_CAP_BYTES = 256 * 2 ** 20         # fp32 K + V of the batch entries a composed run uses
TARGETS = {"float16": 0.75, "bfloat16": 0.75, "int8": 0.60}
PAGED_TARGET = 1.10
NOTES = {"float16": [], "bfloat16": ["MindSpore composed fp16: n/a (bf16 input; CPU BatchMatMul has no bf16)"],
         "int8": ["torch and MindSpore composed: n/a for int8 K/V"]}


class _Decode(nn.Cell):
    def __init__(self, kwargs):
        super().__init__()
        self.kwargs = kwargs

    def construct(self, q, k, v):
        return ops.incre_flash_attention(q, [k], [v], **self.kwargs)


def roof_gbps(limits, kv_dtype, group):
    """min(read bandwidth, compute peak / flops per K/V byte) for this K/V dtype and GQA group size."""
    element_bytes = 1 if kv_dtype == "int8" else 2
    peak = limits.get("fp32_fma_GFLOPs")
    if kv_dtype == "bfloat16" and limits.get("bf16_dot_GFLOPs"):
        peak = limits["bf16_dot_GFLOPs"]
    read = limits.get("read_GBps")
    if peak is None or read is None:
        return read
    return min(read, peak / (2.0 * group / element_bytes))


def paged_cache(values, block_size, order):
    """(cache (num_blocks, kvN, block_size, D), block_table (B, blocks per sequence)) holding values
    (B, kvN, S, D): block j of sequence b is stored at order[b * blocks per sequence + j]."""
    b, kvn, s, d = values.shape
    per_seq = s // block_size
    blocks = values.reshape(b, kvn, per_seq, block_size, d).transpose(0, 2, 1, 3, 4).reshape(b * per_seq, kvn,
                                                                                              block_size, d)
    cache = np.empty_like(blocks)
    cache[order] = blocks
    return cache, order.reshape(b, per_seq).astype(np.int32)


def _inputs(shape, rng):
    b, n, kvn, s, d = shape
    q = random_values(rng, (b, n, 1, d), "float32")
    k = random_values(rng, (b, kvn, s, d), "float32")
    v = random_values(rng, (b, kvn, s, d), "float32")
    return q, k, v


def _alternatives(settings, q, k, v, scale):
    """torch seconds per K/V dtype and MindSpore composed seconds per compute dtype, on these values."""
    b, kvn = k.shape[0], k.shape[1]
    torch_s, composed_s, notes = {}, {}, []
    torch = settings.torch
    if torch is not None:
        for dtype in ("float16", "bfloat16"):
            torch_s[dtype] = best_time(bench_compare.torch_attention(torch, q, k, v, dtype, scale, False),
                                       settings.repeats, settings.budget_s)
    per_entry = 2 * k.shape[2] * k.shape[3] * 4
    entries = bench_compare.composed_batch(b, kvn, per_entry, COMPOSED_CAP_BYTES, settings.threads)
    for dtype in ("float16", "float32"):
        composed = bench_compare.ComposedAttention(q, k, v, dtype, scale, False, entries)
        composed_s[dtype] = best_time(lambda: composed.call().asnumpy(), settings.repeats,
                                      settings.budget_s) * composed.scaled_by
    if entries < b * kvn:
        notes.append(f"MindSpore composed timed on {entries} of {b * kvn} (batch, KV head) entries, scaled")
    return torch_s, composed_s, notes


def run(settings):
    """Contiguous and paged decode rows for every shape, K/V dtype and mode."""
    rng = np.random.default_rng(0)
    limits = settings.limits
    rows = []
    for shape in settings.pick(SHAPES, QUICK_SHAPES, SMOKE_SHAPES):
        b, n, kvn, s, d = shape
        q, k, v = _inputs(shape, rng)
        scale = d ** -0.5
        torch_s, composed_s, notes = _alternatives(settings, q, k, v, scale)
        block_size = BLOCK_SIZE if s % BLOCK_SIZE == 0 else 32
        order = rng.permutation(b * s // block_size)
        k_cache, block_table = paged_cache(k, block_size, order)
        v_cache, _ = paged_cache(v, block_size, order)
        for kv_dtype in DTYPES:
            q_dtype = "float16" if kv_dtype == "int8" else kv_dtype
            element_bytes = 1 if kv_dtype == "int8" else 2
            kwargs = dict(num_heads=n, num_key_value_heads=kvn, input_layout="BNSD", scale_value=scale)
            if kv_dtype == "int8":
                to_int8 = lambda x: np.clip(np.round(x * 127), -127, 127)  # noqa: E731
                k_in, v_in, kc_in, vc_in = (to_int8(x) for x in (k, v, k_cache, v_cache))
                kwargs["antiquant_scale"] = ms_tensor(np.full((2,), 1 / 127, np.float32), "float16")
            else:
                k_in, v_in, kc_in, vc_in = k, v, k_cache, v_cache
            tq = ms_tensor(q, q_dtype)
            contiguous = (tq, ms_tensor(k_in, kv_dtype), ms_tensor(v_in, kv_dtype))
            paged = (tq, ms_tensor(kc_in, kv_dtype), ms_tensor(vc_in, kv_dtype))
            paged_kwargs = dict(kwargs, block_table=ms.Tensor(block_table), actual_seq_lengths=[s] * b,
                                block_size=block_size)
            kv_bytes = 2.0 * b * kvn * s * d * element_bytes
            roof = roof_gbps(limits, kv_dtype, n // kvn)
            case = f"decode {SHORT[kv_dtype]} B={b} N={n} kvN={kvn} S={s} D={d}"
            for mode in ("pynative", "graph"):
                with execution_mode(mode):
                    cell, paged_cell = _Decode(kwargs), _Decode(paged_kwargs)
                    seconds, paged_seconds = best_times_alternating(
                        [lambda: cell(*contiguous).asnumpy(), lambda: paged_cell(*paged).asnumpy()],
                        settings.repeats, settings.budget_s)
                gbps = kv_bytes / seconds / 1e9
                fields = dict(shape=dict(B=b, N=n, kvN=kvn, S=s, D=d, layout="BNSD", q=q_dtype, kv=kv_dtype),
                              unit="GB/s", value=gbps, limit="read bw",
                              of_limit=gbps / limits["read_GBps"] if limits.get("read_GBps") else None,
                              roof_GBps=roof, of_roof=gbps / roof if roof else None,
                              torch_ms=torch_s[kv_dtype] * 1e3 if kv_dtype in torch_s else None,
                              ms_fp16_ms=composed_s["float16"] * 1e3 if kv_dtype == "float16" else None,
                              ms_fp32_ms=composed_s["float32"] * 1e3 if kv_dtype != "int8" else None,
                              target=f">= {TARGETS[kv_dtype]:.2f} x read bw", target_value=TARGETS[kv_dtype],
                              notes=list(notes) + NOTES[kv_dtype])
                result = row("decode", case, mode, seconds, **fields)
                speedups(result)
                progress(result)
                rows.append(result)
                paged_row = row("paged", f"paged bs={block_size} {case}", mode, paged_seconds,
                                shape=fields["shape"], unit="GB/s", value=kv_bytes / paged_seconds / 1e9,
                                limit="read bw",
                                of_limit=kv_bytes / paged_seconds / 1e9 / limits["read_GBps"]
                                if limits.get("read_GBps") else None,
                                contiguous_ms=seconds * 1e3, time_over_contiguous=paged_seconds / seconds,
                                target=f"<= {PAGED_TARGET:.2f} x contiguous", target_value=PAGED_TARGET)
                progress(paged_row)
                rows.append(paged_row)
    return rows


def latency(settings):
    """Per-call time of a tiny fp16 decode in PyNative (each call followed by .asnumpy(), median of many) against
    native MindSpore CPU ops on the same inputs, called the same way in the same run: BatchMatMul(q, k^T) in fp16
    and fp32 (the first half of the attention as one op), Add(k, k) and Softmax over the (1, N, 1, S) scores in
    fp16 (ops with almost no work: the per-call cost of PyNative itself). The target is judged against the
    fastest of them. Once with PyNative's default asynchronous launch, once with pynative_synchronize=True."""
    b, n, kvn, s, d = LATENCY_SHAPE
    rng = np.random.default_rng(1)
    q, k, v = _inputs(LATENCY_SHAPE, rng)
    ms.set_context(mode=ms.PYNATIVE_MODE)
    tq, tk, tv = (ms_tensor(x, "float16") for x in (q, k, v))
    kwargs = dict(num_heads=n, num_key_value_heads=kvn, input_layout="BNSD", scale_value=d ** -0.5)
    calls = settings.pick(400, 200, 20)
    matmul = ms_ops.BatchMatMul(transpose_b=True)
    q32, k32 = ms_tensor(q, "float32"), ms_tensor(k, "float32")
    scores = ms_tensor(random_values(rng, (b, n, 1, s), "float16"), "float16")
    candidates = {"BatchMatMul(q, k^T) fp16": lambda: matmul(tq, tk).asnumpy(),
                  "BatchMatMul(q, k^T) fp32": lambda: matmul(q32, k32).asnumpy(),
                  "Add(k, k) fp16": lambda: ms_ops.add(tk, tk).asnumpy(),
                  "Softmax(scores) fp16": lambda: ms_ops.softmax(scores, -1).asnumpy()}
    rows = []
    for synchronize in (False, True):
        ms.set_context(pynative_synchronize=synchronize)
        try:
            ours = median_time(lambda: ops.incre_flash_attention(tq, [tk], [tv], **kwargs).asnumpy(), calls)
            native = {name: median_time(fn, calls) for name, fn in candidates.items()}
        finally:
            ms.set_context(pynative_synchronize=False)
        reference = min(native, key=native.get)
        result = row("latency", f"latency decode fp16 B={b} N={n} S={s} D={d}",
                     "pynative_sync" if synchronize else "pynative", ours,
                     shape=dict(B=b, N=n, kvN=kvn, S=s, D=d, layout="BNSD", q="float16", kv="float16"),
                     unit=None, value=None, native_op=reference, native_op_ms=native[reference] * 1e3,
                     native_ops_ms={name: seconds * 1e3 for name, seconds in native.items()},
                     time_over_native_op=ours / native[reference], target="<= 1.50 x native op",
                     target_value=1.5)
        progress(result)
        rows.append(result)
    return rows
