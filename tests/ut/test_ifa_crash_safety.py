"""Malformed inputs must raise, never crash or read outside a buffer. Each scenario runs in a fresh process
(MindSpore reports kernel errors asynchronously, and Graph mode refuses further steps of a failed graph)."""
import os
import subprocess
import sys
import textwrap

import pytest

import ms_attention

# the subprocess imports the very package this test process imported (installed or source tree)
PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(ms_attention.__file__)))

PRELUDE = textwrap.dedent("""
    import sys, numpy as np, mindspore as ms
    from mindspore import Tensor, nn
    sys.path.insert(0, %r)
    from ms_attention import ops
    def t(shape, dtype=np.float16):
        return Tensor(np.ones(shape, dtype))
    def expect_error(fn, kind=Exception):
        try:
            out = fn()
            if out is not None:
                out.asnumpy()
        except kind as e:
            print("RAISED", type(e).__name__, str(e).splitlines()[0])
            return
        print("NO ERROR")
""") % PACKAGE_PARENT

SCENARIOS = {
    # value-dependent problems in Graph mode: the kernel itself rejects them
    "graph_seq_tensor_above_s": """
        ms.set_context(mode=ms.GRAPH_MODE)
        class Net(nn.Cell):
            def construct(self, q, k, v, s):
                return ops.incre_flash_attention(q, k, v, actual_seq_lengths=s, num_heads=4)
        expect_error(lambda: Net()(t((2, 1, 128)), t((2, 16, 128)), t((2, 16, 128)),
                                   Tensor(np.array([17, 1], np.int64))), RuntimeError)
        # the process lives on and a fresh graph still runs
        print("AFTER", Net()(t((2, 1, 128)), t((2, 16, 128)), t((2, 16, 128)),
                             Tensor(np.array([16, 1], np.int64))).shape)
    """,
    "graph_block_table_out_of_range": """
        ms.set_context(mode=ms.GRAPH_MODE)
        class Net(nn.Cell):
            def construct(self, q, k, v, bt):
                return ops.incre_flash_attention(q, k, v, actual_seq_lengths=[40, 3], block_table=bt,
                                                 num_heads=4, block_size=32)
        for table in ([[0, 1000000], [2, -5]], [[0, 1], [-7, 0]]):   # far past num_blocks; negative
            bt = Tensor(np.array(table, np.int32))
            expect_error(lambda: Net()(t((2, 1, 128)), t((4, 32, 128)), t((4, 32, 128)), bt), RuntimeError)
    """,
    "graph_fresh_cell_shares_parameters": """
        # after a rejected step, the same graph refuses to run; a fresh Cell over the same Parameters runs
        ms.set_context(mode=ms.GRAPH_MODE)
        from mindspore import Parameter
        cache = Parameter(t((4, 32, 128)), name="cache")
        class Net(nn.Cell):
            def __init__(self, cache):
                super().__init__()
                self.cache = cache
            def construct(self, q, bt):
                return ops.incre_flash_attention(q, [self.cache], [self.cache], actual_seq_lengths=[40, 3],
                                                 block_table=bt, num_heads=4, block_size=32)
        net = Net(cache)
        good = Tensor(np.array([[0, 1], [2, 3]], np.int32))
        print("FIRST", net(t((2, 1, 128)), good).shape)
        expect_error(lambda: net(t((2, 1, 128)), Tensor(np.array([[0, 9], [2, 3]], np.int32))), RuntimeError)
        expect_error(lambda: net(t((2, 1, 128)), good), RuntimeError)
        print("AFTER", Net(cache)(t((2, 1, 128)), good).shape)
    """,
    "raw_kernel_bad_attributes": """
        # the kernel's Custom op called directly, with an attribute vector that contradicts the tensors
        from ms_attention.primitive_base import KernelPrimitive
        prim = KernelPrimitive("incre_flash_attention", (4, "BSH", 1.0, 0, 0, 1), (False,) * 3 + (True,) * 12)
        empty = Tensor(np.zeros((0,), np.float32))
        present = [1.0] * 3 + [0.0] * 12                                # query, key, value given
        bad = Tensor(np.array([3.0, 0, 1.0, 3.0, 0, 1] + present))       # num_heads 3: 128 % 3 != 0
        expect_error(lambda: prim(t((2, 1, 128)), t((2, 16, 128)), t((2, 16, 128)), *([empty] * 12), bad),
                     RuntimeError)
        bad = Tensor(np.array([4.0, 0, 1.0, 4.0, 0, 1] + present[:3] + [1.0] + present[4:]))  # mask flagged given
        expect_error(lambda: prim(t((2, 1, 128)), t((2, 16, 128)), t((2, 16, 128)), *([empty] * 12), bad),
                     RuntimeError)
        bad = Tensor(np.array([1.0], np.float64))                       # too short
        expect_error(lambda: prim(t((2, 1, 128)), t((2, 16, 128)), t((2, 16, 128)), *([empty] * 12), bad),
                     RuntimeError)
    """,
    "random_malformed_shapes": """
        rng = np.random.default_rng(0)
        kinds = set()
        for trial in range(60):
            b, s = int(rng.integers(0, 3)), int(rng.integers(0, 5))
            qs = tuple(int(x) for x in rng.integers(0, 4, rng.integers(1, 5)))
            ks = tuple(int(x) for x in rng.integers(0, 4, rng.integers(1, 5)))
            layout = ["BSH", "BNSD", "BSND"][trial % 3]
            kw = dict(num_heads=int(rng.integers(1, 3)), input_layout=layout)
            if trial % 4 == 0:
                kw["actual_seq_lengths"] = [int(x) for x in rng.integers(-2, 6, rng.integers(1, 3))]
            if trial % 5 == 0:
                kw["block_table"] = Tensor(rng.integers(-3, 5, (b or 1, 2)).astype(np.int32))
                kw["block_size"] = 16
            try:
                ops.incre_flash_attention(t(qs), t(ks), t(ks), **kw).asnumpy()
                kinds.add("ok")
            except (TypeError, ValueError, RuntimeError) as e:
                kinds.add(type(e).__name__)
        print("SURVIVED", sorted(kinds))
    """,
}


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_no_crash(name, tmp_path):
    script = tmp_path / f"{name}.py"          # Graph mode parses source, so it must live in a file
    script.write_text(PRELUDE + textwrap.dedent(SCENARIOS[name]))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                          cwd=str(tmp_path))
    out = proc.stdout
    assert proc.returncode == 0, f"exit {proc.returncode}\n{out}\n{proc.stderr[-3000:]}"
    assert "NO ERROR" not in out, out
    if name == "random_malformed_shapes":
        assert "SURVIVED" in out, out
    else:
        assert "RAISED RuntimeError" in out, out
    if name in ("graph_seq_tensor_above_s", "graph_fresh_cell_shares_parameters"):
        assert "AFTER (2, 1, 128)" in out, out
    if name == "graph_fresh_cell_shares_parameters":
        assert "FIRST (2, 1, 128)" in out and out.count("RAISED RuntimeError") == 2, out
        assert "the 'block_table' entry 9 of batch 0 (slot 1) is out of range [0, 4)." in out, out
    if name == "graph_seq_tensor_above_s":   # the kernel says what was wrong, in the exception
        assert "For 'IncreFlashAttention', each 'actual_seq_lengths' must be in [0, 16], but got 17" in out, out
    if name == "graph_block_table_out_of_range":
        assert "the 'block_table' entry 1000000 of batch 0 (slot 1) is out of range [0, 4)." in out, out
        assert "the 'block_table' entry -7 of batch 1 (slot 0) is out of range [0, 4)." in out, out
