"""The generated API equals the YAML, and the YAML equals MindSpore 2.10's own operators (torch_npu's prototype
for the two ops MindSpore lacks), so drift is caught the day it happens."""
import inspect
import os
import re

import mindspore
import pytest
from mindspore.ops import auto_generate

from ms_attention import codegen, opdef, ops, primitives

OPS = opdef.names()
SEEDS = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "seeds")


def _params(sig, drop_private=True):
    return [(p.name, p.kind, p.default) for p in sig.parameters.values()
            if not (drop_private and p.name.startswith("_")) and p.name != "self"]


def test_every_spec_operator_is_declared():
    assert set(OPS) == {"incre_flash_attention", "prompt_flash_attention", "fused_infer_attention_score",
                        "fused_infer_attention_score_v2", "flash_attention_score", "speed_fusion_attention",
                        "sparse_flash_attention", "advance_step_flashattn"}


def test_generated_files_are_fresh():
    assert codegen.stale_files() == [], "run `python -m ms_attention.codegen`"


@pytest.mark.parametrize("name", OPS)
def test_functional_matches_yaml(name):
    op = opdef.get(name)
    sig = inspect.signature(getattr(ops, op.function_name))
    assert [p.name for p in sig.parameters.values()] == [fa.name for fa in op.function_args]
    for fa in op.function_args:
        p = sig.parameters[fa.name]
        assert (p.default is inspect.Parameter.empty) == (not fa.arg.has_default)
        if fa.arg.has_default:
            assert p.default == fa.arg.default


def _mindspore_functional_params(name):
    fn = getattr(mindspore.ops, name)
    sig = inspect.signature(fn)
    if list(sig.parameters) == ["args", "kwargs"]:  # sparse_flash_attention: the signature is in the doc
        first = fn.__doc__.strip().splitlines()[0]
        text = first[first.index("(") + 1:first.index(") ->")].replace("2^63-1", str(2 ** 63 - 1))
        sig = inspect.signature(eval(f"lambda {text}: None"))  # pylint: disable=eval-used
    return _params(sig)


MS_OPS = [n for n in OPS if opdef.get(n).source == "mindspore"]


@pytest.mark.parametrize("name", MS_OPS)
def test_functional_matches_mindspore(name):
    ours = _params(inspect.signature(getattr(ops, name)))
    assert ours == _mindspore_functional_params(name)


@pytest.mark.parametrize("name", MS_OPS)
def test_yaml_matches_mindspore_primitive(name):
    op = opdef.get(name)
    theirs = getattr(auto_generate, op.class_name)
    init = _params(inspect.signature(theirs.__init__))
    call = _params(inspect.signature(theirs.__call__))
    assert [(a.name, a.default if a.has_default else inspect.Parameter.empty) for a in op.init_args] == \
        [(n, d) for n, _, d in init]
    # A generated input MindSpore's primitive lacks is ours (FAS's dropout seed/offset, a decision in its YAML).
    theirs_names = {n for n, _, _ in call}
    ours = [a for a in op.inputs if not (a.generated and a.name not in theirs_names)]
    assert [(a.name, a.default if a.has_default else inspect.Parameter.empty) for a in ours] == \
        [(n, d) for n, _, d in call]


@pytest.mark.parametrize("name", OPS)
def test_primitive_matches_yaml(name):
    op = opdef.get(name)
    cls = getattr(primitives, op.class_name)
    init = _params(inspect.signature(cls.__init__))
    call = _params(inspect.signature(cls.__call__))
    assert [n for n, _, _ in init] == [a.name for a in op.init_args]
    assert [n for n, _, _ in call] == [a.name for a in op.inputs if not a.generated]


@pytest.mark.parametrize("name", [n for n in OPS if opdef.get(n).source == "torch_npu"])
def test_torch_npu_ops_match_prototype(name):
    """The torch_npu-only ops follow the prototype in the seed documents (when shared/ is beside the repo)."""
    op = opdef.get(name)
    docs = {"fused_infer_attention_score_v2": "torch_npu_fused_infer_attention_score_v2.md",
            "advance_step_flashattn": "npu_flash_attention_overview.md"}
    path = os.path.join(SEEDS, docs[name])
    if not os.path.exists(path):
        pytest.skip("shared/seeds is not beside the repository")
    text = open(path, encoding="utf-8").read()
    if name == "fused_infer_attention_score_v2":
        proto = re.search(r"npu_fused_infer_attention_score_v2\((.*?)\) ->", text, re.S).group(1)
        names = [re.sub(r"=.*", "", part.strip()).split()[-1] for part in proto.split(",")
                 if part.strip() and part.strip() != "*"]
        # [decision in the YAML] the shared-prefix tensors the prototype's dtype attributes refer to
        at = names.index("learnable_sink") + 1
        names[at:at] = ["key_shared_prefix", "value_shared_prefix", "actual_shared_prefix_len"]
    else:
        # the documented example passes variables named after the parameters, positionally and in order
        call = re.search(r"torch_npu\.npu_advance_step_flashattn\((.*?)\)", text, re.S).group(1)
        names = [part.strip() for part in call.split(",") if part.strip()]
        assert len(names) == 9
    assert [fa.name for fa in op.function_args] == names


def test_internal_ops_have_a_cpu_path_but_no_public_surface():
    internal = opdef.load_internal()
    assert "flash_attention_score_grad" in internal
    for name, op in internal.items():
        assert name not in OPS and op.internal
        assert callable(getattr(ops, f"_{name}")) and name not in ops.__all__
        assert not hasattr(primitives, op.class_name) or op.class_name not in primitives.__all__
