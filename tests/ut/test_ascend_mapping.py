"""On Ascend the functionals validate, then call MindSpore's own operator with the same arguments. On CPU the
mapping is exercised by forcing that branch: MindSpore must accept the arguments and stop only at the missing
Ascend kernel."""
import numpy as np
import pytest
from mindspore import Tensor

from ms_attention import _runtime, ops


def test_ascend_branch_reaches_mindspore_kernel_lookup(monkeypatch):
    monkeypatch.setattr(_runtime, "on_ascend", lambda: True)
    q = Tensor(np.ones((2, 1, 128), np.float16))
    k = Tensor(np.ones((2, 16, 64), np.float16))
    with pytest.raises(RuntimeError) as info:
        ops.incre_flash_attention(q, [k], [k], actual_seq_lengths=[16, 3], num_heads=4,
                                  num_key_value_heads=2).asnumpy()
    text = str(info.value)
    assert "IncreFlashAttention" in text and ("unregistered" in text or "not supported" in text.lower()
                                               or "kernel" in text.lower()), text


def test_ascend_branch_validates_first(monkeypatch):
    monkeypatch.setattr(_runtime, "on_ascend", lambda: True)
    q = Tensor(np.ones((2, 1, 128), np.float32))
    k = Tensor(np.ones((2, 16, 128), np.float16))
    with pytest.raises(TypeError, match="query"):
        ops.incre_flash_attention(q, [k], [k], num_heads=4)


def test_primitive_ascend_branch_reaches_mindspore_primitive(monkeypatch):
    from ms_attention import primitives
    monkeypatch.setattr(primitives, "_rt_on_ascend", lambda: True)
    q = Tensor(np.ones((2, 1, 128), np.float16))
    k = Tensor(np.ones((2, 16, 64), np.float16))
    prim = primitives.IncreFlashAttention(num_heads=4, num_key_value_heads=2)
    with pytest.raises(RuntimeError) as info:
        prim(q, [k], [k], None, Tensor(np.array([16, 3]))).asnumpy()
    assert "IncreFlashAttention" in str(info.value), str(info.value)
    with pytest.raises(ValueError, match="actual_seq_lengths"):     # validated before MindSpore's kernel
        prim(q, [k], [k], None, [16, 3, 5])
