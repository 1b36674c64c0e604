"""install() / uninstall(): unmodified MindSpore-style model code reaches ms_attention through every public path,
in PyNative and Graph mode, and uninstall() restores MindSpore exactly. install() changes process-wide state,
so each scenario runs in a fresh process."""
import os
import subprocess
import sys
import textwrap

import pytest

import ms_attention
from ms_attention import opdef

PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(ms_attention.__file__)))

# Model code as MindSpore's own tests and MindFormers-style cells write it; only ms_attention.install() is added.
MODEL_CODE = textwrap.dedent("""
    import sys
    import numpy as np
    import mindspore as ms
    from mindspore import Tensor, nn
    sys.path.insert(0, %(parent)r)
    import ms_attention
    ms.set_context(mode=%(mode)s)
    ms_attention.install()

    import mindspore.ops as ops
    import mindspore.ops.functional as F
    import mindspore.ops.operations.nn_ops as P
    from mindspore.ops import incre_flash_attention as ifa_from_ops
    from mindspore.ops.function import incre_flash_attention as ifa_from_function
    from mindspore.ops.function.nn_func import incre_flash_attention as ifa_from_nn_func
    from mindspore.ops.auto_generate import IncreFlashAttention as IFAAutoGenerate
    from mindspore.ops.auto_generate.gen_ops_prim import IncreFlashAttention as IFAGenOpsPrim

    B, N, KVN, S, D = 2, 4, 2, 24, 16
    rng = np.random.default_rng(0)
    q = Tensor(rng.standard_normal((B, 1, N * D)).astype(np.float16))
    k = Tensor(rng.standard_normal((B, S, KVN * D)).astype(np.float16))
    v = Tensor(rng.standard_normal((B, S, KVN * D)).astype(np.float16))
    lens = Tensor(np.array([S, 9], np.int64))

    class Functional(nn.Cell):
        def __init__(self, fn):
            super().__init__()
            self.fn = fn
        def construct(self, q, k, v, lens):
            # 21 positional arguments, as MindSpore's own ST test calls it
            return self.fn(q, [k], [v], None, lens, None, None, None, None, None, None, None, None, None,
                           N, "BSH", 0.25, KVN, 0, 1, None)

    class Primitive(nn.Cell):
        def __init__(self, cls):
            super().__init__()
            self.op = cls(num_heads=N, input_layout="BSH", scale_value=0.25, num_key_value_heads=KVN)
        def construct(self, q, k, v, lens):
            return self.op(q, [k], [v], None, lens, None, None, None, None, None, None, None, None, None, None)

    from mindspore import mutable
    from mindspore.common.api import jit

    class MindSporeSTStyle(nn.Cell):
        # as MindSpore's own ST test: @jit construct, key/value as mutable tuples, 20 positional arguments
        def __init__(self):
            super().__init__()
            self.ifa = ifa_from_nn_func
        @jit
        def construct(self, q, k, v, lens):
            return self.ifa(q, k, v, None, lens, None, None, None, None, None, None, None, None, None,
                            N, "BSH", 0.25, KVN, 0, 1)

    class MutableKey(nn.Cell):
        def __init__(self, cell):
            super().__init__()
            self.cell = cell
        def construct(self, q, k, v, lens):
            return self.cell(q, mutable((k,)), mutable((v,)), lens)

    from ms_attention.kernels.reference.incre_flash_attention import incre_flash_attention as reference
    expected = reference(q.asnumpy().astype(np.float32), k.asnumpy().astype(np.float32),
                         v.asnumpy().astype(np.float32), actual_seq_lengths=[S, 9], num_heads=N,
                         scale_value=0.25, num_key_value_heads=KVN)
    paths = {
        "mindspore.ops": Functional(ops.incre_flash_attention),
        "mindspore.ops.functional": Functional(F.incre_flash_attention),
        "from mindspore.ops import": Functional(ifa_from_ops),
        "mindspore.ops.function": Functional(ifa_from_function),
        "mindspore.ops.function.nn_func": Functional(ifa_from_nn_func),
        "operations.nn_ops.IncreFlashAttention": Primitive(P.IncreFlashAttention),
        "auto_generate.IncreFlashAttention": Primitive(IFAAutoGenerate),
        "gen_ops_prim.IncreFlashAttention": Primitive(IFAGenOpsPrim),
        "jit construct, mutable key tuple": MutableKey(MindSporeSTStyle()),
    }
    for name, cell in paths.items():
        try:
            out = cell(q, k, v, lens).asnumpy().astype(np.float64)
            err = np.abs(out - expected).max()
            print("PATH", name, "OK" if err < 5e-3 else f"WRONG {err}")
        except Exception as e:   # report, do not stop: every path is checked
            print("PATH", name, "FAILED", type(e).__name__, str(e).splitlines()[0][:200])
""")


def _run(code, tmp_path, name):
    script = tmp_path / f"{name}.py"          # Graph mode parses source, so it must live in a file
    script.write_text(code)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                          cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.parametrize("mode", ["ms.PYNATIVE_MODE", "ms.GRAPH_MODE"])
def test_every_path_reaches_ms_attention(mode, tmp_path):
    out = _run(MODEL_CODE % dict(parent=PACKAGE_PARENT, mode=mode), tmp_path, "model")
    results = [line for line in out.splitlines() if line.startswith("PATH ")]
    assert len(results) == 9, out
    assert all(line.endswith(" OK") for line in results), "\n".join(results)


RESTORE_CODE = textwrap.dedent("""
    import sys, importlib
    sys.path.insert(0, %(parent)r)
    import mindspore
    import ms_attention
    from ms_attention import opdef
    for name in importlib.import_module("ms_attention.install").MINDSPORE_MODULES:
        importlib.import_module(name)

    def snapshot():
        state = {}
        for name, module in list(sys.modules.items()):
            if module is not None and name.startswith("mindspore"):
                for attr, value in list(vars(module).items()):
                    state[(name, attr)] = id(value)
        return state

    before = snapshot()
    # MindSpore's own objects of the family, as the defining modules bind them
    names = {n for op in opdef.load_all().values() for n in (op.function_name, op.class_name)}
    originals = {id(v): (m, a) for (m, a), v in
                 ((key, vars(sys.modules[key[0]])[key[1]]) for key in before if key[1] in names)}
    changed = ms_attention.install()
    left = [f"{name}.{attr}" for name, module in list(sys.modules.items())
            if module is not None and name.startswith("mindspore")
            for attr, value in list(vars(module).items()) if id(value) in originals]
    assert not left, left                         # no public name still reaches MindSpore's object
    import mindspore.ops as ops
    from mindspore.ops import auto_generate
    import mindspore.ops.operations.nn_ops as nn_ops
    for op in opdef.load_all().values():
        ours_fn = getattr(ms_attention.ops, op.function_name)
        assert ops.__dict__[op.function_name] is ours_fn, op.function_name
        assert mindspore.ops.function.__dict__[op.function_name] is ours_fn, op.function_name
        if op.source == "mindspore":
            ours_cls = getattr(ms_attention.primitives, op.class_name)
            assert getattr(auto_generate, op.class_name) is ours_cls, op.class_name
            assert getattr(auto_generate.gen_ops_prim, op.class_name) is ours_cls, op.class_name
    assert nn_ops.IncreFlashAttention is ms_attention.primitives.IncreFlashAttention
    assert nn_ops.PromptFlashAttention is ms_attention.primitives.PromptFlashAttention
    assert nn_ops.FlashAttentionScore is ms_attention.primitives.FlashAttentionScore
    assert mindspore.ops.operations._infer_ops.FusedInferAttentionScore is \\
        ms_attention.primitives.FusedInferAttentionScore
    assert mindspore.ops.function.nn_func.PromptFlashAttention is ms_attention.primitives.PromptFlashAttention
    assert mindspore.ops.functional_overload.sparse_flash_attention is ms_attention.ops.sparse_flash_attention
    assert ms_attention.install() == []          # a second install changes nothing
    ms_attention.uninstall()
    after = snapshot()
    assert after == before, sorted(k for k in set(after) | set(before) if after.get(k) != before.get(k))[:10]
    assert not hasattr(ops, "advance_step_flashattn")
    print("CHANGED", len(changed))
    print("RESTORED")
""")


def test_uninstall_restores_mindspore_exactly(tmp_path):
    out = _run(RESTORE_CODE % dict(parent=PACKAGE_PARENT), tmp_path, "restore")
    assert "RESTORED" in out, out
    changed = int(out.split("CHANGED ")[1].split()[0])
    assert changed >= 6 * len(opdef.names()), out   # every operator, under several names each


ASCEND_CODE = textwrap.dedent("""
    import sys
    sys.path.insert(0, %(parent)r)
    from unittest import mock
    import mindspore
    import ms_attention
    with mock.patch("ms_attention.install.context.get_context", return_value="Ascend"):
        print("CHANGED", len(ms_attention.install()))
    print("SAME", mindspore.ops.incre_flash_attention is not ms_attention.ops.incre_flash_attention)
""")


def test_install_does_nothing_on_ascend(tmp_path):
    out = _run(ASCEND_CODE % dict(parent=PACKAGE_PARENT), tmp_path, "ascend")
    assert "CHANGED 0" in out and "SAME True" in out, out
