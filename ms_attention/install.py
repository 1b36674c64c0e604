"""install(): route every public name of the family in MindSpore to ms_attention, where MindSpore has no kernel.

Model code reaches these operators in many ways: `mindspore.ops.<fn>`, `mindspore.ops.function.<fn>`,
`mindspore.ops.functional.<fn>`, `mindspore.ops.function.nn_func.<fn>` (and the modules that define them), and the
primitive classes in `mindspore.ops.operations.nn_ops`, `mindspore.ops.auto_generate` / `gen_ops_prim` /
`gen_ops_def`, `operations._infer_ops`, `operations.manually_defined`. install() imports those modules, then
replaces every module attribute that *is* one of MindSpore's functionals or primitive classes of the family,
wherever it lives, so a later `from mindspore.ops import ...` gets ms_attention's too. uninstall() puts back
exactly what was there.
"""
import importlib
import sys
from typing import Any, Dict, List, Tuple

from mindspore import context

from ms_attention import opdef, ops, primitives

# Modules that define or re-export the family in MindSpore 2.10; imported first so their names can be replaced.
MINDSPORE_MODULES = (
    "mindspore.ops",
    "mindspore.ops.function",
    "mindspore.ops.functional",
    "mindspore.ops.function.nn_func",
    "mindspore.ops.functional_overload",
    "mindspore.ops.operations",
    "mindspore.ops.operations.nn_ops",
    "mindspore.ops.operations._infer_ops",
    "mindspore.ops.operations.manually_defined",
    "mindspore.ops.operations.manually_defined.ops_def",
    "mindspore.ops.auto_generate",
    "mindspore.ops.auto_generate.gen_ops_prim",
    "mindspore.ops.auto_generate.gen_ops_def",
)
# Where an operator MindSpore lacks (torch_npu-only) is added.
ADDED_TO = ("mindspore.ops", "mindspore.ops.function")

_MISSING = object()
_saved: List[Tuple[Any, str, Any]] = []   # (module, attribute, original or _MISSING), in the order applied


def _load_modules():
    for name in MINDSPORE_MODULES:
        try:
            importlib.import_module(name)
        except ImportError:
            pass


def _replacements() -> Dict[int, Tuple[Any, Any]]:
    """id(MindSpore's object) -> (MindSpore's object, ms_attention's replacement): every distinct object the
    family's modules bind under an operator's functional or class name (sparse_flash_attention, for one, is
    a different object in mindspore.ops and in auto_generate)."""
    found = {}
    for op in opdef.load_all().values():
        ours = {op.function_name: getattr(ops, op.function_name), op.class_name: getattr(primitives, op.class_name)}
        for module_name in MINDSPORE_MODULES:
            module = sys.modules.get(module_name)
            for name, replacement in ours.items():
                original = vars(module).get(name) if module is not None else None
                if original is not None and original is not replacement:
                    found[id(original)] = (original, replacement)
    return found


def _set(module, attr: str, value) -> None:
    _saved.append((module, attr, module.__dict__.get(attr, _MISSING)))
    setattr(module, attr, value)


def install(force: bool = False) -> List[str]:
    """Point every public MindSpore name of the family at ms_attention; returns the names replaced or added
    ('module.attribute'). Nothing happens on Ascend, where MindSpore's own kernels exist, unless `force`."""
    if _saved or (context.get_context("device_target") == "Ascend" and not force):
        return []
    _load_modules()
    replacements = _replacements()
    changed = []
    for module_name, module in sorted(sys.modules.items()):
        if module is None or not (module_name == "mindspore" or module_name.startswith("mindspore.")):
            continue
        for attr, value in list(vars(module).items()):
            hit = replacements.get(id(value))
            if hit is not None and hit[0] is value:
                _set(module, attr, hit[1])
                changed.append(f"{module_name}.{attr}")
    for op in opdef.load_all().values():
        for module_name in ADDED_TO:
            module = sys.modules[module_name]
            if op.function_name not in vars(module):
                _set(module, op.function_name, getattr(ops, op.function_name))
                changed.append(f"{module_name}.{op.function_name}")
    return changed


def uninstall() -> None:
    """Undo install(): every attribute gets back exactly the object it held (or is removed if it was added)."""
    while _saved:
        module, attr, original = _saved.pop()
        if original is _MISSING:
            delattr(module, attr)
        else:
            setattr(module, attr, original)

