"""KernelPrimitive, the Custom op under every operator, declares from the YAML what later operators need:
several outputs (dtypes from the infer module, shapes from the kernel's C++ InferShape, so dynamic shapes work),
an input updated in place (the `side_effect_mem` label) and a bprop hook for gradients. A toy kernel compiled
for the test exercises each of them in PyNative and Graph mode."""
import os
import shutil
import subprocess

import numpy as np
import pytest
import yaml
import mindspore as ms
from mindspore import Parameter, Tensor, nn
from mindspore import ops as ms_ops

from ms_attention import opdef
from ms_attention.primitive_base import KernelPrimitive

TOY_SOURCE = os.path.join(os.path.dirname(__file__), "toy_kernel", "toy_stats.cpp")
TOY_OP = opdef.parse("toy_stats", yaml.safe_load("""
args:
  x: {dtype: tensor}
  state: {dtype: tensor}
  scale: {dtype: float, default: 1.0, prim_init: True}
returns:
  y: {dtype: tensor}
  rowsum: {dtype: tensor}
labels: {side_effect_mem: True}
class: {name: ToyStats}
function: {name: toy_stats, signature: [x, state, scale]}
"""))


class ToyInfer:
    """What an infer module provides, for the toy operator."""

    @staticmethod
    def check_attrs(scale):
        return {"scale": float(scale)}

    @staticmethod
    def output_dtypes(attrs, dtypes):
        return (dtypes["x"], "float32")

    @staticmethod
    def bprop(attrs, absent):
        assert absent == {"x": False, "state": False}
        scale = attrs["scale"]

        def toy_bprop(x, state, vector, out, dout):
            dx = dout[0] * scale + ms_ops.broadcast_to(dout[1], x.shape)
            return dx, ms_ops.zeros_like(state), ms_ops.zeros_like(vector)
        return toy_bprop


@pytest.fixture(scope="module")
def toy_library(tmp_path_factory):
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler")
    path = str(tmp_path_factory.mktemp("toy") / "libtoy_stats.so")
    subprocess.run([cxx, "-std=c++17", "-O2", "-fPIC", "-shared", "-D_GLIBCXX_USE_CXX11_ABI=0", TOY_SOURCE,
                    "-o", path], check=True)
    return path


SCALE = 2.0
VECTOR = Tensor(np.array([SCALE], np.float64))


class ToyNet(nn.Cell):
    def __init__(self, library):
        super().__init__()
        self.kernel = KernelPrimitive("toy_stats", (SCALE,), (False, False), op=TOY_OP, module=ToyInfer,
                                      library_path=library)
        self.state = Parameter(Tensor(np.zeros((3,), np.int32)), name="state")

    def construct(self, x):
        return self.kernel(x, self.state, VECTOR)


def _set_mode(mode):
    ms.set_context(mode=ms.GRAPH_MODE if mode == "graph" else ms.PYNATIVE_MODE)


@pytest.mark.parametrize("mode", ["pynative", "graph"])
def test_two_outputs_and_an_input_updated_in_place(mode, toy_library):
    _set_mode(mode)
    net = ToyNet(toy_library)
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    for step in range(1, 3):
        y, rowsum = net(Tensor(x))
        np.testing.assert_allclose(y.asnumpy(), x * SCALE)
        np.testing.assert_allclose(rowsum.asnumpy(), x.sum(1, keepdims=True))
        assert rowsum.dtype == ms.float32 and y.dtype == ms.float32
        assert net.state.asnumpy().tolist() == [step] * 3


def test_several_outputs_with_dynamic_shapes(toy_library):
    _set_mode("graph")
    net = ToyNet(toy_library)
    net.set_inputs(Tensor(shape=[None, None], dtype=ms.float32))
    for rows, cols in ((4, 3), (7, 5), (1, 9)):
        x = np.random.default_rng(rows).standard_normal((rows, cols)).astype(np.float32)
        y, rowsum = net(Tensor(x))
        assert y.shape == (rows, cols) and rowsum.shape == (rows, 1)
        np.testing.assert_allclose(rowsum.asnumpy(), x.sum(1, keepdims=True), rtol=1e-5)


@pytest.mark.parametrize("mode", ["pynative", "graph"])
def test_bprop_hook_gives_gradients(mode, toy_library):
    _set_mode(mode)
    net = ToyNet(toy_library)
    x = Tensor(np.ones((2, 3), np.float32))
    grad = ms.grad(net, grad_position=0)(x)
    np.testing.assert_allclose(grad.asnumpy(), np.full((2, 3), SCALE + 1.0))


class StateOnly(nn.Cell):
    """Ignores the outputs: only the side_effect_mem label keeps the in-place update in the graph."""

    def __init__(self, library):
        super().__init__()
        self.toy = ToyNet(library)

    def construct(self, x):
        self.toy(x)
        return self.toy.state + 0


def test_in_place_update_kept_when_outputs_are_unused(toy_library):
    _set_mode("graph")
    net = StateOnly(toy_library)
    x = Tensor(np.ones((2, 3), np.float32))
    assert net(x).asnumpy().tolist() == [1] * 3
    assert net(x).asnumpy().tolist() == [2] * 3
