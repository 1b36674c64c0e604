"""Helpers the generated functionals (ops.py) call. They run in PyNative and are parsed by Graph mode, so they
keep to MindSpore's graph syntax; whatever needs plain Python runs in `constexpr` functions, which Graph mode
evaluates at compile time on constant arguments."""
import numpy as np
from mindspore import Tensor, context
from mindspore.common import dtype as mstype
from mindspore.ops import constexpr

from ms_attention.infer import registry

# Absent optional inputs travel to the kernel as shape-(0,) tensors.
EMPTY = Tensor(np.zeros((0,), np.float32))
EMPTY_INT64 = Tensor(np.zeros((0,), np.int64))


@constexpr
def on_ascend():
    return context.get_context("device_target") == "Ascend"


@constexpr
def _check_tensor_list(prim_name, arg_name, size):
    if size != 1:
        raise ValueError(f"For '{prim_name}', the '{arg_name}' must be a Tensor or a list/tuple of exactly one "
                         f"Tensor, but got a sequence of {size}.")
    return True


def single_tensor(x, prim_name, arg_name):
    """key/value may be a Tensor or a one-element list/tuple of Tensors, as in MindSpore."""
    if isinstance(x, (list, tuple)):
        _check_tensor_list(prim_name, arg_name, len(x))
        return x[0]
    return x


def or_empty(x):
    if x is None:
        return EMPTY
    return x


@constexpr
def _int_sequence_tensor(prim_name, arg_name, values):
    for v in values:
        if not isinstance(v, int) or isinstance(v, bool):
            raise TypeError(f"For '{prim_name}', the '{arg_name}' must hold ints, but got {v!r} of type "
                            f"{type(v).__name__}.")
    return Tensor(np.asarray(values, np.int64).reshape(-1))


def int_tensor(x, prim_name, arg_name):
    """A sequence-length style input: None, a list/tuple of ints, or an int Tensor (passed as is)."""
    if x is None:
        return EMPTY_INT64
    if isinstance(x, (list, tuple)):
        return _int_sequence_tensor(prim_name, arg_name, x)
    return x


@constexpr
def static_ints(x):
    """The constant values of a list/tuple input (checked at compile time); None for a Tensor or None."""
    if isinstance(x, (list, tuple)):
        return tuple(x)
    return None


@constexpr
def attrs_tensor(op_name, values):
    """The float64 attribute vector a native kernel reads, after the op's own attribute checks."""
    return Tensor(np.asarray(registry.kernel_attrs(op_name, values), np.float64))


def meta(x):
    if x is None:
        return None
    return (x.shape, x.dtype)


@constexpr
def check_on_host(op_name, metas, attr_values, static):
    """Validation for the Ascend path, where the native primitive runs instead of our Custom op."""
    registry.validate(op_name, metas, attr_values, static)
    return True
