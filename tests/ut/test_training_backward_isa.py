"""The flash-attention backward (attention/backward.h) in every instruction set it can be built for, against the
numpy golden (ms_attention/kernels/reference/training_attention.py): AVX-512 with AVX512_BF16 (bfloat16 through
vdpbf16ps micro-GEMMs), AVX-512 without it, AVX2 and none (scalar loops). Each variant compiles the backward's
adapter (flash_attention_score_grad.cpp) with the library's flags plus its own into a small library, called here
through ctypes with the golden forward's statistics and output; the variants the CPU cannot run are skipped.

The cases cross the paths of the tiles: the bf16 tiles (48 keys x 64 rows on 16-row panels) with odd head dims
(pairs along d padded), odd key counts (a zero partner key), rows of a GQA group split across panels, masks,
bands, dropout (generated and explicit), a pse (dpse) and the key-block splits of few KV heads."""
import ctypes
import os
import shutil
import subprocess

import numpy as np
import pytest

from ifa_cases import round_to
from ms_attention.kernels.cpu import build, loader
from ms_attention.kernels.reference import training_attention as R
from test_training_backward_kernel import INT_MAX, Inputs, assert_grad_close

CSRC = os.path.join(os.path.dirname(os.path.abspath(build.__file__)), "csrc")
AVX512 = ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-mf16c"]
ISA_VARIANTS = {  # name: (compiler flags, the CPU flags needed to run the result)
    "avx512_bf16": (AVX512 + ["-mavx512bf16"], {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_bf16", "fma", "f16c"}),
    "avx512": (AVX512, {"avx512f", "avx512bw", "avx512vl", "avx512dq", "fma", "f16c"}),
    "avx2": (["-mavx2", "-mfma", "-mf16c"], {"avx2", "fma", "f16c"}),
    "scalar": ([], set()),
}
LAYOUT_CODE = {"BSH": 0, "BNSD": 1, "SBH": 2, "BSND": 3, "TND": 4}
NUM_INPUTS = 17  # flash_attention_score_grad's tensor inputs (kernel_abi.h), before the attribute vector


@pytest.fixture(scope="module", params=sorted(ISA_VARIANTS))
def grad_library(request, tmp_path_factory):
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler")
    flags, needs = ISA_VARIANTS[request.param]
    if not needs <= loader.cpu_flags():
        pytest.skip(f"this CPU lacks {sorted(needs - loader.cpu_flags())}")
    path = str(tmp_path_factory.mktemp(request.param) / "libgrad.so")
    base = [f for f in build.BASE_FLAGS if f != "-Wall"] + ["-w"]
    cmd = [cxx] + base + ["-I", CSRC] + flags + [os.path.join(CSRC, "flash_attention_score_grad.cpp"),
                                                 os.path.join(CSRC, "common.cpp"), "-o", path]
    subprocess.run(cmd, check=True)
    return ctypes.CDLL(path)


def _kernel_array(x, dtype):
    """(numpy array the kernel reads, its dtype name): values exact in dtype, bf16 as its 16-bit patterns."""
    x = np.asarray(x)
    if dtype == "bfloat16":
        return np.ascontiguousarray((np.asarray(x, np.float32).view(np.uint32) >> 16).astype(np.uint16)), dtype
    return np.ascontiguousarray(x.astype({"float16": np.float16, "float32": np.float32}.get(dtype, x.dtype))), dtype


def _from_kernel(x, dtype):
    if dtype == "bfloat16":
        return (x.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    return x.astype(np.float64)


def _call_grad(lib, params):
    """FlashAttentionScoreGrad on (array, dtype name) parameters; raises on a nonzero return."""
    n = len(params)
    arrays = [a for a, _ in params]
    ptrs = (ctypes.c_void_p * n)(*[a.ctypes.data if a.size else None for a in arrays])
    ndims = (ctypes.c_int * n)(*[a.ndim for a in arrays])
    dims = [(ctypes.c_int64 * max(1, a.ndim))(*a.shape) for a in arrays]
    shapes = (ctypes.POINTER(ctypes.c_int64) * n)(*[ctypes.cast(d, ctypes.POINTER(ctypes.c_int64)) for d in dims])
    dtypes = (ctypes.c_char_p * n)(*[t.encode() for _, t in params])
    lib.FlashAttentionScoreGrad.restype = ctypes.c_int
    assert lib.FlashAttentionScoreGrad(n, ptrs, ndims, shapes, dtypes, None, None) == 0


def check(lib, x, *, pse=None, drop_mask=None, attn_mask=None, keep_prob=1.0, pre_tokens=INT_MAX,
          next_tokens=INT_MAX, sparse_mode=0, seed=0, offset=0):
    """The kernel's (dq, dk, dv, dpse) on the golden forward's statistics and output, against the golden."""
    scale = x.d ** -0.5
    kw = dict(pse=pse, drop_mask=drop_mask, attn_mask=attn_mask, scale=scale, keep_prob=keep_prob,
              pre_tokens=pre_tokens, next_tokens=next_tokens, sparse_mode=sparse_mode, seed=seed, offset=offset)
    out, mx, sm = R.training_attention(x.q, x.k, x.v, head_num=x.n, input_layout=x.layout, **kw)
    out = round_to(out, x.dtype)
    want = R.training_attention_grad(x.q, x.k, x.v, x.dy, mx, sm, out, head_num=x.n, input_layout=x.layout, **kw)
    t = x.dtype
    empty = lambda dtype: (np.zeros((0,), np.uint8), dtype)
    given = lambda a, dtype: empty(dtype) if a is None else _kernel_array(a, dtype)
    inputs = [_kernel_array(x.q, t), _kernel_array(x.k, t), _kernel_array(x.v, t), _kernel_array(x.dy, t),
              given(pse, t), given(drop_mask, "uint8"), given(attn_mask, "uint8"),
              (np.ascontiguousarray(mx, np.float32), "float32"), (np.ascontiguousarray(sm, np.float32), "float32"),
              _kernel_array(out, t), empty("int64"), empty("int64"), empty("int64"), empty("int64"), empty("int64"),
              (np.array([seed], np.int64), "int64"), (np.array([offset], np.int64), "int64")]
    present = [0 if a.size == 0 and i in (4, 5, 6, 10, 11, 12, 13, 14) else 1 for i, (a, _) in enumerate(inputs)]
    attrs = np.array([x.n, keep_prob, scale, pre_tokens, next_tokens, LAYOUT_CODE[x.layout], sparse_mode, 1] +
                     present, np.float64)
    assert len(present) == NUM_INPUTS
    dq, dk, dv = (np.zeros_like(inputs[i][0]) for i in range(3))
    dpse = np.zeros_like(inputs[4][0]) if pse is not None else np.zeros((0,), inputs[0][0].dtype)
    _call_grad(lib, inputs + [(attrs, "float64"), (dq, t), (dk, t), (dv, t), (dpse, t)])
    for name, g, w in zip(("dq", "dk", "dv", "dpse"), (dq, dk, dv, dpse), want):
        assert_grad_close(_from_kernel(g, t), w, t, name)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
def test_dtypes_full_attention(grad_library, dtype):
    check(grad_library, Inputs(b=2, n=4, kvn=2, s1=70, s2=90, d=40, layout="BNSD", dtype=dtype))


@pytest.mark.parametrize("d", [1, 7, 33, 64, 128, 130])
def test_head_dims(grad_library, d):
    """Odd D pads the bf16 pairs along d; D past a multiple of 16 leaves a partial column vector."""
    check(grad_library, Inputs(b=1, n=2, kvn=1, s1=37, s2=53, d=d, layout="BSH", seed=d))


@pytest.mark.parametrize("s1,s2", [(1, 1), (1, 97), (97, 1), (65, 49), (130, 145)])
def test_lengths(grad_library, s1, s2):
    """Odd key counts (a zero partner key in the last pair), one row, rows past a 64-row tile, several key
    blocks; causal (sparse_mode 3, right-down) so the band crosses tiles."""
    x = Inputs(b=1, n=3, kvn=3, s1=s1, s2=s2, d=24, layout="BSND", seed=s1 + s2)
    check(grad_library, x)
    check(grad_library, x, sparse_mode=3)


@pytest.mark.parametrize("n,kvn", [(6, 2), (12, 1), (5, 5)])
def test_gqa_groups_across_panels(grad_library, n, kvn):
    """A GQA group of 3, 12 or 1 heads: rows of one position straddle 16-row panels; one KV head is split
    across threads by key blocks."""
    check(grad_library, Inputs(b=2, n=n, kvn=kvn, s1=45, s2=100, d=32, layout="BSH", seed=n), sparse_mode=2,
          attn_mask=np.triu(np.ones((2048, 2048), np.uint8), 1))


def test_band(grad_library):
    check(grad_library, Inputs(b=1, n=2, kvn=1, s1=150, s2=150, d=48, layout="BNSD"), sparse_mode=4,
          pre_tokens=40, next_tokens=3, attn_mask=np.triu(np.ones((2048, 2048), np.uint8), 1))


def test_discard_mask(grad_library):
    x = Inputs(b=2, n=2, kvn=2, s1=70, s2=90, d=40, layout="BSH", seed=3)
    mask = (x.rng.random((2, 1, 70, 90)) < 0.3).astype(np.uint8)
    mask[0, 0, 5] = 1  # a row that sees no key
    check(grad_library, x, attn_mask=mask)


def test_generated_dropout(grad_library):
    x = Inputs(b=1, n=4, kvn=2, s1=70, s2=90, d=40, layout="BSND", seed=4)
    check(grad_library, x, keep_prob=0.8, seed=11, offset=5, sparse_mode=3)


def test_explicit_drop_mask(grad_library):
    x = Inputs(b=2, n=2, kvn=1, s1=40, s2=96, d=24, layout="BNSD", seed=5)
    bits = (x.rng.random((2, 2, 40, 96)) < 0.7).astype(np.uint8)
    check(grad_library, x, keep_prob=0.7, drop_mask=np.packbits(bits, axis=-1, bitorder="little"))


def test_pse_gradient_with_mask(grad_library):
    x = Inputs(b=2, n=2, kvn=2, s1=50, s2=70, d=40, layout="BSH", seed=6)
    pse = round_to(x.rng.standard_normal((2, 2, 50, 70)), x.dtype)
    check(grad_library, x, pse=pse, attn_mask=(x.rng.random((50, 70)) < 0.2).astype(np.uint8))


def test_mask_hiding_whole_tiles(grad_library):
    """An explicit causal mask (sparse_mode 0) with a band-less tile grid: the tiles above the diagonal see no key
    and are skipped, the diagonal ones are masked per element; a GQA group straddles the row panels."""
    x = Inputs(b=1, n=3, kvn=1, s1=150, s2=150, d=40, layout="BSH", seed=7)
    check(grad_library, x, attn_mask=np.triu(np.ones((150, 150), np.uint8), 1))
