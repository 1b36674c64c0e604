"""The compact entry points (compact_entry.cpp): a PyNative call hands MindSpore only the inputs it gives, and the
entry point puts the absent ones back as placeholders before the operator's own kernel runs."""
import numpy as np
import pytest
import mindspore as ms
from mindspore import Tensor, ops as ms_ops

from ms_attention import _runtime, primitive_base
from ms_attention import ops as msa_ops
from ms_attention.infer import registry
from ms_attention.kernels.cpu import loader

pytestmark = pytest.mark.skipif(loader.library() is None, reason="the compiled kernel library is missing")

N, KV_N, S, D = 4, 2, 40, 16
ATTRS = (N, "BNSD", 0.25, KV_N, 0, 1)


def _inputs(rng):
    q = Tensor(rng.standard_normal((2, N, 1, D)).astype(np.float16))
    k = Tensor(rng.standard_normal((2, KV_N, S, D)).astype(np.float16))
    v = Tensor(rng.standard_normal((2, KV_N, S, D)).astype(np.float16))
    return q, k, v


def _kernel_call(attn_mask=None, lengths=None):
    """The kernel primitive of one incre_flash_attention call and its arguments, as the functional makes them."""
    q, k, v = _inputs(np.random.default_rng(0))
    given = {"attn_mask": attn_mask, "actual_seq_lengths": lengths}
    check = msa_ops._incre_flash_attention_check  # pylint: disable=protected-access
    optional = [given.get(name) for name in registry.input_names("incre_flash_attention")[3:]]
    attr_values, vector = check(ATTRS, q, k, v, *optional)
    absent = (False, False, False) + tuple(x is None for x in optional)
    kernel = _runtime.cached(primitive_base.KernelPrimitive)("incre_flash_attention", attr_values, absent)
    args = [q, k, v, _runtime.or_empty(attn_mask), _runtime.int_tensor(lengths)]
    args += [_runtime.or_empty(None)] * (len(optional) - 2) + [vector]
    return kernel, args


@pytest.mark.parametrize("with_mask, with_lengths", [(False, False), (True, False), (False, True), (True, True)])
def test_compact_call_matches_the_full_call(with_mask, with_lengths):
    ms.set_context(mode=ms.PYNATIVE_MODE)
    mask = Tensor(np.random.default_rng(1).random((2, 1, 1, S)) < 0.3) if with_mask else None
    lengths = Tensor(np.array([S, S // 2], np.int64)) if with_lengths else None
    kernel, args = _kernel_call(mask, lengths)
    compact = kernel(*args).asnumpy()
    assert kernel._compact is not None  # pylint: disable=protected-access
    full = ms_ops.Custom.__call__(kernel, *args).asnumpy()
    np.testing.assert_array_equal(compact, full)


def _bad_vector(vector, index, value):
    v = vector.asnumpy().copy()
    v[index] = value
    return Tensor(v)


def test_compact_entry_rejects_flags_that_disagree_with_its_inputs():
    ms.set_context(mode=ms.PYNATIVE_MODE)
    kernel, args = _kernel_call()
    kernel(*args).asnumpy()
    compact = kernel._compact  # pylint: disable=protected-access
    q, k, v, vector = args[0], args[1], args[2], args[-1]
    presence = len(ATTRS)
    with pytest.raises(RuntimeError, match="flags 4 as given"):
        compact(q, k, v, _bad_vector(vector, presence + 3, 1.0)).asnumpy()   # attn_mask flagged, not given
    with pytest.raises(RuntimeError, match="must be 0 or 1"):
        compact(q, k, v, _bad_vector(vector, presence + 3, 0.5)).asnumpy()
    with pytest.raises(RuntimeError, match="attribute vector"):
        compact(q, k, v, Tensor(vector.asnumpy()[:-1])).asnumpy()


def test_graph_mode_keeps_the_full_call():
    """A Cell compiled in Graph mode runs the full entry point; it gives what the PyNative (compact) call gives."""
    q, k, v = _inputs(np.random.default_rng(0))

    class Decode(ms.nn.Cell):
        def construct(self, q, k, v):
            return msa_ops.incre_flash_attention(q, k, v, num_heads=N, input_layout="BNSD", scale_value=0.25,
                                                 num_key_value_heads=KV_N)

    ms.set_context(mode=ms.PYNATIVE_MODE)
    eager = Decode()(q, k, v).asnumpy()
    ms.set_context(mode=ms.GRAPH_MODE)
    try:
        graph = Decode()(q, k, v).asnumpy()
    finally:
        ms.set_context(mode=ms.PYNATIVE_MODE)
    np.testing.assert_array_equal(eager, graph)
