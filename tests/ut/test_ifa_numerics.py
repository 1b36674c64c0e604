"""incre_flash_attention against the numpy reference, one axis per feature, in PyNative, Graph and jit."""
import numpy as np
import pytest
from mindspore import Tensor

from ifa_cases import Case, assert_close, run, to_numpy

LAYOUTS = ("BSH", "BNSD", "BSND")
DTYPES = ("float16", "bfloat16")


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_layouts_and_dtypes(mode, layout, dtype):
    Case(b=2, n=4, kvn=4, s=37, d=64, layout=layout, dtype=dtype).check(mode)


@pytest.mark.parametrize("n,kvn", [(8, 1), (8, 2), (6, 3), (64, 1), (5, 5)])
def test_gqa_groups(mode, n, kvn):
    Case(b=2, n=n, kvn=kvn, s=50, d=32, layout="BNSD").check(mode)


@pytest.mark.parametrize("dtype", DTYPES)
def test_large_group_takes_packed_tiles(mode, dtype):
    # 20 query heads per KV head: the packed (prefill) tile paths with their row remainders, partial key tiles
    # and a head dim that is not a multiple of the vector width
    Case(b=2, n=20, kvn=1, s=75, d=40, layout="BSH", dtype=dtype).check(mode)


def test_num_key_value_heads_zero_means_num_heads(mode):
    case = Case(b=2, n=4, kvn=4, s=20, d=32)
    case.attrs["num_key_value_heads"] = 0
    case.check(mode)


@pytest.mark.parametrize("b,s,d", [(1, 1, 16), (3, 257, 40), (5, 1000, 128), (2, 33, 72), (1, 4100, 64)])
def test_odd_sizes(mode, b, s, d):
    Case(b=b, n=4, kvn=2, s=s, d=d, layout="BSND").check(mode)


def test_key_value_as_tensor_or_list(mode):
    case = Case(b=2, n=4, kvn=2, s=16, d=32)
    case.check(mode, key_as_list=False)
    case.check(mode, key_as_list=True)


def test_key_value_as_tuple_pynative():
    case = Case(b=2, n=4, kvn=2, s=16, d=32)
    kwargs = case.kwargs()
    kwargs["key"], kwargs["value"] = (kwargs["key"],), (kwargs["value"],)
    from ms_attention import ops
    assert_close(to_numpy(ops.incre_flash_attention(**kwargs)), case.expected(), "float16")


@pytest.mark.parametrize("mask_dtype", ["bool", "int8", "uint8"])
@pytest.mark.parametrize("shape", ["BS", "B1S", "B11S"])
def test_attn_mask(mode, mask_dtype, shape):
    case = Case(b=3, n=4, kvn=2, s=45, d=32, layout="BNSD")
    mask = case.rng.random((3, 45)) < 0.3
    mask[1, :] = True           # a fully masked batch: zeros, never NaN
    mask[2, :] = False
    mask = mask.reshape({"BS": (3, 45), "B1S": (3, 1, 45), "B11S": (3, 1, 1, 45)}[shape])
    case.add("attn_mask", mask, mask_dtype)
    out = case.check(mode)
    assert np.all(to_numpy(out)[1] == 0)


@pytest.mark.parametrize("form", ["list", "tuple", "int64", "int32", "single"])
def test_actual_seq_lengths(mode, form):
    case = Case(b=4, n=4, kvn=1, s=70, d=32, layout="BSH")
    lengths = [70, 1, 0, 33]
    if form == "single":
        lengths = [17]
    value = {"list": lengths, "tuple": tuple(lengths), "single": lengths,
             "int64": Tensor(np.array(lengths, np.int64)), "int32": Tensor(np.array(lengths, np.int32))}[form]
    case.set("actual_seq_lengths", value, lengths)
    out = case.check(mode)
    if form != "single":
        assert np.all(to_numpy(out)[2] == 0)  # length 0: zeros


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch", [1, 3])
def test_pse_shift(mode, dtype, batch):
    case = Case(b=3, n=4, kvn=2, s=40, d=32, layout="BNSD", dtype=dtype)
    case.add("pse_shift", case.rng.standard_normal((batch, 4, 1, 40)), dtype)
    case.check(mode)


def test_pse_mask_and_lengths_together(mode):
    case = Case(b=2, n=8, kvn=2, s=64, d=64, layout="BSH")
    case.add("pse_shift", case.rng.standard_normal((2, 8, 1, 64)), "float16")
    case.add("attn_mask", case.rng.random((2, 1, 64)) < 0.2, "bool")
    case.set("actual_seq_lengths", [40, 64], [40, 64])
    case.check(mode)


def _paged(case, block_size, lengths, cache_layout, seed=1):
    """Scatter the case's contiguous K/V into a shuffled paged cache with a block table."""
    rng = np.random.default_rng(seed)
    b, kvn, d = case.b, case.kvn, case.d
    blocks_per_seq = -(-case.s // block_size)
    num_blocks = b * blocks_per_seq + 3
    order = rng.permutation(num_blocks)[: b * blocks_per_seq].reshape(b, blocks_per_seq)
    table = np.full((b, blocks_per_seq + 1), -1, np.int32)     # one extra unused column, left at -1
    table[:, :blocks_per_seq] = order
    for name in ("key", "value"):
        dense = case.np[name]                                   # (B, S, kvN*D) BSH layout
        dense = dense.reshape(b, case.s, kvn, d)
        if cache_layout == "BnBsH":
            cache = np.zeros((num_blocks, block_size, kvn * d), dense.dtype)
        else:
            cache = np.zeros((num_blocks, kvn, block_size, d), dense.dtype)
        for bi in range(b):
            for t in range(case.s):
                blk, slot = order[bi, t // block_size], t % block_size
                if cache_layout == "BnBsH":
                    cache[blk, slot] = dense[bi, t].reshape(-1)
                else:
                    cache[blk, :, slot] = dense[bi, t]
        case.add(name, cache, case.kv_dtype)
    case.add("block_table", table, "int32")
    case.set("actual_seq_lengths", lengths, lengths)
    case.attrs["block_size"] = block_size


@pytest.mark.parametrize("cache_layout,layout", [("BnBsH", "BSH"), ("BnBsH", "BSND"), ("BnNBsD", "BNSD")])
@pytest.mark.parametrize("dtype", DTYPES)
def test_page_attention(mode, cache_layout, layout, dtype):
    case = Case(b=3, n=8, kvn=2, s=100, d=32, layout="BSH", dtype=dtype)
    q = case.np["query"].reshape(3, 8, 32)
    _paged(case, 32, [100, 31, 64], cache_layout)
    case.layout = case.attrs["input_layout"] = layout
    case.add("query", {"BSH": q.reshape(3, 1, 256), "BNSD": q[:, :, None], "BSND": q[:, None]}[layout], dtype)
    case.check(mode)


@pytest.mark.parametrize("b,n,block_size,lengths", [(1, 4, 64, [1100]), (2, 8, 64, [1100, 705]), (2, 4, 96, [1, 1050])])
@pytest.mark.parametrize("dtype", DTYPES)
def test_page_attention_head_major_units_over_all_heads(mode, b, n, block_size, lengths, dtype):
    """Head-major blocks of whole key tiles: one decode unit reads every KV head block by block (one batch: split
    over the keys too); lengths end inside a block and inside a key tile. Long enough that the fewer units of all
    heads still give each of up to 2 (one batch) or 4 threads two."""
    case = Case(b=b, n=n, kvn=4, s=1100, d=32, layout="BSH", dtype=dtype)
    q = case.np["query"].reshape(b, n, 32)
    _paged(case, block_size, lengths, "BnNBsD")
    case.layout = case.attrs["input_layout"] = "BNSD"
    case.add("query", q[:, :, None], dtype)
    case.check(mode)


def test_page_attention_with_mask_and_int8(mode):
    case = Case(b=2, n=4, kvn=2, s=64, d=32, layout="BSH", kv_dtype="int8")
    case.add("antiquant_scale", case.rng.random((2, 64)) * 0.02, "float16")
    _paged(case, 32, [64, 40], "BnBsH")
    case.add("attn_mask", case.rng.random((2, 1, 1, 64)) < 0.25, "bool")
    case.check(mode)


@pytest.mark.parametrize("pad,lengths", [(0, [10, 30]), (5, [10, 30]), (-3, [7, 1]), (25, [10, 30])])
def test_kv_left_padding(mode, pad, lengths):
    case = Case(b=2, n=4, kvn=2, s=40, d=32, layout="BNSD")
    case.set("actual_seq_lengths", lengths, lengths)
    case.set("kv_padding_size", Tensor(np.array(pad, np.int64)), np.array(pad))
    mask = np.ones((2, 40), bool)
    for bi, n in enumerate(lengths):
        start = 40 - max(pad, 0) - n
        if start >= 0:
            mask[bi, start:start + n] = False
    case.add("attn_mask", mask, "bool")
    out = case.check(mode)
    if pad == 25:
        assert np.all(to_numpy(out)[1] == 0)  # 40 - 25 - 30 < 0: the window starts before the cache


def test_kv_padding_without_lengths_is_right_padding(mode):
    case = Case(b=2, n=4, kvn=2, s=24, d=32)
    case.ms["kv_padding_size"] = Tensor(np.array([3], np.int64))
    out = run(mode, case.kwargs())
    assert_close(to_numpy(out), case.expected(), "float16")


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("granularity", ["tensor", "channel"])
@pytest.mark.parametrize("with_offset", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_antiquant_int8_kv(mode, layout, granularity, with_offset, dtype):
    case = Case(b=2, n=8, kvn=2, s=48, d=32, layout=layout, dtype=dtype, kv_dtype="int8")
    shape = (2,) if granularity == "tensor" else {"BNSD": (2, 2, 1, 32), "BSND": (2, 2, 32),
                                                   "BSH": (2, 64)}[layout]
    case.add("antiquant_scale", case.rng.random(shape) * 0.02 + 0.001, dtype)
    if with_offset:
        case.add("antiquant_offset", case.rng.standard_normal(shape) * 4, dtype)
    case.check(mode)


@pytest.mark.parametrize("granularity", ["tensor", "channel"])
@pytest.mark.parametrize("with_offset", [False, True])
def test_post_quant_int8_output(mode, granularity, with_offset):
    case = Case(b=3, n=4, kvn=2, s=30, d=32, layout="BNSD")
    shape = (1,) if granularity == "tensor" else (1, 4, 1, 32)
    case.add("quant_scale2", case.rng.random(shape) * 100 + 20, "float32")
    if with_offset:
        case.add("quant_offset2", case.rng.standard_normal(shape) * 3, "float32")
    mask = np.zeros((3, 30), bool)
    mask[2] = True                   # not computed: 0 after quantization, not the offset
    case.add("attn_mask", mask, "bool")
    out = case.check(mode, out_dtype="int8")
    assert np.all(to_numpy(out)[2] == 0)


@pytest.mark.parametrize("inner_precise", [0, 1])
def test_inner_precise_accepted(mode, inner_precise):
    case = Case(b=2, n=4, kvn=2, s=20, d=32)
    case.attrs["inner_precise"] = inner_precise
    case.check(mode)


def test_layout_string_case_insensitive(mode):
    case = Case(b=2, n=4, kvn=2, s=20, d=32, layout="BNSD")
    case.attrs["input_layout"] = "bnsd"
    case.check(mode)


def test_large_values_stay_finite(mode):
    case = Case(b=1, n=2, kvn=1, s=300, d=64)
    case.add("query", case.np["query"] * 60, "float16")
    case.add("key", case.np["key"] * 60, "float16")
    case.check(mode)


def test_primitive_called_directly_pynative():
    from ms_attention.primitives import IncreFlashAttention
    case = Case(b=2, n=4, kvn=2, s=20, d=32, layout="BNSD")
    case.set("actual_seq_lengths", [20, 5], [20, 5])
    prim = IncreFlashAttention(num_heads=4, input_layout="BNSD", scale_value=case.attrs["scale_value"],
                               num_key_value_heads=2)
    out = prim(case.ms["query"], [case.ms["key"]], [case.ms["value"]], None, [20, 5])
    assert_close(to_numpy(out), case.expected(), "float16")
