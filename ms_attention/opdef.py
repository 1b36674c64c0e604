"""ops_yaml/ -> typed OpDef: the one source of operator names, argument order, defaults and returns.

Each ``ops_yaml/<op>_op.yaml`` uses MindSpore's op_def dialect. ``args`` lists the primitive's arguments in
MindSpore's order: call inputs, then the ``prim_init`` attributes in ``__init__`` order. ``function.signature``
gives the functional's order; an entry ``a=b`` names the functional keyword ``a`` for the primitive argument
``b`` (FIA's ``atten_mask=attn_mask``). ``generated: True`` marks an input the functional makes itself.

``ops_yaml/internal/`` holds operators users never call (the backward of the training operators): the same
dialect with an inline ``description`` instead of a doc file. They get a CPU path and a kernel ABI entry, but no
functional, primitive class or install() entry.
"""
import ast
import dataclasses
import functools
import os
from typing import Any, Dict, List, Optional, Tuple

import yaml

_NO_DEFAULT = object()


def yaml_dir() -> str:
    """Where the op_def YAML lives: inside the installed package, else the source tree's ops_yaml/."""
    here = os.path.dirname(os.path.abspath(__file__))
    for candidate in (os.path.join(here, "_ops_yaml"), os.path.join(os.path.dirname(here), "ops_yaml")):
        if os.path.isdir(candidate):
            return candidate
    raise FileNotFoundError("ms_attention: the op_def YAML folder (ops_yaml/) is missing from the installation")


@dataclasses.dataclass(frozen=True)
class ArgDef:
    name: str
    dtype: str
    default: Any = _NO_DEFAULT
    prim_init: bool = False
    type_cast: Tuple[str, ...] = ()
    arg_handler: Optional[str] = None
    generated: bool = False

    @property
    def has_default(self) -> bool:
        return self.default is not _NO_DEFAULT

    @property
    def is_tensor_list(self) -> bool:
        return any(t in ("tuple[tensor]", "list[tensor]") for t in self.type_cast)

    @property
    def is_int_sequence(self) -> bool:
        return any(t in ("tuple[int]", "list[int]") for t in self.type_cast)


@dataclasses.dataclass(frozen=True)
class FunctionArg:
    name: str        # the functional's keyword
    arg: ArgDef      # the primitive argument it feeds


@dataclasses.dataclass(frozen=True)
class OpDef:
    name: str
    class_name: str
    args: Tuple[ArgDef, ...]
    returns: Tuple[str, ...]
    function_name: str
    function_args: Tuple[FunctionArg, ...]
    function_returns: Tuple[str, ...]
    keyword_only_after: Optional[str]
    ascend_primitive: Optional[str]
    source: str
    torch_npu_name: Optional[str]
    doc: str
    labels: Tuple[Tuple[str, Any], ...] = ()
    limits: Tuple[Tuple[str, int], ...] = ()   # documented size limits, checked in Python and in the kernel
    internal: bool = False                     # ops_yaml/internal/: no public functional or primitive

    def limit(self, name: str) -> int:
        return dict(self.limits)[name]

    def label(self, name: str, default: Any = None) -> Any:
        return dict(self.labels).get(name, default)

    @property
    def inputs(self) -> Tuple[ArgDef, ...]:
        """The primitive's call inputs, in order (generated ones included)."""
        return tuple(a for a in self.args if not a.prim_init)

    @property
    def init_args(self) -> Tuple[ArgDef, ...]:
        return tuple(a for a in self.args if a.prim_init)

    @property
    def tensor_inputs(self) -> Tuple[ArgDef, ...]:
        """What the kernel receives as tensors, in order (absent optional ones as shape-(0,) tensors)."""
        return tuple(a for a in self.args if a.dtype == "tensor")

    @property
    def attributes(self) -> Tuple[ArgDef, ...]:
        """Every scalar argument, in order: they travel to the kernel as one float64 vector (see kernel_abi.h)."""
        return tuple(a for a in self.args if a.dtype != "tensor")

    def arg(self, name: str) -> ArgDef:
        for a in self.args:
            if a.name == name:
                return a
        raise KeyError(f"{self.name} has no argument {name!r}")


def _parse_default(text: Any) -> Any:
    """MindSpore writes defaults as Python literals: None, 1.0, "'BSH'"."""
    if isinstance(text, str):
        if text == "None":
            return None
        return ast.literal_eval(text)
    return text


def _parse_arg(name: str, spec: Dict[str, Any]) -> ArgDef:
    casts = spec.get("type_cast")
    return ArgDef(
        name=name,
        dtype=spec["dtype"],
        default=_parse_default(spec["default"]) if "default" in spec else _NO_DEFAULT,
        prim_init=bool(spec.get("prim_init", False)),
        type_cast=tuple(c.strip() for c in casts.split(",")) if casts else (),
        arg_handler=spec.get("arg_handler"),
        generated=bool(spec.get("generated", False)),
    )


def _load_doc(name: str) -> str:
    path = os.path.join(yaml_dir(), "doc", f"{name}_doc.yaml")
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)[name]["description"]


def _parse_op(name: str, spec: Dict[str, Any], doc: Optional[str] = None, internal: bool = False) -> OpDef:
    args = tuple(_parse_arg(n, s) for n, s in spec["args"].items())
    by_name = {a.name: a for a in args}
    function = spec["function"]
    function_args = []
    for entry in function["signature"]:
        keyword, _, target = entry.partition("=")
        function_args.append(FunctionArg(keyword, by_name[target or keyword]))
    returns = tuple((spec.get("returns") or {}).keys())
    return OpDef(
        name=name,
        class_name=spec["class"]["name"],
        args=args,
        returns=returns,
        function_name=function["name"],
        function_args=tuple(function_args),
        function_returns=tuple(function.get("returns", returns)),
        keyword_only_after=function.get("keyword_only_after"),
        ascend_primitive=(spec.get("dispatch") or {}).get("Ascend"),
        source=spec.get("source", "mindspore"),
        torch_npu_name=spec.get("torch_npu_name"),
        doc=(spec.get("description", "") if internal else _load_doc(name)) if doc is None else doc,
        labels=tuple(sorted((spec.get("labels") or {}).items())),
        limits=tuple((spec.get("limits") or {}).items()),
        internal=internal,
    )


def parse(name: str, spec: Dict[str, Any], doc: str = "") -> OpDef:
    """An OpDef from one op_def mapping that is not in ops_yaml/ (tests of the primitive machinery)."""
    return _parse_op(name, spec, doc)


def _load_folder(folder: str, internal: bool) -> Dict[str, OpDef]:
    ops: Dict[str, OpDef] = {}
    for file_name in sorted(os.listdir(folder)):
        if not file_name.endswith("_op.yaml"):
            continue
        with open(os.path.join(folder, file_name), encoding="utf-8") as f:
            for name, spec in yaml.safe_load(f).items():
                ops[name] = _parse_op(name, spec, internal=internal)
    return ops


@functools.lru_cache(maxsize=None)
def load_all() -> Dict[str, OpDef]:
    """The public operators (ops_yaml/*_op.yaml)."""
    return _load_folder(yaml_dir(), internal=False)


@functools.lru_cache(maxsize=None)
def load_internal() -> Dict[str, OpDef]:
    """The internal operators (ops_yaml/internal/*_op.yaml): backward kernels the bprops call."""
    folder = os.path.join(yaml_dir(), "internal")
    return _load_folder(folder, internal=True) if os.path.isdir(folder) else {}


def load_every() -> Dict[str, OpDef]:
    """Public and internal operators: everything that has a kernel."""
    return {**load_all(), **load_internal()}


@functools.lru_cache(maxsize=None)
def enums() -> Dict[str, Dict[str, int]]:
    """ops_yaml/enums.yaml: name -> {member: code} (input_layout, dtype)."""
    with open(os.path.join(yaml_dir(), "enums.yaml"), encoding="utf-8") as f:
        return {name: dict(members) for name, members in yaml.safe_load(f).items()}


def enum(name: str) -> Dict[str, int]:
    return enums()[name]


def get(name: str) -> OpDef:
    return load_every()[name]


def names() -> List[str]:
    return list(load_all())
