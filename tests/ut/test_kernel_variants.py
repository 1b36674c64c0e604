"""The numeric tests of incre_flash_attention against each other build of the kernel library (AVX2, portable),
which the loader picks on CPUs without the native build's instruction set: their SIMD and scalar paths must
give the same results as the native one. Each runs a subset of test_ifa_numerics.py in a subprocess with
MS_ATTENTION_KERNEL set to the variant."""
import json
import os
import subprocess
import sys

import pytest

from ms_attention.kernels.cpu import loader

HERE = os.path.dirname(os.path.abspath(__file__))
SUBSET = "layouts_and_dtypes or gqa_groups or large_group or odd_sizes or antiquant_int8_kv"


def _built(variant):
    if not os.path.exists(loader.BUILD_INFO):
        return False
    with open(loader.BUILD_INFO, encoding="utf-8") as f:
        entry = json.load(f).get(variant)
    return entry is not None and set(entry.get("isa", ())) <= loader.cpu_flags()


@pytest.mark.parametrize("variant", ["avx2", "portable"])
def test_ifa_numerics_on_variant(variant):
    if not _built(variant):
        pytest.skip(f"the {variant} library is not built, or this CPU cannot run it")
    env = dict(os.environ, MS_ATTENTION_KERNEL=variant)
    loaded = subprocess.run([sys.executable, "-c", "from ms_attention.kernels.cpu import loader; "
                             "print(loader.library().variant)"], env=env, capture_output=True, text=True, check=True)
    assert loaded.stdout.split()[-1] == variant
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             os.path.join(HERE, "test_ifa_numerics.py"), "-k", SUBSET],
                            cwd=os.path.dirname(HERE), env=env, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout
