"""Every documented error of sparse_flash_attention (MindSpore 2.10's Raises, the seed's constraints, SPEC.md §10)
in PyNative, Graph and jit: the exception type must match and the message must name the argument and the value.
Values only a run shows (sparse_indices, Tensor lengths, block table entries) fail in the kernel with a
RuntimeError, never with a read outside a buffer."""
import numpy as np
import pytest
import mindspore as ms
from mindspore import Tensor

from fused_cases import run, t
from ms_attention import ops

B, S1, N1, S2, K = 2, 2, 4, 32, 4


def base():
    idx = np.zeros((B, S1, 1, K), np.int32)
    idx[..., 1] = 1
    idx[..., 2:] = -1
    return dict(query=t((B, S1, N1, 512)), key=t((B, S2, 1, 512)), value=t((B, S2, 1, 512)),
                sparse_indices=Tensor(idx), scale_value=0.04, query_rope=t((B, S1, N1, 64)),
                key_rope=t((B, S2, 1, 64)), sparse_block_size=4, attention_mode=2)


def paged(k):
    k.update(key=t((4, 16, 1, 512)), value=t((4, 16, 1, 512)), key_rope=t((4, 16, 1, 64)), layout_kv="PA_BSND",
             block_table=Tensor(np.array([[0, 1], [2, 3]], np.int32)),
             actual_seq_lengths_kv=Tensor(np.array([32, 20], np.int32)))


def indices(value, where=(0, 0, 0, 1)):
    def breaker(k):
        idx = k["sparse_indices"].asnumpy().copy()
        idx[where] = value
        k["sparse_indices"] = Tensor(idx)
    return breaker


def tnd(k):
    k.update(query=t((3, N1, 512)), query_rope=t((3, N1, 64)), key=t((40, 1, 512)), value=t((40, 1, 512)),
             key_rope=t((40, 1, 64)), sparse_indices=Tensor(np.zeros((3, 1, K), np.int32)), layout_query="TND",
             layout_kv="TND", actual_seq_lengths_query=(1, 3), actual_seq_lengths_kv=(8, 40))


# (id, how to break the valid call, exception, fragments the message must contain)
CASES = [
    # MindSpore 2.10's Raises
    ("query_not_tensor", lambda k: k.update(query=None), TypeError, ["query"]),
    ("key_not_tensor", lambda k: k.update(key=None), TypeError, ["key"]),
    ("value_not_tensor", lambda k: k.update(value=None), TypeError, ["value"]),
    ("indices_not_tensor", lambda k: k.update(sparse_indices=None), TypeError, ["sparse_indices"]),
    ("key_dtype_differs", lambda k: k.update(key=t((B, S2, 1, 512), "bfloat16")), TypeError, ["key", "bfloat16"]),
    ("value_dtype_differs", lambda k: k.update(value=t((B, S2, 1, 512), "bfloat16")), TypeError,
     ["value", "bfloat16"]),
    ("query_dtype", lambda k: k.update(query=t((B, S1, N1, 512), "float32")), TypeError, ["query", "float32"]),
    ("layout_query", lambda k: k.update(layout_query="BSH"), RuntimeError, ["layout_query", "BSH"]),
    ("layout_kv", lambda k: k.update(layout_kv="BNSD"), RuntimeError, ["layout_kv", "BNSD"]),
    ("sparse_block_size_range", lambda k: k.update(sparse_block_size=256), RuntimeError,
     ["sparse_block_size", "256"]),
    ("sparse_block_size_zero", lambda k: k.update(sparse_block_size=0), RuntimeError, ["sparse_block_size", "0"]),
    ("sparse_block_size_power", lambda k: k.update(sparse_block_size=6), RuntimeError, ["sparse_block_size", "6"]),
    # argument types and values (SPEC.md §10)
    ("scale_type", lambda k: k.update(scale_value="0.1"), TypeError, ["scale_value", "0.1"]),
    ("sparse_block_size_type", lambda k: k.update(sparse_block_size=4.0), TypeError, ["sparse_block_size", "4.0"]),
    ("layout_type", lambda k: k.update(layout_query=3), TypeError, ["layout_query", "3"]),
    ("sparse_mode_value", lambda k: k.update(sparse_mode=1), ValueError, ["sparse_mode", "1"]),
    ("attention_mode_value", lambda k: k.update(attention_mode=1), ValueError, ["attention_mode", "1"]),
    ("lse_flag_type", lambda k: k.update(return_softmax_lse=1), TypeError, ["return_softmax_lse", "1"]),
    ("pre_tokens_type", lambda k: k.update(pre_tokens=1.5), TypeError, ["pre_tokens", "1.5"]),
    ("indices_dtype", lambda k: k.update(sparse_indices=t((B, S1, 1, K), "int64")), TypeError,
     ["sparse_indices", "int64"]),
    ("rope_dtype", lambda k: k.update(query_rope=t((B, S1, N1, 64), "bfloat16")), TypeError,
     ["query_rope", "bfloat16"]),
    ("layouts_differ", lambda k: k.update(layout_query="TND"), RuntimeError, ["layout_kv", "TND"]),
    # the seed's constraints: heads, head dims, block sizes
    ("query_heads", lambda k: k.update(query=t((B, S1, 3, 512)), query_rope=t((B, S1, 3, 64))), ValueError,
     ["N1", "3"]),
    ("query_heads_above_128", lambda k: k.update(query=t((B, S1, 256, 512)), query_rope=t((B, S1, 256, 64))),
     ValueError, ["N1", "256"]),
    ("kv_heads", lambda k: k.update(key=t((B, S2, 2, 512)), value=t((B, S2, 2, 512)), key_rope=t((B, S2, 2, 64))),
     ValueError, ["N2", "2"]),
    ("head_dim", lambda k: k.update(query=t((B, S1, N1, 128))), ValueError, ["query", "512", "128"]),
    ("key_head_dim", lambda k: k.update(key=t((B, S2, 1, 576)), value=t((B, S2, 1, 576))), ValueError,
     ["key", "512", "576"]),
    ("rope_dim", lambda k: k.update(query_rope=t((B, S1, N1, 32))), ValueError, ["query_rope", "64", "32"]),
    ("rope_scalar", lambda k: k.update(key_rope=t(())), ValueError, ["key_rope", "64", "no axis"]),
    ("rope_alone", lambda k: k.update(key_rope=None, attention_mode=0), ValueError, ["query_rope", "key_rope"]),
    ("mla_without_rope", lambda k: k.update(key_rope=None, query_rope=None), ValueError,
     ["attention_mode", "query_rope"]),
    ("paged_block_size", lambda k: (paged(k), k.update(key=t((4, 24, 1, 512)), value=t((4, 24, 1, 512)),
                                                       key_rope=t((4, 24, 1, 64)))), ValueError,
     ["block_size", "24"]),
    ("paged_block_size_above_1024", lambda k: (paged(k), k.update(
        key=t((1, 2048, 1, 512)), value=t((1, 2048, 1, 512)), key_rope=t((1, 2048, 1, 64)))), ValueError,
     ["block_size", "2048"]),
    ("sparse_block_size_divides_block_size", lambda k: (paged(k), k.update(sparse_block_size=32)), ValueError,
     ["sparse_block_size", "32", "16"]),
    ("paged_without_table", lambda k: (paged(k), k.update(block_table=None)), ValueError,
     ["block_table", "PA_BSND"]),
    ("paged_without_lengths", lambda k: (paged(k), k.update(actual_seq_lengths_kv=None)), ValueError,
     ["actual_seq_lengths_kv", "PA_BSND"]),
    ("table_without_paging", lambda k: k.update(block_table=Tensor(np.zeros((B, 2), np.int32))), ValueError,
     ["block_table", "BSND"]),
    ("table_dtype", lambda k: (paged(k), k.update(block_table=t((B, 2), "int64"))), TypeError,
     ["block_table", "int64"]),
    ("table_rows", lambda k: (paged(k), k.update(block_table=Tensor(np.zeros((3, 2), np.int32)))), RuntimeError,
     ["block_table", "(3, 2)"]),
    # shapes that disagree
    ("key_value_shapes", lambda k: k.update(value=t((B, S2 - 1, 1, 512))), RuntimeError, ["key", "value"]),
    ("key_batch", lambda k: k.update(key=t((3, S2, 1, 512)), value=t((3, S2, 1, 512)), key_rope=t((3, S2, 1, 64))),
     RuntimeError, ["key", "batch"]),
    ("indices_shape", lambda k: k.update(sparse_indices=Tensor(np.zeros((B, S1 + 1, 1, K), np.int32))),
     RuntimeError, ["sparse_indices", "(2, 3, 1, 4)"]),
    ("indices_rank", lambda k: k.update(sparse_indices=Tensor(np.zeros((B, S1, K), np.int32))), ValueError,
     ["sparse_indices", "4-D"]),
    ("rope_shape", lambda k: k.update(key_rope=t((B, S2 - 1, 1, 64))), RuntimeError, ["key_rope", "(2, 31, 1, 64)"]),
    ("query_rank", lambda k: k.update(query=t((B, N1, 512))), ValueError, ["query", "4-D"]),
    # lengths
    ("tnd_without_query_lengths", lambda k: (tnd(k), k.update(actual_seq_lengths_query=None)), ValueError,
     ["actual_seq_lengths_query", "TND"]),
    ("tnd_lengths_not_cumulative", lambda k: (tnd(k), k.update(actual_seq_lengths_query=(2, 1))), ValueError,
     ["actual_seq_lengths_query", "cumulative"]),
    ("tnd_lengths_total", lambda k: (tnd(k), k.update(actual_seq_lengths_kv=(8, 39))), ValueError,
     ["actual_seq_lengths_kv", "40", "39"]),
    ("kv_length_above_s2", lambda k: k.update(actual_seq_lengths_kv=(33, 1)), ValueError,
     ["actual_seq_lengths_kv", "33"]),
    ("query_length_negative", lambda k: k.update(actual_seq_lengths_query=(-1, 1)), ValueError,
     ["actual_seq_lengths_query", "-1"]),
    ("lengths_size", lambda k: k.update(actual_seq_lengths_kv=(1, 2, 3)), ValueError, ["actual_seq_lengths_kv", "3"]),
    ("lengths_float", lambda k: k.update(actual_seq_lengths_kv=(1.5, 2)), TypeError, ["actual_seq_lengths_kv", "1.5"]),
    # values only the kernel sees: RuntimeError in every mode
    ("index_above_range", indices(8), RuntimeError, ["sparse_indices", "8", "[0, 8)"]),
    ("index_negative", indices(-2), RuntimeError, ["sparse_indices", "-2"]),
    ("index_far_above_range", indices(2 ** 31 - 1), RuntimeError, ["sparse_indices", "2147483647"]),
    ("paged_index_above_table", lambda k: (paged(k), indices(8)(k)), RuntimeError, ["sparse_indices", "8"]),
]


@pytest.mark.parametrize("name,breaker,error,fragments", CASES, ids=[c[0] for c in CASES])
def test_documented_errors(mode, name, breaker, error, fragments):
    kwargs = base()
    breaker(kwargs)
    with pytest.raises(error) as info:
        out = run(mode, ops.sparse_flash_attention, kwargs)
        out[0].asnumpy()
    message = str(info.value)
    assert "SparseFlashAttention" in message, message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in: {message}"


def test_base_call_is_valid(mode):
    out, _, _ = run(mode, ops.sparse_flash_attention, base())
    assert out.shape == (B, S1, N1, 512)


TENSOR_VALUE_CASES = [
    ("kv_length_tensor_above_s2", lambda k: k.update(actual_seq_lengths_kv=Tensor(np.array([40, 1], np.int32))),
     ["actual_seq_lengths_kv", "40"]),
    ("table_entry_out_of_range", lambda k: (paged(k), k.update(block_table=Tensor(np.array([[0, 9], [2, 3]],
                                                                                           np.int32)))),
     ["block_table", "9"]),
    ("tnd_tensor_lengths_not_cumulative", lambda k: (tnd(k), k.update(
        actual_seq_lengths_kv=Tensor(np.array([40, 8], np.int32)))), ["actual_seq_lengths_kv"]),
]


@pytest.mark.parametrize("name,breaker,fragments", TENSOR_VALUE_CASES, ids=[c[0] for c in TENSOR_VALUE_CASES])
def test_values_of_tensor_inputs(mode, name, breaker, fragments):
    """A ValueError on the host in PyNative; the kernel's RuntimeError in a graph (values unknown at compile time)."""
    kwargs = base()
    breaker(kwargs)
    error = ValueError if mode == "pynative" else RuntimeError
    with pytest.raises(error) as info:
        out = run(mode, ops.sparse_flash_attention, kwargs)
        out[0].asnumpy()
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)


def test_unused_table_entries_may_be_minus_one(mode):
    kwargs = base()
    paged(kwargs)
    kwargs["block_table"] = Tensor(np.array([[0, 1], [2, -1]], np.int32))
    kwargs["actual_seq_lengths_kv"] = Tensor(np.array([32, 16], np.int32))
    out, _, _ = run(mode, ops.sparse_flash_attention, kwargs)
    assert np.isfinite(out.asnumpy()).all()


class _DynamicNet(ms.nn.Cell):
    def construct(self, q, k, v, idx, qr, kr):
        return ops.sparse_flash_attention(q, k, v, idx, 0.04, query_rope=qr, key_rope=kr, sparse_block_size=4,
                                          attention_mode=2)


KERNEL_SHAPE_CASES = [
    ("indices_rows", dict(sparse_indices=Tensor(np.zeros((B, S1 + 1, 1, K), np.int32))), ["sparse_indices"]),
    ("value_shape", dict(value=t((B, S2 - 1, 1, 512))), ["key", "value"]),
    ("head_dim", dict(query=t((B, S1, N1, 256))), ["512", "256"]),
    ("query_heads", dict(query=t((B, S1, 3, 512)), query_rope=t((B, S1, 3, 64))), ["query heads", "3"]),
    ("key_batch", dict(key=t((1, S2, 1, 512)), value=t((1, S2, 1, 512)), key_rope=t((1, S2, 1, 64))), ["batch"]),
    ("rope_shape", dict(key_rope=t((B, S2, 1, 32))), ["key_rope"]),
]


@pytest.mark.parametrize("name,change,fragments", KERNEL_SHAPE_CASES, ids=[c[0] for c in KERNEL_SHAPE_CASES])
def test_kernel_rejects_shapes_unknown_at_compile_time(name, change, fragments):
    """With every dim dynamic, Python sees nothing wrong at compile time: the kernel checks the real shapes."""
    ms.set_context(mode=ms.GRAPH_MODE)
    try:
        net = _DynamicNet()
        dyn = lambda dtype: Tensor(shape=[None] * 4, dtype=dtype)  # noqa: E731
        net.set_inputs(dyn(ms.float16), dyn(ms.float16), dyn(ms.float16), dyn(ms.int32), dyn(ms.float16),
                       dyn(ms.float16))
        kwargs = dict(base(), **change)
        with pytest.raises(RuntimeError) as info:
            net(*(kwargs[n] for n in ("query", "key", "value", "sparse_indices", "query_rope",
                                      "key_rope")))[0].asnumpy()
        for fragment in ["SparseFlashAttention"] + fragments:
            assert fragment in str(info.value), str(info.value)
    finally:
        ms.set_context(mode=ms.PYNATIVE_MODE)


class _UnknownRankNet(ms.nn.Cell):
    def construct(self, q, k, v, idx, qr, kr):
        return ops.sparse_flash_attention(q, k, v, idx, 0.04, query_rope=qr, key_rope=kr, sparse_block_size=4,
                                          attention_mode=2, return_softmax_lse=True)


UNKNOWN_RANK_CASES = [
    ("no_kv_head", dict(key=t((B, S2, 0, 512)), value=t((B, S2, 0, 512)), key_rope=t((B, S2, 0, 64))),
     ["key", "1 head"]),
    ("query_rank", dict(query=t((B, N1, 512)), query_rope=t((B, N1, 64))), ["query", "4-D"]),
    ("key_scalar", dict(key=t(()), value=t(())), ["key", "4-D"]),
]


@pytest.mark.parametrize("name,change,fragments", UNKNOWN_RANK_CASES, ids=[c[0] for c in UNKNOWN_RANK_CASES])
def test_kernel_rejects_ranks_unknown_at_compile_time(name, change, fragments):
    """Unknown ranks and the statistics on: the run-time InferShape must still give the statistics a shape (not
    fail MindSpore's resize) so that the kernel reports the malformed input."""
    ms.set_context(mode=ms.GRAPH_MODE)
    try:
        net = _UnknownRankNet()
        kwargs = dict(base(), **change)
        tensors = [kwargs[n] for n in ("query", "key", "value", "sparse_indices", "query_rope", "key_rope")]
        net.set_inputs(*(Tensor(shape=None, dtype=x.dtype) for x in tensors))
        with pytest.raises(RuntimeError) as info:
            net(*tensors)[0].asnumpy()
        for fragment in ["SparseFlashAttention"] + fragments:
            assert fragment in str(info.value), str(info.value)
    finally:
        ms.set_context(mode=ms.PYNATIVE_MODE)
