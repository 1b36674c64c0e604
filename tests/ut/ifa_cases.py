"""Builds incre_flash_attention inputs (numpy and MindSpore), runs them in a given mode, compares with the
numpy reference under SPEC.md §9's tolerances."""
import numpy as np
import mindspore as ms
from mindspore import Tensor, nn

from ms_attention import opdef, ops
from ms_attention.kernels.reference.incre_flash_attention import incre_flash_attention as reference

TOLERANCE = {"float16": (0.005, 2.5e-5), "bfloat16": (0.0078125, 1e-4)}
WORST_CASE_FACTOR = 4
MS_DTYPE = {"float16": ms.float16, "bfloat16": ms.bfloat16, "int8": ms.int8, "bool": ms.bool_, "uint8": ms.uint8,
            "int32": ms.int32, "int64": ms.int64, "float32": ms.float32, "uint64": ms.uint64}
_OP = opdef.get("incre_flash_attention")
TENSOR_INPUTS = tuple(a.name for a in _OP.inputs)                        # primitive input order, from the YAML
ATTR_DEFAULTS = {a.name: a.default for a in _OP.init_args}


def round_to(x, dtype):
    """float32 values exactly representable in dtype, so kernel and reference see the same numbers."""
    x = np.asarray(x, np.float32)
    if dtype == "float16":
        return x.astype(np.float16).astype(np.float32)
    if dtype == "bfloat16":
        bits = x.view(np.uint32).astype(np.uint64)
        bits = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16
        return bits.astype(np.uint32).view(np.float32)
    return x


def to_tensor(x, dtype):
    if dtype in ("float16", "bfloat16"):
        return Tensor(round_to(x, dtype), MS_DTYPE[dtype])
    return Tensor(np.asarray(x), MS_DTYPE[dtype])


def to_numpy(t):
    if t.dtype == ms.bfloat16:
        t = t.astype(ms.float32)
    return t.asnumpy()


class _IFACell(nn.Cell):
    def __init__(self, consts, key_as_list):
        super().__init__()
        self.seq = consts.get("seq_static")
        self.key_as_list = key_as_list
        self.num_heads = consts["num_heads"]
        self.input_layout = consts["input_layout"]
        self.scale_value = consts["scale_value"]
        self.num_key_value_heads = consts["num_key_value_heads"]
        self.block_size = consts["block_size"]
        self.inner_precise = consts["inner_precise"]

    def construct(self, query, key, value, attn_mask, seq_tensor, pse_shift, dequant_scale1, quant_scale1,
                  dequant_scale2, quant_scale2, quant_offset2, antiquant_scale, antiquant_offset, block_table,
                  kv_padding_size):
        seq = seq_tensor
        if self.seq is not None:
            seq = self.seq
        if self.key_as_list:
            key = [key]
            value = [value]
        return ops.incre_flash_attention(query, key, value, attn_mask, seq, pse_shift, dequant_scale1,
                                         quant_scale1, dequant_scale2, quant_scale2, quant_offset2,
                                         antiquant_scale, antiquant_offset, block_table, self.num_heads,
                                         self.input_layout, self.scale_value, self.num_key_value_heads,
                                         self.block_size, self.inner_precise, kv_padding_size)


def run(mode, kwargs, key_as_list=True):
    """Call ops.incre_flash_attention with MindSpore-typed kwargs in the given mode."""
    consts = {name: kwargs.get(name, default) for name, default in ATTR_DEFAULTS.items()}
    seq = kwargs.get("actual_seq_lengths")
    tensors = {n: kwargs.get(n) for n in TENSOR_INPUTS}
    if mode == "pynative":
        ms.set_context(mode=ms.PYNATIVE_MODE)
        call = dict(kwargs)
        if key_as_list:
            call["key"], call["value"] = [call["key"]], [call["value"]]
        return ops.incre_flash_attention(**call)
    if isinstance(seq, (list, tuple)):
        consts["seq_static"] = seq
        tensors["actual_seq_lengths"] = None
    cell = _IFACell(consts, key_as_list)
    args = [tensors[n] for n in TENSOR_INPUTS]
    if mode == "graph":
        ms.set_context(mode=ms.GRAPH_MODE)
        return cell(*args)
    ms.set_context(mode=ms.PYNATIVE_MODE)
    return ms.jit(cell.construct)(*args)


def assert_close(actual, expected, dtype):
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert not np.isnan(actual).any(), "NaN in the output"
    if dtype == "int8":
        assert np.abs(actual - expected).max(initial=0) <= 1, np.abs(actual - expected).max()
        return
    rtol, atol = TOLERANCE[dtype]
    error = np.abs(actual - expected)
    inside = error <= atol + rtol * np.abs(expected)
    ratio = inside.mean() if inside.size else 1.0
    worst = error.max(initial=0)
    assert ratio >= 0.995, f"only {ratio:.4%} within rtol={rtol}, atol={atol}; worst abs error {worst}"
    # the 0.5 % allowed outside may not be arbitrarily wrong: none beyond a few times its own tolerance
    outlier = error > WORST_CASE_FACTOR * (atol + rtol * np.abs(expected))
    assert not outlier.any(), f"{int(outlier.sum())} elements beyond {WORST_CASE_FACTOR}x their tolerance; worst " \
                              f"abs error {worst}"


class Case:
    """Random inputs for one configuration: numpy (for the reference) and MindSpore (for the op)."""

    def __init__(self, b=2, n=8, kvn=2, s=64, d=64, layout="BSH", dtype="float16", kv_dtype=None, seed=0):
        self.rng = np.random.default_rng(seed)
        self.b, self.n, self.kvn, self.s, self.d = b, n, kvn, s, d
        self.layout, self.dtype = layout, dtype
        self.kv_dtype = kv_dtype or dtype
        self.np = {}
        self.ms = {}
        self.attrs = dict(num_heads=n, input_layout=layout, scale_value=1.0 / np.sqrt(d),
                          num_key_value_heads=kvn)
        q_shape = {"BSH": (b, 1, n * d), "BNSD": (b, n, 1, d), "BSND": (b, 1, n, d)}[layout]
        kv_shape = {"BSH": (b, s, kvn * d), "BNSD": (b, kvn, s, d), "BSND": (b, s, kvn, d)}[layout]
        self.add("query", self.rng.standard_normal(q_shape), dtype)
        if self.kv_dtype == "int8":
            self.add("key", self.rng.integers(-128, 128, kv_shape), "int8")
            self.add("value", self.rng.integers(-128, 128, kv_shape), "int8")
        else:
            self.add("key", self.rng.standard_normal(kv_shape), self.kv_dtype)
            self.add("value", self.rng.standard_normal(kv_shape), self.kv_dtype)

    def add(self, name, array, dtype):
        if dtype in ("float16", "bfloat16"):
            array = round_to(array, dtype)
        elif dtype in MS_DTYPE:
            array = np.asarray(array).astype({"bool": np.bool_}.get(dtype, dtype))
        self.np[name] = array
        self.ms[name] = to_tensor(array, dtype)
        return array

    def set(self, name, ms_value, np_value):
        self.ms[name] = ms_value
        self.np[name] = np_value

    def expected(self, **extra):
        args = {k: v for k, v in self.np.items()}
        args.update(self.attrs)
        args.update(extra)
        args.pop("inner_precise", None)
        return reference(**args)

    def kwargs(self):
        out = dict(self.ms)
        out.update(self.attrs)
        return out

    def check(self, mode, key_as_list=True, out_dtype=None):
        out = run(mode, self.kwargs(), key_as_list=key_as_list)
        expected = self.expected()
        want_dtype = out_dtype or self.dtype
        assert str(out.dtype).lower() == want_dtype, (out.dtype, want_dtype)
        assert_close(to_numpy(out), expected, want_dtype)
        return out
