"""incre_flash_attention reached the way MindSpore networks reach it: the primitive held by a Cell (MindSpore's
call convention), dynamic shapes through set_inputs, attributes given as graph inputs, and a paged decode loop
that scatters new K/V into Parameter caches. Numbers are compared with the numpy reference."""
import numpy as np
import pytest
import mindspore as ms
from mindspore import Parameter, Tensor, mutable, nn
from mindspore import ops as ms_ops

from ifa_cases import Case, assert_close, to_numpy
from ms_attention import ops, primitives
from ms_attention import opdef as ms_attention_opdef
from ms_attention.kernels.reference.incre_flash_attention import incre_flash_attention as reference


class PrimitiveCell(nn.Cell):
    """As MindFormers-style attention cells do: the primitive made in __init__, called in construct."""

    def __init__(self, n, kvn, layout, scale, lens_as=None):
        super().__init__()
        self.op = primitives.IncreFlashAttention(num_heads=n, input_layout=layout, scale_value=scale,
                                                 num_key_value_heads=kvn)
        self.lens_as = lens_as

    def construct(self, q, k, v, lens):
        if self.lens_as == "tuple":
            return self.op(q, [k], [v], None, (int(7), int(30)), None, None, None, None, None, None, None, None,
                           None, None)
        return self.op(q, [k], [v], None, lens, None, None, None, None, None, None, None, None, None, None)


def _call(mode, cell, *args):
    if mode == "graph":
        ms.set_context(mode=ms.GRAPH_MODE)
        return cell(*args)
    ms.set_context(mode=ms.PYNATIVE_MODE)
    if mode == "jit":
        return ms.jit(cell.construct)(*args)
    return cell(*args)


@pytest.mark.parametrize("layout", ["BSH", "BNSD", "BSND"])
def test_primitive_held_by_a_cell(mode, layout):
    case = Case(b=2, n=8, kvn=2, s=30, d=32, layout=layout)
    lens = np.array([7, 30], np.int64)
    cell = PrimitiveCell(8, 2, layout, case.attrs["scale_value"])
    out = _call(mode, cell, case.ms["query"], case.ms["key"], case.ms["value"], Tensor(lens))
    assert_close(to_numpy(out), case.expected(actual_seq_lengths=lens), "float16")


def test_primitive_with_tuple_lengths_and_few_inputs(mode):
    """Lengths as a tuple constant, and the short call sglang-style backends make (5 inputs)."""
    case = Case(b=2, n=4, kvn=4, s=30, d=16, layout="BSH")
    cell = PrimitiveCell(4, 4, "BSH", case.attrs["scale_value"], lens_as="tuple")
    out = _call(mode, cell, case.ms["query"], case.ms["key"], case.ms["value"], None)
    assert_close(to_numpy(out), case.expected(actual_seq_lengths=[7, 30]), "float16")
    prim = primitives.IncreFlashAttention(num_heads=4, scale_value=case.attrs["scale_value"])
    ms.set_context(mode=ms.PYNATIVE_MODE)
    short = prim(case.ms["query"], [case.ms["key"]], [case.ms["value"]], None, Tensor(np.array([7, 30])))
    assert_close(to_numpy(short), case.expected(actual_seq_lengths=[7, 30]), "float16")


def test_primitive_attribute_errors_at_construction():
    with pytest.raises(TypeError, match="num_heads"):
        primitives.IncreFlashAttention(num_heads=8.0)
    with pytest.raises(ValueError, match="input_layout"):
        primitives.IncreFlashAttention(num_heads=8, input_layout="TND")
    prim = primitives.IncreFlashAttention(num_heads=8)
    assert prim.shard(((1, 1, 1),)) is prim and prim.add_prim_attr("x", 1) is prim
    assert prim.name == "IncreFlashAttention"


class DynamicCell(nn.Cell):
    def __init__(self, n, kvn, layout, scale):
        super().__init__()
        self.op = primitives.IncreFlashAttention(num_heads=n, input_layout=layout, scale_value=scale,
                                                 num_key_value_heads=kvn)

    def construct(self, q, k, v, lens):
        return self.op(q, [k], [v], actual_seq_lengths=lens)


def _unknown(shape, axis):
    return [None if i == axis else d for i, d in enumerate(shape)]


DYNAMIC = {
    # which dims of (query, key/value) are unknown at compile time, per layout; None = unknown rank
    "batch": lambda q, k, layout: (_unknown(q, 0), _unknown(k, 0)),
    "kv_length": lambda q, k, layout: (list(q), _unknown(k, 2 if layout == "BNSD" else 1)),
    "all_dims": lambda q, k, layout: ([None] * len(q), [None] * len(k)),
    "rank": lambda q, k, layout: (None, None),
}


@pytest.mark.parametrize("kind", sorted(DYNAMIC))
@pytest.mark.parametrize("layout", ["BSH", "BNSD", "BSND"])
def test_dynamic_shapes_one_graph_many_shapes(kind, layout):
    """One compiled graph serves calls with different batch sizes and KV lengths, with correct numbers."""
    ms.set_context(mode=ms.GRAPH_MODE)
    shapes = {"batch": [(2, 40), (5, 40), (3, 40)], "kv_length": [(2, 40), (2, 17), (2, 64)]}.get(
        kind, [(2, 40), (5, 17), (3, 64)])
    first = Case(b=shapes[0][0], n=8, kvn=2, s=shapes[0][1], d=32, layout=layout)
    cell = DynamicCell(8, 2, layout, first.attrs["scale_value"])
    q_dims, k_dims = DYNAMIC[kind](first.ms["query"].shape, first.ms["key"].shape, layout)
    lens_spec = Tensor(shape=[None], dtype=ms.int64)
    cell.set_inputs(Tensor(shape=q_dims, dtype=ms.float16), Tensor(shape=k_dims, dtype=ms.float16),
                    Tensor(shape=k_dims, dtype=ms.float16), lens_spec)
    for seed, (b, s) in enumerate(shapes):
        case = Case(b=b, n=8, kvn=2, s=s, d=32, layout=layout, seed=seed)
        lens = np.maximum(1, s - np.arange(b) * 3).astype(np.int64)
        out = cell(case.ms["query"], case.ms["key"], case.ms["value"], Tensor(lens))
        assert out.shape == case.ms["query"].shape
        assert_close(to_numpy(out), case.expected(actual_seq_lengths=lens), "float16")


def test_dynamic_shapes_still_check_what_is_known():
    """With the batch unknown, a head-dim mismatch between query and key is still a compile-time error."""
    ms.set_context(mode=ms.GRAPH_MODE)
    cell = DynamicCell(8, 2, "BSH", 0.1)
    cell.set_inputs(Tensor(shape=[None, 1, 256], dtype=ms.float16), Tensor(shape=[None, None, 96],
                                                                             dtype=ms.float16),
                    Tensor(shape=[None, None, 96], dtype=ms.float16), Tensor(shape=[None], dtype=ms.int64))
    q = Tensor(np.ones((2, 1, 256), np.float16))
    k = Tensor(np.ones((2, 9, 96), np.float16))
    with pytest.raises(RuntimeError, match="shape of 'key'"):
        cell(q, k, k, Tensor(np.array([9, 9])))


class AttributeAsInput(nn.Cell):
    def construct(self, q, k, v, num_heads):
        return ops.incre_flash_attention(q, [k], [v], num_heads=num_heads)


def test_attribute_given_as_graph_input_is_a_type_error():
    ms.set_context(mode=ms.GRAPH_MODE)
    q = Tensor(np.ones((2, 1, 64), np.float16))
    k = Tensor(np.ones((2, 5, 64), np.float16))
    with pytest.raises(TypeError, match="must be a constant"):
        AttributeAsInput()(q, k, k, mutable(4))


BLOCK, BLOCKS_PER_SEQ, KV_HEADS, HEADS, DIM = 16, 4, 2, 8, 32


class PagedDecode(nn.Cell):
    """vLLM style: scatter the new token's K/V into Parameter caches, then attend over the paged cache."""

    def __init__(self, batch, layout):
        super().__init__()
        blocks = batch * BLOCKS_PER_SEQ
        shape = (blocks, BLOCK, KV_HEADS * DIM) if layout == "BSH" else (blocks, KV_HEADS, BLOCK, DIM)
        self.key_cache = Parameter(Tensor(np.zeros(shape, np.float16)), name="key_cache")
        self.value_cache = Parameter(Tensor(np.zeros(shape, np.float16)), name="value_cache")
        self.layout = layout
        self.op = primitives.IncreFlashAttention(num_heads=HEADS, input_layout=layout, scale_value=DIM ** -0.5,
                                                 num_key_value_heads=KV_HEADS, block_size=BLOCK)

    def construct(self, q, k_new, v_new, slots, block_table, seq_lens):
        ms_ops.scatter_nd_update(self.key_cache, slots, k_new)
        ms_ops.scatter_nd_update(self.value_cache, slots, v_new)
        return self.op(q, [self.key_cache], [self.value_cache], None, seq_lens, None, None, None, None, None, None,
                       None, None, block_table, None)


def test_paged_decode_with_dynamic_batch_and_table():
    """One graph for a paged decode step whose batch size and table width change between calls."""
    ms.set_context(mode=ms.GRAPH_MODE)
    net = PagedDecode(4, "BSH")
    net.set_inputs(Tensor(shape=[None, 1, HEADS * DIM], dtype=ms.float16),
                   Tensor(shape=[None, KV_HEADS * DIM], dtype=ms.float16),
                   Tensor(shape=[None, KV_HEADS * DIM], dtype=ms.float16), Tensor(shape=[None, 2], dtype=ms.int32),
                   Tensor(shape=[None, None], dtype=ms.int32), Tensor(shape=[None], dtype=ms.int64))
    rng = np.random.default_rng(3)
    for batch, width in ((4, 4), (2, 3), (3, 4)):
        table = rng.permutation(4 * BLOCKS_PER_SEQ)[:batch * width].reshape(batch, width).astype(np.int32)
        lens = rng.integers(1, width * BLOCK - 1, batch).astype(np.int64)
        block = table[np.arange(batch), lens // BLOCK]
        slots = np.stack([block, lens % BLOCK], 1).astype(np.int32)
        lens = lens + 1
        q = rng.standard_normal((batch, 1, HEADS * DIM)).astype(np.float16)
        k_new = rng.standard_normal((batch, KV_HEADS * DIM)).astype(np.float16)
        out = net(Tensor(q), Tensor(k_new), Tensor(k_new), Tensor(slots), Tensor(table), Tensor(lens))
        expected = reference(q.astype(np.float32), net.key_cache.asnumpy().astype(np.float32),
                             net.value_cache.asnumpy().astype(np.float32), actual_seq_lengths=lens,
                             block_table=table, num_heads=HEADS, input_layout="BSH", scale_value=DIM ** -0.5,
                             num_key_value_heads=KV_HEADS, block_size=BLOCK)
        assert_close(to_numpy(out), expected, "float16")


@pytest.mark.parametrize("layout", ["BSH", "BNSD"])
def test_paged_decode_loop_with_parameter_cache(mode, layout):
    batch = 3
    rng = np.random.default_rng(1)
    net = PagedDecode(batch, layout)
    table = rng.permutation(batch * BLOCKS_PER_SEQ).reshape(batch, BLOCKS_PER_SEQ).astype(np.int32)
    lens = np.array([3, 20, 9], np.int64)
    for _ in range(4):
        pos = lens.copy()
        block = table[np.arange(batch), pos // BLOCK]
        if layout == "BSH":
            slots = np.stack([block, pos % BLOCK], 1).astype(np.int32)
            new_shape = (batch, KV_HEADS * DIM)
            q_shape = (batch, 1, HEADS * DIM)
        else:   # one (block, head, slot) index per head
            slots = np.stack([np.repeat(block, KV_HEADS), np.tile(np.arange(KV_HEADS), batch),
                              np.repeat(pos % BLOCK, KV_HEADS)], 1).astype(np.int32)
            new_shape = (batch * KV_HEADS, DIM)
            q_shape = (batch, HEADS, 1, DIM)
        lens = lens + 1
        q = rng.standard_normal(q_shape).astype(np.float16)
        k_new = rng.standard_normal(new_shape).astype(np.float16)
        v_new = rng.standard_normal(new_shape).astype(np.float16)
        args = [Tensor(q), Tensor(k_new), Tensor(v_new), Tensor(slots), Tensor(table), Tensor(lens)]
        out = _call(mode, net, *args)
        expected = reference(q.astype(np.float32), net.key_cache.asnumpy().astype(np.float32),
                             net.value_cache.asnumpy().astype(np.float32), actual_seq_lengths=lens,
                             block_table=table, num_heads=HEADS, input_layout=layout, scale_value=DIM ** -0.5,
                             num_key_value_heads=KV_HEADS, block_size=BLOCK)
        assert_close(to_numpy(out), expected, "float16")


class CreatedInConstruct(nn.Cell):
    def construct(self, q, k, v):
        return primitives.IncreFlashAttention(num_heads=4, num_key_value_heads=2, scale_value=0.25)(q, [k], [v])


def test_primitive_created_inside_construct(mode):
    case = Case(b=2, n=4, kvn=2, s=12, d=16, layout="BSH")
    case.attrs["scale_value"] = 0.25
    out = _call(mode, CreatedInConstruct(), case.ms["query"], case.ms["key"], case.ms["value"])
    assert_close(to_numpy(out), case.expected(), "float16")


class MutableLengths(nn.Cell):
    def construct(self, q, k, v, a, b):
        return ops.incre_flash_attention(q, [k], [v], actual_seq_lengths=mutable((a, b)), num_heads=4)


def test_lengths_as_a_run_time_tuple_is_a_clear_type_error():
    ms.set_context(mode=ms.GRAPH_MODE)
    q = Tensor(np.ones((2, 1, 64), np.float16))
    k = Tensor(np.ones((2, 5, 64), np.float16))
    with pytest.raises(TypeError, match="actual_seq_lengths.*int64 Tensor"):
        MutableLengths()(q, k, k, mutable(3), mutable(5))


class AllDynamic(nn.Cell):
    def __init__(self, **attrs):
        super().__init__()
        self.op = primitives.IncreFlashAttention(**attrs)

    def construct(self, q, k, v, lens, pse):
        return self.op(q, [k], [v], None, lens, pse)


def _all_dynamic(**attrs):
    ms.set_context(mode=ms.GRAPH_MODE)
    cell = AllDynamic(**attrs)
    cell.set_inputs(Tensor(shape=None, dtype=ms.float16), Tensor(shape=None, dtype=ms.float16),
                    Tensor(shape=None, dtype=ms.float16), Tensor(shape=None, dtype=ms.int64),
                    Tensor(shape=None, dtype=ms.float16))
    return cell


@pytest.mark.parametrize("what", ["head_dim_limit", "pse_head_dim", "empty_lengths"])
def test_what_only_the_kernel_can_see_is_checked_at_run_time(what):
    """With unknown ranks nothing about the shapes is known at compile time: the kernel applies the same
    checks to the real shapes, and the RuntimeError names the problem."""
    d = {"head_dim_limit": 1024, "pse_head_dim": 24, "empty_lengths": 32}[what]
    q = Tensor(np.ones((2, 1, 2 * d), np.float16))
    k = Tensor(np.ones((2, 8, 2 * d), np.float16))
    lens = Tensor(np.zeros((0,), np.int64)) if what == "empty_lengths" else Tensor(np.array([8, 8]))
    pse = Tensor(np.zeros((1, 2, 1, 8), np.float16))
    message = {"head_dim_limit": "head dim D must not exceed 512", "pse_head_dim": "multiple of 16",
               "empty_lengths": "actual_seq_lengths"}[what]
    with pytest.raises(RuntimeError, match=message):
        _all_dynamic(num_heads=2, scale_value=0.1)(q, k, k, lens, pse).asnumpy()


def test_declared_only_primitives_construct_and_raise_at_call():
    """A network may build an operator it does not call on this machine (prefill cell, decode-only run)."""
    prim = primitives.SparseFlashAttention()
    ms.set_context(mode=ms.PYNATIVE_MODE)
    q = Tensor(np.ones((1, 4, 64), np.float16))
    with pytest.raises(RuntimeError, match="no kernel serves this call"):
        prim(q, q, q, Tensor(np.zeros((1, 4, 1, 1), np.int32)), 0.1)


@pytest.mark.parametrize("value", [[4], {"n": 4}])
def test_unhashable_attribute_gets_the_documented_type_error(value):
    with pytest.raises(TypeError, match="'num_heads' must be an int"):
        primitives.IncreFlashAttention(num_heads=value)
    ms.set_context(mode=ms.PYNATIVE_MODE)
    q = Tensor(np.ones((2, 1, 64), np.float16))
    with pytest.raises(TypeError, match="'num_heads' must be an int"):
        ops.incre_flash_attention(q, q, q, num_heads=value)


def test_attributes_that_default_to_none_are_constants():
    """A constant None attribute (FIA v2's *_dtype attributes) is not mistaken for a run-time value."""
    from ms_attention.primitive_base import _require_constants
    names = [a.name for a in ms_attention_opdef.get("fused_infer_attention_score_v2").attributes]
    values = tuple(None if n.endswith("_dtype") else 1 for n in names)
    _require_constants("fused_infer_attention_score_v2",
                       {"value": values, "dtype": tuple(None if v is None else ms.int64 for v in values)})
    with pytest.raises(TypeError, match="must be a constant"):
        _require_constants("fused_infer_attention_score_v2",
                           {"value": values, "dtype": tuple(ms.int64 for _ in values)})
