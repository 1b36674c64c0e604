"""Layout and head geometry shared by the attention operators: attributes that describe heads, and the query /
key / value shapes each layout implies. Unknown dims (-1) and ranks (-2) pass; the kernel checks them at run time.
"""
from typing import Any, Dict, Optional, Tuple

from ms_attention.infer.common import UNKNOWN, Checker, TensorMeta, known, same, same_shape


def head_attrs(chk: Checker, num_heads: Any, num_key_value_heads: Any, max_group: Optional[int],
               heads_name: str = "num_heads", attr_error: str = "value_error") -> Tuple[int, int]:
    """(N, kvN) with kvN = N when num_key_value_heads is 0; N must be a multiple of kvN. `attr_error` is the
    Checker method raising for a negative num_key_value_heads and for N not a multiple of kvN (IFA documents a
    ValueError, PFA a RuntimeError)."""
    num_heads = chk.int_attr(heads_name, num_heads)
    num_key_value_heads = chk.int_attr("num_key_value_heads", num_key_value_heads)
    error = getattr(chk, attr_error)
    if num_heads <= 0:
        raise chk.runtime_error(f"the '{heads_name}' must be greater than 0, but got {num_heads}.")
    if num_key_value_heads < 0:
        raise error(f"the 'num_key_value_heads' must be >= 0, but got {num_key_value_heads}.")
    kv_heads = num_key_value_heads or num_heads
    if num_heads % kv_heads != 0:
        raise error(f"the '{heads_name}' must be divisible by 'num_key_value_heads', but got {num_heads} and "
                    f"{num_key_value_heads}.")
    if max_group is not None and num_heads // kv_heads > max_group:
        raise error(f"the ratio '{heads_name}' / 'num_key_value_heads' must not exceed {max_group}, but got "
                    f"{num_heads} / {kv_heads}.")
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


def kv_geometry(chk: Checker, k: TensorMeta, layout: str, b: int, kvn: int, d: int, name: str = "key") -> int:
    """Checks a contiguous key/value against the query's B (unused for TND), kvN and D; returns the stored length
    S (T_kv for TND), -1 if unknown."""
    if not k.rank_known:
        return UNKNOWN
    axes = {"BSH": "(B, S, kvH)", "BNSD": "(B, kvN, S, D)", "BSND": "(B, S, kvN, D)", "TND": "(T, kvN, D)"}[layout]
    if k.ndim != len(axes.split(",")):
        raise chk.value_error(f"the '{name}' must be {len(axes.split(','))}-D {axes} for input_layout {layout}, but "
                              f"got shape {k.shape}.")
    if layout == "BSH":
        batch, s, hidden = k.shape
        if known(hidden) and hidden % kvn != 0:
            raise chk.runtime_error(f"the shape of '{name}' must have a hidden size kv_h divisible by "
                                    f"'num_key_value_heads', but got kv_h {hidden} and num_key_value_heads {kvn} "
                                    f"(shape {k.shape}).")
        heads, head_dim = kvn, (hidden // kvn if known(hidden) else UNKNOWN)
    elif layout == "BNSD":
        batch, heads, s, head_dim = k.shape
    elif layout == "BSND":
        batch, s, heads, head_dim = k.shape
    else:
        s, heads, head_dim = k.shape
        batch = b
    if not same(batch, b):
        raise chk.runtime_error(f"the shape of '{name}' must have the batch of 'query' ({b}) on its batch axis, "
                                f"but got {k.shape}.")
    if not same(heads, kvn):
        raise chk.runtime_error(f"the shape of '{name}' must have kv_n equal to 'num_key_value_heads' ({kvn}) on its "
                                f"head axis, but got {heads} (shape {k.shape}).")
    if not same(head_dim, d):
        raise chk.runtime_error(f"the shape of '{name}' must have the head dim D of 'query' ({d}), but got "
                                f"{head_dim} (shape {k.shape}).")
    return s


def same_kv_shapes(chk: Checker, k: TensorMeta, v: TensorMeta) -> None:
    if k.rank_known and v.rank_known and not same_shape(v.shape, k.shape):
        raise chk.runtime_error(f"the shapes of 'key' and 'value' must be the same, but got {k.shape} and "
                                f"{v.shape}.")
