"""Runs prompt_flash_attention, fused_infer_attention_score and fused_infer_attention_score_v2 from keyword
arguments in a given mode: PyNative, Graph (an nn.Cell holding the constants, Tensors as graph inputs) or jit."""
import numpy as np
import mindspore as ms
from mindspore import Tensor, nn

from ms_attention import ops

MS_DTYPE = {"float16": ms.float16, "bfloat16": ms.bfloat16, "float32": ms.float32, "int8": ms.int8,
            "uint8": ms.uint8, "bool": ms.bool_, "int32": ms.int32, "int64": ms.int64, "uint64": ms.uint64}


def t(shape, dtype="float16", value=0):
    """A Tensor of the given shape and dtype filled with `value`."""
    if dtype == "bfloat16":
        return Tensor(np.full(shape, value, np.float32), ms.bfloat16)
    return Tensor(np.full(shape, value, {"bool": np.bool_}.get(dtype, dtype)), MS_DTYPE[dtype])


def lengths(values):
    return Tensor(np.asarray(values, np.int64))


class _OpCell(nn.Cell):
    """The functional in a graph: Tensors arrive as graph inputs (a dict for the optional ones), everything
    else (attributes, tuple/list lengths, None) as constants held by the cell."""

    def __init__(self, fn, constants):
        super().__init__()
        self.fn = fn
        self.constants = constants

    def construct(self, query, key, value, tensors):
        return self.fn(query, key, value, **tensors, **self.constants)


def run(mode, fn, kwargs):
    """fn(**kwargs) in the given mode; the output (a Tensor, or a tuple for the fused ops)."""
    if mode == "pynative":
        ms.set_context(mode=ms.PYNATIVE_MODE)
        return fn(**kwargs)
    kwargs = dict(kwargs)
    query, key, value = kwargs.pop("query"), kwargs.pop("key"), kwargs.pop("value")
    tensors = {n: x for n, x in kwargs.items() if isinstance(x, Tensor)}
    constants = {n: x for n, x in kwargs.items() if not isinstance(x, Tensor)}
    cell = _OpCell(fn, constants)
    if mode == "graph":
        ms.set_context(mode=ms.GRAPH_MODE)
        return cell(query, key, value, tensors)
    ms.set_context(mode=ms.PYNATIVE_MODE)
    return ms.jit(cell.construct)(query, key, value, tensors)


def first(out):
    return out[0] if isinstance(out, tuple) else out


OPS = {"pfa": ops.prompt_flash_attention, "fia": ops.fused_infer_attention_score,
       "v2": ops.fused_infer_attention_score_v2}
