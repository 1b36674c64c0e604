"""The training part of `python -m ms_attention demo`: flash_attention_score forward and backward in Graph mode.

First one attention step on a packed varlen (TND) batch, causal (sparse_mode 3), GQA, bfloat16: the output and the
gradients of query, key and value (mindspore.grad through the operator's bprop, the native backward kernel) are
checked against the numpy reference. Then a small causal attention model, whose attention is
flash_attention_score with dropout, trains for a few dozen steps with nn.TrainOneStepCell; its loss must fall.
"""
import time

import numpy as np
import mindspore as ms
from mindspore import Tensor, nn
from mindspore import ops as ms_ops

from ms_attention import ops
from ms_attention.kernels.reference.training_attention import training_attention, training_attention_grad

HEADS, KV_HEADS, HEAD_DIM = 8, 2, 64
SEQ_LENS = (37, 5, 90)                       # packed into one TND batch
CAUSAL_MASK = Tensor(np.triu(np.ones((2048, 2048), np.bool_), 1))   # compressed mask of sparse_mode 3


class VarlenAttention(nn.Cell):
    def __init__(self, cu_seq_lens):
        super().__init__()
        self.cu_seq_lens = cu_seq_lens
        self.scale = 1.0 / float(np.sqrt(HEAD_DIM))

    def construct(self, q, k, v):
        return ops.flash_attention_score(q, k, v, HEADS, attn_mask=CAUSAL_MASK, actual_seq_qlen=self.cu_seq_lens,
                                         actual_seq_kvlen=self.cu_seq_lens, scalar_value=self.scale,
                                         input_layout="TND", sparse_mode=3)


class WeightedSum(nn.Cell):
    """A scalar loss of the attention output, so mindspore.grad gives dq, dk, dv for the output gradient dy."""

    def __init__(self, attention, dy):
        super().__init__()
        self.attention = attention
        self.dy = dy

    def construct(self, q, k, v):
        return (self.attention(q, k, v).astype(ms.float32) * self.dy).sum()


class CausalSelfAttention(nn.Cell):
    def __init__(self, hidden, heads):
        super().__init__()
        self.hidden, self.heads = hidden, heads
        self.qkv = nn.Dense(hidden, 3 * hidden)
        self.proj = nn.Dense(hidden, hidden)
        self.norm = nn.LayerNorm((hidden,))
        self.scale = 1.0 / float(np.sqrt(hidden // heads))

    def construct(self, x):
        q, k, v = ms_ops.split(self.qkv(self.norm(x)), self.hidden, axis=-1)
        h = ms.float16
        out = ops.flash_attention_score(q.astype(h), k.astype(h), v.astype(h), self.heads, keep_prob=0.9,
                                        scalar_value=self.scale, input_layout="BSH", sparse_mode=2)
        return x + self.proj(out.astype(ms.float32))


def _close(out, expected, rtol=0.0078125, atol=1e-4):
    """SPEC-style bfloat16 check: 99.5 % of the elements inside rtol/atol, none NaN."""
    err = np.abs(out - expected)
    inside = np.mean(err <= atol + rtol * np.abs(expected))
    return float(err.max()), bool(inside >= 0.995 and not np.isnan(out).any())


def check_step(seed=0, verbose=True):
    rng = np.random.default_rng(seed)
    tokens = sum(SEQ_LENS)
    cu_seq_lens = tuple(int(c) for c in np.cumsum(SEQ_LENS))
    q, k, v = (rng.standard_normal((tokens, n, HEAD_DIM)).astype(np.float32) for n in (HEADS, KV_HEADS, KV_HEADS))
    dy = rng.standard_normal((tokens, HEADS, HEAD_DIM)).astype(np.float32)
    bf16 = lambda a: Tensor(a, ms.bfloat16)  # noqa: E731
    q_t, k_t, v_t, dy_t = bf16(q), bf16(k), bf16(v), bf16(dy)
    q, k, v, dy = (t.astype(ms.float32).asnumpy() for t in (q_t, k_t, v_t, dy_t))   # what the kernel sees

    attention = VarlenAttention(cu_seq_lens)
    start = time.perf_counter()
    out = attention(q_t, k_t, v_t).astype(ms.float32).asnumpy()
    grads = ms.grad(WeightedSum(attention, Tensor(dy)), grad_position=(0, 1, 2))(q_t, k_t, v_t)
    grads = [g.astype(ms.float32).asnumpy() for g in grads]
    elapsed = (time.perf_counter() - start) * 1e3

    common = dict(head_num=HEADS, input_layout="TND", actual_seq_qlen=cu_seq_lens, actual_seq_kvlen=cu_seq_lens,
                  scale=attention.scale, sparse_mode=3)
    expected, softmax_max, softmax_sum = training_attention(q, k, v, **common)
    # the backward reads the forward output as the kernel stored it (bfloat16), as on the NPU
    expected_grads = training_attention_grad(q, k, v, dy, softmax_max, softmax_sum, out, **common)[:3]
    results = [_close(out, expected)] + [_close(g, e) for g, e in zip(grads, expected_grads)]
    ok = all(r[1] for r in results)
    if verbose:
        print(f"training step: flash_attention_score TND varlen {list(SEQ_LENS)}, causal, GQA {HEADS}/{KV_HEADS} "
              f"heads, bf16; forward + backward {elapsed:.1f} ms (with graph compile)")
        print("  vs numpy reference, max abs error: " + ", ".join(
            f"{name} {err:.2e}" for name, (err, _) in zip(("out", "dq", "dk", "dv"), results))
            + f" -> {'OK' if ok else 'MISMATCH'}")
    return ok


def train(steps=30, seed=0, verbose=True):
    """A two-layer causal attention model learns the running mean of its first input feature."""
    ms.set_seed(seed)
    ms.manual_seed(seed)
    rng = np.random.default_rng(seed)
    hidden, heads, seq, batch = 32, 4, 12, 3
    x = rng.standard_normal((batch, seq, 4)).astype(np.float32)
    target = (np.cumsum(x[..., :1], axis=1) / np.arange(1, seq + 1)[None, :, None]).astype(np.float32)
    model = nn.SequentialCell([nn.Dense(4, hidden), CausalSelfAttention(hidden, heads),
                               CausalSelfAttention(hidden, heads), nn.Dense(hidden, 1)])
    step = nn.TrainOneStepCell(nn.WithLossCell(model, nn.MSELoss()),
                               nn.Adam(model.trainable_params(), learning_rate=3e-3))
    losses = [float(step(Tensor(x), Tensor(target)).asnumpy()) for _ in range(steps)]
    ok = bool(np.all(np.isfinite(losses)) and np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5]))
    if verbose:
        print(f"training loop: two causal attention layers (flash_attention_score, fp16, dropout 0.1), "
              f"nn.TrainOneStepCell, {steps} steps: loss {losses[0]:.4f} -> {losses[-1]:.4f} -> "
              f"{'OK' if ok else 'NOT LEARNING'}")
    return ok


def run(verbose=True):
    ms.set_context(mode=ms.GRAPH_MODE)
    return check_step(verbose=verbose) & train(verbose=verbose)
