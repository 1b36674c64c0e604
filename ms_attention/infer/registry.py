"""Op name -> its infer module, with the OpDef bookkeeping (argument names, the kernel's attribute vector) done
once here.

An infer module provides check_attrs(**init_args) -> attrs, infer(metas, attrs, static), output_dtypes(attrs,
dtypes) and check_values(values, metas, attrs), plus VALUE_INPUTS. Ops without one are declared but have no CPU
implementation yet.
"""
import functools
import importlib
from typing import Any, Dict, Sequence, Tuple

from ms_attention import opdef
from ms_attention.infer.common import LAYOUT_ENUM


@functools.lru_cache(maxsize=None)
def module(op_name: str):
    try:
        return importlib.import_module(f"ms_attention.infer.{op_name}")
    except ModuleNotFoundError:
        return None


def attribute_names(op_name: str) -> Tuple[str, ...]:
    return tuple(a.name for a in opdef.get(op_name).attributes)


def check_attrs(op_name: str, values: Sequence[Any]) -> Dict[str, Any]:
    """The op's attribute checks (TypeError / ValueError as documented); returns the normalised attributes."""
    return module(op_name).check_attrs(**dict(zip(attribute_names(op_name), values)))


def attribute_vector(op_name: str, attrs: Dict[str, Any], present: Sequence[bool]) -> Tuple[float, ...]:
    """The float64 vector a native kernel reads (kernel_abi.h): every scalar argument in YAML order (attr::),
    strings through their enum, bools as 0/1, absent optional scalars as NaN; then one flag per tensor input,
    1 when given (even as an empty tensor) and 0 when absent."""
    vector = []
    for arg in opdef.get(op_name).attributes:
        value = attrs[arg.name]
        if arg.arg_handler == "str_to_enum":
            value = LAYOUT_ENUM[value.upper()]
        vector.append(float("nan") if value is None else float(value))
    return tuple(vector) + tuple(1.0 if p else 0.0 for p in present)


def input_names(op_name: str) -> Tuple[str, ...]:
    """The tensor inputs the caller provides, in the primitive's order."""
    return tuple(a.name for a in opdef.get(op_name).tensor_inputs if not a.generated)


def static_names(op_name: str) -> Tuple[str, ...]:
    return tuple(a.name for a in opdef.get(op_name).tensor_inputs if a.is_int_sequence)

