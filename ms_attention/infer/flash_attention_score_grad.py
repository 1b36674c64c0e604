"""flash_attention_score_grad (internal: the backward both training operators' bprops call): attribute checks,
input validation and output dtypes. Its inputs are the forward's, already checked by the forward op, so the same
shared checks (infer/training_attention.py) run again only on what a compile needs; the saved forward outputs and
dy must have the shapes the forward gave them. Tensor lengths are not copied to the host again (no
VALUE_INPUTS): the kernel checks them."""
from typing import Any, Dict, Optional, Tuple

import numpy as np

from ms_attention import opdef
from ms_attention.infer import speed_fusion_attention, training_attention
from ms_attention.infer.common import Checker, TensorMeta, same_shape

PRIM_NAME = opdef.get("flash_attention_score_grad").class_name
VALUE_INPUTS = ()

_chk = Checker(PRIM_NAME)
RULES = training_attention.Rules(
    chk=_chk,
    names={name: name for name in ("query", "key", "value", "pse", "drop_mask", "attn_mask", "prefix",
                                   "actual_seq_qlen", "actual_seq_kvlen", "q_start_idx", "kv_start_idx")},
    query_types=speed_fusion_attention.RULES.query_types, head_error="runtime_error", sparse_error="runtime_error")


def check_attrs(head_num: Any, keep_prob: Any, scale_value: Any, pre_tokens: Any, next_tokens: Any,
                input_layout: Any, sparse_mode: Any, pse_type: Any) -> Dict[str, Any]:
    pse_type = _chk.choice_attr("pse_type", pse_type, speed_fusion_attention.PSE_TYPES)
    attrs = training_attention.check_attrs(RULES, head_num, keep_prob, scale_value, "scale_value", pre_tokens,
                                           next_tokens, 0, input_layout, sparse_mode)
    del attrs["inner_precise"]
    attrs["pse_type"] = pse_type
    return attrs


def output_dtypes(attrs: Dict[str, Any], dtypes: Dict[str, Optional[str]]) -> Tuple[str, ...]:
    """dq, dk, dv: the dtypes of query, key, value; dpse: that of pse (the query's when pse is absent)."""
    return dtypes["query"], dtypes["key"], dtypes["value"], dtypes["pse"] or dtypes["query"]


def infer(m: Dict[str, Optional[TensorMeta]], attrs: Dict[str, Any],
          static: Dict[str, Optional[Tuple[Any, ...]]]) -> None:
    training_attention.infer(RULES, m, attrs, static)
    q = m["query"]
    for name in ("dy", "attention_in"):
        x = m.get(name)
        if x is None:
            raise _chk.type_error(f"the '{name}' must be a Tensor, but got None.")
        if x.dtype != q.dtype or (x.rank_known and q.rank_known and not same_shape(x.shape, q.shape)):
            raise _chk.runtime_error(f"the '{name}' must have the shape and dtype of 'query' ({q.shape}, {q.dtype}), "
                                     f"but got {x.shape}, {x.dtype}.")
    for name in ("softmax_max", "softmax_sum"):
        x = m.get(name)
        if x is None:
            raise _chk.type_error(f"the '{name}' must be a Tensor, but got None.")
        if x.dtype != "float32":
            raise _chk.type_error(f"the dtype of '{name}' must be float32, but got {x.dtype}.")


def check_values(values: Dict[str, Optional[np.ndarray]], m: Dict[str, Optional[TensorMeta]],
                 attrs: Dict[str, Any]) -> None:
    training_attention.check_values(RULES, values, m, attrs)
