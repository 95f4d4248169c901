"""AnnotationProcessor: the documented methods agree with the core annotation stages they wrap."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from datamint_compat.dataset import AnnotationProcessor
from datamint_pipes.sources.local import LocalProject
from datamint_pipes.stages.annotations import LoadSegmentations
from datamint_pipes.stages.load import DecodeImage, ReadResource


@pytest.fixture(scope="module")
def project(sample_root: Path) -> LocalProject:
    return LocalProject.open(sample_root / "sample-images", read_only=True)


def _processor(project: LocalProject, *, external: bool = False) -> AnnotationProcessor:
    return AnnotationProcessor(
        {"tissue": 1, "bright": 2},
        ["artifact", "good_quality"],
        {"categories": {"view:standard": 0, "view:oblique": 1}},
        allow_external_annotations=external,
        source=project,
    )


def test_filters_groups_and_authors(project: LocalProject) -> None:
    annotations = project.annotations()
    processor = _processor(project)
    segs = processor.filter_annotations(annotations, type="segmentation", scope="image")
    assert segs and all(a.is_segmentation() and a.is_image_scoped() for a in segs)
    assert processor.filter_annotations(annotations) == annotations
    groups = processor.group_annotations(annotations, by_author=True, by_identifier=True)
    assert list(groups) == sorted(groups, key=lambda key: tuple(map(str, key)))
    assert sum(len(v) for v in groups.values()) == len(annotations)
    assert all(a.author == key[0] and a.identifier == key[1] for key, members in groups.items() for a in members)
    assert AnnotationProcessor.get_author(annotations[0]) == annotations[0].created_by


def test_load_segmentations_equals_the_core_stage(project: LocalProject) -> None:
    resources = project.resources()
    sample = DecodeImage(project)(ReadResource(resources, project.annotations_by_resource())(0))
    expected = LoadSegmentations(project, {"tissue": 1, "bright": 2})(sample)
    masks, codes, by_author = _processor(project).load_segmentations(sample["annotations"], sample["image"].shape)
    assert list(masks) == list(expected["segmentations"]) == list(by_author)
    for author in masks:
        np.testing.assert_array_equal(masks[author], expected["segmentations"][author])
        np.testing.assert_array_equal(codes[author], expected["seg_labels"][author])


def test_labels_categories_and_merges(project: LocalProject) -> None:
    resource = project.resources()[0]
    annotations = project.annotations([resource.id])
    processor = _processor(project)
    labels = processor.convert_image_labels([a for a in annotations if a.is_label()])
    expected = {}
    for a in annotations:
        if a.is_label():
            vector = expected.setdefault(a.created_by, torch.zeros(2, dtype=torch.int32))
            vector[["artifact", "good_quality"].index(a.identifier)] = 1
    assert {k: v.tolist() for k, v in labels.items()} == {k: v.tolist() for k, v in sorted(expected.items())}
    union = processor.merge_image_labels(labels, "union")
    assert union.tolist() == (torch.stack(list(labels.values())).amax(0)).tolist()
    categories = processor.convert_image_categories([a for a in annotations if a.is_category()])
    codes = {a.created_by: ["standard", "oblique"].index(a.text_value) for a in annotations if a.is_category()}
    assert {k: int(v) for k, v in categories.items()} == codes
    merged = AnnotationProcessor.merge_image_categories(categories, "union", 2)
    assert merged.tolist() == [int(0 in codes.values()), int(1 in codes.values())]


def test_semantic_and_merge_strategy() -> None:
    processor = AnnotationProcessor({"a": 1, "b": 2}, [], {})
    masks = np.array([[[1, 0], [0, 0]], [[1, 1], [0, 0]]], np.uint8)
    semantic = processor.instance_to_semantic_segmentation(masks, np.array([1, 2], np.int32), 2)
    np.testing.assert_array_equal(semantic, np.array([[[0, 0], [1, 1]], [[1, 0], [0, 0]], [[1, 1], [0, 0]]]))
    assert processor.instance_to_semantic_segmentation(None, np.array([1]), 2) is None
    other = np.zeros_like(semantic)
    other[0] = 1
    merged = processor.apply_merge_strategy({"x": semantic, "y": other}, "intersection")
    np.testing.assert_array_equal(merged, np.array([[[0, 0], [1, 1]], [[0, 0], [0, 0]], [[0, 0], [0, 0]]]))
    assert processor.apply_merge_strategy({"x": semantic}, None)["x"] is semantic


def test_resolve_seg_code_with_and_without_external_annotations(project: LocalProject) -> None:
    assert _processor(project).resolve_seg_code("bright") == 2
    with pytest.raises(ValueError, match="unknown"):
        _processor(project).resolve_seg_code("lesion")
    external = _processor(project, external=True)
    assert external.resolve_seg_code("lesion") == 3
    assert external.resolve_seg_code("lesion") == 3
    assert external.seglabel2code["lesion"] == 3
