"""Builds sparse_flash_attention inputs (numpy for the reference, MindSpore for the op) in every layout, runs the
op in a given mode (fused_cases.run) and compares with the numpy reference under SPEC.md §9's tolerances.

Inputs are drawn per batch in a canonical form (query (B, S1, N1, 512), key/value (B, S2, 1, 512), rope with 64)
and then arranged into the case's layouts: TND concatenates the valid rows of each batch, PA_BSND scatters each
batch's tokens into the blocks a shuffled block table names."""
import numpy as np
import mindspore as ms
from mindspore import Tensor

from fused_cases import run
from ifa_cases import assert_close, round_to, to_numpy, to_tensor
from ms_attention import ops
from ms_attention.kernels.reference.sparse_flash_attention import sparse_flash_attention as reference

D, DR = 512, 64
STATS_RTOL = 1e-4


class Case:
    def __init__(self, b=2, s1=3, n1=4, s2=96, k=8, sparse_block_size=4, layout_query="BSND", layout_kv="BSND",
                 dtype="float16", rope=True, q_lens=None, kv_lens=None, block_size=32, sparse_mode=3,
                 return_softmax_lse=True, lengths_as="tensor", seed=0):
        rng = np.random.default_rng(seed)
        self.dtype = dtype
        self.q_lens = list(q_lens) if q_lens is not None else [s1] * b
        self.kv_lens = list(kv_lens) if kv_lens is not None else [s2] * b
        self.b, self.s1, self.s2 = b, s1, s2
        self.kwargs, self.np = {}, {}
        draw = lambda *shape: round_to(rng.standard_normal(shape), dtype)  # noqa: E731
        q, qr = draw(b, s1, n1, D), draw(b, s1, n1, DR)
        kv, kr = draw(b, s2, 1, D), draw(b, s2, 1, DR)
        v = draw(b, s2, 1, D)
        tnd = layout_query == "TND"
        if tnd:
            q = np.concatenate([q[i, :self.q_lens[i]] for i in range(b)])
            qr = np.concatenate([qr[i, :self.q_lens[i]] for i in range(b)])
        self._tensor("query", q)
        if rope:
            self._tensor("query_rope", qr)
        # the selection: distinct blocks below the capacity (some past the kv length: clipped), then -1 from a
        # random point on
        capacity = max(self.kv_lens) if layout_kv == "TND" else s2   # the range sparse_indices may address
        if layout_kv == "PA_BSND":
            blocks_per_seq = -(-s2 // block_size)
            capacity = blocks_per_seq * block_size
        rows = q.shape[0] if tnd else b * s1
        blocks = -(-capacity // sparse_block_size)
        idx = np.stack([rng.permutation(blocks)[:k] for _ in range(rows)]).astype(np.int32)
        for r in range(rows):
            cut = rng.integers(1, k + 1)
            idx[r, cut:] = -1
        idx = idx.reshape((rows, 1, k) if tnd else (b, s1, 1, k))
        self.kwargs["sparse_indices"] = Tensor(idx)
        self.np["sparse_indices"] = idx
        if layout_kv == "PA_BSND":
            num_blocks = b * blocks_per_seq + 2
            order = rng.permutation(num_blocks)[:b * blocks_per_seq].reshape(b, blocks_per_seq).astype(np.int32)
            caches = {}
            for name, x in (("key", kv), ("value", v), ("key_rope", kr)):
                cache = np.zeros((num_blocks, block_size) + x.shape[2:], np.float32)
                padded = np.zeros((b, blocks_per_seq * block_size) + x.shape[2:], np.float32)
                padded[:, :s2] = x
                cache[order] = padded.reshape((b, blocks_per_seq, block_size) + x.shape[2:])
                caches[name] = cache
            kv, v, kr = caches["key"], caches["value"], caches["key_rope"]
            self.kwargs["block_table"] = Tensor(order)
            self.np["block_table"] = order
        elif layout_kv == "TND":
            kv = np.concatenate([kv[i, :self.kv_lens[i]] for i in range(b)])
            v = np.concatenate([v[i, :self.kv_lens[i]] for i in range(b)])
            kr = np.concatenate([kr[i, :self.kv_lens[i]] for i in range(b)])
        self._tensor("key", kv)
        self._tensor("value", v)
        if rope:
            self._tensor("key_rope", kr)
        q_lengths = np.cumsum(self.q_lens) if tnd else self.q_lens
        kv_lengths = np.cumsum(self.kv_lens) if layout_kv == "TND" else self.kv_lens
        if tnd or q_lens is not None:
            self._lengths("actual_seq_lengths_query", q_lengths, lengths_as)
        if layout_kv != "BSND" or kv_lens is not None:
            self._lengths("actual_seq_lengths_kv", kv_lengths, lengths_as)
        self.attrs = dict(scale_value=1.0 / np.sqrt(D + DR), sparse_block_size=sparse_block_size,
                          layout_query=layout_query, layout_kv=layout_kv, sparse_mode=sparse_mode,
                          return_softmax_lse=return_softmax_lse, attention_mode=2 if rope else 0)

    def _tensor(self, name, x):
        self.np[name] = x
        self.kwargs[name] = to_tensor(x, self.dtype)

    def _lengths(self, name, values, form):
        values = [int(x) for x in values]
        self.np[name] = values
        self.kwargs[name] = Tensor(np.asarray(values, np.int32)) if form == "tensor" else tuple(values)

    def call_kwargs(self):
        return dict(self.kwargs, **self.attrs)

    def expected(self):
        attrs = {n: v for n, v in self.attrs.items() if n != "attention_mode"}
        return reference(**self.np, **attrs)

    def run(self, mode):
        return run(mode, ops.sparse_flash_attention, self.call_kwargs())

    def check(self, mode):
        out, softmax_max, softmax_sum = self.run(mode)
        want, want_max, want_sum = self.expected()
        assert out.dtype == {"float16": ms.float16, "bfloat16": ms.bfloat16}[self.dtype]
        assert softmax_max.dtype == ms.float32 and softmax_sum.dtype == ms.float32
        assert_close(to_numpy(out), want, self.dtype)
        assert_stats_close(softmax_max.asnumpy(), want_max)
        assert_stats_close(softmax_sum.asnumpy(), want_sum)
        return to_numpy(out), softmax_max.asnumpy(), softmax_sum.asnumpy()


def assert_stats_close(actual, expected):
    """softmax_max / softmax_sum: float32 statistics, rtol 1e-4 (the lse contract of SPEC.md §9)."""
    actual = np.asarray(actual, np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert not np.isnan(actual).any()
    np.testing.assert_allclose(actual, expected, rtol=STATS_RTOL, atol=1e-5)
