"""The C++ flash-attention backward (flash_attention_score_grad, attention/backward.h) against the numpy golden
(ms_attention/kernels/reference/training_attention.py), one axis per feature.

Two ways in:
- the public API: mindspore.grad of sum(w * flash_attention_score(...)) (or speed_fusion_attention), so the forward
  kernel, the bprop and the backward kernel run together; the golden's dy is w in the query dtype;
- the internal op ops._flash_attention_score_grad, fed the golden forward's softmax_max / softmax_sum /
  attention_out, where a feature is checked in isolation (generated dropout from a chosen seed / offset, rows that
  see no key).
Shapes cross the kernel's tiles (48 keys x 64 rows): 70 query rows and 90 keys by default, head dim 40 (a vector
tail)."""
import numpy as np
import pytest
import mindspore as ms
from mindspore import Tensor, nn

from fused_cases import run as run_internal
from ifa_cases import round_to, to_numpy
from ms_attention import ops
from ms_attention.kernels.reference import training_attention as R

MS_DTYPE = {"float16": ms.float16, "bfloat16": ms.bfloat16, "float32": ms.float32}
RTOL = {"float16": 0.005, "bfloat16": 0.0078125, "float32": 1e-5}
INT_MAX = 2147483647


def assert_grad_close(actual, expected, dtype, name):
    """Each element within rtol of itself plus rtol of a tenth of the tensor's largest magnitude (a gradient is a
    sum whose small elements carry the rounding of large terms); 99.5 % inside, none beyond 4x, no NaN."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, (name, actual.shape, expected.shape)
    assert not np.isnan(actual).any(), f"NaN in {name}"
    if expected.size == 0:
        return
    rtol = RTOL[dtype]
    bound = rtol * (np.abs(expected) + 0.1 * np.abs(expected).max() + 1e-6)
    error = np.abs(actual - expected)
    assert (error <= bound).mean() >= 0.995, f"{name}: worst error {error.max()} (largest |expected| " \
                                             f"{np.abs(expected).max()})"
    assert not (error > 4 * bound).any(), f"{name}: worst error {error.max()}"


def to_layout(x, layout):
    """(B, N, S, D) -> BSH / SBH / BNSD / BSND."""
    b, n, s, d = x.shape
    if layout == "BSH":
        return x.transpose(0, 2, 1, 3).reshape(b, s, n * d)
    if layout == "SBH":
        return x.transpose(2, 0, 1, 3).reshape(s, b, n * d)
    return x if layout == "BNSD" else x.transpose(0, 2, 1, 3)


class Inputs:
    """query / key / value / dy (numpy, values exact in dtype) in a layout; TND when lengths are given."""

    def __init__(self, b=2, n=4, kvn=2, s1=70, s2=90, d=40, layout="BSH", dtype="bfloat16", seed=0,
                 seq_q=None, seq_kv=None):
        rng = np.random.default_rng(seed)
        self.rng, self.n, self.d, self.layout, self.dtype = rng, n, d, layout, dtype
        if layout == "TND":
            t1, t2 = seq_q[-1], seq_kv[-1]
            shapes = ((t1, n, d), (t2, kvn, d), (t2, kvn, d), (t1, n, d))
            self.q, self.k, self.v, self.dy = (round_to(rng.standard_normal(s), dtype) for s in shapes)
        else:
            shapes = ((b, n, s1, d), (b, kvn, s2, d), (b, kvn, s2, d), (b, n, s1, d))
            self.q, self.k, self.v, self.dy = (to_layout(round_to(rng.standard_normal(s), dtype), layout)
                                               for s in shapes)

    def tensor(self, x, dtype=None):
        return Tensor(np.asarray(x, np.float32), MS_DTYPE[dtype or self.dtype])


class _Grad(nn.Cell):
    def __init__(self, loss, positions):
        super().__init__()
        self.grad = ms.grad(loss, grad_position=positions)

    def construct(self, *args):
        return self.grad(*args)


def public_grads(mode, forward, args):
    """mindspore.grad of forward(*args) with respect to every argument, in PyNative, Graph or jit."""
    positions = tuple(range(len(args)))
    if mode == "pynative":
        ms.set_context(mode=ms.PYNATIVE_MODE)
        grads = ms.grad(forward, grad_position=positions)(*args)
    elif mode == "graph":
        ms.set_context(mode=ms.GRAPH_MODE)
        grads = _Grad(forward, positions)(*args)
    else:
        ms.set_context(mode=ms.PYNATIVE_MODE)
        grads = ms.jit(_Grad(forward, positions).construct)(*args)
    return [to_numpy(g) for g in grads]


def check_fas(mode, x, *, real_shift=None, **kw):
    """mindspore.grad through ops.flash_attention_score against the golden (dq, dk, dv and d real_shift)."""
    scale = x.d ** -0.5
    weight = Tensor(np.asarray(x.dy, np.float32))
    mask = kw.get("attn_mask")
    fas_kw = dict(kw, attn_mask=None if mask is None else Tensor(np.asarray(mask, np.uint8)))
    for name in ("prefix", "actual_seq_qlen", "actual_seq_kvlen"):
        if kw.get(name) is not None:
            fas_kw[name] = tuple(int(v) for v in kw[name])
    if kw.get("drop_mask") is not None:
        fas_kw["drop_mask"] = Tensor(np.asarray(kw["drop_mask"], np.uint8))

    def loss(q, k, v, *pse):
        out = ops.flash_attention_score(q, k, v, x.n, *pse, scalar_value=scale, input_layout=x.layout, **fas_kw)
        return (out.astype(ms.float32) * weight).sum()

    args = [x.tensor(x.q), x.tensor(x.k), x.tensor(x.v)] + ([] if real_shift is None else [x.tensor(real_shift)])
    got = public_grads(mode, loss, args)
    ref_kw = {k: v for k, v in kw.items()}
    golden(x, got, scale, pse=real_shift, **ref_kw)


def golden(x, got, scale, pse=None, pse_type=1, **kw):
    out, mx, sm = R.training_attention(x.q, x.k, x.v, head_num=x.n, input_layout=x.layout, pse=pse,
                                       pse_type=pse_type, scale=scale, **kw)
    out = round_to(out, x.dtype)
    want = R.training_attention_grad(x.q, x.k, x.v, x.dy, mx, sm, out, head_num=x.n, input_layout=x.layout, pse=pse,
                                     pse_type=pse_type, scale=scale, **kw)
    for name, g, w in zip(("dq", "dk", "dv", "dpse"), got, want):
        assert_grad_close(g, w, x.dtype, name)


def internal_grads(mode, x, *, pse=None, pse_type=1, drop_mask=None, attn_mask=None, prefix=None,
                   actual_seq_qlen=None, actual_seq_kvlen=None, q_start_idx=None, kv_start_idx=None, keep_prob=1.0,
                   pre_tokens=INT_MAX, next_tokens=INT_MAX, sparse_mode=0, seed=0, offset=0):
    """ops._flash_attention_score_grad on the golden forward's statistics and output; returns (got, want)."""
    scale = x.d ** -0.5
    ref_kw = dict(pse=pse, pse_type=pse_type, drop_mask=drop_mask, attn_mask=attn_mask, prefix=prefix,
                  actual_seq_qlen=actual_seq_qlen, actual_seq_kvlen=actual_seq_kvlen, q_start_idx=q_start_idx,
                  kv_start_idx=kv_start_idx, scale=scale, keep_prob=keep_prob, pre_tokens=pre_tokens,
                  next_tokens=next_tokens, sparse_mode=sparse_mode, seed=seed, offset=offset)
    out, mx, sm = R.training_attention(x.q, x.k, x.v, head_num=x.n, input_layout=x.layout, **ref_kw)
    out = round_to(out, x.dtype)
    want = R.training_attention_grad(x.q, x.k, x.v, x.dy, mx, sm, out, head_num=x.n, input_layout=x.layout,
                                     **ref_kw)
    ints = lambda v: None if v is None else tuple(int(e) for e in np.ravel(v))
    kwargs = dict(query=x.tensor(x.q), key=x.tensor(x.k), value=x.tensor(x.v), dy=x.tensor(x.dy),
                  pse=None if pse is None else x.tensor(pse, "float32" if pse_type >= 2 else None),
                  drop_mask=None if drop_mask is None else Tensor(np.asarray(drop_mask, np.uint8)),
                  attn_mask=None if attn_mask is None else Tensor(np.asarray(attn_mask, np.uint8)),
                  softmax_max=Tensor(mx), softmax_sum=Tensor(sm), attention_in=x.tensor(out), prefix=ints(prefix),
                  actual_seq_qlen=ints(actual_seq_qlen), actual_seq_kvlen=ints(actual_seq_kvlen),
                  q_start_idx=ints(q_start_idx), kv_start_idx=ints(kv_start_idx),
                  seed=Tensor(np.array([seed], np.int64)), offset=Tensor(np.array([offset], np.int64)),
                  head_num=x.n, keep_prob=keep_prob, scale_value=scale, pre_tokens=pre_tokens,
                  next_tokens=next_tokens, input_layout=x.layout, sparse_mode=sparse_mode, pse_type=pse_type)
    got = [to_numpy(g) for g in run_internal(mode, ops._flash_attention_score_grad, kwargs)]  # pylint: disable=protected-access
    return got, want


def check_internal(mode, x, **kw):
    got, want = internal_grads(mode, x, **kw)
    for name, g, w in zip(("dq", "dk", "dv", "dpse"), got, want):
        assert_grad_close(g, w, x.dtype, name)
    return got


# ---- through the public API ---------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["BSH", "SBH", "BNSD", "BSND"])
def test_layouts(mode, layout):
    check_fas(mode, Inputs(layout=layout, dtype="float16"), sparse_mode=3)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_dtypes_full_attention(mode, dtype):
    check_fas(mode, Inputs(dtype=dtype, d=128, s1=100, s2=100))


@pytest.mark.parametrize("n,kvn,s", [(6, 2, 70), (5, 1, 70), (4, 4, 70), (72, 1, 30)])
def test_gqa(mode, n, kvn, s):
    """G = 3 and 5 do not divide the kernel's 64-row blocks; G = 72 makes a block of one position, 72 rows."""
    check_fas(mode, Inputs(n=n, kvn=kvn, s1=s, s2=s + 20), sparse_mode=2)


@pytest.mark.parametrize("sparse_mode,extra", [
    (0, dict(pre_tokens=20, next_tokens=5)),
    (1, {}),
    (2, {}),
    (3, {}),
    (4, dict(pre_tokens=30, next_tokens=-10)),
    (5, dict(prefix=(13, 60))),
    (6, dict(prefix=(0, 90))),
])
def test_sparse_modes(mode, sparse_mode, extra):
    x = Inputs(layout="BNSD")
    if sparse_mode in (0, 1, 5):
        extra = dict(extra, attn_mask=x.rng.random((2, 1, 70, 90)) < 0.3)
    check_fas(mode, x, sparse_mode=sparse_mode, **extra)


@pytest.mark.parametrize("sparse_mode", [7, 8])
def test_varlen_modes(mode, sparse_mode):
    seq_q, seq_kv = (30, 30, 95), (50, 70, 140)
    x = Inputs(layout="TND", seq_q=seq_q, seq_kv=seq_kv)
    check_fas(mode, x, sparse_mode=sparse_mode, actual_seq_qlen=seq_q, actual_seq_kvlen=seq_kv, pre_tokens=25,
              next_tokens=3)


def test_tnd_with_an_empty_query_batch(mode):
    seq_q, seq_kv = (40, 40, 100), (30, 120, 170)  # batch 1 has no query rows: its keys get zero gradients
    x = Inputs(layout="TND", seq_q=seq_q, seq_kv=seq_kv)
    check_fas(mode, x, sparse_mode=3, actual_seq_qlen=seq_q, actual_seq_kvlen=seq_kv)


@pytest.mark.parametrize("pse_batch", [2, 1])
def test_real_shift_gradient(mode, pse_batch):
    x = Inputs(layout="BNSD")
    real_shift = round_to(x.rng.standard_normal((pse_batch, 4, 70, 90)), x.dtype)
    check_fas(mode, x, real_shift=real_shift, sparse_mode=0)


def test_compressed_alibi_rows_gradient(mode):
    """(B, N, 1024, S2) pse with the causal modes: each pse element sums the rows that read it."""
    x = Inputs(layout="BSND", s1=1100, s2=1100, n=2, kvn=1, b=1, d=16)
    real_shift = round_to(x.rng.standard_normal((1, 2, 1024, 1100)), x.dtype)
    check_fas(mode, x, real_shift=real_shift, sparse_mode=3)


def test_explicit_drop_mask(mode):
    x = Inputs(layout="BNSD", s2=96)
    keep = x.rng.random((2, 4, 70, 96)) < 0.7
    check_fas(mode, x, keep_prob=0.7, drop_mask=R.pack_drop_mask(keep), sparse_mode=3)


# ---- the kernel in isolation (internal op) --------------------------------------------------------------------

def test_generated_dropout_regenerates_the_forward_mask(mode):
    x = Inputs(layout="BSH")
    check_internal(mode, x, keep_prob=0.8, seed=1234, offset=96, sparse_mode=2)


def test_generated_dropout_tnd(mode):
    seq_q, seq_kv = (20, 90), (40, 100)
    x = Inputs(layout="TND", seq_q=seq_q, seq_kv=seq_kv)
    check_internal(mode, x, keep_prob=0.6, seed=-5, offset=7, actual_seq_qlen=seq_q, actual_seq_kvlen=seq_kv,
                   sparse_mode=3)


@pytest.mark.parametrize("pse_type", [0, 1])
def test_sfa_pse_types_float32(mode, pse_type):
    x = Inputs(dtype="float32", layout="BSND")
    pse = x.rng.standard_normal((1, 4, 70, 90)).astype(np.float32)
    check_internal(mode, x, pse=pse, pse_type=pse_type, sparse_mode=3)


@pytest.mark.parametrize("pse_type", [2, 3])
def test_alibi_slopes_get_zero_gradient(mode, pse_type):
    x = Inputs(layout="BSND")
    slopes = np.array([0.5, 0.25, 0.125, 0.0625], np.float32)
    got = check_internal(mode, x, pse=slopes, pse_type=pse_type, q_start_idx=(3,), kv_start_idx=(1,),
                         sparse_mode=3)
    assert got[3].shape == (4,) and not got[3].any()


def test_rows_with_no_visible_key_contribute_nothing(mode):
    x = Inputs(layout="BNSD", s1=60, s2=60)
    mask = x.rng.random((60, 60)) < 0.2
    mask[[3, 40, 59]] = True  # these rows see no key
    got = check_internal(mode, x, attn_mask=mask, sparse_mode=1)
    assert not got[0][:, :, [3, 40, 59]].any()


def test_several_tiles_causal_long(mode):
    check_internal(mode, Inputs(layout="BNSD", b=1, n=2, kvn=1, s1=300, s2=300, d=64), sparse_mode=3)


# ---- what only the kernel sees ----------------------------------------------------------------------------------

def _run_to_the_end(mode, kwargs):
    """The internal op's outputs, read back (PyNative reports a kernel's error when its result is awaited)."""
    return [to_numpy(g) for g in run_internal(mode, ops._flash_attention_score_grad, kwargs)]  # pylint: disable=protected-access


def _grad_call(x, ref=None, **overrides):
    """The internal op's arguments for inputs x (statistics and output from the golden forward, run with `ref`),
    with some replaced."""
    out, mx, sm = R.training_attention(x.q, x.k, x.v, head_num=x.n, input_layout=x.layout, scale=0.5, **(ref or {}))
    kwargs = dict(query=x.tensor(x.q), key=x.tensor(x.k), value=x.tensor(x.v), dy=x.tensor(x.dy), pse=None,
                  drop_mask=None, attn_mask=None, softmax_max=Tensor(mx), softmax_sum=Tensor(sm),
                  attention_in=x.tensor(out), prefix=None, actual_seq_qlen=None, actual_seq_kvlen=None,
                  q_start_idx=None, kv_start_idx=None, seed=Tensor(np.array([0], np.int64)),
                  offset=Tensor(np.array([0], np.int64)), head_num=x.n, keep_prob=1.0, scale_value=0.5,
                  pre_tokens=INT_MAX, next_tokens=INT_MAX, input_layout=x.layout, sparse_mode=0, pse_type=1)
    kwargs.update(overrides)
    return kwargs


@pytest.mark.parametrize("name", ["softmax_max", "softmax_sum"])
def test_statistics_of_another_shape_are_a_runtime_error(mode, name):
    x = Inputs(layout="BNSD", s1=16, s2=16, d=8)
    wrong = Tensor(np.ones((2, 4, 16, 1), np.float32))  # (B, N1, S1, 1), not (B, N1, S1, 8)
    with pytest.raises(RuntimeError, match=name):
        _run_to_the_end(mode, _grad_call(x, **{name: wrong}))


def test_tnd_lengths_beyond_the_tokens_are_a_runtime_error(mode):
    seq = (10, 20)
    x = Inputs(layout="TND", seq_q=seq, seq_kv=seq, d=8)
    kwargs = _grad_call(x, dict(actual_seq_qlen=seq, actual_seq_kvlen=seq),
                        actual_seq_qlen=Tensor(np.array([10, 30], np.int64)),  # Tensor values: only the kernel sees them
                        actual_seq_kvlen=Tensor(np.array([10, 20], np.int64)))
    with pytest.raises(RuntimeError, match="actual_seq_qlen"):
        _run_to_the_end(mode, kwargs)
