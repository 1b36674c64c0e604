"""The sparse_flash_attention benchmark (part of `python -m ms_attention bench`): DeepSeek-V3.2-style decode, 2048
selected tokens (sparse_block_size 1) out of a 64k-token latent cache, 128 query heads sharing one 512 + 64 rope KV
head, bfloat16.

The kernel reads only the selected rows, so its cost follows the selection, not the stored length: the same
selection out of an 8k cache is printed beside it and should take the same time. Reported: time, the selected
K/V bytes over that time as a fraction of the streaming read bandwidth bench.py measured, and the score and value
FLOPs as a fraction of the kernel library's FMA peak (with 128 heads per KV row the work is compute bound).
"""
import time

import numpy as np
import mindspore as ms
from mindspore import Tensor

from ms_attention import ops

D, DR, N1, SELECTED = 512, 64, 128, 2048


def _best(fn, repeats):
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def bench_case(b, s2, repeats):
    rng = np.random.default_rng(0)
    bf16 = lambda *shape: Tensor(rng.standard_normal(shape, np.float32), ms.bfloat16)  # noqa: E731
    query, query_rope = bf16(b, 1, N1, D), bf16(b, 1, N1, DR)
    key, key_rope = bf16(b, s2, 1, D), bf16(b, s2, 1, DR)      # value is the latent key (MLA absorbed)
    indices = np.stack([rng.choice(s2, SELECTED, replace=False) for _ in range(b)]).astype(np.int32)
    indices = Tensor(indices.reshape(b, 1, 1, SELECTED))

    def call():
        ops.sparse_flash_attention(query, key, key, indices, (D + DR) ** -0.5, query_rope=query_rope,
                                   key_rope=key_rope, sparse_block_size=1, attention_mode=2)[0].asnumpy()

    call()
    seconds = _best(call, repeats)
    selected_bytes = b * SELECTED * (D + DR) * 2               # each selected key row (with rope) read once
    flops = 2 * b * N1 * SELECTED * ((D + DR) + D)             # scores (576) and P.V (512)
    return {"shape": f"B={b} N1={N1} S2={s2} selected={SELECTED} D={D}+{DR} bf16", "ms": seconds * 1e3,
            "selected_GBps": selected_bytes / seconds / 1e9, "GFLOPs": flops / seconds / 1e9}


def run(read_gbps, fma_gflops, quick=False):
    """Prints and returns one row per case."""
    ms.set_context(mode=ms.PYNATIVE_MODE)
    print("sparse_flash_attention (selected-block decode):")
    rows = []
    for b, s2 in ((1, 65536), (1, 8192)) if quick else ((4, 65536), (4, 8192)):
        row = bench_case(b, s2, repeats=3 if quick else 10)
        row["of_read_bw"] = row["selected_GBps"] / read_gbps
        row["of_fma_peak"] = row["GFLOPs"] / fma_gflops if fma_gflops else None
        peak = "n/a" if row["of_fma_peak"] is None else f"{row['of_fma_peak']:.2f}"
        print(f"  {row['shape']:52s} {row['ms']:8.3f} ms  selected K/V {row['selected_GBps']:6.2f} GB/s = "
              f"{row['of_read_bw']:.3f} x read bw  {row['GFLOPs']:7.1f} GFLOP/s = {peak} x FMA peak", flush=True)
        rows.append(row)
    return rows
