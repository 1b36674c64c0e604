"""advance_step_flashattn updates its four state tensors in place (SPEC.md §8) and never writes block_tables or
sampled_token_ids: in PyNative on plain Tensors, and in Graph / jit on Parameters held by a Cell, where the call's
result is unused and only the in-place update matters. The serving-loop test runs vLLM's decode step in one graph:
advance_step_flashattn, the new token's K/V written at its slot, incre_flash_attention over the paged cache."""
import numpy as np
import pytest
import mindspore as ms
from mindspore import Parameter, Tensor, nn
from mindspore import ops as ms_ops

from ifa_cases import assert_close, round_to, to_numpy
from ms_attention import ops, primitives
from ms_attention.kernels.reference.advance_step_flashattn import advance_step_flashattn as reference
from ms_attention.kernels.reference.incre_flash_attention import incre_flash_attention as ifa_reference

STATE = ("input_tokens", "input_positions", "seq_lens", "slot_mapping")


def make_state(num_seqs, num_queries, block_size, max_blocks, dtypes, seed=0):
    """Random state with every seq_lens entry inside its block table (numpy arrays)."""
    rng = np.random.default_rng(seed)
    tables = rng.permutation(num_seqs * max_blocks).reshape(num_seqs, max_blocks).astype(dtypes["block_tables"])
    return dict(
        input_tokens=rng.integers(0, 1000, num_seqs).astype(dtypes["input_tokens"]),
        sampled_token_ids=rng.integers(0, 1000, (num_queries, 1)).astype(dtypes["sampled_token_ids"]),
        input_positions=rng.integers(0, 100, num_seqs).astype(dtypes["input_positions"]),
        seq_lens=rng.integers(0, max_blocks * block_size - 4, num_seqs).astype(dtypes["seq_lens"]),
        slot_mapping=rng.integers(0, 100, num_seqs).astype(dtypes["slot_mapping"]),
        block_tables=tables)


INT64 = dict(input_tokens=np.int64, sampled_token_ids=np.int64, input_positions=np.int64, seq_lens=np.int64,
             slot_mapping=np.int64, block_tables=np.int64)
SERVING = dict(INT64, block_tables=np.int32)     # vLLM's dtypes: int64 state, int32 block tables
MIXED = dict(input_tokens=np.int32, sampled_token_ids=np.int64, input_positions=np.int64, seq_lens=np.int32,
             slot_mapping=np.int32, block_tables=np.int32)


class StepNet(nn.Cell):
    """The state as Parameters; construct advances it and returns nothing computed from the op."""

    def __init__(self, state, num_seqs, num_queries, block_size):
        super().__init__()
        for name in STATE:
            setattr(self, name, Parameter(Tensor(state[name]), name=name))
        self.num_seqs, self.num_queries, self.block_size = num_seqs, num_queries, block_size

    def construct(self, sampled_token_ids, block_tables):
        ops.advance_step_flashattn(self.input_tokens, sampled_token_ids, self.input_positions, self.seq_lens,
                                   self.slot_mapping, block_tables, self.num_seqs, self.num_queries, self.block_size)
        return self.seq_lens + 0


def _step(mode, net, sampled, tables):
    if mode == "graph":
        ms.set_context(mode=ms.GRAPH_MODE)
        return net(sampled, tables)
    ms.set_context(mode=ms.PYNATIVE_MODE)
    return ms.jit(net.construct)(sampled, tables)


@pytest.mark.parametrize("dtypes", [INT64, MIXED], ids=["int64", "mixed"])
@pytest.mark.parametrize("num_queries", [5, 8])
def test_updates_state_in_place(mode, dtypes, num_queries):
    num_seqs, block_size, max_blocks = 8, 16, 4
    state = make_state(num_seqs, num_queries, block_size, max_blocks, dtypes)
    want = dict(zip(STATE, reference(**state, num_seqs=num_seqs, num_queries=num_queries, block_size=block_size)))
    sampled, tables = Tensor(state["sampled_token_ids"]), Tensor(state["block_tables"])
    if mode == "pynative":
        ms.set_context(mode=ms.PYNATIVE_MODE)
        tensors = {name: Tensor(state[name]) for name in STATE}
        result = ops.advance_step_flashattn(tensors["input_tokens"], sampled, tensors["input_positions"],
                                            tensors["seq_lens"], tensors["slot_mapping"], tables, num_seqs,
                                            num_queries, block_size)
        assert result is None
    else:
        net = StepNet(state, num_seqs, num_queries, block_size)
        _step(mode, net, sampled, tables)
        tensors = {name: getattr(net, name) for name in STATE}
    for name in STATE:
        got = tensors[name].asnumpy()
        assert got.dtype == state[name].dtype, name
        np.testing.assert_array_equal(got, want[name], err_msg=name)
    np.testing.assert_array_equal(sampled.asnumpy(), state["sampled_token_ids"])
    np.testing.assert_array_equal(tables.asnumpy(), state["block_tables"])


class PrimitiveStepNet(StepNet):
    """StepNet through the primitive form, AdvanceStepFlashattn(num_seqs, num_queries, block_size)."""

    def __init__(self, state, num_seqs, num_queries, block_size):
        super().__init__(state, num_seqs, num_queries, block_size)
        self.step = primitives.AdvanceStepFlashattn(num_seqs, num_queries, block_size)

    def construct(self, sampled_token_ids, block_tables):
        self.step(self.input_tokens, sampled_token_ids, self.input_positions, self.seq_lens, self.slot_mapping,
                  block_tables)
        return self.seq_lens + 0


def test_primitive_form_updates_state_in_place(mode):
    num_seqs, num_queries, block_size, max_blocks = 6, 4, 16, 3
    state = make_state(num_seqs, num_queries, block_size, max_blocks, SERVING, seed=3)
    want = dict(zip(STATE, reference(**state, num_seqs=num_seqs, num_queries=num_queries, block_size=block_size)))
    sampled, tables = Tensor(state["sampled_token_ids"]), Tensor(state["block_tables"])
    if mode == "pynative":
        ms.set_context(mode=ms.PYNATIVE_MODE)
        tensors = {name: Tensor(state[name]) for name in STATE}
        step = primitives.AdvanceStepFlashattn(num_seqs, num_queries, block_size)
        assert step(tensors["input_tokens"], sampled, tensors["input_positions"], tensors["seq_lens"],
                    tensors["slot_mapping"], tables) is None
    else:
        net = PrimitiveStepNet(state, num_seqs, num_queries, block_size)
        _step(mode, net, sampled, tables)
        tensors = {name: getattr(net, name) for name in STATE}
    for name in STATE:
        np.testing.assert_array_equal(tensors[name].asnumpy(), want[name], err_msg=name)
    np.testing.assert_array_equal(tables.asnumpy(), state["block_tables"])


def test_several_steps_in_one_graph():
    num_seqs, num_queries, block_size, max_blocks = 4, 3, 16, 3
    state = make_state(num_seqs, num_queries, block_size, max_blocks, INT64, seed=1)
    state["seq_lens"] = np.array([0, 15, 31, 7], np.int64)
    net = StepNet(state, num_seqs, num_queries, block_size)
    tables = Tensor(state["block_tables"])
    for step in range(4):
        sampled = np.full((num_queries, 1), 100 + step, np.int64)
        state["sampled_token_ids"] = sampled
        state.update(zip(STATE, reference(**state, num_seqs=num_seqs, num_queries=num_queries,
                                          block_size=block_size)))
        returned = _step("graph", net, Tensor(sampled), tables)
        np.testing.assert_array_equal(returned.asnumpy(), state["seq_lens"])
        for name in STATE:
            np.testing.assert_array_equal(getattr(net, name).asnumpy(), state[name], err_msg=f"{name}, step {step}")
    ms.set_context(mode=ms.PYNATIVE_MODE)


def test_rejected_call_leaves_the_state_as_it_was():
    state = make_state(4, 4, 16, 2, INT64)
    state["seq_lens"] = np.array([3, 4, 40, 5], np.int64)        # 40 lies past the 2 blocks of 16
    tensors = {name: Tensor(state[name]) for name in state}
    ms.set_context(mode=ms.PYNATIVE_MODE)
    with pytest.raises(RuntimeError, match="seq_lens.*40"):
        ops.advance_step_flashattn(tensors["input_tokens"], tensors["sampled_token_ids"], tensors["input_positions"],
                                   tensors["seq_lens"], tensors["slot_mapping"], tensors["block_tables"], 4, 4, 16)
    for name in state:
        np.testing.assert_array_equal(tensors[name].asnumpy(), state[name])


class DecodeStep(nn.Cell):
    """One vLLM decode step: advance the state, write the new token's K/V at its slot of the paged cache (a flat
    (num_blocks * block_size, H) Parameter), attend over the cache with incre_flash_attention."""

    def __init__(self, state, cache_shape, num_heads, block_size):
        super().__init__()
        for name in STATE:
            setattr(self, name, Parameter(Tensor(state[name]), name=name))
        self.key_cache = Parameter(Tensor(np.zeros(cache_shape, np.float16)), name="key_cache")
        self.value_cache = Parameter(Tensor(np.zeros(cache_shape, np.float16)), name="value_cache")
        self.num_seqs = state["input_tokens"].shape[0]
        self.num_heads, self.block_size = num_heads, block_size
        self.blocks = cache_shape[0] // block_size

    def construct(self, sampled_token_ids, block_tables, query, new_key, new_value):
        ops.advance_step_flashattn(self.input_tokens, sampled_token_ids, self.input_positions, self.seq_lens,
                                   self.slot_mapping, block_tables, self.num_seqs, self.num_seqs, self.block_size)
        ms_ops.scatter_update(self.key_cache, self.slot_mapping, new_key)
        ms_ops.scatter_update(self.value_cache, self.slot_mapping, new_value)
        hidden = new_key.shape[-1]
        key = self.key_cache.reshape((self.blocks, self.block_size, hidden))
        value = self.value_cache.reshape((self.blocks, self.block_size, hidden))
        return ops.incre_flash_attention(query, key, value, actual_seq_lengths=self.seq_lens,
                                         block_table=block_tables, num_heads=self.num_heads, input_layout="BSH",
                                         scale_value=0.125, block_size=self.block_size)


@pytest.mark.parametrize("run_mode", ["graph", "pynative"])
def test_serving_loop_with_incre_flash_attention(run_mode):
    """Several decode steps from empty sequences: each step's attention sees exactly the tokens written so far,
    at the slots advance_step_flashattn chose."""
    num_seqs, num_heads, head_dim, block_size, max_blocks, steps = 3, 4, 64, 16, 2, 5
    hidden = num_heads * head_dim
    rng = np.random.default_rng(7)
    state = make_state(num_seqs, num_seqs, block_size, max_blocks, SERVING, seed=2)
    state["seq_lens"] = np.array([0, 14, 9], np.int64)            # seq 1 crosses into its second block
    history = {"key": [[] for _ in range(num_seqs)], "value": [[] for _ in range(num_seqs)]}
    for seq, length in enumerate(state["seq_lens"]):              # tokens already in the cache before the loop
        for name in history:
            history[name][seq] = list(round_to(rng.standard_normal((length, hidden)), "float16"))
    ms.set_context(mode=ms.GRAPH_MODE if run_mode == "graph" else ms.PYNATIVE_MODE)
    net = DecodeStep(state, (num_seqs * max_blocks * block_size, hidden), num_heads, block_size)
    caches = {"key": net.key_cache.asnumpy(), "value": net.value_cache.asnumpy()}
    for seq in range(num_seqs):
        for t in range(state["seq_lens"][seq]):
            slot = state["block_tables"][seq, t // block_size] * block_size + t % block_size
            for name in caches:
                caches[name][slot] = history[name][seq][t]
    net.key_cache.set_data(Tensor(caches["key"]))
    net.value_cache.set_data(Tensor(caches["value"]))
    tables = Tensor(state["block_tables"])
    try:
        for step in range(steps):
            query = round_to(rng.standard_normal((num_seqs, 1, hidden)), "float16")
            new = {name: round_to(rng.standard_normal((num_seqs, hidden)), "float16") for name in history}
            sampled = rng.integers(0, 1000, (num_seqs, 1)).astype(np.int64)
            out = net(Tensor(sampled), tables, Tensor(query, ms.float16), Tensor(new["key"], ms.float16),
                      Tensor(new["value"], ms.float16))
            state["sampled_token_ids"] = sampled
            state.update(zip(STATE, reference(**state, num_seqs=num_seqs, num_queries=num_seqs,
                                              block_size=block_size)))
            for name in history:
                for seq in range(num_seqs):
                    history[name][seq].append(new[name][seq])
            lengths = state["seq_lens"]
            longest = int(lengths.max())
            dense = {name: np.zeros((num_seqs, longest, hidden), np.float32) for name in history}
            for name in history:
                for seq in range(num_seqs):
                    dense[name][seq, :lengths[seq]] = np.stack(history[name][seq])
            want = ifa_reference(query, dense["key"], dense["value"], actual_seq_lengths=list(lengths),
                                 num_heads=num_heads, input_layout="BSH", scale_value=0.125)
            assert_close(to_numpy(out), want, "float16")
            for name in STATE:
                np.testing.assert_array_equal(getattr(net, name).asnumpy(), state[name], err_msg=f"{name} @ {step}")
    finally:
        ms.set_context(mode=ms.PYNATIVE_MODE)
