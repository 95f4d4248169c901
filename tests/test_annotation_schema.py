"""The label schema: builders from worklists, explicit lists and annotations; codes, gaps, external labels."""

from __future__ import annotations

import pickle
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from datamint_pipes.model import Annotation, LabelSpec, Worklist
from datamint_pipes.sources.local import LocalProject
from datamint_pipes.stages.annotations.schema import (
    LabelSchema,
    build_schema,
    extend_with_external,
    infer_schema,
    schema_from_lists,
    schema_from_worklists,
)

_counter = iter(range(1_000_000))


def ann(
    identifier: str,
    annotation_type: str = "label",
    *,
    frame_index: int | None = None,
    value: str | None = None,
    deleted: bool = False,
) -> Annotation:
    return Annotation(
        id=f"a{next(_counter)}",
        identifier=identifier,
        scope="frame" if frame_index is not None else "image",
        annotation_type=annotation_type,
        resource_id="r1",
        created_by="alice",
        frame_index=frame_index,
        text_value=value,
        deleted=deleted,
    )


REVIEW = Worklist(
    id="w1",
    name="review",
    specs=(
        LabelSpec(type="segmentation", identifier="liver", index=1),
        LabelSpec(type="label", identifier="noisy"),
        LabelSpec(type="category", identifier="view", values=("ap", "lateral", "oblique")),
        LabelSpec(type="segmentation", identifier="tumour", index=4),
        LabelSpec(type="label", identifier="contrast"),
        LabelSpec(type="label", identifier="key_frame", scope="frame"),
        LabelSpec(type="category", identifier="phase", scope="frame", values=("systole", "diastole")),
        LabelSpec(type="square", identifier="lesion_box"),
    ),
)


class FakeSource:
    """Just what build_schema reads from a source."""

    def __init__(self, worklists: list[Worklist], groups: dict[str, dict[str, Any]] | None = None) -> None:
        self._worklists = worklists
        self._groups = groups or {}

    def worklists(self) -> list[Worklist]:
        return list(self._worklists)

    def segmentation_groups(self, worklist_id: str) -> dict[str, Any]:
        if worklist_id in self._groups:
            return self._groups[worklist_id]
        worklist = next(w for w in self._worklists if w.id == worklist_id)
        return {name: {"index": code} for name, code in worklist.segmentation_codes().items()}


# -- worklists -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "frame_labels"),
    [("sample-images", ()), ("sample-volumes", ("key_frame",)), ("sample-videos", ("key_frame",))],
)
def test_schema_of_a_sample_project_is_its_worklist_spec_order(
    sample_root: Path, name: str, frame_labels: tuple[str, ...]
) -> None:
    project = LocalProject.open(sample_root / name, read_only=True)
    schema = build_schema(project, project.annotations())
    # datamint_pipes/samples.py::_worklist, in the order written there.
    assert schema == LabelSchema(
        segmentation_labels=("tissue", "bright"),
        image_labels=("artifact", "good_quality"),
        frame_labels=frame_labels,
        image_categories=(("view", "standard"), ("view", "oblique")),
        frame_categories=(),
    )
    assert schema.segmentation_code("tissue") == 1 and schema.segmentation_code("bright") == 2
    # The project's own segmentation groups give the same codes as the specs.
    assert schema_from_worklists(project.worklists(), segmentation_groups=project.segmentation_groups) == schema


def test_worklist_labels_in_spec_order_with_gaps_and_unused_categories() -> None:
    schema = schema_from_worklists([REVIEW])
    assert schema.segmentation_labels == ("liver", "UNKNOWN", "UNKNOWN", "tumour")
    assert schema.segmentation_code("tumour") == 4
    assert schema.num_segmentation_labels == 4
    assert schema.image_labels == ("noisy", "contrast")
    assert schema.frame_labels == ("key_frame",)
    # Categories survive though no annotation uses them (upstream loses them).
    assert schema.image_categories == (("view", "ap"), ("view", "lateral"), ("view", "oblique"))
    assert schema.frame_categories == (("phase", "systole"), ("phase", "diastole"))
    assert schema.image_category_code("view", "oblique") == 2
    assert schema.frame_category_code("phase", "diastole") == 1
    assert build_schema(FakeSource([REVIEW]), []) == schema


def test_segmentation_groups_are_the_codes() -> None:
    groups = {"w1": {"tumour": {"index": 1, "color": None}, "liver": {"index": 3}, "spleen": {"index": 2}}}
    expected = ("tumour", "spleen", "liver")
    assert schema_from_worklists([REVIEW], segmentation_groups=groups).segmentation_labels == expected
    # The REST response itself, and a function of the worklist id, are accepted too.
    rest = {"w1": {"groups": groups["w1"]}}
    assert schema_from_worklists([REVIEW], segmentation_groups=rest).segmentation_labels == expected
    assert schema_from_worklists([REVIEW], segmentation_groups=groups.__getitem__).segmentation_labels == expected
    assert build_schema(FakeSource([REVIEW], groups), []).segmentation_labels == expected
    # Without groups for a worklist, its specs' indices.
    assert schema_from_worklists([REVIEW], segmentation_groups={}).segmentation_labels[0] == "liver"
    with pytest.raises(ValueError, match="'tumour' has no index"):
        schema_from_worklists([REVIEW], segmentation_groups={"w1": {"tumour": {"color": None}}})


def test_several_worklists_merge_in_order_and_conflicts_name_both() -> None:
    second = Worklist(
        id="w2",
        name="second",
        specs=(
            LabelSpec(type="label", identifier="contrast"),
            LabelSpec(type="label", identifier="motion"),
            LabelSpec(type="segmentation", identifier="liver", index=1),
            LabelSpec(type="segmentation", identifier="kidney", index=2),
            LabelSpec(type="category", identifier="view", values=("ap", "pa")),
        ),
    )
    schema = schema_from_worklists([REVIEW, second])
    assert schema.image_labels == ("noisy", "contrast", "motion")
    assert schema.segmentation_labels == ("liver", "kidney", "UNKNOWN", "tumour")
    assert schema.image_categories == (("view", "ap"), ("view", "lateral"), ("view", "oblique"), ("view", "pa"))

    clash = Worklist(id="w3", name="clash", specs=(LabelSpec(type="segmentation", identifier="liver", index=2),))
    with pytest.raises(ValueError, match=r"'liver' has code 1 in worklist 'review' and 2 in worklist 'clash'"):
        schema_from_worklists([REVIEW, clash])
    taken = Worklist(id="w4", name="taken", specs=(LabelSpec(type="segmentation", identifier="bone", index=4),))
    with pytest.raises(ValueError, match=r"code 4 is 'tumour' in worklist 'review' and 'bone' in worklist 'taken'"):
        schema_from_worklists([REVIEW, taken])


def test_build_schema_selection() -> None:
    other = Worklist(id="w9", name="other", specs=(LabelSpec(type="label", identifier="blurry"),))
    source = FakeSource([REVIEW, other])
    annotations = [ann("zeta"), ann("liver", "segmentation"), ann("alpha", "segmentation")]
    assert build_schema(source, annotations, worklists="all").image_labels == ("noisy", "contrast", "blurry")
    assert build_schema(source, annotations, worklists=["other"]).image_labels == ("blurry",)  # by name
    assert build_schema(source, annotations, worklists=["w1"]).image_labels == ("noisy", "contrast")  # by id
    assert build_schema(source, annotations, worklists=[other]).image_labels == ("blurry",)
    assert build_schema([REVIEW, other], annotations).image_labels == ("noisy", "contrast", "blurry")
    inferred = infer_schema(annotations)
    assert build_schema(source, annotations, worklists=None) == inferred
    assert build_schema(FakeSource([]), annotations) == inferred  # a project without worklists
    assert build_schema(None, annotations) == inferred  # resources=, no project
    assert build_schema(source, annotations, worklists=[]) == inferred
    with pytest.raises(ValueError, match=r"\['nope'\] are not in the project"):
        build_schema(source, annotations, worklists=["nope"])
    with pytest.raises(ValueError, match="worklists='everything'"):
        build_schema(source, annotations, worklists="everything")
    with pytest.raises(TypeError, match="sequence of Worklist"):
        build_schema(["w1"], annotations)


# -- inferred and external -------------------------------------------------------------------------------------


def test_inferred_schema_is_sorted_with_codes_from_one() -> None:
    annotations = [
        ann("vessel", "segmentation"),
        ann("bone", "segmentation", frame_index=3),
        ann("noisy"),
        ann("blurry"),
        ann("blurry"),
        ann("key", frame_index=0),
        ann("view", "category", value="pa"),
        ann("view", "category", value="ap"),
        ann("phase", "category", value="systole", frame_index=1),
        ann("view", "category"),  # no value: names no class
        ann("box", "square"),
        ann("gone", deleted=True),
    ]
    schema = infer_schema(annotations)
    assert schema == LabelSchema(
        segmentation_labels=("bone", "vessel"),
        image_labels=("blurry", "noisy"),
        frame_labels=("key",),
        image_categories=(("view", "ap"), ("view", "pa")),
        frame_categories=(("phase", "systole"),),
    )
    assert schema.segmentation_code("bone") == 1 and schema.segmentation_code("vessel") == 2
    assert infer_schema(annotations, include_deleted=True).image_labels == ("blurry", "gone", "noisy")


def test_external_labels_are_appended_sorted_after_the_schema() -> None:
    schema = schema_from_worklists([REVIEW])
    annotations = [
        ann("zz_extra", "segmentation"),
        ann("aa_extra", "segmentation"),
        ann("liver", "segmentation"),
        ann("noisy"),
        ann("blurry"),
        ann("key_frame", frame_index=2),
        ann("cardiac", frame_index=2),
        ann("view", "category", value="lateral"),
        ann("view", "category", value="axial"),
        ann("gone", deleted=True),
    ]
    extended = extend_with_external(schema, annotations)
    assert extended.segmentation_labels == ("liver", "UNKNOWN", "UNKNOWN", "tumour", "aa_extra", "zz_extra")
    assert extended.segmentation_code("aa_extra") == 5
    assert extended.image_labels == ("noisy", "contrast", "blurry")
    assert extended.frame_labels == ("key_frame", "cardiac")
    assert extended.image_categories == (*schema.image_categories, ("view", "axial"))
    assert extended.frame_categories == schema.frame_categories
    assert extend_with_external(schema, [ann("liver", "segmentation"), ann("noisy")]) == schema
    assert build_schema(FakeSource([REVIEW]), annotations, allow_external_annotations=True) == extended
    # An inferred schema already holds everything.
    assert build_schema(None, annotations, allow_external_annotations=True) == infer_schema(annotations)


_identifiers = st.sampled_from(["a", "b", "c", "liver", "UNKNOWN", "zeta"])


@st.composite
def annotation_lists(draw: st.DrawFn) -> list[Annotation]:
    items = draw(
        st.lists(
            st.tuples(
                _identifiers,
                st.sampled_from(["label", "segmentation", "category", "square"]),
                st.sampled_from([None, 0, 4]),
                st.sampled_from([None, "x", "y"]),
            ),
            max_size=15,
        )
    )
    return [ann(i, t, frame_index=f, value=v) for i, t, f, v in items]


@settings(max_examples=80, deadline=None)
@given(annotations=annotation_lists(), seed=st.integers(0, 2**16))
def test_schema_does_not_depend_on_annotation_order(annotations: list[Annotation], seed: int) -> None:
    shuffled = annotations[:]
    random.Random(seed).shuffle(shuffled)
    assert infer_schema(shuffled) == infer_schema(annotations)
    base = schema_from_worklists([REVIEW])
    assert extend_with_external(base, shuffled) == extend_with_external(base, annotations)
    extended = extend_with_external(base, annotations)
    # Extension keeps every existing code and covers every annotation of the data.
    assert extended.segmentation_labels[: base.num_segmentation_labels] == base.segmentation_labels
    assert all(extended.covers(a) for a in annotations if not (a.is_category() and a.text_value is None))


# -- the schema object ------------------------------------------------------------------------------------------


def test_schema_from_lists_and_validation() -> None:
    schema = schema_from_lists(
        segmentation_labels={"liver": 1, "tumour": 3},
        image_labels=["noisy"],
        image_categories={"view": ["ap", "pa"]},
        frame_categories=[("phase", "systole")],
    )
    assert schema.segmentation_labels == ("liver", "UNKNOWN", "tumour")
    assert schema.image_categories == (("view", "ap"), ("view", "pa"))
    assert schema_from_lists(segmentation_labels=["b", "a"]).segmentation_code("a") == 2
    assert LabelSchema(image_labels=["x", "y"]).image_labels == ("x", "y")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"image_labels repeat \['x'\]"):
        LabelSchema(image_labels=("x", "y", "x"))
    with pytest.raises(ValueError, match="segmentation_labels repeat"):
        LabelSchema(segmentation_labels=("a", "a"))
    LabelSchema(segmentation_labels=("a", "UNKNOWN", "UNKNOWN", "b"))  # gaps may repeat
    with pytest.raises(TypeError, match="not the string 'liver'"):
        LabelSchema(segmentation_labels="liver")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="pairs"):
        LabelSchema(image_categories=(("view",),))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="code 1 is given to both"):
        schema_from_lists(segmentation_labels={"a": 1, "b": 1})
    with pytest.raises(ValueError, match=r">= 1, got \{'a': 0\}"):
        schema_from_lists(segmentation_labels={"a": 0})
    with pytest.raises(KeyError, match=r"'spleen' is not in the schema \['liver', 'UNKNOWN', 'tumour'\]"):
        schema.segmentation_code("spleen")
    with pytest.raises(KeyError, match="image label 'blurry'"):
        schema.image_label_index("blurry")
    with pytest.raises(KeyError, match="image category"):
        schema.image_category_code("view", "lateral")


def test_schema_pickles_hashes_and_compares_by_value() -> None:
    schema = schema_from_worklists([REVIEW])
    schema.segmentation_code("liver")  # fill the cached lookup tables first
    copy = pickle.loads(pickle.dumps(schema))
    assert copy == schema and hash(copy) == hash(schema)
    assert copy.segmentation_code("tumour") == 4
    assert copy == LabelSchema(*(getattr(schema, f) for f in LabelSchema.__dataclass_fields__))
    with pytest.raises(AttributeError):
        schema.image_labels = ()  # type: ignore[misc]


def test_covers_each_annotation_kind_in_its_scope() -> None:
    schema = schema_from_worklists([REVIEW])
    assert schema.covers(ann("liver", "segmentation", frame_index=2))
    assert not schema.covers(ann("spleen", "segmentation"))
    assert schema.covers(ann("noisy")) and not schema.covers(ann("noisy", frame_index=1))
    assert schema.covers(ann("key_frame", frame_index=1)) and not schema.covers(ann("key_frame"))
    assert schema.covers(ann("view", "category", value="ap"))
    assert not schema.covers(ann("view", "category", value="pa"))
    assert not schema.covers(ann("view", "category"))
    assert schema.covers(ann("phase", "category", value="systole", frame_index=0))
    assert schema.covers(ann("anything", "square"))
