"""Every documented error of prompt_flash_attention (the Raises list of MindSpore 2.10's docstring, then the
general rules for what it leaves out: a dtype is a TypeError, a bad value or shape a ValueError, an inconsistency
between inputs a RuntimeError), in PyNative, Graph and jit, before any kernel runs: the exception type must
match and the message must name the argument and the value."""
import pytest

from fused_cases import first, lengths, run, t
from ms_attention import ops, primitives

B, N, KVN, SQ, SKV, D = 2, 8, 2, 16, 32, 32


def base():
    """A valid BSH call: query (2, 16, 256), key/value (2, 32, 64), GQA 8/2, D 32."""
    return dict(query=t((B, SQ, N * D)), key=t((B, SKV, KVN * D)), value=t((B, SKV, KVN * D)), num_heads=N,
                num_key_value_heads=KVN, scale_value=D ** -0.5)


def bnsd(**extra):
    call = dict(query=t((B, N, SQ, D)), key=t((B, KVN, SKV, D)), value=t((B, KVN, SKV, D)), input_layout="BNSD")
    call.update(extra)
    return call


def full_quant(**extra):
    """int8 query, key and value with the three full-quantization scales."""
    quant = dict(query=t((B, SQ, N * D), "int8"), key=t((B, SKV, KVN * D), "int8"),
                 value=t((B, SKV, KVN * D), "int8"), deq_scale1=t((1,), "float32", 1),
                 quant_scale1=t((1,), "float32", 1), deq_scale2=t((1,), "float32", 1))
    quant.update(extra)
    return quant


def tnd(**extra):
    """TND: 2 batches of 10 and 6 query tokens, 20 and 12 key tokens (cumulative lengths)."""
    call = dict(query=t((16, N, D)), key=t((32, KVN, D)), value=t((32, KVN, D)), input_layout="TND",
                actual_seq_lengths=[10, 16], actual_seq_lengths_kv=[20, 32])
    call.update(extra)
    return call


# (id, how to break the valid call, exception, fragments the message must contain)
RAISES_LIST = [
    # TypeError: dtypes and attribute types
    ("query_dtype", dict(query=t((B, SQ, N * D), "float32")), TypeError, ["query", "float32"]),
    ("key_value_not_query_dtype", dict(key=t((B, SKV, KVN * D), "bfloat16"), value=t((B, SKV, KVN * D), "bfloat16")),
     TypeError, ["query", "key", "bfloat16"]),
    ("key_value_dtypes_differ", dict(value=t((B, SKV, KVN * D), "bfloat16")), TypeError, ["key", "value", "bfloat16"]),
    ("mask_dtype", dict(attn_mask=t((SQ, SKV), "float32")), TypeError, ["attn_mask", "float32"]),
    ("pse_dtype", dict(pse_shift=t((1, N, SQ, SKV), "float32")), TypeError, ["pse_shift", "float32"]),
    ("scale_value_type", dict(scale_value="0.1"), TypeError, ["scale_value", "0.1"]),
    ("input_layout_type", dict(input_layout=1), TypeError, ["input_layout", "1"]),
    ("num_key_value_heads_type", dict(num_key_value_heads="2"), TypeError, ["num_key_value_heads", "'2'"]),
    ("sparse_mode_type", dict(sparse_mode=1.0), TypeError, ["sparse_mode", "1.0"]),
    ("inner_precise_type", dict(inner_precise="1"), TypeError, ["inner_precise", "'1'"]),
    ("quant_scale1_dtype", full_quant(quant_scale1=t((1,), "float16")), TypeError, ["quant_scale1", "float16"]),
    ("deq_scale1_dtype", full_quant(deq_scale1=t((1,), "int32")), TypeError, ["deq_scale1", "int32"]),
    ("quant_scale2_dtype", dict(quant_scale2=t((1,), "float16")), TypeError, ["quant_scale2", "float16"]),
    ("deq_scale2_dtype", full_quant(deq_scale2=t((1,), "int64")), TypeError, ["deq_scale2", "int64"]),
    ("quant_offset2_dtype", dict(quant_scale2=t((1,), "float32"), quant_offset2=t((1,), "int32")), TypeError,
     ["quant_offset2", "int32"]),
    # ValueError: the layout
    ("input_layout_value", dict(input_layout="SBH"), ValueError, ["input_layout", "SBH"]),
    ("input_layout_bnsd_bsnd", dict(input_layout="BNSD_BSND"), ValueError, ["input_layout", "BNSD_BSND"]),
    # RuntimeError: head counts, masks, sparse_mode, alignment
    ("num_heads_not_divisible", dict(num_key_value_heads=3), RuntimeError,
     ["num_heads", "num_key_value_heads", "8", "3"]),
    ("num_heads_zero", dict(num_heads=0), RuntimeError, ["num_heads", "0"]),
    ("num_heads_negative", dict(num_heads=-8), RuntimeError, ["num_heads", "-8"]),
    ("num_key_value_heads_negative", dict(num_key_value_heads=-1), RuntimeError, ["num_key_value_heads", "-1"]),
    ("kv_n_not_num_key_value_heads", bnsd(key=t((B, 4, SKV, D)), value=t((B, 4, SKV, D))), RuntimeError,
     ["kv_n", "num_key_value_heads", "4"]),
    ("mask_shape_rank", dict(attn_mask=t((B, SKV), "bool")), RuntimeError, ["attn_mask", "(2, 32)"]),
    ("mask_shape_too_short", dict(attn_mask=t((SQ, SKV - 1), "bool")), RuntimeError, ["attn_mask", "(16, 31)"]),
    ("mask_shape_batch", dict(attn_mask=t((3, SQ, SKV), "bool")), RuntimeError, ["attn_mask", "(3, 16, 32)"]),
    ("mask_shape_heads", dict(attn_mask=t((B, N, SQ, SKV), "bool")), RuntimeError, ["attn_mask", "(2, 8, 16, 32)"]),
    ("mask_not_compressed_in_band_mode", dict(sparse_mode=3, attn_mask=t((SQ, SKV), "bool")), RuntimeError,
     ["attn_mask", "2048", "(16, 32)"]),
    ("sparse_mode_above", dict(sparse_mode=5), RuntimeError, ["sparse_mode", "5"]),
    ("sparse_mode_negative", dict(sparse_mode=-1), RuntimeError, ["sparse_mode", "-1"]),
    ("bfloat16_head_dim_not_16", dict(query=t((B, SQ, N * 24), "bfloat16"), key=t((B, SKV, KVN * 24), "bfloat16"),
                                      value=t((B, SKV, KVN * 24), "bfloat16")), RuntimeError, ["bfloat16", "16", "24"]),
    ("bsh_kv_h_not_divisible", dict(key=t((B, SKV, 63)), value=t((B, SKV, 63))), RuntimeError,
     ["kv_h", "num_key_value_heads", "63"]),
    ("head_dim_differs", bnsd(key=t((B, KVN, SKV, 16)), value=t((B, KVN, SKV, 16))), RuntimeError,
     ["head dim", "32", "16"]),
    ("value_head_dim_differs", bnsd(value=t((B, KVN, SKV, 16))), RuntimeError, ["key", "value", "(2, 2, 32, 16)"]),
    ("per_channel_post_quant_head_dim_not_32", dict(query=t((B, SQ, N * 16)), key=t((B, SKV, KVN * 16)),
                                                    value=t((B, SKV, KVN * 16)), quant_scale2=t((N * 16,), "float32")),
     RuntimeError, ["quant_scale2", "32", "D=16"]),
]

BEYOND_THE_LIST = [
    ("query_heads_not_num_heads", bnsd(query=t((B, 4, SQ, D))), ValueError, ["query", "num_heads", "4"]),
    ("query_rank", dict(query=t((B, SQ, N, D))), ValueError, ["query", "3-D", "(2, 16, 8, 32)"]),
    ("inner_precise_value", dict(inner_precise=2), ValueError, ["inner_precise", "2"]),
    ("seq_length_above_query", dict(actual_seq_lengths=[17, 3]), ValueError, ["actual_seq_lengths", "17"]),
    ("seq_length_negative", dict(actual_seq_lengths=[-1, 3]), ValueError, ["actual_seq_lengths", "-1"]),
    ("kv_length_above_key", dict(actual_seq_lengths_kv=[5, 33]), ValueError, ["actual_seq_lengths_kv", "33"]),
    ("seq_lengths_size", dict(actual_seq_lengths=lengths([1, 2, 3])), ValueError, ["actual_seq_lengths", "3"]),
    ("seq_lengths_dtype", dict(actual_seq_lengths=t((B,), "float32")), TypeError, ["actual_seq_lengths", "float32"]),
    ("seq_lengths_not_int", dict(actual_seq_lengths=[1.5, 2]), TypeError, ["actual_seq_lengths", "1.5"]),
    ("pse_shape", dict(pse_shift=t((1, 4, SQ, SKV))), RuntimeError, ["pse_shift", "(1, 4, 16, 32)"]),
    ("pse_too_short", dict(pse_shift=t((1, N, SQ, SKV - 1))), RuntimeError, ["pse_shift", "(1, 8, 16, 31)"]),
    ("pse_bfloat16_with_float16_query", dict(pse_shift=t((1, N, SQ, SKV), "bfloat16")), TypeError,
     ["pse_shift", "bfloat16"]),
    ("full_quant_without_scales", full_quant(deq_scale1=None, quant_scale1=None), RuntimeError,
     ["int8", "deq_scale1", "quant_scale1"]),
    ("full_quant_scales_with_float_query", dict(deq_scale1=t((1,), "float32")), RuntimeError, ["deq_scale1", "int8"]),
    ("full_quant_scale_shape", full_quant(quant_scale1=t((2,), "float32")), ValueError, ["quant_scale1", "(2,)"]),
    ("int8_query_float_key", full_quant(key=t((B, SKV, KVN * D)), value=t((B, SKV, KVN * D))), TypeError,
     ["int8", "key", "float16"]),
    ("quant_offset2_without_scale", dict(quant_offset2=t((1,), "float32")), RuntimeError,
     ["quant_offset2", "quant_scale2"]),
    ("quant_scale2_shape", dict(quant_scale2=t((3,), "float32")), RuntimeError, ["quant_scale2", "(3,)"]),
    ("group_above_64", dict(num_heads=128, num_key_value_heads=1, query=t((B, SQ, 128 * D)), key=t((B, SKV, D)),
                            value=t((B, SKV, D))), RuntimeError, ["num_heads", "64"]),
    ("tnd_without_lengths", tnd(actual_seq_lengths=None), RuntimeError, ["actual_seq_lengths", "TND"]),
    ("tnd_without_kv_lengths", tnd(actual_seq_lengths_kv=None), RuntimeError, ["actual_seq_lengths_kv", "TND"]),
    ("tnd_lengths_not_cumulative", tnd(actual_seq_lengths=[10, 6]), ValueError, ["actual_seq_lengths", "cumulative"]),
    ("tnd_lengths_not_ending_at_t", tnd(actual_seq_lengths=[10, 15]), ValueError, ["actual_seq_lengths", "16", "15"]),
    ("tnd_kv_lengths_count", tnd(actual_seq_lengths_kv=[32]), RuntimeError, ["actual_seq_lengths_kv", "(1,)"]),
    ("tnd_pse", tnd(pse_shift=t((1, N, 16, 32))), RuntimeError, ["pse_shift", "TND"]),
    ("tnd_mask_too_small", tnd(attn_mask=t((9, 20), "bool")), RuntimeError, ["attn_mask", "(9, 20)"]),
]


@pytest.mark.parametrize("name,change,error,fragments", RAISES_LIST + BEYOND_THE_LIST,
                         ids=[c[0] for c in RAISES_LIST + BEYOND_THE_LIST])
def test_documented_errors(mode, name, change, error, fragments):
    kwargs = base()
    kwargs.update(change)
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    with pytest.raises(error) as info:
        first(run(mode, ops.prompt_flash_attention, kwargs)).asnumpy()
    message = str(info.value)
    assert "For 'PromptFlashAttention'" in message, message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in: {message}"


VALID = [
    ("bsh", {}),
    ("bnsd_causal", bnsd(sparse_mode=3, attn_mask=t((2048, 2048), "bool"))),
    ("bsnd_band", dict(query=t((B, SQ, N, D)), key=t((B, SKV, KVN, D)), value=t((B, SKV, KVN, D)),
                       input_layout="bsnd", sparse_mode=4, pre_tokens=4, next_tokens=0)),
    ("batched_compressed_mask", dict(sparse_mode=2, attn_mask=t((B, 1, 2048, 2048), "uint8"))),
    ("larger_mask_float16", dict(attn_mask=t((1, 1, SQ + 3, SKV + 5), "float16"), pre_tokens=3)),
    ("mask_and_pse", dict(attn_mask=t((B, 1, SQ, SKV), "int8"), pse_shift=t((B, N, SQ, SKV)), sparse_mode=1)),
    ("lengths", dict(actual_seq_lengths=lengths([16, 3]), actual_seq_lengths_kv=[32, 0])),
    ("post_quant", dict(quant_scale2=t((N * D,), "float32", 1), quant_offset2=t((N * D,), "float32"))),
    ("full_quant", full_quant()),
    ("full_quant_int8_out", full_quant(quant_scale2=t((1,), "float32", 1))),
    ("tnd", tnd(attn_mask=t((10, 20), "bool"), sparse_mode=0)),
]


@pytest.mark.parametrize("name,change", VALID, ids=[c[0] for c in VALID])
def test_valid_calls_reach_the_kernel(mode, name, change):
    """What the checks accept compiles and runs, with the documented output dtype."""
    kwargs = base()
    kwargs.update(change)
    out = run(mode, ops.prompt_flash_attention, kwargs)
    assert out.shape == kwargs["query"].shape
    query_int8 = str(kwargs["query"].dtype) == "Int8"
    want = "Int8" if "quant_scale2" in kwargs else "Float16" if query_int8 else str(kwargs["query"].dtype)
    assert str(out.dtype) == want


def test_values_of_tensor_lengths_are_checked_on_the_host_in_pynative():
    kwargs = base()
    kwargs["actual_seq_lengths_kv"] = lengths([40, 1])
    with pytest.raises(ValueError, match="actual_seq_lengths_kv.*40"):
        run("pynative", ops.prompt_flash_attention, kwargs)
    kwargs = tnd(actual_seq_lengths=lengths([10, 15]))
    kwargs.update(num_heads=N, num_key_value_heads=KVN)
    with pytest.raises(ValueError, match="actual_seq_lengths.*15"):
        run("pynative", ops.prompt_flash_attention, kwargs)
    kwargs = tnd(actual_seq_lengths=lengths([10, 16]), attn_mask=t((9, 20), "bool"))
    kwargs.update(num_heads=N, num_key_value_heads=KVN)
    with pytest.raises(RuntimeError, match="attn_mask.*(9, 20)"):
        run("pynative", ops.prompt_flash_attention, kwargs)


@pytest.mark.parametrize("attrs,error,fragment", [
    (dict(num_heads=8.0), TypeError, "num_heads"), (dict(num_heads=8, input_layout="SBH"), ValueError, "SBH"),
    (dict(num_heads=8, sparse_mode=7), RuntimeError, "sparse_mode"),
    (dict(num_heads=8, num_key_value_heads=3), RuntimeError, "divisible")])
def test_primitive_attribute_errors_at_construction(attrs, error, fragment):
    with pytest.raises(error, match=fragment):
        primitives.PromptFlashAttention(**attrs)
