"""Shared fixtures: the execution mode every numeric test runs in, and the Ascend marker's skip."""
import mindspore as ms
import pytest

MODES = ("pynative", "graph", "jit")


@pytest.fixture(params=MODES)
def mode(request):
    """pynative: eager calls; graph: an nn.Cell in GRAPH_MODE; jit: an ms.jit function (PyNative context)."""
    yield request.param
    ms.set_context(mode=ms.PYNATIVE_MODE)


def pytest_collection_modifyitems(config, items):
    on_ascend = ms.get_context("device_target") == "Ascend"
    skip = pytest.mark.skip(reason="needs an Atlas A2 NPU (device_target Ascend)")
    for item in items:
        if "ascend" in item.keywords and not on_ascend:
            item.add_marker(skip)
