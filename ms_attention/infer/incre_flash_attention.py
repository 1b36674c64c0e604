"""incre_flash_attention: attribute checks, input validation and output inference (SPEC.md §2, §4-6, §10).

Everything here works on shapes, dtypes and constant values only, so it runs at compile time in Graph mode
(through the Custom op's infer callbacks) and before the kernel in PyNative. Values known only at run time
(a sequence length or block table given as a Tensor) are checked by `check_values` in PyNative and again by
the kernel itself.
"""
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

from ms_attention.infer.common import INT32_MAX, LAYOUT_ENUM, Checker, TensorMeta, is_int

PRIM_NAME = "IncreFlashAttention"
LAYOUTS = ("BSH", "BNSD", "BSND")
FLOAT_TYPES = ("float16", "bfloat16")
KV_TYPES = ("float16", "bfloat16", "int8")
MASK_TYPES = ("bool", "int8", "uint8")
SEQ_TYPES = ("int64", "int32")
MAX_B, MAX_N, MAX_S, MAX_D = 65535, 256, 262144, 512
MAX_GROUP = 64
MAX_BLOCKS_PER_SEQ = 16384
# inputs whose values (not only shapes) matter; check_values reads them on the host in PyNative
VALUE_INPUTS = ("actual_seq_lengths", "block_table", "kv_padding_size")

_chk = Checker(PRIM_NAME)


def check_attrs(num_heads: Any, input_layout: Any, scale_value: Any, num_key_value_heads: Any, block_size: Any,
                inner_precise: Any) -> Dict[str, Any]:
    """The primitive's __init__ checks; returns the normalised attributes."""
    num_heads = _chk.int_attr("num_heads", num_heads)
    layout = _chk.str_attr("input_layout", input_layout)
    scale_value = _chk.float_attr("scale_value", scale_value)
    num_key_value_heads = _chk.int_attr("num_key_value_heads", num_key_value_heads)
    block_size = _chk.int_attr("block_size", block_size)
    inner_precise = _chk.int_attr("inner_precise", inner_precise)
    if layout.upper() not in LAYOUTS:
        raise _chk.value_error(f"the 'input_layout' must be one of {list(LAYOUTS)}, but got {input_layout!r}.")
    if num_heads <= 0:
        raise _chk.runtime_error(f"the 'num_heads' must be greater than 0, but got {num_heads}.")
    if num_key_value_heads < 0:
        raise _chk.value_error(f"the 'num_key_value_heads' must be >= 0, but got {num_key_value_heads}.")
    kv_heads = num_key_value_heads or num_heads
    if num_heads % kv_heads != 0:
        raise _chk.value_error(f"the 'num_heads' must be divisible by 'num_key_value_heads', but got "
                               f"{num_heads} and {num_key_value_heads}.")
    if num_heads // kv_heads > MAX_GROUP:
        raise _chk.value_error(f"the ratio 'num_heads' / 'num_key_value_heads' must not exceed {MAX_GROUP}, "
                               f"but got {num_heads} / {kv_heads}.")
    if block_size < 0:
        raise _chk.value_error(f"the 'block_size' must be >= 0, but got {block_size}.")
    if inner_precise not in (0, 1):
        raise _chk.value_error(f"the 'inner_precise' must be 0 or 1, but got {inner_precise}.")
    return dict(num_heads=num_heads, input_layout=layout.upper(), scale_value=scale_value,
                num_key_value_heads=kv_heads, block_size=block_size, inner_precise=inner_precise)


def kernel_attrs(attrs: Dict[str, Any]) -> Tuple[float, ...]:
    """The float64 parameter vector the native kernel reads (see csrc/incre_flash_attention.cpp)."""
    return (float(attrs["num_heads"]), float(LAYOUT_ENUM[attrs["input_layout"]]), float(attrs["scale_value"]),
            float(attrs["num_key_value_heads"]), float(attrs["block_size"]), float(attrs["inner_precise"]))


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
    _chk.dtype_in("actual_seq_lengths", m["actual_seq_lengths"], SEQ_TYPES)
    _chk.dtype_in("block_table", m["block_table"], ("int32",))
    _chk.dtype_in("kv_padding_size", m["kv_padding_size"], SEQ_TYPES)
    q_dtype = m["query"].dtype
    for name in ("pse_shift", "antiquant_scale", "antiquant_offset"):
        if m[name] is not None and m[name].dtype != q_dtype:
            raise _chk.type_error(f"the dtype of '{name}' must be the same as 'query' ({q_dtype}), but got "
                                  f"{m[name].dtype}.")
    if m["key"].dtype != "int8" and m["key"].dtype != q_dtype:
        raise _chk.type_error(f"the dtype of 'key' and 'value' must be the same as 'query' ({q_dtype}) or int8 "
                              f"with 'antiquant_scale', but got {m['key'].dtype}.")


def _query_geometry(q: TensorMeta, attrs: Dict[str, Any]) -> Tuple[int, int, int]:
    """(B, N, D) from the query, checking it against the layout and num_heads."""
    layout, n = attrs["input_layout"], attrs["num_heads"]
    want_ndim = 3 if layout == "BSH" else 4
    if q.ndim != want_ndim:
        raise _chk.value_error(f"the 'query' must be {want_ndim}-D for input_layout {layout}, but got shape "
                               f"{q.shape}.")
    if layout == "BSH":
        b, s, h = q.shape
        if h % n != 0:
            raise _chk.value_error(f"the 'num_heads' must divide the hidden size of 'query' (Q_H), but got "
                                   f"num_heads {n} and Q_H {h}.")
        d = h // n
    elif layout == "BNSD":
        b, qn, s, d = q.shape
    else:
        b, s, qn, d = q.shape
    if layout != "BSH" and qn != n:
        raise _chk.value_error(f"the head axis of 'query' must equal 'num_heads', but got {qn} and {n} "
                               f"(query shape {q.shape}).")
    if s != 1:
        raise _chk.value_error(f"the sequence length of 'query' must be 1, but got {s} (query shape {q.shape}).")
    if b <= 0 or d <= 0:
        raise _chk.value_error(f"the 'query' must not be empty, but got shape {q.shape}.")
    if b > MAX_B or n > MAX_N or d > MAX_D:
        raise _chk.value_error(f"B <= {MAX_B}, N <= {MAX_N} and D <= {MAX_D} are supported, but got B={b}, "
                               f"N={n}, D={d}.")
    return b, n, d


def _kv_geometry(k: TensorMeta, attrs: Dict[str, Any], b: int, d: int, paged: bool) -> Tuple[int, int]:
    """(S, cache layout) of key: S is the stored length (non-paged) or block_size (paged).
    Cache layout 0: token rows of kvH = kvN*D (BSH/BSND/BnBsH), 1: head-major (BNSD/BnNBsD)."""
    layout, kvn = attrs["input_layout"], attrs["num_key_value_heads"]
    kvh = kvn * d
    if paged:
        if k.ndim == 3:
            nb, bs, h = k.shape
            if h != kvh:
                raise _chk.runtime_error(f"the paged 'key' (num_blocks, block_size, kvH) needs kvH = "
                                         f"num_key_value_heads * D = {kvh}, but got shape {k.shape}.")
            return bs, 0
        if k.ndim == 4:
            if layout != "BNSD":
                raise _chk.value_error(f"the paged cache layout (num_blocks, kvN, block_size, D) needs "
                                       f"input_layout BNSD, but got {layout}.")
            nb, hn, bs, hd = k.shape
            if (hn, hd) != (kvn, d):
                raise _chk.runtime_error(f"the paged 'key' (num_blocks, kvN, block_size, D) needs kvN={kvn}, "
                                         f"D={d}, but got shape {k.shape}.")
            return bs, 1
        raise _chk.value_error(f"the paged 'key' must be 3-D or 4-D, but got shape {k.shape}.")
    want = {"BSH": (b, None, kvh), "BNSD": (b, kvn, None, d), "BSND": (b, None, kvn, d)}[layout]
    if k.ndim != len(want):
        raise _chk.value_error(f"the 'key' must be {len(want)}-D for input_layout {layout}, but got shape "
                               f"{k.shape}.")
    s_axis = 2 if layout == "BNSD" else 1
    expect = tuple(k.shape[i] if w is None else w for i, w in enumerate(want))
    if tuple(k.shape) != expect:
        raise _chk.runtime_error(f"the shape of 'key' must be {_shape_text(want, 'S')} for input_layout {layout}"
                                 f" with B={b}, num_key_value_heads={kvn}, D={d}, but got {k.shape}.")
    s = k.shape[s_axis]
    if s > MAX_S:
        raise _chk.value_error(f"S <= {MAX_S} is supported, but got S={s}.")
    return s, 1 if layout == "BNSD" else 0


def _shape_text(shape: Sequence[Optional[int]], free: str) -> str:
    return "(" + ", ".join(free if v is None else str(v) for v in shape) + ")"


def infer(m: Dict[str, Optional[TensorMeta]], attrs: Dict[str, Any],
          static: Dict[str, Optional[Tuple[Any, ...]]]) -> Tuple[Tuple[int, ...], str]:
    """Validate every input against the attributes; return (output shape, output dtype name)."""
    if m["query"] is None or m["key"] is None or m["value"] is None:
        raise _chk.value_error("the 'query', 'key' and 'value' must be non-empty Tensors.")
    _check_dtypes(m)
    for name in ("dequant_scale1", "quant_scale1", "dequant_scale2"):
        if m[name] is not None:
            raise _chk.runtime_error(f"the '{name}' is not supported now, must be None, but got a Tensor of shape "
                                     f"{m[name].shape}.")
    b, n, d = _query_geometry(m["query"], attrs)
    kvn = attrs["num_key_value_heads"]
    k, v = m["key"], m["value"]
    if k.shape != v.shape:
        raise _chk.runtime_error(f"the shapes of 'key' and 'value' must be the same, but got {k.shape} and "
                                 f"{v.shape}.")
    paged = m["block_table"] is not None
    s_or_bs, _ = _kv_geometry(k, attrs, b, d, paged)
    seq = m["actual_seq_lengths"]
    seq_static = static.get("actual_seq_lengths")
    if seq is not None and seq.ndim != 1:
        raise _chk.value_error(f"the 'actual_seq_lengths' must be 1-D, but got shape {seq.shape}.")
    if seq is not None and seq.shape[0] not in (1, b):
        raise _chk.value_error(f"the size of 'actual_seq_lengths' must be 1 or B ({b}), but got {seq.shape[0]}.")
    if seq_static is not None:
        for value in seq_static:
            if not is_int(value):
                raise _chk.type_error(f"the 'actual_seq_lengths' must hold ints, but got {value!r} of type "
                                      f"{type(value).__name__}.")

    if paged:
        max_kv = _check_paged(m, attrs, b, k, s_or_bs, seq)
    else:
        max_kv = s_or_bs
    if seq_static is not None:
        for value in seq_static:
            if value < 0 or value > max_kv:
                raise _chk.value_error(f"each 'actual_seq_lengths' must be in [0, {max_kv}] (the key/value length "
                                       f"S), but got {value} in {list(seq_static)}.")

    _check_mask_and_pse(m, b, n, d, max_kv, paged)
    _check_padding(m)
    _check_antiquant(m, attrs, d)
    out_dtype = _check_post_quant(m, n, d, paged)
    return tuple(m["query"].shape), out_dtype


def _check_paged(m, attrs, b, k, block_size_in_cache, seq) -> int:
    bt = m["block_table"]
    bs = attrs["block_size"]
    if bt.ndim != 2 or bt.shape[0] != b:
        raise _chk.runtime_error(f"the 'block_table' must have shape (B={b}, max_blocks_per_seq), but got "
                                 f"{bt.shape}.")
    if bt.shape[1] > MAX_BLOCKS_PER_SEQ or bt.shape[1] <= 0:
        raise _chk.value_error(f"the max_blocks_per_seq of 'block_table' must be in [1, {MAX_BLOCKS_PER_SEQ}], "
                               f"but got {bt.shape[1]}.")
    if seq is None:
        raise _chk.value_error("the 'actual_seq_lengths' is required with page attention ('block_table' given), "
                               "but got None.")
    align = 32 if k.dtype == "int8" else 16
    if bs <= 0 or bs % align != 0:
        raise _chk.value_error(f"the 'block_size' must be a positive multiple of {align} for {k.dtype} key/value"
                               f" with page attention, but got {bs}.")
    if block_size_in_cache != bs:
        raise _chk.runtime_error(f"the block axis of the paged 'key' must equal 'block_size' ({bs}), but got key "
                                 f"shape {k.shape}.")
    if k.numel > INT32_MAX:
        raise _chk.value_error(f"the number of elements of the paged 'key' must not exceed {INT32_MAX}, but got "
                               f"{k.numel}.")
    if m["kv_padding_size"] is not None:
        raise _chk.runtime_error("the 'kv_padding_size' (KV left padding) is not supported with page attention "
                                 "('block_table' given).")
    return bt.shape[1] * bs


def _check_mask_and_pse(m, b, n, d, max_kv, paged) -> None:
    mask = m["attn_mask"]
    if mask is not None:
        ok_lead = mask.shape[:-1] in ((b,), (b, 1), (b, 1, 1))
        s_ok = mask.shape[-1] == max_kv if not paged else mask.shape[-1] >= 1
        if not (ok_lead and s_ok):
            want = "S" if paged else str(max_kv)
            raise _chk.runtime_error(f"the shape of 'attn_mask' must be (B, {want}), (B, 1, {want}) or "
                                     f"(B, 1, 1, {want}) with B={b}, but got {mask.shape}.")
    pse = m["pse_shift"]
    if pse is not None:
        s_ok = pse.ndim == 4 and (pse.shape[-1] == max_kv if not paged else pse.shape[-1] >= 1)
        if not (s_ok and pse.shape[0] in (1, b) and pse.shape[1:3] == (n, 1)):
            want = "S" if paged else str(max_kv)
            raise _chk.runtime_error(f"the shape of 'pse_shift' must be (1, {n}, 1, {want}) or ({b}, {n}, 1, "
                                     f"{want}), but got {pse.shape}.")
        if d % 16 != 0:
            raise _chk.value_error(f"the 'pse_shift' needs the head dim D to be a multiple of 16, but got D={d}.")


def _check_padding(m) -> None:
    pad = m["kv_padding_size"]
    if pad is not None and pad.shape not in ((), (1,)):
        raise _chk.value_error(f"the shape of 'kv_padding_size' must be () or (1,), but got {pad.shape}.")


def _check_antiquant(m, attrs, d) -> None:
    scale, offset = m["antiquant_scale"], m["antiquant_offset"]
    kv_int8 = m["key"].dtype == "int8"
    if offset is not None and scale is None:
        raise _chk.runtime_error("the 'antiquant_offset' needs 'antiquant_scale', but 'antiquant_scale' is None.")
    if kv_int8 and scale is None:
        raise _chk.runtime_error("int8 'key' and 'value' need 'antiquant_scale', but got None.")
    if scale is None:
        return
    if not kv_int8:
        raise _chk.runtime_error(f"the 'antiquant_scale' needs int8 'key' and 'value', but got "
                                 f"{m['key'].dtype}.")
    kvn, layout = attrs["num_key_value_heads"], attrs["input_layout"]
    per_channel = {"BNSD": (2, kvn, 1, d), "BSND": (2, kvn, d), "BSH": (2, kvn * d)}[layout]
    if scale.shape not in ((2,), per_channel):
        raise _chk.runtime_error(f"the shape of 'antiquant_scale' must be (2,) (per tensor) or {per_channel} "
                                 f"(per channel, {layout}), but got {scale.shape}.")
    if offset is not None and offset.shape != scale.shape:
        raise _chk.runtime_error(f"the shape of 'antiquant_offset' must equal that of 'antiquant_scale' "
                                 f"{scale.shape}, but got {offset.shape}.")


def _check_post_quant(m, n, d, paged) -> str:
    scale, offset = m["quant_scale2"], m["quant_offset2"]
    if offset is not None and scale is None:
        raise _chk.runtime_error("the 'quant_offset2' needs 'quant_scale2', but 'quant_scale2' is None.")
    if scale is None:
        return m["query"].dtype
    if scale.numel not in (1, n * d):
        raise _chk.runtime_error(f"the 'quant_scale2' must hold 1 (per tensor) or N*D = {n * d} (per channel) "
                                 f"elements, but got shape {scale.shape}.")
    if offset is not None and offset.numel != scale.numel:
        raise _chk.runtime_error(f"the 'quant_offset2' must have as many elements as 'quant_scale2' "
                                 f"({scale.numel}), but got shape {offset.shape}.")
    if scale.numel != 1 and paged:
        raise _chk.runtime_error("per-channel post quantization ('quant_scale2' with N*D elements) is not "
                                 "supported with page attention.")
    return "int8"


def check_values(values: Dict[str, Optional[np.ndarray]], m: Dict[str, Optional[TensorMeta]],
                 attrs: Dict[str, Any]) -> None:
    """Checks of run-time values (Tensor sequence lengths, block table), done on the host in PyNative.
    The kernel repeats them, so Graph mode gets a RuntimeError from it instead of a crash."""
    b, _, d = _query_geometry(m["query"], attrs)
    paged = m["block_table"] is not None
    seq = values.get("actual_seq_lengths")
    if paged:
        max_kv = m["block_table"].shape[1] * attrs["block_size"]
    else:
        max_kv, _ = _kv_geometry(m["key"], attrs, b, d, False)
    if seq is not None:
        bad = [int(x) for x in seq.reshape(-1) if x < 0 or x > max_kv]
        if bad:
            raise _chk.value_error(f"each 'actual_seq_lengths' must be in [0, {max_kv}] (the key/value length S), "
                                   f"but got {bad[0]} in {seq.reshape(-1).tolist()}.")
    if paged:
        table = values["block_table"]
        bs = attrs["block_size"]
        num_blocks = m["key"].shape[0]
        lens = np.broadcast_to(seq.reshape(-1), (b,))
        if m["attn_mask"] is not None and lens.max(initial=0) > m["attn_mask"].shape[-1]:
            raise _chk.runtime_error(f"the last axis of 'attn_mask' ({m['attn_mask'].shape[-1]}) must cover the "
                                     f"longest sequence ({int(lens.max())}) with page attention.")
        if m["pse_shift"] is not None and lens.max(initial=0) > m["pse_shift"].shape[-1]:
            raise _chk.runtime_error(f"the last axis of 'pse_shift' ({m['pse_shift'].shape[-1]}) must cover the "
                                     f"longest sequence ({int(lens.max())}) with page attention.")
        for batch in range(b):
            used = -(-int(lens[batch]) // bs)
            row = table[batch, :used]
            bad = row[(row < 0) | (row >= num_blocks)]
            if bad.size:
                raise _chk.value_error(f"the 'block_table' entry {int(bad[0])} of batch {batch} is out of range "
                                       f"[0, {num_blocks}) (num_blocks of the paged key/value).")
