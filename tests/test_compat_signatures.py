"""The compat layer has every class, member, parameter, default and base of the documented API.

The documentation (``reference/datamint-dataset-api.txt``) is parsed here, not retyped: every
``class datamint.dataset.X.Y(...)`` / ``exception datamint.dataset.X.Y`` line names a class that
``datamint_compat.dataset.X.Y`` must provide, and the member lines under it (``name(params)``,
``property name: T``, ``classmethod``/``static``/``abstractmethod`` methods, ``name: T [= default]``
attributes) and its ``Bases:`` line must hold there.
"""

from __future__ import annotations

import abc
import ast
import dataclasses
import importlib
import inspect
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch.utils.data

API_DOC = Path("/work/shared/reference/datamint-dataset-api.txt")
if not API_DOC.is_file():  # the repository's own copy, when the shared folder is not mounted
    API_DOC = Path(__file__).resolve().parents[1] / "shared" / "reference" / "datamint-dataset-api.txt"

FACTORY = "__dataclass_default_factory__"  # stands for the documentation's ``<factory>`` default
_NO_DEFAULT = object()

_CLASS_LINE = re.compile(r"^(class|exception) datamint\.dataset\.(\w+)\.(\w+)(?:\((.*)\))?$")
_METHOD_LINE = re.compile(r"^(?:(abstractmethod|classmethod|static|staticmethod) )?([A-Za-z_]\w*)\((.*)\)$")
_PROPERTY_LINE = re.compile(r"^property (\w+): (.+)$")
# ``name: T``, ``name: T = default``, or a class constant ``NAME = default`` (code examples have neither form)
_ATTRIBUTE_LINE = re.compile(r"^(?:([A-Za-z_]\w*): ([^=]+?)|([A-Z][A-Z0-9_]*))(?: = (.+))?$")


@dataclass(frozen=True)
class DocParam:
    name: str
    kind: inspect._ParameterKind
    default: Any = _NO_DEFAULT  # a Python value, FACTORY, or _NO_DEFAULT


@dataclass
class DocMember:
    kind: str  # "method", "classmethod", "staticmethod", "abstractmethod", "property", "attribute"
    name: str
    params: list[DocParam] = field(default_factory=list)
    default: Any = _NO_DEFAULT  # attributes only
    line: int = 0


@dataclass
class DocClass:
    kind: str  # "class" or "exception"
    module: str
    name: str
    line: int
    params: list[DocParam] | None = None
    bases: list[str] = field(default_factory=list)
    members: list[DocMember] = field(default_factory=list)

    @property
    def qualname(self) -> str:
        return f"{self.module}.{self.name}"


def _parse_params(text: str) -> list[DocParam] | None:
    """The documented parameter list ``text`` (as written between the parentheses), or None if it is not one."""
    source = f"def f({text.replace('<factory>', FACTORY)}): pass"
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return None
    function = tree.body[0]
    assert isinstance(function, ast.FunctionDef)
    args = function.args

    def value(node: ast.expr) -> Any:
        if isinstance(node, ast.Name) and node.id == FACTORY:
            return FACTORY
        return ast.literal_eval(node)

    positional = [*args.posonlyargs, *args.args]
    defaults: list[Any] = [_NO_DEFAULT] * (len(positional) - len(args.defaults)) + [value(d) for d in args.defaults]
    params = [
        DocParam(a.arg, inspect.Parameter.POSITIONAL_OR_KEYWORD, d) for a, d in zip(positional, defaults, strict=True)
    ]
    if args.vararg is not None:
        params.append(DocParam(args.vararg.arg, inspect.Parameter.VAR_POSITIONAL))
    for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True):
        params.append(DocParam(a.arg, inspect.Parameter.KEYWORD_ONLY, _NO_DEFAULT if d is None else value(d)))
    if args.kwarg is not None:
        params.append(DocParam(args.kwarg.arg, inspect.Parameter.VAR_KEYWORD))
    return params


def parse_api(text: str) -> list[DocClass]:
    """Every documented class and exception with its parameters, bases and members, in document order."""
    classes: list[DocClass] = []
    current: DocClass | None = None
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        match = _CLASS_LINE.match(line)
        if match:
            kind, module, name, params = match.groups()
            parsed = _parse_params(params) if params is not None else None
            if params is not None and parsed is None:
                raise AssertionError(f"line {number}: cannot parse the parameters of {name}: {params}")
            current = DocClass(kind, module, name, number, parsed)
            classes.append(current)
            continue
        if current is None:
            continue
        if line.startswith("Bases: "):
            if not current.bases:
                current.bases = [b.strip() for b in line[len("Bases: ") :].split(",")]
            continue
        match = _PROPERTY_LINE.match(line)
        if match:
            current.members.append(DocMember("property", match.group(1), line=number))
            continue
        match = _METHOD_LINE.match(line)
        if match:
            decorator, name, params = match.groups()
            parsed = _parse_params(params)
            if parsed is not None:  # else a code example such as ``print(item['image'].shape)  # (C, H, W)``
                kind = {"static": "staticmethod"}.get(decorator or "method", decorator or "method")
                current.members.append(DocMember(kind, name, parsed, line=number))
            continue
        match = _ATTRIBUTE_LINE.match(line)
        if match and match.group(1) != "Bases" and (match.group(2) or match.group(4)):
            typed_name, _type, constant_name, default = match.groups()
            name = typed_name or constant_name
            value = ast.literal_eval(default) if default is not None else _NO_DEFAULT
            current.members.append(DocMember("attribute", name, default=value, line=number))
    return classes


DOC_CLASSES = parse_api(API_DOC.read_text(encoding="utf-8"))


@pytest.fixture(scope="module", autouse=True)
def compat_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The decoded-array cache of this module's datasets, never the home folder."""
    path = tmp_path_factory.mktemp("compat-signatures-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DATAMINT_PIPES_CACHE", str(path))
        yield path


def _compat(doc: DocClass) -> Any:
    module = importlib.import_module(f"datamint_compat.dataset.{doc.module}")
    return getattr(module, doc.name)


def _resolve_base(doc: DocClass, name: str) -> type:
    module = importlib.import_module(f"datamint_compat.dataset.{doc.module}")
    package = importlib.import_module("datamint_compat.dataset")
    found = getattr(module, name, None) or getattr(package, name, None)
    if found is None:
        found = {"ABC": abc.ABC, "Dataset": torch.utils.data.Dataset}.get(name)
    assert isinstance(found, type), f"{doc.qualname}: documented base {name} is not a class of the compat layer"
    return found


def _members() -> Iterator[tuple[DocClass, DocMember]]:
    for doc in DOC_CLASSES:
        for member in doc.members:
            yield doc, member


def _same_default(actual: Any, documented: Any) -> bool:
    if documented is FACTORY:
        return repr(actual) == "<factory>"
    if documented is None:
        return actual is None
    return type(actual) is type(documented) and actual == documented


def check_signature(where: str, signature: inspect.Signature, documented: list[DocParam]) -> None:
    """Documented positional parameters keep their positions; every documented name is accepted with the same
    default; documented ``*args``/``**kwargs`` exist; parameters the documentation does not have are optional."""
    actual = list(signature.parameters.values())
    names = {p.name: p for p in actual}
    documented_names = set()
    for position, doc in enumerate(p for p in documented if p.kind == inspect.Parameter.POSITIONAL_OR_KEYWORD):
        assert position < len(actual) and actual[position].name == doc.name, (
            f"{where}: documented positional parameter #{position} {doc.name!r}, got {[p.name for p in actual]}"
        )
        assert actual[position].kind == inspect.Parameter.POSITIONAL_OR_KEYWORD, f"{where}: {doc.name} not positional"
    for doc in documented:
        if doc.kind == inspect.Parameter.VAR_POSITIONAL:
            assert any(p.kind == inspect.Parameter.VAR_POSITIONAL for p in actual), f"{where}: no *{doc.name}"
            continue
        if doc.kind == inspect.Parameter.VAR_KEYWORD:
            assert any(p.kind == inspect.Parameter.VAR_KEYWORD for p in actual), f"{where}: no **{doc.name}"
            continue
        documented_names.add(doc.name)
        assert doc.name in names, f"{where}: documented parameter {doc.name!r} missing from {signature}"
        param = names[doc.name]
        assert param.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY), (
            f"{where}: {doc.name} cannot be passed by keyword ({param.kind})"
        )
        if doc.default is _NO_DEFAULT:
            assert param.default is inspect.Parameter.empty, f"{where}: {doc.name} should be required"
        else:
            assert param.default is not inspect.Parameter.empty, f"{where}: {doc.name} has no default"
            assert _same_default(param.default, doc.default), (
                f"{where}: {doc.name} defaults to {param.default!r}, documented {doc.default!r}"
            )
    for param in actual:
        if param.name in documented_names or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        assert param.default is not inspect.Parameter.empty, (
            f"{where}: undocumented parameter {param.name!r} must be optional so documented calls keep working"
        )


def test_the_documentation_parses_into_every_class_and_member() -> None:
    """Guards the parser: a format change in the documentation must not silently check nothing."""
    names = {doc.qualname for doc in DOC_CLASSES}
    assert {
        "base.DatamintBaseDataset",
        "base.DatamintDatasetException",
        "multiframe_dataset.MultiFrameDataset",
        "image_dataset.ImageDataset",
        "volume_dataset.VolumeDataset",
        "video_dataset.VideoDataset",
        "sliced_dataset.SlicedVolumeDataset",
        "sliced_video_dataset.SlicedVideoDataset",
        "annotation.Annotation",
        "annotation_processor.AnnotationProcessor",
        "dataset.DatamintDataset",
        "base_dataset.DatamintBaseDataset",
        "base_dataset.DatamintDatasetException",
    } == names
    by_name = {doc.qualname: doc for doc in DOC_CLASSES}
    base = {m.name: m for m in by_name["base.DatamintBaseDataset"].members}
    assert base["split"].params[-1].kind == inspect.Parameter.VAR_KEYWORD
    assert base["apply_alb_transform"].kind == "abstractmethod"
    assert base["frame_labels_set"].kind == "property"
    assert base["project"].kind == "attribute"
    assert "print" not in {m.name for _, m in _members()}
    assert len(by_name["annotation.Annotation"].params or []) == 29
    assert sum(len(doc.members) for doc in DOC_CLASSES) >= 110


@pytest.mark.parametrize(
    ("documented", "implementation", "reason"),
    [
        ("a, b=1", lambda a, b=2: None, "defaults to 2"),
        ("a, b=1", lambda a, b=True: None, "defaults to True"),  # 1 == True, but not the documented default
        ("a, b=1", lambda b=1, a=None: None, "positional parameter #0"),
        ("a, b=1", lambda a, *, b=1: None, "b not positional"),
        ("a, *, k=None", lambda a: None, "'k' missing"),
        ("a, *, k=None", lambda a, *, k: None, "k has no default"),
        ("a, b=1", lambda a, b=1, *, c: None, "must be optional"),
        ("a, **kwargs", lambda a: None, "no \\*\\*kwargs"),
        ("<factory>=<factory>", lambda x=None: None, "positional parameter #0"),
    ],
)
def test_the_signature_check_catches_each_kind_of_gap(
    documented: str, implementation: Callable[..., Any], reason: str
) -> None:
    params = _parse_params(documented)
    assert params is not None
    with pytest.raises(AssertionError, match=reason):
        check_signature("gap", inspect.signature(implementation), params)


def test_the_signature_check_accepts_compatible_additions() -> None:
    params = _parse_params("a, b=1, *, k=None, **kwargs")
    assert params is not None
    check_signature("ok", inspect.signature(lambda a, b=1, *args, extra=0, k=None, **kw: None), params)


@pytest.mark.parametrize("doc", DOC_CLASSES, ids=lambda d: d.qualname)
def test_documented_class_exists_with_its_signature_and_bases(doc: DocClass) -> None:
    cls = _compat(doc)
    assert inspect.isclass(cls), f"datamint_compat.dataset.{doc.qualname} is not a class"
    if doc.kind == "exception":
        assert issubclass(cls, Exception)
    if doc.params is not None:
        check_signature(f"{doc.qualname}()", inspect.signature(cls), doc.params)
    for base in doc.bases:
        assert issubclass(cls, _resolve_base(doc, base)), f"{doc.qualname} does not subclass {base}"


def _member_check(doc: DocClass, member: DocMember, instance_of: Callable[[type], Any]) -> None:
    cls = _compat(doc)
    where = f"{doc.qualname}.{member.name}"
    if member.kind == "attribute":
        if dataclasses.is_dataclass(cls):
            fields = {f.name: f for f in dataclasses.fields(cls)}
            assert member.name in fields, f"{where}: no such dataclass field"
            if member.default is not _NO_DEFAULT:
                assert _same_default(fields[member.name].default, member.default), where
        elif member.default is not _NO_DEFAULT:
            assert _same_default(getattr(cls, member.name), member.default), where
        else:
            assert hasattr(instance_of(cls), member.name), f"{where}: instances have no such attribute"
        return
    assert hasattr(cls, member.name), f"{where} is missing"
    static = inspect.getattr_static(cls, member.name)
    if member.kind == "property":
        assert isinstance(static, property), f"{where} is not a property"
        return
    if member.kind == "classmethod":
        assert isinstance(static, classmethod), f"{where} is not a classmethod"
        signature = inspect.signature(getattr(cls, member.name))
    elif member.kind == "staticmethod":
        assert isinstance(static, staticmethod), f"{where} is not a staticmethod"
        signature = inspect.signature(getattr(cls, member.name))
    else:
        function = getattr(cls, member.name)
        assert callable(function), f"{where} is not callable"
        signature = inspect.signature(function)
        parameters = list(signature.parameters.values())
        assert parameters and parameters[0].name == "self", f"{where} is not an instance method"
        signature = signature.replace(parameters=parameters[1:])
    check_signature(f"{where}()", signature, member.params)


@pytest.mark.parametrize(
    ("doc", "member"), list(_members()), ids=[f"{d.qualname}.{m.name}@{m.line}" for d, m in _members()]
)
def test_documented_member_exists_with_its_signature(doc: DocClass, member: DocMember, sample_root: Path) -> None:
    def instance_of(cls: type) -> Any:
        return cls(project=str(sample_root / "sample-images"))

    _member_check(doc, member, instance_of)


def test_one_dataset_exception_type_at_every_documented_path() -> None:
    from datamint_compat.dataset import DatamintDatasetException, DatamintException, base, base_dataset
    from datamint_compat.dataset._items import FacadeError

    assert issubclass(DatamintDatasetException, DatamintException)
    assert base.DatamintDatasetException is base_dataset.DatamintDatasetException is DatamintDatasetException
    assert issubclass(FacadeError, DatamintDatasetException) and issubclass(FacadeError, ValueError)


def test_every_public_class_is_in_all() -> None:
    package = importlib.import_module("datamint_compat.dataset")
    public = {name for name in vars(package) if not name.startswith("_") and inspect.isclass(getattr(package, name))}
    assert public <= set(package.__all__)
    for name in package.__all__:
        assert hasattr(package, name)
    assert {"ImageDataset", "VolumeDataset", "VideoDataset"} <= set(package.__all__)


def test_legacy_classes_warn_deprecation(sample_root: Path) -> None:
    from datamint_compat.dataset.base_dataset import DatamintBaseDataset as LegacyBase
    from datamint_compat.dataset.dataset import DatamintDataset

    with pytest.warns(DeprecationWarning):
        DatamintDataset("sample-images", root=str(sample_root))
    with pytest.warns(DeprecationWarning):
        legacy = LegacyBase("sample-images", root=str(sample_root))
    assert len(legacy) == 7
    assert legacy.get_resources_ids() == [r.id for r in legacy.resources]
