"""Prefill attention masks and position shifts (prompt and fused inference attention): the shapes each sparse
mode accepts. A mask or pse may be larger than the stored lengths (its top-left corner is used), never smaller.
Unknown dims (-1) pass; the kernel checks the real shapes at run time."""
from typing import Tuple

from ms_attention.infer.common import known, same

COMPRESSED = 2048          # the side of the compressed causal mask sparse modes 2, 3 and 4 take
BAND_MODES = (2, 3, 4)     # the band is computed: a mask, when given, is the compressed one


def covers(dim: int, needed: int) -> bool:
    """dim >= needed, where either side may be unknown (-1): then the kernel decides."""
    return not known(dim, needed) or dim >= needed


def _lead_ok(lead: Tuple[int, ...], allowed: Tuple[Tuple[int, ...], ...]) -> bool:
    return any(len(lead) == len(w) and all(same(x, y) for x, y in zip(lead, w)) for w in allowed)


def prefill_mask_fits(shape: Tuple[int, ...], b: int, sq: int, skv: int) -> bool:
    """(Sq, Skv), (1, Sq, Skv), (B, Sq, Skv), (B, 1, Sq, Skv) or (1, 1, Sq, Skv), the last two axes covering
    sq and skv (-1: unknown until run time)."""
    if len(shape) < 2:
        return False
    lead_ok = _lead_ok(shape[:-2], ((), (1,), (b,), (1, 1), (b, 1)))
    return lead_ok and covers(shape[-2], sq) and covers(shape[-1], skv)


def prefill_mask_forms(b: int, sq: int, skv: int) -> str:
    q = f"Sq>={sq}" if known(sq) else "Sq"
    kv = f"Skv>={skv}" if known(skv) else "Skv"
    return f"(Sq, Skv), (1, Sq, Skv), (B, Sq, Skv), (B, 1, Sq, Skv) or (1, 1, Sq, Skv) with B={b}, {q}, {kv}"


def compressed_mask_fits(shape: Tuple[int, ...], b: int, batched: bool) -> bool:
    """(2048, 2048), (1, 2048, 2048), (1, 1, 2048, 2048), and (B, 1, 2048, 2048) when `batched`."""
    if len(shape) < 2 or not (same(shape[-1], COMPRESSED) and same(shape[-2], COMPRESSED)):
        return False
    return _lead_ok(shape[:-2], ((), (1,), (1, 1)) + (((b, 1),) if batched else ()))


def compressed_mask_forms(batched: bool) -> str:
    c = COMPRESSED
    return f"({c}, {c}), (1, {c}, {c}), (1, 1, {c}, {c})" + (f" or (B, 1, {c}, {c})" if batched else "")


def prefill_pse_fits(shape: Tuple[int, ...], b: int, n: int, sq: int, skv: int) -> bool:
    """(B, N, Sq, Skv) or (1, N, Sq, Skv), the last two axes covering sq and skv."""
    return (len(shape) == 4 and (same(shape[0], b) or shape[0] == 1) and same(shape[1], n)
            and covers(shape[2], sq) and covers(shape[3], skv))


def prefill_pse_forms(b: int, n: int, sq: int, skv: int) -> str:
    q = f"Sq>={sq}" if known(sq) else "Sq"
    kv = f"Skv>={skv}" if known(skv) else "Skv"
    return f"({b}, {n}, Sq, Skv) or (1, {n}, Sq, Skv) with {q}, {kv}"
