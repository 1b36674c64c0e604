"""ST on Atlas A2: MindSpore's native FusedInferAttentionScore (where ms_attention's fused_infer_attention_score
dispatches on Ascend) against ms_attention's float reference, attention_out and softmax_lse. Skipped unless
device_target is Ascend (the `ascend` marker, see tests/conftest.py).

fused_infer_attention_score_v2 has no MindSpore kernel (torch_npu only), so it has no ST here."""
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "ut"))
from fused_cases import FIA, Case  # noqa: E402  pylint: disable=wrong-import-position

pytestmark = pytest.mark.ascend

COMPRESSED_MASK = np.triu(np.ones((2048, 2048), bool), 1)


def _causal(case, sparse_mode=3):
    case.add_mask(COMPRESSED_MASK, "bool")
    case.attrs["sparse_mode"] = sparse_mode


@pytest.mark.parametrize("layout", ["BSH", "BNSD", "BSND", "BNSD_BSND"])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_native_prefill_matches_reference(mode, layout, dtype):
    case = Case(FIA, b=2, n=32, kvn=8, sq=512, skv=512, d=128, layout=layout, dtype=dtype)
    _causal(case)
    case.check(mode, lse=True)


def test_native_tnd_prefill(mode):
    case = Case(FIA, b=3, n=16, kvn=4, d=128, layout="TND", q_lens=[300, 17, 128], kv_lens=[300, 17, 128])
    _causal(case)
    case.check(mode, lse=True)


@pytest.mark.parametrize("layout", ["BSH", "BNSD"])
def test_native_decode_matches_reference(mode, layout):
    case = Case(FIA, b=4, n=32, kvn=8, sq=1, skv=2048, d=128, layout=layout)
    case.set_lengths(kv=[2048, 1000, 17, 1500])
    case.check(mode, lse=True)


@pytest.mark.parametrize("cache_layout,layout,sq", [("BnBsH", "BSH", 1), ("BnNBsD", "BNSD", 1),
                                                    ("BnBsH", "BSH", 64)])
def test_native_paged_attention(mode, cache_layout, layout, sq):
    case = Case(FIA, b=3, n=16, kvn=2, sq=sq, skv=1024, d=128, layout=layout)
    case.page(128, cache_layout)
    case.set_lengths(kv=[1024, 513, 130])
    if sq > 1:
        case.set_lengths(q=[sq, sq, sq])
        _causal(case)
    case.check(mode, lse=True)


def test_native_tnd_paged_prefill(mode):
    """vLLM-MindSpore's call: TND query over a paged cache, per-batch kv lengths, causal."""
    case = Case(FIA, b=2, n=16, kvn=2, d=128, layout="TND", q_lens=[100, 37], kv_lens=[612, 37])
    case.page(128, "BnBsH")
    _causal(case)
    case.check(mode, lse=True)


def test_native_antiquant_decode(mode):
    case = Case(FIA, b=2, n=8, kvn=2, sq=1, skv=512, d=128, layout="BNSD", kv_dtype="int8")
    case.add("antiquant_scale", case.rng.random((2, 2, 1, 128)) * 0.02 + 0.001, "float16")
    case.add("antiquant_offset", case.rng.standard_normal((2, 2, 1, 128)), "float16")
    case.check(mode, lse=True)


@pytest.mark.parametrize("sq", [1, 128])
def test_native_post_quant_int8(mode, sq):
    case = Case(FIA, b=2, n=8, kvn=2, sq=sq, skv=512, d=128, layout="BSH")
    case.add("quant_scale2", np.array([40.0]), "float32")
    if sq > 1:
        _causal(case)
    case.check(mode)


def test_native_primitive_in_cell_matches_reference(mode):
    """The primitive held by a Cell dispatches to MindSpore's own kernel on Ascend."""
    import mindspore as ms
    from mindspore import Tensor, nn
    from fused_cases import assert_close, to_numpy
    from ms_attention import primitives

    case = Case(FIA, b=2, n=8, kvn=2, sq=64, skv=256, d=128, layout="BSH")

    class Net(nn.Cell):
        def __init__(self):
            super().__init__()
            self.op = primitives.FusedInferAttentionScore(num_heads=8, num_key_value_heads=2, sparse_mode=3,
                                                          scale_value=case.attrs["scale"])

        def construct(self, q, k, v, mask, lens_kv):
            return self.op(q, [k], [v], None, mask, None, lens_kv)[0]

    ms.set_context(mode=ms.GRAPH_MODE if mode == "graph" else ms.PYNATIVE_MODE)
    lens = np.array([256, 77], np.int64)
    out = Net()(case.ms["query"], case.ms["key"], case.ms["value"], Tensor(COMPRESSED_MASK), Tensor(lens))
    _causal(case)
    assert_close(to_numpy(out), case.expected(actual_seq_lengths_kv=lens)[0], "float16")
