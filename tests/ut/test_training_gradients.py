"""Gradients of the training operators through MindSpore's autodiff front ends: the kernel's gradients against
central finite differences of the kernel's own forward (float32 speed_fusion_attention), and mindspore.grad,
GradOperation and nn.TrainOneStepCell against the numpy golden, in PyNative, Graph and jit."""
import mindspore as ms
import numpy as np
import pytest
from mindspore import Parameter, Tensor, nn
from mindspore.ops import GradOperation

from ifa_cases import round_to, to_numpy
from training_cases import FAS, TrainingCase, assert_close
from ms_attention import ops
from ms_attention.primitives import FlashAttentionScore


# ---- the kernel's gradients by finite differences -----------------------------------------------------------

DROPOUT_SEED = 17


def _sfa_loss(arrays, weight, attrs):
    """sum(attention_out * weight) of one PyNative call, in float64; a generated dropout mask is the same for
    every call (manual_seed right before it: seed DROPOUT_SEED, offset 0)."""
    ms.set_context(mode=ms.PYNATIVE_MODE)
    ms.manual_seed(DROPOUT_SEED)
    tensors = {name: Tensor(x) for name, x in arrays.items()}
    out = ops.speed_fusion_attention(tensors.pop("query"), tensors.pop("key"), tensors.pop("value"), **tensors,
                                     **attrs)[0]
    return float(np.sum(out.asnumpy().astype(np.float64) * weight))


@pytest.mark.parametrize("pse_type,sparse_mode,keep_prob", [(1, 0, 1.0), (0, 3, 1.0), (1, 2, 0.7)])
def test_kernel_gradients_match_finite_differences(pse_type, sparse_mode, keep_prob):
    """float32 SFA, GQA, a pse, a mask or a causal mode, and generated dropout: every element of dq, dk, dv and
    dpse against (f(x + eps) - f(x - eps)) / 2 eps of the kernel's forward."""
    case = TrainingCase("sfa", b=1, n1=2, n2=1, s1=3, s2=5, d=4, layout="BSH", dtype="float32", seed=40)
    case.add_pse((1, 2, 3, 5), pse_type)
    case.attrs.update(scale=0.7, sparse_mode=sparse_mode)
    attrs = dict(head_num=2, input_layout="BSH", scale=0.7, pse_type=pse_type, sparse_mode=sparse_mode,
                 keep_prob=keep_prob)
    if sparse_mode == 0:
        mask = np.zeros((3, 5), bool)
        mask[1, 3:] = True
        case.add("attn_mask", mask, "bool")
        case.attrs.update(pre_tokens=1, next_tokens=1)
        attrs.update(atten_mask=case.ms["attn_mask"], pre_tokens=1, next_tokens=1)
    if keep_prob < 1.0:
        case.dropout(keep_prob, seed=DROPOUT_SEED)
    weight = case.draw_dy().astype(np.float64)
    _, grads = case.run_grads("pynative", weight.astype(np.float32))
    arrays = {name: case.np[name].astype(np.float32).copy() for name in ("query", "key", "value", "pse")}
    eps = 1e-2
    for name, x in arrays.items():
        numeric = np.zeros(x.shape)
        for idx in np.ndindex(x.shape):
            saved = x[idx]
            x[idx] = saved + eps
            plus = _sfa_loss(arrays, weight, attrs)
            x[idx] = saved - eps
            minus = _sfa_loss(arrays, weight, attrs)
            x[idx] = saved
            numeric[idx] = (plus - minus) / (2 * eps)
        np.testing.assert_allclose(grads[name], numeric, rtol=2e-2, atol=2e-3, err_msg=f"d{name}")


# ---- mindspore.grad, GradOperation, TrainOneStepCell --------------------------------------------------------

def _golden_grads(case, dy):
    """The golden's gradients of sum(out * dy). As the contract's backward, its Dsum reads the forward output
    the kernel stored (attention_in, float16)."""
    _, softmax_max, softmax_sum = case.expected()
    stored = case.run_forward("pynative")["attention_out"]
    return case.expected_grads(dy, softmax_max, softmax_sum, stored)


class FlashAttentionLoss(nn.Cell):
    """sum(flash_attention_score(q, k, v, real_shift) * dy), as a network calls the functional."""

    def __init__(self, head_num, scale, sparse_mode):
        super().__init__()
        self.head_num, self.scale, self.sparse_mode = head_num, scale, sparse_mode

    def construct(self, query, key, value, real_shift, dy):
        out = ops.flash_attention_score(query, key, value, self.head_num, real_shift=real_shift,
                                        scalar_value=self.scale, input_layout="BSH", sparse_mode=self.sparse_mode)
        return (out.astype(ms.float32) * dy).sum()


class PrimitiveLoss(nn.Cell):
    """The FlashAttentionScore primitive held by a Cell, as MindFormers' FlashAttention cell does."""

    def __init__(self, head_num, scale, sparse_mode):
        super().__init__()
        self.fa = FlashAttentionScore(head_num=head_num, scale_value=scale, input_layout="BSH",
                                      sparse_mode=sparse_mode)

    def construct(self, query, key, value, real_shift, dy):
        _, _, _, out = self.fa(query, key, value, real_shift, None, None, None, None, None, None)
        return (out.astype(ms.float32) * dy).sum()


def _case():
    case = TrainingCase(FAS, b=2, n1=4, n2=2, s1=5, s2=9, d=16, layout="BSH", seed=41)
    case.add_pse((1, 4, 5, 9))
    case.attrs.update(sparse_mode=3, scale=0.25)
    return case


def _inputs(case, dy):
    return (case.ms["query"], case.ms["key"], case.ms["value"], case.ms["pse"], Tensor(dy, ms.float32))


def _check(case, dy, grads):
    want = _golden_grads(case, dy)
    for name, g in zip(("query", "key", "value", "pse"), grads):
        assert g.shape == case.ms[name].shape and g.dtype == case.ms[name].dtype, (name, g.shape, g.dtype)
        assert_close(to_numpy(g), want[name], case.dtype, "d" + name)


class _Grad(nn.Cell):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def construct(self, *args):
        return self.fn(*args)


def _call(mode, fn, args):
    if mode == "graph":
        ms.set_context(mode=ms.GRAPH_MODE)
        return _Grad(fn)(*args)
    ms.set_context(mode=ms.PYNATIVE_MODE)
    return ms.jit(fn)(*args) if mode == "jit" else fn(*args)


@pytest.mark.parametrize("net", [FlashAttentionLoss, PrimitiveLoss])
def test_mindspore_grad(mode, net):
    case = _case()
    dy = case.draw_dy()
    grad_fn = ms.grad(net(4, 0.25, 3), grad_position=(0, 1, 2, 3))
    _check(case, dy, _call(mode, grad_fn, _inputs(case, dy)))


@pytest.mark.parametrize("net", [FlashAttentionLoss, PrimitiveLoss])
def test_grad_operation(mode, net):
    case = _case()
    dy = case.draw_dy()
    grads = _call(mode, GradOperation(get_all=True)(net(4, 0.25, 3)), _inputs(case, dy))
    assert len(grads) == 5                       # q, k, v, real_shift and dy
    _check(case, dy, grads[:4])


class AttentionWithParameters(nn.Cell):
    """float32 parameters cast to float16 for the operator, so an SGD step of rate 1 moves each parameter by
    exactly its float32 gradient (the float16 gradient widened)."""

    def __init__(self, case):
        super().__init__()
        self.query = Parameter(Tensor(case.np["query"], ms.float32), name="query")
        self.key = Parameter(Tensor(case.np["key"], ms.float32), name="key")
        self.value = Parameter(Tensor(case.np["value"], ms.float32), name="value")
        self.pse = Parameter(Tensor(case.np["pse"], ms.float32), name="pse")
        self.fa = FlashAttentionScore(head_num=4, scale_value=0.25, input_layout="BSH", sparse_mode=3)

    def construct(self, dy):
        h = ms.float16
        _, _, _, out = self.fa(self.query.astype(h), self.key.astype(h), self.value.astype(h),
                               self.pse.astype(h), None, None, None, None, None, None)
        return (out.astype(ms.float32) * dy).sum()


def test_train_one_step_cell(mode):
    case = _case()
    dy = case.draw_dy()
    net = AttentionWithParameters(case)
    params = [net.query, net.key, net.value, net.pse]
    before = [p.asnumpy().copy() for p in params]
    step = nn.TrainOneStepCell(net, nn.SGD(params, learning_rate=1.0))
    if mode == "graph":
        ms.set_context(mode=ms.GRAPH_MODE)
        step(Tensor(dy, ms.float32))
    else:
        ms.set_context(mode=ms.PYNATIVE_MODE)
        (ms.jit(step.construct) if mode == "jit" else step)(Tensor(dy, ms.float32))
    want = _golden_grads(case, dy)
    for name, p, old in zip(("query", "key", "value", "pse"), params, before):
        moved = old.astype(np.float64) - p.asnumpy().astype(np.float64)
        assert_close(round_to(moved, "float16"), want[name], "float16", "d" + name)
