"""Which kernel serves a call. Each backend says whether it supports an operator, and why not when it does not;
when none serves a call, the error lists every reason.

- ascend:    MindSpore's built-in primitive; chosen by the functionals (ops.py) when device_target is Ascend.
- cpu:       the compiled C++ library, through ops.Custom(func_type="aot"). What users get on CPU.
- reference: the numpy golden through ops.Custom(func_type="pyfunc"); used, with one warning, only when the
             compiled library is missing. pyfunc cannot carry bfloat16.
"""
import dataclasses
import importlib
import inspect
import logging
from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np
from mindspore import context

from ms_attention import opdef
from ms_attention.kernels.cpu import loader

logger = logging.getLogger("ms_attention")
_warned = set()


@dataclasses.dataclass(frozen=True)
class Choice:
    backend: str                      # 'cpu', 'reference' or 'none'
    func: Any = None                  # what ops.Custom runs
    func_type: str = "pyfunc"
    reasons: Tuple[str, ...] = ()

    def unserved_error(self, prim_name: str) -> RuntimeError:
        return RuntimeError(f"For '{prim_name}', no kernel serves this call on this machine: "
                            + "; ".join(self.reasons) + ".")


def reference_kernel(op_name: str) -> Optional[Callable]:
    try:
        mod = importlib.import_module(f"ms_attention.kernels.reference.{op_name}")
    except ModuleNotFoundError:
        return None
    return getattr(mod, op_name)


def _ascend_reason() -> str:
    target = context.get_context("device_target")
    if target == "Ascend":
        return "ascend: a primitive object always runs the CPU kernel; call ms_attention.ops.<op> on Ascend"
    return f"ascend: device_target is {target}"


def select(op_name: str, attrs: Dict[str, Any]) -> Choice:
    op = opdef.get(op_name)
    reasons = [_ascend_reason()]
    lib = loader.library()
    if lib is not None and op_name in lib.kernels:
        return Choice("cpu", f"{lib.path}:{op.class_name}", "aot")
    reasons.append("cpu: " + (loader.why_unavailable() if lib is None else "not implemented yet"))
    ref = reference_kernel(op_name)
    if ref is not None:
        if op_name not in _warned:
            _warned.add(op_name)
            logger.warning("ms_attention: %s runs on the slow numpy reference kernel (%s).", op_name, reasons[-1])
        return Choice("reference", _reference_adapter(op, ref, attrs), "pyfunc", tuple(reasons))
    reasons.append("reference: not implemented yet")
    return Choice("none", None, "pyfunc", tuple(reasons))


def _reference_adapter(op: opdef.OpDef, ref: Callable, attrs: Dict[str, Any]) -> Callable:
    """pyfunc body: numpy inputs (+ the trailing attribute vector) -> the reference's keyword call."""
    names = [a.name for a in op.inputs if not a.generated]
    accepted = set(inspect.signature(ref).parameters)
    ref_attrs = {k: v for k, v in attrs.items() if k in accepted}

    def run(*arrays):
        kwargs = dict(ref_attrs)
        for name, array in zip(names, arrays):
            if name in accepted and not (array.ndim == 1 and array.shape[0] == 0):
                kwargs[name] = array
        out = np.asarray(ref(**kwargs))
        # pyfunc carries float16 but not bfloat16, so a float result here is float16
        return out if out.dtype == np.int8 else out.astype(np.float16)

    return run
