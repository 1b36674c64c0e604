"""flash_attention_score and speed_fusion_attention in networks as training code writes them: the primitive
FlashAttentionScore held by a Cell (MindFormers' FlashAttention cell: all four outputs), unmodified MindSpore
code routed through install() (every module MindSpore exports the two functionals and the two primitive
classes from), dynamic shapes through Cell.set_inputs (forward and gradient), and gradients through
ms.grad and nn.TrainOneStepCell in Graph mode. Outputs and gradients are compared with the numpy reference
(ms_attention.kernels.reference.training_attention); the per-feature numerics are test_training_numerics /
test_training_gradients."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import mindspore as ms
from mindspore import Parameter, Tensor, nn
from mindspore import ops as ms_ops

import ms_attention
from ifa_cases import assert_close, round_to, to_numpy, to_tensor
from ms_attention import ops, primitives
from ms_attention.kernels.reference import training_attention as reference

PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(ms_attention.__file__)))
B, N, N2, S, D = 2, 4, 2, 24, 32
SCALE = D ** -0.5


def _set_mode(mode):
    ms.set_context(mode=ms.GRAPH_MODE if mode == "graph" else ms.PYNATIVE_MODE)


def _draw(rng, shape, dtype="float16"):
    return round_to(rng.standard_normal(shape).astype(np.float32), dtype)


def assert_grad_close(actual, expected, dtype):
    """Gradients stored in a half dtype: each element within 1 % of the largest expected magnitude (a
    gradient sums many products, so elementwise tolerances are too strict near its zeros); float32: 1e-4."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert np.isfinite(actual).all()
    bound = (1e-4 if dtype == "float32" else 1e-2) * max(np.abs(expected).max(initial=0), 1e-6)
    worst = np.abs(actual - expected).max(initial=0)
    assert worst <= bound, f"worst abs error {worst} > {bound}"


class MindFormersFlashAttention(nn.Cell):
    """MindFormers' FlashAttention cell: the primitive in __init__, all four outputs in construct."""

    def __init__(self, head_num, input_layout, sparse_mode=0, pre_tokens=65536, next_tokens=0):
        super().__init__()
        self.flash_attention = primitives.FlashAttentionScore(head_num=head_num, keep_prob=1.0,
                                                              scale_value=SCALE, pre_tokens=pre_tokens,
                                                              next_tokens=next_tokens, inner_precise=0,
                                                              input_layout=input_layout, sparse_mode=sparse_mode)

    def construct(self, query, key, value, real_shift, attn_mask):
        softmax_max, softmax_sum, softmax_out, attention_out = self.flash_attention(
            query, key, value, real_shift, None, None, attn_mask, None, None, None)
        return softmax_max, softmax_sum, softmax_out, attention_out


def _causal_case(rng, layout="BNSD", dtype="float16"):
    shapes = {"BNSD": ((B, N, S, D), (B, N2, S, D)), "BSH": ((B, S, N * D), (B, S, N2 * D))}[layout]
    q, k, v = _draw(rng, shapes[0], dtype), _draw(rng, shapes[1], dtype), _draw(rng, shapes[1], dtype)
    pse = _draw(rng, (1, N, S, S), dtype)
    mask = np.triu(np.ones((S, S), np.uint8), 1)[None, None].repeat(B, 0)      # (B, 1, S, S), 1 discards
    return q, k, v, pse, mask


@pytest.mark.parametrize("mode", ["pynative", "graph"])
def test_primitive_held_by_a_cell_returns_four_outputs(mode):
    _set_mode(mode)
    q, k, v, pse, mask = _causal_case(np.random.default_rng(0))
    net = MindFormersFlashAttention(N, "BNSD")
    softmax_max, softmax_sum, softmax_out, out = net(to_tensor(q, "float16"), to_tensor(k, "float16"),
                                                     to_tensor(v, "float16"), to_tensor(pse, "float16"),
                                                     Tensor(mask))
    want_max, want_sum, _, want_out = reference.flash_attention_score(
        q, k, v, N, real_shift=pse, attn_mask=mask, scalar_value=SCALE, pre_tokens=65536, next_tokens=0,
        input_layout="BNSD")
    assert out.dtype == ms.float16 and softmax_out.dtype == ms.float16 and softmax_out.shape == (1,)
    assert softmax_max.dtype == ms.float32 and softmax_max.shape == (B, N, S, 8)
    assert_close(to_numpy(out), want_out, "float16")
    np.testing.assert_allclose(softmax_max.asnumpy(), want_max, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(softmax_sum.asnumpy(), want_sum, rtol=1e-4, atol=1e-5)


class AttentionOut(nn.Cell):
    """A scalar loss of the primitive's attention_out, for gradients."""

    def __init__(self, cell):
        super().__init__()
        self.cell = cell

    def construct(self, query, key, value, real_shift, attn_mask, dy):
        out = self.cell(query, key, value, real_shift, attn_mask)[3]
        return (out.astype(ms.float32) * dy).sum()


@pytest.mark.parametrize("mode", ["pynative", "graph"])
def test_gradients_of_the_primitive_in_a_cell(mode):
    """ms.grad of a loss of attention_out: dq, dk, dv and d(real_shift) equal the reference backward; the mask
    gets zeros."""
    _set_mode(mode)
    rng = np.random.default_rng(1)
    q, k, v, pse, mask = _causal_case(rng)
    dy = rng.standard_normal((B, N, S, D)).astype(np.float32)
    net = AttentionOut(MindFormersFlashAttention(N, "BNSD"))
    grads = ms.grad(net, grad_position=(0, 1, 2, 3, 4))(
        to_tensor(q, "float16"), to_tensor(k, "float16"), to_tensor(v, "float16"), to_tensor(pse, "float16"),
        Tensor(mask), Tensor(dy))
    kwargs = dict(head_num=N, input_layout="BNSD", pse=pse, attn_mask=mask, scale=SCALE, pre_tokens=65536,
                  next_tokens=0)
    out, row_max, row_sum = reference.training_attention(q, k, v, **kwargs)
    # the kernel's backward starts from its own float16 forward output, as the reference does from this one
    out16 = round_to(out, "float16")
    want = reference.training_attention_grad(q, k, v, dy, row_max, row_sum, out16, **kwargs)
    for got, expected, name in zip(grads[:4], want, ("dq", "dk", "dv", "dpse")):
        assert got.dtype == ms.float16, name
        assert_grad_close(to_numpy(got), expected, "float16")
    assert not grads[4].asnumpy().any()


# Unmodified MindSpore code after install(): every module that exports the two functionals and the two primitive
# classes (MindSpore 2.10) reaches ms_attention's object, which runs.
INSTALL_CODE = textwrap.dedent("""
    import importlib, sys
    import numpy as np
    import mindspore as ms
    from mindspore import Tensor, nn
    sys.path.insert(0, %(parent)r)
    import ms_attention
    ms.set_context(mode=%(mode)s)
    ms_attention.install()

    FUNCTIONS = {
        "flash_attention_score": ["mindspore.ops", "mindspore.ops.function", "mindspore.ops.functional",
                                  "mindspore.ops.function.nn_func", "mindspore.ops.auto_generate",
                                  "mindspore.ops.auto_generate.gen_ops_def",
                                  "mindspore.ops.operations.manually_defined",
                                  "mindspore.ops.operations.manually_defined.ops_def"],
        "speed_fusion_attention": ["mindspore.ops", "mindspore.ops.function", "mindspore.ops.functional",
                                   "mindspore.ops.function.nn_func"],
    }
    CLASSES = {
        "FlashAttentionScore": ["mindspore.ops.operations.nn_ops", "mindspore.ops.auto_generate",
                                "mindspore.ops.auto_generate.gen_ops_prim", "mindspore.ops.auto_generate.gen_ops_def",
                                "mindspore.ops.operations.manually_defined",
                                "mindspore.ops.operations.manually_defined.ops_def"],
        "SpeedFusionAttention": ["mindspore.ops.auto_generate", "mindspore.ops.auto_generate.gen_ops_prim",
                                 "mindspore.ops.auto_generate.gen_ops_def"],
    }
    rng = np.random.default_rng(0)
    q = Tensor(rng.standard_normal((2, 4, 16, 32)).astype(np.float16))
    k = Tensor(rng.standard_normal((2, 2, 16, 32)).astype(np.float16))
    v = Tensor(rng.standard_normal((2, 2, 16, 32)).astype(np.float16))
    expected = ms_attention.ops.flash_attention_score(q, k, v, 4, scalar_value=0.2, input_layout="BNSD",
                                                      sparse_mode=2).asnumpy()

    class Function(nn.Cell):
        def __init__(self, fn):
            super().__init__()
            self.fn = fn
        def construct(self, q, k, v):
            # 18 positional arguments, MindSpore 2.10's order
            return self.fn(q, k, v, 4, None, None, None, None, None, None, None, 1.0, 0.2, 2147483647, 2147483647, 0,
                           "BNSD", 2)

    class SpeedFunction(nn.Cell):
        def __init__(self, fn):
            super().__init__()
            self.fn = fn
        def construct(self, q, k, v):
            return self.fn(q, k, v, 4, "BNSD", scale=0.2, sparse_mode=2)[0]

    class Primitive(nn.Cell):
        def __init__(self, cls):
            super().__init__()
            self.op = cls(head_num=4, scale_value=0.2, input_layout="BNSD", sparse_mode=2)
        def construct(self, q, k, v):
            return self.op(q, k, v, None, None, None, None)[3]

    class SpeedPrimitive(nn.Cell):
        def __init__(self, cls):
            super().__init__()
            self.op = cls()
        def construct(self, q, k, v):
            return self.op(q, k, v, 4, "BNSD", scale=0.2, sparse_mode=2)[0]

    cells = {"flash_attention_score": Function, "speed_fusion_attention": SpeedFunction,
             "FlashAttentionScore": Primitive, "SpeedFusionAttention": SpeedPrimitive}
    ours = {"flash_attention_score": ms_attention.ops.flash_attention_score,
            "speed_fusion_attention": ms_attention.ops.speed_fusion_attention,
            "FlashAttentionScore": ms_attention.primitives.FlashAttentionScore,
            "SpeedFusionAttention": ms_attention.primitives.SpeedFusionAttention}
    for name, modules in list(FUNCTIONS.items()) + list(CLASSES.items()):
        for module_name in modules:
            obj = getattr(importlib.import_module(module_name), name)
            ok = obj is ours[name]
            out = cells[name](obj)(q, k, v).asnumpy()
            ok = ok and np.array_equal(out, expected)
            print("PATH", module_name + "." + name, "OK" if ok else "WRONG")
""")


@pytest.mark.parametrize("mode", ["ms.PYNATIVE_MODE", "ms.GRAPH_MODE"])
def test_install_routes_every_public_path(mode, tmp_path):
    script = tmp_path / "model.py"
    script.write_text(INSTALL_CODE % dict(parent=PACKAGE_PARENT, mode=mode))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600,
                          cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [line for line in proc.stdout.splitlines() if line.startswith("PATH ")]
    assert len(results) == 21, proc.stdout
    assert all(line.endswith(" OK") for line in results), "\n".join(results)


class BnsdAttention(nn.Cell):
    def __init__(self):
        super().__init__()
        self.fas = primitives.FlashAttentionScore(head_num=N, scale_value=SCALE, input_layout="BNSD",
                                                  sparse_mode=3)

    def construct(self, query, key, value):
        return self.fas(query, key, value, None, None, None, None, None, None, None)[3]


class GradOf(nn.Cell):
    """Gradients with respect to every input (dy of ones), as a Cell whose inputs can be made dynamic."""

    def __init__(self, net):
        super().__init__()
        self.grad = ms_ops.GradOperation(get_all=True)(net)

    def construct(self, query, key, value):
        return self.grad(query, key, value)


def test_dynamic_shapes_forward_and_gradient():
    """One graph compiled with unknown B, S1 and S2 serves every shape, forward and backward."""
    _set_mode("graph")
    net = BnsdAttention()
    dyn = lambda: Tensor(shape=[None, None, None, D], dtype=ms.float16)
    net.set_inputs(dyn(), dyn(), dyn())
    grad_net = GradOf(BnsdAttention())
    grad_net.set_inputs(dyn(), dyn(), dyn())
    rng = np.random.default_rng(2)
    for b, s1, s2 in ((2, 24, 24), (1, 9, 40), (3, 17, 5)):
        q, k, v = _draw(rng, (b, N, s1, D)), _draw(rng, (b, N2, s2, D)), _draw(rng, (b, N2, s2, D))
        args = [to_tensor(x, "float16") for x in (q, k, v)]
        out = net(*args)
        kwargs = dict(head_num=N, input_layout="BNSD", scale=SCALE, sparse_mode=3)
        want, row_max, row_sum = reference.training_attention(q, k, v, **kwargs)
        assert_close(to_numpy(out), want, "float16")
        grads = grad_net(*args)
        dy = np.ones(q.shape)                           # ms.grad of a non-scalar output: dy of ones
        want_grads = reference.training_attention_grad(q, k, v, dy, row_max, row_sum, round_to(want, "float16"),
                                                       **kwargs)
        for got, expected in zip(grads, want_grads[:3]):
            assert got.shape == expected.shape
            assert_grad_close(to_numpy(got), expected, "float16")


class TwoLayerModel(nn.Cell):
    """Projections around FAS (the fp16 attention of a float32 model), as a training step sees it."""

    def __init__(self, hidden, seed):
        super().__init__()
        rng = np.random.default_rng(seed)
        weights = [Parameter(Tensor((rng.standard_normal((hidden, hidden)) * 0.2).astype(np.float32)), name=name)
                   for name in ("wq", "wk", "wv", "wo")]
        self.wq, self.wk, self.wv, self.wo = weights
        self.fas = primitives.FlashAttentionScore(head_num=N, scale_value=SCALE, input_layout="BSH", sparse_mode=2)

    def construct(self, x):
        query = ms_ops.matmul(x, self.wq).astype(ms.float16)
        key = ms_ops.matmul(x, self.wk).astype(ms.float16)
        value = ms_ops.matmul(x, self.wv).astype(ms.float16)
        out = self.fas(query, key, value, None, None, None, None, None, None, None)[3]
        return ms_ops.matmul(out.astype(ms.float32), self.wo)


class Loss(nn.Cell):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def construct(self, x, target):
        return ((self.model(x) - target) ** 2).mean()


def test_train_one_step_cell_in_graph_mode_applies_the_gradients():
    """nn.TrainOneStepCell in Graph mode: the update of every weight is -lr times the gradient the same model
    gets in PyNative (ms.value_and_grad), and the loss it reports is the PyNative loss."""
    hidden, lr = N * D, 0.5
    rng = np.random.default_rng(3)
    x = Tensor(rng.standard_normal((B, S, hidden)).astype(np.float32))
    target = Tensor(rng.standard_normal((B, S, hidden)).astype(np.float32))

    _set_mode("pynative")
    reference_loss = Loss(TwoLayerModel(hidden, seed=4))
    params = reference_loss.trainable_params()
    loss_value, grads = ms.value_and_grad(reference_loss, None, params)(x, target)
    assert all(np.abs(g.asnumpy()).max() > 0 for g in grads)

    _set_mode("graph")
    loss = Loss(TwoLayerModel(hidden, seed=4))
    before = [p.asnumpy().copy() for p in loss.trainable_params()]
    step = nn.TrainOneStepCell(loss, nn.SGD(loss.trainable_params(), learning_rate=lr))
    step.set_train()
    reported = step(x, target)
    np.testing.assert_allclose(reported.asnumpy(), loss_value.asnumpy(), rtol=1e-5)
    for p, old, g in zip(loss.trainable_params(), before, grads):
        np.testing.assert_allclose(p.asnumpy(), old - lr * g.asnumpy(), rtol=1e-4, atol=1e-6)


class SpeedFusion(nn.Cell):
    def construct(self, query, key, value, pse):
        return ops.speed_fusion_attention(query, key, value, N, "BSH", pse=pse, scale=SCALE, pse_type=0,
                                          sparse_mode=3)[0]


@pytest.mark.parametrize("mode", ["pynative", "graph"])
def test_speed_fusion_attention_gradients_float32(mode):
    """The functional in a Cell, float32: dq, dk, dv and dpse (pse_type 0) equal the reference backward."""
    _set_mode(mode)
    rng = np.random.default_rng(5)
    q = rng.standard_normal((B, S, N * D)).astype(np.float32)
    k = rng.standard_normal((B, S + 8, N2 * D)).astype(np.float32)
    v = rng.standard_normal((B, S + 8, N2 * D)).astype(np.float32)
    pse = rng.standard_normal((B, N, S, S + 8)).astype(np.float32)
    grads = ms.grad(SpeedFusion(), grad_position=(0, 1, 2, 3))(Tensor(q), Tensor(k), Tensor(v), Tensor(pse))
    kwargs = dict(head_num=N, input_layout="BSH", pse=pse, pse_type=0, scale=SCALE, sparse_mode=3)
    out, row_max, row_sum = reference.training_attention(q, k, v, **kwargs)
    want = reference.training_attention_grad(q, k, v, np.ones(q.shape), row_max, row_sum, out, **kwargs)
    for got, expected in zip(grads, want):
        assert got.dtype == ms.float32
        assert_grad_close(got.asnumpy(), expected, "float32")


class SpeedFusionDropout(nn.Cell):
    def construct(self, query, key, value):
        return ops.speed_fusion_attention(query, key, value, N, "BNSD", scale=SCALE, keep_prob=0.7, sparse_mode=2)


class FirstOutputLoss(nn.Cell):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def construct(self, query, key, value):
        return self.net(query, key, value)[0].sum()


@pytest.mark.parametrize("mode", ["pynative", "graph"])
def test_dropout_gradients_use_the_forward_mask(mode):
    """With generated dropout the backward regenerates the forward's mask: after ms.manual_seed, the forward
    reports (seed, offset); the same seed again gives gradients equal to the reference's for that (seed,
    offset)."""
    _set_mode(mode)
    rng = np.random.default_rng(6)
    q = rng.standard_normal((B, N, S, D)).astype(np.float32)
    k = rng.standard_normal((B, N2, S, D)).astype(np.float32)
    v = rng.standard_normal((B, N2, S, D)).astype(np.float32)
    ms.manual_seed(11)
    outputs = SpeedFusionDropout()(Tensor(q), Tensor(k), Tensor(v))
    seed, offset = int(outputs[4].asnumpy()[0]), int(outputs[5].asnumpy()[0])
    ms.manual_seed(11)
    grads = ms.grad(FirstOutputLoss(SpeedFusionDropout()), grad_position=(0, 1, 2))(Tensor(q), Tensor(k), Tensor(v))
    kwargs = dict(head_num=N, input_layout="BNSD", scale=SCALE, keep_prob=0.7, sparse_mode=2, seed=seed,
                  offset=offset)
    out, row_max, row_sum = reference.training_attention(q, k, v, **kwargs)
    np.testing.assert_allclose(outputs[0].asnumpy(), out, rtol=1e-5, atol=1e-5)
    want = reference.training_attention_grad(q, k, v, np.ones(q.shape), row_max, row_sum, out, **kwargs)
    for got, expected in zip(grads, want):
        assert_grad_close(got.asnumpy(), expected, "float32")


class VarlenAttention(nn.Cell):
    """Varlen packing: TND with the cumulative lengths as Tensor inputs, causal per batch (sparse_mode 3)."""

    def construct(self, query, key, value, actual_seq_qlen, actual_seq_kvlen):
        return ops.flash_attention_score(query, key, value, N, actual_seq_qlen=actual_seq_qlen,
                                         actual_seq_kvlen=actual_seq_kvlen, scalar_value=SCALE, input_layout="TND",
                                         sparse_mode=3)


def test_dynamic_tnd_varlen_forward_and_gradient():
    """One graph with unknown T1, T2 and batch count serves every packing, forward and backward."""
    _set_mode("graph")
    dyn = lambda: Tensor(shape=[None, None, D], dtype=ms.float16)
    lens = lambda: Tensor(shape=[None], dtype=ms.int64)
    net, grad_net = VarlenAttention(), GradOfVarlen(VarlenAttention())
    net.set_inputs(dyn(), dyn(), dyn(), lens(), lens())
    grad_net.set_inputs(dyn(), dyn(), dyn(), lens(), lens())
    rng = np.random.default_rng(7)
    for q_lens, kv_lens in (([5, 11], [9, 11]), ([3, 0, 20], [3, 7, 25]), ([16], [16])):
        qlen, kvlen = np.cumsum(q_lens), np.cumsum(kv_lens)
        q, k, v = _draw(rng, (qlen[-1], N, D)), _draw(rng, (kvlen[-1], N2, D)), _draw(rng, (kvlen[-1], N2, D))
        args = [to_tensor(x, "float16") for x in (q, k, v)] + [Tensor(qlen), Tensor(kvlen)]
        kwargs = dict(head_num=N, input_layout="TND", actual_seq_qlen=qlen, actual_seq_kvlen=kvlen, scale=SCALE,
                      sparse_mode=3)
        want, row_max, row_sum = reference.training_attention(q, k, v, **kwargs)
        assert_close(to_numpy(net(*args)), want, "float16")
        want_grads = reference.training_attention_grad(q, k, v, np.ones(q.shape), row_max, row_sum,
                                                       round_to(want, "float16"), **kwargs)
        for got, expected in zip(grad_net(*args), want_grads[:3]):
            assert_grad_close(to_numpy(got), expected, "float16")


class GradOfVarlen(nn.Cell):
    def __init__(self, net):
        super().__init__()
        self.grad = ms_ops.GradOperation(get_all=True)(net)

    def construct(self, query, key, value, actual_seq_qlen, actual_seq_kvlen):
        return self.grad(query, key, value, actual_seq_qlen, actual_seq_kvlen)[:3]
