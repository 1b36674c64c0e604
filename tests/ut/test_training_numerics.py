"""flash_attention_score (functional and primitive) and speed_fusion_attention against the numpy golden, forward
outputs and gradients, one axis per feature, in PyNative, Graph and jit. Dropout is compared bit for bit: with a
one-hot value tensor each output element is P * Z / keep_prob, so its zeros are exactly the dropped keys.

The axes whose values change only the kernel's work (layouts, sparse modes, masks, pse) run each value in one
mode, the modes taking turns along the axis (rotate()), to keep the suite short on two cores; what depends on the
mode itself (the generated dropout seed, the seven outputs, TND lengths as graph constants) runs in all three."""
import mindspore as ms
import numpy as np
import pytest

from training_cases import FAS, FAS_PRIMITIVE, SFA, TrainingCase, arrange, assert_close, batch_rows
from ms_attention.kernels.reference import training_attention as golden

ALL_OPS = (FAS, FAS_PRIMITIVE, SFA)
LAYOUTS = ("BSH", "SBH", "BNSD", "BSND", "TND")
MODES = ("pynative", "graph", "jit")


def rotate(values):
    """(mode, *value) for each value, the modes in turn, shifted by one every three values so that an inner loop
    of three does not tie each of its values to one mode. For parametrize("mode,...", ..., indirect=["mode"])."""
    n = len(MODES)
    return [(MODES[(i + i // n) % n],) + (v if isinstance(v, tuple) else (v,)) for i, v in enumerate(values)]


def _tnd(layout, q_lens, kv_lens):
    return dict(q_lens=q_lens, kv_lens=kv_lens) if layout == "TND" else {}


# ---- layouts, dtypes, GQA -----------------------------------------------------------------------------------

@pytest.mark.parametrize("mode,op,layout", rotate([(op, layout) for layout in LAYOUTS
                                                   for op in (FAS_PRIMITIVE, SFA)]), indirect=["mode"])
def test_layouts(mode, op, layout):
    case = TrainingCase(op, b=2, n1=4, n2=2, s1=5, s2=11, d=16, layout=layout,
                        **_tnd(layout, [5, 3], [11, 7]))
    case.attrs["sparse_mode"] = 3
    case.check(mode, grads=True)


@pytest.mark.parametrize("mode,op,dtype", rotate([(FAS, "float16"), (FAS, "bfloat16"), (FAS_PRIMITIVE, "bfloat16"),
                                                  (SFA, "float16"), (SFA, "bfloat16"), (SFA, "float32")]),
                         indirect=["mode"])
def test_dtypes(mode, op, dtype):
    case = TrainingCase(op, b=1, n1=2, n2=2, s1=9, s2=13, d=32, layout="BNSD", dtype=dtype, seed=1)
    case.check(mode, grads=True)


@pytest.mark.parametrize("mode,op,n1,n2", rotate([(op, n1, n2) for n1, n2 in [(3, 3), (6, 2), (8, 1)]
                                                  for op in ALL_OPS]), indirect=["mode"])
def test_gqa(mode, op, n1, n2):
    case = TrainingCase(op, b=2, n1=n1, n2=n2, s1=7, s2=7, d=8, layout="BSND", seed=2)
    case.attrs["sparse_mode"] = 2
    case.check(mode, grads=True)


# ---- sparse modes and masks ---------------------------------------------------------------------------------

def _compressed_mask(case, shape=(2048, 2048)):
    """The 2048 x 2048 upper-triangular mask the causal / band modes take (contents do not matter)."""
    case.add("attn_mask", np.broadcast_to(np.triu(np.ones((2048, 2048), bool), 1), shape), "bool")


SPARSE = {
    "0_no_mask_ignores_pre_next": dict(sparse_mode=0, pre_tokens=1, next_tokens=0),
    "0_mask_and_band": dict(sparse_mode=0, pre_tokens=4, next_tokens=1, mask=True),
    "0_negative_next": dict(sparse_mode=0, pre_tokens=9, next_tokens=-2, mask=True),
    "1_mask_only": dict(sparse_mode=1, pre_tokens=0, next_tokens=0, mask=True),
    "2_left_up": dict(sparse_mode=2, compressed=True),
    "3_right_down": dict(sparse_mode=3),
    "4_band": dict(sparse_mode=4, pre_tokens=3, next_tokens=1, compressed=True),
    "4_negative_pre": dict(sparse_mode=4, pre_tokens=-1, next_tokens=5),
    "4_int64_extremes_mask_all": dict(sparse_mode=4, pre_tokens=2 ** 63 - 1, next_tokens=-2 ** 63),
    "4_int64_extremes_open": dict(sparse_mode=4, pre_tokens=2 ** 63 - 1, next_tokens=2 ** 63 - 1),
    "5_prefix": dict(sparse_mode=5, prefix=(3, 9)),
    "5_prefix_and_mask": dict(sparse_mode=5, prefix=(0, 12), mask=True),
    "6_prefix_compressed": dict(sparse_mode=6, prefix=(4, 1), compressed=True),
    "7_varlen_right_down_band": dict(sparse_mode=7, pre_tokens=2, next_tokens=1),
    "8_varlen_left_up_band": dict(sparse_mode=8, pre_tokens=2, next_tokens=1),
}


@pytest.mark.parametrize("mode,op,name", rotate([(op, name) for name in sorted(SPARSE)
                                                 for op in (FAS_PRIMITIVE, SFA)]), indirect=["mode"])
def test_sparse_modes(mode, op, name):
    """S1 != S2, so the right-down modes differ from the left-up ones (d = 5)."""
    spec = dict(SPARSE[name])
    case = TrainingCase(op, b=2, n1=4, n2=2, s1=7, s2=12, d=16, layout="BSH", seed=3)
    if spec.pop("mask", False):
        case.add_mask((2, 1, 7, 12), density=0.4)
    if spec.pop("compressed", False):
        _compressed_mask(case)
    prefix = spec.pop("prefix", None)
    if prefix:
        case.set_lengths("prefix", prefix)
    case.attrs.update(spec)
    case.check(mode, grads=True)


VARLEN = [(3, [4, 0, 6, 1], [9, 3, 6, 5]), (7, [4, 6, 1, 0], [9, 6, 5, 3]), (8, [4, 6, 1, 0], [9, 6, 5, 3]),
          (5, [4, 6, 1], [9, 6, 5])]


@pytest.mark.parametrize("mode,op,sparse_mode,q_lens,kv_lens",
                         rotate([(op,) + v for v in VARLEN for op in (FAS, SFA)]), indirect=["mode"])
def test_sparse_modes_varlen(mode, op, sparse_mode, q_lens, kv_lens):
    """TND: the band of mode 7 is on the last batch with rows, that of mode 8 on the first batch."""
    case = TrainingCase(op, b=len(q_lens), n1=2, n2=1, d=16, layout="TND", q_lens=q_lens, kv_lens=kv_lens,
                        seed=4)
    case.attrs.update(sparse_mode=sparse_mode, pre_tokens=1, next_tokens=0)
    if sparse_mode == 5:
        case.set_lengths("prefix", (2, 0, 5))
    case.check(mode, grads=True)


@pytest.mark.parametrize("op", ALL_OPS)
def test_lengths_as_tensors(mode, op):
    """Cumulative lengths and prefix as int64 Tensors: in Graph mode their values reach only the kernel."""
    case = TrainingCase(op, b=3, n1=2, n2=1, d=8, layout="TND", q_lens=[4, 0, 5], kv_lens=[6, 2, 5], seed=19)
    case.set_lengths("prefix", (2, 1, 0))
    case.attrs["sparse_mode"] = 5
    case.lengths_as_tensors()
    case.check(mode, grads=True)


MASK_SHAPES = [((2, 4, 6, 9), "bool"), ((2, 1, 6, 9), "uint8"), ((1, 4, 6, 9), "bool"), ((6, 9), "bool")]


@pytest.mark.parametrize("mode,op,shape,dtype", rotate([(op,) + m for m in MASK_SHAPES for op in (FAS, SFA)]),
                         indirect=["mode"])
def test_mask_shapes(mode, op, shape, dtype):
    case = TrainingCase(op, b=2, n1=4, n2=4, s1=6, s2=9, d=16, layout="BSH", seed=5)
    case.add_mask(shape, density=0.35, dtype=dtype)
    case.attrs["sparse_mode"] = 1
    case.check(mode, grads=True)


def test_mask_varlen_is_window_relative(mode):
    case = TrainingCase(SFA, b=3, n1=2, n2=2, d=8, layout="TND", q_lens=[3, 5, 2], kv_lens=[4, 7, 6], seed=6)
    case.add_mask((3, 1, 6, 8), density=0.3)                # Smax_q, Smax_kv larger than any batch
    case.attrs.update(sparse_mode=0, pre_tokens=3, next_tokens=2)
    case.check(mode, grads=True)


@pytest.mark.parametrize("op", [FAS_PRIMITIVE, SFA])
def test_fully_masked_rows(mode, op):
    """Rows that see no key: output 0, softmax_max -FLT_MAX, softmax_sum FLT_MAX, zero and finite gradients."""
    case = TrainingCase(op, b=2, n1=2, n2=2, s1=5, s2=8, d=8, layout="BNSD", seed=7)
    mask = case.rng.random((2, 2, 5, 8)) < 0.3
    mask[0, 1, 2] = True
    mask[1, :, 4] = True
    case.add("attn_mask", mask, "bool")
    case.attrs["sparse_mode"] = 1
    got, grads = case.check(mode, grads=True)
    assert np.all(got["attention_out"][0, 1, 2] == 0) and np.all(got["attention_out"][1, :, 4] == 0)
    assert np.all(got["softmax_max"][1, :, 4] == -golden.FLT_MAX)
    assert np.all(got["softmax_sum"][1, :, 4] == golden.FLT_MAX)
    assert np.all(grads["query"][1, :, 4] == 0)
    assert all(np.isfinite(g).all() for g in grads.values())


# ---- pse ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode,op,shape", rotate([(op, shape) for shape in [(2, 4, 6, 10), (1, 4, 6, 10)]
                                                  for op in (FAS, SFA)]), indirect=["mode"])
def test_pse_full(mode, op, shape):
    case = TrainingCase(op, b=2, n1=4, n2=2, s1=6, s2=10, d=16, layout="BSND", seed=8)
    case.add_pse(shape)
    case.attrs["sparse_mode"] = 4
    case.attrs.update(pre_tokens=4, next_tokens=2)
    case.check(mode, grads=True)


@pytest.mark.parametrize("mode,op,sparse_mode,batch", rotate([(op, 2, 1) for op in (FAS_PRIMITIVE, SFA)]
                                                              + [(op, 3, 2) for op in (FAS_PRIMITIVE, SFA)]),
                         indirect=["mode"])
def test_pse_compressed_alibi_rows(mode, op, sparse_mode, batch):
    """A (B|1, N1, 1024, S2) pse with S1 != 1024 and a causal mode: row i reads row i + 1024 - S1."""
    case = TrainingCase(op, b=2, n1=2, n2=1, s1=5, s2=9, d=16, layout="BSH", seed=9)
    case.add_pse((batch, 2, 1024, 9))
    case.attrs["sparse_mode"] = sparse_mode
    case.check(mode, grads=True)


@pytest.mark.parametrize("mode,pse_type", rotate([0, 1, 2, 3]), indirect=["mode"])
def test_sfa_pse_types(mode, pse_type):
    case = TrainingCase(SFA, b=2, n1=4, n2=2, s1=6, s2=11, d=16, layout="BNSD", seed=10)
    case.add_pse((2, 4) if pse_type in (2, 3) else (2, 4, 6, 11), pse_type)
    case.set_lengths("q_start_idx", (3,))
    case.set_lengths("kv_start_idx", (1,))
    case.check(mode, grads=True)


def test_sfa_alibi_slopes_per_head_varlen(mode):
    case = TrainingCase(SFA, b=2, n1=4, n2=2, d=8, layout="TND", q_lens=[3, 6], kv_lens=[5, 6], seed=11)
    case.add_pse((4,), pse_type=2)
    case.attrs["sparse_mode"] = 3
    case.check(mode, grads=True)


def test_pse_varlen(mode):
    case = TrainingCase(FAS_PRIMITIVE, b=2, n1=2, n2=2, d=8, layout="TND", q_lens=[3, 6], kv_lens=[5, 7],
                        seed=12)
    case.add_pse((2, 2, 6, 8))                               # window-relative, Smax >= the longest batch
    case.attrs["sparse_mode"] = 3
    case.check(mode, grads=True)


@pytest.mark.parametrize("mode,op", rotate([FAS_PRIMITIVE, SFA]), indirect=["mode"])
def test_pse_compressed_rows_above_the_query(mode, op):
    """S1 > 1024: the first S1 - 1024 rows read row 0 of the compressed pse shifted right (Toeplitz), and their
    gradient accumulates there."""
    case = TrainingCase(op, b=1, n1=2, n2=1, s1=1027, s2=6, d=8, layout="BNSD", seed=16)
    case.add_pse((1, 2, 1024, 6))
    case.attrs["sparse_mode"] = 2
    case.check(mode, grads=True)


@pytest.mark.parametrize("mode,op", rotate([FAS, SFA]), indirect=["mode"])
def test_pse_compressed_varlen(mode, op):
    """TND with (B, N1, 1024, X) and a causal mode: each batch's rows read from row 1024 - q_b."""
    case = TrainingCase(op, b=2, n1=2, n2=2, d=8, layout="TND", q_lens=[3, 5], kv_lens=[7, 5], seed=17)
    case.add_pse((2, 2, 1024, 9))
    case.attrs["sparse_mode"] = 3
    case.check(mode, grads=True)


@pytest.mark.parametrize("mode,op,dtype,d", rotate([(FAS_PRIMITIVE, "bfloat16", 72), (SFA, "float16", 24)]),
                         indirect=["mode"])
def test_many_tiles(mode, op, dtype, d):
    """Lengths past several tiles of the kernels and head dims off the SIMD width, with a band, a pse and
    generated dropout."""
    case = TrainingCase(op, b=1, n1=2, n2=1, s1=67, s2=133, d=d, layout="BSND", dtype=dtype, seed=18)
    case.add_pse((1, 2, 67, 133))
    case.attrs.update(sparse_mode=4, pre_tokens=90, next_tokens=20)
    case.dropout(0.875, seed=3)
    case.check(mode, grads=True)


# ---- dropout ------------------------------------------------------------------------------------------------

def _one_hot_case(op, layout, keep_prob, explicit, seed=21, q_lens=None, kv_lens=None):
    """A case whose value rows are unit vectors, so attention_out[..., j] = P_ij * Z_ij / keep_prob; small
    scores keep every P_ij well above zero."""
    s1, s2 = 6, 16
    case = TrainingCase(op, b=2, n1=4, n2=2, s1=s1, s2=s2, d=16, layout=layout, magnitude=0.3, seed=seed,
                        **_tnd(layout, q_lens, kv_lens))
    eye = np.broadcast_to(np.eye(case.s2, case.d), (case.b, case.n2, case.s2, case.d))
    case.add("value", arrange(np.ascontiguousarray(eye), layout, kv_lens), case.dtype)
    case.dropout(keep_prob, explicit=explicit, seed=seed)
    return case


def _dropped(case, out):
    """Per batch (N1, q_b, kv_b): which elements the kernel's output shows as dropped (exact zeros)."""
    rows = batch_rows(np.asarray(out), case.layout, case.n1, case.q_lens)
    return [r[:, :, :kv_len] == 0 for r, kv_len in zip(rows, case.kv_lens)]


@pytest.mark.parametrize("op,explicit", [(FAS, True), (FAS_PRIMITIVE, False), (SFA, False)])
@pytest.mark.parametrize("layout", ["BSH", "TND"])
def test_dropout_mask_bit_exact(mode, op, explicit, layout):
    case = _one_hot_case(op, layout, 0.75, explicit, q_lens=[6, 2], kv_lens=[16, 8])
    got, _ = case.check(mode)
    for dropped, keep in zip(_dropped(case, got["attention_out"]), case.keep_mask()):
        assert np.array_equal(dropped, ~keep), \
            f"{int((dropped != ~keep).sum())} elements of {keep.size} disagree with the golden's mask"


@pytest.mark.parametrize("mode", MODES, indirect=True)
def test_drop_mask_varlen_bits_not_a_multiple_of_8(mode):
    """TND: N1 * sum q_b * kv_b = 4 * (3 * 5 + 2 * 3) = 84 bits in 11 bytes, the batches' bits back to back."""
    case = _one_hot_case(FAS, "TND", 0.5, explicit=True, seed=23, q_lens=[3, 2], kv_lens=[5, 3])
    assert case.np["drop_mask"].shape == (11,)
    got, _ = case.check(mode)
    for dropped, keep in zip(_dropped(case, got["attention_out"]), case.keep_mask()):
        assert np.array_equal(dropped, ~keep)


@pytest.mark.parametrize("mode,op,explicit,layout",
                         rotate([(op, explicit, layout) for layout in ("SBH", "BNSD", "BSND")
                                 for op, explicit in ((FAS, True), (SFA, False))]), indirect=["mode"])
def test_dropout_mask_bit_exact_other_layouts(mode, op, explicit, layout):
    """The mask is indexed by (b, h, i, j) whatever the layout stores the rows as."""
    case = _one_hot_case(op, layout, 0.5, explicit, seed=22)
    got, _ = case.check(mode)
    for dropped, keep in zip(_dropped(case, got["attention_out"]), case.keep_mask()):
        assert np.array_equal(dropped, ~keep)


@pytest.mark.parametrize("mode,op,explicit,keep_prob",
                         rotate([(op, explicit, p) for p in (0.5, 0.875, 0.6)
                                 for op, explicit in ((FAS, True), (FAS, False), (SFA, False))]), indirect=["mode"])
def test_dropout_gradients(mode, op, explicit, keep_prob):
    case = TrainingCase(op, b=2, n1=4, n2=2, s1=5, s2=8, d=16, layout="BSH", seed=13)
    case.add_pse((1, 4, 5, 8))
    case.attrs["sparse_mode"] = 2
    case.dropout(keep_prob, explicit=explicit, seed=99)
    case.check(mode, grads=True)


def test_dropout_varlen_gradients(mode):
    case = TrainingCase(SFA, b=3, n1=2, n2=1, d=8, layout="TND", q_lens=[3, 0, 5], kv_lens=[6, 2, 5], seed=14)
    case.attrs["sparse_mode"] = 3
    case.dropout(0.6, seed=5)
    case.check(mode, grads=True)


def test_generated_dropout_is_seeded_and_advances(mode):
    """ms.manual_seed fixes the generator: the first call after it draws offset 0 and gives the same result every
    time; the next call draws at a later offset, hence another mask."""
    case = _one_hot_case(SFA, "BSH", 0.5, explicit=False, seed=31)
    first = case.run_forward(mode)
    second = case.run_forward(mode, reseed=False)
    assert first["seed"][0] == second["seed"][0] == case.seed_offset[0]
    assert first["offset"][0] == 0 and second["offset"][0] > 0
    if mode == "pynative":   # the generator's seed, unless an earlier mindspore.set_seed (process-wide) fixed one
        assert case.seed_offset == (31 if ms.get_seed() is None else ms.get_seed(), 0)
    assert not np.array_equal(first["attention_out"] == 0, second["attention_out"] == 0)
    ms.manual_seed(31)
    again = case.run_forward(mode, reseed=False)
    np.testing.assert_array_equal(again["attention_out"], first["attention_out"])


# ---- TND = padded BSH ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("op", [FAS_PRIMITIVE, SFA])
def test_tnd_equals_padded_bsh(mode, op):
    """The kernel's TND result equals its BSH result on the same batches zero-padded to the longest lengths, where
    a full mask (sparse_mode 1) discards the padding keys and applies each batch's right-down causal rule (TND's
    sparse_mode 3): forward outputs, softmax statistics and gradients on the valid rows, zero gradients on the
    padding and on a batch with no query rows."""
    q_lens, kv_lens = [3, 0, 5], [7, 4, 5]
    b, s1, s2 = 3, max(q_lens), max(kv_lens)
    tnd = TrainingCase(op, b=b, n1=4, n2=2, d=16, layout="TND", q_lens=q_lens, kv_lens=kv_lens, seed=15)
    tnd.attrs["sparse_mode"] = 3
    padded = TrainingCase(op, b=b, n1=4, n2=2, s1=s1, s2=s2, d=16, layout="BSH", seed=15)
    for name, lens in (("query", q_lens), ("key", kv_lens), ("value", kv_lens)):
        x = np.zeros_like(tnd.canon[name])
        for i, n in enumerate(lens):
            x[i, :, :n] = tnd.canon[name][i, :, :n]
        padded.add(name, arrange(x, "BSH"), padded.dtype)
    i, j = np.arange(s1)[:, None], np.arange(s2)[None, :]
    mask = np.stack([(j > i + kv - q) | (j >= kv) for q, kv in zip(q_lens, kv_lens)])[:, None]
    padded.add("attn_mask", mask, "bool")
    padded.attrs["sparse_mode"] = 1
    dy = tnd.draw_dy()
    got, grads = tnd.run_grads(mode, dy)
    dy_padded = np.zeros((b, s1) + dy.shape[1:])
    q0, k0 = np.concatenate([[0], np.cumsum(q_lens)]), np.concatenate([[0], np.cumsum(kv_lens)])
    for x in range(b):
        dy_padded[x, :q_lens[x]] = dy[q0[x]:q0[x + 1]]
    want, want_grads = padded.run_grads(mode, dy_padded.reshape(b, s1, -1))
    for x in range(b):
        q, kv = q_lens[x], kv_lens[x]
        rows = slice(q0[x], q0[x + 1])
        assert_close(got["attention_out"][rows], want["attention_out"][x, :q].reshape(q, 4, 16), tnd.dtype)
        np.testing.assert_allclose(got["softmax_max"][rows], want["softmax_max"][x, :, :q].transpose(1, 0, 2),
                                   rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(got["softmax_sum"][rows], want["softmax_sum"][x, :, :q].transpose(1, 0, 2),
                                   rtol=1e-5)
        assert_close(grads["query"][rows], want_grads["query"][x, :q].reshape(q, 4, 16), tnd.dtype, "dq")
        for name in ("key", "value"):
            assert_close(grads[name][k0[x]:k0[x + 1]], want_grads[name][x, :kv].reshape(kv, 2, 16), tnd.dtype,
                         "d" + name)
            assert np.all(want_grads[name][x, kv:] == 0), f"d{name} of padding keys"
    assert np.all(grads["key"][k0[1]:k0[2]] == 0) and np.all(grads["value"][k0[1]:k0[2]] == 0)
