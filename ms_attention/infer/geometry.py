"""Layout and head geometry shared by the attention operators: attributes that describe heads, and the query /
key / value shapes each layout implies. Unknown dims (-1) and ranks (-2) pass; the kernel checks them at run time.
"""
from typing import Any, Dict, Optional, Tuple

from ms_attention.infer.common import (UNKNOWN, Checker, TensorMeta, known, product, same, same_shape)


def head_attrs(chk: Checker, num_heads: Any, num_key_value_heads: Any, max_group: Optional[int]) -> Tuple[int, int]:
    """(N, kvN) with kvN = N when num_key_value_heads is 0; N must be a multiple of kvN."""
    num_heads = chk.int_attr("num_heads", num_heads)
    num_key_value_heads = chk.int_attr("num_key_value_heads", num_key_value_heads)
    if num_heads <= 0:
        raise chk.runtime_error(f"the 'num_heads' must be greater than 0, but got {num_heads}.")
    if num_key_value_heads < 0:
        raise chk.value_error(f"the 'num_key_value_heads' must be >= 0, but got {num_key_value_heads}.")
    kv_heads = num_key_value_heads or num_heads
    if num_heads % kv_heads != 0:
        raise chk.value_error(f"the 'num_heads' must be divisible by 'num_key_value_heads', but got "
                              f"{num_heads} and {num_key_value_heads}.")
    if max_group is not None and num_heads // kv_heads > max_group:
        raise chk.value_error(f"the ratio 'num_heads' / 'num_key_value_heads' must not exceed {max_group}, "
                              f"but got {num_heads} / {kv_heads}.")
    return num_heads, kv_heads


def layout_attr(chk: Checker, value: Any, allowed: Tuple[str, ...], name: str = "input_layout") -> str:
    layout = chk.str_attr(name, value)
    if layout.upper() not in allowed:
        raise chk.value_error(f"the '{name}' must be one of {list(allowed)}, but got {value!r}.")
    return layout.upper()


def query_geometry(chk: Checker, q: TensorMeta, layout: str, n: int) -> Dict[str, int]:
    """B, S (query length), N, D of a BSH / BNSD / BSND query; -1 where unknown until run time."""
    if not q.rank_known:
        return dict(b=UNKNOWN, s=UNKNOWN, n=n, d=UNKNOWN)
    want_ndim = 3 if layout == "BSH" else 4
    if q.ndim != want_ndim:
        raise chk.value_error(f"the 'query' must be {want_ndim}-D for input_layout {layout}, but got shape "
                              f"{q.shape}.")
    if layout == "BSH":
        b, s, h = q.shape
        if known(h) and h % n != 0:
            raise chk.value_error(f"the 'num_heads' must divide the hidden size of 'query' (Q_H), but got "
                                  f"num_heads {n} and Q_H {h}.")
        d = h // n if known(h) else UNKNOWN
        qn = n
    elif layout == "BNSD":
        b, qn, s, d = q.shape
    else:
        b, s, qn, d = q.shape
    if not same(qn, n):
        raise chk.value_error(f"the head axis of 'query' must equal 'num_heads', but got {qn} and {n} "
                              f"(query shape {q.shape}).")
    if b == 0 or d == 0:
        raise chk.value_error(f"the 'query' must not be empty, but got shape {q.shape}.")
    return dict(b=b, s=s, n=n, d=d)


def kv_geometry(chk: Checker, k: TensorMeta, layout: str, b: int, kvn: int, d: int) -> int:
    """Checks a contiguous key/value against the query's B, kvN, D; returns the stored length S (-1 if unknown)."""
    if not k.rank_known:
        return UNKNOWN
    kvh = product(kvn, d)
    want = {"BSH": (b, None, kvh), "BNSD": (b, kvn, None, d), "BSND": (b, None, kvn, d)}[layout]
    if k.ndim != len(want):
        raise chk.value_error(f"the 'key' must be {len(want)}-D for input_layout {layout}, but got shape "
                              f"{k.shape}.")
    if not same_shape(k.shape, want):
        text = "(" + ", ".join("S" if w is None else ("?" if w < 0 else str(w)) for w in want) + ")"
        raise chk.runtime_error(f"the shape of 'key' must be {text} for input_layout {layout} with B={b}, "
                                f"num_key_value_heads={kvn}, D={d}, but got {k.shape}.")
    return k.shape[2 if layout == "BNSD" else 1]


def same_kv_shapes(chk: Checker, k: TensorMeta, v: TensorMeta) -> None:
    if k.rank_known and v.rank_known and not same_shape(v.shape, k.shape):
        raise chk.runtime_error(f"the shapes of 'key' and 'value' must be the same, but got {k.shape} and "
                                f"{v.shape}.")
