"""fused_infer_attention_score_v2: PROVISIONAL infer module (kernel branch only; replaced by the real checks at
merge). Normalises the attributes and gives the output dtypes; every input check is left to the C++ kernel."""
from typing import Any, Dict, Optional, Tuple

from ms_attention import opdef
from ms_attention.infer import geometry
from ms_attention.infer.common import Checker

_OP = opdef.get("fused_infer_attention_score_v2")
_chk = Checker(_OP.class_name)
VALUE_INPUTS = ()


def check_attrs(**kwargs) -> Dict[str, Any]:
    attrs = dict(kwargs)
    attrs["input_layout"] = geometry.layout_attr(_chk, kwargs["input_layout"],
                                                 ("BSH", "BNSD", "BSND", "TND", "BNSD_BSND"))
    attrs["num_query_heads"], attrs["num_key_value_heads"] = geometry.head_attrs(
        _chk, kwargs["num_query_heads"], kwargs["num_key_value_heads"], None)
    attrs["return_softmax_lse"] = bool(kwargs["return_softmax_lse"])
    return attrs


def output_dtypes(attrs: Dict[str, Any], dtypes: Dict[str, Optional[str]]) -> Tuple[str, str]:
    if dtypes["quant_scale_out"] is not None:
        return ("int8", "float32")
    return (dtypes["query"], "float32")


def infer(metas, attrs, static) -> None:
    return None


def check_values(values, metas, attrs) -> None:
    return None
