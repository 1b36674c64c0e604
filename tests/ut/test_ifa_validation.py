"""Every documented error of incre_flash_attention (seed Raises list + SPEC.md §10), in PyNative, Graph and jit:
the exception type must match and the message must name the argument and the value."""
import numpy as np
import pytest
from mindspore import Tensor

from ifa_cases import Case, run


def base():
    case = Case(b=2, n=8, kvn=2, s=32, d=32, layout="BSH")
    return case.kwargs(), case


def f32(shape):
    return Tensor(np.ones(shape, np.float32))


def t(shape, dtype):
    from ifa_cases import to_tensor
    return to_tensor(np.ones(shape), dtype)


def paged_kwargs(block_size=32, table=None, lengths=(32, 20)):
    kwargs, _ = base()
    kwargs["key"] = t((4, block_size, 64), "float16")
    kwargs["value"] = t((4, block_size, 64), "float16")
    kwargs["block_table"] = Tensor(np.array(table if table is not None else [[0, 1], [2, 3]], np.int32))
    kwargs["block_size"] = block_size
    kwargs["actual_seq_lengths"] = list(lengths)
    return kwargs


# (id, how to break the valid call, exception, fragments the message must contain)
CASES = [
    ("query_dtype", lambda k: k.update(query=t((2, 1, 256), "float32")), TypeError, ["query", "float32"]),
    ("key_value_dtype_differ", lambda k: k.update(value=t((2, 32, 64), "bfloat16")), TypeError,
     ["key", "value", "bfloat16"]),
    ("mask_dtype", lambda k: k.update(attn_mask=t((2, 32), "float16")), TypeError, ["attn_mask", "float16"]),
    ("pse_dtype", lambda k: k.update(pse_shift=t((1, 8, 1, 32), "float32")), TypeError, ["pse_shift", "float32"]),
    ("scale_value_type", lambda k: k.update(scale_value="0.1"), TypeError, ["scale_value", "0.1"]),
    ("input_layout_type", lambda k: k.update(input_layout=1), TypeError, ["input_layout", "1"]),
    ("num_heads_type", lambda k: k.update(num_heads=8.0), TypeError, ["num_heads", "8.0"]),
    ("num_kv_heads_type", lambda k: k.update(num_key_value_heads="2"), TypeError, ["num_key_value_heads", "'2'"]),
    ("inner_precise_type", lambda k: k.update(inner_precise=1.0), TypeError, ["inner_precise", "1.0"]),
    ("quant_scale1_dtype", lambda k: k.update(quant_scale1=t((1,), "float16")), TypeError,
     ["quant_scale1", "float16"]),
    ("quant_scale2_dtype", lambda k: k.update(quant_scale2=t((1,), "float16")), TypeError,
     ["quant_scale2", "float16"]),
    ("quant_offset2_dtype", lambda k: k.update(quant_scale2=f32((1,)), quant_offset2=t((1,), "int32")),
     TypeError, ["quant_offset2", "int32"]),
    ("seq_lengths_size", lambda k: k.update(actual_seq_lengths=[1, 2, 3]), ValueError,
     ["actual_seq_lengths", "3"]),
    ("seq_lengths_tensor_size", lambda k: k.update(actual_seq_lengths=Tensor(np.array([1, 2, 3], np.int64))),
     ValueError, ["actual_seq_lengths", "3"]),
    ("input_layout_value", lambda k: k.update(input_layout="TND"), ValueError, ["input_layout", "TND"]),
    ("num_heads_q_h", lambda k: k.update(num_heads=3, num_key_value_heads=1), ValueError,
     ["num_heads", "3", "256"]),
    ("num_heads_kv_heads", lambda k: k.update(num_key_value_heads=3), ValueError,
     ["num_heads", "num_key_value_heads", "8", "3"]),
    ("num_heads_zero", lambda k: k.update(num_heads=0), RuntimeError, ["num_heads", "0"]),
    ("num_heads_negative", lambda k: k.update(num_heads=-8), RuntimeError, ["num_heads", "-8"]),
    ("mask_shape_s", lambda k: k.update(attn_mask=t((2, 33), "bool")), RuntimeError, ["attn_mask", "(2, 33)"]),
    ("mask_shape_mid", lambda k: k.update(attn_mask=t((2, 2, 32), "bool")), RuntimeError,
     ["attn_mask", "(2, 2, 32)"]),
    ("mask_shape_batch", lambda k: k.update(attn_mask=t((1, 32), "bool")), RuntimeError, ["attn_mask", "(1, 32)"]),
    # reserved inputs: well-typed but not supported
    ("quant_scale1_reserved", lambda k: k.update(quant_scale1=f32((1,))), RuntimeError,
     ["quant_scale1", "not supported"]),
    ("dequant_scale1_reserved", lambda k: k.update(dequant_scale1=f32((1,))), RuntimeError, ["dequant_scale1"]),
    ("dequant_scale2_dtype", lambda k: k.update(dequant_scale2=t((1,), "float16")), TypeError,
     ["dequant_scale2", "float16"]),
    # SPEC §10 beyond the seed's list
    ("seq_length_above_s", lambda k: k.update(actual_seq_lengths=[33, 1]), ValueError,
     ["actual_seq_lengths", "33"]),
    ("seq_length_negative", lambda k: k.update(actual_seq_lengths=[-1]), ValueError, ["actual_seq_lengths", "-1"]),
    ("seq_length_not_int", lambda k: k.update(actual_seq_lengths=[1.5, 2]), TypeError,
     ["actual_seq_lengths", "1.5"]),
    ("query_seq_not_1", lambda k: k.update(query=t((2, 2, 256), "float16")), ValueError, ["query", "1"]),
    ("query_rank", lambda k: k.update(query=t((2, 1, 8, 32), "float16")), ValueError, ["query", "3-D"]),
    ("key_shape", lambda k: k.update(key=t((2, 32, 32), "float16"), value=t((2, 32, 32), "float16")),
     RuntimeError, ["key", "(2, 32, 32)"]),
    ("key_value_shape_differ", lambda k: k.update(value=t((2, 31, 64), "float16")), RuntimeError,
     ["key", "value", "(2, 31, 64)"]),
    ("key_list_of_two", lambda k: k.update(key=[k["key"], k["key"]]), ValueError, ["key", "2"]),
    ("group_above_64", lambda k: k.update(num_heads=128, num_key_value_heads=1, query=t((2, 1, 4096), "float16")),
     ValueError, ["num_heads", "64"]),
    ("inner_precise_value", lambda k: k.update(inner_precise=2), ValueError, ["inner_precise", "2"]),
    ("int8_kv_without_scale", lambda k: k.update(key=t((2, 32, 64), "int8"), value=t((2, 32, 64), "int8")),
     RuntimeError, ["antiquant_scale"]),
    ("antiquant_scale_dtype", lambda k: k.update(key=t((2, 32, 64), "int8"), value=t((2, 32, 64), "int8"),
                                                 antiquant_scale=f32((2,))), TypeError,
     ["antiquant_scale", "float32"]),
    ("antiquant_scale_shape", lambda k: k.update(key=t((2, 32, 64), "int8"), value=t((2, 32, 64), "int8"),
                                                 antiquant_scale=t((2, 63), "float16")), RuntimeError,
     ["antiquant_scale", "(2, 63)"]),
    ("antiquant_with_float_kv", lambda k: k.update(antiquant_scale=t((2,), "float16")), RuntimeError,
     ["antiquant_scale", "int8"]),
    ("pse_shape", lambda k: k.update(pse_shift=t((2, 4, 1, 32), "float16")), RuntimeError,
     ["pse_shift", "(2, 4, 1, 32)"]),
    ("pse_dtype_not_query", lambda k: k.update(pse_shift=t((1, 8, 1, 32), "bfloat16")), TypeError,
     ["pse_shift", "bfloat16"]),
    ("quant_scale2_shape", lambda k: k.update(quant_scale2=f32((3,))), RuntimeError, ["quant_scale2", "(3,)"]),
    ("kv_padding_shape", lambda k: k.update(kv_padding_size=Tensor(np.zeros((2,), np.int64)),
                                            actual_seq_lengths=[3, 4]), ValueError, ["kv_padding_size", "(2,)"]),
    ("block_table_dtype", lambda k: k.update(paged_kwargs(), block_table=Tensor(np.zeros((2, 2), np.int64))),
     TypeError, ["block_table", "int64"]),
    ("paged_without_lengths", lambda k: k.update(paged_kwargs(), actual_seq_lengths=None), ValueError,
     ["actual_seq_lengths", "block_table"]),
    ("paged_block_size_align", lambda k: k.update(paged_kwargs(block_size=24)), ValueError, ["block_size", "24"]),
    ("paged_block_size_mismatch", lambda k: k.update(paged_kwargs(), block_size=64), RuntimeError,
     ["block_size", "64"]),
    ("paged_table_rows", lambda k: k.update(paged_kwargs(table=[[0, 1]])), RuntimeError,
     ["block_table", "(1, 2)"]),
    ("paged_with_left_padding", lambda k: k.update(paged_kwargs(), kv_padding_size=Tensor(np.array(1, np.int64))),
     RuntimeError, ["kv_padding_size", "page attention"]),
    ("paged_length_above_table", lambda k: k.update(paged_kwargs(lengths=(65, 1))), ValueError,
     ["actual_seq_lengths", "65"]),
    ("paged_per_channel_post_quant", lambda k: k.update(paged_kwargs(), quant_scale2=f32((256,))), RuntimeError,
     ["quant_scale2", "page attention"]),
]


@pytest.mark.parametrize("name,breaker,error,fragments", CASES, ids=[c[0] for c in CASES])
def test_documented_errors(mode, name, breaker, error, fragments):
    kwargs, _ = base()
    breaker(kwargs)
    with pytest.raises(error) as info:
        out = run(mode, kwargs, key_as_list=False)
        out.asnumpy()
    message = str(info.value)
    assert "IncreFlashAttention" in message, message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in: {message}"


def test_value_errors_from_tensor_inputs_pynative():
    """Values only known at run time are checked on the host in PyNative, before the kernel."""
    kwargs = paged_kwargs(table=[[0, 9], [2, 3]], lengths=(40, 20))
    with pytest.raises(ValueError, match="block_table.*9"):
        run("pynative", kwargs, key_as_list=False)
    kwargs, _ = base()
    kwargs["actual_seq_lengths"] = Tensor(np.array([40, 1], np.int64))
    with pytest.raises(ValueError, match="actual_seq_lengths.*40"):
        run("pynative", kwargs, key_as_list=False)


def test_unused_block_table_entries_may_be_minus_one(mode):
    kwargs = paged_kwargs(table=[[0, 1], [2, -1]], lengths=(40, 20))
    out = run(mode, kwargs, key_as_list=False)
    assert out.shape == (2, 1, 256)
