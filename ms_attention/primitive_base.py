"""The ops.Custom underneath every ms_attention primitive.

__init__ checks the attributes (raising at compile time in Graph mode), picks the kernel (backends.py) and
registers infer callbacks that run the op's validation (infer/<op>.py) on every input's shape and dtype, in
PyNative and in Graph mode. MindSpore calls the shape callback and then the dtype callback, so the first
records the shapes and the second validates everything at once, dtype errors first.

Called directly in PyNative, a primitive takes MindSpore's own inputs (None for absent ones, key as a list,
sequence lengths as lists) and checks Tensor-valued lengths and block tables on the host before the kernel.
The functionals in ops.py hand it already-normalised inputs plus the attribute vector, which is also how it
runs inside Graph mode, where Python attributes of the instance cannot be read.
"""
import numpy as np
from mindspore import Tensor, ops
from mindspore.common import dtype as mstype

from ms_attention import backends, opdef
from ms_attention.infer import registry
from ms_attention.infer.common import meta
from ms_attention.kernels.cpu import loader


class AttentionPrimitive(ops.Custom):
    """Base of the generated primitives; subclasses set `op_name`."""
    op_name = ""

    def __init__(self, init_values, static=None):
        self._op = opdef.get(self.op_name)
        self._infer_module = registry.module(self.op_name)
        self._init_values = tuple(init_values)
        self._attrs = registry.check_attrs(self.op_name, init_values) if self._infer_module else {}
        self._static = tuple(static) if static is not None else None
        self._choice = backends.select(self.op_name, self._attrs)
        self._shapes = None
        func = self._choice.func if self._choice.func is not None else _never_called
        super().__init__(func, out_shape=self._infer_shape, out_dtype=self._infer_dtype,
                         func_type=self._choice.func_type)

    # ---- inference (both modes) ------------------------------------------------------------------------
    def _infer_shape(self, *shapes):
        self._shapes = shapes
        if self._choice.backend == "none":
            raise self._choice.unserved_error(self._op.class_name)
        return list(shapes[0])  # every implemented op so far returns the query's shape

    def _infer_dtype(self, *dtypes):
        shapes = self._shapes
        metas = [meta(s, d) for s, d in zip(shapes[:-1], dtypes[:-1])]  # the last input is the attribute vector
        by_name = registry.metas_by_name(self.op_name, metas)
        _, out_dtype = self._infer_module.infer(by_name, self._attrs,
                                                registry.static_by_name(self.op_name, self._static))
        return getattr(mstype, out_dtype)

    # ---- PyNative call ---------------------------------------------------------------------------------
    def _call(self, inputs, attrs_tensor):
        """PyNative entry of the generated __call__: inputs in the primitive's order."""
        names = registry.input_names(self.op_name)
        bound = dict(zip(names, inputs))
        if attrs_tensor is None:  # called directly, with MindSpore's own inputs
            bound, static = self._normalise(bound)
            self._static = static
            attrs_tensor = Tensor(np.asarray(self._infer_module.kernel_attrs(self._attrs), np.float64))
        inputs = [bound[name] for name in names]
        if self._choice.backend == "none":
            raise self._choice.unserved_error(self._op.class_name)
        self._check_values(dict(zip(names, inputs)))
        lib = loader.library()
        if lib is not None:
            lib.clear_error()
        return super().__call__(*inputs, attrs_tensor)

    def _normalise(self, bound):
        from ms_attention import _runtime  # late: _runtime imports this package's infer registry
        out = {}
        static = []
        for arg in self._op.inputs:
            if arg.generated:
                continue
            value = bound.get(arg.name, arg.default if arg.has_default else None)
            if arg.is_tensor_list:
                value = _runtime.single_tensor(value, self._op.class_name, arg.name)
            if arg.is_int_sequence:
                static.append(tuple(value) if isinstance(value, (list, tuple)) else None)
                value = _runtime.int_tensor(value, self._op.class_name, arg.name)
            out[arg.name] = _runtime.or_empty(value)
        return out, tuple(static)

    def _check_values(self, inputs):
        """Host-side checks of values only known at run time (PyNative: reading them costs one sync).
        The shapes and dtypes are validated first, so the value checks can rely on them."""
        metas = {n: meta(t.shape, t.dtype) for n, t in inputs.items()}
        self._infer_module.infer(metas, self._attrs, registry.static_by_name(self.op_name, self._static))
        values = {name: inputs[name].asnumpy() for name in self._infer_module.VALUE_INPUTS
                  if metas.get(name) is not None}
        if values:
            self._infer_module.check_values(values, metas, self._attrs)


def _never_called(*_):
    raise RuntimeError("ms_attention: this operator has no kernel on this machine")
