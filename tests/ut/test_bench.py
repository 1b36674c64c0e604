"""The benchmark harness: machine limits are positive, the comparisons compute the same attention as ours, and
a smoke run writes a well-formed JSON report and a PNG chart. No timing is asserted."""
import importlib.util
import json
import os

import numpy as np
import pytest
import mindspore as ms

from ms_attention import __main__ as cli
from ms_attention import bench_compare, bench_decode, machine, ops
from ms_attention.bench_common import random_values
from ms_attention.kernels.cpu import loader

needs_library = pytest.mark.skipif(loader.library() is None, reason="no native kernel library on this machine")


@needs_library
def test_machine_limits_are_positive():
    assert machine.num_threads() >= 1
    assert machine.read_gbps(megabytes=32, repeats=2) > 0
    assert machine.fp32_fma_gflops(seconds=0.02, repeats=1) > 0
    bf16 = machine.bf16_dot_gflops(seconds=0.02, repeats=1)
    assert bf16 is None or bf16 > 0
    if "avx512_bf16" in loader.library().isa:
        assert bf16 is not None
    read, copy = machine.numpy_bandwidth_gbps(megabytes=16, repeats=1)
    assert read > 0 and copy > 0


def test_paged_cache_holds_the_same_keys():
    rng = np.random.default_rng(0)
    values = rng.standard_normal((2, 3, 64, 4)).astype(np.float32)
    order = rng.permutation(2 * 64 // 16)
    cache, table = bench_decode.paged_cache(values, 16, order)
    for b in range(2):
        for t in range(64):
            np.testing.assert_array_equal(cache[table[b, t // 16], :, t % 16], values[b, :, t])


def test_composed_batch_is_a_multiple_of_the_threads_within_the_cap():
    assert bench_compare.composed_batch(2, 4, 10, 100, 2) == 8
    assert bench_compare.composed_batch(4, 8, 10, 100, 4) == 8
    assert bench_compare.composed_batch(4, 8, 1000, 100, 2) == 2


def _close(a, b, tol):
    np.testing.assert_allclose(a.astype(np.float32), b.astype(np.float32), rtol=tol, atol=tol)


@needs_library
def test_comparisons_compute_our_attention_decode_gqa():
    rng = np.random.default_rng(1)
    b, n, kvn, s, d = 2, 4, 2, 96, 32
    q, k, v = (random_values(rng, shape, "float32") for shape in ((b, n, 1, d), (b, kvn, s, d), (b, kvn, s, d)))
    ms.set_context(mode=ms.PYNATIVE_MODE)
    ours = ops.incre_flash_attention(ms.Tensor(q, ms.float16), [ms.Tensor(k, ms.float16)],
                                     [ms.Tensor(v, ms.float16)], num_heads=n, num_key_value_heads=kvn,
                                     input_layout="BNSD", scale_value=d ** -0.5).asnumpy()
    for dtype in ("float16", "float32"):
        _close(bench_compare.ComposedAttention(q, k, v, dtype, d ** -0.5, False).output(), ours, 5e-3)
    torch = bench_compare.torch_module()
    if torch is not None:
        _close(bench_compare.torch_attention(torch, q, k, v, "float16", d ** -0.5, False)(), ours, 5e-3)


@needs_library
@pytest.mark.parametrize("causal", [False, True])
def test_comparisons_compute_our_attention_prefill(causal):
    rng = np.random.default_rng(2)
    b, n, s, d = 1, 2, 80, 32
    q, k, v = (random_values(rng, (b, n, s, d), "float32") for _ in range(3))
    ms.set_context(mode=ms.PYNATIVE_MODE)
    extra = dict(attn_mask=ms.Tensor(np.triu(np.ones((2048, 2048), np.bool_), 1)), sparse_mode=3) if causal else {}
    ours = ops.prompt_flash_attention(*(ms.Tensor(x, ms.float16) for x in (q, k, v)), num_heads=n,
                                      scale_value=d ** -0.5, input_layout="BNSD", **extra).asnumpy()
    _close(bench_compare.ComposedAttention(q, k, v, "float32", d ** -0.5, causal).output(), ours, 5e-3)
    torch = bench_compare.torch_module()
    if torch is not None:
        _close(bench_compare.torch_attention(torch, q, k, v, "float16", d ** -0.5, causal)(), ours, 5e-3)


@needs_library
def test_torch_training_step_computes_our_gradients():
    torch = bench_compare.torch_module()
    if torch is None:
        pytest.skip("torch is not installed")
    rng = np.random.default_rng(3)
    b, n, s, d = 1, 2, 64, 32
    q, k, v = (random_values(rng, (b, n, s, d), "float32") for _ in range(3))
    weight = rng.standard_normal((b, n, s, d)).astype(np.float32)
    ms.set_context(mode=ms.PYNATIVE_MODE)
    mask = ms.Tensor(np.triu(np.ones((2048, 2048), np.bool_), 1))
    w = ms.Tensor(weight)

    def loss(tq, tk, tv):
        out = ops.flash_attention_score(tq, tk, tv, n, attn_mask=mask, scalar_value=d ** -0.5,
                                        input_layout="BNSD", sparse_mode=3)
        return (out.astype(ms.float32) * w).sum()

    ours = ms.grad(loss, grad_position=(0, 1, 2))(*(ms.Tensor(x, ms.float16) for x in (q, k, v)))
    theirs = bench_compare.torch_training_step(torch, q, k, v, weight, "float32", d ** -0.5, True)()
    for mine, other in zip(ours, theirs):
        mine = mine.asnumpy().astype(np.float32)
        assert np.abs(mine - other).max() <= 1e-2 * np.abs(other).max()


@needs_library
def test_smoke_bench_writes_json_and_png(tmp_path, capsys):
    report_path, chart_path = tmp_path / "bench.json", tmp_path / "bench.png"
    assert cli.main(["bench", "--smoke", "--only", "decode,latency,prefill,training", "--json", str(report_path),
                     "--png", str(chart_path)]) == 0
    printed = capsys.readouterr().out
    report = json.loads(report_path.read_text())
    assert set(report) >= {"environment", "settings", "limits", "limits_end", "limits_used", "rows", "summary"}
    for key in ("cpu", "cores", "threads", "MS_ATTENTION_NUM_THREADS", "OPENBLAS_CORETYPE", "mindspore", "numpy",
                "torch", "library_variant", "library_isa"):
        assert key in report["environment"]
    assert report["limits"]["read_GBps"] > 0 and report["limits"]["fp32_fma_GFLOPs"] > 0
    groups = {row["group"] for row in report["rows"]}
    assert groups == {"decode", "paged", "latency", "prefill", "training"}
    decode = [row for row in report["rows"] if row["group"] == "decode"]
    assert {row["shape"]["kv"] for row in decode} == {"float16", "bfloat16", "int8"}
    assert {row["mode"] for row in decode} == {"pynative", "graph"}
    for row in report["rows"]:
        assert row["ms"] > 0 and row["case"] in printed
        assert row["target_met"] in (True, False, None)
        if row["group"] == "decode":
            assert 0 < row["of_roof"] and row["of_limit"] > 0
            assert row["ms_fp32_ms"] is None if row["shape"]["kv"] == "int8" else row["ms_fp32_ms"] > 0
    assert chart_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # the generated part of docs/performance.md comes from this report
    path = os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks", "performance_doc.py")
    spec = importlib.util.spec_from_file_location("performance_doc", path)
    performance_doc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(performance_doc)
    doc = tmp_path / "performance.md"
    doc.write_text(f"# title\n{performance_doc.BEGIN}\nold\n{performance_doc.END}\ntail\n")
    performance_doc.main(str(report_path), str(doc))
    text = doc.read_text()
    assert "old" not in text and text.startswith("# title") and text.rstrip().endswith("tail")
    for row in report["rows"]:
        assert row["case"] in text
