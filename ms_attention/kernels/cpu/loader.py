"""Finds the compiled CPU kernel library and checks that this CPU can run it.

setup.py builds three copies: one for the build machine (-march=native), one for AVX2 CPUs and a portable one.
build_info.json, written beside them, records the instruction-set extensions each was compiled for; a copy is
used only when /proc/cpuinfo has all of them (tried in that order), so a wheel copied to an older CPU falls back
instead of crashing. MS_ATTENTION_KERNEL=native|avx2|portable|reference forces a choice (reference: no native
library at all).
"""
import ctypes
import dataclasses
import functools
import json
import os
from typing import Optional, Set, Tuple

from ms_attention import opdef

HERE = os.path.dirname(os.path.abspath(__file__))
BUILD_INFO = os.path.join(HERE, "build_info.json")


@dataclasses.dataclass(frozen=True)
class Library:
    path: str
    variant: str                  # 'native', 'avx2' or 'portable'
    isa: Tuple[str, ...]
    kernels: Tuple[str, ...]      # the operators whose kernel and InferShape the library exports
    handle: ctypes.CDLL


def cpu_flags() -> Set[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _open(path: str, variant: str, isa: Tuple[str, ...]) -> Library:
    handle = ctypes.CDLL(path)
    kernels = tuple(op.name for op in opdef.load_every().values()
                    if hasattr(handle, op.class_name) and hasattr(handle, op.class_name + "InferShape"))
    return Library(path, variant, isa, kernels, handle)


@functools.lru_cache(maxsize=None)
def library() -> Optional[Library]:
    """The library this process uses, or None (then a call raises a RuntimeError listing why no kernel serves it)."""
    forced = os.environ.get("MS_ATTENTION_KERNEL", "").lower()
    if forced == "reference" or not os.path.exists(BUILD_INFO):
        return None
    with open(BUILD_INFO, encoding="utf-8") as f:
        info = json.load(f)
    flags = cpu_flags()
    for variant in ("native", "avx2", "portable"):
        entry = info.get(variant)
        if entry is None or (forced and forced != variant):
            continue
        path = os.path.join(HERE, entry["file"])
        isa = tuple(entry.get("isa", ()))
        if os.path.exists(path) and set(isa) <= flags:
            return _open(path, variant, isa)
    return None


def why_unavailable() -> str:
    if os.environ.get("MS_ATTENTION_KERNEL", "").lower() == "reference":
        return "MS_ATTENTION_KERNEL=reference"
    if not os.path.exists(BUILD_INFO):
        return f"the compiled library is missing ({BUILD_INFO} not found; reinstall with `pip install .`)"
    return "no compiled variant matches this CPU's instruction set"
