"""sparse_flash_attention against its numpy reference in PyNative, Graph and jit: every layout pairing, both
sparse modes, with and without rope, the statistics on and off; and the equivalence with dense attention
(fused_infer_attention_score_v2 with rope) when the selection covers every key."""
import numpy as np
import pytest
import mindspore as ms
from mindspore import Tensor

from fused_cases import run
from ifa_cases import assert_close, round_to, to_numpy, to_tensor
from ms_attention import ops
from sfa_cases import D, DR, Case

CASES = {
    "bsnd_causal": dict(),
    "bsnd_full_bf16": dict(sparse_mode=0, dtype="bfloat16", n1=8),
    "bsnd_lengths": dict(q_lens=[2, 3], kv_lens=[70, 33], sparse_block_size=8),
    "bsnd_no_rope": dict(rope=False, sparse_mode=0, n1=2),
    "tnd": dict(layout_query="TND", layout_kv="TND", q_lens=[3, 1], kv_lens=[50, 64], n1=16),
    "tnd_paged": dict(layout_query="TND", layout_kv="PA_BSND", q_lens=[2, 4], kv_lens=[90, 41], dtype="bfloat16", s1=4),
    "bsnd_paged": dict(layout_kv="PA_BSND", kv_lens=[96, 17], block_size=16, sparse_block_size=16, n1=32, k=4),
    "bsnd_paged_lengths_tuple": dict(layout_kv="PA_BSND", kv_lens=[64, 80], lengths_as="tuple", s1=1),
    "decode_128_heads": dict(b=1, s1=1, n1=128, k=16, dtype="bfloat16"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_reference(mode, name):
    Case(**CASES[name]).check(mode)


def test_statistics_off_are_one_zero(mode):
    out, softmax_max, softmax_sum = Case(return_softmax_lse=False).check(mode)
    assert softmax_max.shape == (1,) and softmax_sum.shape == (1,)
    assert softmax_max[0] == 0 and softmax_sum[0] == 0


def test_empty_selection_and_rows_past_the_query_length_are_zero(mode):
    case = Case(q_lens=[1, 3], sparse_mode=0)
    idx = case.np["sparse_indices"].copy()
    idx[1, 2] = -1                        # batch 1, row 2: nothing selected
    case.np["sparse_indices"] = idx
    case.kwargs["sparse_indices"] = Tensor(idx)
    out, softmax_max, softmax_sum = case.check(mode)
    assert not out[1, 2].any() and not out[0, 1:].any()
    assert (softmax_max[1, 0, 2] == -np.finfo(np.float32).max).all()
    assert (softmax_sum[1, 0, 2] == np.finfo(np.float32).max).all()


def test_entries_after_the_first_minus_one_are_ignored(mode):
    """The selection ends at its first -1: what follows (valid blocks, out-of-range values) is neither read nor
    checked, so the result equals the one where every later entry is -1."""
    case = Case(k=6, sparse_mode=0, sparse_block_size=4)
    want = case.expected()
    idx = case.np["sparse_indices"].copy()
    rows = idx.reshape(-1, 6)
    for r, row in enumerate(rows):
        ends = np.nonzero(row == -1)[0]
        if ends.size:
            tail = np.array([0, 2 ** 31 - 1, -7, 3, 1, 5], np.int32)[:6 - ends[0] - 1]
            rows[r, ends[0] + 1:] = tail
    assert (rows != -1).sum() > (case.np["sparse_indices"] != -1).sum()   # some tails were filled in
    case.kwargs["sparse_indices"] = Tensor(idx)
    out, softmax_max, softmax_sum = case.run(mode)
    assert_close(to_numpy(out), want[0], case.dtype)
    np.testing.assert_allclose(softmax_max.asnumpy(), want[1], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(softmax_sum.asnumpy(), want[2], rtol=1e-4, atol=1e-5)


def test_cost_follows_the_selection_not_the_stored_length(mode):
    """Keys that are never selected are never read: NaN in every unselected key/value row leaves the output
    finite and equal to the reference computed on the selected rows only."""
    case = Case(s2=256, k=4, sparse_block_size=8, sparse_mode=0)
    idx = case.np["sparse_indices"].reshape(-1, 4)
    selected = np.zeros(256, bool)
    for row in idx:
        for block in row[row >= 0]:
            selected[block * 8:(block + 1) * 8] = True
    want = case.expected()
    for name in ("key", "value", "key_rope"):
        poisoned = case.np[name].copy()
        poisoned[:, ~selected] = np.nan
        case.kwargs[name] = to_tensor(poisoned, case.dtype)
    out, _, _ = case.run(mode)
    assert_close(to_numpy(out), want[0], case.dtype)


def _dense_v2(query, key, value, query_rope, key_rope, n1, sparse_mode, lens_kv):
    mask = Tensor(np.triu(np.ones((2048, 2048), np.bool_), 1)) if sparse_mode == 3 else None
    return ops.fused_infer_attention_score_v2(
        query, key, value, query_rope=query_rope, key_rope=key_rope, atten_mask=mask,
        actual_seq_lengths_kv=lens_kv, num_query_heads=n1, num_key_value_heads=1,
        softmax_scale=1.0 / np.sqrt(D + DR), input_layout="BSND", sparse_mode=sparse_mode, return_softmax_lse=True)


@pytest.mark.parametrize("sparse_mode", [0, 3])
def test_selecting_every_key_equals_dense_attention(mode, sparse_mode):
    """Blocks 0 .. S2 / sparse_block_size - 1 in order select every key: the result is dense MLA attention as
    fused_infer_attention_score_v2 computes it (out, and softmax_max + log(softmax_sum) = its softmax_lse)."""
    b, s1, n1, s2, sbs = 2, 4, 8, 64, 8
    kv_lens = [64, 40]
    rng = np.random.default_rng(3)
    draw = lambda *shape: to_tensor(round_to(rng.standard_normal(shape), "float16"), "float16")  # noqa: E731
    q, qr, k, kr, v = draw(b, s1, n1, D), draw(b, s1, n1, DR), draw(b, s2, 1, D), draw(b, s2, 1, DR), draw(b, s2, 1, D)
    idx = Tensor(np.broadcast_to(np.arange(s2 // sbs, dtype=np.int32), (b, s1, 1, s2 // sbs)).copy())
    lens = Tensor(np.array(kv_lens, np.int32))
    out, softmax_max, softmax_sum = run(mode, ops.sparse_flash_attention, dict(
        query=q, key=k, value=v, sparse_indices=idx, scale_value=1.0 / np.sqrt(D + DR), query_rope=qr, key_rope=kr,
        sparse_block_size=sbs, sparse_mode=sparse_mode, actual_seq_lengths_kv=lens, attention_mode=2,
        return_softmax_lse=True))
    ms.set_context(mode=ms.PYNATIVE_MODE)
    dense, lse = _dense_v2(q, k, v, qr, kr, n1, sparse_mode, lens)
    assert_close(to_numpy(out), to_numpy(dense).astype(np.float64), "float16")
    # softmax_max (B, N2, S1, N1) against the lse (B, N1, S1, 1)
    sparse_lse = softmax_max.asnumpy() + np.log(softmax_sum.asnumpy())
    np.testing.assert_allclose(sparse_lse[:, 0].transpose(0, 2, 1), lse.asnumpy()[..., 0], rtol=1e-4, atol=1e-5)


def test_dynamic_shapes_in_graph_mode():
    """One compiled graph serves several batch sizes and selection sizes (InferShape in C++)."""
    ms.set_context(mode=ms.GRAPH_MODE)

    class Net(ms.nn.Cell):
        def construct(self, q, k, v, idx, qr, kr):
            return ops.sparse_flash_attention(q, k, v, idx, 0.05, query_rope=qr, key_rope=kr, sparse_block_size=4,
                                              attention_mode=2, return_softmax_lse=True)

    net = Net()
    dyn = lambda rank, dtype: Tensor(shape=[None] * rank, dtype=dtype)  # noqa: E731
    net.set_inputs(dyn(4, ms.float16), dyn(4, ms.float16), dyn(4, ms.float16), dyn(4, ms.int32),
                   dyn(4, ms.float16), dyn(4, ms.float16))
    try:
        for b, k in ((1, 4), (3, 7)):
            case = Case(b=b, k=k, s1=2, n1=4)
            out, smax, _ = net(*(case.kwargs[n] for n in ("query", "key", "value", "sparse_indices", "query_rope",
                                                            "key_rope")))
            case.attrs["scale_value"] = 0.05
            want = case.expected()
            assert_close(to_numpy(out), want[0], "float16")
            assert smax.shape == (b, 1, 2, 4)
    finally:
        ms.set_context(mode=ms.PYNATIVE_MODE)
