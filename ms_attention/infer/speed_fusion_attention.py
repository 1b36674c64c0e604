"""speed_fusion_attention: attribute checks, input validation, output dtypes and the gradient (bprop), through
the checks shared with flash_attention_score (infer/training_attention.py). The exception types follow the
Raises list of MindSpore 2.10's speed_fusion_attention: TypeError for dtypes, attribute types and non-Tensor
inputs, ValueError for input_layout, sparse_mode and pse_type (and, as a bad value, head_num <= 0)."""
from typing import Any, Dict, Optional, Tuple

import numpy as np
from mindspore import ops as ms_ops

from ms_attention import opdef
from ms_attention.infer import training_attention
from ms_attention.infer.common import Checker, TensorMeta

PRIM_NAME = opdef.get("speed_fusion_attention").class_name
VALUE_INPUTS = training_attention.VALUE_INPUTS
PSE_TYPES = (0, 1, 2, 3)

_chk = Checker(PRIM_NAME)
RULES = training_attention.Rules(
    chk=_chk,
    names={name: name for name in ("query", "key", "value", "pse", "padding_mask", "prefix", "actual_seq_qlen",
                                   "actual_seq_kvlen", "q_start_idx", "kv_start_idx")} | {"attn_mask": "atten_mask"},
    # float32 as well: torch_npu's npu_fusion_attention takes it (and the finite-difference gradient check uses it)
    query_types=("float16", "bfloat16", "float32"), head_error="value_error", sparse_error="value_error")


def check_attrs(head_num: Any, input_layout: Any, scale: Any, keep_prob: Any, pre_tokens: Any, next_tokens: Any,
                inner_precise: Any, sparse_mode: Any, gen_mask_parallel: Any, sync: Any,
                pse_type: Any) -> Dict[str, Any]:
    """The call's scalar arguments (SpeedFusionAttention takes every argument at call time); returns them
    normalised."""
    gen_mask_parallel = _chk.bool_attr("gen_mask_parallel", gen_mask_parallel)
    sync = _chk.bool_attr("sync", sync)
    pse_type = _chk.int_attr("pse_type", pse_type)
    attrs = training_attention.check_attrs(RULES, head_num, keep_prob, scale, "scale", pre_tokens, next_tokens,
                                           inner_precise, input_layout, sparse_mode)
    if pse_type not in PSE_TYPES:
        raise _chk.value_error(f"the 'pse_type' must be one of {list(PSE_TYPES)}, but got {pse_type}.")
    attrs.update(gen_mask_parallel=gen_mask_parallel, sync=sync, pse_type=pse_type)
    return attrs


def output_dtypes(attrs: Dict[str, Any], dtypes: Dict[str, Optional[str]]) -> Tuple[str, ...]:
    """attention_out and softmax_out: the query dtype; softmax_max, softmax_sum: float32; seed, offset, numels:
    int64."""
    q = dtypes["query"]
    return q, "float32", "float32", q, "int64", "int64", "int64"


def infer(m: Dict[str, Optional[TensorMeta]], attrs: Dict[str, Any],
          static: Dict[str, Optional[Tuple[Any, ...]]]) -> None:
    training_attention.infer(RULES, m, attrs, static)


def check_values(values: Dict[str, Optional[np.ndarray]], m: Dict[str, Optional[TensorMeta]],
                 attrs: Dict[str, Any]) -> None:
    training_attention.check_values(RULES, values, m, attrs)


def bprop(attrs: Dict[str, Any], absent: Dict[str, bool]):
    """The kernel's gradient: dq, dk, dv and dpse from flash_attention_score_grad (fed the forward's inputs and
    outputs: softmax_max, softmax_sum, attention_out, and the seed / offset the forward drew), zeros for every other
    kernel input. Absent optional inputs reach the kernel as shape-(0,) placeholders; the grad op gets None."""
    from ms_attention import ops     # late: ops imports the primitives built from this module
    head_num, keep_prob, scale = attrs["head_num"], attrs["keep_prob"], attrs["scale"]
    pre_tokens, next_tokens = attrs["pre_tokens"], attrs["next_tokens"]
    input_layout, sparse_mode, pse_type = attrs["input_layout"], attrs["sparse_mode"], attrs["pse_type"]
    no_pse, no_atten_mask, no_prefix = absent["pse"], absent["atten_mask"], absent["prefix"]
    no_qlen, no_kvlen = absent["actual_seq_qlen"], absent["actual_seq_kvlen"]
    no_q_start, no_kv_start = absent["q_start_idx"], absent["kv_start_idx"]

    def speed_fusion_attention_bprop(query, key, value, seed, offset, pse, padding_mask, atten_mask, prefix,
                                     actual_seq_qlen, actual_seq_kvlen, q_start_idx, kv_start_idx, attr_vector,
                                     out, dout):
        attention_out, softmax_max, softmax_sum = out[0], out[1], out[2]
        dq, dk, dv, dpse = ops._flash_attention_score_grad(  # pylint: disable=protected-access
            query, key, value, dout[0], None if no_pse else pse, None, None if no_atten_mask else atten_mask,
            softmax_max, softmax_sum, attention_out, None if no_prefix else prefix,
            None if no_qlen else actual_seq_qlen, None if no_kvlen else actual_seq_kvlen,
            None if no_q_start else q_start_idx, None if no_kv_start else kv_start_idx, seed, offset, head_num,
            keep_prob, scale, pre_tokens, next_tokens, input_layout, sparse_mode, pse_type)
        return (dq, dk, dv, ms_ops.zeros_like(seed), ms_ops.zeros_like(offset),
                ms_ops.zeros_like(pse) if no_pse else dpse, ms_ops.zeros_like(padding_mask),
                ms_ops.zeros_like(atten_mask), ms_ops.zeros_like(prefix), ms_ops.zeros_like(actual_seq_qlen),
                ms_ops.zeros_like(actual_seq_kvlen), ms_ops.zeros_like(q_start_idx), ms_ops.zeros_like(kv_start_idx),
                ms_ops.zeros_like(attr_vector))
    return speed_fusion_attention_bprop
