"""prompt_flash_attention, fused_infer_attention_score and v2 in Graph-mode Cells with dynamic shapes
(Cell.set_inputs with None dims or an unknown rank): the checks let what is unknown at compile time through, the
graph compiles once and serves calls of different shapes; what is known is still checked at compile time."""
import numpy as np
import pytest
import mindspore as ms
from mindspore import Tensor, nn

from fused_cases import MS_DTYPE as MS, lengths, t
from ms_attention import ops, primitives

N, KVN, D = 8, 2, 32


def spec(dims, dtype=ms.float16):
    return Tensor(shape=dims, dtype=dtype)


class PromptCell(nn.Cell):
    def __init__(self, **attrs):
        super().__init__()
        self.op = primitives.PromptFlashAttention(num_heads=N, num_key_value_heads=KVN, scale_value=D ** -0.5,
                                                  **attrs)

    def construct(self, q, k, v, mask, kv_lens):
        return self.op(q, k, v, mask, None, kv_lens)


class FusedCell(nn.Cell):
    def __init__(self, **attrs):
        super().__init__()
        self.op = primitives.FusedInferAttentionScore(num_heads=N, num_key_value_heads=KVN, scale_value=D ** -0.5,
                                                      **attrs)

    def construct(self, q, k, v, mask, kv_lens):
        return self.op(q, [k], [v], None, mask, None, kv_lens)


def _compile_and_run(cell, specs, calls):
    ms.set_context(mode=ms.GRAPH_MODE)
    cell.set_inputs(*specs)
    for args in calls:
        out = cell(*args)
        out = out[0] if isinstance(out, tuple) else out
        assert out.shape == args[0].shape


def _bsh_calls(sq_values, mask_dtype="bool"):
    """(query, key, value, mask, kv lengths) for batches of different sizes and lengths."""
    calls = []
    for b, sq, skv in zip((2, 3, 1), sq_values, (32, 40, 17)):
        kv = t((b, skv, KVN * D))
        mask = t((sq, skv), mask_dtype) if sq > 1 else t((b, skv), mask_dtype)
        calls.append((t((b, sq, N * D)), kv, kv, mask, lengths(np.full(b, skv - 1))))
    return calls


BSH_SPECS = [spec([None, None, N * D]), spec([None, None, KVN * D]), spec([None, None, KVN * D]),
             spec([None, None], ms.bool_), spec([None], ms.int64)]


def test_prompt_dynamic_batch_and_lengths():
    _compile_and_run(PromptCell(), BSH_SPECS, _bsh_calls((16, 5, 9)))


def test_prompt_unknown_rank():
    specs = [spec(None), spec(None), spec(None), spec(None, ms.bool_), spec(None, ms.int64)]
    calls = [(t((2, N, 16, D)), t((2, KVN, 32, D)), t((2, KVN, 32, D)), t((16, 32), "bool"), lengths([32, 7])),
             (t((1, N, 3, D)), t((1, KVN, 8, D)), t((1, KVN, 8, D)), t((3, 8), "bool"), lengths([8]))]
    _compile_and_run(PromptCell(input_layout="BNSD"), specs, calls)


def test_fused_query_length_unknown_serves_prefill_and_decode():
    """The query length is unknown at compile time: the prefill and the single-token (incremental) branch run
    from the same graph, each with its own mask shape."""
    _compile_and_run(FusedCell(), BSH_SPECS, _bsh_calls((16, 1, 4)))


def test_fused_causal_with_compressed_mask_and_dynamic_shapes():
    specs = [spec([None, N, None, D]), spec([None, KVN, None, D]), spec([None, KVN, None, D]),
             spec([2048, 2048], ms.bool_), spec([None], ms.int64)]
    calls = [(t((b, N, sq, D)), t((b, KVN, skv, D)), t((b, KVN, skv, D)), t((2048, 2048), "bool"),
              lengths(np.full(b, skv))) for b, sq, skv in ((2, 16, 32), (3, 7, 9))]
    _compile_and_run(FusedCell(input_layout="BNSD", sparse_mode=3), specs, calls)


class PagedCell(nn.Cell):
    def __init__(self):
        super().__init__()
        self.op = primitives.FusedInferAttentionScore(num_heads=N, num_key_value_heads=KVN, block_size=16,
                                                      softmax_lse_flag=True)

    def construct(self, q, k, v, table, kv_lens):
        return self.op(q, [k], [v], actual_seq_lengths_kv=kv_lens, block_table=table)


def test_fused_paged_with_dynamic_batch_and_table():
    specs = [spec([None, None, N * D]), spec([8, 16, KVN * D]), spec([8, 16, KVN * D]),
             spec([None, None], ms.int32), spec([None], ms.int64)]
    cache = t((8, 16, KVN * D))
    calls = [(t((2, 1, N * D)), cache, cache, Tensor(np.array([[0, 1], [2, 3]], np.int32)), lengths([20, 3])),
             (t((3, 5, N * D)), cache, cache, Tensor(np.array([[4], [5], [6]], np.int32)), lengths([16, 9, 5]))]
    _compile_and_run(PagedCell(), specs, calls)


class TndCell(nn.Cell):
    def __init__(self):
        super().__init__()
        self.op = primitives.FusedInferAttentionScore(num_heads=N, num_key_value_heads=KVN, input_layout="TND",
                                                      sparse_mode=3)

    def construct(self, q, k, v, q_lens, kv_lens):
        return self.op(q, [k], [v], actual_seq_lengths=q_lens, actual_seq_lengths_kv=kv_lens)


def test_fused_tnd_with_unknown_token_counts():
    specs = [spec([None, N, D]), spec([None, KVN, D]), spec([None, KVN, D]), spec([None], ms.int64),
             spec([None], ms.int64)]
    calls = [(t((16, N, D)), t((32, KVN, D)), t((32, KVN, D)), lengths([10, 16]), lengths([20, 32])),
             (t((7, N, D)), t((9, KVN, D)), t((9, KVN, D)), lengths([1, 3, 7]), lengths([2, 5, 9]))]
    _compile_and_run(TndCell(), specs, calls)


class RopeCell(nn.Cell):
    def __init__(self):
        super().__init__()
        self.op = primitives.FusedInferAttentionScoreV2(num_query_heads=N, num_key_value_heads=1,
                                                        input_layout="BSND", return_softmax_lse=True)

    def construct(self, q, k, v, q_rope, k_rope):
        return self.op(q, k, v, query_rope=q_rope, key_rope=k_rope)


def test_v2_rope_with_dynamic_shapes():
    """MLA style: one KV head, rope dims beside the head dim, batch and lengths unknown at compile time."""
    specs = [spec([None, None, N, D]), spec([None, None, 1, D]), spec([None, None, 1, D]),
             spec([None, None, N, 16]), spec([None, None, 1, 16])]
    calls = [(t((b, sq, N, D)), t((b, skv, 1, D)), t((b, skv, 1, D)), t((b, sq, N, 16)), t((b, skv, 1, 16)))
             for b, sq, skv in ((2, 4, 32), (1, 1, 9))]
    _compile_and_run(RopeCell(), specs, calls)


@pytest.mark.parametrize("what", ["head_dim", "band_mask"])
def test_dynamic_shapes_still_check_what_is_known(what):
    """With the batch and kv length unknown, a head-dim mismatch, or a mask that cannot be the compressed one of
    sparse_mode 3 (the query length, 4, is known: no single-token call can reach this graph), is still a
    compile-time RuntimeError."""
    ms.set_context(mode=ms.GRAPH_MODE)
    kv_h = 3 * D if what == "head_dim" else KVN * D
    mask_dims = [None, 100] if what == "band_mask" else [None, None]
    cell = FusedCell(sparse_mode=3)
    cell.set_inputs(spec([None, 4, N * D]), spec([None, None, kv_h]), spec([None, None, kv_h]),
                    spec(mask_dims, ms.bool_), spec([None], ms.int64))
    kv = t((2, 100, kv_h))
    with pytest.raises(RuntimeError, match="key" if what == "head_dim" else "attn_mask"):
        cell(t((2, 4, N * D)), kv, kv, t((4, 100), "bool"), lengths([5, 5]))


@pytest.mark.parametrize("what", ["head_dim_limit", "bfloat16_alignment"])
def test_size_limits_unknown_at_compile_time_are_kernel_errors(what):
    """The limits the Python checks apply to known shapes (D <= 512; PFA: a bfloat16 D aligned to 16) reach the
    kernel when the hidden size is dynamic: the same call is rejected at run time, not computed."""
    ms.set_context(mode=ms.GRAPH_MODE)
    d, dtype = (520, "float16") if what == "head_dim_limit" else (40, "bfloat16")
    cell = PromptCell()
    cell.set_inputs(spec([None, None, None], MS[dtype]), spec([None, None, None], MS[dtype]),
                    spec([None, None, None], MS[dtype]), None, None)
    kv = t((1, 3, KVN * d), dtype)
    with pytest.raises(RuntimeError, match="D <= 512" if what == "head_dim_limit" else "aligned to 16"):
        out = cell(t((1, 2, N * d), dtype), kv, kv, None, None)
        out.asnumpy()


class FullQuantCell(nn.Cell):
    def construct(self, q, k, v, deq1, quant1, deq2):
        return ops.fused_infer_attention_score(q, k, v, num_heads=N, num_key_value_heads=KVN, input_layout="BSH",
                                               dequant_scale1=deq1, quant_scale1=quant1, dequant_scale2=deq2)


def test_int8_query_of_one_position_is_a_kernel_error():
    """An int8 query (full quantization) is refused for the incremental branch; with the query length unknown at
    compile time the kernel refuses it at run time instead of computing it."""
    ms.set_context(mode=ms.GRAPH_MODE)
    cell = FullQuantCell()
    cell.set_inputs(spec([None, None, N * D], ms.int8), spec([None, None, KVN * D], ms.int8),
                    spec([None, None, KVN * D], ms.int8), spec([1], ms.float32), spec([1], ms.float32),
                    spec([1], ms.float32))
    kv = t((2, 8, KVN * D), "int8", 1)
    scale = t((1,), "float32", 1)
    out, _ = cell(t((2, 3, N * D), "int8", 1), kv, kv, scale, scale, scale)   # a prefill: computed
    assert out.asnumpy().shape == (2, 3, N * D)
    with pytest.raises(RuntimeError, match="of one position"):
        out, _ = cell(t((2, 1, N * D), "int8", 1), kv, kv, scale, scale, scale)
        out.asnumpy()
