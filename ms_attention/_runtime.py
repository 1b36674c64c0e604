"""Helpers the generated code (ops.py, primitives.py) calls. They run in PyNative and are parsed by Graph mode,
so they keep to MindSpore's graph syntax; whatever needs plain Python runs in `constexpr` functions, which Graph
mode evaluates at compile time on constant arguments."""
import functools

import numpy as np
from mindspore import Tensor
from mindspore.context import _context, ms_ctx_param
from mindspore.common import dtype as mstype
from mindspore.common.generator import default_generator
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


def device_target():
    """context.get_context("device_target"), read as it reads it but without the checks that make it cost about
    10 us a call on MindSpore 2.10 (three reads were a tenth of a small decode step in PyNative)."""
    return _context().get_param(ms_ctx_param.device_target)


@constexpr
def on_ascend():
    return device_target() == "Ascend"


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
    return _int_sequence_tensor_cached(tuple(values))


@functools.lru_cache(maxsize=256)
def _int_sequence_tensor_cached(values):
    """One Tensor per sequence of values: a decode loop passing the same lengths as a list each step does not
    build a new Tensor per call. The kernels only read these inputs."""
    return Tensor(np.asarray(values, np.int64).reshape(-1))


def int_tensor(x):
    """A sequence-length style input for the kernel: None, a list/tuple of ints (already validated), or an int
    Tensor (passed as is)."""
    if x is None:
        return EMPTY_INT64
    if isinstance(x, (list, tuple)):
        return _int_sequence_tensor(x)
    return x


# The step MindSpore's own dropout functionals advance the default generator by (nn_func.generator_step_).
_GENERATOR_STEP = Tensor(12, mstype.int64)
_NO_SEED = Tensor(np.zeros((1,), np.int64))


@constexpr
def _draws_seed(keep_prob, explicit_mask):
    """Dropout draws from the generator when it is on (a float keep_prob below 1; an invalid one is rejected by
    the op's checks) and no explicit mask replaces it."""
    is_float = isinstance(keep_prob, (int, float)) and not isinstance(keep_prob, bool)
    return bool(is_float and keep_prob < 1.0 and not explicit_mask)


@constexpr
def _global_seed():
    """The seed given to `mindspore.set_seed`, as a (1,) int64 tensor, or None when none was set."""
    from mindspore import get_seed  # pylint: disable=import-outside-toplevel
    seed = get_seed()
    return None if seed is None else Tensor(np.array([seed], np.int64))


def dropout_seed_offset(keep_prob, explicit_mask):
    """(seed, offset) int64 tensors for a dropout kernel, or zeros when the kernel needs none.

    The offset comes from MindSpore's default generator, advanced as its own dropout functionals advance it, so
    each call draws a new mask and `mindspore.manual_seed` restarts the sequence. The seed is the one given to
    `mindspore.set_seed` when there is one: measured on MindSpore 2.10, the generator's own seed is 0 in PyNative
    and a fresh random value per process in Graph mode whatever `set_seed` says, which would make Graph-mode
    dropout impossible to reproduce."""
    if _draws_seed(keep_prob, explicit_mask):
        seed, offset = default_generator._step(_GENERATOR_STEP)  # pylint: disable=protected-access
        fixed = _global_seed()
        if fixed is not None:
            seed = fixed
        return seed, offset
    return _NO_SEED, _NO_SEED
