"""The numpy golden of flash_attention_score / speed_fusion_attention checked against independent formulations:
a dense softmax written from the formula, gradients by central finite differences in float64, rewritings that
must not change the result (layouts, TND = one batch at a time, compressed pse = its expanded plane, ALiBi = an
explicit bias tensor, generated dropout = the same mask passed explicitly), and the dropout hash recomputed with
Python integers."""
import numpy as np
import pytest

from ms_attention.kernels.reference import training_attention as R

FLT_MAX = float(np.finfo(np.float32).max)
MASK64 = (1 << 64) - 1


@pytest.fixture
def rng():
    return np.random.default_rng(11)


# ---- an independent dense formulation -----------------------------------------------------------------------

def _dense(q, k, v, scale, discard, shift=None, shift_inside=True, keep=None, keep_prob=1.0):
    """Attention on (B, N1, S1, D) / (B, N2, S2, D) from the formula, whole tensors at once. discard broadcasts
    to (B, N1, S1, S2); shift is added inside the scale (pse_type 1) or after it (0). Returns out, max, sum."""
    group = q.shape[1] // k.shape[1]
    k, v = np.repeat(k, group, 1), np.repeat(v, group, 1)
    s = np.einsum("bnid,bnjd->bnij", q, k)
    if shift is not None:
        s = (s + shift) * scale if shift_inside else s * scale + shift
    else:
        s = s * scale
    discard = np.broadcast_to(discard, s.shape)
    s = np.where(discard, -np.inf, s)
    m = s.max(-1, keepdims=True)
    empty = np.isneginf(m)
    e = np.exp(s - np.where(empty, 0.0, m))
    total = e.sum(-1, keepdims=True)
    p = e / np.where(empty, 1.0, total)
    if keep is not None:
        p = p * keep / keep_prob
    out = p @ v
    return out, np.where(empty, -FLT_MAX, m)[..., 0], np.where(empty, FLT_MAX, total)[..., 0]


def _bnsd(rng, b, n, s, d):
    return rng.standard_normal((b, n, s, d))


def _planes(s1, s2):
    i = np.arange(s1)[:, None]
    j = np.arange(s2)[None, :]
    return i, j, s2 - s1


@pytest.mark.parametrize("sparse_mode", [0, 1, 2, 3, 4, 5, 6, 7, 8])
def test_forward_matches_the_dense_formula(rng, sparse_mode):
    b, n1, n2, s1, s2, d = 2, 4, 2, 5, 9, 8
    q, k, v = _bnsd(rng, b, n1, s1, d), _bnsd(rng, b, n2, s2, d), _bnsd(rng, b, n2, s2, d)
    mask = rng.random((b, 1, s1, s2)) < 0.3
    prefix = [2, 6]
    pre, nxt = 2, 1
    i, j, dd = _planes(s1, s2)
    modes = {0: mask | (j - i > nxt) | (i - j > pre), 1: mask, 2: j > i, 3: j > i + dd,
             4: (j - i > nxt + dd) | (j - i < dd - pre),
             5: mask | ((j > i + dd) & (j >= np.array(prefix)[:, None, None, None])),
             6: (j > i + dd) & (j >= np.array(prefix)[:, None, None, None]),
             7: np.stack([j > i + dd, (j - i > nxt + dd) | (j - i < dd - pre)])[:, None],
             8: np.stack([(j - i > nxt + dd) | (j - i < dd - pre), j > i])[:, None]}
    want = _dense(q, k, v, 0.4, modes[sparse_mode])
    got = R.training_attention(q, k, v, head_num=n1, input_layout="BNSD", attn_mask=mask, prefix=prefix,
                               scale=0.4, pre_tokens=pre, next_tokens=nxt, sparse_mode=sparse_mode)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got[1], np.repeat(want[1][..., None], 8, -1).astype(np.float32))
    np.testing.assert_allclose(got[2], np.repeat(want[2][..., None], 8, -1).astype(np.float32))


def test_mode_0_without_mask_ignores_pre_and_next_and_per_head_mask_applies(rng):
    b, n, s, d = 1, 2, 6, 4
    q, k, v = _bnsd(rng, b, n, s, d), _bnsd(rng, b, n, s, d), _bnsd(rng, b, n, s, d)
    plain = _dense(q, k, v, 1.0, np.zeros((s, s), bool))
    got = R.training_attention(q, k, v, head_num=n, input_layout="BNSD", pre_tokens=0, next_tokens=0)
    np.testing.assert_allclose(got[0], plain[0], rtol=1e-12, atol=1e-12)
    mask = rng.random((b, n, s, s)) < 0.5
    got = R.training_attention(q, k, v, head_num=n, input_layout="BNSD", attn_mask=mask.astype(np.uint8),
                               sparse_mode=1)
    np.testing.assert_allclose(got[0], _dense(q, k, v, 1.0, mask)[0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("pse_type", [0, 1])
def test_pse_enters_before_or_after_the_scale(rng, pse_type):
    b, n, s1, s2, d = 2, 3, 4, 6, 5
    q, k, v = _bnsd(rng, b, n, s1, d), _bnsd(rng, b, n, s2, d), _bnsd(rng, b, n, s2, d)
    pse = rng.standard_normal((1, n, s1, s2))
    want = _dense(q, k, v, 0.3, np.zeros((s1, s2), bool), pse, shift_inside=pse_type == 1)
    got = R.training_attention(q, k, v, head_num=n, input_layout="BNSD", pse=pse, pse_type=pse_type, scale=0.3)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("pse_type", [2, 3])
def test_alibi_equals_an_explicit_bias(rng, pse_type):
    b, n, s1, s2, d = 2, 3, 4, 7, 5
    q, k, v = _bnsd(rng, b, n, s1, d), _bnsd(rng, b, n, s2, d), _bnsd(rng, b, n, s2, d)
    slopes = rng.random((b, n)).astype(np.float32)
    q_start, kv_start = 5, 2
    i, j, _ = _planes(s1, s2)
    dist = np.abs(j - i - q_start + kv_start).astype(np.float64)
    bias = -slopes[:, :, None, None].astype(np.float64) * (dist if pse_type == 2 else np.sqrt(dist))
    want = _dense(q, k, v, 0.3, np.zeros((s1, s2), bool), bias, shift_inside=False)
    got = R.training_attention(q, k, v, head_num=n, input_layout="BNSD", pse=slopes, pse_type=pse_type,
                               q_start_idx=[q_start], kv_start_idx=[kv_start], scale=0.3)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-12, atol=1e-12)
    per_head = R.training_attention(q[:1], k[:1], v[:1], head_num=n, input_layout="BNSD", pse=slopes[0],
                                    pse_type=pse_type, q_start_idx=[q_start], kv_start_idx=[kv_start], scale=0.3)
    np.testing.assert_allclose(per_head[0], want[0][:1], rtol=1e-12, atol=1e-12)


def _expand_compressed(pse, s1, s2):
    """The (1024, S2p) compressed rows -> the (S1, S2) plane row by row, by the contract's Toeplitz rule."""
    plane = np.zeros(pse.shape[:2] + (s1, s2))
    for i in range(s1):
        r = i + 1024 - s1
        if r >= 0:
            plane[:, :, i, :] = pse[:, :, r, :s2]
            continue
        for j in range(s2):
            if j - r < pse.shape[3]:
                plane[:, :, i, j] = pse[:, :, 0, j - r]
    return plane


@pytest.mark.parametrize("s1, s2, sparse_mode", [(3, 7, 3), (5, 9, 2), (1027, 6, 2)])
def test_compressed_pse_equals_its_expanded_plane(rng, s1, s2, sparse_mode):
    """S1 < 1024 reads the last S1 of the 1024 rows; S1 > 1024 reads row 0 shifted for the first rows."""
    n, d = 2, 4
    q, k, v = _bnsd(rng, 1, n, s1, d), _bnsd(rng, 1, n, s2, d), _bnsd(rng, 1, n, s2, d)
    pse = rng.standard_normal((1, n, 1024, s2))
    args = dict(head_num=n, input_layout="BNSD", sparse_mode=sparse_mode, scale=0.2)
    got = R.training_attention(q, k, v, pse=pse, **args)
    want = R.training_attention(q, k, v, pse=_expand_compressed(pse, s1, s2), **args)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-12, atol=1e-12)
    dy = rng.standard_normal(got[0].shape)
    dpse = R.training_attention_grad(q, k, v, dy, *got[1:], got[0], pse=pse, **args)[3]
    dpse_full = R.training_attention_grad(q, k, v, dy, *want[1:], want[0],
                                          pse=_expand_compressed(pse, s1, s2), **args)[3]
    # Each element of the compressed rows gathers the gradient of the plane positions that read it.
    index = _expand_compressed(np.arange(pse.size, dtype=np.float64).reshape(pse.shape) + 1, s1, s2)
    gathered = np.zeros(pse.size + 1)
    np.add.at(gathered, index.astype(np.int64).reshape(-1), dpse_full.reshape(-1))
    np.testing.assert_allclose(dpse.reshape(-1), gathered[1:], rtol=1e-9, atol=1e-12)


# ---- outputs and statistics ---------------------------------------------------------------------------------

def test_statistics_and_fully_masked_rows(rng):
    b, n, s, d = 2, 2, 4, 3
    q, k, v = _bnsd(rng, b, n, s, d), _bnsd(rng, b, n, s, d), _bnsd(rng, b, n, s, d)
    mask = np.zeros((b, 1, s, s), bool)
    mask[0, 0, 1] = True                                  # batch 0, row 1 sees no key
    mask[1, 0, :, 2] = True
    out, m, l = R.training_attention(q, k, v, head_num=n, input_layout="BNSD", attn_mask=mask, sparse_mode=1,
                                     scale=0.5)
    assert m.shape == l.shape == (b, n, s, 8) and m.dtype == l.dtype == np.float32
    assert np.all(m[0, :, 1] == np.float32(-FLT_MAX)) and np.all(l[0, :, 1] == np.float32(FLT_MAX))
    assert np.all(out[0, :, 1] == 0)
    scores = np.einsum("bnid,bnjd->bnij", q, k) * 0.5
    visible = ~np.broadcast_to(mask, scores.shape)
    rows = visible.any(-1)
    want_m = np.where(visible, scores, -np.inf).max(-1)
    want_l = np.where(visible, np.exp(scores - want_m[..., None]), 0).sum(-1)
    np.testing.assert_allclose(m[..., 0][rows], want_m[rows], rtol=1e-6)
    np.testing.assert_allclose(l[..., 0][rows], want_l[rows], rtol=1e-6)
    assert np.all(m == m[..., :1]) and np.all(l == l[..., :1])
    assert not np.isnan(out).any()


def test_layouts_are_one_computation(rng):
    b, n1, n2, s1, s2, d = 2, 4, 2, 3, 5, 4
    q, k, v = _bnsd(rng, b, n1, s1, d), _bnsd(rng, b, n2, s2, d), _bnsd(rng, b, n2, s2, d)
    dy = _bnsd(rng, b, n1, s1, d)
    arrange = {"BNSD": lambda x: x, "BSND": lambda x: x.transpose(0, 2, 1, 3),
               "BSH": lambda x: x.transpose(0, 2, 1, 3).reshape(x.shape[0], x.shape[2], -1),
               "SBH": lambda x: x.transpose(2, 0, 1, 3).reshape(x.shape[2], x.shape[0], -1)}
    args = dict(head_num=n1, sparse_mode=3, keep_prob=0.75, seed=4, offset=9, scale=0.5)
    base = R.training_attention(q, k, v, input_layout="BNSD", **args)
    base_grads = R.training_attention_grad(q, k, v, dy, base[1], base[2], base[0], input_layout="BNSD", **args)
    for layout, f in arrange.items():
        out, m, l = R.training_attention(f(q), f(k), f(v), input_layout=layout, **args)
        np.testing.assert_allclose(out, f(base[0]), rtol=1e-12, atol=1e-12)
        np.testing.assert_array_equal(m, base[1])
        np.testing.assert_array_equal(l, base[2])
        grads = R.training_attention_grad(f(q), f(k), f(v), f(dy), m, l, out, input_layout=layout, **args)
        for g, want in zip(grads[:3], base_grads[:3]):
            np.testing.assert_allclose(g, f(want), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("sparse_mode", [0, 3, 7, 8])
def test_tnd_equals_one_bsh_call_per_batch(rng, sparse_mode):
    n1, n2, d = 4, 2, 4
    q_lens, kv_lens = [3, 0, 5, 2], [8, 8, 16, 8]      # S2 % 8 == 0: the BSH drop_mask packs rows of bytes
    q = rng.standard_normal((sum(q_lens), n1, d))
    k, v = rng.standard_normal((2, sum(kv_lens), n2, d))
    dy = rng.standard_normal(q.shape)
    smax_q, smax_kv = max(q_lens), max(kv_lens)
    mask = rng.random((smax_q, smax_kv)) < 0.25
    pse = rng.standard_normal((len(q_lens), n1, smax_q, smax_kv))
    keep = [rng.random((n1, a, c)) < 0.7 for a, c in zip(q_lens, kv_lens)]
    cum = lambda x: np.cumsum(x).tolist()
    args = dict(head_num=n1, scale=0.6, pre_tokens=1, next_tokens=2, keep_prob=0.7)
    tnd = dict(input_layout="TND", actual_seq_qlen=cum(q_lens), actual_seq_kvlen=cum(kv_lens), **args)
    out, m, l = R.training_attention(q, k, v, attn_mask=mask if sparse_mode == 0 else None, pse=pse,
                                     drop_mask=R.pack_drop_mask(keep), sparse_mode=sparse_mode, **tnd)
    assert out.shape == q.shape and m.shape == (sum(q_lens), n1, 8)
    grads = R.training_attention_grad(q, k, v, dy, m, l, out, attn_mask=mask if sparse_mode == 0 else None,
                                      pse=pse, drop_mask=R.pack_drop_mask(keep), sparse_mode=sparse_mode, **tnd)
    q0 = np.concatenate([[0], np.cumsum(q_lens)])
    k0 = np.concatenate([[0], np.cumsum(kv_lens)])
    last_q = max(i for i, x in enumerate(q_lens) if x)
    dpse = np.zeros_like(pse)
    for b, (a, c) in enumerate(zip(q_lens, kv_lens)):
        if a == 0:
            continue
        mode = {7: 4 if b == last_q else 3, 8: 4 if b == 0 else 2}.get(sparse_mode, sparse_mode)
        bsh = lambda x, s, e: x[None, s:e].reshape(1, e - s, -1)
        qb, kb, vb, dyb = bsh(q, q0[b], q0[b + 1]), bsh(k, k0[b], k0[b + 1]), bsh(v, k0[b], k0[b + 1]), \
            bsh(dy, q0[b], q0[b + 1])
        one = dict(input_layout="BSH", attn_mask=mask[:a, :c] if sparse_mode == 0 else None,
                   pse=pse[b:b + 1, :, :a, :c], drop_mask=R.pack_drop_mask(keep[b][None]), sparse_mode=mode, **args)
        want = R.training_attention(qb, kb, vb, **one)
        np.testing.assert_allclose(out[q0[b]:q0[b + 1]].reshape(1, a, -1), want[0], rtol=1e-12, atol=1e-12)
        np.testing.assert_array_equal(m[q0[b]:q0[b + 1]], want[1][0].transpose(1, 0, 2))
        np.testing.assert_array_equal(l[q0[b]:q0[b + 1]], want[2][0].transpose(1, 0, 2))
        want_grads = R.training_attention_grad(qb, kb, vb, dyb, want[1], want[2], want[0], **one)
        np.testing.assert_allclose(grads[0][q0[b]:q0[b + 1]].reshape(1, a, -1), want_grads[0], atol=1e-12)
        np.testing.assert_allclose(grads[1][k0[b]:k0[b + 1]].reshape(1, c, -1), want_grads[1], atol=1e-12)
        np.testing.assert_allclose(grads[2][k0[b]:k0[b + 1]].reshape(1, c, -1), want_grads[2], atol=1e-12)
        dpse[b, :, :a, :c] = want_grads[3][0]
    assert np.all(grads[1][k0[1]:k0[2]] == 0)            # a batch without query rows gets no key gradient
    np.testing.assert_allclose(grads[3], dpse, atol=1e-12)


def test_numels_counts_the_dropout_elements(rng):
    q = np.zeros((2, 3, 8))
    k = np.zeros((2, 5, 4))
    assert R.speed_fusion_attention(q, k, k, 2, "BSH")[6][0] == 2 * 2 * 3 * 5
    q, k = np.zeros((7, 2, 4)), np.zeros((9, 1, 4))
    out = R.speed_fusion_attention(q, k, k, 2, "TND", actual_seq_qlen=[3, 3, 7], actual_seq_kvlen=[2, 5, 9],
                                   keep_prob=0.5, seed=1, offset=2)
    assert out[6][0] == 2 * (3 * 2 + 0 * 3 + 4 * 4)
    assert out[4][0] == 1 and out[5][0] == 2 and out[3].shape == (1,)


# ---- dropout ------------------------------------------------------------------------------------------------

def _mix64_int(x):
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & MASK64
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & MASK64
    return x ^ (x >> 31)


def _keep_by_int(seed, offset, keep_prob, h, t, j, rows):
    """One element of the generated mask, with Python integers."""
    stream = _mix64_int(((seed & MASK64) * 0x9E3779B97F4A7C15 + (offset & MASK64)) & MASK64)
    row_key = _mix64_int(stream ^ (((h * rows + t) * 0xD1B54A32D192ED03) & MASK64))
    u = _mix64_int((row_key + (j + 1) * 0xA24BAED4963EE407) & MASK64)
    return (u >> 40) < int(keep_prob * 2 ** 24)


@pytest.mark.parametrize("seed, offset", [(0, 0), (12345, 12), (-7, 2 ** 40 + 3)])
def test_generated_mask_is_the_contract_hash(seed, offset):
    b, n, s1, s2, p = 2, 3, 4, 9, 0.6
    z = R.generated_keep_mask(seed, offset, p, n, b, s1, s2)
    for bb in range(b):
        for h in range(n):
            for i in range(s1):
                for j in range(s2):
                    assert z[bb, h, i, j] == _keep_by_int(seed, offset, p, h, bb * s1 + i, j, b * s1)
    varlen = R.generated_keep_mask_varlen(seed, offset, p, n, [3, 3, 7], [2, 5, 9])
    for bb, (start, q_len) in enumerate([(0, 3), (3, 0), (3, 4)]):
        kv_len = [2, 3, 4][bb]
        assert varlen[bb].shape == (n, q_len, kv_len)
        for h in range(n):
            for i in range(q_len):
                for j in range(kv_len):
                    assert varlen[bb][h, i, j] == _keep_by_int(seed, offset, p, h, start + i, j, 7)


def test_generated_mask_keep_rate_and_streams():
    p = 0.7
    z = R.generated_keep_mask(5, 0, p, 4, 2, 64, 256)
    sigma = np.sqrt(p * (1 - p) / z.size)
    assert abs(z.mean() - p) < 5 * sigma
    assert abs(z[..., ::2].mean() - z[..., 1::2].mean()) < 10 * sigma   # no column pattern
    other_offset = R.generated_keep_mask(5, 12, p, 4, 2, 64, 256)
    other_seed = R.generated_keep_mask(6, 0, p, 4, 2, 64, 256)
    for other in (other_offset, other_seed):
        agreement = (z == other).mean()
        assert abs(agreement - (p * p + (1 - p) ** 2)) < 0.02           # independent masks
    np.testing.assert_array_equal(z, R.generated_keep_mask(5, 0, p, 4, 2, 64, 256))
    assert R.generated_keep_mask(5, 0, 1.0, 2, 1, 3, 8).all()


def test_generated_dropout_equals_the_same_mask_given_explicitly(rng):
    b, n1, n2, s1, s2, d = 2, 4, 2, 5, 16, 4
    q, k, v = _bnsd(rng, b, n1, s1, d), _bnsd(rng, b, n2, s2, d), _bnsd(rng, b, n2, s2, d)
    args = dict(head_num=n1, input_layout="BNSD", keep_prob=0.75, sparse_mode=2)
    generated = R.training_attention(q, k, v, seed=77, offset=3, **args)
    z = R.generated_keep_mask(77, 3, 0.75, n1, b, s1, s2)
    drop_mask = R.pack_drop_mask(z)
    assert drop_mask.shape == (b, n1, s1, s2 // 8) and drop_mask.dtype == np.uint8
    explicit = R.training_attention(q, k, v, drop_mask=drop_mask, **args)
    for g, e in zip(generated, explicit):
        np.testing.assert_array_equal(g, e)
    want = _dense(q, k, v, 1.0, np.triu(np.ones((s1, s2), bool), 1), keep=z, keep_prob=0.75)
    np.testing.assert_allclose(generated[0], want[0], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(generated[2][..., 0], want[2], rtol=1e-6)   # the sum does not include Z


def test_drop_mask_bit_order():
    """Only element (b=1, h=1, i=2, j=11) kept: bit 3 of byte [1, 1, 2, 1] (LSB first)."""
    b, n, s1, s2, d = 2, 2, 3, 16, 2
    q, k = np.zeros((b, n, s1, d)), np.zeros((b, n, s2, d))
    v = np.arange(b * n * s2 * d, dtype=np.float64).reshape(b, n, s2, d)
    mask = np.zeros((b, n, s1, s2 // 8), np.uint8)
    mask[1, 1, 2, 1] = 1 << 3
    out = R.training_attention(q, k, v, head_num=n, input_layout="BNSD", drop_mask=mask, keep_prob=0.5)[0]
    want = np.zeros_like(out)
    want[1, 1, 2] = v[1, 1, 11] / s2 / 0.5
    np.testing.assert_allclose(out, want, rtol=1e-12, atol=1e-12)


# ---- gradients by finite differences ------------------------------------------------------------------------

def _fd_case(rng, name):
    """(inputs dict, attribute dict) of a small case, float64."""
    b, n1, n2, s1, s2, d = 2, 4, 2, 3, 5, 4
    layout = "BSH"
    attrs = dict(head_num=n1, input_layout=layout, scale=0.7)
    tensors = {}
    if name in ("tnd", "tnd8"):
        q_lens, kv_lens = [2, 0, 3], [3, 2, 4]
        q = rng.standard_normal((sum(q_lens), n1, d))
        k, v = rng.standard_normal((2, sum(kv_lens), n2, d))
        attrs.update(input_layout="TND", actual_seq_qlen=np.cumsum(q_lens).tolist(),
                     actual_seq_kvlen=np.cumsum(kv_lens).tolist())
    else:
        q = rng.standard_normal((b, s1, n1 * d))
        k, v = rng.standard_normal((2, b, s2, n2 * d))
    tensors.update(query=q, key=k, value=v)
    if name == "mha":
        tensors["key"], tensors["value"] = rng.standard_normal((2, b, s2, n1 * d))
    if name in ("pse1", "pse0", "dropout"):
        tensors["pse"] = rng.standard_normal((b, n1, s1, s2))
        attrs["pse_type"] = 0 if name == "pse0" else 1
    if name == "pse_broadcast":
        tensors["pse"] = rng.standard_normal((1, n1, s1, s2))
        attrs["sparse_mode"] = 2
    if name == "dropout":
        attrs.update(keep_prob=0.6, seed=3, offset=1)
    if name == "explicit_dropout":
        attrs.update(keep_prob=0.5, drop_mask=R.pack_drop_mask(rng.random((b, n1, s1, 8)) < 0.5))
        tensors["key"], tensors["value"] = rng.standard_normal((2, b, 8, n2 * d))
    if name == "alibi":
        attrs.update(pse=rng.random(n1), pse_type=3, q_start_idx=[1], kv_start_idx=[0])
    if name in ("mode2", "mode3", "mode5"):
        attrs["sparse_mode"] = int(name[-1])
        attrs["prefix"] = [1, 3]
    if name == "mask":
        attrs.update(attn_mask=rng.random((b, 1, s1, s2)) < 0.4, pre_tokens=1, next_tokens=0)
    if name in ("tnd", "tnd8"):
        attrs.update(sparse_mode=7 if name == "tnd" else 8, pre_tokens=1, next_tokens=0)
    return tensors, attrs


def _loss(tensors, attrs, weight):
    out = R.training_attention(**tensors, **attrs)[0]
    return float(np.sum(out * weight))


@pytest.mark.parametrize("name", ["mha", "gqa", "pse1", "pse0", "pse_broadcast", "alibi", "dropout",
                                  "explicit_dropout", "mode2", "mode3", "mode5", "mask", "tnd", "tnd8"])
def test_gradients_match_finite_differences(rng, name):
    tensors, attrs = _fd_case(rng, name)
    out, m, l = R.training_attention(**tensors, **attrs)
    weight = rng.standard_normal(out.shape)
    pse = tensors.get("pse", attrs.get("pse"))
    dq, dk, dv, dpse = R.training_attention_grad(dy=weight, softmax_max=m, softmax_sum=l, attention_in=out,
                                                 **tensors, **attrs)
    analytic = dict(query=dq, key=dk, value=dv, pse=dpse)
    eps = 1e-6
    for input_name, grad in analytic.items():
        if input_name not in tensors:
            continue
        x = tensors[input_name]
        numeric = np.zeros_like(x)
        for idx in np.ndindex(x.shape):
            saved = x[idx]
            x[idx] = saved + eps
            plus = _loss(tensors, attrs, weight)
            x[idx] = saved - eps
            minus = _loss(tensors, attrs, weight)
            x[idx] = saved
            numeric[idx] = (plus - minus) / (2 * eps)
        assert grad.shape == x.shape
        np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-7, err_msg=input_name)
    if name == "alibi":
        assert dpse.shape == pse.shape and np.all(dpse == 0)
    if "pse" not in tensors and name != "alibi":
        assert dpse.shape == (0,)
