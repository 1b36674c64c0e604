"""flash_attention_score: attribute checks, input validation, output dtypes and the gradient (bprop), through
the checks shared with speed_fusion_attention (infer/training_attention.py). The exception types follow the
Raises list of MindSpore 2.10's flash_attention_score: TypeError for dtypes, attribute types and non-Tensor
inputs, ValueError for input_layout, RuntimeError for head_num, the attn_mask shape, sparse_mode and D."""
from typing import Any, Dict, Optional, Tuple

import numpy as np
from mindspore import ops as ms_ops

from ms_attention import opdef
from ms_attention.infer import training_attention
from ms_attention.infer.common import Checker, TensorMeta

PRIM_NAME = opdef.get("flash_attention_score").class_name
VALUE_INPUTS = training_attention.VALUE_INPUTS
FAS_PSE_TYPE = 1        # real_shift is added before the scale

_chk = Checker(PRIM_NAME)
RULES = training_attention.Rules(
    chk=_chk,
    names={name: name for name in ("query", "key", "value", "drop_mask", "padding_mask", "attn_mask", "prefix",
                                   "actual_seq_qlen", "actual_seq_kvlen")} | {"pse": "real_shift"},
    query_types=("float16", "bfloat16"), head_error="runtime_error", sparse_error="runtime_error")


def check_attrs(head_num: Any, keep_prob: Any, scale_value: Any, pre_tokens: Any, next_tokens: Any,
                inner_precise: Any, input_layout: Any, sparse_mode: Any) -> Dict[str, Any]:
    """The primitive's __init__ checks; returns the normalised attributes."""
    return training_attention.check_attrs(RULES, head_num, keep_prob, scale_value, "scale_value", pre_tokens,
                                          next_tokens, inner_precise, input_layout, sparse_mode)


def output_dtypes(attrs: Dict[str, Any], dtypes: Dict[str, Optional[str]]) -> Tuple[str, ...]:
    """softmax_max, softmax_sum: float32; softmax_out and attention_out: the query dtype."""
    return "float32", "float32", dtypes["query"], dtypes["query"]


def infer(m: Dict[str, Optional[TensorMeta]], attrs: Dict[str, Any],
          static: Dict[str, Optional[Tuple[Any, ...]]]) -> None:
    training_attention.infer(RULES, m, attrs, static)


def check_values(values: Dict[str, Optional[np.ndarray]], m: Dict[str, Optional[TensorMeta]],
                 attrs: Dict[str, Any]) -> None:
    training_attention.check_values(RULES, values, m, attrs)


def bprop(attrs: Dict[str, Any], absent: Dict[str, bool]):
    """The kernel's gradient: dq, dk, dv and d(real_shift) from flash_attention_score_grad (fed the forward's
    inputs and outputs: softmax_max, softmax_sum, attention_out), zeros for every other kernel input. Absent
    optional inputs reach the kernel as shape-(0,) placeholders; the grad op gets None for them."""
    from ms_attention import ops     # late: ops imports the primitives built from this module
    head_num, keep_prob, scale_value = attrs["head_num"], attrs["keep_prob"], attrs["scale_value"]
    pre_tokens, next_tokens = attrs["pre_tokens"], attrs["next_tokens"]
    input_layout, sparse_mode = attrs["input_layout"], attrs["sparse_mode"]
    no_pse, no_drop_mask, no_attn_mask = absent["real_shift"], absent["drop_mask"], absent["attn_mask"]
    no_prefix, no_qlen, no_kvlen = absent["prefix"], absent["actual_seq_qlen"], absent["actual_seq_kvlen"]

    def flash_attention_score_bprop(query, key, value, real_shift, drop_mask, padding_mask, attn_mask, prefix,
                                    actual_seq_qlen, actual_seq_kvlen, seed, offset, attr_vector, out, dout):
        softmax_max, softmax_sum, _, attention_out = out
        dq, dk, dv, dpse = ops._flash_attention_score_grad(  # pylint: disable=protected-access
            query, key, value, dout[3], None if no_pse else real_shift, None if no_drop_mask else drop_mask,
            None if no_attn_mask else attn_mask, softmax_max, softmax_sum, attention_out,
            None if no_prefix else prefix, None if no_qlen else actual_seq_qlen,
            None if no_kvlen else actual_seq_kvlen, None, None, seed, offset, head_num, keep_prob, scale_value,
            pre_tokens, next_tokens, input_layout, sparse_mode, FAS_PSE_TYPE)
        return (dq, dk, dv, ms_ops.zeros_like(real_shift) if no_pse else dpse, ms_ops.zeros_like(drop_mask),
                ms_ops.zeros_like(padding_mask), ms_ops.zeros_like(attn_mask), ms_ops.zeros_like(prefix),
                ms_ops.zeros_like(actual_seq_qlen), ms_ops.zeros_like(actual_seq_kvlen), ms_ops.zeros_like(seed),
                ms_ops.zeros_like(offset), ms_ops.zeros_like(attr_vector))
    return flash_attention_score_bprop
