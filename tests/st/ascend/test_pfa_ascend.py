"""ST on Atlas A2: MindSpore's native PromptFlashAttention (where ms_attention's prompt_flash_attention dispatches
on Ascend) against ms_attention's float reference. Skipped unless device_target is Ascend (the `ascend` marker,
see tests/conftest.py). Sparse modes 2-4 get the compressed 2048 x 2048 mask the NPU kernel requires."""
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "ut"))
from fused_cases import PFA, Case  # noqa: E402  pylint: disable=wrong-import-position

pytestmark = pytest.mark.ascend

COMPRESSED_MASK = np.triu(np.ones((2048, 2048), bool), 1)


def _causal(case, sparse_mode=3):
    case.add_mask(COMPRESSED_MASK, "bool")
    case.attrs["sparse_mode"] = sparse_mode


@pytest.mark.parametrize("layout", ["BSH", "BNSD", "BSND"])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_native_kernel_matches_reference(mode, layout, dtype):
    case = Case(PFA, b=2, n=32, kvn=8, sq=512, skv=512, d=128, layout=layout, dtype=dtype)
    _causal(case)
    case.check(mode)


@pytest.mark.parametrize("sparse_mode,pre,nxt", [(2, 2147483647, 0), (3, 2147483647, 0), (4, 256, 16)])
def test_native_sparse_modes_with_lengths(mode, sparse_mode, pre, nxt):
    case = Case(PFA, b=2, n=16, kvn=4, sq=384, skv=1024, d=128, layout="BNSD")
    _causal(case, sparse_mode)
    case.attrs.update(pre_tokens=pre, next_tokens=nxt)
    case.set_lengths(q=[384, 200], kv=[1024, 700])
    case.check(mode)


def test_native_mask_and_band_mode_0(mode):
    case = Case(PFA, b=2, n=8, kvn=8, sq=256, skv=256, d=64, layout="BSH")
    case.add_mask(case.rng.random((2, 1, 256, 256)) < 0.2, "bool")
    case.attrs.update(sparse_mode=0, pre_tokens=128, next_tokens=0)
    case.check(mode)


def test_native_pse_shift(mode):
    case = Case(PFA, b=1, n=8, kvn=2, sq=256, skv=256, d=128, layout="BNSD")
    case.add("pse_shift", case.rng.standard_normal((1, 8, 256, 256)), "float16")
    _causal(case)
    case.check(mode)


@pytest.mark.parametrize("granularity", ["tensor", "channel"])
def test_native_post_quant_int8(mode, granularity):
    case = Case(PFA, b=2, n=8, kvn=2, sq=256, skv=256, d=128, layout="BNSD")
    shape = (1,) if granularity == "tensor" else (1, 8, 1, 128)
    case.add("quant_scale2", case.rng.random(shape) * 60 + 20, "float32")
    _causal(case)
    case.check(mode)
