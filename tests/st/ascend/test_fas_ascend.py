"""ST on Atlas A2: MindSpore's native FlashAttentionScore and SpeedFusionAttention (where ms_attention's
flash_attention_score / speed_fusion_attention and the FlashAttentionScore primitive dispatch on Ascend) against
ms_attention's numpy reference (ms_attention.kernels.reference.training_attention): attention_out, softmax_max /
softmax_sum, and the gradients of query, key, value and real_shift. Skipped unless device_target is Ascend (the
`ascend` marker, see tests/conftest.py).

The NPU needs what the CPU kernel makes optional: the compressed (2048, 2048) mask with sparse_mode 2-4 and 6-8,
D a multiple of 16, an explicit drop_mask for dropout; MindSpore's speed_fusion_attention runs in PyNative only.
The drop_mask case checks the documented bit layout (LSB first, bit j & 7 of byte j >> 3) on the NPU."""
import os
import sys

import numpy as np
import pytest
import mindspore as ms
from mindspore import Tensor, nn

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "ut"))
from ifa_cases import assert_close, round_to, to_numpy, to_tensor  # noqa: E402  pylint: disable=wrong-import-position
from ms_attention import ops, primitives  # noqa: E402  pylint: disable=wrong-import-position
from ms_attention.kernels.reference import training_attention as reference  # noqa: E402  pylint: disable=C0413

pytestmark = pytest.mark.ascend

COMPRESSED_MASK = np.triu(np.ones((2048, 2048), np.uint8), 1)
B, N1, N2, S, D = 2, 8, 2, 512, 128
SCALE = D ** -0.5
SHAPES = {"BSH": ((B, S, N1 * D), (B, S, N2 * D)), "SBH": ((S, B, N1 * D), (S, B, N2 * D)),
          "BNSD": ((B, N1, S, D), (B, N2, S, D)), "BSND": ((B, S, N1, D), (B, S, N2, D))}


def _set_mode(mode):
    ms.set_context(mode=ms.GRAPH_MODE if mode == "graph" else ms.PYNATIVE_MODE)


def _inputs(rng, layout, dtype, q_shape=None, kv_shape=None):
    q_shape = q_shape or SHAPES[layout][0]
    kv_shape = kv_shape or SHAPES[layout][1]
    draw = lambda shape: round_to(rng.standard_normal(shape).astype(np.float32), dtype)
    return draw(q_shape), draw(kv_shape), draw(kv_shape)


def assert_grad_close(actual, expected):
    """Each element within 1 % of the largest expected magnitude (a gradient sums many products)."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape and np.isfinite(actual).all()
    bound = 1e-2 * max(np.abs(expected).max(initial=0), 1e-6)
    assert np.abs(actual - expected).max(initial=0) <= bound


class Primitive(nn.Cell):
    """MindFormers' way: the primitive in __init__, all four outputs."""

    def __init__(self, layout, sparse_mode, keep_prob=1.0, pre_tokens=2147483647, next_tokens=2147483647):
        super().__init__()
        self.op = primitives.FlashAttentionScore(head_num=N1, keep_prob=keep_prob, scale_value=SCALE,
                                                 pre_tokens=pre_tokens, next_tokens=next_tokens,
                                                 input_layout=layout, sparse_mode=sparse_mode)

    def construct(self, query, key, value, real_shift, drop_mask, attn_mask):
        return self.op(query, key, value, real_shift, drop_mask, None, attn_mask, None, None, None)


class Loss(nn.Cell):
    def __init__(self, cell):
        super().__init__()
        self.cell = cell

    def construct(self, query, key, value, real_shift, drop_mask, attn_mask, dy):
        return (self.cell(query, key, value, real_shift, drop_mask, attn_mask)[3].astype(ms.float32) * dy).sum()


def _check(mode, layout, dtype, sparse_mode, mask, pse=None, keep_prob=1.0, drop_mask=None, pre_tokens=2147483647,
           next_tokens=2147483647, seed=0):
    _set_mode(mode)
    rng = np.random.default_rng(seed)
    q, k, v = _inputs(rng, layout, dtype)
    dy = rng.standard_normal(q.shape).astype(np.float32)
    args = [to_tensor(q, dtype), to_tensor(k, dtype), to_tensor(v, dtype),
            None if pse is None else to_tensor(pse, dtype), None if drop_mask is None else Tensor(drop_mask),
            None if mask is None else Tensor(mask)]
    cell = Primitive(layout, sparse_mode, keep_prob, pre_tokens, next_tokens)
    softmax_max, softmax_sum, _, out = cell(*args)
    kwargs = dict(head_num=N1, input_layout=layout, pse=pse, attn_mask=mask, drop_mask=drop_mask, scale=SCALE,
                  keep_prob=keep_prob, pre_tokens=pre_tokens, next_tokens=next_tokens, sparse_mode=sparse_mode)
    want, row_max, row_sum = reference.training_attention(q, k, v, **kwargs)
    assert_close(to_numpy(out), want, dtype)
    np.testing.assert_allclose(softmax_max.asnumpy(), row_max, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(softmax_sum.asnumpy(), row_sum, rtol=1e-3, atol=1e-3)
    positions = (0, 1, 2, 3) if pse is not None else (0, 1, 2)
    grads = ms.grad(Loss(cell), grad_position=positions)(*args, Tensor(dy))
    expected = reference.training_attention_grad(q, k, v, dy, row_max, row_sum, round_to(want, dtype), **kwargs)
    for got, exp in zip(grads, expected):
        assert_grad_close(to_numpy(got), exp)


@pytest.mark.parametrize("layout", ["BSH", "SBH", "BNSD", "BSND"])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_native_causal_matches_reference(mode, layout, dtype):
    _check(mode, layout, dtype, 3, COMPRESSED_MASK)


@pytest.mark.parametrize("sparse_mode", [0, 1])
def test_native_full_mask(mode, sparse_mode):
    mask = (np.random.default_rng(7).random((B, 1, S, S)) < 0.2).astype(np.uint8)
    _check(mode, "BNSD", "float16", sparse_mode, mask, pre_tokens=300, next_tokens=100)


def test_native_band(mode):
    _check(mode, "BSH", "float16", 4, COMPRESSED_MASK, pre_tokens=128, next_tokens=16)


def test_native_real_shift_and_its_gradient(mode):
    pse = round_to(np.random.default_rng(8).standard_normal((1, N1, S, S)).astype(np.float32), "float16")
    _check(mode, "BNSD", "float16", 2, COMPRESSED_MASK, pse=pse)


def test_native_drop_mask_bit_layout(mode):
    keep = np.random.default_rng(9).random((B, N1, S, S)) < 0.8
    _check(mode, "BNSD", "float16", 0, None, keep_prob=0.8, drop_mask=reference.pack_drop_mask(keep))


def test_native_tnd_varlen(mode):
    _set_mode(mode)
    rng = np.random.default_rng(10)
    q_lens, kv_lens = [300, 17, 128], [300, 17, 128]
    qlen, kvlen = np.cumsum(q_lens).tolist(), np.cumsum(kv_lens).tolist()
    q, k, v = _inputs(rng, "TND", "float16", (qlen[-1], N1, D), (kvlen[-1], N2, D))
    out = ops.flash_attention_score(to_tensor(q, "float16"), to_tensor(k, "float16"), to_tensor(v, "float16"), N1,
                                    attn_mask=Tensor(COMPRESSED_MASK), actual_seq_qlen=qlen, actual_seq_kvlen=kvlen,
                                    scalar_value=SCALE, input_layout="TND", sparse_mode=3)
    want, _, _ = reference.training_attention(q, k, v, head_num=N1, input_layout="TND", actual_seq_qlen=qlen,
                                              actual_seq_kvlen=kvlen, scale=SCALE, sparse_mode=3)
    assert_close(to_numpy(out), want, "float16")


def test_native_speed_fusion_attention_pynative():
    """MindSpore's speed_fusion_attention runs in PyNative only; pse_type 1 with a bias, causal."""
    _set_mode("pynative")
    rng = np.random.default_rng(11)
    q, k, v = _inputs(rng, "BSH", "float16")
    pse = round_to(rng.standard_normal((B, N1, S, S)).astype(np.float32), "float16")
    out = ops.speed_fusion_attention(to_tensor(q, "float16"), to_tensor(k, "float16"), to_tensor(v, "float16"), N1,
                                     "BSH", pse=to_tensor(pse, "float16"), atten_mask=Tensor(COMPRESSED_MASK),
                                     scale=SCALE, sparse_mode=3)
    want, row_max, row_sum = reference.training_attention(q, k, v, head_num=N1, input_layout="BSH", pse=pse,
                                                          scale=SCALE, sparse_mode=3)
    assert len(out) == 7
    assert_close(to_numpy(out[0]), want, "float16")
    np.testing.assert_allclose(out[1].asnumpy(), row_max, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(out[2].asnumpy(), row_sum, rtol=1e-3, atol=1e-3)
