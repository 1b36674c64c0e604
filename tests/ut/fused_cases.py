"""Shared helpers of the prompt_flash_attention (PFA), fused_infer_attention_score (FIA) and
fused_infer_attention_score_v2 (v2) tests.

- Validation tests: t(), lengths(), run(mode, fn, kwargs) and first() call a functional from raw keyword
  arguments in PyNative, Graph (an nn.Cell holding the constants, Tensors as graph inputs) or jit.
- Numeric tests: Case builds inputs (numpy and MindSpore), run_op() calls the public functional in a given mode,
  and Case.check compares attention_out (and softmax_lse) with the numpy golden under ifa_cases.assert_close's
  per-dtype tolerances.
  Inputs are drawn once in a canonical (B, heads, S, D) form and then arranged into the case's layout, so the
  same seed gives the same numbers in every layout, paged or not."""
import numpy as np
import mindspore as ms
from mindspore import Tensor, nn

from ifa_cases import assert_close, round_to, to_numpy, to_tensor
from ms_attention import opdef, ops
from ms_attention.kernels.reference import fused_attention as golden

MS_DTYPE = {"float16": ms.float16, "bfloat16": ms.bfloat16, "float32": ms.float32, "int8": ms.int8,
            "uint8": ms.uint8, "bool": ms.bool_, "int32": ms.int32, "int64": ms.int64, "uint64": ms.uint64}


def t(shape, dtype="float16", value=0):
    """A Tensor of the given shape and dtype filled with `value`."""
    if dtype == "bfloat16":
        return Tensor(np.full(shape, value, np.float32), ms.bfloat16)
    return Tensor(np.full(shape, value, {"bool": np.bool_}.get(dtype, dtype)), MS_DTYPE[dtype])


def lengths(values):
    return Tensor(np.asarray(values, np.int64))


class _OpCell(nn.Cell):
    """The functional in a graph: Tensors arrive as graph inputs (a dict for the optional ones), everything
    else (attributes, tuple/list lengths, None) as constants held by the cell."""

    def __init__(self, fn, constants):
        super().__init__()
        self.fn = fn
        self.constants = constants

    def construct(self, query, key, value, tensors):
        return self.fn(query, key, value, **tensors, **self.constants)


def run(mode, fn, kwargs):
    """fn(**kwargs) in the given mode; the output (a Tensor, or a tuple for the fused ops)."""
    if mode == "pynative":
        ms.set_context(mode=ms.PYNATIVE_MODE)
        return fn(**kwargs)
    kwargs = dict(kwargs)
    query, key, value = kwargs.pop("query"), kwargs.pop("key"), kwargs.pop("value")
    tensors = {n: x for n, x in kwargs.items() if isinstance(x, Tensor)}
    constants = {n: x for n, x in kwargs.items() if not isinstance(x, Tensor)}
    cell = _OpCell(fn, constants)
    if mode == "graph":
        ms.set_context(mode=ms.GRAPH_MODE)
        return cell(query, key, value, tensors)
    ms.set_context(mode=ms.PYNATIVE_MODE)
    return ms.jit(cell.construct)(query, key, value, tensors)


def first(out):
    return out[0] if isinstance(out, tuple) else out


OPS = {"pfa": ops.prompt_flash_attention, "fia": ops.fused_infer_attention_score,
       "v2": ops.fused_infer_attention_score_v2}


# ---- numeric cases ------------------------------------------------------------------------------------------

PFA, FIA, V2 = "prompt_flash_attention", "fused_infer_attention_score", "fused_infer_attention_score_v2"
INT_MAX = 2147483647
LSE_RTOL = 1e-4
LSE_ATOL = 1e-6     # only matters for an lse within 1e-2 of 0, where rtol alone asks for float32's last bit

# The functional keywords the three operators spell differently.
NAMES = {
    PFA: dict(heads="num_heads", scale="scale_value", mask="attn_mask", lse=None),
    FIA: dict(heads="num_heads", scale="scale", mask="atten_mask", lse="softmax_lse_flag"),
    V2: dict(heads="num_query_heads", scale="softmax_scale", mask="atten_mask", lse="return_softmax_lse"),
}
REFERENCE = {PFA: golden.prompt_flash_attention, FIA: golden.fused_infer_attention_score,
             V2: golden.fused_infer_attention_score_v2}
FLOAT_DTYPES = ("float16", "bfloat16")


def signature(op_name):
    """The functional's tensor-input keywords and attribute keywords in YAML order, and the inputs that also
    take a list of one tensor."""
    op = opdef.get(op_name)
    inputs = tuple(f.name for f in op.function_args if not f.arg.prim_init)
    attrs = tuple(f.name for f in op.function_args if f.arg.prim_init)
    lists = tuple(f.name for f in op.function_args if f.arg.is_tensor_list)
    return inputs, attrs, lists


def run_op(mode, op_name, kwargs, key_as_list=True):
    """ops.<op_name>(**kwargs) in the given mode (through run()). key/value go as a one-element list where the
    operator takes one (FIA) and key_as_list is set. Returns (attention_out, softmax_lse or None for PFA)."""
    inputs, attrs, lists = signature(op_name)
    unknown = set(kwargs) - set(inputs) - set(attrs)
    assert not unknown, f"{op_name} takes no {sorted(unknown)}"
    kwargs = {n: [v] if key_as_list and n in lists else v for n, v in kwargs.items()}
    result = run(mode, getattr(ops, op_name), kwargs)
    if op_name == PFA:
        return result, None
    out, lse = result
    return out, lse


def assert_lse_close(actual, expected):
    """softmax_lse: +inf exactly where the reference has +inf (rows not computed), rtol 1e-4 elsewhere."""
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert not np.isnan(actual).any(), "NaN in softmax_lse"
    inf = np.isposinf(expected)
    assert np.array_equal(np.isposinf(actual), inf), \
        f"+inf at {np.argwhere(np.isposinf(actual) != inf)[:5].tolist()} (first mismatches) differs from the reference"
    np.testing.assert_allclose(actual[~inf], expected[~inf], rtol=LSE_RTOL, atol=LSE_ATOL)


def arrange(x, layout, lens=None):
    """A canonical (B, heads, S, D) array -> the layout's stored form. TND packs batch b's first lens[b] rows;
    BNSD_BSND's input is BNSD."""
    b, heads, s, d = x.shape
    if layout == "BSH":
        return x.transpose(0, 2, 1, 3).reshape(b, s, heads * d)
    if layout in ("BNSD", "BNSD_BSND"):
        return x
    if layout == "BSND":
        return x.transpose(0, 2, 1, 3)
    assert layout == "TND", layout
    return np.concatenate([x[i, :, :n].transpose(1, 0, 2) for i, n in enumerate(lens)], axis=0)


def lengths_value(lens, form):
    """Per-batch (or cumulative) lengths in the form a caller passes them."""
    lens = [int(x) for x in lens]
    if form == "tuple":
        return tuple(lens)
    if form == "list":
        return lens
    return Tensor(np.array(lens, {"int64": np.int64, "int32": np.int32}[form]))


class Case:
    """Random inputs for one configuration of one operator: numpy (for the golden) and MindSpore (for the op),
    keyed by the operator's functional keywords.

    sq / skv are the stored sequence lengths. TND needs q_lens / kv_lens (per batch): the stored query holds
    sum(q_lens) rows, and actual_seq_lengths(_kv) are passed cumulative (per batch for a paged cache)."""

    def __init__(self, op=FIA, b=2, n=8, kvn=2, sq=16, skv=32, d=64, layout="BSH", dtype="float16",
                 kv_dtype=None, seed=0, q_lens=None, kv_lens=None, rope_dim=0):
        self.op = op
        self.rng = np.random.default_rng(seed)
        self.b, self.n, self.kvn, self.sq, self.skv, self.d = b, n, kvn, sq, skv, d
        self.layout, self.dtype = layout, dtype
        self.kv_dtype = kv_dtype or dtype
        self.paged = False
        self.np, self.ms = {}, {}
        self.lengths = {}                                  # name -> (per-batch lengths, form)
        self.canon = {}                                    # name -> (B, heads, S, D) values as the op sees them
        names = NAMES[op]
        self.attrs = {names["heads"]: n, "input_layout": layout, names["scale"]: 1.0 / np.sqrt(d + rope_dim),
                      "num_key_value_heads": kvn}
        if layout == "TND":
            assert q_lens is not None and kv_lens is not None, "TND needs per-batch q_lens and kv_lens"
            self.sq, self.skv = max(q_lens), max(kv_lens)
            self.set_lengths(q=q_lens, kv=kv_lens)
        self.q_lens, self.kv_lens = q_lens, kv_lens
        self._draw("query", (b, n, self.sq, d), dtype, q_lens)
        self._draw("key", (b, kvn, self.skv, d), self.kv_dtype, kv_lens)
        self._draw("value", (b, kvn, self.skv, d), self.kv_dtype, kv_lens)
        if rope_dim:
            self._draw("query_rope", (b, n, self.sq, rope_dim), dtype, q_lens)
            self._draw("key_rope", (b, kvn, self.skv, rope_dim), dtype, kv_lens)

    # ---- inputs --------------------------------------------------------------------------------------------

    def _draw(self, name, shape, dtype, lens):
        if dtype == "int8":
            x = self.rng.integers(-128, 128, shape).astype(np.int8)
        else:
            x = round_to(self.rng.standard_normal(shape), dtype)
        self.canon[name] = x
        self.add(name, arrange(x, self.layout, lens), dtype)

    def add(self, name, array, dtype):
        """An input by its functional keyword: numpy rounded to dtype, and the MindSpore tensor."""
        if dtype in FLOAT_DTYPES:
            array = round_to(array, dtype)
        else:
            array = np.asarray(array).astype({"bool": np.bool_}.get(dtype, dtype))
        self.np[name] = array
        self.ms[name] = to_tensor(array, dtype)
        return array

    def set(self, name, ms_value, np_value):
        self.ms[name] = ms_value
        self.np[name] = np_value

    def remove(self, name):
        self.ms.pop(name, None)
        self.np.pop(name, None)

    @property
    def mask_name(self):
        return NAMES[self.op]["mask"]

    def add_mask(self, array, dtype="bool"):
        return self.add(self.mask_name, array, dtype)

    def set_lengths(self, q=None, kv=None, form="tuple"):
        """Per-batch actual lengths; passed cumulative in TND (kv per batch when paged), in the given form
        (tuple, list, int64 or int32 Tensor)."""
        if q is not None:
            self.lengths["actual_seq_lengths"] = (list(q), form)
        if kv is not None:
            self.lengths["actual_seq_lengths_kv"] = (list(kv), form)

    def _length_args(self):
        out = {}
        for name, (lens, form) in self.lengths.items():
            cumulative = self.layout == "TND" and not (name == "actual_seq_lengths_kv" and self.paged)
            values = np.cumsum(lens) if cumulative else lens
            out[name] = (lengths_value(values, form), np.asarray(values, np.int64))
        return out

    def page(self, block_size, cache_layout="BnBsH", seed=1):
        """Replace key / value (and key_rope) by a shuffled paged cache of the canonical values, with a block
        table that has one unused column left at -1. kv lengths become per batch (mandatory with paging)."""
        rng = np.random.default_rng(seed)
        b, kvn, skv = self.b, self.kvn, self.skv
        per_seq = -(-skv // block_size)
        num_blocks = b * per_seq + 3
        order = rng.permutation(num_blocks)[:b * per_seq].reshape(b, per_seq)
        table = np.full((b, per_seq + 1), -1, np.int32)
        table[:, :per_seq] = order
        for name in ("key", "value", "key_rope"):
            if name not in self.canon:
                continue
            dense = self.canon[name]                                   # (B, kvN, S, D)
            d = dense.shape[-1]
            if cache_layout == "BnBsH":
                cache = np.zeros((num_blocks, block_size, kvn * d), dense.dtype)
            else:
                cache = np.zeros((num_blocks, kvn, block_size, d), dense.dtype)
            for bi in range(b):
                for t in range(skv):
                    block, slot = order[bi, t // block_size], t % block_size
                    if cache_layout == "BnBsH":
                        cache[block, slot] = dense[bi, :, t].reshape(-1)
                    else:
                        cache[block, :, slot] = dense[bi, :, t]
            self.add(name, cache, self.dtype if name == "key_rope" else self.kv_dtype)
        self.add("block_table", table, "int32")
        self.attrs["block_size"] = block_size
        self.paged = True
        if "actual_seq_lengths_kv" not in self.lengths:
            self.set_lengths(kv=self.kv_lens or [skv] * b)
        return table

    # ---- calls ---------------------------------------------------------------------------------------------

    def kwargs(self):
        out = dict(self.ms)
        out.update({name: value for name, (value, _) in self._length_args().items()})
        out.update(self.attrs)
        return out

    def expected(self, **extra):
        """(attention_out, softmax_lse) of the golden; softmax_lse None for PFA."""
        args = dict(self.np)
        args.update({name: value for name, (_, value) in self._length_args().items()})
        args.update(self.attrs)
        args.update(extra)
        result = REFERENCE[self.op](**args)
        return (result, None) if self.op == PFA else result

    def out_dtype(self):
        if "quant_scale2" in self.np or "quant_scale_out" in self.np:
            return "int8"
        if self.dtype == "int8":                           # full quant without post-quant: float16
            return "float16"
        return self.dtype

    def run(self, mode, key_as_list=True):
        return run_op(mode, self.op, self.kwargs(), key_as_list=key_as_list)

    def check(self, mode, lse=False, key_as_list=True):
        """Run in `mode` and compare with the golden. lse: ask for softmax_lse (FIA, v2) and compare it too.
        Returns (attention_out, softmax_lse) as numpy."""
        lse_name = NAMES[self.op]["lse"]
        if lse_name is not None:
            self.attrs[lse_name] = lse
        out, got_lse = self.run(mode, key_as_list=key_as_list)
        want, want_lse = self.expected()
        want_dtype = self.out_dtype()
        assert str(out.dtype).lower() == want_dtype, (out.dtype, want_dtype)
        out = to_numpy(out)
        assert_close(out, want, want_dtype)
        if got_lse is not None:
            got_lse = to_numpy(got_lse)
            assert str(got_lse.dtype) == "float32", got_lse.dtype
            if lse:
                assert_lse_close(got_lse, want_lse)
            else:
                assert got_lse.shape == (1,) and got_lse[0] == 0, got_lse
        return out, got_lse


# FIA keywords that v2 spells differently (beyond NAMES).
V2_FROM_FIA = {"key_antiquant_scale": "dequant_scale_key", "key_antiquant_offset": "dequant_offset_key",
               "value_antiquant_scale": "dequant_scale_value", "value_antiquant_offset": "dequant_offset_value",
               "key_antiquant_mode": "key_quant_mode", "value_antiquant_mode": "value_quant_mode",
               "quant_scale2": "quant_scale_out", "quant_offset2": "quant_offset_out"}


def translate(kwargs, from_op, to_op):
    """The same call for another operator of the family: renames the keywords the two spell differently and
    pins the defaults that differ (PFA's next_tokens is 0, the others' INT_MAX; v2's num_key_value_heads is 1,
    the others' 0 = num_heads). Keywords with no counterpart in to_op raise (see run_op())."""
    renames = {NAMES[from_op][k]: NAMES[to_op][k] for k in NAMES[from_op] if NAMES[from_op][k]}
    if (from_op, to_op) == (FIA, V2):
        renames.update(V2_FROM_FIA)
    elif (from_op, to_op) == (V2, FIA):
        renames.update({v: k for k, v in V2_FROM_FIA.items()})
    out = {}
    for name, value in kwargs.items():
        target = renames.get(name, name)
        if target is not None:
            out[target] = value
    out.setdefault("next_tokens", 0 if from_op == PFA else INT_MAX)
    out.setdefault("num_key_value_heads", 1 if from_op == V2 else 0)
    return out
