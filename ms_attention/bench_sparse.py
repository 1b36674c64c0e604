"""The sparse_flash_attention benchmark (part of `python -m ms_attention bench`): DeepSeek-V3.2-style decode, 2048
selected tokens (sparse_block_size 1) out of a 64k-token latent cache, 128 query heads sharing one 512 + 64 rope KV
head, bfloat16.

The kernel reads only the selected rows, so its cost follows the selection, not the stored length: the same
selection out of an 8k cache is printed beside it and should take the same time. Reported: time, the selected
K/V bytes over that time as a fraction of the read bandwidth measured in the same run, and the score and value
FLOPs as a fraction of the kernel library's FMA peak (with 128 heads per KV row the work is compute bound).
"""
import numpy as np
import mindspore as ms
from mindspore import Tensor

from ms_attention import ops
from ms_attention.bench_common import best_time, progress, row

D, DR, N1, SELECTED = 512, 64, 128, 2048


def bench_case(b, s2, repeats, budget_s=None):
    rng = np.random.default_rng(0)
    bf16 = lambda *shape: Tensor(rng.standard_normal(shape, np.float32), ms.bfloat16)  # noqa: E731
    query, query_rope = bf16(b, 1, N1, D), bf16(b, 1, N1, DR)
    key, key_rope = bf16(b, s2, 1, D), bf16(b, s2, 1, DR)      # value is the latent key (MLA absorbed)
    indices = np.stack([rng.choice(s2, SELECTED, replace=False) for _ in range(b)]).astype(np.int32)
    indices = Tensor(indices.reshape(b, 1, 1, SELECTED))

    def call():
        ops.sparse_flash_attention(query, key, key, indices, (D + DR) ** -0.5, query_rope=query_rope,
                                   key_rope=key_rope, sparse_block_size=1, attention_mode=2)[0].asnumpy()

    seconds = best_time(call, repeats, budget_s)
    selected_bytes = b * SELECTED * (D + DR) * 2               # each selected key row (with rope) read once
    flops = 2 * b * N1 * SELECTED * ((D + DR) + D)             # scores (576) and P.V (512)
    return {"shape": f"B={b} N1={N1} S2={s2} selected={SELECTED} D={D}+{DR} bf16", "ms": seconds * 1e3,
            "selected_GBps": selected_bytes / seconds / 1e9, "GFLOPs": flops / seconds / 1e9}


def run(settings):
    """One row per case: the FLOPs as a fraction of the fp32 FMA peak (with 128 query heads per KV row the
    work is compute bound), and the selected K/V bytes over the time as a fraction of the read bandwidth
    (`of_read_bw`)."""
    ms.set_context(mode=ms.PYNATIVE_MODE)
    read, fma = settings.limits.get("read_GBps"), settings.limits.get("fp32_fma_GFLOPs")
    rows = []
    for b, s2 in settings.pick(((4, 65536), (4, 8192)), ((1, 65536), (1, 8192)), ((1, 4096),)):
        result = bench_case(b, s2, settings.repeats, settings.budget_s)
        case = result.pop("shape")
        seconds = result.pop("ms") / 1e3
        result = row("sparse", f"sparse_flash_attention {case}", "pynative", seconds, unit="GFLOP/s",
                     value=result["GFLOPs"], limit="fp32 FMA peak", of_limit=result["GFLOPs"] / fma if fma else None,
                     of_read_bw=result["selected_GBps"] / read if read else None, **result)
        progress(result)
        rows.append(result)
    return rows
