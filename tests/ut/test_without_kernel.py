"""Without the compiled library, a call of the functional or the primitive raises the same RuntimeError listing
why no kernel serves it (the numpy reference cannot run through MindSpore 2.10's pyfunc Custom), and the
reference stays usable on numpy arrays. Runs in a fresh process with MS_ATTENTION_KERNEL=reference."""
import os
import subprocess
import sys
import textwrap

import ms_attention

PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(ms_attention.__file__)))

SCRIPT = textwrap.dedent("""
    import sys, numpy as np, mindspore as ms
    from mindspore import Tensor
    sys.path.insert(0, %r)
    from ms_attention import ops, backends
    from ms_attention.kernels.reference.incre_flash_attention import incre_flash_attention as ref
    rng = np.random.default_rng(0)
    q = rng.standard_normal((2, 1, 128)).astype(np.float16)
    k = rng.standard_normal((2, 9, 64)).astype(np.float16)
    print("BACKEND", backends.select("incre_flash_attention").backend)
    exp = ref(q.astype(np.float32), k.astype(np.float32), k.astype(np.float32), num_heads=4,
              num_key_value_heads=2, actual_seq_lengths=[9, 4])
    print("REFERENCE", exp.shape)
    try:
        ops.incre_flash_attention(Tensor(q), [Tensor(k)], [Tensor(k)], num_heads=4, num_key_value_heads=2).asnumpy()
        print("NO ERROR")
    except RuntimeError as e:
        print("ERROR", str(e).splitlines()[0])
    from ms_attention import primitives
    prim = primitives.IncreFlashAttention(num_heads=4, num_key_value_heads=2)   # constructs: attributes are fine
    try:
        prim(Tensor(q), [Tensor(k)], [Tensor(k)]).asnumpy()
        print("NO PRIMITIVE ERROR")
    except RuntimeError as e:
        print("PRIMITIVE_ERROR", str(e).splitlines()[0])
""") % PACKAGE_PARENT


def test_without_kernel_calls_raise_the_reasons(tmp_path):
    script = tmp_path / "fallback.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, MS_ATTENTION_KERNEL="reference")
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, env=env,
                          cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in proc.stdout.splitlines() if " " in line)
    assert lines["BACKEND"] == "none"
    assert lines["REFERENCE"] == "(2, 1, 128)"
    assert "no kernel serves this call" in lines["ERROR"] and "MS_ATTENTION_KERNEL=reference" in lines["ERROR"]
    assert lines["PRIMITIVE_ERROR"] == lines["ERROR"]
