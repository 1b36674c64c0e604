"""Shared pieces of validation and inference: tensor metadata, dtype names, MindSpore-style messages.

Shapes may be partly unknown at Graph-mode compile time (`Cell.set_inputs` with None dims): an unknown dim is
-1 and an unknown rank is the shape (-2,). Checks compare only what is known (`same`), and the kernel checks the
rest at run time against the real shapes.
"""
import dataclasses
from typing import Any, Optional, Sequence, Tuple

from ms_attention import opdef

LAYOUT_ENUM = opdef.enum("input_layout")
INT32_MAX = 2 ** 31 - 1
UNKNOWN = -1          # a dim unknown until run time
UNKNOWN_RANK = -2     # MindSpore's shape (-2,): the rank itself is unknown


def same(a: int, b: int) -> bool:
    """Equal, or at least one side unknown."""
    return a < 0 or b < 0 or a == b


def known(*dims: int) -> bool:
    return all(d >= 0 for d in dims)


def product(*dims: int) -> int:
    """Product of dims, unknown (-1) when any is unknown."""
    if not known(*dims):
        return UNKNOWN
    n = 1
    for d in dims:
        n *= d
    return n


def same_shape(shape: Sequence[int], want: Sequence[Optional[int]]) -> bool:
    """shape matches want, where None in want (or -1 on either side) accepts any size."""
    return len(shape) == len(want) and all(w is None or same(s, w) for s, w in zip(shape, want))


@dataclasses.dataclass(frozen=True)
class TensorMeta:
    shape: Tuple[int, ...]
    dtype: str             # 'float16', 'bfloat16', 'int8', 'bool', ... (MindSpore's names, lower case)

    @property
    def rank_known(self) -> bool:
        return self.shape != (UNKNOWN_RANK,)

    @property
    def ndim(self) -> int:
        """The rank; -2 when unknown (check rank_known first where it matters)."""
        return len(self.shape) if self.rank_known else UNKNOWN_RANK

    @property
    def numel(self) -> int:
        return product(*self.shape) if self.rank_known else UNKNOWN


def dtype_name(dtype: Any) -> str:
    """MindSpore dtype, TensorType (what Custom's infer receives) or numpy dtype -> 'float16' style name."""
    if hasattr(dtype, "element_type"):
        dtype = dtype.element_type()
    name = str(dtype).lower()
    return {"float": "float32", "double": "float64", "half": "float16"}.get(name, name)


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class Checker:
    """Formats errors the way MindSpore does: For 'Prim', the 'arg' must ..., but got ...."""

    def __init__(self, prim_name: str):
        self.prim_name = prim_name

    def _msg(self, text: str) -> str:
        return f"For '{self.prim_name}', {text}"

    def type_error(self, text: str) -> TypeError:
        return TypeError(self._msg(text))

    def value_error(self, text: str) -> ValueError:
        return ValueError(self._msg(text))

    def runtime_error(self, text: str) -> RuntimeError:
        return RuntimeError(self._msg(text))

    def int_attr(self, name: str, value: Any) -> int:
        if not is_int(value):
            raise self.type_error(f"the '{name}' must be an int, but got {value!r} of type "
                                  f"{type(value).__name__}.")
        return value

    def float_attr(self, name: str, value: Any) -> float:
        if not is_number(value):
            raise self.type_error(f"the '{name}' must be a float (double), but got {value!r} of type "
                                  f"{type(value).__name__}.")
        return float(value)

    def str_attr(self, name: str, value: Any) -> str:
        if not isinstance(value, str):
            raise self.type_error(f"the '{name}' must be a str, but got {value!r} of type "
                                  f"{type(value).__name__}.")
        return value

    def bool_attr(self, name: str, value: Any) -> bool:
        if not isinstance(value, bool):
            raise self.type_error(f"the '{name}' must be a bool, but got {value!r} of type {type(value).__name__}.")
        return value

    def choice_attr(self, name: str, value: Any, allowed: Tuple[int, ...], error: str = "value_error") -> int:
        """An int attribute restricted to `allowed`; `error` names the Checker method for a value outside."""
        value = self.int_attr(name, value)
        if value not in allowed:
            raise getattr(self, error)(f"the '{name}' must be one of {list(allowed)}, but got {value}.")
        return value

    def dtype_in(self, name: str, m: Optional[TensorMeta], allowed: Tuple[str, ...]) -> None:
        if m is not None and m.dtype not in allowed:
            raise self.type_error(f"the dtype of '{name}' must be one of {list(allowed)}, but got {m.dtype}.")
