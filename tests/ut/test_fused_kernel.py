"""The C++ kernels of prompt_flash_attention, fused_infer_attention_score and fused_infer_attention_score_v2
against the numpy golden (kernels/reference/fused_attention.py): layouts, sparse modes, masks, pse, TND, paged
caches, lse, sink, rope, shared prefix, quantization, left padding, dynamic shapes and run-time errors."""
import os
import subprocess
import sys

import numpy as np
import pytest
import mindspore as ms
from mindspore import Tensor, nn

from ms_attention import ops
from fused_golden_cases import MASK, FusedCase, assert_lse_close
from ifa_cases import assert_close, to_numpy

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.mark.parametrize("op,layout", [("pfa", "BSH"), ("pfa", "BNSD"), ("pfa", "BSND"), ("fia", "BSH"),
                                       ("fia", "BNSD"), ("fia", "BSND"), ("fia", "BNSD_BSND"),
                                       ("v2", "BSND"), ("v2", "BNSD_BSND")])
def test_layouts(mode, op, layout):
    case = FusedCase(op, layout=layout, seed=1)
    if op != "pfa":
        case.attrs["softmax_lse_flag" if op == "fia" else "return_softmax_lse"] = True
    else:
        case.attrs["next_tokens"] = 2147483647
    case.check(mode)


@pytest.mark.parametrize("sparse_mode,pre,nxt", [(0, 7, 3), (1, 0, 0), (2, 0, 0), (3, 0, 0), (4, 9, 2), (4, 30, -5)])
def test_sparse_modes_with_actual_lengths(mode, sparse_mode, pre, nxt):
    case = FusedCase("fia", b=3, n=4, kvn=1, sq=70, skv=90, seed=sparse_mode)
    case.attrs.update(sparse_mode=sparse_mode, pre_tokens=pre, next_tokens=nxt, softmax_lse_flag=True,
                      actual_seq_lengths=[70, 33, 0], actual_seq_lengths_kv=[90, 61, 20])
    if sparse_mode in (0, 1):
        case.random_mask((3, 1, 70, 90))
    else:
        case.add("atten_mask", np.triu(np.ones((2048, 2048)), 1), "bool")
    case.check(mode)


@pytest.mark.parametrize("shape", [(40, 56), (1, 40, 56), (2, 40, 56), (2, 1, 40, 56), (1, 1, 40, 56),
                                   (2, 1, 48, 64)])
@pytest.mark.parametrize("dtype", ["bool", "uint8"])
def test_mask_shapes(mode, shape, dtype):
    case = FusedCase("pfa", layout="BSH", seed=3)
    case.random_mask(shape, dtype, density=0.4)
    case.attrs.update(next_tokens=2147483647, sparse_mode=1)
    case.check(mode)


def test_pfa_float16_additive_mask_and_band(mode):
    case = FusedCase("pfa", layout="BNSD", seed=4)
    case.add("attn_mask", case.rng.standard_normal((2, 1, 40, 56)), "float16")
    case.attrs.update(pre_tokens=20, next_tokens=5)
    case.check(mode)


@pytest.mark.parametrize("batch", [1, 2])
def test_pse_shift_larger_than_stored(mode, batch):
    case = FusedCase("fia", layout="BSND", seed=5)
    case.add("pse_shift", case.rng.standard_normal((batch, 4, 44, 60)), "float16")
    case.attrs.update(sparse_mode=3, softmax_lse_flag=True, actual_seq_lengths_kv=[56, 30])
    case.add("atten_mask", np.triu(np.ones((2048, 2048)), 1), "bool")
    case.check(mode)


@pytest.mark.parametrize("op,sparse_mode", [("fia", 0), ("fia", 3), ("pfa", 2)])
def test_tnd(mode, op, sparse_mode):
    q_lens, kv_lens = [17, 0, 40, 5], [17, 9, 64, 0]
    case = FusedCase(op, n=4, kvn=2, layout="TND", q_lens=q_lens, kv_lens=kv_lens, seed=6)
    case.attrs.update(sparse_mode=sparse_mode)
    if op == "fia":
        case.attrs["softmax_lse_flag"] = True
    if sparse_mode >= 2:
        case.add(MASK[op], np.triu(np.ones((2048, 2048)), 1), "bool")
    case.check(mode)


def test_tnd_rope_and_sink(mode):
    q_lens, kv_lens = [6, 11], [20, 11]
    case = FusedCase("v2", n=4, kvn=2, layout="TND", q_lens=q_lens, kv_lens=kv_lens, seed=20)
    case.add("query_rope", case.rng.standard_normal((17, 4, 8)), "float16")
    case.add("key_rope", case.rng.standard_normal((31, 2, 8)), "float16")
    case.add("learnable_sink", case.rng.standard_normal(4), "float32")
    case.add("atten_mask", case.rng.random((11, 20)) < 0.3, "bool")
    case.attrs.update(sparse_mode=0, pre_tokens=4, next_tokens=2, return_softmax_lse=True)
    case.check(mode)


def test_tnd_paged_and_bf16(mode):
    q_lens, kv_lens = [3, 20, 1], [35, 20, 50]
    case = FusedCase("fia", n=4, kvn=1, layout="TND", dtype="bfloat16", q_lens=q_lens, kv_lens=kv_lens, seed=8)
    dense = case.rng.standard_normal((3, 1, 50, 32)), case.rng.standard_normal((3, 1, 50, 32))
    case.kv_canonical = (dense[0], dense[1], "bfloat16")
    case.page(block_size=16)
    case.attrs.update(sparse_mode=3, softmax_lse_flag=True, actual_seq_lengths_kv=kv_lens)
    case.check(mode)


@pytest.mark.parametrize("layout,four_d", [("BSH", False), ("BNSD", True), ("BNSD_BSND", False)])
def test_paged_prefill(mode, layout, four_d):
    case = FusedCase("fia", layout=layout, sq=24, skv=70, seed=9)
    case.page(block_size=16, four_d=four_d)
    case.attrs.update(actual_seq_lengths_kv=[70, 41], sparse_mode=3, softmax_lse_flag=True)
    case.check(mode)


def test_learnable_sink_and_lse(mode):
    case = FusedCase("v2", layout="BSND", seed=10)
    case.add("learnable_sink", case.rng.standard_normal(4) + 2, "float32")
    case.add("atten_mask", np.ones((2, 1, 40, 56)), "bool")      # batch 0 sees nothing: lse = sink
    case.np["atten_mask"][1, 0, :, :20] = False
    case.ms["atten_mask"] = Tensor(case.np["atten_mask"])
    case.attrs.update(return_softmax_lse=True)
    case.check(mode)


@pytest.mark.parametrize("paged", [False, True])
def test_rope(mode, paged):
    case = FusedCase("v2", layout="BNSD", sq=1 if paged else 12, seed=11)
    case.add_rope(16)
    if paged:
        case.page(block_size=16, name_rope="key_rope")
        case.attrs["actual_seq_lengths_kv"] = [56, 23]
    case.attrs.update(return_softmax_lse=True)
    case.check(mode)


@pytest.mark.parametrize("prefix_len", [None, 5])
def test_shared_prefix(mode, prefix_len):
    case = FusedCase("fia", layout="BSH", sq=30, skv=40, seed=12)
    case.add("key_shared_prefix", case.rng.standard_normal((1, 9, 2 * 32)), "float16")
    case.add("value_shared_prefix", case.rng.standard_normal((1, 9, 2 * 32)), "float16")
    if prefix_len is not None:
        case.add("actual_shared_prefix_len", np.array([prefix_len]), "int64")
    case.attrs.update(sparse_mode=3, softmax_lse_flag=True, actual_seq_lengths_kv=[40, 22])
    case.add("atten_mask", np.triu(np.ones((2048, 2048)), 1), "bool")
    case.check(mode)


@pytest.mark.parametrize("sq", [1, 20])
@pytest.mark.parametrize("kind", ["tensor", "channel", "token"])
def test_combined_antiquant(mode, sq, kind):
    case = FusedCase("fia", layout="BNSD", sq=sq, kv_dtype="int8", seed=13)
    rng = case.rng
    if kind == "tensor":
        case.add("antiquant_scale", rng.uniform(0.005, 0.02, (2,)), "float16")
        case.add("antiquant_offset", rng.uniform(-3, 3, (2,)), "float16")
    elif kind == "channel":
        case.add("antiquant_scale", rng.uniform(0.005, 0.02, (2, 2, 1, 32)), "float16")
        case.add("antiquant_offset", rng.uniform(-3, 3, (2, 2, 1, 32)), "float16")
    else:
        case.add("antiquant_scale", rng.uniform(0.005, 0.02, (2, 2, 56)), "float32")
        case.add("antiquant_offset", rng.uniform(-3, 3, (2, 2, 56)), "float32")
        case.attrs["antiquant_mode"] = 1
    case.attrs.update(softmax_lse_flag=True, actual_seq_lengths_kv=[56, 31])
    case.check(mode)


@pytest.mark.parametrize("key_mode,value_mode", [(0, 1), (1, 0), (1, 1)])
def test_separate_antiquant(mode, key_mode, value_mode):
    case = FusedCase("v2", layout="BSND", sq=9, kv_dtype="int8", seed=14)
    rng = case.rng
    for side, m in (("key", key_mode), ("value", value_mode)):
        shape = (2, 56) if m == 1 else (2, 32)
        dtype = "float32" if m == 1 else "float16"
        case.add(f"dequant_scale_{side}", rng.uniform(0.005, 0.02, shape), dtype)
        case.add(f"dequant_offset_{side}", rng.uniform(-3, 3, shape), dtype)
    case.attrs.update(key_quant_mode=key_mode, value_quant_mode=value_mode, return_softmax_lse=True)
    case.check(mode)


def test_per_token_antiquant_with_kv_left_padding(mode):
    case = FusedCase("fia", layout="BSND", sq=12, skv=48, kv_dtype="int8", seed=21)
    case.add("antiquant_scale", case.rng.uniform(0.005, 0.02, (2, 2, 48)), "float32")
    case.add("antiquant_offset", case.rng.uniform(-3, 3, (2, 2, 48)), "float32")
    case.add("kv_padding_size", np.array([5]), "int64")
    case.attrs.update(antiquant_mode=1, actual_seq_lengths_kv=[30, 43], softmax_lse_flag=True)
    case.check(mode)


def test_paged_per_token_antiquant_decode(mode):
    case = FusedCase("fia", layout="BSH", sq=1, skv=64, kv_dtype="int8", seed=15)
    case.page(block_size=32)
    case.add("key_antiquant_scale", case.rng.uniform(0.005, 0.02, (2, 64)), "float32")
    case.add("value_antiquant_scale", case.rng.uniform(0.005, 0.02, (2, 64)), "float32")
    case.attrs.update(key_antiquant_mode=1, value_antiquant_mode=1, actual_seq_lengths_kv=[64, 40])
    case.check(mode)


@pytest.mark.parametrize("per_channel", [False, True])
def test_post_quant(mode, per_channel):
    case = FusedCase("fia", layout="BSND", seed=16)
    shape = (4 * 32,) if per_channel else (1,)
    case.add("quant_scale2", case.rng.uniform(50, 150, shape), "float32")
    case.add("quant_offset2", case.rng.uniform(-5, 5, shape), "float32")
    case.attrs.update(sparse_mode=2)
    case.check(mode, out_dtype="int8")


def test_bf16_post_quant_with_bf16_scale_and_float32_antiquant(mode):
    case = FusedCase("fia", layout="BSH", sq=16, dtype="bfloat16", kv_dtype="int8", seed=22)
    case.add("antiquant_scale", case.rng.uniform(0.005, 0.02, (2, 2 * 32)), "float32")
    case.add("quant_scale2", case.rng.uniform(50, 150, (4 * 32,)), "bfloat16")
    case.attrs.update(sparse_mode=3, softmax_lse_flag=True)
    case.add("atten_mask", np.triu(np.ones((2048, 2048)), 1), "bool")
    case.check(mode, out_dtype="int8")


@pytest.mark.parametrize("op,scale_dtype,post", [("pfa", "float32", False), ("fia", "uint64", False),
                                                  ("pfa", "float32", True)])
def test_full_quant(mode, op, scale_dtype, post):
    case = FusedCase(op, layout="BNSD", sq=24, skv=40, dtype="int8", kv_dtype="int8", seed=17)
    case.add("query", case.rng.integers(-100, 100, (2, 4, 24, 32)), "int8")
    values = {"deq1": 0.0004, "quant1": 127.0, "deq2": 0.05}
    names = ({"deq1": "deq_scale1", "quant1": "quant_scale1", "deq2": "deq_scale2"} if op == "pfa" else
             {"deq1": "dequant_scale1", "quant1": "quant_scale1", "deq2": "dequant_scale2"})
    for key, value in values.items():
        array = np.array([value], np.float32)
        if scale_dtype == "uint64" and key != "quant1":
            case.add(names[key], array.view(np.uint32).astype(np.uint64), "uint64")
        else:
            case.add(names[key], array, "float32")
    out_dtype = "float16"
    if post:
        case.add("quant_scale2", np.array([2.0]), "float32")
        out_dtype = "int8"
    if op == "pfa":
        case.attrs["next_tokens"] = 2147483647
    case.check(mode, out_dtype=out_dtype)


@pytest.mark.parametrize("sparse_mode", [0, 1, 3])
def test_left_padding(mode, sparse_mode):
    case = FusedCase("fia", layout="BNSD", sq=30, skv=50, seed=18)
    case.random_mask((30, 50))
    case.add("query_padding_size", np.array([3]), "int64")
    case.add("kv_padding_size", np.array([4]), "int64")
    case.add("pse_shift", case.rng.standard_normal((2, 4, 30, 50)), "float16")
    case.attrs.update(actual_seq_lengths=[20, 28], actual_seq_lengths_kv=[40, 47], sparse_mode=sparse_mode,
                      pre_tokens=5, next_tokens=1, softmax_lse_flag=True)
    if sparse_mode == 3:
        case.add("atten_mask", np.triu(np.ones((2048, 2048)), 1), "bool")
    case.check(mode)


@pytest.mark.parametrize("mask_shape", [(2, 1, 1, 56), (2, 56), (1, 56)])
def test_decode_branch(mode, mask_shape):
    case = FusedCase("fia", layout="BSH", sq=1, seed=19)
    case.random_mask(mask_shape)
    case.add("pse_shift", case.rng.standard_normal((1, 4, 1, 56)), "float16")
    case.attrs.update(sparse_mode=3, pre_tokens=0, next_tokens=0, softmax_lse_flag=True,
                      actual_seq_lengths_kv=[56, 11])
    case.check(mode)


class _Fia(nn.Cell):
    def construct(self, q, k, v):
        return ops.fused_infer_attention_score(q, k, v, num_heads=4, num_key_value_heads=2, input_layout="BNSD_BSND",
                                               scale=0.125, sparse_mode=2, softmax_lse_flag=True,
                                               atten_mask=Tensor(np.triu(np.ones((2048, 2048), np.bool_), 1)))


@pytest.mark.parametrize("rank_known", [True, False])
def test_dynamic_shapes_give_attribute_dependent_output_shapes(rank_known):
    ms.set_context(mode=ms.GRAPH_MODE)
    net = _Fia()
    net.set_inputs(*[Tensor(shape=[None, n, None, 32] if rank_known else None, dtype=ms.float16)
                     for n in (4, 2, 2)])
    for b, s in ((2, 17), (1, 40)):
        case = FusedCase("fia", b=b, sq=s, skv=s, layout="BNSD_BSND", seed=s)
        out, lse = net(case.ms["query"], case.ms["key"], case.ms["value"])
        assert out.shape == (b, s, 4, 32) and lse.shape == (b, 4, s, 1)
        case.attrs.update(scale=0.125, sparse_mode=2, softmax_lse_flag=True,
                          atten_mask=np.triu(np.ones((2048, 2048), np.bool_), 1))
        expected = case.expected()
        assert_close(to_numpy(out), expected[0], "float16")
        assert_lse_close(lse.asnumpy(), expected[1])


# The kernel's own checks of run-time values: in a graph the Tensor lengths and block table are graph inputs,
# unknown when the Python checks run, so the kernel is what rejects them.
ERROR_SCRIPT = """
import sys
import numpy as np
import mindspore as ms
from mindspore import Tensor
sys.path.insert(0, sys.argv[2])
from fused_golden_cases import OPS, run
rng = np.random.default_rng(0)
f16 = lambda *s: Tensor(rng.standard_normal(s).astype(np.float16))
i64 = lambda *v: Tensor(np.array(v, np.int64))
kind = sys.argv[1]
if kind == "block_table":
    op, kwargs = "fia", dict(query=f16(2, 4, 3, 32), key=f16(4, 16, 64), value=f16(4, 16, 64),
        block_table=Tensor(np.array([[0, 1], [2, 9]], np.int32)), actual_seq_lengths_kv=i64(20, 30), num_heads=4,
        num_key_value_heads=2, input_layout="BNSD", block_size=16)
elif kind == "tnd_not_monotone":
    op, kwargs = "fia", dict(query=f16(10, 2, 32), key=f16(10, 2, 32), value=f16(10, 2, 32), num_heads=2,
        input_layout="TND", actual_seq_lengths=i64(6, 4, 10), actual_seq_lengths_kv=i64(3, 6, 10))
elif kind == "tnd_total":
    op, kwargs = "pfa", dict(query=f16(10, 2, 32), key=f16(10, 2, 32), value=f16(10, 2, 32), num_heads=2,
        input_layout="TND", actual_seq_lengths=i64(4, 9), actual_seq_lengths_kv=i64(4, 10))
else:
    op, kwargs = "pfa", dict(query=f16(2, 2, 8, 32), key=f16(2, 2, 8, 32), value=f16(2, 2, 8, 32), num_heads=2,
        input_layout="BNSD", actual_seq_lengths_kv=i64(8, 9))
try:
    out = run("graph", OPS[op][0], kwargs)
    (out[0] if isinstance(out, tuple) else out).asnumpy()
    print("NO ERROR")
except RuntimeError as e:
    print("RuntimeError:", e)
"""


@pytest.mark.parametrize("kind,message", [
    ("block_table", "'block_table' entry 9 of batch 1"),
    ("tnd_not_monotone", "'actual_seq_lengths' must be non-decreasing"),
    ("tnd_total", "must equal the number of tokens T = 10"),
    ("seq_too_long", "'actual_seq_lengths_kv' must be in [0, 8]"),
])
def test_run_time_errors_in_a_fresh_process(kind, message):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(os.path.dirname(HERE)),
                                                       os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([sys.executable, "-c", ERROR_SCRIPT, kind, HERE], capture_output=True, text=True,
                            env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "RuntimeError:" in result.stdout and message in result.stdout, result.stdout[-2000:]


@pytest.mark.parametrize("sparse_mode,pre_tokens,next_tokens", [(0, 2 ** 63 - 1, 2 ** 63 - 1), (4, 2 ** 63 - 1, -3),
                                                                 (0, 2 ** 53 + 1, -(2 ** 62))])
def test_token_counts_beyond_float64_precision(mode, sparse_mode, pre_tokens, next_tokens):
    """pre_tokens / next_tokens travel in the float64 attribute vector: values past 2^53 (INT64_MAX for "no
    limit") still mean an unlimited (or, negative, an empty) side of the band."""
    case = FusedCase("fia", layout="BNSD", sq=12, skv=20, seed=23)
    if sparse_mode == 0:
        case.random_mask((12, 20))
    else:
        case.add("atten_mask", np.triu(np.ones((2048, 2048)), 1), "bool")
    case.attrs.update(sparse_mode=sparse_mode, pre_tokens=pre_tokens, next_tokens=next_tokens,
                      softmax_lse_flag=True, actual_seq_lengths_kv=[20, 13])
    case.check(mode)
