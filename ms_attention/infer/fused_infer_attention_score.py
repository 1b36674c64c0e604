"""fused_infer_attention_score: attribute checks, input validation and output inference, through the checks
shared with prompt_flash_attention (infer/fused_attention.py). A query of length 1 (not TND) takes the
incremental branch, checked as incre_flash_attention."""
from typing import Any, Dict, Optional, Tuple

import numpy as np

from ms_attention import opdef
from ms_attention.infer import fused_attention, geometry, paged
from ms_attention.infer.common import Checker, TensorMeta

_OP = opdef.get("fused_infer_attention_score")
PRIM_NAME = _OP.class_name
LAYOUTS = ("BSH", "BNSD", "BSND", "TND", "BNSD_BSND")
VALUE_INPUTS = ("actual_seq_lengths", "actual_seq_lengths_kv", "actual_shared_prefix_len", "block_table")

_chk = Checker(PRIM_NAME)
RULES = fused_attention.Rules(chk=_chk, names={a.name: a.name for a in _OP.tensor_inputs},
                              query_types=("int8", "float16", "bfloat16"))


def check_attrs(num_heads: Any, scale_value: Any, pre_tokens: Any, next_tokens: Any, input_layout: Any,
                num_key_value_heads: Any, sparse_mode: Any, inner_precise: Any, block_size: Any,
                antiquant_mode: Any, softmax_lse_flag: Any, key_antiquant_mode: Any,
                value_antiquant_mode: Any) -> Dict[str, Any]:
    """The primitive's __init__ checks; returns the normalised attributes (kvN = N when 0, layout upper case)."""
    scale_value = _chk.float_attr("scale_value", scale_value)
    pre_tokens = _chk.int_attr("pre_tokens", pre_tokens)
    next_tokens = _chk.int_attr("next_tokens", next_tokens)
    layout = geometry.layout_attr(_chk, input_layout, LAYOUTS)
    num_heads, kv_heads = geometry.head_attrs(_chk, num_heads, num_key_value_heads, fused_attention.MAX_GROUP)
    sparse_mode = fused_attention.sparse_mode_attr(_chk, sparse_mode, "value_error")
    inner_precise = _chk.choice_attr("inner_precise", inner_precise, (0, 1, 2, 3))
    block_size = paged.block_size_attr(_chk, block_size)
    modes = {name: _chk.choice_attr(name, value, (0, 1)) for name, value in (
        ("antiquant_mode", antiquant_mode), ("key_antiquant_mode", key_antiquant_mode),
        ("value_antiquant_mode", value_antiquant_mode))}
    softmax_lse_flag = _chk.bool_attr("softmax_lse_flag", softmax_lse_flag)
    return dict(num_heads=num_heads, scale_value=scale_value, pre_tokens=pre_tokens, next_tokens=next_tokens,
                input_layout=layout, num_key_value_heads=kv_heads, sparse_mode=sparse_mode,
                inner_precise=inner_precise, block_size=block_size, softmax_lse_flag=softmax_lse_flag, **modes)


def output_dtypes(attrs: Dict[str, Any], dtypes: Dict[str, Optional[str]]) -> Tuple[str, str]:
    """(attention_out, softmax_lse): int8 with quant_scale2, float16 for an int8 query without it, else the
    query dtype; the lse is float32."""
    return fused_attention.output_dtypes(dtypes["query"], dtypes["quant_scale2"] is not None)


def infer(m: Dict[str, Optional[TensorMeta]], attrs: Dict[str, Any],
          static: Dict[str, Optional[Tuple[Any, ...]]]) -> None:
    fused_attention.infer(RULES, m, attrs, static)


def check_values(values: Dict[str, Optional[np.ndarray]], m: Dict[str, Optional[TensorMeta]],
                 attrs: Dict[str, Any]) -> None:
    fused_attention.check_values(RULES, values, m, attrs)
