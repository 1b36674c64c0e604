"""`python -m ms_attention demo`: a small decode loop in Graph mode over a paged KV cache.

One attention layer with random, seeded weights. Each step projects the new token of every sequence to q, k,
v, writes k and v into the paged cache at the slot the block table gives (vLLM style), and calls
incre_flash_attention on the cache. The sequences start at different lengths so the batch is ragged. The last
step is checked against the numpy reference.
"""
import time

import numpy as np
import mindspore as ms
from mindspore import Parameter, Tensor, nn
from mindspore import ops as ms_ops

from ms_attention import ops
from ms_attention.kernels.cpu import loader
from ms_attention.kernels.reference.incre_flash_attention import incre_flash_attention as reference

HIDDEN, NUM_HEADS, KV_HEADS, HEAD_DIM = 512, 8, 2, 64
BATCH, BLOCK_SIZE, BLOCKS_PER_SEQ = 4, 16, 16
NUM_BLOCKS = BATCH * BLOCKS_PER_SEQ


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


def run(steps=48, seed=0, verbose=True):
    ms.set_context(mode=ms.GRAPH_MODE)
    rng = np.random.default_rng(seed)
    layer = DecodeLayer(seed)
    block_table = rng.permutation(NUM_BLOCKS).reshape(BATCH, BLOCKS_PER_SEQ).astype(np.int32)
    seq_lens = np.array([5, 40, 1, 17], np.int64)       # tokens already in the cache (left as zeros: a prompt)
    lib = loader.library()
    if verbose:
        print(f"ms_attention demo: decode loop, Graph mode, paged KV cache ({NUM_BLOCKS} blocks x {BLOCK_SIZE}),"
              f" B={BATCH}, N={NUM_HEADS}, kvN={KV_HEADS}, D={HEAD_DIM}")
        print(f"kernel: {lib.variant + ' build ' + lib.path if lib else 'none (the call below will raise)'}")
    latencies = []
    for step in range(steps):
        positions = seq_lens.copy()                       # the new token's position in each sequence
        block = block_table[np.arange(BATCH), positions // BLOCK_SIZE]
        slots = np.stack([block, positions % BLOCK_SIZE], axis=1).astype(np.int32)
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
    err = np.abs(out_np.astype(np.float64) - expected)
    ok = bool(np.all(err <= 2.5e-5 + 0.005 * np.abs(expected)) and not np.isnan(out_np).any())
    steady = latencies[1:] or latencies
    if verbose:
        print(f"first step (graph compile) {latencies[0] * 1e3:.1f} ms; steady state median "
              f"{np.median(steady) * 1e3:.3f} ms/step over {len(steady)} steps")
        print(f"last step vs numpy reference: max abs error {err.max():.2e} -> {'OK' if ok else 'MISMATCH'}")
    return ok
