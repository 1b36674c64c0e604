"""The two MindSpore primitives behind every ms_attention operator call.

- `Validator` (one per operator): the op's validation (infer/<op>.py) as a constant primitive. In Graph mode
  MindSpore runs its `__infer__` at compile time on the inputs' shapes and dtypes (unknown dims -1, unknown
  rank -2) and the constant attributes, so the documented TypeError / ValueError is raised before the graph
  runs; in PyNative its `__call__` runs the same checks, plus the value checks of Tensor sequence lengths and
  block tables on the host. Its result is the kernel's attribute vector, so the kernel depends on it and the
  checks cannot be pruned from a graph.
- `KernelPrimitive` (one per operator, attribute tuple and set of present inputs; cached): the ops.Custom AOT
  op that runs the C++ kernel. Output shapes come from the kernel library's C++ `<Class>InferShape`, which
  MindSpore calls at compile time and again at run time with the real shapes (this is what makes dynamic shapes
  work); output dtypes come from the op's `output_dtypes`. InferShape reads the normalised attributes (output
  shapes may depend on them) from the reg_info int vector `msa_int_attrs`. Several outputs, outputs updated in place
  (`side_effect_mem` label) and a bprop hook (`bprop(attrs, absent)` in the infer module: the normalised
  attributes and, per tensor input name, whether it is absent) are declared here from the YAML.
"""
import functools
from typing import Any, Dict, Optional, Tuple

import numpy as np
from mindspore import Tensor, ops
from mindspore.common import dtype as mstype
from mindspore.ops import CustomRegOp, DataType
from mindspore.ops.primitive import PrimitiveWithInfer

from ms_attention import backends, opdef
from ms_attention._runtime import device_target
from ms_attention.infer import registry
from ms_attention.infer.common import LAYOUT_ENUM, Checker, TensorMeta, dtype_name
from ms_attention.kernels.cpu import loader


def _unserved(op_name: str) -> Optional[RuntimeError]:
    """The error a call raises when no kernel serves the operator on this machine, else None. On Ascend,
    MindSpore's own kernels serve the family (the generated code dispatches there)."""
    if backends.on_ascend():
        return None
    choice = backends.select(op_name)
    if choice.backend == "none":
        return choice.unserved_error(opdef.get(op_name).class_name)
    return None


def _checked_attrs(op_name: str, values: Tuple[Any, ...],
                   present: Tuple[bool, ...]) -> Tuple[Dict[str, Any], Tensor]:
    """(normalised attributes, the kernel's attribute vector), cached per attribute tuple and presence of the
    inputs. The key holds each value's type, since 8 == 8.0 == True-style equality must not let a float pass
    as an int; an unhashable value (a list for an int) is checked uncached, and rejected there."""
    key = tuple((type(v), v) for v in values)
    try:
        hash(key)
    except TypeError:
        return _check_attrs_uncached(op_name, values, present)
    return _checked_attrs_typed(op_name, key, present)


@functools.lru_cache(maxsize=None)
def _checked_attrs_typed(op_name: str, typed: Tuple[Tuple[type, Any], ...],
                         present: Tuple[bool, ...]) -> Tuple[Dict[str, Any], Tensor]:
    return _check_attrs_uncached(op_name, tuple(v for _, v in typed), present)


def _check_attrs_uncached(op_name, values, present):
    attrs = registry.check_attrs(op_name, tuple(values))
    vector = Tensor(np.asarray(registry.attribute_vector(op_name, attrs, present), np.float64))
    return attrs, vector


def check_attrs(op_name: str, values: Tuple[Any, ...]) -> Dict[str, Any]:
    """The attribute checks of a primitive's __init__ ({} for an operator only declared: a call of it raises
    the RuntimeError that lists why no kernel serves it)."""
    if registry.module(op_name) is None:
        return {}
    return registry.check_attrs(op_name, tuple(values))


def _require_constants(op_name: str, attr_item) -> None:
    """In a graph, an attribute whose value is unknown at compile time (a mutable() graph input) is refused.
    A None value is a constant when its type is None itself (attributes that default to None)."""
    values, types = attr_item["value"], attr_item["dtype"]
    if values is None:
        values, types = (None,), (int,)
    names = registry.attribute_names(op_name)
    for name, value, type_ in zip(names, values, types):
        if value is None and type_ is not None and str(type_) != "None":
            raise Checker(opdef.get(op_name).class_name).type_error(
                f"the attribute '{name}' must be a constant (a Python int, float, bool or str known when the "
                f"graph is compiled), but got a value only known at run time, such as a graph input made with "
                f"mutable(). Attributes must be constants.")


_NOTHING_CHECKED = Tensor(np.zeros((0,), np.float64))


class Validator(PrimitiveWithInfer):
    """Validation of one operator as a constant primitive. Returns (the attribute values, the kernel's
    attribute vector): the kernel primitive is made from the first, so Graph mode evaluates the checks before
    it, and the kernel reads the second."""

    def __init__(self, op_name: str):
        super().__init__(f"{opdef.get(op_name).class_name}Check")
        self.set_const_prim(True)
        self.op_name = op_name
        self._names = registry.input_names(op_name)
        self._static_names = set(registry.static_names(op_name))
        self._tensor_inputs = opdef.get(op_name).tensor_inputs
        self._passed: Dict[tuple, Tuple[Tensor, Optional[tuple]]] = {}

    def _present(self, metas) -> Tuple[bool, ...]:
        """The kernel's presence flags: a generated input (dropout seed/offset) is always given."""
        return tuple(a.generated or metas.get(a.name) is not None for a in self._tensor_inputs)

    def _validate(self, values, metas, static) -> Optional[Tuple[Dict[str, Any], Tensor]]:
        """The op's checks; None for an operator only declared, on Ascend (MindSpore's own checks apply)."""
        error = _unserved(self.op_name)
        if error is not None:
            raise error
        module = registry.module(self.op_name)
        if module is None:
            return None
        attrs, vector = _checked_attrs(self.op_name, tuple(values), self._present(metas))
        module.infer(metas, attrs, {n: static.get(n) for n in self._static_names})
        return attrs, vector

    # Graph mode (and ms.jit): abstract values at compile time
    def __infer__(self, attr_values, *inputs):
        _require_constants(self.op_name, attr_values)
        metas, static = {}, {}
        for name, item in zip(self._names, inputs):
            metas[name], static[name] = _meta_of_abstract(self.op_name, name, item)
        checked = self._validate(attr_values["value"], metas, static)
        vector = _NOTHING_CHECKED if checked is None else checked[1]
        return {"shape": None, "dtype": None, "value": (tuple(attr_values["value"]), vector)}

    # PyNative: real tensors
    def __call__(self, attr_values, *inputs):
        key = _call_key(attr_values, inputs)
        passed = self._passed.get(key) if key is not None else None
        if passed is None:
            passed = self._check_call(attr_values, inputs)
            if key is not None:
                if len(self._passed) >= _MAX_PASSED:
                    self._passed.clear()
                self._passed[key] = passed
        vector, value_check = passed
        if value_check is not None:
            metas, attrs, values, tensor_names = value_check
            values = dict(values)
            for name in tensor_names:
                values[name] = inputs[self._names.index(name)].asnumpy()
            registry.module(self.op_name).check_values(values, metas, attrs)
        return attr_values, vector

    def _check_call(self, attr_values, inputs):
        """The checks of a call on its shapes, dtypes and constant values: (the kernel's attribute vector, what
        check_values needs per call, or None). It is the same for every call with the same attributes, input
        shapes, dtypes and constant sequences, so a passed result is kept (`_passed`)."""
        metas, static, tensors = {}, {}, {}
        for name, value in zip(self._names, inputs):
            metas[name], static[name] = None, None
            if isinstance(value, Tensor):
                metas[name], tensors[name] = TensorMeta(tuple(value.shape), dtype_name(value.dtype)), value
            elif isinstance(value, (list, tuple)):
                metas[name], static[name] = TensorMeta((len(value),), "int64"), tuple(value)
            elif value is not None:
                raise _not_a_tensor(self.op_name, name, type(value).__name__)
        checked = self._validate(attr_values, metas, static)
        if checked is None:
            return _NOTHING_CHECKED, None
        attrs, vector = checked
        if backends.on_ascend():       # MindSpore's kernel checks values there; no host copies in a decode loop
            return vector, None
        module = registry.module(self.op_name)
        values, tensor_names = {}, []
        for name in module.VALUE_INPUTS:
            if name in tensors:
                tensor_names.append(name)
                values[name] = tensors[name].asnumpy()
            elif static.get(name) is not None:
                values[name] = np.asarray(static[name], np.int64)
        if values:
            module.check_values(values, metas, attrs)
        if not tensor_names:           # constant sequences were checked above; they are part of the cache key
            return vector, None
        constant = {n: v for n, v in values.items() if n not in tensor_names}
        return vector, (metas, attrs, constant, tuple(tensor_names))


# Validation results kept per Validator; cleared when full (a loop whose shapes change every step keeps adding).
_MAX_PASSED = 256


def _call_key(attr_values, inputs) -> Optional[tuple]:
    """What a PyNative call's checks depend on besides Tensor values: the device target, the attributes (with
    their types, since 8 == 8.0 == True), and per input its shape and dtype, its typed int sequence, or None.
    None (no caching) for anything unhashable or unexpected, which the uncached checks then reject."""
    key = [device_target(), tuple((type(v), v) for v in attr_values)]
    for value in inputs:
        if isinstance(value, Tensor):
            key.append(("tensor", value.shape, value.dtype))
        elif isinstance(value, (list, tuple)):
            if not all(isinstance(v, (int, float)) for v in value):
                return None
            key.append(("sequence",) + tuple((type(v), v) for v in value))
        elif value is None:
            key.append(None)
        else:
            return None
    key = tuple(key)
    try:
        hash(key)
    except TypeError:
        return None
    return key


class PrimitiveMethods:
    """The methods model code calls on a MindSpore primitive besides calling it, for the primitive classes."""

    def shard(self, in_strategy=None, out_strategy=None):
        """Accepted for MindSpore compatibility: a single-device CPU run has nothing to shard."""
        return self

    def add_prim_attr(self, name, value):
        """Accepted for MindSpore compatibility: the kernel reads no extra attributes."""
        return self


def _meta_of_abstract(op_name: str, name: str, item) -> Tuple[Optional[TensorMeta], Optional[Tuple[Any, ...]]]:
    """(metadata, constant values) of one input as Graph mode's infer sees it."""
    dtype = item["dtype"]
    if dtype is None:
        return None, None
    if isinstance(item["value"], (tuple, list)):     # a tuple/list of ints: its values must be constants
        values = tuple(item["value"])
        if any(v is None for v in values):
            raise Checker(opdef.get(op_name).class_name).type_error(
                f"the '{name}' given as a tuple or list must hold constant ints, but got values only known at run "
                f"time (a mutable() tuple); pass them as an int64 Tensor instead.")
        return TensorMeta((len(values),), "int64"), values
    if not isinstance(dtype, mstype.TensorType):     # a Python scalar (or other constant) where a Tensor goes
        raise _not_a_tensor(op_name, name, f"{type(item['value']).__name__} {item['value']!r}")
    shape = item["shape"]
    shape = tuple(int(d) for d in shape) if shape is not None else (-2,)
    return TensorMeta(shape, dtype_name(dtype)), None


def _not_a_tensor(op_name: str, name: str, got: str) -> TypeError:
    return Checker(opdef.get(op_name).class_name).type_error(f"the '{name}' must be a Tensor (or None), but got {got}.")

# An AOT Custom op needs at least one output: an operator that only updates its inputs in place (`returns: {}`)
# gets this one, whose dtype is its infer module's output_dtypes and which the generated code drops.
PLACEHOLDER_OUTPUT = "placeholder"

# The reg_info attribute through which a kernel's C++ InferShape reads the normalised attributes (infer_shape.h).
INT_ATTRS = "msa_int_attrs"


def int_attributes(op: opdef.OpDef, attrs: Dict[str, Any]) -> Tuple[int, ...]:
    """The normalised attributes as integers in YAML order (kernel_abi.h attr:: indexes): layouts through their
    enum, bools 0/1, ints as they are; floats, strings other than layouts, and None as 0."""
    values = []
    for arg in op.attributes:
        value = attrs.get(arg.name)
        if arg.arg_handler == "str_to_enum" and isinstance(value, str):
            value = LAYOUT_ENUM[value.upper()]
        values.append(int(value) if isinstance(value, (bool, int)) else 0)
    return tuple(values)


# The reg_info attribute through which a compact entry point (compact_entry.cpp) learns which tensor inputs a
# call gives: one 0/1 per tensor input in YAML order.
PRESENT_ATTR = "msa_present"


def _reg_info(op: opdef.OpDef, int_attrs: Tuple[int, ...], given: Optional[Tuple[bool, ...]] = None):
    """The Custom op's registration: every tensor input, or with `given` only those it flags (the compact entry
    point, registered under its own name since MindSpore keeps one input list per registered name)."""
    name = op.class_name
    inputs = [arg.name for arg in op.tensor_inputs]
    if given is not None:
        name += "Compact" + "".join("1" if g else "0" for g in given)
        inputs = [n for n, g in zip(inputs, given) if g]
    info = CustomRegOp(name)
    for i, input_name in enumerate(inputs):
        info = info.input(i, input_name)
    info = info.input(len(inputs), "attrs")
    outputs = op.returns or (PLACEHOLDER_OUTPUT,)
    for i, output_name in enumerate(outputs):
        info = info.output(i, output_name)
    count = len(inputs) + 1 + len(outputs)
    info = info.dtype_format(*([DataType.None_None] * count))
    if int_attrs:
        info = info.attr(INT_ATTRS, "required", "listInt", value=list(int_attrs))
    if given is not None:
        info = info.attr(PRESENT_ATTR, "required", "listInt", value=[int(g) for g in given])
    return info.target("CPU").get_op_info()


class KernelPrimitive(ops.Custom):
    """The AOT Custom op of one operator, for one attribute tuple and one set of present optional inputs.

    Graph mode runs it with every input, absent ones as empty placeholders. A PyNative call (this primitive's
    __call__, which Graph mode never calls) goes to its compact twin instead when the call leaves inputs out:
    MindSpore's PyNative dispatch costs about 5 us per input, and the placeholders are most of the inputs of a
    typical call. The twin runs the compact entry point of the same kernel (compact_entry.cpp), which puts the
    placeholders back. Operators with a bprop keep the full call (the bprop takes every input)."""

    def __init__(self, op_name: str, attr_values: Tuple[Any, ...], absent: Tuple[bool, ...], *,
                 op: Optional[opdef.OpDef] = None, module: Any = None, library_path: Optional[str] = None):
        """`op`, `module` and `library_path` default to the operator's OpDef, infer module and the compiled
        library; tests of the mechanism pass their own."""
        op = op or opdef.get(op_name)
        self._op = op
        self._module = module or registry.module(op_name)
        if module is None:
            self._attrs = check_attrs(op_name, tuple(attr_values))
        else:
            self._attrs = module.check_attrs(**dict(zip((a.name for a in op.attributes), attr_values)))
        self._absent = dict(zip((a.name for a in op.tensor_inputs), absent))
        self._absent_flags = tuple(bool(a) for a in absent)
        self._out_dtypes: Dict[tuple, Any] = {}
        library = loader.library() if library_path is None else None   # None: a test's own library
        library_path = library_path or library.path
        bprop = self._module.bprop(self._attrs, self._absent) if hasattr(self._module, "bprop") else None
        self._int_attrs = int_attributes(op, self._attrs)
        super().__init__(f"{library_path}:{op.class_name}", out_shape=None, out_dtype=self._out_dtype,
                         func_type="aot", bprop=bprop, reg_info=_reg_info(op, self._int_attrs))
        if op.label("side_effect_mem"):
            self.add_prim_attr("side_effect_mem", True)
        # The compact twin, made on the first PyNative call; None where the full call is used.
        self._compact_path = None
        if (library is not None and bprop is None and op.returns and any(self._absent_flags)
                and hasattr(library.handle, op.class_name + "Compact")):
            self._compact_path = f"{library_path}:{op.class_name}Compact"
        self._compact = None
        self._keep = tuple(not a for a in self._absent_flags) + (True,)   # the tensor inputs, then attrs
        self._given_count = self._absent_flags.count(False)

    def __call__(self, *args):
        if self._compact_path is None or len(args) != len(self._keep):
            return super().__call__(*args)
        if self._compact is None:
            self._compact = ops.Custom(self._compact_path, out_shape=None, out_dtype=self._compact_out_dtype,
                                       func_type="aot",
                                       reg_info=_reg_info(self._op, self._int_attrs, tuple(self._keep[:-1])))
            if self._op.label("side_effect_mem"):
                self._compact.add_prim_attr("side_effect_mem", True)
        return self._compact(*[a for a, keep in zip(args, self._keep) if keep])

    def _out_dtype(self, *dtypes):
        """Every input's dtype (absent ones included) -> the output dtypes."""
        return self._out_dtype_of(tuple(d for d, absent in zip(dtypes, self._absent_flags) if not absent))

    def _compact_out_dtype(self, *dtypes):
        """The compact twin's: the given inputs' dtypes, then the attribute vector's."""
        return self._out_dtype_of(dtypes[:self._given_count])

    def _out_dtype_of(self, given):
        """MindSpore asks on every PyNative call. The answer is kept per element type of the given inputs,
        keyed by identity (hashing or printing a TensorType costs microseconds each); the entry holds the
        element types themselves, so an id in a key cannot be reused by another object."""
        elements = tuple(d.element_type() if hasattr(d, "element_type") else d for d in given)
        key = tuple(map(id, elements))
        entry = self._out_dtypes.get(key)
        if entry is None:
            if len(self._out_dtypes) >= 64:
                self._out_dtypes.clear()
            entry = self._out_dtypes[key] = (elements, self._infer_out_dtype(given))
        return entry[1]

    def _infer_out_dtype(self, given):
        given = iter(given)
        by_name = {a.name: None if absent else dtype_name(next(given))
                   for a, absent in zip(self._op.tensor_inputs, self._absent_flags)}
        out = tuple(getattr(mstype, name) for name in self._module.output_dtypes(self._attrs, by_name))
        return out[0] if len(out) == 1 else out
