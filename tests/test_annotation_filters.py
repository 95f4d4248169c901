"""Annotation filtering: annotators, label names per kind, schema membership, deleted, unannotated resources."""

from __future__ import annotations

import pickle
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from datamint_pipes.model import Annotation, Resource
from datamint_pipes.pipeline import Pipeline
from datamint_pipes.stages.annotations.filters import (
    AnnotationFilter,
    HasAnnotations,
    filter_annotations,
    filter_catalogue,
)
from datamint_pipes.stages.annotations.schema import LabelSchema

SCHEMA = LabelSchema(
    segmentation_labels=("liver", "tumour"),
    image_labels=("noisy", "contrast"),
    frame_labels=("key_frame",),
    image_categories=(("view", "ap"), ("view", "lateral")),
    frame_categories=(("phase", "systole"),),
)


def ann(
    aid: str,
    identifier: str,
    annotation_type: str = "label",
    created_by: str | None = "alice",
    *,
    frame_index: int | None = None,
    value: str | None = None,
    deleted: bool = False,
    worklist: str | None = "w1",
    source: str | None = "manual",
    resource_id: str = "r1",
) -> Annotation:
    return Annotation(
        id=aid,
        identifier=identifier,
        scope="frame" if frame_index is not None else "image",
        annotation_type=annotation_type,
        resource_id=resource_id,
        created_by=created_by,
        frame_index=frame_index,
        text_value=value,
        deleted=deleted,
        annotation_worklist_id=worklist,
        source=source,
        created_by_model="model-x" if created_by is None else None,
    )


ANNOTATIONS = [
    ann("s1", "liver", "segmentation", "alice"),
    ann("s2", "tumour", "segmentation", "bob", frame_index=2),
    ann("s3", "spleen", "segmentation", "carol"),  # not in the schema
    ann("s4", "liver", "segmentation", None),  # a model's: no created_by
    ann("l1", "noisy", "label", "alice"),
    ann("l2", "contrast", "label", "bob"),
    ann("l3", "blurry", "label", "carol"),  # not in the schema
    ann("f1", "key_frame", "label", "alice", frame_index=1),
    ann("f2", "noisy", "label", "bob", frame_index=1),  # 'noisy' is an image label, not a frame label
    ann("c1", "view", "category", "alice", value="ap"),
    ann("c2", "view", "category", "bob", value="pa"),  # value not in the schema
    ann("c3", "phase", "category", "carol", value="systole", frame_index=0),
    ann("b1", "lesion", "square", "carol"),  # a box: no schema label
    ann("d1", "liver", "segmentation", "alice", deleted=True),
]


def ids(annotations: Sequence[Annotation]) -> list[str]:
    return [a.id for a in annotations]


def test_schema_membership_and_defaults() -> None:
    assert ids(filter_annotations(ANNOTATIONS, SCHEMA)) == ["s1", "s2", "s4", "l1", "l2", "f1", "c1", "c3", "b1"]
    external = filter_annotations(ANNOTATIONS, SCHEMA, allow_external_annotations=True)
    assert ids(external) == [a.id for a in ANNOTATIONS if a.id != "d1"]
    assert ids(filter_annotations(ANNOTATIONS, SCHEMA, include_deleted=True))[-1] == "d1"


def test_annotator_include_exclude_and_annotations_without_author_pass() -> None:
    assert ids(filter_annotations(ANNOTATIONS, SCHEMA, include_annotators=["bob"])) == ["s2", "s4", "l2"]
    assert ids(filter_annotations(ANNOTATIONS, SCHEMA, exclude_annotators=["alice", "bob"])) == ["s4", "c3", "b1"]
    # An empty include list keeps no annotator's work; authorless annotations still pass.
    assert ids(filter_annotations(ANNOTATIONS, SCHEMA, include_annotators=[])) == ["s4"]


def test_name_lists_apply_to_their_own_kind_only() -> None:
    kept = filter_annotations(ANNOTATIONS, SCHEMA, include_segmentation_names=["tumour"])
    assert ids(kept) == ["s2", "l1", "l2", "f1", "c1", "c3", "b1"]
    kept = filter_annotations(ANNOTATIONS, SCHEMA, exclude_segmentation_names=["tumour"])
    assert ids(kept) == ["s1", "s4", "l1", "l2", "f1", "c1", "c3", "b1"]
    kept = filter_annotations(ANNOTATIONS, SCHEMA, include_image_label_names=["contrast"])
    assert ids(kept) == ["s1", "s2", "s4", "l2", "f1", "c1", "c3", "b1"]
    kept = filter_annotations(ANNOTATIONS, SCHEMA, exclude_frame_label_names=["key_frame"])
    assert ids(kept) == ["s1", "s2", "s4", "l1", "l2", "c1", "c3", "b1"]
    # External labels pass the schema test, then their lists.
    kept = filter_annotations(
        ANNOTATIONS, SCHEMA, allow_external_annotations=True, include_segmentation_names=["spleen"]
    )
    assert [a.id for a in kept if a.is_segmentation()] == ["s3"]
    kept = filter_annotations(ANNOTATIONS, SCHEMA, allow_external_annotations=True, include_frame_label_names=["noisy"])
    assert [a.id for a in kept if a.is_label()] == ["l1", "l2", "l3", "f2"]


def test_worklists_and_trusted_sources() -> None:
    annotations = [
        ann("x1", "noisy", worklist="w1", source="manual"),
        ann("x2", "noisy", worklist="w2", source="model"),
        ann("x3", "noisy", worklist=None, source=None),
    ]
    assert ids(filter_annotations(annotations, SCHEMA, worklist_ids=["w2"])) == ["x2"]
    assert ids(filter_annotations(annotations, SCHEMA, trusted_sources=["manual"])) == ["x1"]
    assert ids(filter_annotations(annotations, SCHEMA)) == ["x1", "x2", "x3"]


@pytest.mark.parametrize("kind", ["annotators", "segmentation_names", "image_label_names", "frame_label_names"])
def test_include_and_exclude_of_one_kind_is_an_error_naming_both(kind: str) -> None:
    options: dict[str, Any] = {f"include_{kind}": ["a"], f"exclude_{kind}": ["b", "c"]}
    with pytest.raises(ValueError, match=rf"include_{kind}=\['a'\] and exclude_{kind}=\['b', 'c'\]"):
        AnnotationFilter(SCHEMA, **options)
    # Different kinds combine freely.
    AnnotationFilter(SCHEMA, include_annotators=["a"], exclude_segmentation_names=["b"])


def test_bad_options() -> None:
    with pytest.raises(TypeError, match="not the string 'alice'"):
        AnnotationFilter(SCHEMA, include_annotators="alice")
    with pytest.raises(TypeError, match="must hold strings"):
        AnnotationFilter(SCHEMA, exclude_annotators=[1])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="LabelSchema"):
        AnnotationFilter({"liver": 1})  # type: ignore[arg-type]
    with pytest.warns(UserWarning, match=r"include_segmentation_names names \['spleen'\]"):
        AnnotationFilter(SCHEMA, include_segmentation_names=["liver", "spleen"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        AnnotationFilter(SCHEMA, include_segmentation_names=["spleen"], allow_external_annotations=True)
        AnnotationFilter(SCHEMA, exclude_segmentation_names=["spleen"])


def test_stage_replaces_annotations_without_touching_the_input() -> None:
    stage = AnnotationFilter(SCHEMA, include_annotators=("bob",))
    sample: dict[str, Any] = {"resource_id": "r1", "annotations": list(ANNOTATIONS)}
    out = stage(sample)  # type: ignore[arg-type]
    assert ids(out["annotations"]) == ["s2", "s4", "l2"]
    assert out["resource_id"] == "r1"
    assert ids(sample["annotations"]) == ids(ANNOTATIONS)
    assert stage({"resource_id": "r2"})["annotations"] == []
    copy = pickle.loads(pickle.dumps(stage))
    assert copy == stage and hash(copy) == hash(stage)
    assert ids(copy(sample)["annotations"]) == ids(out["annotations"])
    assert stage.include_annotators == ("bob",)


@dataclass(frozen=True)
class _LookUp:
    """index -> sample over a fixed catalogue (picklable)."""

    catalogue: tuple[tuple[str, tuple[Annotation, ...]], ...]

    def __call__(self, index: int) -> dict[str, Any]:
        rid, annotations = self.catalogue[index]
        return {"resource_id": rid, "index": index, "annotations": list(annotations)}


def test_unannotated_resources_dropped_in_a_pipeline_and_in_the_catalogue() -> None:
    resources = [Resource(id=f"r{i}", filename=f"{i}.png") for i in range(4)]
    by_resource = {
        "r0": [ann("a", "noisy", "label", "alice", resource_id="r0")],
        "r1": [ann("b", "noisy", "label", "bob", resource_id="r1")],
        "r2": [],
        # r3: absent from the mapping
    }
    bob_only = AnnotationFilter(SCHEMA, include_annotators=["bob"])
    kept, annotations = filter_catalogue(resources, by_resource, bob_only, include_unannotated=False)
    assert [r.id for r in kept] == ["r1"] and ids(annotations["r1"]) == ["b"]
    kept, annotations = filter_catalogue(resources, by_resource, bob_only)
    assert [r.id for r in kept] == ["r0", "r1", "r2", "r3"] and annotations["r0"] == []
    kept, _ = filter_catalogue(resources, by_resource, include_unannotated=False)
    assert [r.id for r in kept] == ["r0", "r1"]

    lookup = _LookUp(tuple((r.id, tuple(by_resource.get(r.id, ()))) for r in resources))
    pipeline = Pipeline(num_items=4, shuffle=False).map(lookup).map(bob_only).filter(HasAnnotations())
    assert [s["resource_id"] for s in pipeline.loader(num_workers=2)] == ["r1"]
    assert HasAnnotations()({}) is False
    assert pickle.loads(pickle.dumps(HasAnnotations())) == HasAnnotations()


# -- properties ------------------------------------------------------------------------------------------------

_people = ["alice", "bob", "carol"]
_names = ["liver", "tumour", "spleen", "noisy", "contrast", "key_frame", "blurry"]


@st.composite
def annotation_lists(draw: st.DrawFn) -> list[Annotation]:
    rows = draw(
        st.lists(
            st.tuples(
                st.sampled_from(_names),
                st.sampled_from(["segmentation", "label", "category", "square"]),
                st.sampled_from([*_people, None]),
                st.sampled_from([None, 1]),
                st.sampled_from(["ap", "pa", "systole"]),
                st.booleans(),
            ),
            max_size=20,
        )
    )
    return [
        ann(f"x{i}", name, kind, who, frame_index=frame, value=value, deleted=gone and i % 3 == 0)
        for i, (name, kind, who, frame, value, gone) in enumerate(rows)
    ]


def _subset(draw: st.DrawFn, pool: list[str]) -> list[str]:
    return draw(st.lists(st.sampled_from(pool), unique=True, max_size=3))


@st.composite
def filters(draw: st.DrawFn) -> AnnotationFilter:
    options: dict[str, Any] = {"allow_external_annotations": draw(st.booleans())}
    for kind, pool in [
        ("annotators", _people),
        ("segmentation_names", _names),
        ("image_label_names", _names),
        ("frame_label_names", _names),
    ]:
        mode = draw(st.sampled_from([None, "include", "exclude"]))
        if mode is not None:
            options[f"{mode}_{kind}"] = _subset(draw, pool)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return AnnotationFilter(SCHEMA, **options)


@settings(max_examples=150, deadline=None)
@given(annotations=annotation_lists(), first=filters(), second=filters())
def test_filters_commute_are_idempotent_and_keep_order(
    annotations: list[Annotation], first: AnnotationFilter, second: AnnotationFilter
) -> None:
    once = first.apply(annotations)
    assert first.apply(once) == once
    assert second.apply(once) == first.apply(second.apply(annotations))
    positions = [annotations.index(a) for a in once]
    assert positions == sorted(positions)
    assert not any(a.deleted for a in once)
