"""Every documented error of flash_attention_score (the Raises list of MindSpore 2.10's docstring, then the rules
of docs/flash_attention_score.md for what it leaves out: a dtype is a TypeError, a bad value or shape a
ValueError, an inconsistency between inputs a RuntimeError; head_num = 0 a RuntimeError, where MindSpore itself
crashes), in PyNative, Graph and jit, before any kernel runs: the exception type must match and the message must
name the argument and the value. Errors only the kernel can see (Tensor lengths in a graph) run in a fresh
process."""
import os
import subprocess
import sys

import numpy as np
import pytest
import mindspore as ms
from mindspore import nn

from fused_cases import lengths, run, t
from ms_attention import ops, primitives

B, N, N2, S1, S2, D = 2, 8, 2, 16, 32, 32
HERE = os.path.dirname(os.path.abspath(__file__))


def base():
    """A valid BSH call: query (2, 16, 256), key/value (2, 32, 64), GQA 8/2, D 32."""
    return dict(query=t((B, S1, N * D)), key=t((B, S2, N2 * D)), value=t((B, S2, N2 * D)), head_num=N,
                scalar_value=D ** -0.5)


def bnsd(**extra):
    call = dict(query=t((B, N, S1, D)), key=t((B, N2, S2, D)), value=t((B, N2, S2, D)), input_layout="BNSD")
    call.update(extra)
    return call


def tnd(**extra):
    """TND: 2 batches of 10 and 6 query tokens, 20 and 12 key tokens (cumulative lengths)."""
    call = dict(query=t((16, N, D)), key=t((32, N2, D)), value=t((32, N2, D)), input_layout="TND",
                actual_seq_qlen=[10, 16], actual_seq_kvlen=[20, 32])
    call.update(extra)
    return call


# (id, how to break the valid call, exception, fragments the message must contain)
RAISES_LIST = [
    ("query_dtype", dict(query=t((B, S1, N * D), "float32")), TypeError, ["query", "float32"]),
    ("query_key_value_dtypes_differ", dict(key=t((B, S2, N2 * D), "bfloat16"), value=t((B, S2, N2 * D), "bfloat16")),
     TypeError, ["query", "key", "bfloat16"]),
    ("value_dtype_differs", dict(value=t((B, S2, N2 * D), "bfloat16")), TypeError, ["value", "bfloat16"]),
    ("attn_mask_dtype", dict(attn_mask=t((S1, S2), "float16")), TypeError, ["attn_mask", "float16"]),
    ("attn_mask_int8", dict(attn_mask=t((S1, S2), "int8")), TypeError, ["attn_mask", "int8"]),
    ("real_shift_dtype", dict(real_shift=t((1, N, S1, S2), "bfloat16")), TypeError, ["real_shift", "bfloat16"]),
    ("scalar_value_type", dict(scalar_value="0.1"), TypeError, ["scale_value", "0.1"]),
    ("keep_prob_type", dict(keep_prob="0.9"), TypeError, ["keep_prob", "0.9"]),
    ("input_layout_type", dict(input_layout=1), TypeError, ["input_layout", "1"]),
    ("sparse_mode_type", dict(sparse_mode=1.0), TypeError, ["sparse_mode", "1.0"]),
    ("real_shift_not_tensor", dict(real_shift=1.5), TypeError, ["real_shift", "Tensor", "float"]),
    ("drop_mask_not_tensor", dict(drop_mask=3, keep_prob=0.5), TypeError, ["drop_mask", "Tensor", "int"]),
    ("padding_mask_not_tensor", dict(padding_mask=2.0), TypeError, ["padding_mask", "Tensor", "float"]),
    ("attn_mask_not_tensor", dict(attn_mask=0.5), TypeError, ["attn_mask", "Tensor", "float"]),
    ("input_layout_value", dict(input_layout="BSHD"), ValueError, ["input_layout", "BSHD"]),
    ("input_layout_bnsd_bsnd", dict(input_layout="BNSD_BSND"), ValueError, ["input_layout", "BNSD_BSND"]),
    ("head_num_not_divisible_by_n2", dict(key=t((B, S2, 3 * D)), value=t((B, S2, 3 * D))), RuntimeError,
     ["head_num", "N2", "8", "3"]),
    ("head_num_not_divisible_bnsd", bnsd(key=t((B, 3, S2, D)), value=t((B, 3, S2, D))), RuntimeError,
     ["head_num", "N2", "3"]),
    ("head_num_zero", dict(head_num=0), RuntimeError, ["head_num", "greater than 0", "0"]),
    ("head_num_negative", dict(head_num=-8), RuntimeError, ["head_num", "-8"]),
    ("attn_mask_shape_short", dict(attn_mask=t((S1, S2 - 1), "bool")), RuntimeError, ["attn_mask", "(16, 31)"]),
    ("attn_mask_shape_longer", dict(attn_mask=t((S1 + 1, S2), "bool")), RuntimeError, ["attn_mask", "(17, 32)"]),
    ("attn_mask_shape_rank", dict(attn_mask=t((B, S1, S2), "bool")), RuntimeError, ["attn_mask", "(2, 16, 32)"]),
    ("attn_mask_shape_heads", dict(attn_mask=t((B, 4, S1, S2), "uint8")), RuntimeError,
     ["attn_mask", "(2, 4, 16, 32)"]),
    ("attn_mask_not_compressed_in_causal_mode", dict(sparse_mode=3, attn_mask=t((S1, S2), "bool")), RuntimeError,
     ["attn_mask", "2048", "(16, 32)"]),
    ("attn_mask_compressed_in_mode_0", dict(attn_mask=t((2048, 2048), "bool")), RuntimeError,
     ["attn_mask", "(2048, 2048)"]),
    ("sparse_mode_above", dict(sparse_mode=9), RuntimeError, ["sparse_mode", "9"]),
    ("sparse_mode_negative", dict(sparse_mode=-1), RuntimeError, ["sparse_mode", "-1"]),
    ("head_dim_differs", bnsd(key=t((B, N2, S2, 16)), value=t((B, N2, S2, 16))), RuntimeError,
     ["D-axis", "32", "16"]),
    ("bsh_key_hidden_not_multiple_of_d", dict(key=t((B, S2, 48)), value=t((B, S2, 48))), RuntimeError,
     ["D-axis", "48"]),
]

BEYOND_THE_LIST = [
    ("head_num_type", dict(head_num="8"), TypeError, ["head_num", "'8'"]),
    ("pre_tokens_type", dict(pre_tokens=1.5), TypeError, ["pre_tokens", "1.5"]),
    ("inner_precise_type", dict(inner_precise=None), TypeError, ["inner_precise", "None"]),
    ("drop_mask_dtype", dict(drop_mask=t((B, N, S1, S2 // 8), "bool"), keep_prob=0.5), TypeError,
     ["drop_mask", "bool"]),
    ("lengths_dtype", tnd(actual_seq_qlen=t((2,), "float32")), TypeError, ["actual_seq_qlen", "float32"]),
    ("lengths_not_ints", tnd(actual_seq_qlen=[10.0, 16]), TypeError, ["actual_seq_qlen", "10.0"]),
    ("keep_prob_zero", dict(keep_prob=0.0), ValueError, ["keep_prob", "0.0"]),
    ("keep_prob_above_one", dict(keep_prob=1.5), ValueError, ["keep_prob", "1.5"]),
    ("head_num_above_256", dict(head_num=512, query=t((B, S1, 512 * 2)), key=t((B, S2, 512 * 2)),
                                value=t((B, S2, 512 * 2))), ValueError, ["head_num", "256", "512"]),
    ("query_rank", dict(query=t((B, S1, N, D))), ValueError, ["query", "3-D", "(2, 16, 8, 32)"]),
    ("query_heads_not_head_num", bnsd(query=t((B, 4, S1, D))), ValueError, ["query", "head_num", "4"]),
    ("query_hidden_not_multiple", dict(query=t((B, S1, 100))), ValueError, ["head_num", "100"]),
    ("head_dim_above_512", bnsd(query=t((B, N, S1, 640)), key=t((B, N2, S2, 640)), value=t((B, N2, S2, 640))),
     ValueError, ["head dim", "640"]),
    ("key_value_shapes_differ", dict(value=t((B, S2 + 1, N2 * D))), RuntimeError, ["key", "value", "(2, 33, 64)"]),
    ("key_batch", dict(key=t((3, S2, N2 * D)), value=t((3, S2, N2 * D))), RuntimeError, ["batch", "3"]),
    ("key_rank", dict(key=t((B, N2, S2, D)), value=t((B, N2, S2, D))), RuntimeError, ["rank", "(2, 2, 32, 32)"]),
    ("drop_mask_with_keep_prob_one", dict(drop_mask=t((B, N, S1, S2 // 8), "uint8")), RuntimeError,
     ["drop_mask", "keep_prob", "1.0"]),
    ("drop_mask_shape", dict(drop_mask=t((B, N, S1, S2), "uint8"), keep_prob=0.5), RuntimeError,
     ["drop_mask", "(2, 8, 16, 4)", "(2, 8, 16, 32)"]),
    ("drop_mask_s2_not_multiple_of_8", dict(key=t((B, 20, N2 * D)), value=t((B, 20, N2 * D)), keep_prob=0.5,
                                            drop_mask=t((B, N, S1, 2), "uint8")), RuntimeError, ["S2", "8", "20"]),
    ("padding_mask_given", dict(padding_mask=t((B, S1), "uint8")), RuntimeError, ["padding_mask", "None"]),
    ("real_shift_shape", dict(real_shift=t((1, 4, S1, S2))), RuntimeError, ["real_shift", "(1, 4, 16, 32)"]),
    ("real_shift_too_short", dict(real_shift=t((1, N, S1, S2 - 1))), RuntimeError, ["real_shift", "(1, 8, 16, 31)"]),
    ("real_shift_compressed_outside_causal_modes", dict(real_shift=t((1, N, 1024, S2))), RuntimeError,
     ["real_shift", "1024", "sparse_mode 0"]),
    ("lengths_without_tnd", dict(actual_seq_qlen=[16, 32], actual_seq_kvlen=[32, 64]), RuntimeError,
     ["actual_seq_qlen", "TND", "BSH"]),
    ("tnd_without_qlen", tnd(actual_seq_qlen=None), RuntimeError, ["actual_seq_qlen", "TND"]),
    ("tnd_without_kvlen", tnd(actual_seq_kvlen=None), RuntimeError, ["actual_seq_kvlen", "TND"]),
    ("tnd_lengths_sizes_differ", tnd(actual_seq_kvlen=[32]), RuntimeError, ["actual_seq_kvlen", "2", "1"]),
    ("tnd_lengths_not_cumulative", tnd(actual_seq_qlen=[10, 6]), ValueError, ["actual_seq_qlen", "cumulative"]),
    ("tnd_lengths_not_ending_at_t", tnd(actual_seq_qlen=[10, 15]), ValueError, ["actual_seq_qlen", "16", "15"]),
    ("tnd_batch_without_keys", tnd(actual_seq_kvlen=[32, 32]), ValueError, ["actual_seq_kvlen", "0", "[32, 32]"]),
    ("tnd_mask_too_small", tnd(attn_mask=t((9, 20), "bool")), RuntimeError, ["attn_mask", "(9, 20)"]),
    ("tnd_drop_mask_size", tnd(keep_prob=0.5, drop_mask=t((100,), "uint8")), RuntimeError,
     ["drop_mask", "(272,)", "(100,)"]),
    ("prefix_missing", dict(sparse_mode=5), RuntimeError, ["prefix", "sparse_mode 5"]),
    ("prefix_size", dict(sparse_mode=5, prefix=[4]), RuntimeError, ["prefix", "B=2"]),
    ("prefix_value", dict(sparse_mode=6, prefix=[4, 33]), ValueError, ["prefix", "33", "32"]),
    ("prefix_negative", dict(sparse_mode=5, prefix=[-1, 3]), ValueError, ["prefix", "-1"]),
]


@pytest.mark.parametrize("name,change,error,fragments", RAISES_LIST + BEYOND_THE_LIST,
                         ids=[c[0] for c in RAISES_LIST + BEYOND_THE_LIST])
def test_documented_errors(mode, name, change, error, fragments):
    kwargs = base()
    kwargs.update(change)
    kwargs = {k: v for k, v in kwargs.items() if v is not None or k == "inner_precise"}
    with pytest.raises(error) as info:
        run(mode, ops.flash_attention_score, kwargs).asnumpy()
    message = str(info.value)
    assert "For 'FlashAttentionScore'" in message, message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in: {message}"


VALID = [
    ("bsh", {}),
    ("sbh", dict(query=t((S1, B, N * D)), key=t((S2, B, N2 * D)), value=t((S2, B, N2 * D)), input_layout="sbh")),
    ("bnsd_causal_compressed_mask", bnsd(sparse_mode=3, attn_mask=t((2048, 2048), "bool"))),
    ("bsnd_band", dict(query=t((B, S1, N, D)), key=t((B, S2, N2, D)), value=t((B, S2, N2, D)), input_layout="BSND",
                       sparse_mode=4, pre_tokens=4, next_tokens=0)),
    ("masks_and_real_shift", dict(attn_mask=t((B, 1, S1, S2), "uint8"), real_shift=t((B, N, S1, S2)),
                                  sparse_mode=1)),
    ("mask_shared_by_batches", dict(attn_mask=t((1, N, S1, S2), "bool"))),
    ("compressed_real_shift", dict(real_shift=t((1, N, 1024, S2)), sparse_mode=2)),
    ("prefix", dict(sparse_mode=5, prefix=lengths([4, 32]), attn_mask=t((S1, S2), "bool"))),
    ("prefix_compressed", dict(sparse_mode=6, prefix=[0, 7], attn_mask=t((3072, 2048), "bool"))),
    ("drop_mask", dict(keep_prob=0.5, drop_mask=t((B, N, S1, S2 // 8), "uint8", 255))),
    ("generated_dropout", dict(keep_prob=0.8)),
    ("tnd", tnd(attn_mask=t((10, 20), "bool"), sparse_mode=0)),
    ("tnd_varlen_causal", tnd(sparse_mode=7, actual_seq_qlen=lengths([10, 16]), actual_seq_kvlen=lengths([20, 32]))),
    ("tnd_empty_query_batch", tnd(query=t((6, N, D)), actual_seq_qlen=[0, 6], sparse_mode=8)),
    ("tnd_drop_mask", tnd(keep_prob=0.5, drop_mask=t((272,), "uint8", 255))),
]


@pytest.mark.parametrize("name,change", VALID, ids=[c[0] for c in VALID])
def test_valid_calls_reach_the_kernel(mode, name, change):
    """What the checks accept compiles and runs, with attention_out in the query's shape and dtype."""
    kwargs = base()
    kwargs.update(change)
    out = run(mode, ops.flash_attention_score, kwargs)
    assert out.shape == kwargs["query"].shape and out.dtype == kwargs["query"].dtype
    assert np.isfinite(out.asnumpy().astype(np.float32)).all()


def test_values_of_tensor_lengths_are_checked_on_the_host_in_pynative():
    with pytest.raises(ValueError, match="actual_seq_qlen.*15"):
        run("pynative", ops.flash_attention_score, dict(base(), **tnd(actual_seq_qlen=lengths([10, 15]))))
    with pytest.raises(ValueError, match="actual_seq_kvlen"):
        run("pynative", ops.flash_attention_score, dict(base(), **tnd(actual_seq_kvlen=lengths([32, 32]))))
    with pytest.raises(RuntimeError, match=r"attn_mask.*\(9, 20\)"):
        run("pynative", ops.flash_attention_score,
            dict(base(), **tnd(actual_seq_qlen=lengths([10, 16]), attn_mask=t((9, 20), "bool"))))
    with pytest.raises(ValueError, match="prefix.*40"):
        run("pynative", ops.flash_attention_score, dict(base(), sparse_mode=5, prefix=lengths([1, 40])))


class PrimitiveCell(nn.Cell):
    def __init__(self, **attrs):
        super().__init__()
        self.fas = primitives.FlashAttentionScore(**attrs)

    def construct(self, query, key, value):
        return self.fas(query, key, value)


@pytest.mark.parametrize("attrs,error,fragment", [
    (dict(head_num=0), RuntimeError, "head_num"), (dict(head_num=8.0), TypeError, "head_num"),
    (dict(head_num=8, input_layout="BSHD"), ValueError, "BSHD"), (dict(head_num=8, sparse_mode=9), RuntimeError,
                                                                  "sparse_mode"),
    (dict(head_num=8, keep_prob=1), None, None), (dict(head_num=8, keep_prob=0.0), ValueError, "keep_prob"),
    (dict(head_num=8, scale_value="1"), TypeError, "scale_value")])
def test_primitive_attribute_errors_at_construction(attrs, error, fragment):
    """FlashAttentionScore(...) checks its attributes in __init__, in PyNative and when a graph builds it."""
    if error is None:
        primitives.FlashAttentionScore(**attrs)
        return
    with pytest.raises(error, match=fragment):
        primitives.FlashAttentionScore(**attrs)


def test_primitive_errors_in_graph_mode():
    """The primitive held by a Cell: a call error raises at compile time, before the kernel."""
    ms.set_context(mode=ms.GRAPH_MODE)
    try:
        cell = PrimitiveCell(head_num=N, input_layout="BNSD")
        with pytest.raises(RuntimeError, match="N2"):
            cell(t((B, N, S1, D)), t((B, 3, S2, D)), t((B, 3, S2, D)))
    finally:
        ms.set_context(mode=ms.PYNATIVE_MODE)


# In a graph the Tensor lengths are graph inputs, unknown when the Python checks run: the kernel rejects them.
ERROR_SCRIPT = """
import sys
import numpy as np
import mindspore as ms
from mindspore import Tensor
sys.path.insert(0, sys.argv[2])
from fused_cases import run
from ms_attention import ops
rng = np.random.default_rng(0)
f16 = lambda *s: Tensor(rng.standard_normal(s).astype(np.float16))
i64 = lambda *v: Tensor(np.array(v, np.int64))
kind = sys.argv[1]
kwargs = dict(query=f16(10, 2, 32), key=f16(12, 2, 32), value=f16(12, 2, 32), head_num=2, input_layout="TND",
              actual_seq_qlen=i64(4, 10), actual_seq_kvlen=i64(5, 12))
if kind == "tnd_total":
    kwargs["actual_seq_qlen"] = i64(4, 9)
elif kind == "tnd_kv_batch_empty":
    kwargs["actual_seq_kvlen"] = i64(12, 12)
elif kind == "prefix":
    kwargs = dict(query=f16(2, 2, 8, 32), key=f16(2, 2, 8, 32), value=f16(2, 2, 8, 32), head_num=2,
                  input_layout="BNSD", sparse_mode=5, prefix=i64(3, 9))
try:
    run("graph", getattr(ops, sys.argv[3]), kwargs if sys.argv[3] == "flash_attention_score" else
        {("scale" if k == "scalar_value" else k): v for k, v in kwargs.items()})[0].asnumpy()
    print("NO ERROR")
except RuntimeError as e:
    print("RuntimeError:", e)
"""


@pytest.mark.parametrize("op", ["flash_attention_score", "speed_fusion_attention"])
@pytest.mark.parametrize("kind,fragment", [("tnd_total", "actual_seq_qlen"), ("tnd_kv_batch_empty",
                                                                              "actual_seq_kvlen"),
                                           ("prefix", "prefix")])
def test_run_time_errors_in_a_fresh_process(op, kind, fragment):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(os.path.dirname(HERE)),
                                                       os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([sys.executable, "-c", ERROR_SCRIPT, kind, HERE, op], capture_output=True, text=True,
                            env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "RuntimeError:" in result.stdout and fragment in result.stdout, result.stdout[-2000:]
