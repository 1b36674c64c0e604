"""sparse_flash_attention: attribute checks, input validation and output inference.

Shapes, dtypes and constant values are checked here (compile time in Graph mode, before the kernel in PyNative),
with the error types of MindSpore 2.10's documented Raises; what only run-time values show (Tensor sequence
lengths and block tables on the host in PyNative; sparse_indices, lengths and block tables in the kernel in every
mode) is checked again by the kernel, which fails with a RuntimeError.

Layouts: query BSND (B, S1, N1, 512) or TND (T1, N1, 512); key/value BSND (B, S2, 1, 512), TND (T2, 1, 512) (both
with the query's layout) or PA_BSND (block_num, block_size, 1, 512) with block_table; query_rope / key_rope have
the same shapes with a last axis of 64.
"""
from typing import Any, Dict, Optional, Tuple

import numpy as np

from ms_attention import opdef
from ms_attention.infer import paged, seq_lengths
from ms_attention.infer.common import UNKNOWN, Checker, TensorMeta, known, product, same

_OP = opdef.get("sparse_flash_attention")
PRIM_NAME = _OP.class_name
QUERY_LAYOUTS = ("BSND", "TND")
KV_LAYOUTS = ("BSND", "TND", "PA_BSND")
FLOAT_TYPES = ("float16", "bfloat16")
HEAD_DIM, ROPE_DIM = 512, 64
QUERY_HEADS = (1, 2, 4, 8, 16, 32, 64, 128)
KV_HEADS = 1
MAX_SPARSE_BLOCK_SIZE = 128
MAX_PAGE_BLOCK_SIZE = 1024
MAX_BLOCKS_PER_SEQ = 16384
SPARSE_MODES = (0, 3)
ATTENTION_MODES = (0, 2)
VALUE_INPUTS = ("actual_seq_lengths_query", "actual_seq_lengths_kv", "block_table")
REQUIRED = ("query", "key", "value", "sparse_indices")

_chk = Checker(PRIM_NAME)


def check_attrs(scale_value: Any, sparse_block_size: Any, layout_query: Any, layout_kv: Any, sparse_mode: Any,
                pre_tokens: Any, next_tokens: Any, attention_mode: Any, return_softmax_lse: Any) -> Dict[str, Any]:
    """The scalar arguments; returns them normalised (layouts upper case). pre_tokens / next_tokens are accepted
    as ints and do not change the result (the selection and sparse_mode decide which keys a row sees)."""
    scale_value = _chk.float_attr("scale_value", scale_value)
    sparse_block_size = _chk.int_attr("sparse_block_size", sparse_block_size)
    if not 1 <= sparse_block_size <= MAX_SPARSE_BLOCK_SIZE or sparse_block_size & (sparse_block_size - 1):
        raise _chk.runtime_error(f"the 'sparse_block_size' must be a power of 2 in [1, {MAX_SPARSE_BLOCK_SIZE}], "
                                 f"but got {sparse_block_size}.")
    layout_query = _chk.str_attr("layout_query", layout_query)
    if layout_query.upper() not in QUERY_LAYOUTS:
        raise _chk.runtime_error(f"the 'layout_query' must be one of {list(QUERY_LAYOUTS)}, but got "
                                 f"{layout_query!r}.")
    layout_kv = _chk.str_attr("layout_kv", layout_kv)
    if layout_kv.upper() not in KV_LAYOUTS:
        raise _chk.runtime_error(f"the 'layout_kv' must be one of {list(KV_LAYOUTS)}, but got {layout_kv!r}.")
    layout_query, layout_kv = layout_query.upper(), layout_kv.upper()
    if layout_kv != "PA_BSND" and layout_kv != layout_query:
        raise _chk.runtime_error(f"the 'layout_kv' must equal 'layout_query' unless it is 'PA_BSND', but got "
                                 f"layout_query {layout_query!r} and layout_kv {layout_kv!r}.")
    sparse_mode = _chk.choice_attr("sparse_mode", sparse_mode, SPARSE_MODES)
    pre_tokens = _chk.int_attr("pre_tokens", pre_tokens)
    next_tokens = _chk.int_attr("next_tokens", next_tokens)
    attention_mode = _chk.choice_attr("attention_mode", attention_mode, ATTENTION_MODES)
    return_softmax_lse = _chk.bool_attr("return_softmax_lse", return_softmax_lse)
    return dict(scale_value=scale_value, sparse_block_size=sparse_block_size, layout_query=layout_query,
                layout_kv=layout_kv, sparse_mode=sparse_mode, pre_tokens=pre_tokens, next_tokens=next_tokens,
                attention_mode=attention_mode, return_softmax_lse=return_softmax_lse)


def output_dtypes(attrs: Dict[str, Any], dtypes: Dict[str, Optional[str]]) -> Tuple[str, str, str]:
    """attention_out has the query's dtype; softmax_max and softmax_sum are float32."""
    return dtypes["query"], "float32", "float32"


def _check_dtypes(m: Dict[str, Optional[TensorMeta]]) -> None:
    for name in REQUIRED:
        if m.get(name) is None:
            raise _chk.type_error(f"the '{name}' must be a Tensor, but got None or a non-Tensor value.")
    _chk.dtype_in("query", m["query"], FLOAT_TYPES)
    q_dtype = m["query"].dtype
    for name in ("key", "value", "query_rope", "key_rope"):
        if m[name] is not None and m[name].dtype != q_dtype:
            raise _chk.type_error(f"the dtypes of 'query', 'key', 'value' (and the rope inputs) must be the same, "
                                  f"but got query {q_dtype} and {name} {m[name].dtype}.")
    _chk.dtype_in("sparse_indices", m["sparse_indices"], ("int32",))
    _chk.dtype_in("block_table", m["block_table"], ("int32",))
    _chk.dtype_in("actual_seq_lengths_query", m["actual_seq_lengths_query"], seq_lengths.INT_TYPES)
    _chk.dtype_in("actual_seq_lengths_kv", m["actual_seq_lengths_kv"], seq_lengths.INT_TYPES)


def _rank(name: str, t: TensorMeta, ndim: int, axes: str) -> bool:
    """False when the rank is unknown; raises when it is not ndim."""
    if not t.rank_known:
        return False
    if t.ndim != ndim:
        raise _chk.value_error(f"the '{name}' must be {ndim}-D {axes}, but got shape {t.shape}.")
    return True


def _head_dim(name: str, t: TensorMeta, want: int) -> None:
    if t.rank_known and (t.ndim == 0 or not same(t.shape[-1], want)):
        got = t.shape[-1] if t.ndim else "no axis"
        raise _chk.value_error(f"the head dim (last axis) of '{name}' must be {want}, but got {got} "
                               f"(shape {t.shape}).")


def _query_geometry(q: TensorMeta, layout: str) -> Dict[str, int]:
    """B (-1 for TND: the number of lengths), S1 (T1 for TND) and N1 of the query."""
    axes = "(T1, N1, 512)" if layout == "TND" else "(B, S1, N1, 512)"
    if not _rank("query", q, 3 if layout == "TND" else 4, axes):
        return dict(b=UNKNOWN, s=UNKNOWN, n=UNKNOWN)
    _head_dim("query", q, HEAD_DIM)
    if layout == "TND":
        b, (s, n) = UNKNOWN, q.shape[:2]
    else:
        b, s, n = q.shape[:3]
    if known(n) and n not in QUERY_HEADS:
        raise _chk.value_error(f"the number of query heads N1 must be one of {list(QUERY_HEADS)}, but got {n} "
                               f"(query shape {q.shape}).")
    if b == 0:
        raise _chk.value_error(f"the 'query' must not be empty, but got shape {q.shape}.")
    return dict(b=b, s=s, n=n)


def _kv_geometry(k: TensorMeta, layout: str) -> Dict[str, int]:
    """The key's batch (BSND), length axis (S2, T2, or block_size for PA_BSND) and block count (PA_BSND)."""
    axes = {"BSND": "(B, S2, N2, 512)", "TND": "(T2, N2, 512)", "PA_BSND": "(block_num, block_size, N2, 512)"}
    if not _rank("key", k, 3 if layout == "TND" else 4, axes[layout]):
        return dict(b=UNKNOWN, s=UNKNOWN, blocks=UNKNOWN)
    _head_dim("key", k, HEAD_DIM)
    if not same(k.shape[-2], KV_HEADS):
        raise _chk.value_error(f"the number of key/value heads N2 must be {KV_HEADS}, but got {k.shape[-2]} (key "
                               f"shape {k.shape}).")
    if layout == "TND":
        return dict(b=UNKNOWN, s=k.shape[0], blocks=UNKNOWN)
    if layout == "PA_BSND":
        return dict(b=UNKNOWN, s=k.shape[1], blocks=k.shape[0])
    return dict(b=k.shape[0], s=k.shape[1], blocks=UNKNOWN)


def _check_like(name: str, t: Optional[TensorMeta], ref: TensorMeta, ref_name: str, last: int) -> None:
    """t must have ref's shape with a last axis of `last`."""
    if t is None or not (t.rank_known and ref.rank_known):
        return
    _head_dim(name, t, last)
    if t.ndim != ref.ndim or not all(same(a, b) for a, b in zip(t.shape[:-1], ref.shape[:-1])):
        raise _chk.runtime_error(f"the shape of '{name}' must be the shape of '{ref_name}' {ref.shape} with a last "
                                 f"axis of {last}, but got {t.shape}.")


def _check_rope(m: Dict[str, Optional[TensorMeta]], attrs: Dict[str, Any]) -> None:
    given = (m["query_rope"] is not None, m["key_rope"] is not None)
    if given[0] != given[1]:
        raise _chk.value_error(f"the 'query_rope' and 'key_rope' must be given together, but got only "
                               f"{'query_rope' if given[0] else 'key_rope'}.")
    if attrs["attention_mode"] == 2 and not given[0]:
        raise _chk.value_error("the 'query_rope' and 'key_rope' are required with 'attention_mode' 2 (MLA-absorb), "
                               "but got None.")
    _check_like("query_rope", m["query_rope"], m["query"], "query", ROPE_DIM)
    _check_like("key_rope", m["key_rope"], m["key"], "key", ROPE_DIM)


def _batch(m: Dict[str, Optional[TensorMeta]], attrs: Dict[str, Any], q: Dict[str, int],
           static: Dict[str, Optional[Tuple[Any, ...]]]) -> int:
    """B: the query's batch axis (BSND) or the number of cumulative query lengths (TND)."""
    if attrs["layout_query"] != "TND":
        return q["b"]
    lengths = m["actual_seq_lengths_query"]
    if lengths is None:
        raise _chk.value_error("the 'actual_seq_lengths_query' is required with layout_query 'TND' (cumulative "
                               "query lengths), but got None.")
    if static.get("actual_seq_lengths_query") is not None:
        return len(static["actual_seq_lengths_query"])
    return lengths.shape[0] if lengths.rank_known and lengths.ndim == 1 else UNKNOWN


def _check_lengths_meta(name: str, t: Optional[TensorMeta], b: int, cumulative: bool) -> None:
    if t is None or not t.rank_known:
        return
    if t.ndim != 1:
        raise _chk.value_error(f"the '{name}' must be 1-D, but got shape {t.shape}.")
    if cumulative and known(b) and not same(t.shape[0], b):
        raise _chk.runtime_error(f"the cumulative '{name}' must hold one length per batch (B = {b}), but got "
                                 f"{t.shape[0]}.")
    if not cumulative:
        seq_lengths.check_meta(_chk, name, t, b)


def _check_indices(m: Dict[str, Optional[TensorMeta]], attrs: Dict[str, Any], b: int, q: Dict[str, int]) -> None:
    idx = m["sparse_indices"]
    tnd = attrs["layout_query"] == "TND"
    axes = "(T1, N2, sparse_size)" if tnd else "(B, S1, N2, sparse_size)"
    if not _rank("sparse_indices", idx, 3 if tnd else 4, axes):
        return
    lead = (q["s"], KV_HEADS) if tnd else (b, q["s"], KV_HEADS)
    if not all(same(a, w) for a, w in zip(idx.shape[:-1], lead)):
        raise _chk.runtime_error(f"the shape of 'sparse_indices' must be {axes} with {lead} before sparse_size "
                                 f"(from query {m['query'].shape}), but got {idx.shape}.")


def _check_paged(m: Dict[str, Optional[TensorMeta]], attrs: Dict[str, Any], b: int, kv: Dict[str, int]) -> int:
    """Checks the block table and block size; returns the longest sequence the table holds (-1 if unknown)."""
    table = m["block_table"]
    if attrs["layout_kv"] != "PA_BSND":
        if table is not None:
            raise _chk.value_error(f"the 'block_table' is only used with layout_kv 'PA_BSND', but got one with "
                                   f"layout_kv {attrs['layout_kv']!r}.")
        return UNKNOWN
    if table is None:
        raise _chk.value_error("the 'block_table' is required with layout_kv 'PA_BSND', but got None.")
    if m["actual_seq_lengths_kv"] is None:
        raise _chk.value_error("the 'actual_seq_lengths_kv' is required with layout_kv 'PA_BSND', but got None.")
    block_size, sbs = kv["s"], attrs["sparse_block_size"]
    if known(block_size):
        if block_size == 0 or block_size % 16 or block_size > MAX_PAGE_BLOCK_SIZE:
            raise _chk.value_error(f"the block_size of the paged 'key' (axis 1) must be a multiple of 16 in [16, "
                                   f"{MAX_PAGE_BLOCK_SIZE}], but got {block_size}.")
        if block_size % sbs:
            raise _chk.value_error(f"the 'sparse_block_size' ({sbs}) must divide the block_size of the paged 'key' "
                                   f"({block_size}).")
    return product(paged.check_table_shape(_chk, table, b, MAX_BLOCKS_PER_SEQ), block_size)


def _kv_capacity(attrs: Dict[str, Any], kv: Dict[str, int], longest_paged: int) -> int:
    """The largest per-batch kv length the stored key can hold (-1 if unknown)."""
    return longest_paged if attrs["layout_kv"] == "PA_BSND" else kv["s"]


def _check_length_values(name: str, values, b: int, capacity: int, cumulative: bool, what: str) -> None:
    if values is None:
        return
    if isinstance(values, (tuple, list)):  # constants from the call (a Tensor's values are ints already)
        seq_lengths.check_static_types(_chk, name, values)
    if cumulative:
        seq_lengths.check_cumulative(_chk, name, values, capacity, what)
        if known(b) and len(np.asarray(values).reshape(-1)) != b:
            raise _chk.runtime_error(f"the cumulative '{name}' must hold one length per batch (B = {b}), but got "
                                     f"{len(np.asarray(values).reshape(-1))}.")
    else:
        seq_lengths.check_range(_chk, name, values, capacity, what)


def _check_all_lengths(values: Dict[str, Any], attrs: Dict[str, Any], b: int, q: Dict[str, int], capacity: int):
    _check_length_values("actual_seq_lengths_query", values.get("actual_seq_lengths_query"), b, q["s"],
                         attrs["layout_query"] == "TND", "the query length S1 (T1 for TND)")
    _check_length_values("actual_seq_lengths_kv", values.get("actual_seq_lengths_kv"), b, capacity,
                         attrs["layout_kv"] == "TND", "the key/value length S2 (T2 for TND, the block table's "
                                                      "capacity for PA_BSND)")


def infer(m: Dict[str, Optional[TensorMeta]], attrs: Dict[str, Any],
          static: Dict[str, Optional[Tuple[Any, ...]]]) -> None:
    _check_dtypes(m)
    q = _query_geometry(m["query"], attrs["layout_query"])
    kv = _kv_geometry(m["key"], attrs["layout_kv"])
    if m["key"].rank_known and m["value"].rank_known and not (
            m["key"].ndim == m["value"].ndim and all(same(a, c) for a, c in zip(m["key"].shape, m["value"].shape))):
        raise _chk.runtime_error(f"the shapes of 'key' and 'value' must be the same, but got {m['key'].shape} and "
                                 f"{m['value'].shape}.")
    b = _batch(m, attrs, q, static)
    if attrs["layout_kv"] == "BSND" and not same(kv["b"], b):
        raise _chk.runtime_error(f"the batch axis of 'key' must equal the batch of 'query' ({b}), but got key shape "
                                 f"{m['key'].shape}.")
    if attrs["layout_kv"] == "TND" and m["actual_seq_lengths_kv"] is None:
        raise _chk.value_error("the 'actual_seq_lengths_kv' is required with layout_kv 'TND' (cumulative key/value "
                               "lengths), but got None.")
    _check_rope(m, attrs)
    _check_indices(m, attrs, b, q)
    longest = _check_paged(m, attrs, b, kv)
    _check_lengths_meta("actual_seq_lengths_query", m["actual_seq_lengths_query"], b,
                        attrs["layout_query"] == "TND")
    _check_lengths_meta("actual_seq_lengths_kv", m["actual_seq_lengths_kv"], b, attrs["layout_kv"] == "TND")
    _check_all_lengths(static, attrs, b, q, _kv_capacity(attrs, kv, longest))


def check_values(values: Dict[str, Optional[np.ndarray]], m: Dict[str, Optional[TensorMeta]],
                 attrs: Dict[str, Any]) -> None:
    """Tensor lengths and the block table entries a batch reads, on the host in PyNative (every shape known).
    The kernel repeats these checks and also checks sparse_indices, in every mode."""
    q = _query_geometry(m["query"], attrs["layout_query"])
    kv = _kv_geometry(m["key"], attrs["layout_kv"])
    b = q["b"] if attrs["layout_query"] != "TND" else m["actual_seq_lengths_query"].shape[0]
    longest = _check_paged(m, attrs, b, kv)
    _check_all_lengths(values, attrs, b, q, _kv_capacity(attrs, kv, longest))
    if attrs["layout_kv"] == "PA_BSND":
        lens = seq_lengths.per_batch(values["actual_seq_lengths_kv"], b)
        table = values["block_table"]
        for batch, length in enumerate(lens):
            row = table[batch, :-(-int(length) // kv["s"])]
            bad = (row < 0) | (row >= kv["blocks"])
            if bad.any():
                slot = int(np.nonzero(bad)[0][0])
                raise _chk.value_error(f"the 'block_table' entry {int(row[slot])} of batch {batch} (slot {slot}) is "
                                       f"out of range [0, {kv['blocks']}) (block_num of the paged key/value).")
