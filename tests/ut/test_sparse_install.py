"""After ms_attention.install(), MindSpore-style model code reaches sparse_flash_attention through
mindspore.ops, mindspore.ops.auto_generate.SparseFlashAttention (MindSpore's own names) and
advance_step_flashattn through mindspore.ops (added: MindSpore has none), in PyNative and Graph mode. Each
scenario runs in a fresh process, since install() changes process-wide state."""
import os
import subprocess
import sys
import textwrap

import pytest

import ms_attention

PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(ms_attention.__file__)))

MODEL_CODE = textwrap.dedent("""
    import sys
    import numpy as np
    import mindspore as ms
    from mindspore import Parameter, Tensor, nn
    sys.path.insert(0, %(parent)r)
    import ms_attention
    ms.set_context(mode=%(mode)s)
    ms_attention.install()

    import mindspore.ops as ops
    from mindspore.ops.auto_generate import SparseFlashAttention
    from ms_attention.kernels.reference.sparse_flash_attention import sparse_flash_attention as reference

    rng = np.random.default_rng(0)
    f16 = lambda *shape: rng.standard_normal(shape).astype(np.float16).astype(np.float32)
    q, qr, k, kr = f16(1, 2, 4, 512), f16(1, 2, 4, 64), f16(1, 64, 1, 512), f16(1, 64, 1, 64)
    idx = np.array([[[[0, 3, -1]], [[1, 2, 5]]]], np.int32)
    T = lambda x: Tensor(x, ms.float16)
    want = reference(q, k, k, idx, 0.05, query_rope=qr, key_rope=kr, sparse_block_size=8)[0]

    class Functional(nn.Cell):
        def construct(self, q, k, idx, qr, kr):
            return ops.sparse_flash_attention(q, k, k, idx, 0.05, query_rope=qr, key_rope=kr, sparse_block_size=8,
                                              attention_mode=2)[0]

    class Primitive(nn.Cell):
        def __init__(self):
            super().__init__()
            self.sfa = SparseFlashAttention()

        def construct(self, q, k, idx, qr, kr):
            return self.sfa(q, k, k, idx, 0.05, None, None, None, qr, kr, 8, "BSND", "BSND", 3,
                            9223372036854775807, 9223372036854775807, 2, False)[0]

    for name, net in (("functional", Functional()), ("primitive", Primitive())):
        out = net(T(q), T(k), Tensor(idx), T(qr), T(kr)).asnumpy().astype(np.float64)
        print("SFA", name, "OK" if np.allclose(out, want, rtol=5e-3, atol=1e-3) else "WRONG")

    class Step(nn.Cell):
        def __init__(self):
            super().__init__()
            self.tokens = Parameter(Tensor(np.zeros(2, np.int64)), name="tokens")
            self.positions = Parameter(Tensor(np.zeros(2, np.int64)), name="positions")
            self.lens = Parameter(Tensor(np.array([3, 20], np.int64)), name="lens")
            self.slots = Parameter(Tensor(np.zeros(2, np.int64)), name="slots")

        def construct(self, sampled, tables):
            ops.advance_step_flashattn(self.tokens, sampled, self.positions, self.lens, self.slots, tables, 2, 2, 16)
            return self.lens + 0

    step = Step()
    lens = step(Tensor(np.array([[7], [9]], np.int64)), Tensor(np.array([[4, 5], [6, 7]], np.int32))).asnumpy()
    ok = lens.tolist() == [4, 21] and step.slots.asnumpy().tolist() == [4 * 16 + 3, 7 * 16 + 4]
    print("STEP", "OK" if ok else "WRONG", lens.tolist(), step.slots.asnumpy().tolist())
""")


@pytest.mark.parametrize("mode", ["ms.PYNATIVE_MODE", "ms.GRAPH_MODE"])
def test_model_code_reaches_ms_attention(mode, tmp_path):
    script = tmp_path / "model.py"          # Graph mode parses source, so it must live in a file
    script.write_text(MODEL_CODE % dict(parent=PACKAGE_PARENT, mode=mode))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                          cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith(("SFA", "STEP"))]
    assert lines == ["SFA functional OK", "SFA primitive OK", "STEP OK [4, 21] [67, 116]"], proc.stdout
