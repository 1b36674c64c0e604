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

