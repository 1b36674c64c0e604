"""Shared helpers of the flash_attention_score (FAS) and speed_fusion_attention (SFA) numeric tests.

TrainingCase draws inputs once in a canonical (B, heads, S, D) form and arranges them into the case's layout, so
the same seed gives the same numbers in every layout. Its attributes and optional inputs are kept under the numpy
golden's names (ms_attention/kernels/reference/training_attention.py) and translated per operator:
- "fas": ops.flash_attention_score (returns attention_out);
- "fas_primitive": the FlashAttentionScore primitive held by a Cell (softmax_max, softmax_sum, softmax_out,
  attention_out);
- "sfa": ops.speed_fusion_attention (attention_out, softmax_max, softmax_sum, softmax_out, seed, offset, numels).
run_forward(mode) calls the operator; run_grads(mode) takes the gradients of sum(attention_out * dy) with respect to
query, key, value (and a pse tensor) through mindspore.value_and_grad, also returning the forward outputs. check()
compares either with the golden under the per-dtype tolerances of the accuracy contract (fp16 rtol 0.005 atol
2.5e-5, bf16 rtol 0.0078125 atol 1e-4, float32 rtol 1e-5 atol 1e-6; softmax statistics rtol 1e-4). Modes:
pynative, graph (an nn.Cell in GRAPH_MODE), jit (ms.jit in the PyNative context)."""
import numpy as np
import mindspore as ms
from mindspore import Tensor, nn

from ifa_cases import round_to, to_numpy
from ms_attention import _runtime as _rt
from ms_attention import ops
from ms_attention.kernels.reference import training_attention as golden
from ms_attention.primitives import FlashAttentionScore

INT_MAX = 2147483647
FAS, FAS_PRIMITIVE, SFA = "fas", "fas_primitive", "sfa"
MS_DTYPE = {"float16": ms.float16, "bfloat16": ms.bfloat16, "float32": ms.float32, "uint8": ms.uint8,
            "bool": ms.bool_, "int64": ms.int64}
TOLERANCE = {"float16": (0.005, 2.5e-5), "bfloat16": (0.0078125, 1e-4), "float32": (1e-5, 1e-6)}
WORST_CASE_FACTOR = 4
STATS_RTOL, STATS_ATOL = 1e-4, 1e-5
OUTPUTS = {FAS: ("attention_out",),
           FAS_PRIMITIVE: ("softmax_max", "softmax_sum", "softmax_out", "attention_out"),
           SFA: ("attention_out", "softmax_max", "softmax_sum", "softmax_out", "seed", "offset", "numels")}


# ---- comparisons --------------------------------------------------------------------------------------------

def assert_close(actual, expected, dtype, what="attention_out"):
    """The accuracy contract: at least 99.5 % of the elements within rtol/atol of the dtype, none NaN, and none
    beyond a few times its tolerance."""
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    assert not np.isnan(actual).any(), f"NaN in {what}"
    rtol, atol = TOLERANCE[dtype]
    error = np.abs(actual - expected)
    bound = atol + rtol * np.abs(expected)
    ratio = (error <= bound).mean() if error.size else 1.0
    worst = error.max(initial=0)
    assert ratio >= 0.995, f"{what}: only {ratio:.4%} within rtol={rtol}, atol={atol}; worst abs error {worst}"
    outliers = error > WORST_CASE_FACTOR * bound
    assert not outliers.any(), \
        f"{what}: {int(outliers.sum())} elements beyond {WORST_CASE_FACTOR}x their tolerance, first at " \
        f"{np.argwhere(outliers)[0].tolist()}; worst abs error {worst}"


def assert_stats_close(actual, expected, what):
    """softmax_max / softmax_sum: float32, the same shape, equal over the last axis of 8, -FLT_MAX / FLT_MAX
    exactly where the golden has them (rows that see no key), rtol 1e-4 elsewhere."""
    actual = np.asarray(actual)
    assert actual.dtype == np.float32, (what, actual.dtype)
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    assert np.all(actual == actual[..., :1]), f"{what} is not repeated over its last axis"
    special = np.abs(expected) == np.float32(golden.FLT_MAX)
    assert np.array_equal(actual[special], expected[special]), f"{what}: fully masked rows differ"
    np.testing.assert_allclose(actual[~special], expected[~special], rtol=STATS_RTOL, atol=STATS_ATOL,
                               err_msg=what)


# ---- layouts ------------------------------------------------------------------------------------------------

def arrange(x, layout, lens=None):
    """A canonical (B, heads, S, D) array -> the layout's stored form; TND packs batch b's first lens[b] rows."""
    b, heads, s, d = x.shape
    if layout == "BSH":
        return x.transpose(0, 2, 1, 3).reshape(b, s, heads * d)
    if layout == "SBH":
        return x.transpose(2, 0, 1, 3).reshape(s, b, heads * d)
    if layout == "BNSD":
        return x
    if layout == "BSND":
        return x.transpose(0, 2, 1, 3)
    assert layout == "TND", layout
    return np.concatenate([x[i, :, :n].transpose(1, 0, 2) for i, n in enumerate(lens)], axis=0)


def batch_rows(x, layout, heads, q_lens):
    """An output in `layout` -> per batch (heads, q_b, D): the inverse of arrange() on query-shaped tensors."""
    if layout == "TND":
        starts = np.concatenate([[0], np.cumsum(q_lens)])
        return [x[starts[b]:starts[b + 1]].transpose(1, 0, 2) for b in range(len(q_lens))]
    if layout == "BSH":
        b, s, h = x.shape
        x = x.reshape(b, s, heads, h // heads).transpose(0, 2, 1, 3)
    elif layout == "SBH":
        s, b, h = x.shape
        x = x.reshape(s, b, heads, h // heads).transpose(1, 2, 0, 3)
    elif layout == "BSND":
        x = x.transpose(0, 2, 1, 3)
    return list(x)


def to_tensor(x, dtype):
    if dtype in ("float16", "bfloat16", "float32"):
        return Tensor(round_to(x, dtype), MS_DTYPE[dtype])
    return Tensor(np.asarray(x), MS_DTYPE[dtype])


# ---- running the operators ----------------------------------------------------------------------------------

class _OpCell(nn.Cell):
    """One operator in a graph. Tensors arrive as inputs (pse possibly None, the other optional tensors in a
    dict); attributes and length tuples are constants held by the cell. Returns the operator's outputs as a
    tuple."""

    def __init__(self, op, attrs, lengths):
        super().__init__()
        self.op = op
        self.attrs = attrs
        self.lengths = lengths
        if op == FAS_PRIMITIVE:
            self.prim = FlashAttentionScore(**attrs)

    def construct(self, query, key, value, pse, tensors):
        if self.op == FAS:
            return (ops.flash_attention_score(query, key, value, real_shift=pse, **tensors, **self.lengths,
                                              **self.attrs),)
        if self.op == FAS_PRIMITIVE:
            names = ("prefix", "actual_seq_qlen", "actual_seq_kvlen")
            lengths = [tensors.get(n, self.lengths.get(n)) for n in names]
            return self.prim(query, key, value, pse, tensors.get("drop_mask"), None, tensors.get("attn_mask"),
                             lengths[0], lengths[1], lengths[2])
        return ops.speed_fusion_attention(query, key, value, pse=pse, **tensors, **self.lengths, **self.attrs)


class _LossCell(nn.Cell):
    """sum(attention_out * dy) in float32, with the operator's outputs as the auxiliary value."""

    def __init__(self, op_cell, out_index):
        super().__init__()
        self.op_cell = op_cell
        self.out_index = out_index

    def construct(self, query, key, value, pse, dy, tensors):
        outs = self.op_cell(query, key, value, pse, tensors)
        loss = (outs[self.out_index].astype(ms.float32) * dy).sum()
        return loss, outs


class _GradCell(nn.Cell):
    def __init__(self, loss_cell, positions):
        super().__init__()
        self.fn = ms.value_and_grad(loss_cell, grad_position=positions, has_aux=True)

    def construct(self, query, key, value, pse, dy, tensors):
        return self.fn(query, key, value, pse, dy, tensors)


class _SeedProbe(nn.Cell):
    """The (seed, offset) draw the operators make for a generated dropout mask."""

    def construct(self, x):
        return _rt.dropout_seed_offset(0.5, False)


def _in_mode(mode, cell, *args):
    if mode == "pynative":
        ms.set_context(mode=ms.PYNATIVE_MODE)
        return cell(*args)
    if mode == "graph":
        ms.set_context(mode=ms.GRAPH_MODE)
        return cell(*args)
    ms.set_context(mode=ms.PYNATIVE_MODE)
    return ms.jit(cell.construct)(*args)


# ---- cases --------------------------------------------------------------------------------------------------

class TrainingCase:
    """Random inputs for one configuration: numpy (for the golden, rounded to the dtype) and MindSpore.

    b, n1, n2, s1, s2, d: batch, query heads, kv heads, stored lengths, head dim. TND takes per-batch q_lens /
    kv_lens (passed cumulative). Inputs are N(0, 1) times `magnitude`."""

    def __init__(self, op=FAS, b=2, n1=4, n2=2, s1=8, s2=16, d=16, layout="BSH", dtype="float16", seed=0,
                 q_lens=None, kv_lens=None, magnitude=1.0):
        self.op, self.layout, self.dtype = op, layout, dtype
        self.rng = np.random.default_rng(seed)
        self.b, self.n1, self.n2, self.d = b, n1, n2, d
        if layout == "TND":
            assert q_lens is not None and kv_lens is not None, "TND needs per-batch q_lens and kv_lens"
            s1, s2 = max(q_lens), max(kv_lens)
        else:
            q_lens, kv_lens = [s1] * b, [s2] * b
        self.s1, self.s2 = s1, s2
        self.q_lens, self.kv_lens = list(q_lens), list(kv_lens)
        self.np, self.ms, self.lengths = {}, {}, {}
        self.attrs = dict(head_num=n1, input_layout=layout, scale=1.0 / np.sqrt(d), keep_prob=1.0,
                          pre_tokens=INT_MAX, next_tokens=INT_MAX, sparse_mode=0, pse_type=1)
        self.seed_offset = (0, 0)                 # what the generator gives the kernel (set by manual_seed)
        self.canon = {}
        self.draw("query", (b, n1, s1, d), self.q_lens, magnitude)
        self.draw("key", (b, n2, s2, d), self.kv_lens, magnitude)
        self.draw("value", (b, n2, s2, d), self.kv_lens, 1.0)
        if layout == "TND":
            self.set_lengths("actual_seq_qlen", np.cumsum(self.q_lens))
            self.set_lengths("actual_seq_kvlen", np.cumsum(self.kv_lens))

    # ---- inputs --------------------------------------------------------------------------------------------

    def draw(self, name, shape, lens, magnitude):
        x = round_to(self.rng.standard_normal(shape) * magnitude, self.dtype)
        self.canon[name] = x
        self.add(name, arrange(x, self.layout, lens), self.dtype)

    def add(self, name, array, dtype):
        """An optional tensor input under the golden's name: numpy rounded to dtype, and the MindSpore Tensor."""
        if dtype in TOLERANCE:
            array = round_to(array, dtype)
        else:
            array = np.asarray(array).astype({"bool": np.bool_}.get(dtype, dtype))
        self.np[name] = array
        self.ms[name] = to_tensor(array, dtype)
        return array

    def remove(self, name):
        self.np.pop(name, None)
        self.ms.pop(name, None)

    def set_lengths(self, name, values):
        """prefix, actual_seq_qlen / kvlen, q_start_idx / kv_start_idx: a tuple of ints (a constant)."""
        self.lengths[name] = tuple(int(x) for x in values)

    def lengths_as_tensors(self):
        """Pass the lengths as int64 Tensors (graph inputs whose values the compiler does not know)."""
        for name, values in self.lengths.items():
            self.np[name] = np.asarray(values, np.int64)
            self.ms[name] = Tensor(self.np[name])
        self.lengths = {}

    def add_pse(self, shape, pse_type=1):
        """A pse tensor in the query dtype (types 0 / 1), or float32 ALiBi slopes (types 2 / 3)."""
        self.attrs["pse_type"] = pse_type
        if pse_type in (2, 3):
            return self.add("pse", self.rng.random(shape) * 0.5, "float32")
        return self.add("pse", self.rng.standard_normal(shape), self.dtype)

    def add_mask(self, shape, density=0.3, dtype="bool"):
        return self.add("attn_mask", self.rng.random(shape) < density, dtype)

    def dropout(self, keep_prob, explicit=False, seed=0, offset=0):
        """Dropout with keep_prob: an explicit bit-packed drop_mask (FAS only), or the generated mask, with
        ms.manual_seed(seed) right before each call (see _seed_generator)."""
        self.attrs["keep_prob"] = keep_prob
        self.generator_seed = seed
        self.seed_offset = (seed, offset)
        if explicit:
            keep = self.rng.random((self.b, self.n1, self.s1, self.s2)) < keep_prob
            if self.layout == "TND":
                keep = [keep[i, :, :q, :kv] for i, (q, kv) in enumerate(zip(self.q_lens, self.kv_lens))]
            self.add("drop_mask", golden.pack_drop_mask(keep), "uint8")

    def keep_mask(self):
        """The golden's Z for the case's dropout (generated or explicit), per batch (N1, q_b, kv_b)."""
        if "drop_mask" in self.np:
            return golden.unpack_drop_mask(self.np["drop_mask"], self.n1, self.q_lens, self.kv_lens)
        seed, offset = self.seed_offset
        if self.layout == "TND":
            return golden.generated_keep_mask_varlen(seed, offset, self.attrs["keep_prob"], self.n1,
                                                     self.lengths["actual_seq_qlen"],
                                                     self.lengths["actual_seq_kvlen"])
        return list(golden.generated_keep_mask(seed, offset, self.attrs["keep_prob"], self.n1, self.b, self.s1,
                                               self.s2))

    # ---- the operator's arguments --------------------------------------------------------------------------

    def _op_attrs(self):
        a = self.attrs
        if self.op == SFA:
            return dict(head_num=a["head_num"], input_layout=a["input_layout"], scale=float(a["scale"]),
                        keep_prob=a["keep_prob"], pre_tokens=a["pre_tokens"], next_tokens=a["next_tokens"],
                        sparse_mode=a["sparse_mode"], pse_type=a["pse_type"])
        assert a["pse_type"] == 1, "flash_attention_score adds its pse before the scale (pse_type 1) only"
        names = ("head_num", "keep_prob", "pre_tokens", "next_tokens", "input_layout", "sparse_mode")
        out = {n: a[n] for n in names}
        out["scale_value" if self.op == FAS_PRIMITIVE else "scalar_value"] = float(a["scale"])
        return out

    def _op_tensors(self):
        """The optional tensors (pse apart) under the operator's keywords."""
        renames = {"attn_mask": "atten_mask"} if self.op == SFA else {}
        return {renames.get(n, n): t for n, t in self.ms.items() if n not in ("query", "key", "value", "pse")}

    def _op_cell(self):
        return _OpCell(self.op, self._op_attrs(), dict(self.lengths))

    def generates_mask(self):
        return self.attrs["keep_prob"] < 1.0 and "drop_mask" not in self.ms

    def _seed_generator(self, mode):
        """ms.manual_seed(the case's seed), and learn what the generator then gives the kernel in this mode:
        (seed, 0) in PyNative; in Graph mode and jit MindSpore's generator gives another seed (offset still
        0), so a probe calling the same draw in the same mode reads it, and manual_seed starts over."""
        if not self.generates_mask():
            return
        ms.manual_seed(self.generator_seed)
        seed, offset = _in_mode(mode, _SeedProbe(), Tensor(0.0, ms.float32))
        self.seed_offset = (int(seed.asnumpy().reshape(-1)[0]), int(offset.asnumpy().reshape(-1)[0]))
        ms.manual_seed(self.generator_seed)

    def run_forward(self, mode, reseed=True):
        """The operator's outputs as a dict of numpy arrays (named as in OUTPUTS). reseed: ms.manual_seed the
        case's dropout seed first (generated dropout only)."""
        if reseed:
            self._seed_generator(mode)
        outs = _in_mode(mode, self._op_cell(), self.ms["query"], self.ms["key"], self.ms["value"],
                        self.ms.get("pse"), self._op_tensors())
        return self._named(outs)

    def _named(self, outs):
        names = OUTPUTS[self.op]
        assert len(outs) == len(names), (self.op, len(outs))
        result = {}
        for name, t in zip(names, outs):
            if name in ("attention_out", "softmax_out"):
                assert str(t.dtype).lower() == self.dtype, (name, t.dtype, self.dtype)
            result[name] = to_numpy(t)
        return result

    def draw_dy(self):
        shape = self.np["query"].shape
        return round_to(self.rng.standard_normal(shape), self.dtype)

    def differentiates_pse(self):
        return "pse" in self.ms and self.attrs["pse_type"] in (0, 1)

    def run_grads(self, mode, dy):
        """(forward outputs dict, {"query": dq, "key": dk, "value": dv[, "pse": dpse]}) of sum(out * dy)."""
        names = ["query", "key", "value"] + (["pse"] if self.differentiates_pse() else [])
        out_index = OUTPUTS[self.op].index("attention_out")
        cell = _GradCell(_LossCell(self._op_cell(), out_index), tuple(range(len(names))))
        self._seed_generator(mode)
        (_, outs), grads = _in_mode(mode, cell, self.ms["query"], self.ms["key"], self.ms["value"],
                                    self.ms.get("pse"), Tensor(dy, ms.float32), self._op_tensors())
        got = {}
        for name, g in zip(names, grads):
            assert g.shape == self.ms[name].shape and g.dtype == self.ms[name].dtype, (name, g.shape, g.dtype)
            got[name] = to_numpy(g)
        return self._named(outs), got

    # ---- the golden ----------------------------------------------------------------------------------------

    def golden_args(self):
        args = {n: v for n, v in self.np.items() if n not in ("query", "key", "value")}
        args.update(self.lengths)
        args.update(self.attrs)
        seed, offset = self.seed_offset
        args.update(seed=seed, offset=offset)
        return args

    def expected(self):
        """The golden's (attention_out, softmax_max, softmax_sum)."""
        return golden.training_attention(self.np["query"], self.np["key"], self.np["value"], **self.golden_args())

    def expected_grads(self, dy, softmax_max, softmax_sum, attention_in):
        dq, dk, dv, dpse = golden.training_attention_grad(self.np["query"], self.np["key"], self.np["value"], dy,
                                                          softmax_max, softmax_sum, attention_in,
                                                          **self.golden_args())
        return dict(query=dq, key=dk, value=dv, pse=dpse)

    def numels(self):
        return self.n1 * sum(q * kv for q, kv in zip(self.q_lens, self.kv_lens))

    # ---- checks --------------------------------------------------------------------------------------------

    def check_outputs(self, got, want):
        out, softmax_max, softmax_sum = want
        assert_close(got["attention_out"], out, self.dtype)
        if self.op == FAS:
            return
        assert_stats_close(got["softmax_max"], softmax_max, "softmax_max")
        assert_stats_close(got["softmax_sum"], softmax_sum, "softmax_sum")
        assert got["softmax_out"].shape == (1,) and got["softmax_out"][0] == 0, got["softmax_out"]
        if self.op == SFA:
            assert got["numels"].dtype == np.int64 and got["numels"].tolist() == [self.numels()], got["numels"]
            generated = self.attrs["keep_prob"] < 1.0
            for name, value in zip(("seed", "offset"), self.seed_offset):
                assert got[name].dtype == np.int64 and got[name].shape == (1,), (name, got[name])
                assert got[name][0] == (value if generated else 0), (name, got[name], value)

    def check(self, mode, grads=False):
        """Run in `mode` and compare every output (and with grads=True the gradients) with the golden. Returns
        (forward outputs, gradients or None)."""
        if not grads:
            got = self.run_forward(mode)
            self.check_outputs(got, self.expected())
            return got, None
        dy = self.draw_dy()
        got, got_grads = self.run_grads(mode, dy)
        want = self.expected()
        self.check_outputs(got, want)
        # The backward's Dsum reads the forward output the kernel stored (attention_in, in the query dtype).
        want_grads = self.expected_grads(dy, want[1], want[2], got["attention_out"])
        for name, g in got_grads.items():
            assert_close(g, want_grads[name], self.dtype, what="d" + name)
        return got, got_grads
