"""Quantization inputs shared by the inference operators: antiquant of int8 K/V and int8 post-quant output."""
from typing import Optional

from ms_attention.infer.common import Checker, TensorMeta, known, product, same_shape


def check_antiquant(chk: Checker, scale: Optional[TensorMeta], offset: Optional[TensorMeta], kv_dtype: str,
                    layout: str, kvn: int, d: int) -> None:
    """Combined key/value antiquant: row 0 for key, row 1 for value; per tensor (2,) or per channel."""
    kv_int8 = kv_dtype == "int8"
    if offset is not None and scale is None:
        raise chk.runtime_error("the 'antiquant_offset' needs 'antiquant_scale', but 'antiquant_scale' is None.")
    if kv_int8 and scale is None:
        raise chk.runtime_error("int8 'key' and 'value' need 'antiquant_scale', but got None.")
    if scale is None:
        return
    if not kv_int8:
        raise chk.runtime_error(f"the 'antiquant_scale' needs int8 'key' and 'value', but got {kv_dtype}.")
    per_channel = {"BNSD": (2, kvn, 1, d), "BSND": (2, kvn, d), "BSH": (2, product(kvn, d))}[layout]
    if scale.rank_known and not (same_shape(scale.shape, (2,)) or same_shape(scale.shape, per_channel)):
        raise chk.runtime_error(f"the shape of 'antiquant_scale' must be (2,) (per tensor) or {per_channel} "
                                f"(per channel, {layout}), but got {scale.shape}.")
    if offset is not None and scale.rank_known and offset.rank_known and \
            not same_shape(offset.shape, scale.shape):
        raise chk.runtime_error(f"the shape of 'antiquant_offset' must equal that of 'antiquant_scale' "
                                f"{scale.shape}, but got {offset.shape}.")


def check_post_quant(chk: Checker, scale: Optional[TensorMeta], offset: Optional[TensorMeta], n: int, d: int,
                     paged: bool) -> None:
    """quant_scale2 / quant_offset2: per tensor (1 element) or per channel (N*D elements)."""
    if offset is not None and scale is None:
        raise chk.runtime_error("the 'quant_offset2' needs 'quant_scale2', but 'quant_scale2' is None.")
    if scale is None:
        return
    channels = product(n, d)
    if known(scale.numel, channels) and scale.numel not in (1, channels):
        raise chk.runtime_error(f"the 'quant_scale2' must hold 1 (per tensor) or N*D = {channels} (per channel) "
                                f"elements, but got shape {scale.shape}.")
    if offset is not None and known(offset.numel, scale.numel) and offset.numel != scale.numel:
        raise chk.runtime_error(f"the 'quant_offset2' must have as many elements as 'quant_scale2' "
                                f"({scale.numel}), but got shape {offset.shape}.")
    if paged and known(scale.numel) and scale.numel != 1:
        raise chk.runtime_error("per-channel post quantization ('quant_scale2' with N*D elements) is not "
                                "supported with page attention.")


def post_quant_dtype(scale_present: bool, query_dtype: str) -> str:
    """The output is int8 when quant_scale2 is given, else the query dtype."""
    return "int8" if scale_present else query_dtype
