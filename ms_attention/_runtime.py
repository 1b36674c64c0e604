"""Helpers the generated code (ops.py, primitives.py) calls. They run in PyNative and are parsed by Graph mode,
so they keep to MindSpore's graph syntax; whatever needs plain Python runs in `constexpr` functions, which Graph
mode evaluates at compile time on constant arguments."""
import numpy as np
from mindspore import Tensor, context
from mindspore.ops import constexpr
from mindspore.ops._primitive_cache import _get_cache_prim

# Absent optional inputs travel to the kernel as shape-(0,) tensors.
EMPTY = Tensor(np.zeros((0,), np.float32))
EMPTY_INT64 = Tensor(np.zeros((0,), np.int64))

# One primitive instance per class and constructor arguments in PyNative; a new one per graph in Graph mode
# (MindSpore's own cache for its functionals).
cached = _get_cache_prim


@constexpr
def check_attrs(op_name, values):
    """A primitive's __init__ checks (also when the primitive is created inside a graph)."""
    from ms_attention import primitive_base  # late: primitive_base imports the kernel loader
    primitive_base.check_attrs(op_name, values)
    return True


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
def _int_sequence_tensor(values):
    return Tensor(np.asarray(values, np.int64).reshape(-1))


def int_tensor(x):
    """A sequence-length style input for the kernel: None, a list/tuple of ints (already validated), or an int
    Tensor (passed as is)."""
    if x is None:
        return EMPTY_INT64
    if isinstance(x, (list, tuple)):
        return _int_sequence_tensor(x)
    return x
