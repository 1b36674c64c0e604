"""prompt_flash_attention: PROVISIONAL infer module (kernel branch only; replaced by the real checks at merge).
Normalises the attributes and gives the output dtypes; every input check is left to the C++ kernel."""
from typing import Any, Dict, Optional, Tuple

from ms_attention import opdef
from ms_attention.infer import geometry
from ms_attention.infer.common import Checker

_OP = opdef.get("prompt_flash_attention")
_chk = Checker(_OP.class_name)
VALUE_INPUTS = ()


def check_attrs(num_heads, scale_value, pre_tokens, next_tokens, input_layout, num_key_value_heads, sparse_mode,
                inner_precise) -> Dict[str, Any]:
    layout = geometry.layout_attr(_chk, input_layout, ("BSH", "BNSD", "BSND", "TND"))
    num_heads, kv_heads = geometry.head_attrs(_chk, num_heads, num_key_value_heads, None)
    return dict(num_heads=num_heads, scale_value=float(scale_value), pre_tokens=int(pre_tokens),
                next_tokens=int(next_tokens), input_layout=layout, num_key_value_heads=kv_heads,
                sparse_mode=int(sparse_mode), inner_precise=int(inner_precise))


def output_dtypes(attrs: Dict[str, Any], dtypes: Dict[str, Optional[str]]) -> Tuple[str]:
    if dtypes["quant_scale2"] is not None:
        return ("int8",)
    return ("float16" if dtypes["query"] == "int8" else dtypes["query"],)


def infer(metas, attrs, static) -> None:
    return None


def check_values(values, metas, attrs) -> None:
    return None
