"""Which kernel serves a call. Each backend says whether it supports an operator, and why not when it does not;
when none serves a call, the error lists every reason.

- ascend:    MindSpore's built-in primitive; chosen by the functionals (ops.py) when device_target is Ascend.
- cpu:       the compiled C++ library, through ops.Custom(func_type="aot"). What users get on CPU.
- reference: the numpy golden. It cannot serve MindSpore calls (pyfunc in MindSpore 2.10 cannot carry the empty
             tensors of absent inputs), so without the compiled library a call raises and lists the reasons.
"""
import dataclasses
import functools
import importlib
import importlib.util
from typing import Callable, Optional, Tuple

from ms_attention._runtime import device_target
from ms_attention.kernels.cpu import loader


@dataclasses.dataclass(frozen=True)
class Choice:
    backend: str                      # 'cpu' or 'none'
    reasons: Tuple[str, ...] = ()

    def unserved_error(self, prim_name: str) -> RuntimeError:
        return RuntimeError(f"For '{prim_name}', no kernel serves this call on this machine: "
                            + "; ".join(self.reasons) + ".")


# Operators whose golden lives in a module shared with others: op name -> (module, function).
_SHARED_REFERENCES = {
    "flash_attention_score": ("training_attention", "flash_attention_score"),
    "speed_fusion_attention": ("training_attention", "speed_fusion_attention"),
    "flash_attention_score_grad": ("training_attention", "training_attention_grad"),
}


def reference_kernel(op_name: str) -> Optional[Callable]:
    module_name, function = _SHARED_REFERENCES.get(op_name, (op_name, op_name))
    try:
        mod = importlib.import_module(f"ms_attention.kernels.reference.{module_name}")
    except ModuleNotFoundError:
        return None
    return getattr(mod, function, None)


def on_ascend() -> bool:
    return device_target() == "Ascend"


def _ascend_reason() -> str:
    target = device_target()
    if target == "Ascend":
        return "ascend: MindSpore's own kernel serves this operator on Ascend (calls take that path first)"
    return f"ascend: device_target is {target}"


@functools.lru_cache(maxsize=None)
def select(op_name: str) -> Choice:
    reasons = [_ascend_reason()]
    lib = loader.library()
    if lib is not None and op_name in lib.kernels and importlib.util.find_spec(f"ms_attention.infer.{op_name}"):
        return Choice("cpu")
    reasons.append("cpu: " + (loader.why_unavailable() if lib is None else "not implemented yet"))
    if reference_kernel(op_name) is not None:
        # The numpy golden exists (ms_attention.kernels.reference), but MindSpore 2.10's pyfunc Custom cannot
        # carry the shape-(0,) tensors that stand for absent inputs ("memcpy failed"), so it cannot serve calls.
        reasons.append("reference: MindSpore 2.10's pyfunc Custom cannot carry the empty tensors of absent "
                       "inputs; call ms_attention.kernels.reference directly on numpy arrays instead")
        return Choice("none", tuple(reasons))
    reasons.append("reference: not implemented yet")
    return Choice("none", tuple(reasons))
