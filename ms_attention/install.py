"""install(): route mindspore.ops.<name> to ms_attention where MindSpore has no kernel for this device."""
import mindspore
from mindspore import context

from ms_attention import opdef, ops

_saved = {}


def install(force: bool = False):
    """Point mindspore.ops.<name> (and mindspore.ops.function.<name>) at ms_attention's functionals.

    Nothing happens on Ascend, where MindSpore's own kernels exist, unless `force` is True. Operators MindSpore
    lacks (fused_infer_attention_score_v2, advance_step_flashattn) are added. Returns the names replaced."""
    if context.get_context("device_target") == "Ascend" and not force:
        return []
    replaced = []
    for op in opdef.load_all().values():
        name = op.function_name
        if name not in _saved:
            _saved[name] = getattr(mindspore.ops, name, None)
        setattr(mindspore.ops, name, getattr(ops, name))
        replaced.append(name)
    return replaced


def uninstall():
    """Undo install()."""
    for name, original in _saved.items():
        if original is None:
            delattr(mindspore.ops, name)
        else:
            setattr(mindspore.ops, name, original)
    _saved.clear()
