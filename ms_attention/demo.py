"""`python -m ms_attention demo`: a prefill then a decode loop in Graph mode over a paged KV cache, then a
training step and a short training loop (demo_training.py).

One attention layer with random, seeded weights, vLLM style. The prefill step takes the prompts of every
sequence packed into one TND batch (ragged lengths), projects them to q, k, v, writes k and v into the paged cache
at the slots the block table gives, and runs fused_infer_attention_score over the cache (TND, causal
sparse_mode 3 with the compressed 2048 x 2048 mask, GQA). Each decode step then projects the new token of every
sequence, writes it to the cache and calls incre_flash_attention on the cache. The prefill output and the last
decode step are checked against the numpy references.
"""
import time

import numpy as np
import mindspore as ms
from mindspore import Parameter, Tensor, nn
from mindspore import ops as ms_ops

from ms_attention import demo_training, ops
from ms_attention.kernels.cpu import loader
from ms_attention.kernels.reference.fused_attention import fused_infer_attention_score as prefill_reference
from ms_attention.kernels.reference.incre_flash_attention import incre_flash_attention as reference

HIDDEN, NUM_HEADS, KV_HEADS, HEAD_DIM = 512, 8, 2, 64
BATCH, BLOCK_SIZE, BLOCKS_PER_SEQ = 4, 16, 16
NUM_BLOCKS = BATCH * BLOCKS_PER_SEQ


class PrefillLayer(nn.Cell):
    """The prompt step: q/k/v projections of the packed prompts, the paged cache write, and
    fused_infer_attention_score (TND, causal, GQA) over the cache. Shares the decode layer's weights and cache."""

    def __init__(self, decode_layer):
        super().__init__()
        self.layer = decode_layer
        self.causal_mask = Tensor(np.triu(np.ones((2048, 2048), np.bool_), 1))   # compressed mask of mode 3

    def construct(self, x, slots, block_table, cu_seq_lens, seq_lens):
        layer = self.layer
        q = ms_ops.cast(ms_ops.matmul(x, layer.wq), ms.float16)
        k = ms_ops.cast(ms_ops.matmul(x, layer.wk), ms.float16)
        v = ms_ops.cast(ms_ops.matmul(x, layer.wv), ms.float16)
        ms_ops.scatter_nd_update(layer.key_cache, slots, k)
        ms_ops.scatter_nd_update(layer.value_cache, slots, v)
        q = ms_ops.reshape(q, (-1, NUM_HEADS, HEAD_DIM))                # (T, N, D): TND
        out, _ = ops.fused_infer_attention_score(
            q, layer.key_cache, layer.value_cache, atten_mask=self.causal_mask, actual_seq_lengths=cu_seq_lens,
            actual_seq_lengths_kv=seq_lens, block_table=block_table, num_heads=NUM_HEADS, scale=layer.scale,
            input_layout="TND", num_key_value_heads=KV_HEADS, sparse_mode=3, block_size=BLOCK_SIZE)
        return out, q


class DecodeLayer(nn.Cell):
    """q/k/v projections, the paged cache write, and incre_flash_attention (BSH, GQA)."""

    def __init__(self, seed):
        super().__init__()
        rng = np.random.default_rng(seed)
        init = lambda *shape: Tensor((rng.standard_normal(shape) / np.sqrt(shape[0])).astype(np.float32))
        self.wq = Parameter(init(HIDDEN, NUM_HEADS * HEAD_DIM), name="wq")
        self.wk = Parameter(init(HIDDEN, KV_HEADS * HEAD_DIM), name="wk")
        self.wv = Parameter(init(HIDDEN, KV_HEADS * HEAD_DIM), name="wv")
        cache_shape = (NUM_BLOCKS, BLOCK_SIZE, KV_HEADS * HEAD_DIM)
        self.key_cache = Parameter(Tensor(np.zeros(cache_shape, np.float16)), name="key_cache")
        self.value_cache = Parameter(Tensor(np.zeros(cache_shape, np.float16)), name="value_cache")
        self.scale = 1.0 / float(np.sqrt(HEAD_DIM))

    def construct(self, x, slots, block_table, seq_lens):
        q = ms_ops.cast(ms_ops.matmul(x, self.wq), ms.float16)
        k = ms_ops.cast(ms_ops.matmul(x, self.wk), ms.float16)
        v = ms_ops.cast(ms_ops.matmul(x, self.wv), ms.float16)
        ms_ops.scatter_nd_update(self.key_cache, slots, k)
        ms_ops.scatter_nd_update(self.value_cache, slots, v)
        q = ms_ops.expand_dims(q, 1)                                   # (B, 1, H): BSH
        out = ops.incre_flash_attention(q, [self.key_cache], [self.value_cache], actual_seq_lengths=seq_lens,
                                        block_table=block_table, num_heads=NUM_HEADS, input_layout="BSH",
                                        scale_value=self.scale, num_key_value_heads=KV_HEADS,
                                        block_size=BLOCK_SIZE)
        return out, q


def _slots(block_table, batch_of_token, positions):
    """(block, slot) of each token in the paged cache, for scatter_nd_update."""
    block = block_table[batch_of_token, positions // BLOCK_SIZE]
    return np.stack([block, positions % BLOCK_SIZE], axis=1).astype(np.int32)


def _close(out, expected):
    err = np.abs(out.astype(np.float64) - expected)
    return err.max(), bool(np.all(err <= 2.5e-5 + 0.005 * np.abs(expected)) and not np.isnan(out).any())


def run(steps=48, seed=0, verbose=True):
    ms.set_context(mode=ms.GRAPH_MODE)
    rng = np.random.default_rng(seed)
    layer = DecodeLayer(seed)
    prefill = PrefillLayer(layer)
    block_table = rng.permutation(NUM_BLOCKS).reshape(BATCH, BLOCKS_PER_SEQ).astype(np.int32)
    seq_lens = np.array([5, 40, 1, 17], np.int64)        # prompt lengths: a ragged batch
    lib = loader.library()
    if verbose:
        print(f"ms_attention demo: prefill + decode, Graph mode, paged KV cache ({NUM_BLOCKS} blocks x "
              f"{BLOCK_SIZE}), B={BATCH}, N={NUM_HEADS}, kvN={KV_HEADS}, D={HEAD_DIM}")
        print(f"kernel: {lib.variant + ' build ' + lib.path if lib else 'none (the calls below will raise)'}")

    # prefill: every prompt packed into one TND batch
    batch_of_token = np.repeat(np.arange(BATCH), seq_lens)
    positions = np.concatenate([np.arange(n) for n in seq_lens])
    cu_seq_lens = np.cumsum(seq_lens)
    x = rng.standard_normal((int(cu_seq_lens[-1]), HIDDEN)).astype(np.float32)
    start = time.perf_counter()
    out, q = prefill(Tensor(x), Tensor(_slots(block_table, batch_of_token, positions)), Tensor(block_table),
                     Tensor(cu_seq_lens), Tensor(seq_lens))
    out_np = out.asnumpy()
    prefill_ms = (time.perf_counter() - start) * 1e3
    expected, _ = prefill_reference(q.asnumpy().astype(np.float32), layer.key_cache.asnumpy().astype(np.float32),
                                    layer.value_cache.asnumpy().astype(np.float32), actual_seq_lengths=cu_seq_lens,
                                    actual_seq_lengths_kv=seq_lens, block_table=block_table, num_heads=NUM_HEADS,
                                    scale=layer.scale, input_layout="TND", num_key_value_heads=KV_HEADS,
                                    sparse_mode=3, block_size=BLOCK_SIZE)
    prefill_err, prefill_ok = _close(out_np, expected)
    if verbose:
        print(f"prefill: {int(cu_seq_lens[-1])} prompt tokens, seq_lens {seq_lens.tolist()}, "
              f"{prefill_ms:.1f} ms (with graph compile); vs numpy reference: max abs error {prefill_err:.2e} -> "
              f"{'OK' if prefill_ok else 'MISMATCH'}")

    latencies = []
    for step in range(steps):
        slots = _slots(block_table, np.arange(BATCH), seq_lens)   # the new token goes at position seq_len
        seq_lens = seq_lens + 1
        x = rng.standard_normal((BATCH, HIDDEN)).astype(np.float32)
        start = time.perf_counter()
        out, q = layer(Tensor(x), Tensor(slots), Tensor(block_table), Tensor(seq_lens))
        out_np = out.asnumpy()
        latencies.append(time.perf_counter() - start)
        if verbose and (step < 3 or step == steps - 1 or step % 16 == 0):
            print(f"step {step:3d}: seq_lens {seq_lens.tolist()} latency {latencies[-1] * 1e3:7.2f} ms")
    expected = reference(q.asnumpy().astype(np.float32), layer.key_cache.asnumpy().astype(np.float32),
                         layer.value_cache.asnumpy().astype(np.float32), actual_seq_lengths=seq_lens,
                         block_table=block_table, num_heads=NUM_HEADS, input_layout="BSH",
                         scale_value=layer.scale, num_key_value_heads=KV_HEADS, block_size=BLOCK_SIZE)
    err, ok = _close(out_np, expected)
    steady = latencies[1:] or latencies
    if verbose:
        print(f"first step (graph compile) {latencies[0] * 1e3:.1f} ms; steady state median "
              f"{np.median(steady) * 1e3:.3f} ms/step over {len(steady)} steps")
        print(f"last step vs numpy reference: max abs error {err:.2e} -> {'OK' if ok else 'MISMATCH'}")
    training_ok = demo_training.run(verbose=verbose)
    return ok and prefill_ok and training_ok
