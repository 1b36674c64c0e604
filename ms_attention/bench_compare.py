"""The alternatives the benchmark compares against, on the same inputs (numpy BNSD arrays of the same values).

- torch `scaled_dot_product_attention` on CPU, when torch is importable: the same dtype, GQA through
  `enable_gqa=True` (no copy of K/V), causal through `is_causal=True` (top-left, which equals sparse_mode 3 for
  square prefill), training through autograd. The caller sets torch's threads to the kernel pool's.
- MindSpore's composed-ops attention in PyNative: BatchMatMul(Q, K^T) * scale, (masked_fill for causal),
  Softmax, BatchMatMul(P, V), every op in the same dtype (fp16 or fp32; MindSpore's CPU BatchMatMul has no
  bf16). GQA without copying K/V: the G query heads of a KV head become G rows of one batch entry, so the batch
  axis is (B * kvN). Large shapes run on a subset of that batch axis (a multiple of the thread count) and, for
  prefill, of the query rows, and the time is scaled by the ratio: batch entries are independent, equal work,
  and the composed ops compute every (query, key) score whatever the mask, so their work is linear in the rows.
"""
import numpy as np
import mindspore as ms
from mindspore import ops as ms_ops


def torch_module():
    """torch, or None when it is not installed."""
    try:
        import torch
    except ImportError:
        return None
    return torch


def _torch_tensor(torch, values, dtype, requires_grad=False):
    tensor = torch.from_numpy(np.ascontiguousarray(values)).to({"float16": torch.float16, "bfloat16": torch.bfloat16,
                                                               "float32": torch.float32}[dtype])
    return tensor.requires_grad_(requires_grad)


def torch_attention(torch, q, k, v, dtype, scale, causal):
    """A call running torch SDPA on q (B, N, Sq, D), k/v (B, kvN, S, D); returns its output as float32 numpy."""
    tq, tk, tv = (_torch_tensor(torch, x, dtype) for x in (q, k, v))
    gqa = q.shape[1] != k.shape[1]
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def call():
        with torch.no_grad():
            out = sdpa(tq, tk, tv, is_causal=causal, scale=scale, enable_gqa=gqa)
        return out.float().numpy()
    return call


def torch_training_step(torch, q, k, v, weight, dtype, scale, causal):
    """A call running SDPA forward + backward (autograd) of sum(out * weight); returns dq, dk, dv as float32."""
    tq, tk, tv = (_torch_tensor(torch, x, dtype, requires_grad=True) for x in (q, k, v))
    tw = torch.from_numpy(np.ascontiguousarray(weight))
    gqa = q.shape[1] != k.shape[1]
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def call():
        for t in (tq, tk, tv):
            t.grad = None
        out = sdpa(tq, tk, tv, is_causal=causal, scale=scale, enable_gqa=gqa)
        (out.float() * tw).sum().backward()
        return [t.grad.float().numpy() for t in (tq, tk, tv)]
    return call


def composed_batch(b, kv_heads, per_entry_bytes, cap_bytes, threads):
    """How many of the B * kvN batch entries a composed run uses: all of them when their bytes fit `cap_bytes`,
    else the largest multiple of `threads` that fits (at least `threads`)."""
    total = b * kv_heads
    if total * per_entry_bytes <= cap_bytes:
        return total
    threads = max(1, threads or 1)
    fit = int(cap_bytes // per_entry_bytes) // threads * threads
    return min(total, max(threads, fit))


def composed_rows(sq, s, entries, cap_bytes):
    """How many query rows (of sq) a composed prefill run on `entries` batch entries uses: all when their float32
    scores fit `cap_bytes`, else the largest multiple of 256 that fits (at least 256)."""
    fit = int(cap_bytes // (entries * s * 4))
    return sq if fit >= sq else min(sq, max(256, fit // 256 * 256))


class ComposedAttention:
    """MindSpore ops attention on the first `entries` of the (B * kvN) batch axis and the first `rows` query rows
    (with G = 1), in `dtype` (float16/float32).

    `call()` runs it and returns the output tensor (entries, G * rows, D); `output()` gives the full-size result
    as (B, N, Sq, D) float32 numpy when every entry and row was used."""

    def __init__(self, q, k, v, dtype, scale, causal, entries=None, rows=None):
        b, n, sq, d = q.shape
        kvn, s = k.shape[1], k.shape[2]
        g = n // kvn
        self.shape, self.total = (b, n, sq, d), b * kvn
        self.entries = self.total if entries is None else entries
        self.rows = sq if rows is None else rows
        if self.rows != sq and g != 1:
            raise ValueError("a subset of query rows needs G == 1")
        np_dtype = np.float16 if dtype == "float16" else np.float32
        rows = q.reshape(b, kvn, g, sq, d)[:, :, :, :self.rows].reshape(b * kvn, g * self.rows, d)[:self.entries]
        self.q = ms.Tensor(rows.astype(np_dtype))
        self.k = ms.Tensor(k.reshape(b * kvn, s, d)[:self.entries].astype(np_dtype))
        self.v = ms.Tensor(v.reshape(b * kvn, s, d)[:self.entries].astype(np_dtype))
        self.scale = scale
        self.mask = None
        if causal:
            discard = np.triu(np.ones((sq, s), np.bool_), 1 + s - sq)  # bottom-right aligned (sparse_mode 3)
            self.mask = ms.Tensor(np.tile(discard[:self.rows], (g, 1)))
        self.scores = ms_ops.BatchMatMul(transpose_b=True)
        self.weighted = ms_ops.BatchMatMul()

    @property
    def scaled_by(self):
        """The factor from the measured subset to the whole problem."""
        return self.total / self.entries * self.shape[2] / self.rows

    def call(self):
        scores = self.scores(self.q, self.k) * self.scale
        if self.mask is not None:
            scores = ms_ops.masked_fill(scores, self.mask, float("-inf"))
        return self.weighted(ms_ops.softmax(scores, -1), self.v)

    def output(self):
        b, n, sq, d = self.shape
        kvn = self.total // b
        out = self.call().asnumpy().astype(np.float32)
        return out.reshape(b, kvn, n // kvn, sq, d).reshape(b, n, sq, d)
