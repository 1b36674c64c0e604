"""prompt_flash_attention / fused_infer_attention_score (and v2) reached the way MindSpore networks reach them:
the primitive held by a Cell (vLLM-MindSpore and MindSpore-ST call forms), dynamic shapes through set_inputs,
a paged prefill + decode loop that scatters new K/V into Parameter caches, and unmodified MindSpore code after
ms_attention.install(). Numbers are compared with the numpy golden."""
import textwrap

import numpy as np
import pytest
import mindspore as ms
from mindspore import Parameter, Tensor, mutable, nn
from mindspore import ops as ms_ops

from fused_cases import FIA, PFA, V2, Case, assert_close, assert_lse_close, to_numpy
from ms_attention import ops, primitives
from ms_attention.kernels.reference import fused_attention as golden
from test_install import PACKAGE_PARENT, _run

COMPRESSED_MASK = np.triu(np.ones((2048, 2048), bool), 1)


def _call(mode, cell, *args):
    if mode == "graph":
        ms.set_context(mode=ms.GRAPH_MODE)
        return cell(*args)
    ms.set_context(mode=ms.PYNATIVE_MODE)
    if mode == "jit":
        return ms.jit(cell.construct)(*args)
    return cell(*args)


# ---- PromptFlashAttention held by a Cell ---------------------------------------------------------------------

class PFACell(nn.Cell):
    """As vLLM-MindSpore's prefill does: PromptFlashAttention(...)(q, k, v, attn_mask)."""

    def __init__(self, **attrs):
        super().__init__()
        self.pfa = primitives.PromptFlashAttention(**attrs)

    def construct(self, q, k, v, mask):
        return self.pfa(q, k, v, mask)


@pytest.mark.parametrize("layout", ["BSH", "BNSD", "BSND"])
def test_pfa_primitive_with_a_causal_mask(mode, layout):
    """sparse_mode 0 with a mask and next_tokens 0 (PFA's default), as prefill code writes it."""
    case = Case(PFA, b=2, n=8, kvn=2, sq=16, skv=16, d=32, layout=layout)
    case.add_mask(np.broadcast_to(COMPRESSED_MASK[:16, :16], (2, 1, 16, 16)), "bool")
    cell = PFACell(num_heads=8, scale_value=case.attrs["scale_value"], input_layout=layout, num_key_value_heads=2,
                   inner_precise=1)
    out = _call(mode, cell, case.ms["query"], case.ms["key"], case.ms["value"], case.ms["attn_mask"])
    assert out.shape == case.ms["query"].shape
    assert_close(to_numpy(out), case.expected()[0], "float16")


class PFAPositional(nn.Cell):
    def __init__(self, **attrs):
        super().__init__()
        self.pfa = primitives.PromptFlashAttention(**attrs)

    def construct(self, q, k, v, lens, lens_kv):
        return self.pfa(q, k, v, None, lens, lens_kv, None, None, None, None, None, None)


@pytest.mark.parametrize("layout", ["BSH", "TND"])
def test_pfa_primitive_all_inputs_positional(mode, layout):
    q_lens, kv_lens = [9, 4], [20, 13]
    case = Case(PFA, b=2, n=4, kvn=4, sq=9, skv=20, d=32, layout=layout,
                **(dict(q_lens=q_lens, kv_lens=kv_lens) if layout == "TND" else {}))
    lens = np.cumsum(q_lens) if layout == "TND" else np.array(q_lens)
    lens_kv = np.cumsum(kv_lens) if layout == "TND" else np.array(kv_lens)
    cell = PFAPositional(num_heads=4, scale_value=case.attrs["scale_value"], pre_tokens=2147483647,
                         next_tokens=2147483647, input_layout=layout, sparse_mode=3)
    out = _call(mode, cell, case.ms["query"], case.ms["key"], case.ms["value"], Tensor(lens.astype(np.int64)),
                Tensor(lens_kv.astype(np.int64)))
    case.attrs["sparse_mode"] = 3
    case.set_lengths(q=q_lens, kv=kv_lens)
    assert_close(to_numpy(out), case.expected()[0], "float16")


# ---- FusedInferAttentionScore held by a Cell -----------------------------------------------------------------

class MindSporeSTStyle(nn.Cell):
    """MindSpore's own ST for FusedInferAttentionScore: the primitive called with 17 positional inputs, key and
    value as lists handed to construct."""

    def __init__(self, **attrs):
        super().__init__()
        self.fias = primitives.FusedInferAttentionScore(**attrs)

    def construct(self, query, key, value, pse_shift, attn_mask, actual_seq_lengths, actual_seq_lengths_kv,
                  dequant_scale1, quant_scale1, dequant_scale2, quant_scale2, quant_offset2, antiquant_scale,
                  antiquant_offset, block_table, query_padding_size, kv_padding_size):
        return self.fias(query, key, value, pse_shift, attn_mask, actual_seq_lengths, actual_seq_lengths_kv,
                         dequant_scale1, quant_scale1, dequant_scale2, quant_scale2, quant_offset2, antiquant_scale,
                         antiquant_offset, block_table, query_padding_size, kv_padding_size)


@pytest.mark.parametrize("layout,sq", [("BSH", 12), ("BNSD", 1), ("BSND", 7)])
def test_fia_primitive_seventeen_positional_inputs(mode, layout, sq):
    case = Case(FIA, b=2, n=8, kvn=2, sq=sq, skv=32, d=32, layout=layout)
    case.add_mask(case.rng.random((2, 1, sq, 32)) < 0.3, "bool")
    cell = MindSporeSTStyle(num_heads=8, scale_value=case.attrs["scale"], input_layout=layout,
                            num_key_value_heads=2, sparse_mode=1, softmax_lse_flag=True)
    out, lse = _call(mode, cell, case.ms["query"], [case.ms["key"]], [case.ms["value"]], None,
                     case.ms["atten_mask"], None, None, None, None, None, None, None, None, None, None, None, None)
    case.attrs.update(sparse_mode=1, softmax_lse_flag=True)
    want, want_lse = case.expected()
    assert_close(to_numpy(out), want, "float16")
    assert_lse_close(to_numpy(lse), want_lse)


BLOCK, NUM_BLOCKS, KV_HEADS, HEADS, DIM = 16, 24, 2, 8, 32


class VllmStylePagedAttention(nn.Cell):
    """vLLM-MindSpore with a TND FusedInferAttentionScore: write the step's K/V into Parameter caches
    (num_blocks, block_size, kvH), then attend over the paged cache with the compressed causal mask. The same
    graph serves prefill, chunked prefill and decode (each batch one token)."""

    def __init__(self):
        super().__init__()
        shape = (NUM_BLOCKS, BLOCK, KV_HEADS * DIM)
        self.key_cache = Parameter(Tensor(np.zeros(shape, np.float16)), name="key_cache")
        self.value_cache = Parameter(Tensor(np.zeros(shape, np.float16)), name="value_cache")
        self.fia = primitives.FusedInferAttentionScore(num_heads=HEADS, input_layout="TND", scale_value=DIM ** -0.5,
                                                       num_key_value_heads=KV_HEADS, sparse_mode=3,
                                                       inner_precise=1, block_size=BLOCK)

    def construct(self, q, k_new, v_new, slots, attn_mask, q_seq_lens, kv_seq_lens, block_table):
        ms_ops.scatter_nd_update(self.key_cache, slots, k_new)
        ms_ops.scatter_nd_update(self.value_cache, slots, v_new)
        return self.fia(q, [self.key_cache], [self.value_cache], None, attn_mask,
                        actual_seq_lengths=q_seq_lens, actual_seq_lengths_kv=kv_seq_lens,
                        block_table=block_table)[0]


def _serve(net, call, steps, seed=0):
    """Run prefill / chunk / decode steps (new query tokens per batch) through `net`, checking every output
    against the golden on the cache as it stands after the step."""
    rng = np.random.default_rng(seed)
    batch = len(steps[0])
    table = rng.permutation(NUM_BLOCKS)[:batch * 4].reshape(batch, 4).astype(np.int32)
    done = np.zeros(batch, np.int64)
    for new in steps:
        new = np.array(new, np.int64)
        positions = np.concatenate([np.arange(done[b], done[b] + new[b]) for b in range(batch)])
        owners = np.repeat(np.arange(batch), new)
        slots = np.stack([table[owners, positions // BLOCK], positions % BLOCK], 1).astype(np.int32)
        t = int(new.sum())
        q = rng.standard_normal((t, HEADS, DIM)).astype(np.float16)
        k_new = rng.standard_normal((t, KV_HEADS * DIM)).astype(np.float16)
        v_new = rng.standard_normal((t, KV_HEADS * DIM)).astype(np.float16)
        done = done + new
        q_cum = np.cumsum(new)
        out = call(net, Tensor(q), Tensor(k_new), Tensor(v_new), Tensor(slots), Tensor(COMPRESSED_MASK),
                   Tensor(q_cum), Tensor(done.copy()), Tensor(table))
        want, _ = golden.fused_infer_attention_score(
            q.astype(np.float32), net.key_cache.asnumpy().astype(np.float32),
            net.value_cache.asnumpy().astype(np.float32), actual_seq_lengths=q_cum, actual_seq_lengths_kv=done,
            block_table=table, block_size=BLOCK, num_heads=HEADS, num_key_value_heads=KV_HEADS,
            scale=DIM ** -0.5, input_layout="TND", sparse_mode=3)
        assert out.shape == (t, HEADS, DIM)
        assert_close(to_numpy(out), want, "float16")


def test_vllm_style_tnd_paged_prefill_then_decode(mode):
    _serve(VllmStylePagedAttention(), lambda net, *args: _call(mode, net, *args),
           steps=[[5, 9, 3], [1, 1, 1], [4, 2, 6], [1, 1, 1]])


def test_vllm_style_tnd_paged_one_dynamic_graph():
    """The same, compiled once: token count, batch size and table width unknown at compile time."""
    ms.set_context(mode=ms.GRAPH_MODE)
    net = VllmStylePagedAttention()
    net.set_inputs(Tensor(shape=[None, HEADS, DIM], dtype=ms.float16),
                   Tensor(shape=[None, KV_HEADS * DIM], dtype=ms.float16),
                   Tensor(shape=[None, KV_HEADS * DIM], dtype=ms.float16), Tensor(shape=[None, 2], dtype=ms.int32),
                   Tensor(shape=[2048, 2048], dtype=ms.bool_), Tensor(shape=[None], dtype=ms.int64),
                   Tensor(shape=[None], dtype=ms.int64), Tensor(shape=[None, None], dtype=ms.int32))
    _serve(net, lambda n, *args: n(*args), steps=[[7, 2], [1, 1], [3, 12], [1, 1]], seed=1)


# ---- dynamic shapes ------------------------------------------------------------------------------------------

class DynamicPFA(nn.Cell):
    def __init__(self, layout, scale):
        super().__init__()
        self.op = primitives.PromptFlashAttention(num_heads=HEADS, scale_value=scale, input_layout=layout,
                                                  num_key_value_heads=KV_HEADS, sparse_mode=3,
                                                  next_tokens=2147483647)

    def construct(self, q, k, v, lens, lens_kv):
        return self.op(q, k, v, None, lens, lens_kv)


class DynamicFIA(nn.Cell):
    def __init__(self, layout, scale, block_size=0):
        super().__init__()
        self.op = primitives.FusedInferAttentionScore(num_heads=HEADS, scale_value=scale, input_layout=layout,
                                                      num_key_value_heads=KV_HEADS, sparse_mode=3,
                                                      softmax_lse_flag=True, block_size=block_size)

    def construct(self, q, k, v, lens, lens_kv):
        return self.op(q, [k], [v], None, None, lens, lens_kv)


class DynamicPagedFIA(DynamicFIA):
    def construct(self, q, k, v, lens, lens_kv, block_table):
        return self.op(q, [k], [v], None, None, lens, lens_kv, block_table=block_table)


SHAPES = [  # (batch, q lengths, kv lengths): batch and both sequence lengths change between calls
    (2, [8, 5], [24, 13]),
    (3, [3, 1, 6], [40, 9, 30]),
    (1, [12], [12]),
]


def _dynamic_case(op, layout, b, q_lens, kv_lens, seed):
    tnd = dict(q_lens=q_lens, kv_lens=kv_lens) if layout == "TND" else {}
    case = Case(op, b=b, n=HEADS, kvn=KV_HEADS, sq=max(q_lens), skv=max(kv_lens), d=DIM, layout=layout, seed=seed,
                **tnd)
    case.set_lengths(q=q_lens, kv=kv_lens, form="int64")
    case.attrs["sparse_mode"] = 3
    return case


def _unknown(tensor):
    return Tensor(shape=[None] * tensor.ndim, dtype=tensor.dtype)


@pytest.mark.parametrize("op", [PFA, FIA])
@pytest.mark.parametrize("layout", ["BSH", "BNSD", "TND"])
def test_dynamic_shapes_one_graph_many_shapes(op, layout):
    ms.set_context(mode=ms.GRAPH_MODE)
    scale = DIM ** -0.5
    cell = DynamicPFA(layout, scale) if op == PFA else DynamicFIA(layout, scale)
    first = _dynamic_case(op, layout, *SHAPES[0], seed=0)
    specs = [_unknown(first.ms[n]) for n in ("query", "key", "value")] + [Tensor(shape=[None], dtype=ms.int64)] * 2
    cell.set_inputs(*specs)
    for seed, shape in enumerate(SHAPES):
        case = _dynamic_case(op, layout, *shape, seed=seed)
        kwargs = case.kwargs()
        args = [kwargs[n] for n in ("query", "key", "value", "actual_seq_lengths", "actual_seq_lengths_kv")]
        result = cell(*args)
        if op == FIA:
            case.attrs["softmax_lse_flag"] = True
        want, want_lse = case.expected()
        out = result if op == PFA else result[0]
        assert out.shape == case.ms["query"].shape
        assert_close(to_numpy(out), want, "float16")
        if op == FIA:
            assert_lse_close(to_numpy(result[1]), want_lse)


@pytest.mark.parametrize("cache_layout,layout", [("BnBsH", "BSH"), ("BnNBsD", "BNSD")])
def test_dynamic_paged_prefill_and_decode(cache_layout, layout):
    """One graph for paged steps whose batch, query length, table width and cache size change between calls."""
    ms.set_context(mode=ms.GRAPH_MODE)
    cell = DynamicPagedFIA(layout, DIM ** -0.5, block_size=16)
    cache = [None, 16, KV_HEADS * DIM] if cache_layout == "BnBsH" else [None, KV_HEADS, 16, DIM]
    q_spec = [None, None, HEADS * DIM] if layout == "BSH" else [None, HEADS, None, DIM]
    cell.set_inputs(Tensor(shape=q_spec, dtype=ms.float16), Tensor(shape=cache, dtype=ms.float16),
                    Tensor(shape=cache, dtype=ms.float16), Tensor(shape=[None], dtype=ms.int64),
                    Tensor(shape=[None], dtype=ms.int64), Tensor(shape=[None, None], dtype=ms.int32))
    for seed, (b, sq, kv_lens) in enumerate([(2, 6, [40, 23]), (3, 1, [17, 64, 5]), (1, 4, [33])]):
        case = Case(FIA, b=b, n=HEADS, kvn=KV_HEADS, sq=sq, skv=max(kv_lens), d=DIM, layout=layout, seed=seed)
        case.page(16, cache_layout, seed=seed)
        q_lens = [sq] * b
        case.set_lengths(q=q_lens, kv=kv_lens, form="int64")
        case.attrs.update(sparse_mode=3, softmax_lse_flag=True)
        kwargs = case.kwargs()
        out, lse = cell(kwargs["query"], kwargs["key"], kwargs["value"], kwargs["actual_seq_lengths"],
                        kwargs["actual_seq_lengths_kv"], kwargs["block_table"])
        want, want_lse = case.expected()
        assert_close(to_numpy(out), want, "float16")
        assert_lse_close(to_numpy(lse), want_lse)


# ---- v2 ------------------------------------------------------------------------------------------------------

class MLADecode(nn.Cell):
    def __init__(self, n, scale, block_size):
        super().__init__()
        self.op = primitives.FusedInferAttentionScoreV2(num_query_heads=n, num_key_value_heads=1,
                                                        softmax_scale=scale, input_layout="BNSD", sparse_mode=3,
                                                        block_size=block_size, return_softmax_lse=True)

    def construct(self, q, k, v, q_rope, k_rope, lens_kv, block_table):
        return self.op(q, k, v, q_rope, k_rope, None, None, None, lens_kv, block_table)


def test_v2_primitive_mla_paged(mode):
    case = Case(V2, b=2, n=16, kvn=1, sq=2, skv=48, d=512, layout="BNSD", rope_dim=64)
    case.page(16, "BnNBsD")
    case.set_lengths(kv=[48, 29], form="int64")
    cell = MLADecode(16, case.attrs["softmax_scale"], 16)
    kwargs = case.kwargs()
    out, lse = _call(mode, cell, kwargs["query"], kwargs["key"], kwargs["value"], kwargs["query_rope"],
                     kwargs["key_rope"], kwargs["actual_seq_lengths_kv"], kwargs["block_table"])
    case.attrs.update(sparse_mode=3, return_softmax_lse=True)
    want, want_lse = case.expected()
    assert_close(to_numpy(out), want, "float16")
    assert_lse_close(to_numpy(lse), want_lse)


# ---- errors in graphs ----------------------------------------------------------------------------------------

class AttributeAsInput(nn.Cell):
    def construct(self, q, k, v, num_heads):
        return ops.fused_infer_attention_score(q, [k], [v], num_heads=num_heads)


def test_attribute_given_as_graph_input_is_a_type_error():
    ms.set_context(mode=ms.GRAPH_MODE)
    q = Tensor(np.ones((2, 4, 64), np.float16))
    with pytest.raises(TypeError, match="must be a constant"):
        AttributeAsInput()(q, q, q, mutable(4))


# ---- unmodified MindSpore code after ms_attention.install() --------------------------------------------------

MODEL_CODE = textwrap.dedent("""
    import sys
    import numpy as np
    import mindspore as ms
    from mindspore import Tensor, nn
    sys.path.insert(0, %(parent)r)
    import ms_attention
    ms.set_context(mode=%(mode)s)
    ms_attention.install()

    import mindspore.ops as ops
    import mindspore.ops.operations.nn_ops as nn_ops
    from mindspore.ops import auto_generate
    from mindspore.ops.auto_generate import gen_ops_prim
    from mindspore.ops.operations import _infer_ops
    from mindspore.ops.function.nn_func import prompt_flash_attention as pfa_from_nn_func
    from ms_attention.kernels.reference import fused_attention as golden

    B, N, KVN, S, D = 2, 4, 2, 12, 16
    SCALE = 0.25
    rng = np.random.default_rng(0)
    q = Tensor(rng.standard_normal((B, S, N * D)).astype(np.float16))
    k = Tensor(rng.standard_normal((B, S, KVN * D)).astype(np.float16))
    v = Tensor(rng.standard_normal((B, S, KVN * D)).astype(np.float16))
    mask = Tensor(np.triu(np.ones((B, 1, S, S), bool), 1))
    as_np = lambda t: t.asnumpy().astype(np.float32)
    # sparse_mode 0, a causal mask, next_tokens 0: what both operators compute below
    expected = golden.prompt_flash_attention(as_np(q), as_np(k), as_np(v), attn_mask=mask.asnumpy(), num_heads=N,
                                             scale_value=SCALE, num_key_value_heads=KVN, next_tokens=0)

    class PFAFunctional(nn.Cell):
        def __init__(self, fn):
            super().__init__()
            self.fn = fn
        def construct(self, q, k, v, mask):
            # 20 positional arguments, as MindSpore's own ST calls it
            return self.fn(q, k, v, mask, None, None, None, None, None, None, None, None,
                           N, SCALE, 2147483647, 0, "BSH", KVN, 0, 1)

    class PFAPrimitive(nn.Cell):
        def __init__(self, cls):
            super().__init__()
            self.op = cls(num_heads=N, scale_value=SCALE, pre_tokens=2147483647, next_tokens=0,
                          input_layout="BSH", num_key_value_heads=KVN, sparse_mode=0, inner_precise=1)
        def construct(self, q, k, v, mask):
            return self.op(q, k, v, mask, None, None, None, None, None, None, None, None)

    class FIAFunctional(nn.Cell):
        def construct(self, q, k, v, mask):
            return ops.fused_infer_attention_score(q, [k], [v], atten_mask=mask, num_heads=N, scale=SCALE,
                                                   next_tokens=0, input_layout="BSH", num_key_value_heads=KVN)[0]

    class FIAPrimitive(nn.Cell):
        # MindSpore's own ST: 17 positional inputs, key/value lists made in construct
        def __init__(self, cls, all_inputs=False):
            super().__init__()
            self.all_inputs = all_inputs
            self.op = cls(num_heads=N, scale_value=SCALE, pre_tokens=2147483647, next_tokens=0,
                          input_layout="BSH", num_key_value_heads=KVN, sparse_mode=0, inner_precise=1)
        def construct(self, q, k, v, mask):
            if self.all_inputs:     # every one of the 24 inputs
                return self.op(q, [k], [v], None, mask, None, None, None, None, None, None, None, None, None,
                               None, None, None, None, None, None, None, None, None, None)[0]
            return self.op(q, [k], [v], None, mask, None, None, None, None, None, None, None, None, None,
                           None, None, None)[0]

    paths = {
        "mindspore.ops.prompt_flash_attention": PFAFunctional(ops.prompt_flash_attention),
        "nn_func.prompt_flash_attention": PFAFunctional(pfa_from_nn_func),
        "nn_ops.PromptFlashAttention": PFAPrimitive(nn_ops.PromptFlashAttention),
        "auto_generate.PromptFlashAttention": PFAPrimitive(auto_generate.PromptFlashAttention),
        "gen_ops_prim.PromptFlashAttention": PFAPrimitive(gen_ops_prim.PromptFlashAttention),
        "mindspore.ops.fused_infer_attention_score": FIAFunctional(),
        "auto_generate.FusedInferAttentionScore": FIAPrimitive(auto_generate.FusedInferAttentionScore),
        "_infer_ops.FusedInferAttentionScore": FIAPrimitive(_infer_ops.FusedInferAttentionScore),
        "gen_ops_prim.FusedInferAttentionScore, 24 inputs": FIAPrimitive(gen_ops_prim.FusedInferAttentionScore,
                                                                         all_inputs=True),
    }
    for name, cell in paths.items():
        try:
            out = cell(q, k, v, mask).asnumpy().astype(np.float64)
            err = np.abs(out - expected).max()
            print("PATH", name, "OK" if err < 5e-3 else f"WRONG {err}")
        except Exception as e:   # report, do not stop: every path is checked
            print("PATH", name, "FAILED", type(e).__name__, str(e).splitlines()[0][:200])
""")


@pytest.mark.parametrize("mode", ["ms.PYNATIVE_MODE", "ms.GRAPH_MODE"])
def test_every_mindspore_path_reaches_ms_attention(mode, tmp_path):
    out = _run(MODEL_CODE % dict(parent=PACKAGE_PARENT, mode=mode), tmp_path, "fused_model")
    results = [line for line in out.splitlines() if line.startswith("PATH ")]
    assert len(results) == 9, out
    assert all(line.endswith(" OK") for line in results), "\n".join(results)
