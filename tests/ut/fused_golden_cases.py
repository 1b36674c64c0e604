"""Builds prompt_flash_attention / fused_infer_attention_score / fused_infer_attention_score_v2 inputs (numpy
and MindSpore), runs an op in a given mode and compares it with the numpy golden (ifa_cases.assert_close's
per-dtype tolerances)."""
import numpy as np
import mindspore as ms

from ms_attention import ops
from ms_attention.kernels.reference import fused_attention as golden
from fused_cases import assert_lse_close, run
from ifa_cases import assert_close, round_to, to_numpy, to_tensor

OPS = {
    "pfa": (ops.prompt_flash_attention, golden.prompt_flash_attention),
    "fia": (ops.fused_infer_attention_score, golden.fused_infer_attention_score),
    "v2": (ops.fused_infer_attention_score_v2, golden.fused_infer_attention_score_v2),
}
# the attribute names of (heads, scale, lse flag, mask) per op
HEADS = {"pfa": "num_heads", "fia": "num_heads", "v2": "num_query_heads"}
SCALE = {"pfa": "scale_value", "fia": "scale", "v2": "softmax_scale"}
LSE_FLAG = {"fia": "softmax_lse_flag", "v2": "return_softmax_lse"}
MASK = {"pfa": "attn_mask", "fia": "atten_mask", "v2": "atten_mask"}


def to_layout(x, layout):
    """(B, N, S, D) -> BSH / BNSD / BSND (BNSD_BSND takes BNSD inputs)."""
    if layout in ("BNSD", "BNSD_BSND"):
        return x
    x = x.transpose(0, 2, 1, 3)
    return x.reshape(x.shape[0], x.shape[1], -1) if layout == "BSH" else x


def paged_cache(kv, block_size, rng, four_d=False):
    """A dense (B, kvN, S, D) cache as (num_blocks, block_size, kvN*D) or (num_blocks, kvN, block_size, D) with
    a shuffled block table (B, ceil(S / block_size)); blocks past a sequence stay -1 only if the caller says."""
    b, kvn, s, d = kv.shape
    per_seq = -(-s // block_size)
    ids = rng.permutation(b * per_seq + 3)[:b * per_seq].reshape(b, per_seq).astype(np.int32)
    num_blocks = b * per_seq + 3
    padded = np.zeros((b, kvn, per_seq * block_size, d), kv.dtype)
    padded[:, :, :s] = kv
    cache = np.zeros((num_blocks, kvn, block_size, d), kv.dtype)
    for i in range(b):
        for j in range(per_seq):
            cache[ids[i, j]] = padded[i, :, j * block_size:(j + 1) * block_size]
    if not four_d:
        cache = cache.transpose(0, 2, 1, 3).reshape(num_blocks, block_size, kvn * d)
    return cache, ids


class FusedCase:
    """Random inputs for one configuration of one op: numpy (for the golden) and MindSpore (for the op)."""

    def __init__(self, op, b=2, n=4, kvn=2, sq=40, skv=56, d=32, layout="BNSD", dtype="float16", kv_dtype=None,
                 seed=0, q_lens=None, kv_lens=None):
        """TND: q_lens / kv_lens are the per-batch lengths (the cumulative ones are passed to the op)."""
        self.op, self.dtype, self.layout = op, dtype, layout
        self.rng = np.random.default_rng(seed)
        self.b, self.n, self.kvn, self.sq, self.skv, self.d = b, n, kvn, sq, skv, d
        self.np, self.ms = {}, {}
        self.attrs = {HEADS[op]: n, SCALE[op]: 1.0 / np.sqrt(d), "num_key_value_heads": kvn,
                      "input_layout": layout}
        kv_dtype = kv_dtype or dtype
        if layout == "TND":
            t, t_kv = sum(q_lens), sum(kv_lens)
            self.add("query", self.rng.standard_normal((t, n, d)), dtype)
            self.kv_canonical = None
            self.add_kv(self.rng.standard_normal((t_kv, kvn, d)), self.rng.standard_normal((t_kv, kvn, d)), kv_dtype)
            self.attrs["actual_seq_lengths"] = list(np.cumsum(q_lens).tolist())
            self.attrs["actual_seq_lengths_kv"] = list(np.cumsum(kv_lens).tolist())
            return
        self.add("query", to_layout(self.rng.standard_normal((b, n, sq, d)), layout), dtype)
        k, v = self.rng.standard_normal((b, kvn, skv, d)), self.rng.standard_normal((b, kvn, skv, d))
        if kv_dtype == "int8":
            k, v = self.rng.integers(-100, 100, k.shape), self.rng.integers(-100, 100, v.shape)
        self.kv_canonical = (k, v, kv_dtype)
        self.add_kv(to_layout(k, layout), to_layout(v, layout), kv_dtype)

    def add_kv(self, k, v, kv_dtype):
        self.add("key", k, kv_dtype)
        self.add("value", v, kv_dtype)

    def add(self, name, array, dtype):
        if dtype in ("float16", "bfloat16"):
            array = round_to(array, dtype)
        else:
            array = np.asarray(array).astype({"bool": np.bool_}.get(dtype, dtype))
        self.np[name] = array
        self.ms[name] = ms.Tensor(array) if dtype == "uint64" else to_tensor(array, dtype)
        return array

    def page(self, block_size=16, four_d=False, name_rope=None):
        """Replace key/value by a paged cache (and key_rope by its paged copy); actual_seq_lengths_kv required."""
        k, v, kv_dtype = self.kv_canonical
        rng = np.random.default_rng(7)
        kc, table = paged_cache(np.asarray(k), block_size, rng, four_d)
        vc, _ = paged_cache(np.asarray(v), block_size, np.random.default_rng(7), four_d)
        self.add_kv(kc, vc, kv_dtype)
        if name_rope is not None:
            kr, _ = paged_cache(self.rope_canonical, block_size, np.random.default_rng(7), four_d)
            self.add("key_rope", kr, self.dtype)
        self.add("block_table", table, "int32")
        self.attrs["block_size"] = block_size

    def add_rope(self, dr=16):
        self.rope_canonical = self.rng.standard_normal((self.b, self.kvn, self.skv, dr))
        self.add("query_rope", to_layout(self.rng.standard_normal((self.b, self.n, self.sq, dr)),
                                         "BNSD" if self.layout == "BNSD_BSND" else self.layout), self.dtype)
        self.add("key_rope", to_layout(self.rope_canonical, "BNSD" if self.layout == "BNSD_BSND" else self.layout),
                 self.dtype)
        self.rope_canonical = round_to(self.rope_canonical, self.dtype)

    def random_mask(self, shape, dtype="bool", density=0.25):
        mask = self.rng.random(shape) < density
        return self.add(MASK[self.op], mask, dtype)

    def kwargs(self):
        out = dict(self.ms)
        out.update(self.attrs)
        return out

    def expected(self):
        args = dict(self.np)
        args.update(self.attrs)
        return OPS[self.op][1](**args)

    def check(self, mode, out_dtype=None):
        result = run(mode, OPS[self.op][0], self.kwargs())
        expected = self.expected()
        if self.op == "pfa":
            result, expected = (result,), (expected,)
        want = out_dtype or self.dtype
        assert str(result[0].dtype).lower() == want, (result[0].dtype, want)
        assert_close(to_numpy(result[0]), expected[0], want)
        if len(result) > 1:
            assert_lse_close(result[1].asnumpy(), expected[1])
        return result
