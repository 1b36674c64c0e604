"""The attention core's tiles against plain double-precision loops (csrc/tile_check.cpp), once per instruction set
the kernel library can be built for: AVX-512 with and without AVX512_BF16 (packed prefill paths, in-place decode paths, vdpbf16ps and its
widening fallback), AVX2 and none."""
import os
import shutil
import subprocess

import pytest

from ms_attention.kernels.cpu import build, loader

HERE = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join(os.path.dirname(os.path.abspath(build.__file__)), "csrc")

ISA_VARIANTS = {  # name: (compiler flags, the CPU flags needed to run the result)
    "avx512": (["-mavx512f", "-mavx512bw", "-mavx512vl", "-mfma", "-mf16c"],
               {"avx512f", "avx512bw", "avx512vl", "fma", "f16c"}),
    "avx512bf16": (["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512bf16", "-mfma", "-mf16c"],
                   {"avx512f", "avx512bw", "avx512vl", "avx512_bf16", "fma", "f16c"}),
    "avx2": (["-mavx2", "-mfma", "-mf16c"], {"avx2", "fma", "f16c"}),
    "scalar": ([], set()),
}


@pytest.mark.parametrize("isa", sorted(ISA_VARIANTS))
def test_tiles_match_plain_loops(isa, tmp_path):
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler")
    flags, needs = ISA_VARIANTS[isa]
    if not needs <= loader.cpu_flags():
        pytest.skip(f"this CPU lacks {sorted(needs - loader.cpu_flags())}")
    exe = str(tmp_path / "tile_check")
    cmd = [cxx, "-std=c++17", "-O2", "-fopenmp-simd", "-w", "-I", CSRC] + flags + \
        [os.path.join(HERE, "csrc", "tile_check.cpp"), "-o", exe]
    subprocess.run(cmd, check=True)
    result = subprocess.run([exe], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith(": 0 mismatches")
    assert result.stdout.startswith(isa)
