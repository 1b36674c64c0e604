"""The documented errors of fused_infer_attention_score and fused_infer_attention_score_v2 (MindSpore's FIA
docstring has no Raises list: a dtype is a TypeError, a bad value or shape a ValueError, an inconsistency between
inputs a RuntimeError; the layout and sparse_mode are ValueErrors, a mask shape and page attention without
actual_seq_lengths_kv RuntimeErrors), in PyNative, Graph and jit, before any kernel runs. A query of length 1
takes the incremental branch, whose rules are incre_flash_attention's."""
import numpy as np
import pytest
from mindspore import Tensor

from fused_cases import first, lengths, run, t
from ms_attention import ops, primitives

B, N, KVN, SQ, SKV, D = 2, 8, 2, 16, 32, 32
BLOCK = 32


def base(sq=SQ):
    """A valid BSH call: query (2, sq, 256), key/value (2, 32, 64), GQA 8/2, D 32."""
    return dict(query=t((B, sq, N * D)), key=t((B, SKV, KVN * D)), value=t((B, SKV, KVN * D)), num_heads=N,
                num_key_value_heads=KVN, scale=D ** -0.5)


def with_(call, **extra):
    """call with extra arguments added or replaced."""
    call = dict(call)
    call.update(extra)
    return call


def decode(**extra):
    return with_(base(1), **extra)


def bnsd(**extra):
    return with_(with_(base(), query=t((B, N, SQ, D)), key=t((B, KVN, SKV, D)), value=t((B, KVN, SKV, D)),
                       input_layout="BNSD"), **extra)


def paged(sq=SQ, **extra):
    """A paged cache of 4 blocks of 32 tokens (BnBsH), 2 blocks per sequence."""
    return with_(with_(base(sq), key=t((4, BLOCK, KVN * D)), value=t((4, BLOCK, KVN * D)),
                       block_table=Tensor(np.array([[0, 1], [2, 3]], np.int32)), block_size=BLOCK,
                       actual_seq_lengths_kv=[40, 20]), **extra)


def int8_kv(sq=SQ, **extra):
    return with_(with_(base(sq), key=t((B, SKV, KVN * D), "int8"), value=t((B, SKV, KVN * D), "int8")), **extra)


def full_quant(**extra):
    return with_(with_(base(), query=t((B, SQ, N * D), "int8"), key=t((B, SKV, KVN * D), "int8"),
                       value=t((B, SKV, KVN * D), "int8"), dequant_scale1=t((1,), "float32", 1),
                       quant_scale1=t((1,), "float32", 1), dequant_scale2=t((1,), "float32", 1)), **extra)


def prefix(**extra):
    """A shared prefix of 8 tokens in front of every batch's keys."""
    return with_(with_(base(), key_shared_prefix=t((1, 8, KVN * D)), value_shared_prefix=t((1, 8, KVN * D))),
                 **extra)


def tnd(**extra):
    """TND: 2 batches of 10 and 6 query tokens, 20 and 12 key tokens (cumulative lengths)."""
    return with_(with_(base(), query=t((16, N, D)), key=t((32, KVN, D)), value=t((32, KVN, D)), input_layout="TND",
                       actual_seq_lengths=[10, 16], actual_seq_lengths_kv=[20, 32]), **extra)


FIA_CASES = [
    # layout and sparse_mode are ValueErrors (docs/fused_infer_attention_score.md, error table)
    ("input_layout_value", with_(base(), input_layout="SBH"), ValueError, ["input_layout", "SBH"]),
    ("input_layout_bsh_bnsd", with_(base(), input_layout="BSH_BNSD"), ValueError, ["input_layout", "BSH_BNSD"]),
    ("input_layout_type", with_(base(), input_layout=1), TypeError, ["input_layout", "1"]),
    ("sparse_mode_above", with_(base(), sparse_mode=5), ValueError, ["sparse_mode", "5"]),
    ("sparse_mode_negative", with_(base(), sparse_mode=-1), ValueError, ["sparse_mode", "-1"]),
    ("sparse_mode_type", with_(base(), sparse_mode="3"), TypeError, ["sparse_mode", "'3'"]),
    # mask shapes: RuntimeError
    ("mask_shape_decode_form_in_prefill", with_(base(), atten_mask=t((B, SKV), "bool")), RuntimeError,
     ["attn_mask", "(2, 32)"]),
    ("mask_too_short", with_(base(), atten_mask=t((SQ - 1, SKV), "bool")), RuntimeError, ["attn_mask", "(15, 32)"]),
    ("mask_not_compressed_in_band_mode", with_(base(), sparse_mode=3, atten_mask=t((SQ, SKV), "bool")),
     RuntimeError, ["attn_mask", "2048"]),
    ("mask_batched_compressed", with_(base(), sparse_mode=3, atten_mask=t((B, 1, 2048, 2048), "bool")),
     RuntimeError, ["attn_mask", "(2, 1, 2048, 2048)"]),
    ("decode_mask_length", decode(atten_mask=t((B, SKV - 1), "bool")), RuntimeError, ["attn_mask", "(2, 31)"]),
    ("decode_mask_batch", decode(atten_mask=t((3, 1, SKV), "bool")), RuntimeError, ["attn_mask", "(3, 1, 32)"]),
    ("shared_prefix_mask_must_cover_prefix", prefix(atten_mask=t((SQ, SKV), "bool")), RuntimeError,
     ["attn_mask", "40"]),
    # page attention
    ("paged_without_kv_lengths", paged(actual_seq_lengths_kv=None), RuntimeError,
     ["actual_seq_lengths_kv", "block_table"]),
    ("paged_block_size_zero", paged(block_size=0), ValueError, ["block_size", "0"]),
    ("paged_block_size_alignment", paged(block_size=24), ValueError, ["block_size", "24"]),
    ("paged_block_size_not_cache_block", paged(block_size=64), RuntimeError, ["block_size", "64"]),
    ("paged_table_rows", paged(block_table=Tensor(np.zeros((1, 2), np.int32))), RuntimeError,
     ["block_table", "(1, 2)"]),
    ("paged_length_above_table", paged(actual_seq_lengths_kv=[65, 1]), ValueError, ["actual_seq_lengths_kv", "65"]),
    ("paged_with_kv_padding", paged(kv_padding_size=t((1,), "int64"), actual_seq_lengths_kv=[40, 20]),
     RuntimeError, ["kv_padding_size", "page attention"]),
    ("paged_with_shared_prefix", paged(key_shared_prefix=t((1, 8, KVN * D)), value_shared_prefix=t((1, 8, KVN * D))),
     RuntimeError, ["key_shared_prefix", "page attention"]),
    ("paged_nbsd_cache_needs_bnsd", paged(key=t((4, KVN, BLOCK, D)), value=t((4, KVN, BLOCK, D))), ValueError,
     ["BNSD", "BSH"]),
    ("decode_paged_per_channel_post_quant", paged(1, quant_scale2=t((N * D,), "float32")), RuntimeError,
     ["quant_scale2", "page attention"]),
    # dtypes: TypeError
    ("query_dtype", with_(base(), query=t((B, SQ, N * D), "float32")), TypeError, ["query", "float32"]),
    ("key_value_dtypes_differ", with_(base(), value=t((B, SKV, KVN * D), "bfloat16")), TypeError,
     ["key", "value", "bfloat16"]),
    ("key_not_query_dtype", with_(base(), key=t((B, SKV, KVN * D), "bfloat16"),
                                  value=t((B, SKV, KVN * D), "bfloat16")), TypeError, ["key", "bfloat16"]),
    ("mask_dtype", with_(base(), atten_mask=t((SQ, SKV), "float16")), TypeError, ["attn_mask", "float16"]),
    ("pse_dtype", with_(base(), pse_shift=t((1, N, SQ, SKV), "float32")), TypeError, ["pse_shift", "float32"]),
    ("block_table_dtype", paged(block_table=Tensor(np.zeros((2, 2), np.int64))), TypeError, ["block_table", "int64"]),
    ("seq_lengths_dtype", with_(base(), actual_seq_lengths=t((B,), "float32")), TypeError,
     ["actual_seq_lengths", "float32"]),
    ("quant_scale2_dtype", with_(base(), quant_scale2=t((1,), "float16")), TypeError, ["quant_scale2", "float16"]),
    ("quant_offset2_dtype_not_scale", with_(base(), query=t((B, SQ, N * D), "bfloat16"),
                                            key=t((B, SKV, KVN * D), "bfloat16"),
                                            value=t((B, SKV, KVN * D), "bfloat16"), quant_scale2=t((1,), "bfloat16"),
                                            quant_offset2=t((1,), "float32")),
     TypeError, ["quant_offset2", "float32"]),
    ("dequant_scale1_dtype", full_quant(dequant_scale1=t((1,), "float16")), TypeError, ["dequant_scale1", "float16"]),
    ("antiquant_scale_dtype", int8_kv(antiquant_scale=t((2,), "int32")), TypeError, ["antiquant_scale", "int32"]),
    ("per_token_scale_dtype", int8_kv(antiquant_scale=t((2, B, SKV)), antiquant_mode=1), TypeError,
     ["antiquant_scale", "float32", "per-token"]),
    ("shared_prefix_dtype", prefix(key_shared_prefix=t((1, 8, KVN * D), "bfloat16")), TypeError,
     ["key_shared_prefix", "bfloat16"]),
    ("decode_int8_query", with_(full_quant(), query=t((B, 1, N * D), "int8")), TypeError, ["query", "int8"]),
    ("num_heads_type", with_(base(), num_heads=8.0), TypeError, ["num_heads", "8.0"]),
    ("scale_type", with_(base(), scale="0.1"), TypeError, ["scale_value", "0.1"]),
    ("softmax_lse_flag_type", with_(base(), softmax_lse_flag=1), TypeError, ["softmax_lse_flag", "1"]),
    ("block_size_type", with_(base(), block_size=16.0), TypeError, ["block_size", "16.0"]),
    # attribute values: ValueError
    ("inner_precise_value", with_(base(), inner_precise=4), ValueError, ["inner_precise", "4"]),
    ("antiquant_mode_value", with_(base(), antiquant_mode=2), ValueError, ["antiquant_mode", "2"]),
    ("key_antiquant_mode_value", with_(base(), key_antiquant_mode=-1), ValueError, ["key_antiquant_mode", "-1"]),
    ("block_size_negative", with_(base(), block_size=-16), ValueError, ["block_size", "-16"]),
    ("block_size_beyond_int32", with_(base(), block_size=2 ** 60), ValueError, ["block_size", str(2 ** 60)]),
    # head counts
    ("num_heads_zero", with_(base(), num_heads=0), RuntimeError, ["num_heads", "0"]),
    ("num_heads_not_divisible", with_(base(), num_key_value_heads=3), ValueError,
     ["num_heads", "num_key_value_heads", "3"]),
    ("group_above_64", with_(base(), num_heads=128, num_key_value_heads=1, query=t((B, SQ, 128 * D)),
                             key=t((B, SKV, D)), value=t((B, SKV, D))), ValueError, ["num_heads", "64"]),
    ("query_heads_not_num_heads", bnsd(query=t((B, 4, SQ, D))), ValueError, ["query", "num_heads", "4"]),
    ("kv_heads_not_num_key_value_heads", bnsd(key=t((B, 4, SKV, D)), value=t((B, 4, SKV, D))), RuntimeError,
     ["kv_n", "num_key_value_heads", "4"]),
    ("kv_batch", with_(base(), key=t((3, SKV, KVN * D)), value=t((3, SKV, KVN * D))), RuntimeError,
     ["batch", "key", "(3, 32, 64)"]),
    ("head_dim_differs", bnsd(key=t((B, KVN, SKV, 16)), value=t((B, KVN, SKV, 16))), RuntimeError,
     ["head dim", "16"]),
    # lengths and left padding
    ("seq_length_above_query", with_(base(), actual_seq_lengths=[17, 1]), ValueError, ["actual_seq_lengths", "17"]),
    ("kv_length_negative", with_(base(), actual_seq_lengths_kv=[-1]), ValueError, ["actual_seq_lengths_kv", "-1"]),
    ("kv_lengths_size", with_(base(), actual_seq_lengths_kv=[1, 2, 3]), ValueError, ["actual_seq_lengths_kv", "3"]),
    ("padding_shape", with_(base(), kv_padding_size=t((2,), "int64"), actual_seq_lengths_kv=[3, 4]), ValueError,
     ["kv_padding_size", "(2,)"]),
    ("tnd_without_kv_lengths", tnd(actual_seq_lengths_kv=None), RuntimeError, ["actual_seq_lengths_kv", "TND"]),
    ("tnd_without_lengths", tnd(actual_seq_lengths=None), RuntimeError, ["actual_seq_lengths", "TND"]),
    ("tnd_lengths_not_cumulative", tnd(actual_seq_lengths_kv=[20, 12]), ValueError,
     ["actual_seq_lengths_kv", "cumulative"]),
    ("tnd_lengths_not_ending_at_t", tnd(actual_seq_lengths_kv=[20, 30]), ValueError,
     ["actual_seq_lengths_kv", "32", "30"]),
    ("tnd_pse", tnd(pse_shift=t((1, N, 16, 32))), RuntimeError, ["pse_shift", "TND"]),
    ("tnd_padding", tnd(query_padding_size=t((1,), "int64")), RuntimeError, ["query_padding_size", "TND"]),
    ("tnd_shared_prefix", tnd(key_shared_prefix=t((1, 8, KVN, D)), value_shared_prefix=t((1, 8, KVN, D))),
     RuntimeError, ["shared prefix", "TND"]),
    # shared prefix pairing
    ("prefix_key_without_value", prefix(value_shared_prefix=None), RuntimeError,
     ["key_shared_prefix", "value_shared_prefix"]),
    ("prefix_length_without_prefix", with_(base(), actual_shared_prefix_len=[4]), RuntimeError,
     ["actual_shared_prefix_len", "key_shared_prefix"]),
    ("prefix_with_per_token_antiquant",
     with_(prefix(key_shared_prefix=t((1, 8, KVN * D), "int8"), value_shared_prefix=t((1, 8, KVN * D), "int8")),
           key=t((B, SKV, KVN * D), "int8"), value=t((B, SKV, KVN * D), "int8"),
           antiquant_scale=t((2, B, SKV), "float32"), antiquant_mode=1),
     RuntimeError, ["shared prefix", "per-token"]),
    ("prefix_shapes_differ", prefix(value_shared_prefix=t((1, 6, KVN * D))), RuntimeError,
     ["key_shared_prefix", "value_shared_prefix", "(1, 6, 64)"]),
    ("prefix_batch_not_1", prefix(key_shared_prefix=t((2, 8, KVN * D)), value_shared_prefix=t((2, 8, KVN * D))),
     RuntimeError, ["key_shared_prefix", "(2, 8, 64)"]),
    ("prefix_length_above_prefix", prefix(actual_shared_prefix_len=[9]), ValueError,
     ["actual_shared_prefix_len", "9"]),
    ("prefix_with_kv_padding", prefix(kv_padding_size=t((1,), "int64"), actual_seq_lengths_kv=[4, 5]),
     RuntimeError, ["shared prefix", "kv_padding_size"]),
    # quantization combinations
    ("int8_kv_without_scale", int8_kv(), RuntimeError, ["antiquant_scale", "int8"]),
    ("antiquant_with_float_kv", with_(base(), antiquant_scale=t((2,))), RuntimeError, ["antiquant_scale", "int8"]),
    ("antiquant_per_channel_shape", int8_kv(antiquant_scale=t((2, 63))), RuntimeError, ["antiquant_scale", "(2, 63)"]),
    ("antiquant_per_token_shape", int8_kv(antiquant_scale=t((2, B, SKV - 1), "float32"), antiquant_mode=1),
     RuntimeError, ["antiquant_scale", "(2, 2, 31)"]),
    ("antiquant_offset_without_scale", int8_kv(antiquant_offset=t((2,))), RuntimeError,
     ["antiquant_offset", "antiquant_scale"]),
    ("combined_and_separate_antiquant", int8_kv(antiquant_scale=t((2,)), key_antiquant_scale=t((1,)),
                                                value_antiquant_scale=t((1,))), RuntimeError,
     ["antiquant_scale", "key_antiquant_scale"]),
    ("separate_key_scale_without_value", int8_kv(key_antiquant_scale=t((1,))), RuntimeError,
     ["key_antiquant_scale", "value_antiquant_scale"]),
    ("separate_offsets_unpaired", int8_kv(key_antiquant_scale=t((1,)), value_antiquant_scale=t((1,)),
                                          key_antiquant_offset=t((1,))), RuntimeError,
     ["key_antiquant_offset", "value_antiquant_offset"]),
    ("separate_per_token_shape", int8_kv(key_antiquant_scale=t((B, SKV), "float32"), key_antiquant_mode=1,
                                         value_antiquant_scale=t((3, SKV), "float32"), value_antiquant_mode=1),
     RuntimeError, ["value_antiquant_scale", "(3, 32)"]),
    ("full_quant_missing_scale", full_quant(dequant_scale2=None), RuntimeError, ["int8", "dequant_scale2"]),
    ("full_quant_with_float_query", with_(base(), quant_scale1=t((1,), "float32")), RuntimeError,
     ["quant_scale1", "int8"]),
    ("full_quant_with_antiquant", full_quant(antiquant_scale=t((2,), "float32")), RuntimeError,
     ["antiquant", "int8"]),
    ("post_quant_shape", with_(base(), quant_scale2=t((3,), "float32")), RuntimeError, ["quant_scale2", "(3,)"]),
    ("pse_shape", with_(base(), pse_shift=t((1, N, SQ - 1, SKV))), RuntimeError, ["pse_shift", "(1, 8, 15, 32)"]),
    ("decode_pse_head_dim", with_(decode(), query=t((B, 1, N * 24)), key=t((B, SKV, KVN * 24)),
                                  value=t((B, SKV, KVN * 24)), pse_shift=t((1, N, 1, SKV))), ValueError,
     ["pse_shift", "16", "D=24"]),
]


@pytest.mark.parametrize("name,kwargs,error,fragments", FIA_CASES, ids=[c[0] for c in FIA_CASES])
def test_fia_documented_errors(mode, name, kwargs, error, fragments):
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    with pytest.raises(error) as info:
        first(run(mode, ops.fused_infer_attention_score, kwargs)).asnumpy()
    message = str(info.value)
    assert "For 'FusedInferAttentionScore'" in message, message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in: {message}"


def v2_base(sq=SQ, **extra):
    return with_(dict(query=t((B, sq, N * D)), key=t((B, SKV, KVN * D)), value=t((B, SKV, KVN * D)),
                      num_query_heads=N, num_key_value_heads=KVN, softmax_scale=D ** -0.5), **extra)


def v2_rope(**extra):
    """MLA-style rope: D_rope 16 next to D 32."""
    return with_(v2_base(query_rope=t((B, SQ, N * 16)), key_rope=t((B, SKV, KVN * 16))), **extra)


V2_CASES = [
    ("num_query_heads_type", v2_base(num_query_heads=8.0), TypeError, ["num_query_heads", "8.0"]),
    ("softmax_scale_type", v2_base(softmax_scale="x"), TypeError, ["softmax_scale", "'x'"]),
    ("return_softmax_lse_type", v2_base(return_softmax_lse=1), TypeError, ["return_softmax_lse", "1"]),
    ("num_query_heads_zero", v2_base(num_query_heads=0), RuntimeError, ["num_query_heads", "0"]),
    ("heads_not_divisible", v2_base(num_key_value_heads=3), ValueError, ["num_query_heads", "3"]),
    ("input_layout_value", v2_base(input_layout="NSD"), ValueError, ["input_layout", "NSD"]),
    ("sparse_mode_value", v2_base(sparse_mode=6), ValueError, ["sparse_mode", "6"]),
    ("query_quant_mode", v2_base(query_quant_mode=1), ValueError, ["query_quant_mode", "1"]),
    ("key_quant_mode", v2_base(key_quant_mode=2), ValueError, ["key_quant_mode", "2"]),
    ("dtype_override", v2_base(query_dtype=1), ValueError, ["query_dtype", "not supported"]),
    ("dtype_override_type", v2_base(out_dtype="int8"), TypeError, ["out_dtype", "'int8'"]),
    ("dequant_scale_query", v2_base(dequant_scale_query=t((1,), "float32")), ValueError,
     ["dequant_scale_query", "not supported"]),
    ("dequant_scale_key_rope", v2_base(dequant_scale_key_rope=t((1,), "float32")), ValueError,
     ["dequant_scale_key_rope", "not supported"]),
    ("query_int8", v2_base(query=t((B, SQ, N * D), "int8")), TypeError, ["query", "int8"]),
    ("mask_shape", v2_base(atten_mask=t((SQ, SKV - 1), "bool")), RuntimeError, ["atten_mask", "(16, 31)"]),
    ("mask_dtype", v2_base(atten_mask=t((SQ, SKV), "float16")), TypeError, ["atten_mask", "float16"]),
    ("paged_without_kv_lengths", v2_base(key=t((4, BLOCK, KVN * D)), value=t((4, BLOCK, KVN * D)),
                                         block_table=Tensor(np.array([[0, 1], [2, 3]], np.int32)), block_size=BLOCK),
     RuntimeError, ["actual_seq_lengths_kv", "block_table"]),
    ("rope_with_shared_prefix", v2_rope(key_shared_prefix=t((1, 8, KVN * D)), value_shared_prefix=t((1, 8, KVN * D))),
     RuntimeError, ["shared prefix", "rope"]),
    ("rope_query_only", v2_base(query_rope=t((B, SQ, N * 16))), RuntimeError, ["query_rope", "key_rope"]),
    ("rope_key_only", v2_base(key_rope=t((B, SKV, KVN * 16))), RuntimeError, ["query_rope", "key_rope"]),
    ("rope_head_dims_differ", v2_rope(key_rope=t((B, SKV, KVN * 8))), RuntimeError, ["key_rope", "(2, 32, 16)"]),
    ("rope_batch", v2_rope(query_rope=t((3, SQ, N * 16))), RuntimeError, ["query_rope", "(3, 16, 128)"]),
    ("rope_dtype", v2_rope(query_rope=t((B, SQ, N * 16), "bfloat16")), TypeError, ["query_rope", "bfloat16"]),
    ("sink_shape", v2_base(learnable_sink=t((N + 1,), "float32")), RuntimeError, ["learnable_sink", "(9,)"]),
    ("sink_dtype", v2_base(learnable_sink=t((N,), "int32")), TypeError, ["learnable_sink", "int32"]),
    ("int8_kv_without_dequant_scales", v2_base(key=t((B, SKV, KVN * D), "int8"), value=t((B, SKV, KVN * D), "int8")),
     RuntimeError, ["dequant_scale_key", "dequant_scale_value"]),
    ("dequant_key_without_value", v2_base(key=t((B, SKV, KVN * D), "int8"), value=t((B, SKV, KVN * D), "int8"),
                                          dequant_scale_key=t((1,))), RuntimeError,
     ["dequant_scale_key", "dequant_scale_value"]),
    ("dequant_scales_with_float_kv", v2_base(dequant_scale_key=t((1,)), dequant_scale_value=t((1,))), RuntimeError,
     ["dequant_scale_key", "int8"]),
    ("per_token_dequant_dtype", v2_base(key=t((B, SKV, KVN * D), "int8"), value=t((B, SKV, KVN * D), "int8"),
                                        dequant_scale_key=t((B, SKV)), dequant_scale_value=t((B, SKV)),
                                        key_quant_mode=1, value_quant_mode=1), TypeError,
     ["dequant_scale_key", "float32"]),
    ("quant_scale_out_shape", v2_base(quant_scale_out=t((5,), "float32")), RuntimeError, ["quant_scale_out", "(5,)"]),
    ("quant_offset_out_without_scale", v2_base(quant_offset_out=t((1,), "float32")), RuntimeError,
     ["quant_offset_out", "quant_scale_out"]),
    ("quant_scale_out_dtype", v2_base(quant_scale_out=t((1,), "float16")), TypeError, ["quant_scale_out", "float16"]),
    ("prefix_pairing", v2_base(value_shared_prefix=t((1, 8, KVN * D))), RuntimeError,
     ["key_shared_prefix", "value_shared_prefix"]),
    ("tnd_lengths", v2_base(query=t((16, N, D)), key=t((32, KVN, D)), value=t((32, KVN, D)), input_layout="TND",
                            actual_seq_lengths=lengths([10, 16]), actual_seq_lengths_kv=lengths([20, 32, 32])),
     RuntimeError, ["actual_seq_lengths_kv", "(3,)"]),
]


@pytest.mark.parametrize("name,kwargs,error,fragments", V2_CASES, ids=[c[0] for c in V2_CASES])
def test_v2_documented_errors(mode, name, kwargs, error, fragments):
    with pytest.raises(error) as info:
        first(run(mode, ops.fused_infer_attention_score_v2, kwargs)).asnumpy()
    message = str(info.value)
    assert "For 'FusedInferAttentionScoreV2'" in message, message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in: {message}"


FIA_VALID = [
    ("prefill", base()),
    ("decode_ifa_mask", decode(atten_mask=t((B, 1, 1, SKV), "bool"), sparse_mode=3, pre_tokens=-5)),
    ("decode_prefill_mask", decode(atten_mask=t((1, SKV), "uint8"))),
    ("causal_compressed_mask", bnsd(sparse_mode=3, atten_mask=t((1, 1, 2048, 2048), "bool"))),
    ("band_without_mask", with_(base(), sparse_mode=4, pre_tokens=8, next_tokens=0)),
    ("larger_mask_and_pse", with_(base(), atten_mask=t((B, 1, SQ + 1, SKV + 2), "int8"),
                                  pse_shift=t((B, N, SQ, SKV + 2)))),
    ("bnsd_bsnd", bnsd(input_layout="BNSD_BSND")),
    ("lengths_and_left_padding", with_(base(), actual_seq_lengths=[16, 9], actual_seq_lengths_kv=lengths([32, 5]),
                                       query_padding_size=t((1,), "int64"), kv_padding_size=t((), "int64", 2))),
    ("paged", paged(atten_mask=t((B, 1, SQ, 64), "bool"))),
    ("paged_decode_bnsd_cache", with_(paged(1), query=t((B, N, 1, D)), key=t((4, KVN, BLOCK, D)),
                                      value=t((4, KVN, BLOCK, D)), input_layout="BNSD")),
    ("antiquant_per_channel", int8_kv(antiquant_scale=t((2, KVN * D), value=1), antiquant_offset=t((2, KVN * D)))),
    ("antiquant_per_token", int8_kv(1, antiquant_scale=t((2, B, SKV), "float32", 1), antiquant_mode=1)),
    ("separate_antiquant", int8_kv(key_antiquant_scale=t((KVN, D), "float32", 1),
                                   value_antiquant_scale=t((1,), value=1), value_antiquant_offset=t((1,)),
                                   key_antiquant_offset=t((KVN, D), "float32"))),
    ("post_quant", with_(base(), quant_scale2=t((1,), "float32", 1))),
    ("full_quant", full_quant()),
    ("shared_prefix", prefix(actual_shared_prefix_len=[5], atten_mask=t((SQ, SKV + 8), "bool"))),
    ("tnd", tnd(atten_mask=t((B, 1, 10, 20), "bool"))),
    ("tnd_paged", with_(tnd(), key=t((4, BLOCK, KVN * D)), value=t((4, BLOCK, KVN * D)),
                        block_table=Tensor(np.array([[0, 1], [2, 3]], np.int32)), block_size=BLOCK,
                        actual_seq_lengths_kv=[40, 20], sparse_mode=3)),
    ("lse", with_(base(), softmax_lse_flag=True)),
]


@pytest.mark.parametrize("name,kwargs", FIA_VALID, ids=[c[0] for c in FIA_VALID])
def test_fia_valid_calls_reach_the_kernel(mode, name, kwargs):
    out, lse = run(mode, ops.fused_infer_attention_score, kwargs)
    if kwargs.get("input_layout") != "BNSD_BSND":
        assert out.shape == kwargs["query"].shape
    query_int8 = str(kwargs["query"].dtype) == "Int8"
    want = "Int8" if "quant_scale2" in kwargs else "Float16" if query_int8 else str(kwargs["query"].dtype)
    assert str(out.dtype) == want and str(lse.dtype) == "Float32"
    if not kwargs.get("softmax_lse_flag"):
        assert lse.shape == (1,)


V2_VALID = [
    ("prefill", v2_base()),
    ("rope", v2_rope(sparse_mode=3, atten_mask=t((2048, 2048), "bool"))),
    ("rope_decode", with_(v2_base(1), query_rope=t((B, 1, N * 16)), key_rope=t((B, SKV, KVN * 16)))),
    ("sink_and_lse", v2_base(learnable_sink=t((N,), "bfloat16"), return_softmax_lse=True)),
    ("dequant_per_token", v2_base(1, key=t((B, SKV, KVN * D), "int8"), value=t((B, SKV, KVN * D), "int8"),
                                  dequant_scale_key=t((B, SKV), "float32", 1),
                                  dequant_scale_value=t((B, SKV), "float32", 1),
                                  key_quant_mode=1, value_quant_mode=1, actual_seq_lengths_kv=lengths([32, 7]))),
    ("quant_out", v2_base(quant_scale_out=t((N * D,), "float32", 1), quant_offset_out=t((N * D,), "float32"))),
    ("tnd_paged_rope", v2_base(query=t((16, N, D)), key=t((4, BLOCK, KVN * D)), value=t((4, BLOCK, KVN * D)),
                               query_rope=t((16, N, 16)), key_rope=t((4, BLOCK, KVN * 16)), input_layout="TND",
                               block_table=Tensor(np.array([[0, 1], [2, 3]], np.int32)), block_size=BLOCK,
                               actual_seq_lengths=lengths([10, 16]), actual_seq_lengths_kv=lengths([40, 20]))),
    ("num_key_value_heads_zero", v2_base(num_key_value_heads=0, key=t((B, SKV, N * D)), value=t((B, SKV, N * D)))),
]


@pytest.mark.parametrize("name,kwargs", V2_VALID, ids=[c[0] for c in V2_VALID])
def test_v2_valid_calls_reach_the_kernel(mode, name, kwargs):
    out, lse = run(mode, ops.fused_infer_attention_score_v2, kwargs)
    assert out.shape == kwargs["query"].shape
    assert str(out.dtype) == ("Int8" if "quant_scale_out" in kwargs else "Float16")
    assert str(lse.dtype) == "Float32"


def test_values_of_tensor_inputs_are_checked_on_the_host_in_pynative():
    """Values only known at run time are checked on the host in PyNative, before the kernel."""
    def expect(error, pattern, fn, kwargs):
        with pytest.raises(error, match=pattern):
            run("pynative", fn, kwargs)

    fia = ops.fused_infer_attention_score
    expect(ValueError, "actual_seq_lengths_kv.*33", fia, with_(base(), actual_seq_lengths_kv=lengths([33, 1])))
    expect(ValueError, "actual_seq_lengths.*17", fia, with_(base(), actual_seq_lengths=lengths([17, 1])))
    expect(ValueError, r"block_table.*9", fia, paged(block_table=Tensor(np.array([[0, 9], [2, 3]], np.int32))))
    expect(RuntimeError, "attn_mask.*longest", fia, paged(actual_seq_lengths_kv=lengths([40, 20]),
                                                          atten_mask=t((B, 1, SQ, 33), "bool")))
    expect(ValueError, "actual_seq_lengths_kv.*cumulative", fia, tnd(actual_seq_lengths_kv=lengths([20, 12])))
    expect(RuntimeError, r"attn_mask.*\(1, 9, 20\)", fia, tnd(actual_seq_lengths=lengths([10, 16]),
                                                              atten_mask=t((1, 9, 20), "bool")))
    expect(ValueError, "actual_shared_prefix_len.*9", fia, prefix(actual_shared_prefix_len=lengths([9])))
    expect(RuntimeError, "dequant_scale_key.*longest", ops.fused_infer_attention_score_v2,
           v2_base(key=t((4, BLOCK, KVN * D), "int8"), value=t((4, BLOCK, KVN * D), "int8"),
                   block_table=Tensor(np.array([[0, 1], [2, 3]], np.int32)), block_size=BLOCK,
                   actual_seq_lengths_kv=lengths([40, 20]), dequant_scale_key=t((B, 32), "float32"),
                   dequant_scale_value=t((B, 64), "float32"), key_quant_mode=1, value_quant_mode=1))


def test_unused_block_table_entries_may_be_minus_one(mode):
    out, _ = run(mode, ops.fused_infer_attention_score,
                 paged(1, block_table=Tensor(np.array([[0, 1], [2, -1]], np.int32))))
    assert out.shape == (B, 1, N * D)


@pytest.mark.parametrize("cls,attrs,error,fragment", [
    (primitives.FusedInferAttentionScore, dict(num_heads=8.0), TypeError, "num_heads"),
    (primitives.FusedInferAttentionScore, dict(num_heads=8, input_layout="SBH"), ValueError, "SBH"),
    (primitives.FusedInferAttentionScore, dict(num_heads=8, sparse_mode=8), ValueError, "sparse_mode"),
    (primitives.FusedInferAttentionScoreV2, dict(num_query_heads=8, query_quant_mode=1), ValueError,
     "query_quant_mode")])
def test_primitive_attribute_errors_at_construction(cls, attrs, error, fragment):
    with pytest.raises(error, match=fragment):
        cls(**attrs)


def test_v2_mla_style_single_kv_head_for_many_query_heads(mode):
    """v2 has no N / kvN limit: 128 query heads over one KV head with rope (fused_infer_attention_score keeps
    its documented limit of 64)."""
    kwargs = v2_base(query=t((1, 2, 128, 64)), key=t((1, 16, 1, 64)), value=t((1, 16, 1, 64)), input_layout="BSND",
                     num_query_heads=128, num_key_value_heads=1, query_rope=t((1, 2, 128, 16)),
                     key_rope=t((1, 16, 1, 16)))
    out, _ = run(mode, ops.fused_infer_attention_score_v2, kwargs)
    assert out.shape == (1, 2, 128, 64)
