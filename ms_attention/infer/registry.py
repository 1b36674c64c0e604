"""Op name -> its infer module, with the OpDef bookkeeping (argument positions) done once here.

An infer module provides check_attrs(**init_args), kernel_attrs(attrs), infer(metas, attrs, static) and
check_values(values, metas, attrs). Ops without one are declared but have no CPU implementation yet.
"""
import importlib
from typing import Any, Dict, Optional, Sequence, Tuple

from ms_attention import opdef
from ms_attention.infer.common import TensorMeta, meta


def module(op_name: str):
    try:
        return importlib.import_module(f"ms_attention.infer.{op_name}")
    except ModuleNotFoundError:
        return None


def check_attrs(op_name: str, values: Sequence[Any]) -> Dict[str, Any]:
    op = opdef.get(op_name)
    names = [a.name for a in op.init_args]
    return module(op_name).check_attrs(**dict(zip(names, values)))


def kernel_attrs(op_name: str, values: Sequence[Any]) -> Tuple[float, ...]:
    mod = module(op_name)
    if mod is None:
        return ()
    return mod.kernel_attrs(check_attrs(op_name, values))


def input_names(op_name: str) -> Tuple[str, ...]:
    return tuple(a.name for a in opdef.get(op_name).inputs if not a.generated)


def static_names(op_name: str) -> Tuple[str, ...]:
    return tuple(a.name for a in opdef.get(op_name).inputs if a.is_int_sequence)


def metas_by_name(op_name: str, metas: Sequence[Optional[TensorMeta]]) -> Dict[str, Optional[TensorMeta]]:
    return dict(zip(input_names(op_name), metas))


def static_by_name(op_name: str, static: Optional[Sequence[Any]]) -> Dict[str, Any]:
    return dict(zip(static_names(op_name), static or ()))


def validate(op_name: str, raw_metas: Sequence[Any], attr_values: Sequence[Any],
             static: Optional[Sequence[Any]]):
    """raw_metas: (shape, dtype) pairs or None, in input order. Returns the op's (shape, dtype name)."""
    mod = module(op_name)
    if mod is None:
        return None
    attrs = check_attrs(op_name, attr_values)
    metas = [None if m is None else meta(m[0], m[1]) for m in raw_metas]
    return mod.infer(metas_by_name(op_name, metas), attrs, static_by_name(op_name, static))
