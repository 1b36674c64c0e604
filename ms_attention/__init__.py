"""ms_attention: MindSpore's flash-attention operator family, on CPU and Ascend.

    from ms_attention import ops
    out = ops.incre_flash_attention(query, [key], [value], num_heads=8, input_layout="BNSD")

Importing the package changes nothing in MindSpore; `ms_attention.install()` points `mindspore.ops.<name>` at
these functions on devices without a native kernel, so unchanged model code runs.
"""
from ms_attention import ops
from ms_attention.install import install, uninstall

__version__ = "0.1.0"
__all__ = ["ops", "install", "uninstall", "__version__"]
