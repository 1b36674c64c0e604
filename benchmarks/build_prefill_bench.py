"""Builds benchmarks/csrc/prefill_bench (the attention core's prefill throughput; not part of the library).

    python benchmarks/build_prefill_bench.py [extra compiler flags...]   # default: -march=native
"""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CSRC = os.path.join(ROOT, "ms_attention", "kernels", "cpu", "csrc")
sys.path.insert(0, os.path.join(ROOT, "ms_attention", "kernels", "cpu"))
import build  # noqa: E402  (the library's own flags, so the benchmark measures the same code generation)


def main():
    extra = sys.argv[1:] or ["-march=native", "-mtune=native"]
    flags = [f for f in build.BASE_FLAGS if f not in ("-shared", "-fPIC")]
    out = os.path.join(ROOT, "benchmarks", "csrc", "prefill_bench")
    sources = [os.path.join(ROOT, "benchmarks", "csrc", "prefill_bench.cpp"), os.path.join(CSRC, "common.cpp"),
               os.path.join(CSRC, "machine_limits.cpp")]
    cmd = [os.environ.get("CXX", "g++")] + flags + ["-I", CSRC] + extra + sources + ["-o", out]
    subprocess.run(cmd, check=True)
    print(out)


if __name__ == "__main__":
    main()
