"""Checks shared by the training attention operators, flash_attention_score (FAS) and speed_fusion_attention
(SFA): their attributes, the five layouts (BSH, SBH, BNSD, BSND, TND with cumulative lengths), masks, pse,
dropout mask, prefix and the ALiBi start indexes.

Each operator describes itself with `Rules`: its Checker, its argument names, the query dtypes it takes and the
exception its documentation gives for head_num and sparse_mode. Inputs are known here by FAS's names (`pse` is
FAS's `real_shift`, `attn_mask` SFA's `atten_mask`).

Shape rules (the docstrings, MindSpore's own FlashAttentionScore infer and docs/flash_attention_score.md):
- attn_mask, modes 0, 1, 5: (B, N1, S1, S2), (B, 1, S1, S2), (1, N1, S1, S2), (1, 1, S1, S2) or (S1, S2); TND:
  the same with Smax_q >= the longest query batch, Smax_kv >= the longest key batch (window-relative). Modes
  2, 3, 4, 7, 8: the compressed (2048, 2048) mask, whose contents are ignored; mode 6 also CANN's (3072, 2048).
  Optional in every mode.
- pse (pse_type 0/1): (B|1, N1, S1, S2); or (B|1, N1, 1024, S2) -- compressed ALiBi rows -- with sparse_mode 2 or
  3. TND: (B|1, N1, Smax_q, Smax_kv) with Smax >= the longest batch, or (B|1, N1, 1024, Smax_kv) with modes 2, 3.
  pse_type 2/3: float32 slopes, (B, N1) or (N1,).
- drop_mask (FAS): uint8 (B, N1, S1, S2 // 8) with S2 % 8 == 0; TND: (ceil(N1 * sum_b q_b * kv_b / 8),).
Shapes are exact where MindSpore's infer compares them exactly (non-TND) and covering where the lengths are
per batch (TND). An unknown dim (-1) or rank (-2) passes; the kernel checks the real shapes at run time.
"""
import dataclasses
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np

from ms_attention.infer import geometry, masks, seq_lengths
from ms_attention.infer.common import UNKNOWN, Checker, TensorMeta, known, same, same_shape
from ms_attention.infer.fused_attention import MAX_HEAD_DIM, MAX_HEADS

LAYOUTS = ("BSH", "SBH", "BNSD", "BSND", "TND")
SPARSE_MODES = tuple(range(9))
PREFIX_MODES = (5, 6)
FULL_MASK_MODES = (0, 1, 5)
COMPRESSED_PSE_ROWS = 1024        # the ALiBi rows of a compressed pse (sparse_mode 2 or 3)
COMPRESSED_PSE_MODES = (2, 3)
PREFIX_COMPRESSED_MASK = (3072, 2048)   # CANN's compressed mask of sparse_mode 6
ALIBI_PSE_TYPES = (2, 3)
MASK_TYPES = ("bool", "uint8")
INT64_MIN, INT64_MAX = -2 ** 63, 2 ** 63 - 1
LAYOUT_AXES = {"BSH": "BSH", "SBH": "SBH", "BNSD": "BNSD", "BSND": "BSND", "TND": "SND"}
LAYOUT_FORMS = {"BSH": "(B, S, H)", "SBH": "(S, B, H)", "BNSD": "(B, N, S, D)", "BSND": "(B, S, N, D)",
                "TND": "(T, N, D)"}
LENGTH_NAMES = ("prefix", "actual_seq_qlen", "actual_seq_kvlen", "q_start_idx", "kv_start_idx")
VALUE_INPUTS = ("prefix", "actual_seq_qlen", "actual_seq_kvlen")


@dataclasses.dataclass(frozen=True)
class Rules:
    chk: Checker
    names: Mapping[str, str]         # input (FAS primitive name) -> the op's argument name; absent: no such input
    query_types: Tuple[str, ...]
    head_error: str                  # Checker method for head_num <= 0 (FAS: runtime_error, SFA: value_error)
    sparse_error: str                # ... for a sparse_mode outside 0-8 (FAS: runtime_error, SFA: value_error)


def check_attrs(rules: Rules, head_num: Any, keep_prob: Any, scale: Any, scale_name: str, pre_tokens: Any,
                next_tokens: Any, inner_precise: Any, input_layout: Any, sparse_mode: Any) -> Dict[str, Any]:
    """The attributes both operators share, type errors first (as the Raises lists order them); returns them
    normalised (floats as float, the layout upper case) under FAS's names, `scale` under `scale_name`."""
    chk = rules.chk
    head_num = chk.int_attr("head_num", head_num)
    keep_prob = chk.float_attr("keep_prob", keep_prob)
    scale = chk.float_attr(scale_name, scale)
    pre_tokens = chk.int_attr("pre_tokens", pre_tokens)
    next_tokens = chk.int_attr("next_tokens", next_tokens)
    inner_precise = chk.int_attr("inner_precise", inner_precise)
    layout = chk.str_attr("input_layout", input_layout)
    sparse_mode = chk.int_attr("sparse_mode", sparse_mode)
    layout = geometry.layout_attr(chk, layout, LAYOUTS)
    if head_num <= 0:
        raise getattr(chk, rules.head_error)(f"the 'head_num' must be greater than 0, but got {head_num}.")
    if head_num > MAX_HEADS:
        raise chk.value_error(f"the 'head_num' must be at most {MAX_HEADS}, but got {head_num}.")
    if sparse_mode not in SPARSE_MODES:
        raise getattr(chk, rules.sparse_error)(f"the 'sparse_mode' must be one of {list(SPARSE_MODES)}, but got "
                                               f"{sparse_mode}.")
    if not 0.0 < keep_prob <= 1.0:
        raise chk.value_error(f"the 'keep_prob' must be in (0, 1], but got {keep_prob}.")
    if not np.isfinite(scale):
        raise chk.value_error(f"the '{scale_name}' must be finite, but got {scale}.")
    for name, value in (("pre_tokens", pre_tokens), ("next_tokens", next_tokens), ("inner_precise", inner_precise)):
        if not INT64_MIN <= value <= INT64_MAX:
            raise chk.value_error(f"the '{name}' must fit in int64, but got {value}.")
    return {"head_num": head_num, "keep_prob": keep_prob, scale_name: scale, "pre_tokens": pre_tokens,
            "next_tokens": next_tokens, "inner_precise": inner_precise, "input_layout": layout,
            "sparse_mode": sparse_mode}


class _Call:
    """One call's inputs (by FAS name), attributes, and what the checks work out about it."""

    def __init__(self, rules: Rules, m: Mapping[str, Optional[TensorMeta]], attrs: Mapping[str, Any]):
        self.rules, self.chk = rules, rules.chk
        self.m = {c: m.get(op) for c, op in rules.names.items()}
        self.n = attrs["head_num"]
        self.layout = attrs["input_layout"]
        self.tnd = self.layout == "TND"
        self.mode = attrs["sparse_mode"]
        self.keep_prob = attrs["keep_prob"]
        self.pse_type = attrs.get("pse_type", 1)

    def name(self, canonical: str) -> str:
        return self.rules.names[canonical]

    def get(self, canonical: str) -> Optional[TensorMeta]:
        return self.m.get(canonical)

    # -- dtypes ---------------------------------------------------------------------------------------------
    def check_dtypes(self) -> None:
        chk, q, k, v = self.chk, self.m["query"], self.m["key"], self.m["value"]
        chk.dtype_in("query", q, self.rules.query_types)
        if k.dtype != q.dtype or v.dtype != q.dtype:
            raise chk.type_error(f"the 'query', 'key' and 'value' must have the same dtype, but got {q.dtype}, "
                                 f"{k.dtype} and {v.dtype}.")
        chk.dtype_in(self.name("attn_mask"), self.get("attn_mask"), MASK_TYPES)
        pse = self.get("pse")
        if pse is not None:
            want = "float32" if self.pse_type in ALIBI_PSE_TYPES else q.dtype
            if pse.dtype != want:
                why = f"pse_type {self.pse_type} (ALiBi slopes)" if self.pse_type in ALIBI_PSE_TYPES else \
                    "the dtype of 'query'"
                raise chk.type_error(f"the dtype of '{self.name('pse')}' must be {want} ({why}), but got "
                                     f"{pse.dtype}.")
        if "drop_mask" in self.rules.names:
            chk.dtype_in("drop_mask", self.get("drop_mask"), ("uint8",))
        for c in LENGTH_NAMES:
            if c in self.rules.names:
                chk.dtype_in(self.name(c), self.get(c), seq_lengths.INT_TYPES)

    # -- geometry -------------------------------------------------------------------------------------------
    def geometry(self) -> None:
        """B, S1, S2 (T1, T2 for TND), N2 and D from query, key and value."""
        chk, q, k = self.chk, self.m["query"], self.m["key"]
        geometry.same_kv_shapes(chk, k, self.m["value"])
        self.b = self._tnd_batch() if self.tnd else UNKNOWN
        self.s1 = self.d = self.n2 = self.s2 = UNKNOWN
        if q.rank_known:
            b, self.s1, qn, hidden, self.d = self._axes("query", q)
            if known(hidden):
                if hidden % self.n != 0:
                    raise chk.value_error(f"the 'head_num' must divide the hidden size H1 of 'query', but got "
                                          f"head_num {self.n} and H1 {hidden} (query shape {q.shape}).")
                self.d = hidden // self.n
            elif not same(qn, self.n):
                raise chk.value_error(f"the head axis of 'query' must equal 'head_num', but got {qn} and {self.n} "
                                      f"(query shape {q.shape}).")
            self.b = b if not self.tnd else self.b
            if 0 in q.shape and not (self.tnd and q.shape[0] == 0):
                raise chk.value_error(f"the 'query' must not be empty, but got shape {q.shape}.")
            if known(self.d) and self.d > MAX_HEAD_DIM:
                raise chk.value_error(f"the head dim D must be at most {MAX_HEAD_DIM}, but got {self.d}.")
        if not k.rank_known:
            return
        if q.rank_known and k.ndim != q.ndim:
            raise chk.runtime_error(f"the 'query', 'key' and 'value' must have the same rank, but got shapes "
                                    f"{q.shape} and {k.shape}.")
        kb, self.s2, self.n2, hidden, kd = self._axes("key", k)
        if known(hidden, self.d):
            if hidden % self.d != 0:
                raise chk.runtime_error(f"the D-axis of 'query', 'key' and 'value' must be the same: the hidden size "
                                        f"H2 of 'key' ({hidden}) must be a multiple of the head dim D of 'query' "
                                        f"({self.d}), but got key shape {k.shape}.")
            self.n2 = hidden // self.d
        elif not same(kd, self.d):
            raise chk.runtime_error(f"the D-axis of 'query', 'key' and 'value' must be the same, but got "
                                    f"{self.d} and {kd} (query shape {q.shape}, key shape {k.shape}).")
        if known(self.n2) and (self.n2 == 0 or self.n % self.n2 != 0):
            raise chk.runtime_error(f"the 'head_num' must be divisible by N2, the head count of 'key' and 'value', "
                                    f"but got head_num {self.n} and N2 {self.n2} (key shape {k.shape}).")
        if not self.tnd and not same(kb, self.b):
            raise chk.runtime_error(f"the batch of 'key' and 'value' must be that of 'query' ({self.b}), but got "
                                    f"{kb} (key shape {k.shape}).")

    def _axes(self, name: str, x: TensorMeta) -> Tuple[int, int, int, int, int]:
        """(B, S, N, H, D) of a tensor in the call's layout; -1 for what the layout does not have or is unknown."""
        axes = LAYOUT_AXES[self.layout]
        if x.ndim != len(axes):
            raise self.chk.value_error(f"the '{name}' must be {len(axes)}-D {LAYOUT_FORMS[self.layout]} for "
                                       f"input_layout {self.layout}, but got shape {x.shape}.")
        dims = dict(zip(axes, x.shape))
        return tuple(dims.get(a, UNKNOWN) for a in "BSNHD")

    def _tnd_batch(self) -> int:
        """B of a TND call: the number of cumulative lengths, which TND requires."""
        chk = self.chk
        q_lens, kv_lens = self.get("actual_seq_qlen"), self.get("actual_seq_kvlen")
        for c, lens in (("actual_seq_qlen", q_lens), ("actual_seq_kvlen", kv_lens)):
            if lens is None:
                raise chk.runtime_error(f"the '{c}' (cumulative lengths) is required with input_layout TND, but "
                                        f"got None.")
            if lens.rank_known and lens.ndim != 1:
                raise chk.value_error(f"the '{c}' must be 1-D, but got shape {lens.shape}.")
        b = q_lens.shape[0] if q_lens.rank_known else UNKNOWN
        kv_b = kv_lens.shape[0] if kv_lens.rank_known else UNKNOWN
        if not same(b, kv_b):
            raise chk.runtime_error(f"the 'actual_seq_qlen' and 'actual_seq_kvlen' must have the same length (the "
                                    f"batch size), but got {b} and {kv_b}.")
        if b == 0:
            raise chk.value_error("the 'actual_seq_qlen' must hold one cumulative length per batch, but got none.")
        return b if known(b) else kv_b

    def non_tnd_lengths(self) -> None:
        if self.tnd:
            return
        for c in ("actual_seq_qlen", "actual_seq_kvlen"):
            if self.get(c) is not None:
                raise self.chk.runtime_error(f"the '{c}' is only used with input_layout TND and must be None with "
                                             f"input_layout {self.layout}.")

    def other_inputs(self) -> None:
        chk = self.chk
        if self.get("padding_mask") is not None:
            raise chk.runtime_error(f"the '{self.name('padding_mask')}' is a reserved parameter and must be None.")
        for c in ("q_start_idx", "kv_start_idx"):
            m = self.get(c)
            if c in self.rules.names and m is not None and m.rank_known and known(m.numel) and \
                    (m.numel != 1 or m.ndim > 1):
                raise chk.value_error(f"the '{c}' must hold exactly 1 value, but got shape {m.shape}.")
        prefix = self.get("prefix")
        if self.mode in PREFIX_MODES:
            if prefix is None:
                raise chk.runtime_error(f"the 'prefix' is required with sparse_mode {self.mode}, but got None.")
            if prefix.rank_known:
                if prefix.ndim != 1 or not same(prefix.shape[0], self.b):
                    raise chk.runtime_error(f"the 'prefix' must hold one value per batch (B={self.b}), but got "
                                            f"shape {prefix.shape}.")

    # -- dropout mask ---------------------------------------------------------------------------------------
    def drop_mask(self, kv_total: int) -> None:
        """kv_total: N1 * sum_b q_b * kv_b for TND (-1 until the lengths are known)."""
        chk, mask = self.chk, self.get("drop_mask")
        if mask is None:
            return
        if self.keep_prob == 1.0:
            raise chk.runtime_error("the 'drop_mask' must be None when keep_prob is 1.0.")
        if not mask.rank_known:
            return
        if self.tnd:
            want = (UNKNOWN if not known(kv_total) else -(-kv_total // 8),)
            forms = f"(ceil(N1 * sum_b q_b * kv_b / 8),) = {want}" if known(kv_total) else \
                "(ceil(N1 * sum_b q_b * kv_b / 8),)"
        else:
            if known(self.s2) and self.s2 % 8 != 0:
                raise chk.runtime_error(f"the key/value length S2 must be a multiple of 8 when 'drop_mask' is given "
                                        f"(it holds 8 positions per byte), but got S2={self.s2}.")
            want = (self.b, self.n, self.s1, self.s2 // 8 if known(self.s2) else UNKNOWN)
            forms = f"(B, N1, S1, S2 // 8) = {want}"
        if not same_shape(mask.shape, want):
            raise chk.runtime_error(f"the shape of 'drop_mask' must be {forms}, but got {mask.shape}.")

    # -- masks and pse --------------------------------------------------------------------------------------
    def attn_mask(self, longest: Mapping[str, int]) -> None:
        chk, mask = self.chk, self.get("attn_mask")
        if mask is None or not mask.rank_known:
            return
        name = self.name("attn_mask")
        if self.mode in FULL_MASK_MODES:
            if self.tnd:
                sq, skv = longest.get("q", UNKNOWN), longest.get("kv", UNKNOWN)
                fits = full_mask_fits(mask.shape, self.b, self.n, sq, skv, covering=True)
                forms = (f"(B, N1, Sq, Skv), (B, 1, Sq, Skv), (1, N1, Sq, Skv), (1, 1, Sq, Skv) or (Sq, Skv) with "
                         f"B={self.b}, N1={self.n}, Sq >= the longest query batch"
                         + (f" ({sq})" if known(sq) else "") + ", Skv >= the longest key batch"
                         + (f" ({skv})" if known(skv) else ""))
            else:
                fits = full_mask_fits(mask.shape, self.b, self.n, self.s1, self.s2, covering=False)
                forms = (f"(B, N1, S1, S2), (B, 1, S1, S2), (1, N1, S1, S2), (1, 1, S1, S2) or (S1, S2) with "
                         f"B={self.b}, N1={self.n}, S1={self.s1}, S2={self.s2}")
        else:
            compressed = ((masks.COMPRESSED, masks.COMPRESSED),)
            if self.mode == 6:
                compressed += (PREFIX_COMPRESSED_MASK,)
            fits = any(same_shape(mask.shape, c) for c in compressed)
            forms = " or ".join(str(c) for c in compressed) + f" (the compressed mask of sparse_mode {self.mode})"
        if not fits:
            raise chk.runtime_error(f"the '{name}' shape is not valid: it must be {forms}, but got {mask.shape}.")

    def pse(self, longest: Mapping[str, int]) -> None:
        chk, pse = self.chk, self.get("pse")
        if pse is None or not pse.rank_known:
            return
        name = self.name("pse")
        if self.pse_type in ALIBI_PSE_TYPES:
            if not (same_shape(pse.shape, (self.b, self.n)) or same_shape(pse.shape, (self.n,))):
                raise chk.runtime_error(f"the shape of '{name}' (ALiBi slopes, pse_type {self.pse_type}) must be "
                                        f"(B, N1) = ({self.b}, {self.n}) or (N1,) = ({self.n},), but got "
                                        f"{pse.shape}.")
            return
        compressed_ok = self.mode in COMPRESSED_PSE_MODES
        if self.tnd:
            sq, skv = longest.get("q", UNKNOWN), longest.get("kv", UNKNOWN)
            full = pse_fits(pse.shape, self.b, self.n, sq, skv, covering=True)
            want = (f"(B, N1, Sq, Skv) or (1, N1, Sq, Skv) with B={self.b}, N1={self.n}, Sq >= the longest query "
                    f"batch" + (f" ({sq})" if known(sq) else "") + ", Skv >= the longest key batch"
                    + (f" ({skv})" if known(skv) else ""))
            compressed = compressed_ok and pse_fits(pse.shape, self.b, self.n, COMPRESSED_PSE_ROWS, UNKNOWN,
                                                    covering=False) and masks.covers(pse.shape[3], skv)
        else:
            full = pse_fits(pse.shape, self.b, self.n, self.s1, self.s2, covering=False)
            want = f"(B, N1, S1, S2) or (1, N1, S1, S2) = ({self.b}|1, {self.n}, {self.s1}, {self.s2})"
            compressed = compressed_ok and pse_fits(pse.shape, self.b, self.n, COMPRESSED_PSE_ROWS, self.s2,
                                                    covering=False)
        if not (full or compressed):
            rows = COMPRESSED_PSE_ROWS
            raise chk.runtime_error(f"the shape of '{name}' must be {want}; or, with sparse_mode 2 or 3 only, "
                                    f"(B, N1, {rows}, S2) or (1, N1, {rows}, S2) (compressed ALiBi rows); but got "
                                    f"{pse.shape} with sparse_mode {self.mode}.")

    # -- values of lengths ----------------------------------------------------------------------------------
    def length_values(self, values: Mapping[str, Optional[np.ndarray]]) -> Tuple[Dict[str, int], int]:
        """Checks the lengths and prefix known here (constants at compile time, host values in PyNative); returns
        the longest query and key batch (TND) and N1 * sum_b q_b * kv_b (TND; -1 when unknown)."""
        chk, longest, kv_total = self.chk, {}, UNKNOWN
        for c in LENGTH_NAMES:
            if c in self.rules.names and values.get(c) is not None:
                seq_lengths.check_static_types(chk, self.name(c), _flat(values[c]))
        q_batches = kv_batches = None
        if self.tnd:
            q_vals, kv_vals = values.get("actual_seq_qlen"), values.get("actual_seq_kvlen")
            if q_vals is not None and kv_vals is not None and np.asarray(q_vals).size != np.asarray(kv_vals).size:
                raise chk.runtime_error(f"the 'actual_seq_qlen' and 'actual_seq_kvlen' must have the same length "
                                        f"(the batch size), but got {_flat(q_vals)} and {_flat(kv_vals)}.")
            seq_lengths.check_cumulative(chk, "actual_seq_qlen", q_vals, self.s1, "the token count T1 of 'query'")
            seq_lengths.check_cumulative(chk, "actual_seq_kvlen", kv_vals, self.s2, "the token count T2 of 'key'")
            if q_vals is not None:
                q_batches = seq_lengths.from_cumulative(q_vals)
                longest["q"] = int(q_batches.max(initial=0))
            if kv_vals is not None:
                kv_batches = seq_lengths.from_cumulative(kv_vals)
                longest["kv"] = int(kv_batches.max(initial=0))
                if (kv_batches == 0).any():
                    raise chk.value_error(f"the 'actual_seq_kvlen' must give every batch at least one key (0 should "
                                          f"not exist in the per-batch key lengths), but got {_flat(kv_vals)}.")
            if q_batches is not None and kv_batches is not None:
                kv_total = self.n * int((q_batches * kv_batches).sum())
        elif known(self.b, self.s2):
            kv_batches = np.full((self.b,), self.s2, np.int64)
        prefix = values.get("prefix")
        if self.mode in PREFIX_MODES and prefix is not None:
            flat = _flat(prefix)
            if known(self.b) and len(flat) != self.b:
                raise chk.runtime_error(f"the 'prefix' must hold one value per batch (B={self.b}), but got "
                                        f"{len(flat)} values {flat}.")
            for i, p in enumerate(flat):
                upper = int(kv_batches[i]) if kv_batches is not None and i < len(kv_batches) else None
                if p < 0 or (upper is not None and p > upper):
                    bound = "the batch's key length" + (f" {upper}" if upper is not None else "")
                    raise chk.value_error(f"each 'prefix' must be in [0, {bound}], but got {p} for batch {i} in "
                                          f"{flat}.")
        return longest, kv_total


def _flat(values) -> list:
    return [v if not isinstance(v, np.generic) else v.item() for v in np.asarray(values, object).reshape(-1)]


def full_mask_fits(shape: Tuple[int, ...], b: int, n: int, sq: int, skv: int, covering: bool) -> bool:
    """(B|1, N1|1, Sq, Skv) or (Sq, Skv); the last two axes equal to sq / skv, or covering them."""
    if len(shape) == 2:
        lead_ok = True
    elif len(shape) == 4:
        lead_ok = (same(shape[0], b) or shape[0] == 1) and (same(shape[1], n) or shape[1] == 1)
    else:
        return False
    return lead_ok and _rows_cols(shape[-2:], sq, skv, covering)


def pse_fits(shape: Tuple[int, ...], b: int, n: int, sq: int, skv: int, covering: bool) -> bool:
    """(B|1, N1, Sq, Skv), the last two axes equal to sq / skv, or covering them."""
    return (len(shape) == 4 and (same(shape[0], b) or shape[0] == 1) and same(shape[1], n)
            and _rows_cols(shape[2:], sq, skv, covering))


def _rows_cols(dims: Tuple[int, ...], sq: int, skv: int, covering: bool) -> bool:
    if covering:
        return masks.covers(dims[0], sq) and masks.covers(dims[1], skv)
    return same(dims[0], sq) and same(dims[1], skv)


def infer(rules: Rules, m: Mapping[str, Optional[TensorMeta]], attrs: Mapping[str, Any],
          static: Mapping[str, Optional[Tuple[Any, ...]]]) -> None:
    """Every check of shapes, dtypes and constant values, dtypes first."""
    chk = rules.chk
    for c in ("query", "key", "value"):
        if m.get(rules.names[c]) is None:
            raise chk.type_error(f"the '{c}' must be a Tensor, but got None.")
    call = _Call(rules, m, attrs)
    call.check_dtypes()
    call.non_tnd_lengths()
    call.geometry()
    call.other_inputs()
    longest, kv_total = call.length_values({c: static.get(op) for c, op in rules.names.items()})
    call.drop_mask(kv_total)
    call.attn_mask(longest)
    call.pse(longest)


def check_values(rules: Rules, values: Mapping[str, Optional[np.ndarray]], m: Mapping[str, Optional[TensorMeta]],
                 attrs: Mapping[str, Any]) -> None:
    """Checks of Tensor lengths and prefix on the host in PyNative, where every shape is known; the kernel repeats
    them, so Graph mode gets a RuntimeError from it instead."""
    call = _Call(rules, m, attrs)
    call.geometry()
    longest, kv_total = call.length_values({c: values.get(op) for c, op in rules.names.items()})
    if call.tnd:
        call.drop_mask(kv_total)
        call.attn_mask(longest)
        call.pse(longest)

