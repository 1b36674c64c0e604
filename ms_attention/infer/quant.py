"""Quantization inputs shared by the inference operators: antiquant of int8 K/V (combined or separate key/value
scales; per tensor, per channel or per token) and int8 post-quant output."""
from typing import Optional, Tuple

from ms_attention.infer.common import Checker, TensorMeta, known, product, same, same_shape

PER_TOKEN = 1


def per_token_fits(shape: Tuple[int, ...], lead: Tuple[int, ...], b: int, s_needed: int, paged: bool) -> bool:
    """(*lead, B, S') with S' covering the kv positions read: the stored S for a contiguous cache (or more),
    anything for a paged one (the longest sequence is checked against the values)."""
    if len(shape) != len(lead) + 2 or not same_shape(shape[:len(lead)], lead) or not same(shape[-2], b):
        return False
    last = shape[-1]
    if not known(last):
        return True
    return last >= 1 if paged or not known(s_needed) else last >= s_needed


def check_antiquant(chk: Checker, scale: Optional[TensorMeta], offset: Optional[TensorMeta], kv_dtype: str,
                    layout: str, kvn: int, d: int, mode: int = 0, b: int = -1, s_needed: int = -1,
                    paged: bool = False) -> None:
    """Combined key/value antiquant: row 0 for key, row 1 for value; per tensor (2,) or per channel (mode 0), per
    token (2, B, S) (mode 1)."""
    kv_int8 = kv_dtype == "int8"
    if offset is not None and scale is None:
        raise chk.runtime_error("the 'antiquant_offset' needs 'antiquant_scale', but 'antiquant_scale' is None.")
    if kv_int8 and scale is None:
        raise chk.runtime_error("int8 'key' and 'value' need 'antiquant_scale', but got None.")
    if scale is None:
        return
    if not kv_int8:
        raise chk.runtime_error(f"the 'antiquant_scale' needs int8 'key' and 'value', but got {kv_dtype}.")
    if mode == PER_TOKEN:
        if scale.rank_known and not per_token_fits(scale.shape, (2,), b, s_needed, paged):
            raise chk.runtime_error(f"the shape of 'antiquant_scale' must be (2, B, S) with B={b} and S covering "
                                    f"the key/value length for antiquant_mode 1 (per token), but got {scale.shape}.")
    else:
        per_channel = {"BNSD": (2, kvn, 1, d), "BSND": (2, kvn, d), "TND": (2, kvn, d),
                       "BSH": (2, product(kvn, d))}[layout]
        if scale.rank_known and not (same_shape(scale.shape, (2,)) or same_shape(scale.shape, per_channel)):
            raise chk.runtime_error(f"the shape of 'antiquant_scale' must be (2,) (per tensor) or {per_channel} "
                                    f"(per channel, {layout}), but got {scale.shape}.")
    if offset is not None and scale.rank_known and offset.rank_known and \
            not same_shape(offset.shape, scale.shape):
        raise chk.runtime_error(f"the shape of 'antiquant_offset' must equal that of 'antiquant_scale' "
                                f"{scale.shape}, but got {offset.shape}.")


def check_separate_antiquant(chk: Checker, names: Tuple[str, str, str, str],
                             metas: Tuple[Optional[TensorMeta], ...], modes: Tuple[int, int], kvn: int, d: int,
                             b: int, s_needed: int, paged: bool) -> None:
    """Separate key and value antiquant (names and metas: key scale, key offset, value scale, value offset):
    both scales or neither, both offsets or neither; per mode, per channel (kvN, 1, D) / (kvN, D) / (kvH,) or per
    tensor (1,) for 0, per token (B, S) for 1."""
    k_scale, k_offset, v_scale, v_offset = metas
    for scale_name, offset_name, scale, offset in ((names[0], names[1], k_scale, k_offset),
                                                   (names[2], names[3], v_scale, v_offset)):
        if offset is not None and scale is None:
            raise chk.runtime_error(f"the '{offset_name}' needs '{scale_name}', but '{scale_name}' is None.")
    if (k_scale is None) != (v_scale is None):
        raise chk.runtime_error(f"the '{names[0]}' and '{names[2]}' must both be given or both be None.")
    if (k_offset is None) != (v_offset is None):
        raise chk.runtime_error(f"the '{names[1]}' and '{names[3]}' must both be given or both be None.")
    per_channel = ((kvn, 1, d), (kvn, d), (product(kvn, d),), (1,))
    for (scale_name, offset_name, scale, offset), mode in zip(((names[0], names[1], k_scale, k_offset),
                                                               (names[2], names[3], v_scale, v_offset)), modes):
        if scale is None or not scale.rank_known:
            continue
        if mode == PER_TOKEN:
            if not per_token_fits(scale.shape, (), b, s_needed, paged):
                raise chk.runtime_error(f"the shape of '{scale_name}' must be (B, S) with B={b} and S covering the "
                                        f"key/value length (per-token mode 1), but got {scale.shape}.")
        elif not any(same_shape(scale.shape, w) for w in per_channel):
            raise chk.runtime_error(f"the shape of '{scale_name}' must be (kvN, 1, D), (kvN, D), (kvN*D,) with "
                                    f"kvN={kvn}, D={d} (per channel) or (1,) (per tensor), but got {scale.shape}.")
        if offset is not None and offset.rank_known and not same_shape(offset.shape, scale.shape):
            raise chk.runtime_error(f"the shape of '{offset_name}' must equal that of '{scale_name}' {scale.shape}, "
                                    f"but got {offset.shape}.")


def check_post_quant(chk: Checker, scale: Optional[TensorMeta], offset: Optional[TensorMeta], n: int, d: int,
                     paged: bool, names: Tuple[str, str] = ("quant_scale2", "quant_offset2")) -> None:
    """quant_scale2 / quant_offset2: per tensor (1 element) or per channel (N*D elements)."""
    scale_name, offset_name = names
    if offset is not None and scale is None:
        raise chk.runtime_error(f"the '{offset_name}' needs '{scale_name}', but '{scale_name}' is None.")
    if scale is None:
        return
    channels = product(n, d)
    if known(scale.numel, channels) and scale.numel not in (1, channels):
        raise chk.runtime_error(f"the '{scale_name}' must hold 1 (per tensor) or N*D = {channels} (per channel) "
                                f"elements, but got shape {scale.shape}.")
    if offset is not None and known(offset.numel, scale.numel) and offset.numel != scale.numel:
        raise chk.runtime_error(f"the '{offset_name}' must have as many elements as '{scale_name}' "
                                f"({scale.numel}), but got shape {offset.shape}.")
    if paged and known(scale.numel) and scale.numel != 1:
        raise chk.runtime_error(f"per-channel post quantization ('{scale_name}' with N*D elements) is not "
                                f"supported with page attention.")


def post_quant_dtype(scale_present: bool, query_dtype: str) -> str:
    """The output is int8 when quant_scale2 is given, else the query dtype."""
    return "int8" if scale_present else query_dtype
