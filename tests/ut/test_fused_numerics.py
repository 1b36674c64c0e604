"""prompt_flash_attention, fused_infer_attention_score and fused_infer_attention_score_v2 against the numpy golden,
one axis per feature, in PyNative, Graph and jit; then the three operators (and incre_flash_attention) against
each other on the inputs they share."""
import numpy as np
import pytest

import ifa_cases
from ifa_cases import TOLERANCE
from fused_cases import (FIA, INT_MAX, PFA, V2, Case, arrange, assert_close, assert_lse_close, run_op,
                         to_numpy, translate)

ALL_OPS = (PFA, FIA, V2)
LAYOUTS = {PFA: ("BSH", "BNSD", "BSND", "TND"), FIA: ("BSH", "BNSD", "BSND", "TND", "BNSD_BSND"),
           V2: ("BSH", "BNSD", "BSND", "TND", "BNSD_BSND")}
HAS_LSE = (FIA, V2)


def _tnd_lens(layout, q_lens, kv_lens):
    return dict(q_lens=q_lens, kv_lens=kv_lens) if layout == "TND" else {}


def _compressed_mask(shape):
    """The 2048 x 2048 upper-triangular mask sparse modes 2-4 take (its contents do not matter)."""
    return np.broadcast_to(np.triu(np.ones((2048, 2048), bool), 1), shape)


# ---- layouts, dtypes, lse ------------------------------------------------------------------------------------

@pytest.mark.parametrize("op,layout", [(op, layout) for op in ALL_OPS for layout in LAYOUTS[op]])
def test_layouts(mode, op, layout):
    case = Case(op, b=2, n=4, kvn=2, sq=8, skv=24, d=32, layout=layout, **_tnd_lens(layout, [5, 8], [24, 11]))
    case.attrs["sparse_mode"] = 3
    case.check(mode, lse=op in HAS_LSE)


@pytest.mark.parametrize("op", ALL_OPS)
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_dtypes(mode, op, dtype):
    case = Case(op, b=2, n=4, kvn=4, sq=12, skv=40, d=64, layout="BNSD", dtype=dtype)
    case.set_lengths(q=[12, 7], kv=[40, 29])
    case.check(mode, lse=op in HAS_LSE)


@pytest.mark.parametrize("op", HAS_LSE)
@pytest.mark.parametrize("layout,flag", [("BSH", False), ("BSH", True), ("TND", True), ("BNSD_BSND", True)])
def test_softmax_lse_flag(mode, op, layout, flag):
    """Off: a float32 (1,) zero; on: (B, N, Sq, 1) (TND (T, N, 1)), +inf for rows past q_b."""
    case = Case(op, b=2, n=4, kvn=2, sq=6, skv=20, d=32, layout=layout, **_tnd_lens(layout, [6, 3], [20, 9]))
    if layout != "TND":
        case.set_lengths(q=[6, 3], kv=[20, 9])
    _, lse = case.check(mode, lse=flag)
    if flag and layout != "TND":
        assert lse.shape == (2, 4, 6, 1) and np.all(np.isposinf(lse[1, :, 3:]))


# ---- sparse modes and lengths --------------------------------------------------------------------------------

SPARSE = {
    "0_no_mask_ignores_pre_next": dict(sparse_mode=0, pre_tokens=2, next_tokens=1),
    "0_mask_and_band": dict(sparse_mode=0, pre_tokens=6, next_tokens=2, mask=True),
    "1_mask_only": dict(sparse_mode=1, pre_tokens=1, next_tokens=0, mask=True),
    "2_left_up": dict(sparse_mode=2),
    "2_compressed_mask": dict(sparse_mode=2, compressed=(2048, 2048)),
    "3_right_down": dict(sparse_mode=3, compressed=(1, 2048, 2048)),
    "4_band": dict(sparse_mode=4, pre_tokens=10, next_tokens=2),
    "4_negative_next": dict(sparse_mode=4, pre_tokens=12, next_tokens=-3, compressed=(1, 1, 2048, 2048)),
}


@pytest.mark.parametrize("op", [PFA, FIA])
@pytest.mark.parametrize("name", sorted(SPARSE))
def test_sparse_modes(mode, op, name):
    """Per batch on the window: d = kv_b - q_b differs between the two batches."""
    spec = dict(SPARSE[name])
    case = Case(op, b=2, n=4, kvn=2, sq=10, skv=30, d=32, layout="BSND")
    case.set_lengths(q=[10, 7], kv=[30, 16])
    if spec.pop("mask", False):
        case.add_mask(case.rng.random((2, 1, 10, 30)) < 0.3, "bool")
    shape = spec.pop("compressed", None)
    if shape:
        case.add_mask(_compressed_mask(shape), "bool")
    case.attrs.update(spec)
    case.check(mode, lse=op in HAS_LSE)


@pytest.mark.parametrize("op,form", [(FIA, "tuple"), (FIA, "list"), (FIA, "int64"), (FIA, "int32"), (PFA, "tuple"),
                                     (PFA, "int64"), (V2, "list"), (V2, "int32")])
def test_actual_seq_lengths(mode, op, form):
    """q and kv lengths per batch, including an empty query and an empty kv (output 0, lse +inf)."""
    case = Case(op, b=3, n=4, kvn=2, sq=8, skv=24, d=32, layout="BSH")
    case.set_lengths(q=[8, 0, 5], kv=[24, 10, 0], form=form)
    case.attrs["sparse_mode"] = 3
    out, lse = case.check(mode, lse=op in HAS_LSE)
    assert np.all(out[1] == 0) and np.all(out[2, :5] == 0)


@pytest.mark.parametrize("op", ALL_OPS)
@pytest.mark.parametrize("which", ["q", "kv"])
def test_only_one_of_the_lengths(mode, op, which):
    case = Case(op, b=2, n=4, kvn=2, sq=8, skv=24, d=32, layout="BNSD")
    case.set_lengths(**{which: [8, 3] if which == "q" else [24, 5]})
    case.check(mode, lse=op in HAS_LSE)


@pytest.mark.parametrize("op", ALL_OPS)
@pytest.mark.parametrize("n,kvn", [(32, 8), (16, 1), (4, 4)])
def test_gqa(mode, op, n, kvn):
    case = Case(op, b=2, n=n, kvn=kvn, sq=6, skv=20, d=16, layout="BSH")
    case.attrs["sparse_mode"] = 3
    case.check(mode, lse=op in HAS_LSE)


@pytest.mark.parametrize("op", ALL_OPS)
def test_num_key_value_heads_zero_means_num_heads(mode, op):
    case = Case(op, b=2, n=4, kvn=4, sq=6, skv=20, d=32, layout="BNSD")
    case.attrs["num_key_value_heads"] = 0
    case.check(mode)


# ---- masks ---------------------------------------------------------------------------------------------------

MASK_SHAPES = {"SqSkv": lambda b, sq, skv: (sq, skv), "1SqSkv": lambda b, sq, skv: (1, sq, skv),
               "BSqSkv": lambda b, sq, skv: (b, sq, skv), "B1SqSkv": lambda b, sq, skv: (b, 1, sq, skv),
               "11SqSkv": lambda b, sq, skv: (1, 1, sq, skv),
               "larger_than_stored": lambda b, sq, skv: (b, 1, sq + 3, skv + 5)}


@pytest.mark.parametrize("op", [PFA, FIA])
@pytest.mark.parametrize("shape", sorted(MASK_SHAPES))
def test_mask_shapes(mode, op, shape):
    """Mode 1 (the mask alone); one query row fully masked gives 0 and lse +inf."""
    case = Case(op, b=2, n=4, kvn=2, sq=8, skv=24, d=32, layout="BNSD")
    mask = case.rng.random(MASK_SHAPES[shape](2, 8, 24)) < 0.3
    mask[..., 2, :] = True
    case.add_mask(mask, "bool")
    case.attrs["sparse_mode"] = 1
    out, lse = case.check(mode, lse=op in HAS_LSE)
    assert np.all(out[:, :, 2] == 0)
    if lse is not None:
        assert np.all(np.isposinf(lse[:, :, 2]))


@pytest.mark.parametrize("op", ALL_OPS)
@pytest.mark.parametrize("dtype", ["bool", "int8", "uint8"])
def test_mask_dtypes(mode, op, dtype):
    case = Case(op, b=2, n=4, kvn=2, sq=8, skv=24, d=32, layout="BSH")
    case.add_mask((case.rng.random((2, 1, 8, 24)) < 0.3).astype(np.int64), dtype)
    case.attrs.update(sparse_mode=0, pre_tokens=5, next_tokens=3)
    case.check(mode, lse=op in HAS_LSE)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_pfa_float16_mask_is_added(mode, dtype):
    """PFA alone takes a float16 mask, added to the scaled score (after pse)."""
    case = Case(PFA, b=2, n=4, kvn=2, sq=8, skv=24, d=32, layout="BNSD", dtype=dtype)
    mask = case.rng.standard_normal((2, 1, 8, 24)) * 2
    mask[case.rng.random(mask.shape) < 0.2] = -10000.0
    case.add_mask(mask, "float16")
    case.add("pse_shift", case.rng.standard_normal((2, 4, 8, 24)), dtype)
    case.attrs["sparse_mode"] = 1
    case.check(mode)


@pytest.mark.parametrize("op", [PFA, FIA])
def test_tnd_mask_indexed_by_window_position(mode, op):
    """TND, modes 0/1: a (B, 1, Smax_q, Smax_kv) mask, indexed by each batch's window-relative (i, j)."""
    case = Case(op, b=2, n=4, kvn=2, d=32, layout="TND", q_lens=[5, 8], kv_lens=[9, 20])
    case.add_mask(case.rng.random((2, 1, 8, 20)) < 0.3, "uint8")
    case.attrs["sparse_mode"] = 1
    case.check(mode, lse=op in HAS_LSE)


def test_decode_branch_masks_and_ignored_sparse_mode(mode):
    """FIA with Sq = 1: IFA's mask shapes, sparse_mode and pre/next ignored."""
    for shape in [(2, 30), (2, 1, 30), (2, 1, 1, 30)]:
        case = Case(FIA, b=2, n=8, kvn=2, sq=1, skv=30, d=32, layout="BSH")
        mask = case.rng.random(shape) < 0.3
        case.add_mask(mask, "int8")
        case.set_lengths(kv=[30, 17])
        case.attrs.update(sparse_mode=4, pre_tokens=1, next_tokens=0)
        case.check(mode, lse=True)


def test_pfa_single_query_position_is_a_prefill(mode):
    """prompt_flash_attention has no incremental branch: with Sq = 1 its mask and default next_tokens=0 band
    still apply (only key 0 survives the band for row 0)."""
    case = Case(PFA, b=2, n=4, kvn=2, sq=1, skv=20, d=32, layout="BSH")
    case.add_mask(np.zeros((1, 20), np.bool_), "bool")
    out, _ = case.check(mode)
    np.testing.assert_allclose(out.reshape(2, 4, 32), case.np["value"].reshape(2, 20, 2, 32)[:, 0].repeat(2, 1),
                               rtol=5e-3, atol=1e-3)


@pytest.mark.parametrize("sparse_mode", [2, 3, 4])
def test_decode_branch_ignores_the_compressed_mask(mode, sparse_mode):
    """A causal/band network passes its compressed 2048 x 2048 mask on every step; with Sq = 1 the sparse mode it
    stands for is ignored, so the mask is too, even past 2048 keys."""
    case = Case(FIA, b=2, n=4, kvn=2, sq=1, skv=2100, d=32, layout="BNSD")
    case.add_mask(np.triu(np.ones((2048, 2048), np.bool_), 1), "bool")
    case.set_lengths(kv=[2100, 700])
    case.attrs["sparse_mode"] = sparse_mode
    out, _ = case.check(mode)
    case.remove(case.mask_name)
    unmasked, _ = case.check(mode)
    np.testing.assert_array_equal(out, unmasked)


# ---- pse_shift, padding --------------------------------------------------------------------------------------

@pytest.mark.parametrize("op,batch,dtype", [(PFA, 1, "float16"), (PFA, 2, "bfloat16"), (FIA, 2, "float16"),
                                            (FIA, 1, "bfloat16"), (V2, 2, "float16"), (V2, 1, "bfloat16")])
def test_pse_shift(mode, op, batch, dtype):
    case = Case(op, b=2, n=4, kvn=2, sq=8, skv=24, d=32, layout="BSND", dtype=dtype)
    case.add("pse_shift", case.rng.standard_normal((batch, 4, 8, 24)), dtype)
    case.set_lengths(q=[8, 6], kv=[24, 15])
    case.attrs["sparse_mode"] = 3
    case.check(mode, lse=op in HAS_LSE)


PADDING = {
    # name: (query pad, kv pad, q lens, kv lens)
    "query": (2, None, [5, 8], None),
    "kv": (None, 3, None, [12, 20]),
    "both": (1, 4, [4, 9], [10, 20]),
    "negative_counts_as_zero": (-2, -1, [6, 9], [13, 24]),
    "window_below_zero": (None, 10, None, [12, 20]),   # batch 1: 24 - 10 - 20 < 0 -> zeros
}


@pytest.mark.parametrize("name", sorted(PADDING))
@pytest.mark.parametrize("sparse_mode", [0, 3])
def test_left_padding(mode, name, sparse_mode):
    q_pad, kv_pad, q_lens, kv_lens = PADDING[name]
    case = Case(FIA, b=2, n=4, kvn=2, sq=10, skv=24, d=32, layout="BSH")
    case.set_lengths(q=q_lens, kv=kv_lens)
    if q_pad is not None:
        case.add("query_padding_size", np.array([q_pad]), "int64")
    if kv_pad is not None:
        case.add("kv_padding_size", np.array(kv_pad), "int64")
    case.attrs.update(sparse_mode=sparse_mode, pre_tokens=3, next_tokens=0)   # mode 0: ignored with padding
    if sparse_mode == 0:
        case.add_mask(case.rng.random((2, 1, 10, 24)) < 0.2, "bool")              # in the stored frame
    out, _ = case.check(mode, lse=True)
    if name == "window_below_zero":
        assert np.all(out[1] == 0)


def test_decode_branch_kv_padding_ignores_query_padding(mode):
    """Sq = 1: kv left padding as in incre_flash_attention; query_padding_size has nothing to move."""
    case = Case(FIA, b=2, n=8, kvn=2, sq=1, skv=30, d=32, layout="BNSD")
    case.set_lengths(kv=[20, 9])
    case.add("kv_padding_size", np.array([4]), "int64")
    case.add("query_padding_size", np.array([3]), "int64")
    case.check(mode, lse=True)


# ---- paged attention -----------------------------------------------------------------------------------------

PAGED = [("BnBsH", "BSH"), ("BnBsH", "BSND"), ("BnNBsD", "BNSD"), ("BnNBsD", "BNSD_BSND"), ("BnBsH", "TND")]


@pytest.mark.parametrize("op,cache_layout,layout,sq",
                         [(FIA, c, layout, sq) for c, layout in PAGED for sq in (1, 6)] +
                         [(V2, "BnBsH", "BSH", 6), (V2, "BnNBsD", "BNSD", 1), (V2, "BnBsH", "TND", 6)])
def test_paged_attention(mode, op, cache_layout, layout, sq):
    lens = _tnd_lens(layout, [sq, max(sq - 2, 1)], [40, 23])
    case = Case(op, b=2, n=8, kvn=2, sq=sq, skv=40, d=32, layout=layout, **lens)
    case.page(16, cache_layout)
    case.set_lengths(kv=[40, 23])
    case.attrs["sparse_mode"] = 3
    case.check(mode, lse=True)


def test_paged_bf16_with_mask(mode):
    case = Case(FIA, b=2, n=4, kvn=1, sq=5, skv=64, d=64, layout="BNSD", dtype="bfloat16")
    case.page(32, "BnNBsD")
    case.set_lengths(q=[5, 3], kv=[64, 33])
    case.add_mask(case.rng.random((2, 1, 5, 64)) < 0.3, "bool")
    case.attrs["sparse_mode"] = 1
    case.check(mode, lse=True)


@pytest.mark.parametrize("op", [FIA, V2])
def test_tnd_paged_sliding_window(mode, op):
    """TND prefill over a paged cache with sparse_mode 4: each query sees the last pre_tokens keys."""
    case = Case(op, b=3, n=4, kvn=2, d=32, layout="TND", q_lens=[6, 3, 1], kv_lens=[40, 23, 17])
    case.page(16, "BnBsH")
    case.add_mask(_compressed_mask((2048, 2048)), "bool")
    case.attrs.update(sparse_mode=4, pre_tokens=8, next_tokens=0)
    case.check(mode, lse=True)


# ---- shared prefix -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("op", [FIA, V2])
@pytest.mark.parametrize("layout,prefix_len", [("BSH", None), ("BNSD", "tuple"), ("BSND", "tensor")])
def test_shared_prefix(mode, op, layout, prefix_len):
    case = Case(op, b=2, n=4, kvn=2, sq=6, skv=20, d=32, layout=layout)
    for name in ("key", "value"):
        prefix = case.rng.standard_normal((1, 2, 9, 32))
        case.add(f"{name}_shared_prefix", arrange(prefix, layout), "float16")
    if prefix_len == "tuple":
        case.set("actual_shared_prefix_len", (7,), [7])
    elif prefix_len == "tensor":
        case.add("actual_shared_prefix_len", np.array([5]), "int64")
    case.set_lengths(q=[6, 4], kv=[20, 11])
    case.attrs["sparse_mode"] = 3
    case.check(mode, lse=True)


def test_shared_prefix_with_mask(mode):
    """A mask's columns run over the prefix followed by the batch's keys."""
    case = Case(FIA, b=2, n=4, kvn=2, sq=6, skv=20, d=32, layout="BNSD")
    for name in ("key", "value"):
        case.add(f"{name}_shared_prefix", case.rng.standard_normal((1, 2, 9, 32)), "float16")
    case.add_mask(case.rng.random((2, 1, 6, 29)) < 0.3, "bool")
    case.attrs["sparse_mode"] = 1
    case.check(mode, lse=True)


# ---- antiquant (int8 key / value) ----------------------------------------------------------------------------

CHANNEL = {"BSH": lambda kvn, d: (kvn * d,), "BNSD": lambda kvn, d: (kvn, 1, d), "BSND": lambda kvn, d: (kvn, d)}


@pytest.mark.parametrize("layout,granularity,with_offset,sq", [
    ("BSH", "tensor", False, 6), ("BNSD", "tensor", True, 1), ("BSH", "channel", True, 6),
    ("BNSD", "channel", False, 6), ("BSND", "channel", True, 1), ("BSND", "token", False, 6), ("BSH", "token", True, 1),
    ("BNSD", "token", True, 6)])
def test_antiquant_combined(mode, layout, granularity, with_offset, sq):
    """antiquant_scale / antiquant_offset with a leading 2 (key, value); antiquant_mode 1 is per token."""
    case = Case(FIA, b=2, n=8, kvn=2, sq=sq, skv=24, d=32, layout=layout, kv_dtype="int8")
    shape = {"tensor": (2,), "channel": (2,) + CHANNEL[layout](2, 32), "token": (2, 2, 24)}[granularity]
    dtype = "float32" if granularity == "token" else "float16"
    case.add("antiquant_scale", case.rng.random(shape) * 0.02 + 0.001, dtype)
    if with_offset:
        case.add("antiquant_offset", case.rng.standard_normal(shape) * 4, dtype)
    case.attrs["antiquant_mode"] = int(granularity == "token")
    case.set_lengths(kv=[24, 13])
    case.attrs["sparse_mode"] = 3
    case.check(mode, lse=True)


SEPARATE = {
    # name: (key granularity, value granularity)
    "channel_tensor": ("channel", "tensor"),
    "token_token": ("token", "token"),
    "channel_token": ("channel", "token"),
}


def _separate_antiquant(case, key_gran, value_gran, with_offset, names=None, token_len=None):
    names = names or {"key": ("key_antiquant_scale", "key_antiquant_offset", "key_antiquant_mode"),
                      "value": ("value_antiquant_scale", "value_antiquant_offset", "value_antiquant_mode")}
    for which, gran in (("key", key_gran), ("value", value_gran)):
        scale_name, offset_name, mode_name = names[which]
        shape = {"tensor": (1,), "channel": CHANNEL[case.layout if case.layout in CHANNEL else "BNSD"](case.kvn,
                                                                                                        case.d),
                 "token": (case.b, token_len or case.skv)}[gran]
        dtype = "float32" if gran == "token" else case.dtype
        case.add(scale_name, case.rng.random(shape) * 0.02 + 0.001, dtype)
        if with_offset:
            case.add(offset_name, case.rng.standard_normal(shape) * 4, dtype)
        case.attrs[mode_name] = int(gran == "token")


@pytest.mark.parametrize("name", sorted(SEPARATE))
@pytest.mark.parametrize("with_offset,sq", [(False, 6), (True, 1)])
def test_antiquant_separate(mode, name, with_offset, sq):
    case = Case(FIA, b=2, n=8, kvn=2, sq=sq, skv=24, d=32, layout="BNSD", kv_dtype="int8")
    _separate_antiquant(case, *SEPARATE[name], with_offset)
    case.set_lengths(kv=[24, 13])
    case.attrs["sparse_mode"] = 3
    case.check(mode, lse=True)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_antiquant_per_token_paged(mode, dtype):
    """Per-token scales of a paged cache are indexed by the logical position: (B, max_blocks * block_size)."""
    case = Case(FIA, b=2, n=4, kvn=2, sq=4, skv=40, d=32, layout="BSH", dtype=dtype, kv_dtype="int8")
    table = case.page(32, "BnBsH")
    _separate_antiquant(case, "token", "token", True, token_len=table.shape[1] * 32)
    case.set_lengths(kv=[40, 21])
    case.attrs["sparse_mode"] = 3
    case.check(mode, lse=True)


V2_ANTIQUANT = {"key": ("dequant_scale_key", "dequant_offset_key", "key_quant_mode"),
                "value": ("dequant_scale_value", "dequant_offset_value", "value_quant_mode")}


@pytest.mark.parametrize("name", sorted(SEPARATE))
def test_v2_dequant_key_value(mode, name):
    case = Case(V2, b=2, n=8, kvn=2, sq=5, skv=24, d=32, layout="BSND", kv_dtype="int8")
    _separate_antiquant(case, *SEPARATE[name], True, names=V2_ANTIQUANT)
    case.set_lengths(kv=[24, 13])
    case.attrs["sparse_mode"] = 3
    case.check(mode, lse=True)


# ---- quantized outputs, full quant ---------------------------------------------------------------------------

POST_QUANT = {PFA: ("quant_scale2", "quant_offset2"), FIA: ("quant_scale2", "quant_offset2"),
              V2: ("quant_scale_out", "quant_offset_out")}


@pytest.mark.parametrize("op", ALL_OPS)
@pytest.mark.parametrize("granularity,with_offset", [("tensor", False), ("channel", True)])
def test_post_quant_int8_output(mode, op, granularity, with_offset):
    case = Case(op, b=2, n=4, kvn=2, sq=6, skv=20, d=32, layout="BNSD")
    scale_name, offset_name = POST_QUANT[op]
    shape = (1,) if granularity == "tensor" else (1, 4, 1, 32)
    case.add(scale_name, case.rng.random(shape) * 100 + 20, "float32")
    if with_offset:
        case.add(offset_name, case.rng.standard_normal(shape) * 3, "float32")
    mask = case.rng.random((2, 1, 6, 20)) < 0.2
    mask[1, 0, 3] = True                  # a row with no key: 0 after quantization, not the offset
    case.add_mask(mask, "bool")
    case.attrs["sparse_mode"] = 1
    out, _ = case.check(mode, lse=op in HAS_LSE)
    assert np.all(out[1, :, 3] == 0)


def test_post_quant_bf16_scale(mode):
    case = Case(FIA, b=2, n=4, kvn=2, sq=6, skv=20, d=32, layout="BSH", dtype="bfloat16")
    case.add("quant_scale2", case.rng.random((1, 1, 128)) * 60 + 20, "bfloat16")
    case.add("quant_offset2", case.rng.standard_normal((1, 1, 128)), "bfloat16")
    case.attrs["sparse_mode"] = 3
    case.check(mode, lse=True)


FULL_QUANT = {PFA: ("deq_scale1", "quant_scale1", "deq_scale2"),
              FIA: ("dequant_scale1", "quant_scale1", "dequant_scale2")}


def _uint64_bits(value):
    return np.frombuffer(np.float32(value).tobytes() + b"\0" * 4, np.uint64).copy()


@pytest.mark.parametrize("op,scale_dtype,int8_out", [(PFA, "float32", False), (PFA, "uint64", True),
                                                     (FIA, "uint64", False), (FIA, "float32", True)])
def test_full_quant(mode, op, scale_dtype, int8_out):
    """int8 query, key and value: S = (Q.K^T in integers) * deq1 * scale; P8 = round(P * quant_scale1);
    O = (P8.V in integers) * deq2. P8 sits on a rounding edge now and then, where float32 and the float64
    golden may round differently: one step of P8 moves O by deq2 * |V| <= 128 * deq2."""
    case = Case(op, b=2, n=4, kvn=2, sq=8, skv=24, d=32, layout="BSH", dtype="int8")
    case.add("query", case.rng.integers(-20, 21, case.np["query"].shape), "int8")
    deq1_name, qs1_name, deq2_name = FULL_QUANT[op]
    deq1, deq2 = 1e-3, 1 / 127
    if scale_dtype == "uint64":
        case.add(deq1_name, _uint64_bits(deq1), "uint64")
        case.add(deq2_name, _uint64_bits(deq2), "uint64")
    else:
        case.add(deq1_name, np.array([deq1]), "float32")
        case.add(deq2_name, np.array([deq2]), "float32")
    case.add(qs1_name, np.array([127.0]), "float32")
    scale2 = 0.5
    if int8_out:
        case.add("quant_scale2", np.array([scale2]), "float32")
    case.attrs["sparse_mode"] = 3
    out, _ = case.run(mode)
    want, _ = case.expected()
    assert str(out.dtype).lower() == ("int8" if int8_out else "float16")
    error = np.abs(to_numpy(out).astype(np.float64) - want)
    step = 128 * deq2 * (scale2 if int8_out else 1)
    rtol, atol = TOLERANCE["float16"]
    tolerance = 1 if int8_out else atol + rtol * np.abs(want)
    inside = error <= tolerance
    assert inside.mean() >= 0.99, f"only {inside.mean():.2%} within tolerance; worst {error.max()}"
    assert np.all(error <= tolerance + 2 * step), error.max()


# ---- v2: learnable sink, rope --------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype,sink_dtype", [("float16", "float32"), ("float16", "float16"),
                                              ("bfloat16", "bfloat16")])
@pytest.mark.parametrize("sq", [1, 6])
def test_learnable_sink(mode, dtype, sink_dtype, sq):
    """One float per head joins the denominator; a valid row with no visible key gives 0 and lse = sink."""
    case = Case(V2, b=2, n=4, kvn=2, sq=sq, skv=20, d=32, layout="BNSD", dtype=dtype)
    sink = case.add("learnable_sink", case.rng.standard_normal(4) * 2, sink_dtype)
    mask = case.rng.random((2, 1, sq, 20)) < 0.3
    mask[1, 0, 0] = True
    case.add_mask(mask, "bool")
    case.attrs["sparse_mode"] = 1
    case.set_lengths(q=None if sq == 1 else [sq, sq - 2], kv=[20, 12])
    out, lse = case.check(mode, lse=True)
    assert np.all(out[1, :, 0] == 0)
    np.testing.assert_allclose(lse[1, :, 0, 0], sink, rtol=1e-6)
    if sq > 1:                                      # rows past q_b: not computed, lse +inf despite the sink
        assert np.all(np.isposinf(lse[1, :, sq - 2:]))


@pytest.mark.parametrize("layout", ["BNSD", "BSND", "TND"])
@pytest.mark.parametrize("sq", [1, 4])
def test_rope_mla(mode, layout, sq):
    """DeepSeek MLA shapes: 16 query heads over one latent KV head of D 512 plus a 64-wide rope part."""
    case = Case(V2, b=2, n=16, kvn=1, sq=sq, skv=40, d=512, layout=layout, rope_dim=64,
                **_tnd_lens(layout, [sq, max(sq - 1, 1)], [40, 27]))
    if layout != "TND":
        case.set_lengths(kv=[40, 27])
    case.attrs["sparse_mode"] = 3
    case.check(mode, lse=True)


@pytest.mark.parametrize("cache_layout,layout", [("BnBsH", "BSH"), ("BnNBsD", "BNSD"), ("BnBsH", "TND")])
def test_rope_paged(mode, cache_layout, layout):
    case = Case(V2, b=2, n=16, kvn=1, sq=3, skv=48, d=512, layout=layout, rope_dim=64,
                **_tnd_lens(layout, [3, 2], [48, 30]))
    case.page(16, cache_layout)
    case.set_lengths(kv=[48, 30])
    case.attrs["sparse_mode"] = 3
    case.check(mode, lse=True)


def test_rope_with_sink_and_post_quant(mode):
    case = Case(V2, b=2, n=8, kvn=1, sq=4, skv=24, d=64, layout="BSND", rope_dim=32)
    case.add("learnable_sink", case.rng.standard_normal(8), "float32")
    case.add("quant_scale_out", np.array([40.0]), "float32")
    case.attrs["sparse_mode"] = 3
    case.check(mode, lse=True)


# ---- the operators against each other ------------------------------------------------------------------------

def _fia_case(sq, layout="BSH", **kw):
    case = Case(FIA, b=2, n=8, kvn=2, sq=sq, skv=32, d=32, layout=layout, **kw)
    if layout != "TND":
        case.set_lengths(q=None if sq == 1 else [sq, sq - 2], kv=[32, 19])
    return case


PFA_SHARED = {
    "causal": lambda c: c.attrs.update(sparse_mode=3),
    "band": lambda c: c.attrs.update(sparse_mode=4, pre_tokens=9, next_tokens=1),
    "mask_and_pre_next": lambda c: (c.add_mask(c.rng.random((2, 1, 8, 32)) < 0.3, "int8"),
                                    c.attrs.update(sparse_mode=0, pre_tokens=20, next_tokens=0)),
    "pse_shift": lambda c: (c.add("pse_shift", c.rng.standard_normal((1, 8, 8, 32)), "float16"),
                            c.attrs.update(sparse_mode=2)),
    "post_quant": lambda c: (c.add("quant_scale2", np.array([50.0]), "float32"), c.attrs.update(sparse_mode=3)),
}


@pytest.mark.parametrize("feature", sorted(PFA_SHARED))
def test_fia_equals_pfa_for_prefill(mode, feature):
    case = _fia_case(8)
    PFA_SHARED[feature](case)
    fia_out, _ = case.run(mode)
    pfa_out, _ = run_op(mode, PFA, translate(case.kwargs(), FIA, PFA))
    dtype = case.out_dtype()
    assert pfa_out.dtype == fia_out.dtype
    assert_close(to_numpy(pfa_out), to_numpy(fia_out).astype(np.float64), dtype)
    assert_close(to_numpy(fia_out), case.expected()[0], dtype)


def test_fia_equals_pfa_for_tnd(mode):
    case = Case(FIA, b=3, n=4, kvn=2, d=32, layout="TND", q_lens=[4, 7, 2], kv_lens=[10, 7, 30])
    case.attrs["sparse_mode"] = 3
    fia_out, _ = case.run(mode)
    pfa_out, _ = run_op(mode, PFA, translate(case.kwargs(), FIA, PFA))
    assert_close(to_numpy(pfa_out), to_numpy(fia_out).astype(np.float64), "float16")
    assert_close(to_numpy(fia_out), case.expected()[0], "float16")


IFA_SHARED = {
    "plain": lambda c: None,
    "mask": lambda c: c.add_mask(c.rng.random((2, 1, 1, 32)) < 0.3, "bool"),
    "pse_shift": lambda c: c.add("pse_shift", c.rng.standard_normal((2, 8, 1, 32)), "float16"),
    "paged": lambda c: c.page(16, "BnBsH"),
    "antiquant": lambda c: c.add("antiquant_scale", c.rng.random((2, 64)) * 0.02 + 0.001, "float16"),
    "post_quant": lambda c: c.add("quant_scale2", np.array([50.0]), "float32"),
}


@pytest.mark.parametrize("feature", sorted(IFA_SHARED))
def test_fia_equals_ifa_for_decode(mode, feature):
    """Sq = 1: the incremental branch gives incre_flash_attention's numbers (FIA's kv lengths are IFA's
    actual_seq_lengths)."""
    case = _fia_case(1, kv_dtype="int8" if feature == "antiquant" else None)
    IFA_SHARED[feature](case)
    case.attrs.update(sparse_mode=3, next_tokens=0)              # ignored by the incremental branch
    fia_out, _ = case.run(mode)
    kwargs = case.kwargs()
    ifa_kwargs = {name: kwargs[name] for name in ("query", "key", "value", "pse_shift", "antiquant_scale",
                                                   "quant_scale2", "block_table", "input_layout",
                                                   "num_key_value_heads", "num_heads", "block_size")
                  if name in kwargs}
    ifa_kwargs.update(attn_mask=kwargs.get("atten_mask"), actual_seq_lengths=kwargs["actual_seq_lengths_kv"],
                      scale_value=kwargs["scale"])
    ifa_out = ifa_cases.run(mode, ifa_kwargs)
    dtype = case.out_dtype()
    assert ifa_out.dtype == fia_out.dtype
    assert_close(to_numpy(ifa_out), to_numpy(fia_out).astype(np.float64), dtype)
    assert_close(to_numpy(fia_out), case.expected()[0], dtype)


V2_SHARED = {
    "tnd_causal": dict(layout="TND", q_lens=[5, 8], kv_lens=[11, 32]),
    "bnsd_bsnd_band": dict(layout="BNSD_BSND", attrs=dict(sparse_mode=4, pre_tokens=7, next_tokens=2)),
    "decode_paged": dict(sq=1, layout="BNSD", paged="BnNBsD"),
    "prefill_paged": dict(layout="BSH", paged="BnBsH"),
    "antiquant_per_token": dict(layout="BSND", kv_dtype="int8", antiquant=True),
    "post_quant": dict(layout="BSH", post_quant=True),
    "shared_prefix": dict(layout="BNSD", prefix=True),
    "mask": dict(layout="BSH", mask=True, attrs=dict(sparse_mode=1)),
}


@pytest.mark.parametrize("feature", sorted(V2_SHARED))
def test_v2_equals_fia(mode, feature):
    spec = dict(V2_SHARED[feature])
    tnd = {k: spec.pop(k) for k in ("q_lens", "kv_lens") if k in spec}
    case = _fia_case(spec.pop("sq", 8), spec.pop("layout"), kv_dtype=spec.pop("kv_dtype", None), **tnd)
    case.attrs["sparse_mode"] = 3
    case.attrs.update(spec.pop("attrs", {}))
    if spec.pop("paged", None):
        case.page(16, V2_SHARED[feature]["paged"])
    if spec.pop("antiquant", False):
        _separate_antiquant(case, "token", "channel", True)
    if spec.pop("post_quant", False):
        case.add("quant_scale2", np.array([50.0]), "float32")
    if spec.pop("prefix", False):
        for name in ("key", "value"):
            case.add(f"{name}_shared_prefix", case.rng.standard_normal((1, 2, 5, 32)), "float16")
    if spec.pop("mask", False):
        case.add_mask(case.rng.random((2, 1, 8, 32)) < 0.3, "bool")
    assert not spec, spec
    case.attrs["softmax_lse_flag"] = True
    fia_out, fia_lse = case.run(mode)
    v2_out, v2_lse = run_op(mode, V2, translate(case.kwargs(), FIA, V2))
    dtype = case.out_dtype()
    assert v2_out.dtype == fia_out.dtype
    assert_close(to_numpy(v2_out), to_numpy(fia_out).astype(np.float64), dtype)
    assert_lse_close(to_numpy(v2_lse), to_numpy(fia_lse))
    assert_close(to_numpy(fia_out), case.expected()[0], dtype)


# ---- call forms ----------------------------------------------------------------------------------------------

def test_fia_key_value_as_tensor_or_list(mode):
    case = _fia_case(6)
    case.attrs["sparse_mode"] = 3
    case.check(mode, key_as_list=False)
    case.check(mode, key_as_list=True)


@pytest.mark.parametrize("op", ALL_OPS)
def test_layout_string_case_insensitive(mode, op):
    case = Case(op, b=2, n=4, kvn=2, sq=6, skv=20, d=32, layout="BNSD")
    case.attrs["input_layout"] = "bnsd"
    case.check(mode)


def test_large_values_stay_finite(mode):
    case = Case(FIA, b=1, n=2, kvn=1, sq=16, skv=300, d=64, layout="BSH")
    case.add("query", case.np["query"] * 60, "float16")
    case.add("key", case.np["key"] * 60, "float16")
    case.attrs["sparse_mode"] = 3
    case.check(mode, lse=True)


def test_next_tokens_defaults_differ(mode):
    """PFA's next_tokens defaults to 0, FIA's to INT_MAX: with a mask in mode 0 the two bands differ."""
    case = Case(PFA, b=1, n=2, kvn=2, sq=8, skv=8, d=32, layout="BNSD")
    case.add_mask(np.zeros((8, 8), bool), "bool")
    pfa, _ = case.run(mode)
    fia_kwargs = translate(case.kwargs(), PFA, FIA)
    fia_kwargs["next_tokens"] = INT_MAX
    fia, _ = run_op(mode, FIA, fia_kwargs)
    assert_close(to_numpy(pfa), case.expected()[0], "float16")
    assert_close(to_numpy(fia), case.expected(next_tokens=INT_MAX)[0], "float16")
    assert not np.allclose(to_numpy(pfa), to_numpy(fia), atol=1e-2)
