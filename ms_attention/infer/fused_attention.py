"""Checks shared by the prefill and fused inference operators (prompt_flash_attention,
fused_infer_attention_score, fused_infer_attention_score_v2).

Each operator describes itself with `Rules`: its Checker, the argument name it uses for each input (inputs are
known here by fused_infer_attention_score's primitive names; v2 calls the mask `atten_mask`, the separate key
antiquant scale `dequant_scale_key`, ...), and the few rules that differ between operators. `infer` and
`check_values` then run the same checks for all three.

A query of stored length 1 (not TND, no rope) takes the incremental branch when `Rules.decode_branch` is set:
its masks, pse_shift, query limits and dtypes follow incre_flash_attention, whose checks are reused. While the
query length is unknown at compile time (dynamic shapes), what either branch accepts passes, and the kernel
checks the real shapes at run time.
"""
import dataclasses
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np

from ms_attention import opdef
from ms_attention.infer import geometry, masks, paged, quant, seq_lengths
from ms_attention.infer import incre_flash_attention as ifa
from ms_attention.infer.common import UNKNOWN, Checker, TensorMeta, known, same, same_shape

_IFA = opdef.get("incre_flash_attention")
MAX_HEADS, MAX_HEAD_DIM, MAX_GROUP = (_IFA.limit(n) for n in ("max_heads", "max_head_dim", "max_group"))
MAX_BLOCKS_PER_SEQ = _IFA.limit("max_blocks_per_seq")
FLOAT_TYPES = ("float16", "bfloat16")
MASK_TYPES = ("bool", "int8", "uint8")
DEQUANT_TYPES = ("uint64", "float32")
SINK_TYPES = ("float32", "float16", "bfloat16")
FULL_QUANT = ("dequant_scale1", "quant_scale1", "dequant_scale2")
PER_TOKEN_SCALES = (("antiquant_scale", "antiquant_mode"), ("key_antiquant_scale", "key_antiquant_mode"),
                    ("value_antiquant_scale", "value_antiquant_mode"))
SEPARATE_ANTIQUANT = ("key_antiquant_scale", "key_antiquant_offset", "value_antiquant_scale",
                      "value_antiquant_offset")


@dataclasses.dataclass(frozen=True)
class Rules:
    chk: Checker
    names: Mapping[str, str]                # input (FIA primitive name) -> the op's argument name; absent: no input
    query_types: Tuple[str, ...]
    mask_types: Tuple[str, ...] = MASK_TYPES
    decode_branch: bool = True              # query S == 1 follows incre_flash_attention (FIA, v2)
    batched_compressed_mask: bool = False   # (B, 1, 2048, 2048) accepted too (PFA)
    prompt_limits: bool = False             # PFA: bfloat16 needs D % 16 == 0, per-channel post-quant D % 32 == 0
    post_quant_name: Tuple[str, str] = ("quant_scale2", "quant_offset2")


def sparse_mode_attr(chk: Checker, value: Any, error: str) -> int:
    """sparse_mode 0-4; `error` is the Checker method for a value outside (PFA: runtime_error)."""
    return chk.choice_attr("sparse_mode", value, (0, 1, 2, 3, 4), error)


def output_dtypes(query_dtype: str, post_quant: bool) -> Tuple[str, str]:
    """(attention_out, softmax_lse): int8 with post-quant; float16 for an int8 query (full quant) without it."""
    if post_quant:
        out = "int8"
    elif query_dtype == "int8":
        out = "float16"
    else:
        out = query_dtype
    return out, "float32"


class _Call:
    """One call's inputs (by canonical name), attributes and what the checks work out about it."""

    def __init__(self, rules: Rules, m: Mapping[str, Optional[TensorMeta]], attrs: Mapping[str, Any],
                 static: Mapping[str, Optional[Tuple[Any, ...]]]):
        self.rules, self.chk = rules, rules.chk
        self.m = {c: m.get(op) for c, op in rules.names.items()}
        self.static = {c: static.get(op) for c, op in rules.names.items()}
        self.attrs = attrs
        self.n, self.kvn = attrs["num_heads"], attrs["num_key_value_heads"]
        self.layout = attrs["input_layout"]
        self.tnd = self.layout == "TND"
        # BNSD_BSND reads BNSD inputs (only the output is BSND)
        self.in_layout = "BNSD" if self.layout == "BNSD_BSND" else self.layout
        self.paged = self.m.get("block_table") is not None
        self.rope = self.m.get("query_rope") is not None or self.m.get("key_rope") is not None

    def name(self, canonical: str) -> str:
        return self.rules.names[canonical]

    def get(self, canonical: str) -> Optional[TensorMeta]:
        return self.m.get(canonical)

    # -- dtypes ---------------------------------------------------------------------------------------------
    def check_dtypes(self) -> None:
        chk, q, k, v = self.chk, self.m["query"], self.m["key"], self.m["value"]
        chk.dtype_in("query", q, self.rules.query_types)
        if k.dtype != v.dtype:
            raise chk.type_error(f"the dtypes of 'key' and 'value' must be the same, but got {k.dtype} and "
                                 f"{v.dtype}.")
        antiquant = "antiquant_scale" in self.m or "key_antiquant_scale" in self.m
        if q.dtype == "int8" and k.dtype != "int8":
            raise chk.type_error(f"an int8 'query' (full quantization) needs int8 'key' and 'value', but got "
                                 f"{k.dtype}.")
        if k.dtype != q.dtype and not (antiquant and k.dtype == "int8"):
            allowed = f"the same as 'query' ({q.dtype})" + (" or int8 (antiquant)" if antiquant else "")
            raise chk.type_error(f"the dtypes of 'query', 'key' and 'value' must be the same: 'key' and 'value' "
                                 f"must be {allowed}, but got {k.dtype}.")
        chk.dtype_in(self.name("attn_mask"), self.get("attn_mask"), self.rules.mask_types)
        pse = self.get("pse_shift")
        chk.dtype_in("pse_shift", pse, FLOAT_TYPES)
        if pse is not None and not (pse.dtype == q.dtype or (pse.dtype == "float16" and q.dtype == "int8")):
            raise chk.type_error(f"the dtype of 'pse_shift' must match 'query' (float16 for a float16 or int8 query, "
                                 f"bfloat16 for a bfloat16 query), but got {pse.dtype} with a {q.dtype} query.")
        for c in FULL_QUANT:
            if c in self.rules.names:
                chk.dtype_in(self.name(c), self.get(c), ("float32",) if c == "quant_scale1" else DEQUANT_TYPES)
        scale_name, offset_name = self.rules.post_quant_name
        post_types = ("float32", "bfloat16") if q.dtype == "bfloat16" else ("float32",)
        chk.dtype_in(scale_name, self.get("quant_scale2"), post_types)
        chk.dtype_in(offset_name, self.get("quant_offset2"), post_types)
        self._same_dtype("quant_scale2", "quant_offset2")
        for c in ("actual_seq_lengths", "actual_seq_lengths_kv", "actual_shared_prefix_len", "query_padding_size",
                  "kv_padding_size"):
            chk.dtype_in(c, self.get(c), seq_lengths.INT_TYPES)
        chk.dtype_in("block_table", self.get("block_table"), ("int32",))
        for c in ("key_shared_prefix", "value_shared_prefix"):
            if self.get(c) is not None and self.get(c).dtype != k.dtype:
                raise chk.type_error(f"the dtype of '{c}' must be the same as 'key' ({k.dtype}), but got "
                                     f"{self.get(c).dtype}.")
        for c in ("query_rope", "key_rope"):
            if self.get(c) is not None and self.get(c).dtype != q.dtype:
                raise chk.type_error(f"the dtype of '{c}' must be the same as 'query' ({q.dtype}), but got "
                                     f"{self.get(c).dtype}.")
        chk.dtype_in("learnable_sink", self.get("learnable_sink"), SINK_TYPES)
        self._antiquant_dtypes()

    def _same_dtype(self, scale: str, offset: str) -> None:
        s, o = self.get(scale), self.get(offset)
        if s is not None and o is not None and s.dtype != o.dtype:
            raise self.chk.type_error(f"the dtype of '{self.name(offset)}' must be the same as '{self.name(scale)}' "
                                      f"({s.dtype}), but got {o.dtype}.")

    def _antiquant_dtypes(self) -> None:
        """Per tensor / per channel: the query dtype or float32; per token: float32."""
        q_dtype = self.m["query"].dtype
        groups = (("antiquant_scale", "antiquant_offset", self.attrs.get("antiquant_mode", 0)),
                  ("key_antiquant_scale", "key_antiquant_offset", self.attrs.get("key_antiquant_mode", 0)),
                  ("value_antiquant_scale", "value_antiquant_offset", self.attrs.get("value_antiquant_mode", 0)))
        for scale, offset, mode in groups:
            allowed = ("float32",) if mode == quant.PER_TOKEN else tuple(dict.fromkeys((q_dtype, "float32")))
            for c in (scale, offset):
                if self.get(c) is not None and self.get(c).dtype not in allowed:
                    what = "per-token mode 1" if mode == quant.PER_TOKEN else "per-channel / per-tensor mode 0"
                    raise self.chk.type_error(f"the dtype of '{self.name(c)}' must be one of {list(allowed)} "
                                              f"({what}), but got {self.get(c).dtype}.")
            self._same_dtype(scale, offset)

    # -- geometry -------------------------------------------------------------------------------------------
    def query_geometry(self) -> None:
        """B, stored S (T for TND), D of the query; which branch the call takes."""
        chk, q = self.chk, self.m["query"]
        if self.tnd:
            self.b = self._tnd_batch()
            self.sq, self.d = UNKNOWN, UNKNOWN
            if q.rank_known:
                if q.ndim != 3:
                    raise chk.value_error(f"the 'query' must be 3-D (T, N, D) for input_layout TND, but got shape "
                                          f"{q.shape}.")
                self.sq, qn, self.d = q.shape
                if not same(qn, self.n):
                    raise chk.value_error(f"the head axis of 'query' must equal 'num_heads', but got {qn} and "
                                          f"{self.n} (query shape {q.shape}).")
                if self.d == 0:
                    raise chk.value_error(f"the 'query' must not be empty, but got shape {q.shape}.")
        else:
            g = geometry.query_geometry(chk, q, self.in_layout, self.n)
            self.b, self.sq, self.d = g["b"], g["s"], g["d"]
        self.decode = (self.rules.decode_branch and not self.tnd and not self.rope and self.sq == 1)
        self.prefill = self.tnd or self.rope or not self.rules.decode_branch or (known(self.sq) and self.sq != 1)
        if self.decode:     # incre_flash_attention's query rules: float16 / bfloat16, its size limits
            chk.dtype_in("query", q, ifa.FLOAT_TYPES)
            ifa.decode_query_geometry(chk, q, self.in_layout, self.n)
        if self.n > MAX_HEADS or (known(self.d) and self.d > MAX_HEAD_DIM):
            raise chk.value_error(f"N <= {MAX_HEADS} and D <= {MAX_HEAD_DIM} are supported, but got N={self.n}, "
                                  f"D={self.d}.")
        if self.rules.prompt_limits and q.dtype == "bfloat16" and known(self.d) and self.d % 16 != 0:
            raise chk.runtime_error(f"a bfloat16 'query' needs the head dim D aligned to 16, but got D={self.d}.")

    def _tnd_batch(self) -> int:
        """B of a TND call: the number of cumulative query lengths, which TND requires."""
        seq = self.get("actual_seq_lengths")
        if seq is None:
            raise self.chk.runtime_error("the 'actual_seq_lengths' (cumulative query lengths) is required with "
                                         "input_layout TND, but got None.")
        if not seq.rank_known:
            return UNKNOWN
        if seq.ndim != 1:
            raise self.chk.value_error(f"the 'actual_seq_lengths' must be 1-D, but got shape {seq.shape}.")
        return seq.shape[0]

    def kv_geometry(self) -> None:
        """The stored kv length (T_kv for TND; the table's capacity when paged) and the shared prefix length."""
        chk, k, v = self.chk, self.m["key"], self.m["value"]
        geometry.same_kv_shapes(chk, k, v)
        if self.paged:
            kv_lengths = self.get("actual_seq_lengths_kv")
            if kv_lengths is None:
                raise chk.runtime_error("the 'actual_seq_lengths_kv' is required with page attention "
                                        "('block_table' given), but got None.")
            block_size = self.attrs["block_size"]
            cache_block = paged.cache_geometry(chk, k, self.in_layout, self.kvn, self.d)
            self.skv = paged.check_meta(chk, self.m["block_table"], k, self.b, block_size, cache_block, kv_lengths,
                                        "actual_seq_lengths_kv", MAX_BLOCKS_PER_SEQ)
            for c in ("kv_padding_size", "query_padding_size", "key_shared_prefix", "value_shared_prefix"):
                if self.get(c) is not None:
                    raise chk.runtime_error(f"the '{c}' is not supported with page attention ('block_table' "
                                            f"given).")
        else:
            self.skv = geometry.kv_geometry(chk, k, self.in_layout, self.b, self.kvn, self.d)
        self.prefix = self._shared_prefix()

    def _shared_prefix(self) -> int:
        """Checks key_shared_prefix / value_shared_prefix / actual_shared_prefix_len; the prefix's stored length
        (0 without one, -1 if unknown)."""
        chk = self.chk
        kp, vp, length = (self.get(c) for c in ("key_shared_prefix", "value_shared_prefix",
                                                "actual_shared_prefix_len"))
        if kp is None and vp is None:
            if length is not None:
                raise chk.runtime_error("the 'actual_shared_prefix_len' needs 'key_shared_prefix' and "
                                        "'value_shared_prefix', but they are None.")
            return 0
        if (kp is None) != (vp is None):
            raise chk.runtime_error("the 'key_shared_prefix' and 'value_shared_prefix' must both be given or both "
                                    "be None.")
        if self.get("kv_padding_size") is not None:
            raise chk.runtime_error("the shared prefix ('key_shared_prefix') is not supported with "
                                    "'kv_padding_size' (KV left padding).")
        if self.tnd:
            raise chk.runtime_error("the shared prefix ('key_shared_prefix') is not supported with input_layout "
                                    "TND.")
        if self.rope:
            raise chk.runtime_error("the shared prefix ('key_shared_prefix') is not supported with rope "
                                    "('query_rope' / 'key_rope').")
        if any(self.get(scale) is not None and self.attrs.get(mode, 0) == 1 for scale, mode in PER_TOKEN_SCALES):
            raise chk.runtime_error("the shared prefix ('key_shared_prefix') is not supported with per-token "
                                    "antiquant (mode 1).")
        if kp.rank_known and vp.rank_known and not same_shape(vp.shape, kp.shape):
            raise chk.runtime_error(f"the shapes of 'key_shared_prefix' and 'value_shared_prefix' must be the same, "
                                    f"but got {kp.shape} and {vp.shape}.")
        sp = geometry.kv_geometry(chk, kp, self.in_layout, 1, self.kvn, self.d, "key_shared_prefix")
        if length is not None:
            if length.rank_known and length.shape not in ((1,), ()) and known(*length.shape):
                raise chk.value_error(f"the 'actual_shared_prefix_len' must hold 1 value, but got shape "
                                      f"{length.shape}.")
        return sp

    def rope_geometry(self) -> None:
        """query_rope: the query's shape with D_rope for D; key_rope: the key's (or the paged cache's) with D_rope."""
        chk, qr, kr = self.chk, self.get("query_rope"), self.get("key_rope")
        if qr is None and kr is None:
            return
        if (qr is None) != (kr is None):
            raise chk.runtime_error("the 'query_rope' and 'key_rope' must both be given or both be None.")
        q, k = self.m["query"], self.m["key"]
        d_rope = UNKNOWN
        for name, rope, base in (("query_rope", qr, q), ("key_rope", kr, k)):
            if not (rope.rank_known and base.rank_known):
                continue
            base_name = "query" if name == "query_rope" else "key"
            heads = self.n if name == "query_rope" else self.kvn
            # the last axis holds heads * D_rope in a BSH tensor and in a (num_blocks, block_size, kvH) cache
            hidden = k.ndim == 3 if name == "key_rope" and self.paged else self.in_layout == "BSH"
            last = rope.shape[-1]
            if hidden and known(last):
                last = last // heads if last % heads == 0 else 0
            if not (rope.ndim == base.ndim and same_shape(rope.shape[:-1], base.shape[:-1]) and last != 0
                    and same(last, d_rope)):
                raise chk.runtime_error(f"the shape of '{name}' must be that of '{base_name}' {base.shape} with the "
                                        f"head dim D_rope (the same for query and key) in place of D, but got "
                                        f"{rope.shape}.")
            d_rope = last if known(last) else d_rope

    # -- lengths --------------------------------------------------------------------------------------------
    def length_meta(self) -> None:
        chk = self.chk
        q_lens, kv_lens = self.get("actual_seq_lengths"), self.get("actual_seq_lengths_kv")
        for c in ("actual_seq_lengths", "actual_seq_lengths_kv", "actual_shared_prefix_len"):
            seq_lengths.check_static_types(chk, c, self.static.get(c))
        if not self.tnd:
            if not self.decode:
                seq_lengths.check_meta(chk, "actual_seq_lengths", q_lens, self.b)
            seq_lengths.check_meta(chk, "actual_seq_lengths_kv", kv_lens, self.b)
            return
        if kv_lens is None:
            raise chk.runtime_error("the 'actual_seq_lengths_kv' is required with input_layout TND (cumulative "
                                    "key/value lengths, or per batch with page attention), but got None.")
        if kv_lens.rank_known:
            if kv_lens.ndim != 1 or not same(kv_lens.shape[0], self.b):
                raise chk.runtime_error(f"the 'actual_seq_lengths_kv' must have one entry per batch, as many as "
                                        f"'actual_seq_lengths' ({self.b}), but got shape {kv_lens.shape}.")
        for c in ("query_padding_size", "kv_padding_size"):
            if self.get(c) is not None:
                raise chk.runtime_error(f"the '{c}' (left padding) is not supported with input_layout TND.")

    def length_values(self, values: Mapping[str, Optional[np.ndarray]]) -> Dict[str, int]:
        """Checks lengths known here (constants at compile time, host values in PyNative); returns the longest
        query and key/value batch when they are known (for the masks of TND and paged calls)."""
        chk, longest = self.chk, {}
        q_vals, kv_vals = values.get("actual_seq_lengths"), values.get("actual_seq_lengths_kv")
        if self.tnd:
            seq_lengths.check_cumulative(chk, "actual_seq_lengths", q_vals, self.sq, "the token count T of 'query'")
            if q_vals is not None:
                longest["q"] = int(seq_lengths.from_cumulative(q_vals).max(initial=0))
            if self.paged:
                seq_lengths.check_range(chk, "actual_seq_lengths_kv", kv_vals, self.skv,
                                        "max_blocks_per_seq * block_size")
                kv_batches = None if kv_vals is None else np.asarray(kv_vals, np.int64).reshape(-1)
            else:
                seq_lengths.check_cumulative(chk, "actual_seq_lengths_kv", kv_vals, self.skv,
                                             "the token count T of 'key'")
                kv_batches = None if kv_vals is None else seq_lengths.from_cumulative(kv_vals)
            if kv_batches is not None:
                longest["kv"] = int(kv_batches.max(initial=0))
        else:
            if not self.decode:
                seq_lengths.check_range(chk, "actual_seq_lengths", q_vals, self.sq, "the query length S")
            upper = "max_blocks_per_seq * block_size" if self.paged else "the key/value length S"
            seq_lengths.check_range(chk, "actual_seq_lengths_kv", kv_vals, self.skv, upper)
            if kv_vals is not None and self.paged:
                longest["kv"] = int(np.asarray(kv_vals, np.int64).max(initial=0))
        prefix_vals = values.get("actual_shared_prefix_len")
        if prefix_vals is not None:
            if np.asarray(prefix_vals).size != 1:
                raise chk.value_error(f"the 'actual_shared_prefix_len' must hold 1 value, but got "
                                      f"{list(np.asarray(prefix_vals).reshape(-1))}.")
            seq_lengths.check_range(chk, "actual_shared_prefix_len", prefix_vals, self.prefix,
                                    "the length of 'key_shared_prefix'")
        return longest

    def padding(self) -> None:
        for c in ("query_padding_size", "kv_padding_size"):
            seq_lengths.check_padding_meta(self.chk, c, self.get(c))

    # -- masks and pse --------------------------------------------------------------------------------------
    def masks(self, longest: Mapping[str, int]) -> None:
        chk, mask, pse = self.chk, self.get("attn_mask"), self.get("pse_shift")
        if self.tnd:
            sq, skv = longest.get("q", UNKNOWN), longest.get("kv", UNKNOWN)
        else:
            # a paged call's longest sequence is only known from the values (check_values)
            sq = self.sq
            skv = UNKNOWN if self.paged or not known(self.skv, self.prefix) else self.skv + self.prefix
        b, mode = self.b, self.attrs["sparse_mode"]
        mask_name = self.name("attn_mask")
        if mask is not None and mask.rank_known:
            fits, forms = [], []
            if self.decode or not self.prefill:
                fits.append(ifa.decode_mask_fits(mask.shape, b, skv, self.paged))
                forms.append(ifa.decode_mask_forms(b, skv, self.paged) + " (query length 1)")
                if mask.ndim >= 2 and mask.shape[0] == 1:     # one row for every batch
                    fits.append(ifa.decode_mask_fits((b,) + tuple(mask.shape[1:]), b, skv, self.paged))
                if mode in masks.BAND_MODES:   # the compressed mask of a causal/band network, ignored by decode
                    fits.append(masks.compressed_mask_fits(mask.shape, b, self.rules.batched_compressed_mask))
                    forms.append(masks.compressed_mask_forms(self.rules.batched_compressed_mask) +
                                 f" (compressed mask of sparse_mode {mode}, ignored for a query of length 1)")
            if not self.decode:
                if mode in masks.BAND_MODES:
                    fits.append(masks.compressed_mask_fits(mask.shape, b, self.rules.batched_compressed_mask))
                    forms.append(masks.compressed_mask_forms(self.rules.batched_compressed_mask) +
                                 f" (compressed mask of sparse_mode {mode})")
                else:
                    fits.append(masks.prefill_mask_fits(mask.shape, b, sq, skv))
                    forms.append(masks.prefill_mask_forms(b, sq, skv))
            if not any(fits):
                raise chk.runtime_error(f"the 'attn_mask' shape is not valid: '{mask_name}' must be "
                                        f"{'; or '.join(forms)}, but got {mask.shape}.")
        if pse is None:
            return
        if self.tnd:
            raise chk.runtime_error("the 'pse_shift' is not supported with input_layout TND.")
        if not pse.rank_known:
            return
        fits = [masks.prefill_pse_fits(pse.shape, b, self.n, 1 if self.decode else sq, skv)]
        forms = [masks.prefill_pse_forms(b, self.n, 1 if self.decode else sq, skv)]
        if self.decode or not self.prefill:
            fits.append(ifa.decode_pse_fits(pse.shape, b, self.n, skv, self.paged))
            forms.append(ifa.decode_pse_forms(b, self.n, skv, self.paged))
        if not any(fits):
            raise chk.runtime_error(f"the shape of 'pse_shift' must be {' or '.join(forms)}, but got {pse.shape}.")
        if self.decode:
            ifa.check_pse_head_dim(chk, self.d)

    # -- quantization ---------------------------------------------------------------------------------------
    def quantization(self) -> None:
        chk, q, k = self.chk, self.m["query"], self.m["key"]
        full = [c for c in FULL_QUANT if self.get(c) is not None]
        if q.dtype == "int8":
            missing = [self.name(c) for c in FULL_QUANT if c in self.rules.names and self.get(c) is None]
            if missing:
                raise chk.runtime_error(f"an int8 'query' (full quantization) needs {missing}, but they are None.")
            for c in full:
                if self.get(c).rank_known and known(self.get(c).numel) and self.get(c).numel != 1:
                    raise chk.value_error(f"the '{self.name(c)}' must have shape (1,) (per tensor), but got "
                                          f"{self.get(c).shape}.")
        elif full:
            raise chk.runtime_error(f"the {[self.name(c) for c in full]} (full quantization) need an int8 "
                                    f"'query', but got {q.dtype}.")
        combined = self.get("antiquant_scale") is not None or self.get("antiquant_offset") is not None
        separate = [c for c in SEPARATE_ANTIQUANT if self.get(c) is not None]
        if combined and separate:
            raise chk.runtime_error(f"the combined 'antiquant_scale' / 'antiquant_offset' and the separate "
                                    f"{[self.name(c) for c in separate]} cannot be used together.")
        if q.dtype == "int8":
            if combined or separate:
                raise chk.runtime_error("antiquant (int8 'key' and 'value' with a float 'query') needs a float16 "
                                        "or bfloat16 'query', but got int8.")
        elif separate:
            if k.dtype != "int8":
                raise chk.runtime_error(f"the {[self.name(c) for c in separate]} need int8 'key' and 'value', but "
                                        f"got {k.dtype}.")
            quant.check_separate_antiquant(
                chk, tuple(self.name(c) for c in SEPARATE_ANTIQUANT), tuple(self.get(c) for c in SEPARATE_ANTIQUANT),
                (self.attrs["key_antiquant_mode"], self.attrs["value_antiquant_mode"]), self.kvn, self.d, self.b,
                self.skv, self.paged)
        elif "antiquant_scale" in self.rules.names:
            quant.check_antiquant(chk, self.get("antiquant_scale"), self.get("antiquant_offset"), k.dtype,
                                  self.in_layout, self.kvn, self.d, self.attrs["antiquant_mode"], self.b, self.skv,
                                  self.paged)
        elif k.dtype == "int8":     # an op with only the separate scales (v2)
            scales = [self.name(c) for c in SEPARATE_ANTIQUANT[::2]]
            raise chk.runtime_error(f"int8 'key' and 'value' need {scales}, but got None.")
        scale = self.get("quant_scale2")
        quant.check_post_quant(chk, scale, self.get("quant_offset2"), self.n, self.d, self.paged and self.decode,
                               self.rules.post_quant_name)
        if self.rules.prompt_limits and scale is not None and known(scale.numel) and scale.numel != 1 and \
                known(self.d) and self.d % 32 != 0:
            raise chk.runtime_error(f"per-channel post quantization ('{self.rules.post_quant_name[0]}' with N*D "
                                    f"elements) needs the head dim D 32-byte aligned, but got D={self.d}.")

    def sink(self) -> None:
        sink = self.get("learnable_sink")
        if sink is not None and sink.rank_known and not same_shape(sink.shape, (self.n,)):
            raise self.chk.runtime_error(f"the shape of 'learnable_sink' must be (N,) = ({self.n},), one value per "
                                         f"query head, but got {sink.shape}.")


def infer(rules: Rules, m: Mapping[str, Optional[TensorMeta]], attrs: Mapping[str, Any],
          static: Mapping[str, Optional[Tuple[Any, ...]]]) -> None:
    """Every check of shapes, dtypes and constant values, in the order the documented errors expect (dtypes
    first). `attrs` holds the normalised attributes under FIA's names (num_heads, num_key_value_heads,
    input_layout, sparse_mode, block_size, antiquant_mode, key_antiquant_mode, value_antiquant_mode)."""
    if m.get(rules.names["query"]) is None or m.get(rules.names["key"]) is None or \
            m.get(rules.names["value"]) is None:
        raise rules.chk.value_error("the 'query', 'key' and 'value' must be non-empty Tensors.")
    call = _Call(rules, m, attrs, static)
    call.check_dtypes()
    call.query_geometry()
    call.rope_geometry()
    call.kv_geometry()
    call.length_meta()
    call.padding()
    values = {c: call.static.get(c) for c in ("actual_seq_lengths", "actual_seq_lengths_kv",
                                               "actual_shared_prefix_len")}
    longest = call.length_values(values)
    call.masks(longest)
    call.quantization()
    call.sink()


def check_values(rules: Rules, values: Mapping[str, Optional[np.ndarray]], m: Mapping[str, Optional[TensorMeta]],
                 attrs: Mapping[str, Any]) -> None:
    """Checks of run-time values (Tensor lengths, block table) on the host in PyNative, where every shape is
    known. The kernel repeats them, so Graph mode gets a RuntimeError from it instead."""
    call = _Call(rules, m, attrs, {})
    call.query_geometry()
    call.kv_geometry()
    canonical = {c: values.get(op) for c, op in rules.names.items()}
    longest = call.length_values(canonical)
    if call.tnd:
        call.masks(longest)
    if call.paged and "kv" in longest:
        kv_lens = seq_lengths.per_batch(canonical["actual_seq_lengths_kv"], call.b)
        # inputs indexed by the logical kv position must reach the longest sequence
        indexed = ["attn_mask", "pse_shift"] + [scale for scale, mode in PER_TOKEN_SCALES
                                                if attrs.get(mode) == quant.PER_TOKEN]
        for c in indexed:
            if c in rules.names:
                paged.check_covers_longest(call.chk, rules.names[c], call.get(c), longest["kv"])
        if canonical.get("block_table") is not None:
            paged.check_table_values(call.chk, canonical["block_table"], kv_lens, attrs["block_size"],
                                     m[rules.names["key"]].shape[0])
