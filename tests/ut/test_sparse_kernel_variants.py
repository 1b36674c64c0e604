"""sparse_flash_attention's numeric tests against each other build of the kernel library (AVX2, portable), which
the loader picks on CPUs without the native build's instruction set: their SIMD and scalar paths (a 16-key tile
with AVX2, scalar loops in the portable build) must give the reference's results too. Each runs the PyNative cases
of test_sparse_flash_attention.py in a subprocess with MS_ATTENTION_KERNEL set to the variant."""
import os
import subprocess
import sys

import pytest

from test_kernel_variants import _built

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.mark.parametrize("variant", ["avx2", "portable"])
def test_sparse_numerics_on_variant(variant):
    if not _built(variant):
        pytest.skip(f"the {variant} library is not built, or this CPU cannot run it")
    env = dict(os.environ, MS_ATTENTION_KERNEL=variant)
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             os.path.join(HERE, "test_sparse_flash_attention.py"), "-k",
                             "pynative and (matches_reference or every_key or empty_selection)"],
                            cwd=os.path.dirname(HERE), env=env, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout
