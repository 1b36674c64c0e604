"""incre_flash_attention: attribute checks, input validation and output inference.

Everything here works on shapes, dtypes and constant values only, so it runs at compile time in Graph mode and
before the kernel in PyNative. Dims unknown at compile time (-1, or rank -2) are left to the kernel, which
checks the real shapes at run time. Values known only at run time (a sequence length or block table given as a
Tensor) are checked by `check_values` on the host in PyNative, and by the kernel in every mode.
"""
from typing import Any, Dict, Optional, Tuple

import numpy as np

from ms_attention import opdef
from ms_attention.infer import geometry, paged, quant, seq_lengths
from ms_attention.infer.common import Checker, TensorMeta, known, same

_OP = opdef.get("incre_flash_attention")
PRIM_NAME = _OP.class_name
LAYOUTS = ("BSH", "BNSD", "BSND")
FLOAT_TYPES = ("float16", "bfloat16")
KV_TYPES = ("float16", "bfloat16", "int8")
MASK_TYPES = ("bool", "int8", "uint8")
MAX_B, MAX_N, MAX_S, MAX_D = (_OP.limit(n) for n in ("max_batch", "max_heads", "max_kv_length", "max_head_dim"))
MAX_GROUP = _OP.limit("max_group")
# inputs whose values (not only shapes) matter; check_values reads them on the host in PyNative
VALUE_INPUTS = ("actual_seq_lengths", "block_table")

_chk = Checker(PRIM_NAME)


def check_attrs(num_heads: Any, input_layout: Any, scale_value: Any, num_key_value_heads: Any, block_size: Any,
                inner_precise: Any) -> Dict[str, Any]:
    """The primitive's __init__ checks; returns the normalised attributes (kvN = N when 0, layout upper case)."""
    layout = geometry.layout_attr(_chk, input_layout, LAYOUTS)
    scale_value = _chk.float_attr("scale_value", scale_value)
    block_size = paged.block_size_attr(_chk, block_size)
    inner_precise = _chk.int_attr("inner_precise", inner_precise)
    num_heads, kv_heads = geometry.head_attrs(_chk, num_heads, num_key_value_heads, MAX_GROUP)
    if inner_precise not in (0, 1):
        raise _chk.value_error(f"the 'inner_precise' must be 0 or 1, but got {inner_precise}.")
    return dict(num_heads=num_heads, input_layout=layout, scale_value=scale_value,
                num_key_value_heads=kv_heads, block_size=block_size, inner_precise=inner_precise)


def output_dtypes(attrs: Dict[str, Any], dtypes: Dict[str, Optional[str]]) -> Tuple[str]:
    """attention_out: int8 with post-quant, else the query dtype. `dtypes` holds None for absent inputs."""
    return (quant.post_quant_dtype(dtypes["quant_scale2"] is not None, dtypes["query"]),)


def _check_dtypes(m: Dict[str, Optional[TensorMeta]]) -> None:
    _chk.dtype_in("query", m["query"], FLOAT_TYPES)
    _chk.dtype_in("key", m["key"], KV_TYPES)
    if m["value"].dtype != m["key"].dtype:
        raise _chk.type_error(f"the dtypes of 'key' and 'value' must be the same, but got {m['key'].dtype} and "
                              f"{m['value'].dtype}.")
    _chk.dtype_in("attn_mask", m["attn_mask"], MASK_TYPES)
    _chk.dtype_in("pse_shift", m["pse_shift"], FLOAT_TYPES)
    _chk.dtype_in("dequant_scale1", m["dequant_scale1"], ("uint64", "float32"))
    _chk.dtype_in("quant_scale1", m["quant_scale1"], ("float32",))
    _chk.dtype_in("dequant_scale2", m["dequant_scale2"], ("uint64", "float32"))
    _chk.dtype_in("quant_scale2", m["quant_scale2"], ("float32",))
    _chk.dtype_in("quant_offset2", m["quant_offset2"], ("float32",))
    _chk.dtype_in("actual_seq_lengths", m["actual_seq_lengths"], seq_lengths.INT_TYPES)
    _chk.dtype_in("block_table", m["block_table"], ("int32",))
    _chk.dtype_in("kv_padding_size", m["kv_padding_size"], seq_lengths.INT_TYPES)
    q_dtype = m["query"].dtype
    for name in ("pse_shift", "antiquant_scale", "antiquant_offset"):
        if m[name] is not None and m[name].dtype != q_dtype:
            raise _chk.type_error(f"the dtype of '{name}' must be the same as 'query' ({q_dtype}), but got "
                                  f"{m[name].dtype}.")
    if m["key"].dtype != "int8" and m["key"].dtype != q_dtype:
        raise _chk.type_error(f"the dtype of 'key' and 'value' must be the same as 'query' ({q_dtype}) or int8 "
                              f"with 'antiquant_scale', but got {m['key'].dtype}.")


def decode_query_geometry(chk: Checker, q: TensorMeta, layout: str, n: int) -> Tuple[int, int, int]:
    """(B, N, D) of a single-token query (the incremental branch); -1 where unknown."""
    g = geometry.query_geometry(chk, q, layout, n)
    if not same(g["s"], 1):
        raise chk.value_error(f"the sequence length of 'query' must be 1, but got {g['s']} (query shape "
                              f"{q.shape}).")
    b, n, d = g["b"], g["n"], g["d"]
    if (known(b) and b > MAX_B) or n > MAX_N or (known(d) and d > MAX_D):
        raise chk.value_error(f"B <= {MAX_B}, N <= {MAX_N} and D <= {MAX_D} are supported, but got B={b}, "
                              f"N={n}, D={d}.")
    return b, n, d


def infer(m: Dict[str, Optional[TensorMeta]], attrs: Dict[str, Any],
          static: Dict[str, Optional[Tuple[Any, ...]]]) -> None:
    """Validate every input against the attributes (what is known at this point)."""
    if m["query"] is None or m["key"] is None or m["value"] is None:
        raise _chk.value_error("the 'query', 'key' and 'value' must be non-empty Tensors.")
    _check_dtypes(m)
    for name in ("dequant_scale1", "quant_scale1", "dequant_scale2"):
        if m[name] is not None:
            raise _chk.runtime_error(f"the '{name}' is not supported now, must be None, but got a Tensor of shape "
                                     f"{m[name].shape}.")
    b, n, d = decode_query_geometry(_chk, m["query"], attrs["input_layout"],
                                    attrs["num_heads"])
    kvn, layout = attrs["num_key_value_heads"], attrs["input_layout"]
    k, v = m["key"], m["value"]
    geometry.same_kv_shapes(_chk, k, v)
    seq = m["actual_seq_lengths"]
    seq_lengths.check_meta(_chk, "actual_seq_lengths", seq, b)
    seq_static = static.get("actual_seq_lengths")
    seq_lengths.check_static_types(_chk, "actual_seq_lengths", seq_static)

    is_paged = m["block_table"] is not None
    if is_paged:
        cache_block = paged.cache_geometry(_chk, k, layout, kvn, d)
        max_kv = paged.check_meta(_chk, m["block_table"], k, b, attrs["block_size"], cache_block, seq,
                                  "actual_seq_lengths", _OP.limit("max_blocks_per_seq"))
        if m["kv_padding_size"] is not None:
            raise _chk.runtime_error("the 'kv_padding_size' (KV left padding) is not supported with page attention "
                                     "('block_table' given).")
    else:
        max_kv = geometry.kv_geometry(_chk, k, layout, b, kvn, d)
        if known(max_kv) and max_kv > MAX_S:
            raise _chk.value_error(f"S <= {MAX_S} is supported, but got S={max_kv}.")
    seq_lengths.check_range(_chk, "actual_seq_lengths", seq_static, max_kv, "the key/value length S")

    _check_mask_and_pse(m, b, n, d, max_kv, is_paged)
    seq_lengths.check_padding_meta(_chk, "kv_padding_size", m["kv_padding_size"])
    quant.check_antiquant(_chk, m["antiquant_scale"], m["antiquant_offset"], k.dtype, layout, kvn, d)
    quant.check_post_quant(_chk, m["quant_scale2"], m["quant_offset2"], n, d, is_paged)


def _last_axis_ok(last: int, max_kv: int, is_paged: bool) -> bool:
    """Non-paged: exactly S. Paged: at least 1 (the longest sequence is checked against the values)."""
    if is_paged:
        return not known(last) or last >= 1
    return same(last, max_kv)


def _s_text(max_kv: int, is_paged: bool) -> str:
    return "S" if is_paged or not known(max_kv) else str(max_kv)


def decode_mask_fits(shape: Tuple[int, ...], b: int, max_kv: int, is_paged: bool) -> bool:
    """A decode mask: (B, S), (B, 1, S) or (B, 1, 1, S)."""
    lead = shape[:-1]
    ok_lead = any(len(lead) == len(w) and all(same(x, y) for x, y in zip(lead, w))
                  for w in ((b,), (b, 1), (b, 1, 1)))
    return len(shape) >= 2 and ok_lead and _last_axis_ok(shape[-1], max_kv, is_paged)


def decode_mask_forms(b: int, max_kv: int, is_paged: bool) -> str:
    want = _s_text(max_kv, is_paged)
    return f"(B, {want}), (B, 1, {want}) or (B, 1, 1, {want}) with B={b}"


def decode_pse_fits(shape: Tuple[int, ...], b: int, n: int, max_kv: int, is_paged: bool) -> bool:
    """A decode pse_shift: (1, N, 1, S) or (B, N, 1, S)."""
    return (len(shape) == 4 and _last_axis_ok(shape[-1], max_kv, is_paged)
            and (same(shape[0], b) or shape[0] == 1) and same(shape[1], n) and same(shape[2], 1))


def decode_pse_forms(b: int, n: int, max_kv: int, is_paged: bool) -> str:
    want = _s_text(max_kv, is_paged)
    return f"(1, {n}, 1, {want}) or ({b}, {n}, 1, {want})"


def check_pse_head_dim(chk: Checker, d: int) -> None:
    if known(d) and d % 16 != 0:
        raise chk.value_error(f"the 'pse_shift' needs the head dim D to be a multiple of 16, but got D={d}.")


def _check_mask_and_pse(m, b, n, d, max_kv, is_paged) -> None:
    mask = m["attn_mask"]
    if mask is not None and mask.rank_known and not decode_mask_fits(mask.shape, b, max_kv, is_paged):
        raise _chk.runtime_error(f"the shape of 'attn_mask' must be {decode_mask_forms(b, max_kv, is_paged)}, "
                                 f"but got {mask.shape}.")
    pse = m["pse_shift"]
    if pse is not None and pse.rank_known:
        if not decode_pse_fits(pse.shape, b, n, max_kv, is_paged):
            raise _chk.runtime_error(f"the shape of 'pse_shift' must be {decode_pse_forms(b, n, max_kv, is_paged)}"
                                     f", but got {pse.shape}.")
        check_pse_head_dim(_chk, d)


def check_values(values: Dict[str, Optional[np.ndarray]], m: Dict[str, Optional[TensorMeta]],
                 attrs: Dict[str, Any]) -> None:
    """Checks of run-time values (Tensor sequence lengths, block table), done on the host in PyNative, where
    every shape is known. The kernel repeats them, so Graph mode gets a RuntimeError from it instead."""
    b, _, d = decode_query_geometry(_chk, m["query"], attrs["input_layout"],
                                    attrs["num_heads"])
    is_paged = m["block_table"] is not None
    seq = values.get("actual_seq_lengths")
    if is_paged:
        max_kv = m["block_table"].shape[1] * attrs["block_size"]
    else:
        max_kv = geometry.kv_geometry(_chk, m["key"], attrs["input_layout"], b, attrs["num_key_value_heads"], d)
    seq_lengths.check_range(_chk, "actual_seq_lengths", seq, max_kv, "the key/value length S")
    if is_paged:
        lens = seq_lengths.per_batch(seq, b)
        longest = int(lens.max(initial=0))
        for name in ("attn_mask", "pse_shift"):
            paged.check_covers_longest(_chk, name, m[name], longest)
        paged.check_table_values(_chk, values["block_table"], lens, attrs["block_size"], m["key"].shape[0])
