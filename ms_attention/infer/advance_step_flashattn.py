"""advance_step_flashattn: attribute checks, input validation and output inference.

Shapes: input_tokens, input_positions, seq_lens, slot_mapping (num_seqs,); sampled_token_ids (num_queries, 1);
block_tables (num_seqs, max_blocks_per_seq); every tensor int32 or int64 (each independently). The four state
tensors are updated in place; block_tables and sampled_token_ids are only read. The values (a seq_lens entry whose
block lies past the table, a negative table entry, a value that does not fit the destination dtype) are checked
by the kernel, which fails with a RuntimeError in every mode; in PyNative they are checked on the host first, with
the same RuntimeError: the functional returns nothing, so an error of the asynchronously launched kernel would
otherwise surface only at the next read of the state.

The operator returns nothing; the kernel has one placeholder output (an AOT Custom op needs at least one), which
the generated code drops.
"""
from typing import Any, Dict, Optional, Tuple

import numpy as np

from ms_attention import opdef
from ms_attention.infer.common import Checker, TensorMeta, same

_OP = opdef.get("advance_step_flashattn")
PRIM_NAME = _OP.class_name
INT_TYPES = ("int32", "int64")
STATE = ("input_tokens", "input_positions", "seq_lens", "slot_mapping")
VALUE_INPUTS = ("sampled_token_ids", "seq_lens", "block_tables")
INT32_RANGE = (-2 ** 31, 2 ** 31 - 1)
INT64_MAX = 2 ** 63 - 1

_chk = Checker(PRIM_NAME)


def check_attrs(num_seqs: Any, num_queries: Any, block_size: Any) -> Dict[str, Any]:
    num_seqs = _chk.int_attr("num_seqs", num_seqs)
    num_queries = _chk.int_attr("num_queries", num_queries)
    block_size = _chk.int_attr("block_size", block_size)
    if num_seqs <= 0:
        raise _chk.value_error(f"the 'num_seqs' must be greater than 0, but got {num_seqs}.")
    if not 0 <= num_queries <= num_seqs:
        raise _chk.value_error(f"the 'num_queries' must be in [0, num_seqs] ([0, {num_seqs}]), but got "
                               f"{num_queries}.")
    if block_size <= 0:
        raise _chk.value_error(f"the 'block_size' must be greater than 0, but got {block_size}.")
    return dict(num_seqs=num_seqs, num_queries=num_queries, block_size=block_size)


def output_dtypes(attrs: Dict[str, Any], dtypes: Dict[str, Optional[str]]) -> Tuple[str]:
    """The placeholder output (dropped by the generated code)."""
    return ("int32",)


def _shape(name: str, t: TensorMeta, want: Tuple[Optional[int], ...], axes: str) -> None:
    if not t.rank_known:
        return
    if t.ndim != len(want) or not all(w is None or same(s, w) for s, w in zip(t.shape, want)):
        raise _chk.value_error(f"the shape of '{name}' must be {axes}, but got {t.shape}.")


def infer(m: Dict[str, Optional[TensorMeta]], attrs: Dict[str, Any],
          static: Dict[str, Optional[Tuple[Any, ...]]]) -> None:
    for name in STATE + ("sampled_token_ids", "block_tables"):
        if m.get(name) is None:
            raise _chk.type_error(f"the '{name}' must be a Tensor, but got None or a non-Tensor value.")
        _chk.dtype_in(name, m[name], INT_TYPES)
    num_seqs, num_queries = attrs["num_seqs"], attrs["num_queries"]
    for name in STATE:
        _shape(name, m[name], (num_seqs,), f"(num_seqs,) = ({num_seqs},)")
    _shape("sampled_token_ids", m["sampled_token_ids"], (num_queries, 1),
           f"(num_queries, 1) = ({num_queries}, 1)")
    _shape("block_tables", m["block_tables"], (num_seqs, None), f"(num_seqs, max_blocks_per_seq) = ({num_seqs}, M)")
    table = m["block_tables"]
    if table.rank_known and table.shape[1] == 0:
        raise _chk.value_error(f"the 'block_tables' must have at least one block per sequence, but got shape "
                               f"{table.shape}.")


def check_values(values: Dict[str, Optional[np.ndarray]], m: Dict[str, Optional[TensorMeta]],
                 attrs: Dict[str, Any]) -> None:
    """The kernel's value checks on the host (PyNative), as RuntimeErrors like the kernel's."""
    num_queries, block_size = attrs["num_queries"], attrs["block_size"]
    lens, tables = values["seq_lens"], values["block_tables"]
    max_blocks = tables.shape[1]
    for q in range(num_queries):
        pos = int(lens[q])
        if pos < 0 or pos // block_size >= max_blocks:
            raise _chk.runtime_error(f"the 'seq_lens' value {pos} of sequence {q} is out of range [0, "
                                     f"{max_blocks * block_size}) (max_blocks_per_seq {max_blocks} * block_size "
                                     f"{block_size}).")
        block = int(tables[q, pos // block_size])
        if block < 0 or block > INT64_MAX // block_size - 1:  # the kernel's bound: the slot must fit int64
            raise _chk.runtime_error(f"the 'block_tables' entry {block} of sequence {q} (block {pos // block_size}) "
                                     f"is out of range.")
        written = {"input_tokens": int(values["sampled_token_ids"][q, 0]), "input_positions": pos,
                   "seq_lens": pos + 1, "slot_mapping": block * block_size + pos % block_size}
        for name, value in written.items():
            if m[name].dtype == "int32" and not INT32_RANGE[0] <= value <= INT32_RANGE[1]:
                raise _chk.runtime_error(f"the value {value} written to '{name}' for sequence {q} does not fit its "
                                         f"dtype int32.")
