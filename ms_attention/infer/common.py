"""Shared pieces of validation and inference: tensor metadata, dtype names, MindSpore-style messages."""
import dataclasses
from typing import Any, Optional, Tuple

LAYOUT_ENUM = {"BSH": 0, "BNSD": 1, "SBH": 2, "BSND": 3, "TND": 4, "TH": 5, "NSD": 6, "SH": 7, "BNSD_BSND": 8,
               "PA_BSND": 9}
INT32_MAX = 2 ** 31 - 1


@dataclasses.dataclass(frozen=True)
class TensorMeta:
    shape: Tuple[int, ...]
    dtype: str             # 'float16', 'bfloat16', 'int8', 'bool', ... (MindSpore's names, lower case)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


def dtype_name(dtype: Any) -> str:
    """MindSpore dtype, TensorType (what Custom's infer receives) or numpy dtype -> 'float16' style name."""
    if hasattr(dtype, "element_type"):
        dtype = dtype.element_type()
    name = str(dtype).lower()
    return {"float": "float32", "double": "float64", "half": "float16"}.get(name, name)


def meta(shape: Any, dtype: Any) -> Optional[TensorMeta]:
    """An absent optional input travels as a shape-(0,) tensor (or None): both mean 'not given'."""
    if shape is None:
        return None
    shape = tuple(int(d) for d in shape)
    if shape == (0,):
        return None
    return TensorMeta(shape, dtype_name(dtype))


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

    def dtype_in(self, name: str, m: Optional[TensorMeta], allowed: Tuple[str, ...]) -> None:
        if m is not None and m.dtype not in allowed:
            raise self.type_error(f"the dtype of '{name}' must be one of {list(allowed)}, but got {m.dtype}.")
