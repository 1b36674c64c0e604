"""This machine's limits as the kernel library measures them, for benchmarks that report a fraction of them."""
from ms_attention.kernels.cpu import loader


def fp32_fma_gflops(seconds=0.2, repeats=3):
    """Float32 GFLOP/s of the kernel library's FMA loop on all its threads (the best of `repeats` runs of about
    `seconds`), with the widest vectors the loaded library variant uses; None without the library."""
    import ctypes
    lib = loader.library()
    if lib is None or not hasattr(lib.handle, "msa_fp32_fma_gflops"):
        return None
    fn = lib.handle.msa_fp32_fma_gflops
    fn.restype = ctypes.c_double
    fn.argtypes = [ctypes.c_double]
    return max(fn(seconds) for _ in range(repeats))

