"""Extra memory of a long prefill: a fresh Python process runs one prompt_flash_attention call (PyNative, fp16,
B=1 N=8 S=16384 D=128, full attention: the S x S score matrix would be 2 GiB per head in float32) and reports
how much its resident memory grew beyond the output tensor.

Method: the child creates the inputs, runs one tiny prefill (so the library, its thread pool and MindSpore's
op machinery are loaded), reads its resident size (VmRSS), resets the peak counter (writing "5" to
/proc/self/clear_refs, Linux >= 4.0), runs the long prefill, waits for it, and reads the peak (VmHWM). Extra
memory = peak - resident before - the output's bytes: the kernel's workspace and every temporary of the call.
Where the peak cannot be reset, the peak before the call is used as the base instead (the inputs dominate it,
and the figure is then a lower bound) -- the row says which.
"""
import json
import os
import subprocess
import sys

from ms_attention.bench_common import progress, row, timing_lock

SHAPE = (1, 8, 16384, 128)
SMOKE_SHAPE = (1, 2, 1024, 64)
TARGET_MB = 64.0

CHILD = r"""
import json, sys
import numpy as np
import mindspore as ms
from ms_attention import ops

def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + ":"))

b, n, s, d = (int(x) for x in sys.argv[1:5])
ms.set_context(mode=ms.PYNATIVE_MODE)
rng = np.random.default_rng(0)
q, k, v = (ms.Tensor(rng.random((b, n, s, d), dtype=np.float32).astype(np.float16)) for _ in range(3))
small = ms.Tensor(np.ones((1, 1, 16, d), np.float16))
ops.prompt_flash_attention(small, small, small, num_heads=1, input_layout="BNSD").asnumpy()
ms.runtime.synchronize()
before = status("VmRSS")
try:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    method = "peak reset"
except OSError:
    method = "peak not reset (lower bound)"
base = before if method == "peak reset" else status("VmHWM")
out = ops.prompt_flash_attention(q, k, v, num_heads=n, scale_value=d ** -0.5, input_layout="BNSD")
ms.runtime.synchronize()
peak = status("VmHWM")
print(json.dumps({"before": before, "peak": peak, "base": base, "output_bytes": b * n * s * d * 2,
                  "method": method}))
"""


def run(settings):
    b, n, s, d = settings.pick(SHAPE, SHAPE, SMOKE_SHAPE)
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    with timing_lock():
        done = subprocess.run([sys.executable, "-c", CHILD, str(b), str(n), str(s), str(d)], env=env,
                          capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"memory child failed: {done.stderr[-2000:]}")
    child = json.loads(done.stdout.strip().splitlines()[-1])
    extra_mb = (child["peak"] - child["base"] - child["output_bytes"]) / 2 ** 20
    result = row("memory", f"memory prefill fp16 full B={b} N={n} S={s} D={d}", "pynative", None,
                 shape=dict(B=b, N=n, S=s, D=d, layout="BNSD", dtype="float16", causal=False),
                 unit="MB", value=extra_mb, extra_MB=extra_mb, rss_before_MB=child["before"] / 2 ** 20,
                 peak_MB=child["peak"] / 2 ** 20, output_MB=child["output_bytes"] / 2 ** 20, method=child["method"],
                 target=f"< {TARGET_MB:.0f} MB", target_value=TARGET_MB)
    progress(result)
    return [result]
