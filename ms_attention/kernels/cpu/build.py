"""Compiles the C++ kernels into plain shared libraries with a C ABI (used by setup.py; runnable by hand).

Three variants: `native` (-march=native, for the machine it is installed on), `avx2` (AVX2 + FMA + F16C, for
a copy that lands on another x86-64 CPU of the last decade) and `portable` (baseline x86-64, scalar loops).
build_info.json records, for each, the instruction-set extensions it needs; loader.py picks the best one the
running CPU supports. This file imports nothing from ms_attention, so setup.py can load it on its own.

    python ms_attention/kernels/cpu/build.py            # build into the source tree (development)
    MS_ATTENTION_VARIANTS=native python ms_attention/kernels/cpu/build.py   # only some variants (iterating)
"""
import ctypes
import glob
import json
import os
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join(HERE, "csrc")
SOURCES = sorted(glob.glob(os.path.join(CSRC, "*.cpp")))  # one per operator, plus common.cpp; the core is headers
# MindSpore 2.10 is built with the old libstdc++ ABI: the std::vector an InferShape entry point returns and the
# exceptions a kernel throws cross into it, so the library must use the same ABI.
BASE_FLAGS = ["-std=c++17", "-O3", "-fopenmp-simd", "-pthread", "-fPIC", "-shared", "-fno-math-errno", "-Wall",
              "-Wno-maybe-uninitialized", "-D_GLIBCXX_USE_CXX11_ABI=0"]
VARIANTS = {"native": ["-march=native", "-mtune=native"], "avx2": ["-mavx2", "-mfma", "-mf16c"], "portable": []}


def _start_compile(cxx, out_path, extra):
    cmd = [cxx] + BASE_FLAGS + ["-I", CSRC] + extra + SOURCES + ["-o", out_path]
    return cmd, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finished(cmd, process):
    _, stderr = process.communicate()
    if process.returncode != 0:
        sys.stderr.write(f"ms_attention: kernel build failed: {' '.join(cmd)}\n{stderr}\n")
        return False
    return True


def _isa(path):
    lib = ctypes.CDLL(path)
    lib.msa_isa.restype = ctypes.c_char_p
    return lib.msa_isa().decode().split()


def build(out_dir):
    """Build every variant that compiles into out_dir; returns the build_info dict (empty: nothing built)."""
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        sys.stderr.write("ms_attention: no C++ compiler found; without the kernel library the operators "
                         "cannot run on CPU (a call raises a RuntimeError saying so).\n")
        return {}
    os.makedirs(out_dir, exist_ok=True)
    info = {"compiler": cxx}
    # the variants compile side by side (each is one compiler process): install time is the slowest, not the sum
    jobs = {}
    wanted = os.environ.get("MS_ATTENTION_VARIANTS")
    variants = {v: f for v, f in VARIANTS.items() if not wanted or v in wanted.split(",")}
    for variant, flags in variants.items():
        file_name = f"libms_attention_cpu_{variant}.so"
        jobs[variant] = (file_name, flags, _start_compile(cxx, os.path.join(out_dir, file_name), flags))
    for variant, (file_name, flags, (cmd, process)) in jobs.items():
        if _finished(cmd, process):
            path = os.path.join(out_dir, file_name)
            info[variant] = {"file": file_name, "flags": BASE_FLAGS + flags, "isa": _isa(path)}
    if "native" not in info and "portable" not in info:
        return {}
    with open(os.path.join(out_dir, "build_info.json"), "w", encoding="utf-8") as f:
        json.dump(info, f, indent=2)
    return info


if __name__ == "__main__":
    built = build(HERE)
    print(json.dumps(built, indent=2))
    sys.exit(0 if built else 1)
