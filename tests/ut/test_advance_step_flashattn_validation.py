"""The errors of advance_step_flashattn (SPEC.md §10: a dtype problem is a TypeError, a bad value or shape a
ValueError; values only a run shows are the kernel's RuntimeError) in PyNative, Graph and jit. In PyNative the
values are checked on the host before the launch, with the kernel's RuntimeError and message."""
import numpy as np
import pytest
import mindspore as ms
from mindspore import Tensor, nn

from ms_attention import ops

NUM_SEQS, NUM_QUERIES, BLOCK_SIZE, MAX_BLOCKS = 4, 3, 16, 2
INPUTS = ("input_tokens", "sampled_token_ids", "input_positions", "seq_lens", "slot_mapping", "block_tables")


def base():
    return dict(input_tokens=np.zeros(NUM_SEQS, np.int64),
                sampled_token_ids=np.arange(NUM_QUERIES, dtype=np.int64).reshape(NUM_QUERIES, 1),
                input_positions=np.zeros(NUM_SEQS, np.int64), seq_lens=np.array([1, 5, 17, 0], np.int64),
                slot_mapping=np.zeros(NUM_SEQS, np.int64),
                block_tables=np.arange(NUM_SEQS * MAX_BLOCKS, dtype=np.int32).reshape(NUM_SEQS, MAX_BLOCKS),
                num_seqs=NUM_SEQS, num_queries=NUM_QUERIES, block_size=BLOCK_SIZE)


class _Net(nn.Cell):
    def __init__(self, constants):
        super().__init__()
        self.constants = constants

    def construct(self, input_tokens, sampled_token_ids, input_positions, seq_lens, slot_mapping, block_tables):
        ops.advance_step_flashattn(input_tokens, sampled_token_ids, input_positions, seq_lens, slot_mapping,
                                   block_tables, **self.constants)
        return seq_lens + 0


def run(mode, kwargs):
    tensors = [Tensor(kwargs[n]) if isinstance(kwargs[n], np.ndarray) else kwargs[n] for n in INPUTS]
    constants = {n: kwargs[n] for n in ("num_seqs", "num_queries", "block_size")}
    if mode == "pynative":
        ms.set_context(mode=ms.PYNATIVE_MODE)
        ops.advance_step_flashattn(*tensors, **constants)
        return tensors[3].asnumpy()
    net = _Net(constants)
    if mode == "graph":
        ms.set_context(mode=ms.GRAPH_MODE)
        return net(*tensors).asnumpy()
    ms.set_context(mode=ms.PYNATIVE_MODE)
    return ms.jit(net.construct)(*tensors).asnumpy()


CASES = [
    ("float_tokens", lambda k: k.update(input_tokens=np.zeros(NUM_SEQS, np.float32)), TypeError,
     ["input_tokens", "float32"]),
    ("int16_table", lambda k: k.update(block_tables=k["block_tables"].astype(np.int16)), TypeError,
     ["block_tables", "int16"]),
    ("uint8_sampled", lambda k: k.update(sampled_token_ids=k["sampled_token_ids"].astype(np.uint8)), TypeError,
     ["sampled_token_ids", "uint8"]),
    ("num_seqs_type", lambda k: k.update(num_seqs=4.0), TypeError, ["num_seqs", "4.0"]),
    ("block_size_type", lambda k: k.update(block_size="16"), TypeError, ["block_size", "'16'"]),
    ("tokens_not_tensor", lambda k: k.update(input_tokens=None), TypeError, ["input_tokens"]),
    ("num_queries_above_num_seqs", lambda k: k.update(num_queries=5), ValueError, ["num_queries", "5"]),
    ("num_queries_negative", lambda k: k.update(num_queries=-1), ValueError, ["num_queries", "-1"]),
    ("num_seqs_zero", lambda k: k.update(num_seqs=0), ValueError, ["num_seqs", "0"]),
    ("block_size_zero", lambda k: k.update(block_size=0), ValueError, ["block_size", "0"]),
    ("tokens_shape", lambda k: k.update(input_tokens=np.zeros(5, np.int64)), ValueError, ["input_tokens", "(5,)"]),
    ("seq_lens_rank", lambda k: k.update(seq_lens=np.zeros((NUM_SEQS, 1), np.int64)), ValueError,
     ["seq_lens", "(4, 1)"]),
    ("sampled_shape", lambda k: k.update(sampled_token_ids=np.zeros((NUM_QUERIES, 2), np.int64)), ValueError,
     ["sampled_token_ids", "(3, 2)"]),
    ("sampled_rows", lambda k: k.update(sampled_token_ids=np.zeros((NUM_SEQS, 1), np.int64)), ValueError,
     ["sampled_token_ids", "(4, 1)"]),
    ("table_rows", lambda k: k.update(block_tables=np.zeros((3, MAX_BLOCKS), np.int32)), ValueError,
     ["block_tables", "(3, 2)"]),
    ("table_empty", lambda k: k.update(block_tables=np.zeros((NUM_SEQS, 0), np.int32)), ValueError,
     ["block_tables", "(4, 0)"]),
    # values: the kernel's RuntimeError (host-checked first in PyNative)
    ("seq_len_past_table", lambda k: k["seq_lens"].__setitem__(1, 32), RuntimeError, ["seq_lens", "32", "[0, 32)"]),
    ("seq_len_negative", lambda k: k["seq_lens"].__setitem__(0, -3), RuntimeError, ["seq_lens", "-3"]),
    ("table_entry_negative", lambda k: k["block_tables"].__setitem__((2, 1), -1), RuntimeError,
     ["block_tables", "-1"]),
    ("slot_overflows_int64", lambda k: k.update(block_tables=np.full((NUM_SEQS, MAX_BLOCKS), 2 ** 62, np.int64)),
     RuntimeError, ["block_tables", str(2 ** 62)]),
    ("slot_overflows_int32", lambda k: (k.update(slot_mapping=np.zeros(NUM_SEQS, np.int32)),
                                        k["block_tables"].__setitem__((0, 0), 2 ** 30)), RuntimeError,
     ["slot_mapping", "int32"]),
    ("token_overflows_int32", lambda k: (k.update(input_tokens=np.zeros(NUM_SEQS, np.int32)),
                                         k["sampled_token_ids"].__setitem__((1, 0), 2 ** 40)), RuntimeError,
     ["input_tokens", "int32"]),
]


@pytest.mark.parametrize("name,breaker,error,fragments", CASES, ids=[c[0] for c in CASES])
def test_errors(mode, name, breaker, error, fragments):
    kwargs = base()
    breaker(kwargs)
    with pytest.raises(error) as info:
        run(mode, kwargs)
    message = str(info.value)
    assert "AdvanceStepFlashattn" in message, message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in: {message}"


def test_base_call_is_valid(mode):
    assert run(mode, base()).tolist() == [2, 6, 18, 0]


def test_unused_table_entries_and_padded_rows_are_not_read(mode):
    """Padded rows (q >= num_queries) and table entries past a sequence's current block are never read."""
    kwargs = base()
    kwargs["seq_lens"][3] = 10 ** 6
    kwargs["block_tables"][0, 1] = -1
    assert run(mode, kwargs).tolist() == [2, 6, 18, 10 ** 6]


@pytest.mark.parametrize("name,change", [
    ("tokens_length", dict(input_tokens=np.zeros(NUM_SEQS + 1, np.int64))),
    ("sampled_rows", dict(sampled_token_ids=np.zeros((NUM_QUERIES + 1, 1), np.int64))),
    ("table_rows", dict(block_tables=np.zeros((NUM_SEQS - 1, MAX_BLOCKS), np.int32))),
])
def test_kernel_rejects_shapes_unknown_at_compile_time(name, change):
    """With dynamic shapes nothing is wrong at compile time: the kernel checks the real shapes."""
    ms.set_context(mode=ms.GRAPH_MODE)
    try:
        kwargs = dict(base(), **change)
        net = _Net({n: kwargs[n] for n in ("num_seqs", "num_queries", "block_size")})
        tensors = [Tensor(kwargs[n]) for n in INPUTS]
        net.set_inputs(*(Tensor(shape=[None] * x.ndim, dtype=x.dtype) for x in tensors))
        with pytest.raises(RuntimeError, match="AdvanceStepFlashattn.*shape"):
            net(*tensors).asnumpy()
    finally:
        ms.set_context(mode=ms.PYNATIVE_MODE)
