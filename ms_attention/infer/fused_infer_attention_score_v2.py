"""fused_infer_attention_score_v2 (torch_npu's argument names): attribute checks, input validation and output
inference, through fused_infer_attention_score's checks (infer/fused_attention.py) with v2's names mapped onto
them: num_query_heads, softmax_scale, return_softmax_lse, dequant_scale_key / _value (separate antiquant),
quant_scale_out / quant_offset_out (post-quant), plus query_rope / key_rope and learnable_sink."""
from typing import Any, Dict, Optional, Tuple

import numpy as np

from ms_attention import opdef
from ms_attention.infer import fused_attention, geometry, paged
from ms_attention.infer.common import Checker, TensorMeta

_OP = opdef.get("fused_infer_attention_score_v2")
PRIM_NAME = _OP.class_name
LAYOUTS = ("BSH", "BNSD", "BSND", "TND", "BNSD_BSND")
VALUE_INPUTS = ("actual_seq_lengths", "actual_seq_lengths_kv", "actual_shared_prefix_len", "block_table")
# torch_npu's inputs for what the CPU kernel does not implement (a quantized query, fp8 rope keys)
UNSUPPORTED_INPUTS = ("dequant_scale_query", "dequant_scale_key_rope")
# dtype overrides that describe float8 / hifloat8 data held in int8 tensors: not implemented on CPU
DTYPE_ATTRS = ("query_dtype", "key_dtype", "value_dtype", "query_rope_dtype", "key_rope_dtype",
               "key_shared_prefix_dtype", "value_shared_prefix_dtype", "dequant_scale_query_dtype",
               "dequant_scale_key_dtype", "dequant_scale_value_dtype", "dequant_scale_key_rope_dtype", "out_dtype")

_chk = Checker(PRIM_NAME)
_NAMES = {a.name: a.name for a in _OP.tensor_inputs if a.name not in UNSUPPORTED_INPUTS}
_RENAMED = dict(attn_mask="atten_mask", key_antiquant_scale="dequant_scale_key",
                key_antiquant_offset="dequant_offset_key", value_antiquant_scale="dequant_scale_value",
                value_antiquant_offset="dequant_offset_value", quant_scale2="quant_scale_out",
                quant_offset2="quant_offset_out")
for _canonical, _name in _RENAMED.items():
    del _NAMES[_name]
    _NAMES[_canonical] = _name
RULES = fused_attention.Rules(chk=_chk, names=_NAMES, query_types=("float16", "bfloat16"),
                              post_quant_name=("quant_scale_out", "quant_offset_out"))


def check_attrs(num_query_heads: Any, num_key_value_heads: Any, softmax_scale: Any, pre_tokens: Any,
                next_tokens: Any, input_layout: Any, sparse_mode: Any, block_size: Any, query_quant_mode: Any,
                key_quant_mode: Any, value_quant_mode: Any, inner_precise: Any, return_softmax_lse: Any,
                **dtype_attrs: Any) -> Dict[str, Any]:
    """The primitive's __init__ checks; returns the normalised attributes (num_key_value_heads 0 becomes
    num_query_heads, layout upper case)."""
    softmax_scale = _chk.float_attr("softmax_scale", softmax_scale)
    pre_tokens = _chk.int_attr("pre_tokens", pre_tokens)
    next_tokens = _chk.int_attr("next_tokens", next_tokens)
    layout = geometry.layout_attr(_chk, input_layout, LAYOUTS)
    # no group limit: MLA-style calls have one KV head for up to 128 query heads
    num_heads, kv_heads = geometry.head_attrs(_chk, num_query_heads, num_key_value_heads, None,
                                              heads_name="num_query_heads")
    sparse_mode = fused_attention.sparse_mode_attr(_chk, sparse_mode, "value_error")
    inner_precise = _chk.choice_attr("inner_precise", inner_precise, (0, 1, 2, 3))
    block_size = paged.block_size_attr(_chk, block_size)
    query_quant_mode = _chk.int_attr("query_quant_mode", query_quant_mode)
    if query_quant_mode != 0:
        raise _chk.value_error(f"the 'query_quant_mode' {query_quant_mode} (a quantized query) is not supported, "
                               f"only 0.")
    key_quant_mode = _chk.choice_attr("key_quant_mode", key_quant_mode, (0, 1))
    value_quant_mode = _chk.choice_attr("value_quant_mode", value_quant_mode, (0, 1))
    return_softmax_lse = _chk.bool_attr("return_softmax_lse", return_softmax_lse)
    for name in DTYPE_ATTRS:
        value = dtype_attrs[name]
        if value is not None:
            _chk.int_attr(name, value)
            raise _chk.value_error(f"the '{name}' {value} is not supported, only None: the dtype overrides describe "
                                   f"float8 data held in int8 tensors, which the CPU kernel does not implement.")
    return dict(num_query_heads=num_heads, num_key_value_heads=kv_heads, softmax_scale=softmax_scale,
                pre_tokens=pre_tokens, next_tokens=next_tokens, input_layout=layout, sparse_mode=sparse_mode,
                block_size=block_size, query_quant_mode=query_quant_mode, key_quant_mode=key_quant_mode,
                value_quant_mode=value_quant_mode, inner_precise=inner_precise,
                return_softmax_lse=return_softmax_lse, **{name: None for name in DTYPE_ATTRS})


def output_dtypes(attrs: Dict[str, Any], dtypes: Dict[str, Optional[str]]) -> Tuple[str, str]:
    """(attention_out, softmax_lse): int8 with quant_scale_out, else the query dtype; the lse is float32."""
    return fused_attention.output_dtypes(dtypes["query"], dtypes["quant_scale_out"] is not None)


def _shared_attrs(attrs: Dict[str, Any]) -> Dict[str, Any]:
    """v2's attributes under the names of the shared checks."""
    return dict(attrs, num_heads=attrs["num_query_heads"], key_antiquant_mode=attrs["key_quant_mode"],
                value_antiquant_mode=attrs["value_quant_mode"])


def infer(m: Dict[str, Optional[TensorMeta]], attrs: Dict[str, Any],
          static: Dict[str, Optional[Tuple[Any, ...]]]) -> None:
    for name in UNSUPPORTED_INPUTS:
        if m.get(name) is not None:
            raise _chk.value_error(f"the '{name}' is not supported, must be None, but got a Tensor of shape "
                                   f"{m[name].shape}.")
    fused_attention.infer(RULES, m, _shared_attrs(attrs), static)


def check_values(values: Dict[str, Optional[np.ndarray]], m: Dict[str, Optional[TensorMeta]],
                 attrs: Dict[str, Any]) -> None:
    fused_attention.check_values(RULES, values, m, _shared_attrs(attrs))
