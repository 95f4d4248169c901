"""Image labels and categories per author and merged: exact values, dtypes, shapes, errors, properties."""

from __future__ import annotations

import pickle
import random
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from datamint_pipes.errors import AnnotationError
from datamint_pipes.model import Annotation
from datamint_pipes.stages.annotations.labels import (
    ImageLabels,
    image_categories_by_author,
    image_labels_by_author,
    merge_image_categories,
    merge_image_labels,
)
from datamint_pipes.stages.annotations.schema import LabelSchema

SCHEMA = LabelSchema(
    segmentation_labels=("liver",),
    image_labels=("a", "b", "c"),
    frame_labels=("key",),
    image_categories=(("view", "ap"), ("view", "lateral"), ("view", "pa"), ("grade", "1")),
)


def ann(
    aid: str,
    identifier: str,
    annotation_type: str = "label",
    created_by: str | None = "alice",
    *,
    model: str | None = None,
    value: str | None = None,
    frame_index: int | None = None,
    created_at: str | None = None,
    resource_id: str = "r1",
) -> Annotation:
    return Annotation(
        id=aid,
        identifier=identifier,
        scope="frame" if frame_index is not None else "image",
        annotation_type=annotation_type,
        resource_id=resource_id,
        created_by=created_by,
        created_by_model=model,
        text_value=value,
        frame_index=frame_index,
        created_at=created_at,
    )


LABELS = [
    ann("l1", "a", created_by="alice"),
    ann("l2", "b", created_by="alice"),
    ann("l3", "a", created_by="alice"),  # twice: still 1
    ann("l4", "b", created_by="bob"),
    ann("l5", "c", created_by="carol"),
    ann("l6", "b", created_by="carol"),
    ann("l7", "c", created_by=None, model="model-x"),
    ann("f1", "key", created_by="dave", frame_index=0),  # frame-scoped: not an image label
    ann("s1", "liver", "segmentation", created_by="dave"),
]

CATEGORIES = [
    # alice: 'ap' at 08:00Z written with an offset comes before 'lateral' at 09:00Z, though listed later and
    # although its text sorts after; the one without created_at comes last.
    ann("c-alice-3", "view", "category", "alice", value="pa"),
    ann("c-alice-2", "view", "category", "alice", value="lateral", created_at="2026-01-01T09:00:00Z"),
    ann("c-alice-1", "view", "category", "alice", value="ap", created_at="2026-01-01T10:00:00+02:00"),
    # bob: same instant, the lower id wins.
    ann("c-bob-2", "view", "category", "bob", value="pa", created_at="2026-01-02T00:00:00Z"),
    ann("c-bob-1", "grade", "category", "bob", value="1", created_at="2026-01-02T00:00:00Z"),
    # no created_by, no model: author 'unknown'.
    ann("c-anon", "view", "category", None, value="lateral"),
    # frame-scoped: ignored.
    ann("c-frame", "view", "category", "carol", value="ap", frame_index=3),
]


def as_lists(tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    return {author: t.tolist() for author, t in tensors.items()}


# -- labels ----------------------------------------------------------------------------------------------------


def test_labels_per_author_exact() -> None:
    per_author = image_labels_by_author(LABELS, SCHEMA)
    assert list(per_author) == ["alice", "bob", "carol", "model-x"]  # sorted, only authors with labels
    assert as_lists(per_author) == {
        "alice": [1, 1, 0],
        "bob": [0, 1, 0],
        "carol": [0, 1, 1],
        "model-x": [0, 0, 1],
    }
    assert all(t.dtype == torch.int32 and t.shape == (3,) for t in per_author.values())
    assert image_labels_by_author([], SCHEMA) == {}
    assert image_labels_by_author(LABELS[-2:], SCHEMA) == {}


def test_label_merges_exact() -> None:
    four = image_labels_by_author(LABELS, SCHEMA)  # counts a=1, b=3, c=2 over 4 authors
    assert merge_image_labels(four, "union", num_labels=3).tolist() == [1, 1, 1]
    assert merge_image_labels(four, "intersection", num_labels=3).tolist() == [0, 0, 0]
    assert merge_image_labels(four, "mode", num_labels=3).tolist() == [0, 1, 1]  # 2 of 4 is half: kept
    three = {k: v for k, v in four.items() if k != "model-x"}  # a=1, b=3, c=1 over 3
    assert merge_image_labels(three, "intersection", num_labels=3).tolist() == [0, 1, 0]
    assert merge_image_labels(three, "mode", num_labels=3).tolist() == [0, 1, 0]
    for strategy in ("union", "intersection", "mode"):
        empty = merge_image_labels({}, strategy, num_labels=3)
        assert empty.dtype == torch.int32 and empty.tolist() == [0, 0, 0]
        assert merge_image_labels(four, strategy, num_labels=3).dtype == torch.int32
    with pytest.raises(ValueError, match=r"strategy='max'"):
        merge_image_labels(four, "max", num_labels=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"expected shape \(4,\), got \{'alice': \(3,\)"):
        merge_image_labels(four, "union", num_labels=4)


# -- categories ------------------------------------------------------------------------------------------------


def test_categories_per_author_first_by_time_then_id() -> None:
    per_author = image_categories_by_author(CATEGORIES, SCHEMA)
    assert list(per_author) == ["alice", "bob", "unknown"]
    assert as_lists(per_author) == {"alice": 0, "bob": 3, "unknown": 1}
    assert all(t.dtype == torch.int64 and t.dim() == 0 for t in per_author.values())
    shuffled = CATEGORIES[:]
    random.Random(3).shuffle(shuffled)
    assert as_lists(image_categories_by_author(shuffled, SCHEMA)) == as_lists(per_author)
    assert image_categories_by_author(LABELS, SCHEMA) == {}


def test_category_merges_exact() -> None:
    per_author = image_categories_by_author(CATEGORIES, SCHEMA)  # codes 0, 3, 1
    mode = merge_image_categories(per_author, "mode", num_categories=4)
    assert mode.dtype == torch.int64 and mode.dim() == 0 and mode.item() == 0  # three-way tie -> lowest
    union = merge_image_categories(per_author, "union", num_categories=4)
    assert union.dtype == torch.int32 and union.tolist() == [1, 1, 0, 1]
    assert merge_image_categories(per_author, "intersection", num_categories=4).tolist() == [0, 0, 0, 0]
    codes = {name: torch.tensor(code) for name, code in [("a", 2), ("b", 2), ("c", 1)]}
    assert merge_image_categories(codes, "mode", num_categories=4).item() == 2  # majority
    codes = {name: torch.tensor(code) for name, code in [("a", 3), ("b", 1), ("c", 3), ("d", 1)]}
    assert merge_image_categories(codes, "mode", num_categories=4).item() == 1  # tie -> lowest code
    agree = {name: torch.tensor(2) for name in "ab"}
    assert merge_image_categories(agree, "intersection", num_categories=4).tolist() == [0, 0, 1, 0]
    empty_mode = merge_image_categories({}, "mode", num_categories=4)
    assert empty_mode.dtype == torch.int64 and empty_mode.dim() == 0 and empty_mode.item() == -1
    assert merge_image_categories({}, "union", num_categories=4).tolist() == [0, 0, 0, 0]
    assert merge_image_categories({}, "intersection", num_categories=4).dtype == torch.int32
    with pytest.raises(ValueError, match=r"\{'a': 7\} are outside 0..3"):
        merge_image_categories({"a": torch.tensor(7)}, "mode", num_categories=4)


# -- errors ----------------------------------------------------------------------------------------------------


def test_unknown_labels_name_the_resource_and_annotations() -> None:
    annotations = [*LABELS, ann("bad-1", "zzz", resource_id="r1"), ann("bad-2", "yyy", resource_id="r1")]
    with pytest.raises(AnnotationError, match=r"\['yyy', 'zzz'\] of annotations \['bad-1', 'bad-2'\]") as info:
        image_labels_by_author(annotations, SCHEMA)
    assert info.value.resource_id == "r1" and "resource r1" in str(info.value)
    assert isinstance(info.value, ValueError)
    with pytest.raises(AnnotationError, match=r"\('view', 'oblique'\).*\['bad-3'\]"):
        image_categories_by_author([ann("bad-3", "view", "category", value="oblique")], SCHEMA)
    with pytest.raises(AnnotationError, match=r"\('view', None\)"):
        image_categories_by_author([ann("bad-4", "view", "category")], SCHEMA)
    with pytest.raises(AnnotationError, match="bad-5 has an unreadable created_at"):
        image_categories_by_author([ann("bad-5", "view", "category", value="ap", created_at="yesterday")], SCHEMA)
    # Frame-scoped and segmentation annotations never reach these tensors, known or not.
    assert image_labels_by_author([ann("ok", "unknown-frame-label", frame_index=2)], SCHEMA) == {}


# -- the stage -------------------------------------------------------------------------------------------------


def test_stage_adds_both_keys() -> None:
    sample: dict[str, Any] = {"resource_id": "r1", "annotations": LABELS + CATEGORIES}
    out = ImageLabels(SCHEMA)(sample)  # type: ignore[arg-type]
    assert as_lists(out["image_labels"]) == as_lists(image_labels_by_author(LABELS, SCHEMA))
    assert as_lists(out["image_categories"]) == {"alice": 0, "bob": 3, "unknown": 1}
    assert set(sample) == {"resource_id", "annotations"}  # the input is not changed

    merged = ImageLabels(SCHEMA, labels_merge_strategy="mode", categories_merge_strategy="union")
    out = pickle.loads(pickle.dumps(merged))(sample)
    assert out["image_labels"].tolist() == [0, 1, 1]
    assert out["image_categories"].tolist() == [1, 1, 0, 1]
    out = ImageLabels(SCHEMA, "union", "mode")({"resource_id": "r2"})
    assert out["image_labels"].tolist() == [0, 0, 0] and out["image_categories"].item() == -1
    assert ImageLabels(SCHEMA)({"annotations": []}) == {
        "annotations": [],
        "image_labels": {},
        "image_categories": {},
    }
    with pytest.raises(ValueError, match=r"labels_merge_strategy='max'"):
        ImageLabels(SCHEMA, labels_merge_strategy="max")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"categories_merge_strategy='any'"):
        ImageLabels(SCHEMA, categories_merge_strategy="any")  # type: ignore[arg-type]


# -- properties ------------------------------------------------------------------------------------------------

_authors = ["alice", "bob", "carol", "dave"]


@st.composite
def label_dicts(draw: st.DrawFn, min_authors: int = 1) -> tuple[dict[str, torch.Tensor], int]:
    num_labels = draw(st.integers(1, 6))
    authors = draw(st.lists(st.sampled_from(_authors), min_size=min_authors, unique=True))
    rows = {a: draw(st.lists(st.integers(0, 1), min_size=num_labels, max_size=num_labels)) for a in sorted(authors)}
    return {a: torch.tensor(r, dtype=torch.int32) for a, r in rows.items()}, num_labels


@settings(max_examples=100, deadline=None)
@given(case=label_dicts(min_authors=0))
def test_union_contains_mode_contains_intersection(case: tuple[dict[str, torch.Tensor], int]) -> None:
    labels, num_labels = case
    union, mode, intersection = (
        merge_image_labels(labels, s, num_labels=num_labels) for s in ("union", "mode", "intersection")
    )
    assert torch.all(union >= mode) and torch.all(mode >= intersection)
    if labels:
        stacked = torch.stack(list(labels.values()))
        assert torch.equal(union, stacked.amax(0)) and torch.equal(intersection, stacked.amin(0))


@settings(max_examples=60, deadline=None)
@given(case=label_dicts(), code=st.integers(0, 5))
def test_merging_one_author_is_the_identity(case: tuple[dict[str, torch.Tensor], int], code: int) -> None:
    labels, num_labels = case
    author, vector = next(iter(labels.items()))
    for strategy in ("union", "intersection", "mode"):
        assert torch.equal(merge_image_labels({author: vector}, strategy, num_labels=num_labels), vector)
    single = {author: torch.tensor(code)}
    assert merge_image_categories(single, "mode", num_categories=6).item() == code
    for strategy in ("union", "intersection"):
        one_hot = merge_image_categories(single, strategy, num_categories=6)  # type: ignore[arg-type]
        assert one_hot.tolist() == [int(i == code) for i in range(6)]


@settings(max_examples=100, deadline=None)
@given(codes=st.dictionaries(st.sampled_from(_authors), st.integers(0, 3)))
def test_category_mode_is_the_lowest_most_common_code(codes: dict[str, int]) -> None:
    merged = merge_image_categories({a: torch.tensor(c) for a, c in codes.items()}, "mode", num_categories=4).item()
    if not codes:
        assert merged == -1
        return
    counts = [list(codes.values()).count(c) for c in range(4)]
    assert merged == counts.index(max(counts))


@settings(max_examples=80, deadline=None)
@given(
    rows=st.lists(
        st.tuples(st.sampled_from([*_authors, None]), st.sampled_from(SCHEMA.image_labels), st.booleans()), max_size=12
    ),
    seed=st.integers(0, 1000),
)
def test_labels_per_author_match_a_plain_count_in_any_order(
    rows: list[tuple[str | None, str, bool]], seed: int
) -> None:
    annotations = [
        ann(f"x{i}", label, created_by=who, frame_index=1 if framed else None)
        for i, (who, label, framed) in enumerate(rows)
    ]
    expected: dict[str, list[int]] = {}
    for who, label, framed in rows:
        if not framed:
            expected.setdefault(who or "unknown", [0, 0, 0])[SCHEMA.image_labels.index(label)] = 1
    shuffled = annotations[:]
    random.Random(seed).shuffle(shuffled)
    for order in (annotations, shuffled):
        result = image_labels_by_author(order, SCHEMA)
        assert list(result) == sorted(expected)
        assert as_lists(result) == expected
