"""Every documented error of speed_fusion_attention (the Raises list of MindSpore 2.10's docstring, then the rules
of docs/speed_fusion_attention.md for what it leaves out), in PyNative, Graph and jit, before any kernel runs: the
exception type must match and the message must name the argument and the value. The shape rules it shares with
flash_attention_score are covered once, in test_fas_validation.py (one checker serves both); here are the ones
whose exception or argument differs, and the SFA-only arguments. Kernel run-time errors: test_fas_validation."""
import numpy as np
import pytest

from fused_cases import lengths, run, t
from ms_attention import ops

B, N, N2, S1, S2, D = 2, 8, 2, 16, 32, 32


def base():
    """A valid BSH call: query (2, 16, 256), key/value (2, 32, 64), GQA 8/2, D 32."""
    return dict(query=t((B, S1, N * D)), key=t((B, S2, N2 * D)), value=t((B, S2, N2 * D)), head_num=N,
                input_layout="BSH", scale=D ** -0.5)


def f32(**extra):
    call = dict(query=t((B, S1, N * D), "float32"), key=t((B, S2, N2 * D), "float32"),
                value=t((B, S2, N2 * D), "float32"))
    call.update(extra)
    return call


def tnd(**extra):
    call = dict(query=t((16, N, D)), key=t((32, N2, D)), value=t((32, N2, D)), input_layout="TND",
                actual_seq_qlen=[10, 16], actual_seq_kvlen=[20, 32])
    call.update(extra)
    return call


RAISES_LIST = [
    ("query_key_value_dtypes_differ", dict(key=t((B, S2, N2 * D), "bfloat16"), value=t((B, S2, N2 * D), "bfloat16")),
     TypeError, ["query", "key", "bfloat16"]),
    ("value_dtype_differs", f32(value=t((B, S2, N2 * D))), TypeError, ["value", "float16"]),
    ("atten_mask_dtype", dict(atten_mask=t((S1, S2), "float16")), TypeError, ["atten_mask", "float16"]),
    ("scale_type", dict(scale="0.1"), TypeError, ["scale", "0.1"]),
    ("keep_prob_type", dict(keep_prob=None), TypeError, ["keep_prob", "None"]),
    ("input_layout_type", dict(input_layout=3), TypeError, ["input_layout", "3"]),
    ("head_num_type", dict(head_num=8.0), TypeError, ["head_num", "8.0"]),
    ("sparse_mode_type", dict(sparse_mode="2"), TypeError, ["sparse_mode", "'2'"]),
    ("pse_not_tensor", dict(pse=0.5), TypeError, ["pse", "Tensor", "float"]),
    ("padding_mask_not_tensor", dict(padding_mask=1), TypeError, ["padding_mask", "Tensor", "int"]),
    ("atten_mask_not_tensor", dict(atten_mask=1.0), TypeError, ["atten_mask", "Tensor", "float"]),
    ("pse_type_type", dict(pse_type=1.0), TypeError, ["pse_type", "1.0"]),
    ("input_layout_value", dict(input_layout="BSHD"), ValueError, ["input_layout", "BSHD"]),
    ("sparse_mode_value", dict(sparse_mode=9), ValueError, ["sparse_mode", "9"]),
    ("sparse_mode_negative", dict(sparse_mode=-1), ValueError, ["sparse_mode", "-1"]),
    ("pse_type_value", dict(pse_type=4), ValueError, ["pse_type", "4"]),
    ("pse_type_negative", dict(pse_type=-1), ValueError, ["pse_type", "-1"]),
]

BEYOND_THE_LIST = [
    ("query_dtype", dict(query=t((B, S1, N * D), "int8"), key=t((B, S2, N2 * D), "int8"),
                         value=t((B, S2, N2 * D), "int8")), TypeError, ["query", "int8"]),
    ("pse_dtype", dict(pse=t((1, N, S1, S2), "float32")), TypeError, ["pse", "float16", "float32"]),
    ("alibi_slopes_dtype", dict(pse=t((N,), "float16"), pse_type=2), TypeError, ["pse", "float32", "pse_type 2"]),
    ("gen_mask_parallel_type", dict(gen_mask_parallel=1), TypeError, ["gen_mask_parallel", "1"]),
    ("sync_type", dict(sync="no"), TypeError, ["sync", "'no'"]),
    ("next_tokens_type", dict(next_tokens=2.0), TypeError, ["next_tokens", "2.0"]),
    ("start_idx_dtype", dict(pse=t((N,), "float32"), pse_type=3, q_start_idx=t((1,), "float32")), TypeError,
     ["q_start_idx", "float32"]),
    ("head_num_zero", dict(head_num=0), ValueError, ["head_num", "greater than 0", "0"]),
    ("head_num_negative", dict(head_num=-2), ValueError, ["head_num", "-2"]),
    ("keep_prob_value", dict(keep_prob=0.0), ValueError, ["keep_prob", "0.0"]),
    ("start_idx_size", dict(pse=t((N,), "float32"), pse_type=2, kv_start_idx=[1, 2]), ValueError,
     ["kv_start_idx", "1 value", "(2,)"]),
    ("head_num_not_divisible_by_n2", dict(key=t((B, S2, 3 * D)), value=t((B, S2, 3 * D))), RuntimeError,
     ["head_num", "N2", "3"]),
    ("head_dim_differs", dict(query=t((B, N, S1, D)), key=t((B, N2, S2, 16)), value=t((B, N2, S2, 16)),
                              input_layout="BNSD"), RuntimeError, ["D-axis", "32", "16"]),
    ("atten_mask_shape", dict(atten_mask=t((S1, S2 + 1), "bool")), RuntimeError, ["atten_mask", "(16, 33)"]),
    ("atten_mask_not_compressed", dict(sparse_mode=2, atten_mask=t((S1, S2), "uint8")), RuntimeError,
     ["atten_mask", "2048"]),
    ("pse_shape", dict(pse=t((B, N, S1, S2 + 1))), RuntimeError, ["pse", "(2, 8, 16, 33)"]),
    ("alibi_slopes_shape", dict(pse=t((B, N, 1), "float32"), pse_type=2), RuntimeError, ["pse", "(2, 8, 1)"]),
    ("padding_mask_given", dict(padding_mask=t((B, S1), "uint8")), RuntimeError, ["padding_mask", "None"]),
    ("tnd_without_kvlen", tnd(actual_seq_kvlen=None), RuntimeError, ["actual_seq_kvlen", "TND"]),
    ("tnd_lengths_not_cumulative", tnd(actual_seq_kvlen=[20, 12]), ValueError, ["actual_seq_kvlen", "cumulative"]),
    ("lengths_without_tnd", dict(actual_seq_kvlen=[32, 64]), RuntimeError, ["actual_seq_kvlen", "TND"]),
    ("prefix_missing", dict(sparse_mode=6), RuntimeError, ["prefix", "sparse_mode 6"]),
    ("prefix_value", dict(sparse_mode=5, prefix=[40, 1]), ValueError, ["prefix", "40"]),
]


@pytest.mark.parametrize("name,change,error,fragments", RAISES_LIST + BEYOND_THE_LIST,
                         ids=[c[0] for c in RAISES_LIST + BEYOND_THE_LIST])
def test_documented_errors(mode, name, change, error, fragments):
    kwargs = base()
    kwargs.update(change)
    kwargs = {k: v for k, v in kwargs.items() if v is not None or k == "keep_prob"}
    with pytest.raises(error) as info:
        run(mode, ops.speed_fusion_attention, kwargs)[0].asnumpy()
    message = str(info.value)
    assert "For 'SpeedFusionAttention'" in message, message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in: {message}"


VALID = [
    ("bsh_float16", {}),
    ("float32", f32()),
    ("bfloat16_bnsd", dict(query=t((B, N, S1, D), "bfloat16"), key=t((B, N2, S2, D), "bfloat16"),
                           value=t((B, N2, S2, D), "bfloat16"), input_layout="BNSD", sparse_mode=3)),
    ("pse_type_0", dict(pse=t((B, N, S1, S2)), pse_type=0)),
    ("alibi_per_head", dict(pse=t((N,), "float32", 0.5), pse_type=2, q_start_idx=[1], kv_start_idx=lengths([2]))),
    ("alibi_per_batch", dict(pse=t((B, N), "float32", 0.25), pse_type=3, sparse_mode=2)),
    ("dropout", dict(keep_prob=0.7)),
    ("tnd", tnd(sparse_mode=8, pre_tokens=3, next_tokens=0)),
]


@pytest.mark.parametrize("name,change", VALID, ids=[c[0] for c in VALID])
def test_valid_calls_reach_the_kernel(mode, name, change):
    """What the checks accept compiles and runs: seven outputs with the documented shapes and dtypes."""
    kwargs = base()
    kwargs.update(change)
    out = run(mode, ops.speed_fusion_attention, kwargs)
    assert len(out) == 7
    query = kwargs["query"]
    rows = (query.shape[0], N) if kwargs["input_layout"] == "TND" else (B, N, S1)
    assert out[0].shape == query.shape and out[0].dtype == query.dtype
    assert out[1].shape == rows + (8,) and out[2].shape == rows + (8,)
    assert str(out[1].dtype) == "Float32" and str(out[2].dtype) == "Float32"
    assert out[3].shape == (1,) and out[3].dtype == query.dtype
    assert all(x.shape == (1,) and str(x.dtype) == "Int64" for x in out[4:])
    assert np.isfinite(out[0].asnumpy().astype(np.float32)).all()
