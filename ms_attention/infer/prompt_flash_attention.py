"""prompt_flash_attention: attribute checks, input validation and output inference, through the checks shared
with fused_infer_attention_score (infer/fused_attention.py). The exception types follow the Raises list of
MindSpore's prompt_flash_attention: RuntimeError for the head counts, the mask shape and sparse_mode."""
from typing import Any, Dict, Optional, Tuple

import numpy as np

from ms_attention import opdef
from ms_attention.infer import fused_attention, geometry
from ms_attention.infer.common import Checker, TensorMeta

PRIM_NAME = opdef.get("prompt_flash_attention").class_name
LAYOUTS = ("BSH", "BNSD", "BSND", "TND")
VALUE_INPUTS = ("actual_seq_lengths", "actual_seq_lengths_kv")

_chk = Checker(PRIM_NAME)
_NAMES = {name: name for name in ("query", "key", "value", "attn_mask", "actual_seq_lengths",
                                  "actual_seq_lengths_kv", "pse_shift", "quant_scale1", "quant_scale2",
                                  "quant_offset2")}
_NAMES.update(dequant_scale1="deq_scale1", dequant_scale2="deq_scale2")
RULES = fused_attention.Rules(chk=_chk, names=_NAMES, query_types=("int8", "float16", "bfloat16"),
                              mask_types=fused_attention.MASK_TYPES + ("float16",), decode_branch=False,
                              batched_compressed_mask=True, prompt_limits=True)


def check_attrs(num_heads: Any, scale_value: Any, pre_tokens: Any, next_tokens: Any, input_layout: Any,
                num_key_value_heads: Any, sparse_mode: Any, inner_precise: Any) -> Dict[str, Any]:
    """The primitive's __init__ checks; returns the normalised attributes (kvN = N when 0, layout upper case)."""
    scale_value = _chk.float_attr("scale_value", scale_value)
    pre_tokens = _chk.int_attr("pre_tokens", pre_tokens)
    next_tokens = _chk.int_attr("next_tokens", next_tokens)
    layout = geometry.layout_attr(_chk, input_layout, LAYOUTS)
    num_heads, kv_heads = geometry.head_attrs(_chk, num_heads, num_key_value_heads, fused_attention.MAX_GROUP,
                                              attr_error="runtime_error")
    sparse_mode = fused_attention.sparse_mode_attr(_chk, sparse_mode, "runtime_error")
    inner_precise = _chk.choice_attr("inner_precise", inner_precise, (0, 1))
    return dict(num_heads=num_heads, scale_value=scale_value, pre_tokens=pre_tokens, next_tokens=next_tokens,
                input_layout=layout, num_key_value_heads=kv_heads, sparse_mode=sparse_mode,
                inner_precise=inner_precise)


def output_dtypes(attrs: Dict[str, Any], dtypes: Dict[str, Optional[str]]) -> Tuple[str]:
    """attention_out: int8 with quant_scale2; float16 for an int8 query without it; else the query dtype."""
    return fused_attention.output_dtypes(dtypes["query"], dtypes["quant_scale2"] is not None)[:1]


def infer(m: Dict[str, Optional[TensorMeta]], attrs: Dict[str, Any],
          static: Dict[str, Optional[Tuple[Any, ...]]]) -> None:
    fused_attention.infer(RULES, m, attrs, static)


def check_values(values: Dict[str, Optional[np.ndarray]], m: Dict[str, Optional[TensorMeta]],
                 attrs: Dict[str, Any]) -> None:
    fused_attention.check_values(RULES, values, m, attrs)
