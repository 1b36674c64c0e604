"""ST on Atlas A2: MindSpore's native IncreFlashAttention against ms_attention's float reference.
Skipped unless device_target is Ascend (the `ascend` marker, see tests/conftest.py)."""
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "ut"))
from ifa_cases import Case  # noqa: E402  pylint: disable=wrong-import-position

pytestmark = pytest.mark.ascend


@pytest.mark.parametrize("layout", ["BSH", "BNSD", "BSND"])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_native_kernel_matches_reference(mode, layout, dtype):
    Case(b=4, n=32, kvn=8, s=1024, d=128, layout=layout, dtype=dtype).check(mode)


def test_native_int8_antiquant_matches_reference(mode):
    case = Case(b=2, n=8, kvn=2, s=256, d=128, layout="BNSD", kv_dtype="int8")
    case.add("antiquant_scale", np.random.default_rng(0).random((2, 2, 1, 128)) * 0.02, "float16")
    case.check(mode)


def test_native_primitive_in_cell_matches_reference(mode):
    """The primitive held by a Cell dispatches to MindSpore's own kernel on Ascend."""
    from mindspore import Tensor, nn
    import mindspore as ms
    from ifa_cases import assert_close, to_numpy
    from ms_attention import primitives

    case = Case(b=2, n=8, kvn=2, s=128, d=64, layout="BSH")

    class Net(nn.Cell):
        def __init__(self):
            super().__init__()
            self.op = primitives.IncreFlashAttention(num_heads=8, num_key_value_heads=2,
                                                     scale_value=case.attrs["scale_value"])

        def construct(self, q, k, v, lens):
            return self.op(q, [k], [v], None, lens)

    ms.set_context(mode=ms.GRAPH_MODE if mode == "graph" else ms.PYNATIVE_MODE)
    lens = np.array([128, 77], np.int64)
    out = Net()(case.ms["query"], case.ms["key"], case.ms["value"], Tensor(lens))
    assert_close(to_numpy(out), case.expected(actual_seq_lengths=lens), "float16")
