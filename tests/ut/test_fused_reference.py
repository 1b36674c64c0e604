"""The numpy golden of the prefill / fused operators checked against independent formulations: the incre
reference for Sq = 1, a direct causal softmax, and rewritings that must not change the result (paged = contiguous,
TND = padded, shared prefix = concatenated keys, per-token antiquant = dequantized float keys)."""
import numpy as np
import pytest

from ms_attention.kernels.reference import fused_attention as F
from ms_attention.kernels.reference import incre_flash_attention as I

B, N, KVN, S, D = 2, 4, 2, 40, 16


@pytest.fixture
def rng():
    return np.random.default_rng(7)


def _direct(q, k, v, scale, discard, sink=None):
    """softmax attention on (B, N, Sq, D) / (B, kvN, S, D) with a (Sq, S) discard plane, by the formula."""
    group = q.shape[1] // k.shape[1]
    k, v = np.repeat(k, group, 1), np.repeat(v, group, 1)
    s = np.where(discard, -np.inf, q @ k.transpose(0, 1, 3, 2) * scale)
    m = s.max(-1, keepdims=True)
    if sink is not None:
        m = np.maximum(m, sink[None, :, None, None])
    p = np.exp(s - m)
    total = p.sum(-1, keepdims=True) + (0 if sink is None else np.exp(sink[None, :, None, None] - m))
    return (p @ v) / total, (m + np.log(total))[..., 0]


def test_decode_matches_the_incre_reference(rng):
    q = rng.standard_normal((B, 1, N * D))
    k, v = rng.standard_normal((2, B, S, KVN * D))
    mask = rng.random((B, 1, 1, S)) < 0.3
    pse = rng.standard_normal((1, N, 1, S))
    args = dict(num_heads=N, num_key_value_heads=KVN)
    want = I.incre_flash_attention(q, k, v, attn_mask=mask, pse_shift=pse, actual_seq_lengths=[30, 37],
                                   scale_value=0.3, **args)
    got, _ = F.fused_infer_attention_score(q, [k], [v], atten_mask=mask, pse_shift=pse,
                                           actual_seq_lengths_kv=[30, 37], scale=0.3, sparse_mode=3, **args)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode", [2, 3, 4])
def test_sparse_modes_match_the_formula(rng, mode):
    sq = 6
    q = rng.standard_normal((B, N, sq, D))
    k, v = rng.standard_normal((2, B, KVN, S, D))
    i, j = np.arange(sq)[:, None], np.arange(S)[None, :]
    d = S - sq
    discard = {2: j > i, 3: j > i + d, 4: (j - i > 3 + d) | (j - i < d - 5)}[mode]
    want, want_lse = _direct(q, k, v, 0.5, discard)
    got, lse = F.fused_infer_attention_score(q, k, v, num_heads=N, num_key_value_heads=KVN, input_layout="BNSD",
                                             sparse_mode=mode, pre_tokens=5, next_tokens=3, scale=0.5,
                                             softmax_lse_flag=True)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(lse[..., 0], want_lse, rtol=1e-6)


def test_bnsd_bsnd_output_is_transposed(rng):
    q = rng.standard_normal((B, N, 5, D))
    k, v = rng.standard_normal((2, B, KVN, S, D))
    args = dict(num_heads=N, num_key_value_heads=KVN, sparse_mode=3)
    bnsd, _ = F.fused_infer_attention_score(q, k, v, input_layout="BNSD", **args)
    bsnd, _ = F.fused_infer_attention_score(q, k, v, input_layout="BNSD_BSND", **args)
    assert bsnd.shape == (B, 5, N, D)
    np.testing.assert_array_equal(bsnd, bnsd.transpose(0, 2, 1, 3))


def test_tnd_equals_padded_bsnd(rng):
    q = rng.standard_normal((8, N, D))
    k, v = rng.standard_normal((2, 8, KVN, D))
    got, lse = F.fused_infer_attention_score(q, k, v, num_heads=N, num_key_value_heads=KVN, input_layout="TND",
                                             sparse_mode=3, actual_seq_lengths=[3, 8],
                                             actual_seq_lengths_kv=[3, 8], softmax_lse_flag=True)
    assert lse.shape == (8, N, 1)
    padded = [np.zeros((B, 5) + src.shape[1:]) for src in (q, k, v)]
    for x, src in zip(padded, (q, k, v)):
        x[0, :3], x[1] = src[:3], src[3:]
    want, want_lse = F.fused_infer_attention_score(
        *padded, num_heads=N, num_key_value_heads=KVN,
        input_layout="BSND", sparse_mode=3, actual_seq_lengths=[3, 5], actual_seq_lengths_kv=[3, 5],
        softmax_lse_flag=True)
    np.testing.assert_array_equal(got[:3], want[0, :3])
    np.testing.assert_array_equal(got[3:], want[1])
    assert np.all(want[0, 3:] == 0) and np.all(np.isinf(want_lse[0, :, 3:]))


def test_paged_equals_contiguous(rng):
    q = rng.standard_normal((B, 6, N * D))
    k, v = rng.standard_normal((2, B, S, KVN * D))
    lens, bs = [33, 40], 16
    order = rng.permutation(8)
    caches = np.zeros((2, 8, bs, KVN * D))
    table = np.full((B, 3), -1, np.int32)
    for b in range(B):
        for t in range(lens[b]):
            block = order[b * 3 + t // bs]
            table[b, t // bs] = block
            caches[0, block, t % bs], caches[1, block, t % bs] = k[b, t], v[b, t]
    args = dict(num_heads=N, num_key_value_heads=KVN, sparse_mode=3, actual_seq_lengths_kv=lens,
                softmax_lse_flag=True)
    want = F.fused_infer_attention_score(q, k, v, **args)
    got = F.fused_infer_attention_score(q, caches[0], caches[1], block_table=table, block_size=bs, **args)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


def test_shared_prefix_equals_concatenated_keys(rng):
    q = rng.standard_normal((B, 6, N * D))
    k, v = rng.standard_normal((2, B, S, KVN * D))
    pk, pv = rng.standard_normal((2, 1, 9, KVN * D))
    args = dict(num_heads=N, num_key_value_heads=KVN)
    got, _ = F.fused_infer_attention_score(q, k, v, key_shared_prefix=pk, value_shared_prefix=pv,
                                           actual_shared_prefix_len=[7], **args)
    want, _ = F.fused_infer_attention_score(q, np.concatenate([np.repeat(pk[:, :7], B, 0), k], 1),
                                            np.concatenate([np.repeat(pv[:, :7], B, 0), v], 1), **args)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_antiquant_equals_dequantized_keys(rng):
    q = rng.standard_normal((B, 6, N * D))
    k8, v8 = rng.integers(-128, 128, (2, B, S, KVN * D)).astype(np.int8)
    scale, offset = rng.random((2, B, S)) * 0.02, rng.standard_normal((2, B, S))
    args = dict(num_heads=N, num_key_value_heads=KVN)
    got, _ = F.fused_infer_attention_score(q, k8, v8, antiquant_scale=scale, antiquant_offset=offset,
                                           antiquant_mode=1, **args)
    want, _ = F.fused_infer_attention_score(q, (k8 + offset[0][..., None]) * scale[0][..., None],
                                            (v8 + offset[1][..., None]) * scale[1][..., None], **args)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    channel = rng.random(KVN * D) * 0.02
    got, _ = F.fused_infer_attention_score(q, k8, v8, key_antiquant_scale=channel,
                                           value_antiquant_scale=np.array([0.01]), **args)
    want, _ = F.fused_infer_attention_score(q, k8 * channel, v8 * 0.01, **args)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_learnable_sink_joins_the_denominator(rng):
    q = rng.standard_normal((B, N, 5, D))
    k, v = rng.standard_normal((2, B, KVN, S, D))
    sink = rng.standard_normal(N)
    want, want_lse = _direct(q, k, v, 1.0, np.zeros((5, S), bool), sink)
    got, lse = F.fused_infer_attention_score_v2(q, k, v, num_query_heads=N, num_key_value_heads=KVN,
                                                input_layout="BNSD", learnable_sink=sink, return_softmax_lse=True)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(lse[..., 0], want_lse, rtol=1e-6)


def test_rope_adds_a_second_dot_product(rng):
    q, qr = rng.standard_normal((B, N, 5, D)), rng.standard_normal((B, N, 5, 8))
    k, kr = rng.standard_normal((B, KVN, S, D)), rng.standard_normal((B, KVN, S, 8))
    v = rng.standard_normal((B, KVN, S, D))
    got, _ = F.fused_infer_attention_score_v2(q, k, v, query_rope=qr, key_rope=kr, num_query_heads=N,
                                              num_key_value_heads=KVN, input_layout="BNSD", softmax_scale=0.2)
    want, _ = _direct(np.concatenate([q, qr], -1), np.concatenate([k, kr], -1), v, 0.2, np.zeros((5, S), bool))
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_full_quant_and_uint64_scales(rng):
    q8 = rng.integers(-20, 20, (B, 6, N * D)).astype(np.int8)
    k8, v8 = rng.integers(-128, 128, (2, B, S, KVN * D)).astype(np.int8)
    args = dict(num_heads=N, num_key_value_heads=KVN)
    scales = dict(quant_scale1=np.array([127.0], np.float32), deq_scale2=np.array([1 / 127], np.float32))
    got = F.prompt_flash_attention(q8, k8, v8, deq_scale1=np.array([1e-3], np.float32), **scales, **args)
    bits = np.frombuffer(np.float32(1e-3).tobytes() + b"\0" * 4, np.uint64)
    np.testing.assert_array_equal(F.prompt_flash_attention(q8, k8, v8, deq_scale1=bits, **scales, **args), got)
    # P quantized to 1/127 steps: within a few steps of the float result (|V| <= 128)
    exact = F.prompt_flash_attention(q8.astype(float), k8.astype(float), v8.astype(float), scale_value=1e-3, **args)
    assert np.abs(got - exact).max() < 128 * S / 127


def test_left_padding_windows(rng):
    q = rng.standard_normal((B, 6, N * D))
    k, v = rng.standard_normal((2, B, S, KVN * D))
    out, lse = F.fused_infer_attention_score(q, k, v, actual_seq_lengths=[4, 6], actual_seq_lengths_kv=[30, 35],
                                             query_padding_size=np.array([1]), kv_padding_size=np.array([2]),
                                             num_heads=N, num_key_value_heads=KVN, softmax_lse_flag=True)
    # batch 0 queries sit at stored rows [1, 5); keys at [8, 38)
    assert np.all(out[0, 0] == 0) and np.all(out[0, 5] == 0) and np.all(np.isinf(lse[0, :, [0, 5]]))
    want, _ = F.fused_infer_attention_score(q[:1, 1:5], k[:1, 8:38], v[:1, 8:38], num_heads=N,
                                            num_key_value_heads=KVN)
    np.testing.assert_allclose(out[:1, 1:5], want, rtol=1e-12, atol=1e-12)
