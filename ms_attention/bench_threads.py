"""Thread settings: how MindSpore's execution mode and its own threads change the kernels' timings.

Each setting runs in a fresh process (the pool size is read once, and launch_blocking cannot be undone): a
prefill (fp16, full, B=1 N=16 S=2048 D=128) and a decode (fp16 B=8 N=32 kvN=8 S=4096 D=128) timed as the other
sections do, with MS_ATTENTION_NUM_THREADS = 1 and the CPUs of the process, in
- graph: an nn.Cell in GRAPH_MODE;
- pynative: the op called in PYNATIVE_MODE (asynchronous dispatch: a Python thread waits for the result);
- pynative_synchronize: `ms.set_context(pynative_synchronize=True)`;
- launch_blocking: `ms.runtime.launch_blocking()`.
"""
import json
import os
import subprocess
import sys
import time

import numpy as np
import mindspore as ms
from mindspore import nn

from ms_attention import ops
from ms_attention.bench_common import progress, row, timing_lock

SETTINGS = ["graph", "pynative", "pynative_synchronize", "launch_blocking"]
PREFILL = (1, 16, 2048, 128)
DECODE = (8, 32, 8, 4096, 128)
SMOKE_PREFILL, SMOKE_DECODE = (1, 2, 128, 32), (2, 4, 2, 256, 32)



def _child(setting, threads, repeats, prefill, decode):
    """Times of one setting in a fresh process: {"prefill_s": ..., "decode_s": ...}."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, MS_ATTENTION_NUM_THREADS=str(threads))
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    args = [sys.executable, "-m", "ms_attention.bench_threads", setting, str(repeats)]
    with timing_lock():
        done = subprocess.run(args + [str(x) for x in prefill + decode], env=env, capture_output=True, text=True,
                              timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"thread-setting child failed ({setting}): {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(settings):
    """Every (pool size, setting) in a fresh process; with the full size the whole list runs twice, in turn,
    and each keeps its better time, so a burst of load from other processes does not decide a comparison."""
    prefill = settings.pick(PREFILL, PREFILL, SMOKE_PREFILL)
    decode = settings.pick(DECODE, DECODE, SMOKE_DECODE)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    configs = [(threads, setting) for threads in sorted({1, cpus})
               for setting in settings.pick(SETTINGS, SETTINGS, SETTINGS[:2])]
    best = {}
    for _ in range(settings.pick(2, 1, 1)):
        for config in configs:
            times = _child(config[1], config[0], settings.repeats, prefill, decode)
            best[config] = {k: min(v, best.get(config, times)[k]) for k, v in times.items()}
    limits = settings.limits
    fma, read = limits.get("fp32_fma_GFLOPs"), limits.get("read_GBps")
    b, n, s, d = prefill
    db, dn, dkvn, ds, dd = decode
    rows = []
    for (threads, setting), times in best.items():
        gflops = 4.0 * b * n * s * s * d / times["prefill_s"] / 1e9
        gbps = 2.0 * db * dkvn * ds * dd * 2 / times["decode_s"] / 1e9
        for what, seconds, unit, value, limit, of in (
                (f"prefill fp16 full B={b} N={n} S={s} D={d}", times["prefill_s"], "GFLOP/s", gflops,
                 "fp32 FMA peak", gflops / fma if fma else None),
                (f"decode fp16 B={db} N={dn} kvN={dkvn} S={ds} D={dd}", times["decode_s"], "GB/s", gbps, "read bw",
                 gbps / read if read else None)):
            result = row("threads", f"threads={threads} {what}", setting, seconds, threads=threads,
                         setting=setting, unit=unit, value=value, limit=limit, of_limit=of)
            progress(result)
            rows.append(result)
    return rows


class _Prefill(nn.Cell):
    def __init__(self, n, d):
        super().__init__()
        self.n, self.scale = n, d ** -0.5

    def construct(self, q, k, v):
        return ops.prompt_flash_attention(q, k, v, num_heads=self.n, scale_value=self.scale, input_layout="BNSD")


class _Decode(nn.Cell):
    def __init__(self, n, kvn, d):
        super().__init__()
        self.n, self.kvn, self.scale = n, kvn, d ** -0.5

    def construct(self, q, k, v):
        return ops.incre_flash_attention(q, [k], [v], num_heads=self.n, num_key_value_heads=self.kvn,
                                         input_layout="BNSD", scale_value=self.scale)


def child(argv):
    """In the fresh process: applies the setting, times the prefill and the decode, prints them as JSON."""
    setting, repeats = argv[0], int(argv[1])
    pb, pn, ps, pd, db, dn, dkvn, ds, dd = (int(x) for x in argv[2:11])
    ms.set_context(mode=ms.GRAPH_MODE if setting == "graph" else ms.PYNATIVE_MODE)
    if setting == "pynative_synchronize":
        ms.set_context(pynative_synchronize=True)
    if setting == "launch_blocking":
        ms.runtime.launch_blocking()

    def best(fn):
        fn()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return min(times)

    rng = np.random.default_rng(0)
    tensor = lambda *shape: ms.Tensor(rng.random(shape, dtype=np.float32).astype(np.float16))  # noqa: E731
    pq, pk, pv = tensor(pb, pn, ps, pd), tensor(pb, pn, ps, pd), tensor(pb, pn, ps, pd)
    dq, dk, dv = tensor(db, dn, 1, dd), tensor(db, dkvn, ds, dd), tensor(db, dkvn, ds, dd)
    prefill, decode = _Prefill(pn, pd), _Decode(dn, dkvn, dd)
    print(json.dumps({"prefill_s": best(lambda: prefill(pq, pk, pv).asnumpy()),
                      "decode_s": best(lambda: decode(dq, dk, dv).asnumpy())}))


if __name__ == "__main__":
    child(sys.argv[1:])
