"""fused_infer_attention_score: PROVISIONAL infer module (kernel branch only; replaced by the real checks at
merge). Normalises the attributes and gives the output dtypes; every input check is left to the C++ kernel."""
from typing import Any, Dict, Optional, Tuple

from ms_attention import opdef
from ms_attention.infer import geometry
from ms_attention.infer.common import Checker

_OP = opdef.get("fused_infer_attention_score")
_chk = Checker(_OP.class_name)
VALUE_INPUTS = ()


def check_attrs(num_heads, scale_value, pre_tokens, next_tokens, input_layout, num_key_value_heads, sparse_mode,
                inner_precise, block_size, antiquant_mode, softmax_lse_flag, key_antiquant_mode,
                value_antiquant_mode) -> Dict[str, Any]:
    layout = geometry.layout_attr(_chk, input_layout, ("BSH", "BNSD", "BSND", "TND", "BNSD_BSND"))
    num_heads, kv_heads = geometry.head_attrs(_chk, num_heads, num_key_value_heads, None)
    return dict(num_heads=num_heads, scale_value=float(scale_value), pre_tokens=int(pre_tokens),
                next_tokens=int(next_tokens), input_layout=layout, num_key_value_heads=kv_heads,
                sparse_mode=int(sparse_mode), inner_precise=int(inner_precise), block_size=int(block_size),
                antiquant_mode=int(antiquant_mode), softmax_lse_flag=bool(softmax_lse_flag),
                key_antiquant_mode=int(key_antiquant_mode), value_antiquant_mode=int(value_antiquant_mode))


def output_dtypes(attrs: Dict[str, Any], dtypes: Dict[str, Optional[str]]) -> Tuple[str, str]:
    if dtypes["quant_scale2"] is not None:
        return ("int8", "float32")
    return ("float16" if dtypes["query"] == "int8" else dtypes["query"], "float32")


def infer(metas, attrs, static) -> None:
    return None


def check_values(values, metas, attrs) -> None:
    return None
