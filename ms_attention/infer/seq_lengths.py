"""Per-batch sequence lengths (actual_seq_lengths and its kin), checked once here for every operator: the shape
of a Tensor input at compile time, the values of a tuple at compile time, the values of a Tensor on the host in
PyNative. The kernel repeats the value check at run time, for memory safety."""
from typing import Any, Optional, Sequence

import numpy as np

from ms_attention.infer.common import Checker, TensorMeta, is_int, known

INT_TYPES = ("int64", "int32")


def check_meta(chk: Checker, name: str, m: Optional[TensorMeta], b: int) -> None:
    """A 1-D int vector of size 1 (applies to every batch) or B."""
    if m is None or not m.rank_known:
        return
    if m.ndim != 1:
        raise chk.value_error(f"the '{name}' must be 1-D, but got shape {m.shape}.")
    size = m.shape[0]
    if known(size, b) and size not in (1, b):
        raise chk.value_error(f"the size of '{name}' must be 1 or B ({b}), but got {size}.")


def check_static_types(chk: Checker, name: str, values: Optional[Sequence[Any]]) -> None:
    for value in values or ():
        if not is_int(value):
            raise chk.type_error(f"the '{name}' must hold ints, but got {value!r} of type {type(value).__name__}.")


def check_range(chk: Checker, name: str, values: Optional[Sequence[int]], upper: int, what: str) -> None:
    """Every length in [0, upper]; `upper` unknown (-1) means the kernel checks it."""
    if values is None or not known(upper):
        return
    flat = [int(v) for v in np.asarray(values).reshape(-1)]
    bad = [v for v in flat if v < 0 or v > upper]
    if bad:
        raise chk.value_error(f"each '{name}' must be in [0, {upper}] ({what}), but got {bad[0]} in {flat}.")


def per_batch(values: Sequence[int], b: int) -> np.ndarray:
    """Length-1 vectors apply to every batch."""
    flat = np.asarray(values, np.int64).reshape(-1)
    return np.broadcast_to(flat, (b,)) if flat.size == 1 else flat


def check_cumulative(chk: Checker, name: str, values: Optional[Sequence[int]], total: int, what: str) -> None:
    """TND lengths: prefix sums without a leading 0, so non-negative, non-decreasing, the last equal to the
    total token count `total` (not checked when unknown, -1)."""
    if values is None:
        return
    flat = [int(v) for v in np.asarray(values).reshape(-1)]
    if not flat:
        raise chk.value_error(f"the '{name}' must hold one cumulative length per batch for input_layout TND, but "
                              f"got none.")
    previous = 0
    for v in flat:
        if v < previous:
            raise chk.value_error(f"the '{name}' must be cumulative for input_layout TND (non-negative and "
                                  f"non-decreasing prefix sums), but got {v} after {previous} in {flat}.")
        previous = v
    if known(total) and flat[-1] != total:
        raise chk.value_error(f"the last of the cumulative '{name}' must equal {what} ({total}), but got "
                              f"{flat[-1]} in {flat}.")


def from_cumulative(values: Sequence[int]) -> np.ndarray:
    """Per-batch lengths from TND prefix sums."""
    return np.diff(np.asarray(values, np.int64).reshape(-1), prepend=0)


def check_padding_meta(chk: Checker, name: str, m: Optional[TensorMeta]) -> None:
    """A left padding size is one value: shape () or (1,)."""
    if m is not None and m.rank_known and m.shape not in ((), (1,)) and known(*m.shape):
        raise chk.value_error(f"the shape of '{name}' must be () or (1,), but got {m.shape}.")
