"""ST on Atlas A2/A3: MindSpore's native SparseFlashAttention (where ms_attention's sparse_flash_attention dispatches
on Ascend) against ms_attention's float reference, on the NPU kernel's documented envelope: bfloat16, N1 = 128,
N2 = 1, D = 512 + 64 rope, sparse_size 2048, attention_mode 2. Skipped unless device_target is Ascend (the `ascend`
marker, see tests/conftest.py).

MindSpore documents softmax_max / softmax_sum as unsupported in Graph mode and with PA_BSND, so only attention_out
is compared there. advance_step_flashattn has no MindSpore kernel (torch_npu only), so it has no ST here."""
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "ut"))
from ifa_cases import assert_close, to_numpy  # noqa: E402  pylint: disable=wrong-import-position
from sfa_cases import Case  # noqa: E402  pylint: disable=wrong-import-position

pytestmark = pytest.mark.ascend

NPU = dict(n1=128, k=2048, sparse_block_size=1, dtype="bfloat16")


def _check_out(case, mode):
    out = case.run(mode)[0]
    assert_close(to_numpy(out), case.expected()[0], case.dtype)


@pytest.mark.parametrize("sparse_mode", [0, 3])
def test_native_bsnd_decode(mode, sparse_mode):
    case = Case(b=4, s1=1, s2=8192, kv_lens=[8192, 4000, 2100, 6000], sparse_mode=sparse_mode,
                return_softmax_lse=False, **NPU)
    _check_out(case, mode)


def test_native_paged_decode(mode):
    case = Case(b=2, s1=1, s2=4096, layout_kv="PA_BSND", block_size=128, kv_lens=[4096, 2500],
                return_softmax_lse=False, **NPU)
    _check_out(case, mode)


def test_native_tnd_paged_prefill(mode):
    case = Case(b=2, s1=4, s2=4096, layout_query="TND", layout_kv="PA_BSND", block_size=128, q_lens=[4, 2],
                kv_lens=[3000, 2050], return_softmax_lse=False, **NPU)
    _check_out(case, mode)


def test_native_softmax_statistics_pynative():
    """softmax_max / softmax_sum where MindSpore documents them (PyNative, not paged)."""
    Case(b=2, s1=2, s2=4096, kv_lens=[4096, 3000], return_softmax_lse=True, **NPU).check("pynative")
