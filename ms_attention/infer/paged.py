"""Paged KV caches (block_table + block_size), shared by every operator that reads one: the cache and table
shapes at compile time, and the table entries a batch reads (on the host in PyNative; the kernel repeats it)."""
from typing import Optional

import numpy as np

from ms_attention.infer.common import INT32_MAX, UNKNOWN, Checker, TensorMeta, known, product, same


def cache_geometry(chk: Checker, k: TensorMeta, layout: str, kvn: int, d: int) -> int:
    """A paged cache is (num_blocks, block_size, kvN*D) or, with input_layout BNSD, (num_blocks, kvN,
    block_size, D). Returns the block axis size (-1 if unknown)."""
    if not k.rank_known:
        return UNKNOWN
    if k.ndim == 3:
        _, bs, h = k.shape
        if not same(h, product(kvn, d)):
            raise chk.runtime_error(f"the paged 'key' (num_blocks, block_size, kvH) needs kvH = "
                                    f"num_key_value_heads * D = {product(kvn, d)}, but got shape {k.shape}.")
        return bs
    if k.ndim == 4:
        if layout != "BNSD":
            raise chk.value_error(f"the paged cache layout (num_blocks, kvN, block_size, D) needs input_layout "
                                  f"BNSD, but got {layout}.")
        _, hn, bs, hd = k.shape
        if not (same(hn, kvn) and same(hd, d)):
            raise chk.runtime_error(f"the paged 'key' (num_blocks, kvN, block_size, D) needs kvN={kvn}, D={d}, "
                                    f"but got shape {k.shape}.")
        return bs
    raise chk.value_error(f"the paged 'key' must be 3-D or 4-D, but got shape {k.shape}.")


def check_table_shape(chk: Checker, block_table: TensorMeta, b: int, max_blocks_per_seq: int) -> int:
    """The block table is (B, max_blocks_per_seq) with max_blocks_per_seq in [1, max_blocks_per_seq]; returns its
    blocks per sequence (-1 if unknown)."""
    if not block_table.rank_known:
        return UNKNOWN
    if block_table.ndim != 2 or not same(block_table.shape[0], b):
        raise chk.runtime_error(f"the 'block_table' must have shape (B={b}, max_blocks_per_seq), but got "
                                f"{block_table.shape}.")
    blocks = block_table.shape[1]
    if known(blocks) and not 0 < blocks <= max_blocks_per_seq:
        raise chk.value_error(f"the max_blocks_per_seq of 'block_table' must be in [1, {max_blocks_per_seq}], but "
                              f"got {blocks}.")
    return blocks


def check_meta(chk: Checker, block_table: TensorMeta, k: TensorMeta, b: int, block_size: int, cache_block: int,
               lengths: Optional[TensorMeta], lengths_name: str, max_blocks_per_seq: int) -> int:
    """Checks a paged call's shapes; returns the longest sequence the table can hold (-1 if unknown)."""
    blocks = check_table_shape(chk, block_table, b, max_blocks_per_seq)
    if lengths is None:
        raise chk.value_error(f"the '{lengths_name}' is required with page attention ('block_table' given), but "
                              f"got None.")
    align = 32 if k.dtype == "int8" else 16
    if block_size <= 0 or block_size % align != 0:
        raise chk.value_error(f"the 'block_size' must be a positive multiple of {align} for {k.dtype} key/value "
                              f"with page attention, but got {block_size}.")
    if not same(cache_block, block_size):
        raise chk.runtime_error(f"the block axis of the paged 'key' must equal 'block_size' ({block_size}), but "
                                f"got key shape {k.shape}.")
    if known(k.numel) and k.numel > INT32_MAX:
        raise chk.value_error(f"the number of elements of the paged 'key' must not exceed {INT32_MAX}, but got "
                              f"{k.numel}.")
    return product(blocks, block_size)


def check_table_values(chk: Checker, table: np.ndarray, lengths: np.ndarray, block_size: int,
                       num_blocks: int) -> None:
    """Every block a batch reads (the first ceil(len / block_size) entries) lies in [0, num_blocks)."""
    for batch, length in enumerate(lengths):
        used = -(-int(length) // block_size)
        row = table[batch, :used]
        bad = row[(row < 0) | (row >= num_blocks)]
        if bad.size:
            slot = int(np.nonzero((row < 0) | (row >= num_blocks))[0][0])
            raise chk.value_error(f"the 'block_table' entry {int(bad[0])} of batch {batch} (slot {slot}) is out "
                                  f"of range [0, {num_blocks}) (num_blocks of the paged key/value).")


def check_covers_longest(chk: Checker, name: str, m: Optional[TensorMeta], longest: int) -> None:
    """An input indexed by the logical token position (mask, pse, per-token scales) must reach the longest
    sequence a paged batch reads: its last axis at least that long."""
    if m is not None and m.rank_known and known(m.shape[-1]) and longest > m.shape[-1]:
        raise chk.runtime_error(f"the last axis of '{name}' ({m.shape[-1]}) must cover the longest sequence "
                                f"({longest}) with page attention.")


MAX_BLOCK_SIZE = 2 ** 31 - 1


def block_size_attr(chk, value) -> int:
    """The block_size attribute: an int in [0, 2**31 - 1] (0 without page attention)."""
    block_size = chk.int_attr("block_size", value)
    if not 0 <= block_size <= MAX_BLOCK_SIZE:
        raise chk.value_error(f"the 'block_size' must be in [0, {MAX_BLOCK_SIZE}], but got {block_size}.")
    return block_size
