"""A short training run on CPU: a two-layer causal attention model whose attention is flash_attention_score
(float16, with dropout drawn from MindSpore's generator), trained in Graph mode with nn.TrainOneStepCell. The loss
must come down."""
import mindspore as ms
import numpy as np
from mindspore import Tensor, nn
from mindspore import ops as msops

from ms_attention import ops

HIDDEN, HEADS, SEQ, BATCH = 32, 4, 12, 3


class CausalSelfAttention(nn.Cell):
    def __init__(self):
        super().__init__()
        self.qkv = nn.Dense(HIDDEN, 3 * HIDDEN)
        self.proj = nn.Dense(HIDDEN, HIDDEN)
        self.norm = nn.LayerNorm((HIDDEN,))
        self.scale = 1.0 / np.sqrt(HIDDEN // HEADS)

    def construct(self, x):
        q, k, v = msops.split(self.qkv(self.norm(x)), HIDDEN, axis=-1)
        h = ms.float16
        out = ops.flash_attention_score(q.astype(h), k.astype(h), v.astype(h), HEADS, keep_prob=0.9,
                                        scalar_value=self.scale, input_layout="BSH", sparse_mode=2)
        return x + self.proj(out.astype(ms.float32))


class TwoLayerModel(nn.Cell):
    def __init__(self):
        super().__init__()
        self.embed = nn.Dense(4, HIDDEN)
        self.layers = nn.SequentialCell([CausalSelfAttention(), CausalSelfAttention()])
        self.head = nn.Dense(HIDDEN, 1)

    def construct(self, x):
        return self.head(self.layers(self.embed(x)))


def test_two_layer_attention_model_learns_a_causal_running_mean():
    """Target: the running mean of the first input feature, which needs attention over the past."""
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_seed(0)
    ms.manual_seed(0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((BATCH, SEQ, 4)).astype(np.float32)
    target = np.cumsum(x[..., :1], axis=1) / np.arange(1, SEQ + 1)[None, :, None]
    model = TwoLayerModel()
    step = nn.TrainOneStepCell(nn.WithLossCell(model, nn.MSELoss()),
                               nn.Adam(model.trainable_params(), learning_rate=3e-3))
    inputs, labels = Tensor(x), Tensor(target.astype(np.float32))
    losses = [float(step(inputs, labels).asnumpy()) for _ in range(40)]
    ms.set_context(mode=ms.PYNATIVE_MODE)
    assert all(np.isfinite(losses)), losses
    assert np.mean(losses[-5:]) < 0.2 * np.mean(losses[:5]), losses
