"""The C++ forward kernels of flash_attention_score and speed_fusion_attention against the numpy golden
(ms_attention/kernels/reference/training_attention.py): every layout and sparse mode, masks, pse (full,
batch-broadcast, compressed ALiBi rows), SFA's pse_type 0-3 and float32, dropout (generated, bit for bit with the
golden's hash, and explicit), TND varlen, the softmax statistics and the kernel's own checks of what values hide.

Most tests call the kernels through KernelPrimitive with the attribute vector the Validator would build: that
reaches exactly the C++ side, with chosen seed / offset and with values the Python validation would stop first
(the kernel's own checks). The last tests go through the public FlashAttentionScore primitive and
speed_fusion_attention functional, in every mode, to the same results."""
import numpy as np
import pytest
import mindspore as ms
from mindspore import Tensor, nn

from ifa_cases import assert_close as assert_close_half, round_to, to_numpy
from ms_attention import opdef, ops, primitives
from ms_attention.infer import registry
from ms_attention.kernels.reference import training_attention as R
from ms_attention.primitive_base import KernelPrimitive

FAS, SFA = "flash_attention_score", "speed_fusion_attention"
INT_MAX = 2147483647
FLT_MAX = float(np.finfo(np.float32).max)
MS_DTYPE = {"float16": ms.float16, "bfloat16": ms.bfloat16, "float32": ms.float32}
INT_INPUTS = ("prefix", "actual_seq_qlen", "actual_seq_kvlen", "q_start_idx", "kv_start_idx")
# output dtypes; "q" is the query's
OUT_DTYPES = {FAS: ("float32", "float32", "q", "q"), SFA: ("q", "float32", "float32", "q", "int64", "int64", "int64")}


def assert_close(actual, expected, dtype):
    if dtype != "float32":
        assert_close_half(actual, expected, dtype)
        return
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape and not np.isnan(actual).any()
    inside = np.abs(actual - expected) <= 1e-6 + 1e-5 * np.abs(expected)
    assert inside.mean() >= 0.995, np.abs(actual - expected).max()


def assert_stats_close(actual, expected):
    """softmax_max / softmax_sum: float32, rtol 1e-4 (the lse accuracy of SPEC §9), exact at +-FLT_MAX."""
    assert actual.dtype == np.float32 and actual.shape == expected.shape, (actual.dtype, actual.shape, expected.shape)
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-5)


class _Infer:
    """What an infer module gives KernelPrimitive: the attributes as they are, the output dtypes."""

    def __init__(self, op_name):
        self.op_name = op_name

    def check_attrs(self, **attrs):
        return attrs

    def output_dtypes(self, attrs, dtypes):
        return tuple(dtypes["query"] if d == "q" else d for d in OUT_DTYPES[self.op_name])


class _KernelCell(nn.Cell):
    def __init__(self, kernel):
        super().__init__()
        self.kernel = kernel

    def construct(self, *args):
        return self.kernel(*args)


def run_kernel(mode, op_name, attrs, inputs):
    """The kernel's outputs as numpy: inputs by name (None = absent), attrs by name, in PyNative, Graph or jit."""
    op = opdef.get(op_name)
    names = [a.name for a in op.tensor_inputs]
    present = tuple(inputs.get(n) is not None for n in names)
    vector = Tensor(np.asarray(registry.attribute_vector(op_name, attrs, present), np.float64))
    values = tuple(attrs[a.name] for a in op.attributes)
    kernel = KernelPrimitive(op_name, values, tuple(not p for p in present), op=op, module=_Infer(op_name))
    args = [inputs[n] if inputs.get(n) is not None else
            Tensor(np.zeros((0,), np.int64 if n in INT_INPUTS else np.float32)) for n in names] + [vector]
    if mode == "pynative":
        ms.set_context(mode=ms.PYNATIVE_MODE)
        out = kernel(*args)
    elif mode == "graph":
        ms.set_context(mode=ms.GRAPH_MODE)
        out = _KernelCell(kernel)(*args)
    else:
        ms.set_context(mode=ms.PYNATIVE_MODE)
        out = ms.jit(_KernelCell(kernel).construct)(*args)
    return [to_numpy(o) for o in out]


def _int64(x):
    return None if x is None else Tensor(np.asarray(x, np.int64).reshape(-1))


def _seed(x):
    return Tensor(np.array([x], np.int64))


def fas(mode, q, k, v, head_num, dtype, *, real_shift=None, drop_mask=None, attn_mask=None, prefix=None,
        actual_seq_qlen=None, actual_seq_kvlen=None, keep_prob=1.0, scale=1.0, pre_tokens=INT_MAX,
        next_tokens=INT_MAX, input_layout="BSH", sparse_mode=0, seed=0, offset=0):
    """FlashAttentionScore's (softmax_max, softmax_sum, softmax_out, attention_out)."""
    attrs = dict(head_num=head_num, keep_prob=keep_prob, scale_value=scale, pre_tokens=pre_tokens,
                 next_tokens=next_tokens, inner_precise=0, input_layout=input_layout, sparse_mode=sparse_mode)
    inputs = dict(query=Tensor(q, MS_DTYPE[dtype]), key=Tensor(k, MS_DTYPE[dtype]), value=Tensor(v, MS_DTYPE[dtype]),
                  real_shift=None if real_shift is None else Tensor(real_shift, MS_DTYPE[dtype]),
                  drop_mask=None if drop_mask is None else Tensor(np.asarray(drop_mask, np.uint8)),
                  attn_mask=None if attn_mask is None else Tensor(np.asarray(attn_mask, np.uint8)),
                  prefix=_int64(prefix), actual_seq_qlen=_int64(actual_seq_qlen),
                  actual_seq_kvlen=_int64(actual_seq_kvlen), seed=_seed(seed), offset=_seed(offset))
    return run_kernel(mode, FAS, attrs, inputs)


def sfa(mode, q, k, v, head_num, input_layout, dtype, *, pse=None, atten_mask=None, scale=1.0, keep_prob=1.0,
        pre_tokens=INT_MAX, next_tokens=INT_MAX, prefix=None, actual_seq_qlen=None, actual_seq_kvlen=None,
        sparse_mode=0, pse_type=1, q_start_idx=None, kv_start_idx=None, seed=0, offset=0):
    """SpeedFusionAttention's seven outputs."""
    attrs = dict(head_num=head_num, input_layout=input_layout, scale=scale, keep_prob=keep_prob,
                 pre_tokens=pre_tokens, next_tokens=next_tokens, inner_precise=0, sparse_mode=sparse_mode,
                 gen_mask_parallel=True, sync=False, pse_type=pse_type)
    pse_dtype = ms.float32 if pse_type >= 2 else MS_DTYPE[dtype]
    inputs = dict(query=Tensor(q, MS_DTYPE[dtype]), key=Tensor(k, MS_DTYPE[dtype]), value=Tensor(v, MS_DTYPE[dtype]),
                  pse=None if pse is None else Tensor(pse, pse_dtype),
                  atten_mask=None if atten_mask is None else Tensor(np.asarray(atten_mask, np.uint8)),
                  prefix=_int64(prefix), actual_seq_qlen=_int64(actual_seq_qlen),
                  actual_seq_kvlen=_int64(actual_seq_kvlen), q_start_idx=_int64(q_start_idx),
                  kv_start_idx=_int64(kv_start_idx), seed=_seed(seed), offset=_seed(offset))
    return run_kernel(mode, SFA, attrs, inputs)


def to_layout(x, layout):
    """(B, N, S, D) -> BSH / SBH / BNSD / BSND."""
    b, n, s, d = x.shape
    if layout == "BSH":
        return x.transpose(0, 2, 1, 3).reshape(b, s, n * d)
    if layout == "SBH":
        return x.transpose(2, 0, 1, 3).reshape(s, b, n * d)
    return x if layout == "BNSD" else x.transpose(0, 2, 1, 3)


@pytest.fixture
def rng():
    return np.random.default_rng(7)


def draw(rng, shape, dtype):
    return round_to(rng.standard_normal(shape), dtype)


def qkv(rng, dtype, b=2, n1=4, n2=2, s1=37, s2=45, d=16, layout="BNSD"):
    q = draw(rng, (b, n1, s1, d), dtype)
    k = draw(rng, (b, n2, s2, d), dtype)
    v = draw(rng, (b, n2, s2, d), dtype)
    return tuple(to_layout(x, layout) for x in (q, k, v))


def check_fas(got, want, dtype):
    row_max, row_sum, softmax_out, out = got
    want_out, want_max, want_sum = want
    assert_close(out, want_out, dtype)
    assert_stats_close(row_max, want_max)
    assert_stats_close(row_sum, want_sum)
    assert softmax_out.shape == (1,) and softmax_out[0] == 0


# ---- flash_attention_score -----------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["BSH", "SBH", "BNSD", "BSND"])
@pytest.mark.parametrize("sparse_mode", range(9))
def test_fas_layouts_and_sparse_modes(rng, layout, sparse_mode):
    q, k, v = qkv(rng, "float16", layout=layout)
    mask = rng.random((2, 1, 37, 45)) < 0.3 if sparse_mode in (0, 1, 5) else None
    prefix = [3, 20] if sparse_mode in (5, 6) else None
    kw = dict(scale=0.3, sparse_mode=sparse_mode, input_layout=layout, pre_tokens=5, next_tokens=3)
    got = fas("pynative", q, k, v, 4, "float16", attn_mask=mask, prefix=prefix, **kw)
    check_fas(got, R.training_attention(q, k, v, head_num=4, attn_mask=mask, prefix=prefix, **kw), "float16")


@pytest.mark.parametrize("shape", [(2, 4, 37, 45), (2, 1, 37, 45), (1, 4, 37, 45), (37, 45)])
def test_fas_mask_shapes(rng, mode, shape):
    q, k, v = qkv(rng, "bfloat16")
    mask = rng.random(shape) < 0.5
    mask[..., 5, :] = True   # a row with no visible key: output 0, max -FLT_MAX, sum FLT_MAX
    kw = dict(scale=0.3, input_layout="BNSD", sparse_mode=1)
    got = fas(mode, q, k, v, 4, "bfloat16", attn_mask=mask, **kw)
    want = R.training_attention(q, k, v, head_num=4, attn_mask=mask, **kw)
    check_fas(got, want, "bfloat16")
    assert np.all(got[3][:, :, 5] == 0) and np.all(got[0][:, :, 5] == -FLT_MAX) and np.all(got[1][:, :, 5] == FLT_MAX)


@pytest.mark.parametrize("pse_batch", [2, 1])
def test_fas_real_shift_before_the_scale(rng, pse_batch):
    q, k, v = qkv(rng, "float16")
    pse = draw(rng, (pse_batch, 4, 37, 45), "float16")
    kw = dict(scale=0.3, input_layout="BNSD", sparse_mode=3)
    got = fas("pynative", q, k, v, 4, "float16", real_shift=pse, **kw)
    check_fas(got, R.training_attention(q, k, v, head_num=4, pse=pse, **kw), "float16")


@pytest.mark.parametrize("s1", [37, 1100])
@pytest.mark.parametrize("sparse_mode", [2, 3])
def test_fas_compressed_pse_rows(rng, s1, sparse_mode):
    q, k, v = qkv(rng, "float16", b=1, n1=2, n2=1, s1=s1, s2=s1 + 8)
    pse = draw(rng, (1, 2, 1024, s1 + 8), "float16")
    kw = dict(scale=0.3, input_layout="BNSD", sparse_mode=sparse_mode)
    got = fas("pynative", q, k, v, 2, "float16", real_shift=pse, **kw)
    check_fas(got, R.training_attention(q, k, v, head_num=2, pse=pse, **kw), "float16")


@pytest.mark.parametrize("keep_prob", [0.9, 0.5])
def test_fas_generated_dropout_is_the_contract_hash(rng, mode, keep_prob):
    q, k, v = qkv(rng, "float16")
    kw = dict(scale=0.3, input_layout="BNSD", keep_prob=keep_prob, seed=1234, offset=-56)
    got = fas(mode, q, k, v, 4, "float16", **kw)
    check_fas(got, R.training_attention(q, k, v, head_num=4, **kw), "float16")
    other = fas("pynative", q, k, v, 4, "float16", **dict(kw, offset=57))[3]
    assert np.abs(other - got[3]).max() > 0.05     # another offset, another mask


def test_fas_explicit_drop_mask(rng):
    q, k, v = qkv(rng, "float16", s2=48)
    keep = rng.random((2, 4, 37, 48)) < 0.6
    drop_mask = R.pack_drop_mask(keep)
    kw = dict(scale=0.3, input_layout="BNSD", keep_prob=0.6)
    got = fas("pynative", q, k, v, 4, "float16", drop_mask=drop_mask, **kw)
    check_fas(got, R.training_attention(q, k, v, head_num=4, drop_mask=drop_mask, **kw), "float16")


TND_Q = [5, 0, 17, 9]
TND_KV = [8, 3, 17, 20]


def tnd(rng, dtype, q_lens=TND_Q, kv_lens=TND_KV, n1=4, n2=2, d=16):
    cq, ckv = np.cumsum(q_lens), np.cumsum(kv_lens)
    return (draw(rng, (cq[-1], n1, d), dtype), draw(rng, (ckv[-1], n2, d), dtype), draw(rng, (ckv[-1], n2, d), dtype),
            cq, ckv)


@pytest.mark.parametrize("sparse_mode", range(9))
def test_fas_tnd_sparse_modes(rng, sparse_mode):
    q, k, v, cq, ckv = tnd(rng, "bfloat16")
    mask = rng.random((1, 1, 20, 22)) < 0.3 if sparse_mode in (0, 1, 5) else None
    prefix = [1, 2, 5, 0] if sparse_mode in (5, 6) else None
    kw = dict(scale=0.3, input_layout="TND", sparse_mode=sparse_mode, actual_seq_qlen=cq, actual_seq_kvlen=ckv,
              pre_tokens=4, next_tokens=2)
    got = fas("pynative", q, k, v, 4, "bfloat16", attn_mask=mask, prefix=prefix, **kw)
    assert got[0].shape == (cq[-1], 4, 8)
    check_fas(got, R.training_attention(q, k, v, head_num=4, attn_mask=mask, prefix=prefix, **kw), "bfloat16")


def test_fas_tnd_dropout(rng, mode):
    q, k, v, cq, ckv = tnd(rng, "float16", q_lens=[5, 0, 16, 9], kv_lens=[8, 3, 16, 24])
    kw = dict(scale=0.3, input_layout="TND", keep_prob=0.7, actual_seq_qlen=cq, actual_seq_kvlen=ckv, seed=7,
              offset=3)
    got = fas(mode, q, k, v, 4, "float16", **kw)
    check_fas(got, R.training_attention(q, k, v, head_num=4, **kw), "float16")
    keep = [rng.random(z.shape) < 0.7 for z in R.generated_keep_mask_varlen(0, 0, 0.7, 4, cq, ckv)]
    drop_mask = R.pack_drop_mask(keep)
    kw = dict(scale=0.3, input_layout="TND", keep_prob=0.7, actual_seq_qlen=cq, actual_seq_kvlen=ckv)
    got = fas(mode, q, k, v, 4, "float16", drop_mask=drop_mask, **kw)
    check_fas(got, R.training_attention(q, k, v, head_num=4, drop_mask=drop_mask, **kw), "float16")


def test_fas_tnd_equals_padded_bsh(rng):
    q, k, v, cq, ckv = tnd(rng, "float16", q_lens=[6, 6], kv_lens=[9, 9])
    out_tnd = fas("pynative", q, k, v, 4, "float16", input_layout="TND", actual_seq_qlen=cq, actual_seq_kvlen=ckv,
                  sparse_mode=3, scale=0.5)[3]
    out_bsh = fas("pynative", q.reshape(2, 6, 64), k.reshape(2, 9, 32), v.reshape(2, 9, 32), 4, "float16",
                  input_layout="BSH", sparse_mode=3, scale=0.5)[3]
    np.testing.assert_array_equal(out_tnd.reshape(2, 6, 64), out_bsh)


# ---- speed_fusion_attention ----------------------------------------------------------------------------------

@pytest.mark.parametrize("pse_type", [0, 1, 2, 3])
def test_sfa_pse_types_in_float32(rng, pse_type):
    q, k, v = qkv(rng, "float32")
    pse = draw(rng, (2, 4, 37, 45), "float32") if pse_type < 2 else rng.random((4,)).astype(np.float32)
    kw = dict(scale=0.3, pse_type=pse_type, sparse_mode=2, q_start_idx=[3], kv_start_idx=[5])
    got = sfa("pynative", q, k, v, 4, "BNSD", "float32", pse=pse, **kw)
    want = R.speed_fusion_attention(q, k, v, 4, "BNSD", pse=pse, **kw)
    assert_close(got[0], want[0], "float32")
    assert_stats_close(got[1], want[1])
    assert_stats_close(got[2], want[2])
    assert got[3].shape == (1,) and got[3][0] == 0
    for x, y in zip(got[4:], want[4:]):
        np.testing.assert_array_equal(x, y)


def test_sfa_alibi_per_batch_with_dropout(rng, mode):
    q, k, v = qkv(rng, "bfloat16", layout="BSH")
    slopes = rng.random((2, 4)).astype(np.float32)
    kw = dict(scale=0.3, pse_type=3, keep_prob=0.8, seed=5, offset=9, sparse_mode=3, kv_start_idx=[2])
    got = sfa(mode, q, k, v, 4, "BSH", "bfloat16", pse=slopes, **kw)
    want = R.speed_fusion_attention(q, k, v, 4, "BSH", pse=slopes, **kw)
    assert_close(got[0], want[0], "bfloat16")
    assert_stats_close(got[1], want[1])
    assert [int(x[0]) for x in got[4:]] == [5, 9, 2 * 4 * 37 * 45]



def test_sfa_alibi_start_offsets_keep_distances_exact(rng, mode):
    """ALiBi distances |j - i + kv_start - q_start| are float32 in the scores: up to 2^24 they are exact (and the
    result is the reference's); past it consecutive distances would round together and the slope would be lost
    silently, so the kernel refuses them."""
    q, k, v = qkv(rng, "float16", layout="BSH")
    slopes = (rng.random((4,)) * 2.0 ** -14).astype(np.float32)   # small: the bias stays ~1e3 near the limit
    kw = dict(scale=0.3, pse_type=2, q_start_idx=[3], kv_start_idx=[2 ** 24 - 100])
    got = sfa(mode, q, k, v, 4, "BSH", "float16", pse=slopes, **kw)
    want = R.speed_fusion_attention(q, k, v, 4, "BSH", pse=slopes, **kw)
    assert_close(got[0], want[0], "float16")
    with pytest.raises(RuntimeError, match=r"below 2\^24.*'kv_start_idx' 16777216"):   # the kernel's, any mode
        sfa("pynative", q, k, v, 4, "BSH", "float16", pse=slopes, pse_type=2, kv_start_idx=[2 ** 24])

def test_sfa_tnd_numels(rng):
    q, k, v, cq, ckv = tnd(rng, "float16")
    got = sfa("pynative", q, k, v, 4, "TND", "float16", actual_seq_qlen=cq, actual_seq_kvlen=ckv, sparse_mode=8,
              seed=-3, offset=4)
    want = R.speed_fusion_attention(q, k, v, 4, "TND", actual_seq_qlen=cq, actual_seq_kvlen=ckv, sparse_mode=8)
    assert_close(got[0], want[0], "float16")
    assert [int(x[0]) for x in got[4:]] == [-3, 4, 4 * sum(a * b for a, b in zip(TND_Q, TND_KV))]


# ---- what the kernel checks itself -------------------------------------------------------------------------

def _tnd_call(rng, **kw):
    q, k, v, cq, ckv = tnd(rng, "float16")
    args = dict(input_layout="TND", actual_seq_qlen=cq, actual_seq_kvlen=ckv)
    args.update(kw)
    return fas("pynative", q, k, v, 4, "float16", **args)


@pytest.mark.parametrize("kw, message", [
    (dict(actual_seq_kvlen=[8, 8, 28, 48]), "'actual_seq_kvlen' must not hold an empty sequence"),
    (dict(actual_seq_qlen=[5, 4, 22, 31]), "'actual_seq_qlen' must be non-decreasing"),
    (dict(actual_seq_qlen=[5, 5, 22, 30]), "must equal the number of tokens"),
    (dict(actual_seq_kvlen=[8, 48]), "'actual_seq_kvlen' must hold as many values"),
    (dict(sparse_mode=5, prefix=[1, 2, 18, 0]), "each 'prefix' value must be in [0, 17]"),
    (dict(sparse_mode=6), "'prefix' is required"),
    (dict(sparse_mode=5, prefix=[1, 2]), "'prefix' must hold B = 4 values"),
    (dict(keep_prob=0.5, drop_mask=np.zeros((3,), np.uint8)), "'drop_mask' must be the bit-packed"),
    (dict(drop_mask=np.zeros((1000,), np.uint8)), "'drop_mask' must be None when keep_prob is 1.0"),
    (dict(attn_mask=np.zeros((16, 22), bool)), "'attn_mask' shape must be"),
    (dict(real_shift=np.zeros((1, 4, 17, 19), np.float32)), "'real_shift' must be"),
])
def test_kernel_rejects_what_values_hide(rng, kw, message):
    with pytest.raises(RuntimeError, match=message.replace("[", r"\[").replace("]", r"\]")):
        _tnd_call(rng, **kw)


@pytest.mark.parametrize("layout", ["BSH", "BNSD"])
def test_kernel_rejects_bad_shapes(rng, layout):
    q, k, v = qkv(rng, "float16", layout=layout)
    with pytest.raises(RuntimeError, match="'head_num' is not greater than 0"):
        fas("pynative", q, k, v, 0, "float16", input_layout=layout)
    with pytest.raises(RuntimeError, match="'scale_value' must be finite"):
        fas("pynative", q, k, v, 4, "float16", input_layout=layout, scale=float("inf"))
    with pytest.raises(RuntimeError, match="'actual_seq_qlen' must be None"):
        fas("pynative", q, k, v, 4, "float16", input_layout=layout, actual_seq_qlen=[37, 37])
    k3, v3 = (to_layout(draw(rng, (2, 3, 45, 16), "float16"), layout) for _ in range(2))
    with pytest.raises(RuntimeError, match="multiple of the key/value head count"):
        fas("pynative", q, k3, v3, 4, "float16", input_layout=layout)
    with pytest.raises(RuntimeError, match="'drop_mask' needs the key length S2 to be a multiple of 8"):
        fas("pynative", q, k, v, 4, "float16", input_layout=layout, keep_prob=0.5,
            drop_mask=np.zeros((2, 4, 37, 5), np.uint8))


@pytest.mark.parametrize("layout", ["BSH", "BNSD", "TND"])
def test_query_of_the_wrong_rank_gets_the_kernels_message(rng, layout):
    """A query whose rank does not fit the layout (a dynamic-rank graph lets one past the Python checks) must reach
    the kernel's reader and its message, not fail in MindSpore's resize on a statistics shape of -1."""
    q = draw(rng, (2, 4, 37, 16, 1) if layout == "BNSD" else (2, 37, 4, 16), "float16")
    k = v = draw(rng, (45, 2, 16) if layout == "TND" else (2, 2, 45, 16), "float16")
    lengths = dict(actual_seq_qlen=[37], actual_seq_kvlen=[45]) if layout == "TND" else {}
    with pytest.raises(RuntimeError, match="'query' must be"):
        fas("pynative", q, k, v, 4, "float16", input_layout=layout, **lengths)
    with pytest.raises(RuntimeError, match="'query' must be"):
        sfa("pynative", q, k, v, 4, layout, "float16", **lengths)


# ---- through the public operators ----------------------------------------------------------------------------

class _FasCell(nn.Cell):
    def __init__(self, **attrs):
        super().__init__()
        self.fas = primitives.FlashAttentionScore(**attrs)

    def construct(self, query, key, value, real_shift, attn_mask, actual_seq_qlen, actual_seq_kvlen):
        return self.fas(query, key, value, real_shift, None, None, attn_mask, None, actual_seq_qlen,
                        actual_seq_kvlen)


class _SfaCell(nn.Cell):
    def construct(self, query, key, value, pse):
        return ops.speed_fusion_attention(query, key, value, 4, "BSH", pse=pse, scale=0.3, keep_prob=0.7,
                                          sparse_mode=3, pse_type=2)


def _public(mode, cell, *args):
    ms.set_context(mode=ms.GRAPH_MODE if mode == "graph" else ms.PYNATIVE_MODE)
    out = ms.jit(cell.construct)(*args) if mode == "jit" else cell(*args)
    return [to_numpy(o) for o in out]


def test_public_fas_primitive_tnd_mask_and_real_shift(rng, mode):
    q, k, v, cq, ckv = tnd(rng, "bfloat16")
    pse = draw(rng, (4, 4, 17, 20), "bfloat16")
    mask = rng.random((20, 22)) < 0.3
    attrs = dict(head_num=4, keep_prob=1.0, scale_value=0.3, pre_tokens=INT_MAX, next_tokens=INT_MAX,
                 inner_precise=0, input_layout="TND", sparse_mode=1)
    got = _public(mode, _FasCell(**attrs), Tensor(q, ms.bfloat16), Tensor(k, ms.bfloat16), Tensor(v, ms.bfloat16),
                  Tensor(pse, ms.bfloat16), Tensor(mask), Tensor(cq), Tensor(ckv))
    want = R.training_attention(q, k, v, head_num=4, input_layout="TND", pse=pse, attn_mask=mask, scale=0.3,
                                sparse_mode=1, actual_seq_qlen=cq, actual_seq_kvlen=ckv)
    check_fas(got, want, "bfloat16")


def test_public_sfa_dropout_uses_the_seed_it_reports(rng, mode):
    q, k, v = qkv(rng, "float16", layout="BSH")
    slopes = rng.random((4,)).astype(np.float32)
    got = _public(mode, _SfaCell(), Tensor(q, ms.float16), Tensor(k, ms.float16), Tensor(v, ms.float16),
                  Tensor(slopes))
    seed, offset = int(got[4][0]), int(got[5][0])
    want = R.speed_fusion_attention(q, k, v, 4, "BSH", pse=slopes, scale=0.3, keep_prob=0.7, sparse_mode=3,
                                    pse_type=2, seed=seed, offset=offset)
    assert_close(got[0], want[0], "float16")
    assert_stats_close(got[1], want[1])
    assert int(got[6][0]) == 2 * 4 * 37 * 45


class _SfaSbh(nn.Cell):
    def construct(self, query, key, value):
        return ops.speed_fusion_attention(query, key, value, 4, "SBH", scale=0.3, sparse_mode=2)


@pytest.mark.parametrize("dynamic", [[None, None, 64], None])
def test_infer_shape_with_unknown_dims_and_rank(rng, dynamic):
    """Graph mode with dynamic dims / rank: the C++ InferShape gives every output's shape at run time (SBH's
    statistics are (B, N1, S1, 8) with B the second axis)."""
    net = _SfaSbh()
    placeholder = Tensor(shape=dynamic, dtype=ms.float16)
    net.set_inputs(placeholder, placeholder, placeholder)
    q = round_to(rng.standard_normal((10, 2, 64)), "float16")
    ms.set_context(mode=ms.GRAPH_MODE)
    try:
        got = [to_numpy(o) for o in net(Tensor(q, ms.float16), Tensor(q, ms.float16), Tensor(q, ms.float16))]
    finally:
        ms.set_context(mode=ms.PYNATIVE_MODE)
    assert [o.shape for o in got] == [(10, 2, 64), (2, 4, 10, 8), (2, 4, 10, 8), (1,), (1,), (1,), (1,)]
    want = R.speed_fusion_attention(q, q, q, 4, "SBH", scale=0.3, sparse_mode=2)
    assert_close(got[0], want[0], "float16")
    assert_stats_close(got[1], want[1])
