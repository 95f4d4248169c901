"""Facade items against the compat contract ("Item keys", "Label schema and filtering").

* Every facade (images, volumes, videos, axial/coronal slices, video frames) gives, key by key and array by
  array, the items of an explicit pipeline built here from core stages, and of its own ``pipeline()``.
* For every facade and a set of option combinations that together cover every option value, each item has
  the keys, containers, shapes, dtypes and values of the contract table; expected label codes, multi-hot
  vectors and merges are recomputed here from the item's annotations, not taken from the library.
* Errors, the label schema (worklists, inferred, external), filters, ``resources=`` and lazy construction.
"""

from __future__ import annotations

import importlib
import pickle
import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import torch
from PIL import Image

from datamint_compat.dataset import (
    DatamintBaseDataset,
    DatamintDatasetException,
    ImageDataset,
    VideoDataset,
    VolumeDataset,
)
from datamint_compat.dataset._items import CompatImage
from datamint_pipes.cache import ArrayCache
from datamint_pipes.errors import DatamintPipesError
from datamint_pipes.model import Annotation, Resource, ResourceKind, Sample, parse_timestamp
from datamint_pipes.pipeline import Pipeline
from datamint_pipes.samples import ANNOTATORS
from datamint_pipes.sources.local import LocalProject
from datamint_pipes.stages.annotations import (
    AnnotationFilter,
    ImageLabels,
    LoadSegmentations,
    SemanticSegmentations,
    build_schema,
    filter_catalogue,
)
from datamint_pipes.stages.cached import CachedDecode
from datamint_pipes.stages.load import ReadResource

ALICE, BOB = ANNOTATORS
VIEWS = ("image", "volume", "video", "axial", "coronal", "frames")
PROJECT_OF = {
    "image": "sample-images",
    "volume": "sample-volumes",
    "video": "sample-videos",
    "axial": "sample-volumes",
    "coronal": "sample-volumes",
    "frames": "sample-videos",
}
SLICE_AXIS = {"axial": "axial", "coronal": "coronal", "frames": "axial"}


@pytest.fixture(scope="module", autouse=True)
def compat_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The decoded-array cache of this module's datasets, never the home folder."""
    path = tmp_path_factory.mktemp("compat-items-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DATAMINT_PIPES_CACHE", str(path))
        patch.setenv("DATAMINT_PIPES_HOME", str(tmp_path_factory.mktemp("empty-store")))  # names resolve here
        yield path


def make_view(root: Path, view: str, **options: Any) -> DatamintBaseDataset:
    project = str(root / PROJECT_OF[view])
    if view == "image":
        return ImageDataset(project=project, **options)
    if view in ("volume", "axial", "coronal"):
        volumes = VolumeDataset(project=project, **options)
        return volumes if view == "volume" else volumes.slice(SLICE_AXIS[view])
    videos = VideoDataset(project=project, **options)
    return videos if view == "video" else videos.frame_by_frame()


def sample_indices(dataset: DatamintBaseDataset, most: int = 6) -> list[int]:
    n = len(dataset)
    return sorted({0, n - 1, *range(0, n, max(1, n // most))})


def assert_same(actual: Any, expected: Any, where: str = "item") -> None:
    """Equal key by key (in order), array by array (dtype, shape, values) and object by object."""
    if isinstance(expected, np.ndarray):
        assert isinstance(actual, np.ndarray), f"{where}: {type(actual).__name__} is not a numpy array"
        assert (actual.dtype, actual.shape) == (expected.dtype, expected.shape), f"{where}: dtype/shape differ"
        assert np.array_equal(actual, expected, equal_nan=expected.dtype.kind == "f"), f"{where}: values differ"
    elif isinstance(expected, torch.Tensor):
        assert isinstance(actual, torch.Tensor), f"{where}: {type(actual).__name__} is not a tensor"
        assert (actual.dtype, actual.shape) == (expected.dtype, expected.shape), f"{where}: dtype/shape differ"
        assert torch.equal(actual, expected), f"{where}: values differ"
    elif isinstance(expected, Mapping) and not isinstance(expected, pydicom.Dataset):
        assert isinstance(actual, Mapping), f"{where}: {type(actual).__name__} is not a mapping"
        assert list(actual) == list(expected), f"{where}: keys {list(actual)} != {list(expected)}"
        for key in expected:
            assert_same(actual[key], expected[key], f"{where}[{key!r}]")
    elif isinstance(expected, (list, tuple)):
        assert type(actual) is type(expected) and len(actual) == len(expected), f"{where}: sequences differ"
        for position, (a, e) in enumerate(zip(actual, expected, strict=True)):
            assert_same(a, e, f"{where}[{position}]")
    else:
        assert actual == expected, f"{where}: {actual!r} != {expected!r}"


# -- the explicit pipeline ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SliceEvery:
    """Expand a (C,N,H,W) sample into one sample per slice along ``axis`` (0 axial, 1 coronal, 2 sagittal),
    with each author's (I,N,H,W) masks sliced the same way."""

    axis: int

    def __call__(self, sample: Sample) -> list[Sample]:
        image = sample["image"]
        out: list[Sample] = []
        for k in range(image.shape[self.axis + 1]):
            item: dict[str, Any] = dict(sample)
            item["image"] = np.take(image, k, axis=self.axis + 1)
            item["segmentations"] = {a: np.take(m, k, axis=self.axis + 1) for a, m in sample["segmentations"].items()}
            out.append(item)  # type: ignore[arg-type]
        return out


def explicit_items(root: Path, view: str, cache_dir: Path, options: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The view's items from core stages only: catalogue, schema, filter, read, decode, layout, masks,
    slicing, semantic channels, labels -- through a thread-worker :class:`Pipeline`."""
    project = LocalProject.open(root / PROJECT_OF[view], read_only=True)
    resources = project.resources()
    by_resource = project.annotations_by_resource()
    schema = build_schema(project, [a for r in resources for a in by_resource.get(r.id, [])])
    kept, annotations = filter_catalogue(
        resources, {r.id: by_resource.get(r.id, []) for r in resources}, AnnotationFilter(schema)
    )
    axis = {"axial": 0, "coronal": 1, "frames": 0}.get(view)
    pipeline = (
        Pipeline(num_items=len(kept), shuffle=False)
        .map(ReadResource(kept, annotations))
        .map(CachedDecode(project, ArrayCache(cache_dir), "axial" if axis is None else axis))
        .map(LoadSegmentations(project, schema.segmentation_codes))
        .map(CompatImage("2d" if view == "image" else "volume"))
    )
    if axis is not None:
        pipeline = pipeline.expand(SliceEvery(axis))
    if options.get("return_as_semantic_segmentation"):
        pipeline = pipeline.map(
            SemanticSegmentations(schema.num_segmentation_labels, options.get("semantic_seg_merge_strategy"))
        )
    pipeline = pipeline.map(
        ImageLabels(
            schema,
            labels_merge_strategy=options.get("image_labels_merge_strategy"),
            categories_merge_strategy=options.get("image_categories_merge_strategy"),
        )
    )
    with pipeline.loader(num_workers=2, worker_type="thread") as loader:
        return list(loader)


EQUIVALENCE_OPTIONS = {
    "instance": {},
    "semantic-merged": dict(
        return_metainfo=False,
        return_as_semantic_segmentation=True,
        semantic_seg_merge_strategy="union",
        image_labels_merge_strategy="mode",
        image_categories_merge_strategy="mode",
    ),
}


@pytest.mark.parametrize("options_name", list(EQUIVALENCE_OPTIONS))
@pytest.mark.parametrize("view", VIEWS)
def test_items_equal_an_explicit_core_pipeline_and_the_facade_pipeline(
    sample_root: Path, tmp_path: Path, view: str, options_name: str
) -> None:
    options = EQUIVALENCE_OPTIONS[options_name]
    dataset = make_view(sample_root, view, **options)
    items = [dataset[i] for i in range(len(dataset))]
    explicit = explicit_items(sample_root, view, tmp_path / "explicit-cache", options)
    assert len(explicit) == len(items) > 0
    for index, (item, reference) in enumerate(zip(items, explicit, strict=True)):
        assert set(item) == expected_keys(dataset)
        assert_same(item, {key: reference[key] for key in item}, f"{view}[{index}]")
    with dataset.pipeline().loader(num_workers=2) as loader:
        streamed = list(loader)
    assert len(streamed) == len(items)
    for index, (item, streamed_item) in enumerate(zip(items, streamed, strict=True)):
        assert_same(streamed_item, item, f"{view}.pipeline()[{index}]")


# -- the contract table ---------------------------------------------------------------------------------------


def expected_keys(dataset: DatamintBaseDataset) -> set[str]:
    keys = {"image", "image_labels", "image_categories", "annotations", "resource"}
    if dataset.return_metainfo:
        keys.add("metainfo")
    if dataset.return_segmentations:
        keys.add("segmentations")
        if dataset.semantic_seg_merge_strategy is None:
            keys.add("seg_labels")
    return keys


def expected_image_shape(resource: Resource, view: str) -> tuple[int, ...]:
    shape = tuple(resource.metadata["shape"])
    if view == "image":
        return shape if len(shape) == 3 else (shape[0], *shape[2:])
    volume = shape if len(shape) == 4 else (shape[0], 1, *shape[1:])
    if view in ("volume", "video"):
        return volume
    axis = {"axial": 0, "coronal": 1, "frames": 0}[view]
    return tuple(n for position, n in enumerate(volume) if position != axis + 1)


def _dicom_header(dataset: DatamintBaseDataset, resource: Resource) -> pydicom.Dataset:
    path = dataset.source.local_path(resource.files[0])
    assert path is not None
    return pydicom.dcmread(path, stop_before_pixels=True)


def check_image_and_metainfo(dataset: DatamintBaseDataset, item: Mapping[str, Any], view: str) -> None:
    resource: Resource = item["resource"]
    image = item["image"]
    assert isinstance(image, np.ndarray)
    assert image.shape == expected_image_shape(resource, view)
    if resource.kind in (ResourceKind.IMAGE, ResourceKind.VIDEO):
        assert image.dtype == np.uint8  # 16-bit PNGs are min-max scaled
    elif resource.kind == ResourceKind.NIFTI:
        assert image.dtype == np.float32
    else:
        header = _dicom_header(dataset, resource)
        if "RescaleSlope" in header or "RescaleIntercept" in header:
            assert image.dtype == np.float32
        else:
            assert image.dtype.kind in "iu"
    if not dataset.return_metainfo:
        return
    metainfo = item["metainfo"]
    if resource.kind == ResourceKind.DICOM:
        assert isinstance(metainfo, pydicom.Dataset) and "PixelData" not in metainfo
    elif resource.kind == ResourceKind.NIFTI:
        assert isinstance(metainfo, dict) and set(metainfo) == {"affine", "header", "shape"}
    else:
        assert metainfo is None
    pickle.loads(pickle.dumps(metainfo))


def _author(annotation: Annotation) -> str:
    return annotation.created_by or annotation.created_by_model or "unknown"


def _first_key(annotation: Annotation) -> tuple[bool, Any, str]:
    created = parse_timestamp(annotation.created_at) if annotation.created_at else None
    return (created is None, created, annotation.id)


def expected_seg_labels(annotations: Sequence[Annotation], labels: Sequence[str]) -> dict[str, np.ndarray[Any, Any]]:
    """Per author: image-scoped instances by (created_at, id), then one instance per frame-scoped (code, label)."""
    code = {name: position + 1 for position, name in enumerate(labels)}
    singles: dict[str, list[Annotation]] = {}
    groups: dict[str, set[tuple[int, str]]] = {}
    for a in annotations:
        if a.annotation_type != "segmentation":
            continue
        if a.is_frame_scoped():
            groups.setdefault(_author(a), set()).add((code[a.identifier], a.identifier))
        else:
            singles.setdefault(_author(a), []).append(a)
    return {
        author: np.array(
            [code[a.identifier] for a in sorted(singles.get(author, []), key=_first_key)]
            + [c for c, _ in sorted(groups.get(author, set()))],
            dtype=np.int32,
        )
        for author in sorted(singles.keys() | groups.keys())
    }


def expected_image_labels(annotations: Sequence[Annotation], labels: Sequence[str]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for a in annotations:
        if a.annotation_type == "label" and not a.is_frame_scoped():
            out.setdefault(_author(a), torch.zeros(len(labels), dtype=torch.int32))[labels.index(a.identifier)] = 1
    return dict(sorted(out.items()))


def expected_image_categories(
    annotations: Sequence[Annotation], categories: Sequence[tuple[str, str]]
) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    chosen = [a for a in annotations if a.annotation_type == "category" and not a.is_frame_scoped()]
    for a in sorted(chosen, key=_first_key):
        code = categories.index((a.identifier, a.text_value or ""))
        out.setdefault(_author(a), torch.tensor(code, dtype=torch.int64))
    return dict(sorted(out.items()))


def vote(flags: Sequence[Any], strategy: str) -> np.ndarray[Any, Any]:
    """union = any, intersection = all, mode = at least half (``sum >= n/2``)."""
    counts = np.sum([np.asarray(f) != 0 for f in flags], axis=0)
    if strategy == "union":
        return counts >= 1
    if strategy == "intersection":
        return counts == len(flags)
    return 2 * counts >= len(flags)


def to_semantic(masks: np.ndarray[Any, Any], codes: np.ndarray[Any, Any], num_labels: int) -> np.ndarray[Any, Any]:
    """float32 (L+1, ...): channel k = OR of the instances coded k, channel 0 = where no instance is on."""
    semantic = np.zeros((num_labels + 1, *masks.shape[1:]), np.float32)
    for mask, code in zip(masks, codes, strict=True):
        np.maximum(semantic[code], mask, out=semantic[code])
    semantic[0] = 1 - semantic[1:].max(axis=0, initial=0)
    return semantic


def check_segmentations(
    dataset: DatamintBaseDataset, item: Mapping[str, Any], instances: Mapping[str, Any] | None
) -> None:
    """Instance, per-author semantic, or merged segmentations; ``instances`` is the same item in instance mode
    (needed for semantic ones, whose channels are recomputed from its masks here)."""
    if not dataset.return_segmentations:
        return
    spatial = item["image"].shape[1:]
    num_labels = len(dataset.segmentation_labels_set)
    codes = expected_seg_labels(item["annotations"], dataset.segmentation_labels_set)
    segmentations = item["segmentations"]
    semantic: dict[str, np.ndarray[Any, Any]] = {}
    if dataset.return_as_semantic_segmentation:
        assert instances is not None
        assert_same(instances["seg_labels"], codes, "instance seg_labels")
        semantic = {
            author: to_semantic(masks, codes[author], num_labels)
            for author, masks in instances["segmentations"].items()
        }
    strategy = dataset.semantic_seg_merge_strategy
    if strategy is not None:
        assert isinstance(segmentations, torch.Tensor) and segmentations.dtype == torch.float32
        assert tuple(segmentations.shape) == (num_labels + 1, *spatial)
        if semantic:
            merged = vote(list(semantic.values()), strategy).astype(np.float32)
        else:  # no segmentation: background only
            merged = np.zeros((num_labels + 1, *spatial), np.float32)
            merged[0] = 1
        assert np.array_equal(segmentations.numpy(), merged)
        return
    assert_same(item["seg_labels"], codes, "seg_labels")
    assert list(segmentations) == sorted(segmentations) == list(codes)
    if dataset.return_as_semantic_segmentation:
        assert_same(segmentations, semantic, "semantic segmentations")
        return
    for author, masks in segmentations.items():
        assert isinstance(masks, np.ndarray) and masks.dtype == np.uint8
        assert masks.shape == (len(codes[author]), *spatial)
        assert set(np.unique(masks)) <= {0, 1}


def check_labels(dataset: DatamintBaseDataset, item: Mapping[str, Any]) -> None:
    labels = expected_image_labels(item["annotations"], dataset.image_labels_set)
    categories = expected_image_categories(item["annotations"], dataset.image_categories_set)
    label_strategy = dataset.image_labels_merge_strategy
    if label_strategy is None:
        assert_same(item["image_labels"], labels, "image_labels")
    else:
        merged = (
            vote(list(labels.values()), label_strategy)
            if labels
            else np.zeros(len(dataset.image_labels_set), dtype=bool)
        )
        assert_same(item["image_labels"], torch.from_numpy(merged.astype(np.int32)), "image_labels")
    category_strategy = dataset.image_categories_merge_strategy
    num_categories = len(dataset.image_categories_set)
    if category_strategy is None:
        assert_same(item["image_categories"], categories, "image_categories")
    elif category_strategy == "mode":
        counts = np.bincount([int(c) for c in categories.values()], minlength=num_categories)
        expected = int(counts.argmax()) if categories else -1  # ties: argmax picks the lowest code
        assert_same(item["image_categories"], torch.tensor(expected, dtype=torch.int64), "image_categories")
    else:
        hot = [np.eye(num_categories, dtype=np.int32)[int(c)] for c in categories.values()]
        merged = vote(hot, category_strategy) if hot else np.zeros(num_categories, dtype=bool)
        assert_same(item["image_categories"], torch.from_numpy(merged.astype(np.int32)), "image_categories")


def check_filters(dataset: DatamintBaseDataset, annotations: Sequence[Annotation]) -> None:
    """Every annotation left passes the dataset's include/exclude lists and is in its schema."""

    def allowed(name: str | None, include: list[str] | None, exclude: list[str] | None) -> bool:
        return name is None or ((include is None or name in include) and (exclude is None or name not in exclude))

    for a in annotations:
        assert allowed(a.created_by, dataset.include_annotators, dataset.exclude_annotators)
        if a.annotation_type == "segmentation":
            assert a.identifier in dataset.segmentation_labels_set
            assert allowed(a.identifier, dataset.include_segmentation_names, dataset.exclude_segmentation_names)
        elif a.annotation_type == "label" and a.is_frame_scoped():
            assert a.identifier in dataset.frame_labels_set
            assert allowed(a.identifier, dataset.include_frame_label_names, dataset.exclude_frame_label_names)
        elif a.annotation_type == "label":
            assert a.identifier in dataset.image_labels_set
            assert allowed(a.identifier, dataset.include_image_label_names, dataset.exclude_image_label_names)


def check_item(
    dataset: DatamintBaseDataset, item: Mapping[str, Any], view: str, instances: Mapping[str, Any] | None = None
) -> None:
    """The whole contract table for one item (``instances``: the same item in instance mode, for semantic
    datasets)."""
    assert set(item) == expected_keys(dataset)
    assert isinstance(item["resource"], Resource)
    assert isinstance(item["annotations"], list) and all(isinstance(a, Annotation) for a in item["annotations"])
    check_image_and_metainfo(dataset, item, view)
    check_segmentations(dataset, item, instances)
    check_labels(dataset, item)
    check_filters(dataset, item["annotations"])


def _merged(strategy: str) -> dict[str, Any]:
    return dict(
        return_as_semantic_segmentation=True,
        semantic_seg_merge_strategy=strategy,
        image_labels_merge_strategy=strategy,
        image_categories_merge_strategy=strategy,
    )


CONTRACT_OPTIONS: dict[str, dict[str, Any]] = {
    "instance": {},
    "no-segmentations-no-metainfo": dict(return_metainfo=False, return_segmentations=False),
    "semantic": dict(return_as_semantic_segmentation=True),
    "merged-union": _merged("union"),
    "merged-intersection": _merged("intersection"),
    "merged-mode": _merged("mode"),
    "label-merges-only": dict(image_labels_merge_strategy="intersection", image_categories_merge_strategy="union"),
    "include-filters-inferred-schema": dict(
        worklists=None,
        include_annotators=[ALICE],
        include_segmentation_names=["tissue"],
        include_image_label_names=["good_quality"],
        include_frame_label_names=["key_frame"],
        return_as_semantic_segmentation=True,
    ),
    "exclude-filters": dict(
        exclude_annotators=[ALICE],
        exclude_segmentation_names=["tissue"],
        exclude_image_label_names=["good_quality"],
        exclude_frame_label_names=["key_frame"],
        return_metainfo=False,
    ),
}


@pytest.mark.filterwarnings("ignore:include_frame_label_names names:UserWarning")  # images have no frame labels
@pytest.mark.parametrize("options_name", list(CONTRACT_OPTIONS))
@pytest.mark.parametrize("view", VIEWS)
def test_items_follow_the_contract_table(sample_root: Path, view: str, options_name: str) -> None:
    options = CONTRACT_OPTIONS[options_name]
    dataset = make_view(sample_root, view, **options)
    instance_options = {**options, "return_as_semantic_segmentation": False, "semantic_seg_merge_strategy": None}
    instance_dataset = (
        make_view(sample_root, view, **instance_options) if dataset.return_as_semantic_segmentation else None
    )
    indices = sample_indices(dataset)
    for index in indices:
        instances = instance_dataset[index] if instance_dataset is not None else None
        check_item(dataset, dataset[index], view, instances)
    if "include_annotators" in options:
        assert all(set(dataset[i].get("segmentations", {})) <= {ALICE} for i in indices)
    if "exclude_annotators" in options:
        assert all(set(dataset[i]["segmentations"]) == {BOB} for i in indices)


def test_sixteen_bit_png_is_min_max_scaled_per_image(sample_root: Path) -> None:
    dataset = ImageDataset(project=str(sample_root / "sample-images"), return_segmentations=False)
    (index,) = [i for i, r in enumerate(dataset.resources) if r.filename == "ct_slice_16bit.png"]
    raw = np.asarray(Image.open(dataset.source.local_path(dataset.resources[index].files[0])))
    assert raw.dtype == np.uint16
    image = dataset[index]["image"]
    assert image.dtype == np.uint8 and image.shape == (1, *raw.shape)
    expected = (raw.astype(np.float64) - raw.min()) / (raw.max() - raw.min()) * 255
    assert np.abs(image[0] - expected).max() < 1.0
    assert (image.min(), image.max()) == (0, 255)


def test_constant_sixteen_bit_image_gives_zeros_not_nan() -> None:
    resource = Resource(id="r", filename="flat.png", mimetype="image/png", files=("flat.png",))
    flat = np.full((1, 4, 5), 1234, np.uint16)
    out = CompatImage("2d")({"image": flat, "resource": resource})
    assert out["image"].dtype == np.uint8 and not out["image"].any()


# -- label schema, filters, external annotations ----------------------------------------------------------


@pytest.mark.parametrize("name", ["sample-images", "sample-volumes", "sample-videos"])
def test_schema_from_worklists_keeps_spec_order_and_inferred_is_sorted(sample_root: Path, name: str) -> None:
    project = str(sample_root / name)
    frame_labels = [] if name == "sample-images" else ["key_frame"]
    from_worklists = VolumeDataset(project=project)
    assert from_worklists.segmentation_labels_set == ["tissue", "bright"]
    assert from_worklists.image_labels_set == ["artifact", "good_quality"]
    assert from_worklists.image_categories_set == [("view", "standard"), ("view", "oblique")]
    assert from_worklists.frame_labels_set == frame_labels
    inferred = VolumeDataset(project=project, worklists=None)
    assert inferred.segmentation_labels_set == ["bright", "tissue"]
    assert inferred.image_labels_set == ["artifact", "good_quality"]
    assert inferred.image_categories_set == [("view", "oblique"), ("view", "standard")]
    assert inferred.frame_labels_set == frame_labels

    # The same (label, mask) instances under both schemas, coded by each schema (frame-scoped groups are
    # ordered by code, so their order may differ).
    def named_instances(dataset: DatamintBaseDataset, item: Mapping[str, Any], author: str) -> list[Any]:
        labels = dataset.segmentation_labels_set
        pairs = zip(item["seg_labels"][author].tolist(), item["segmentations"][author], strict=True)
        return sorted((labels[code - 1], mask.tobytes()) for code, mask in pairs)

    a, b = from_worklists[0], inferred[0]
    assert list(a["segmentations"]) == list(b["segmentations"]) == [ALICE, BOB]
    for author in a["segmentations"]:
        assert named_instances(from_worklists, a, author) == named_instances(inferred, b, author)


def test_filters_remove_annotations_and_include_unannotated_drops_emptied_resources(sample_root: Path) -> None:
    project = str(sample_root / "sample-images")
    everything = ImageDataset(project=project, return_segmentations=False)
    assert len(everything) == 7
    only_bob = ImageDataset(project=project, include_annotators=[BOB], return_segmentations=False)
    assert all(
        {a.created_by for a in anns} == {BOB} and len(anns) < len(all_anns)
        for anns, all_anns in zip(only_bob.resource_annotations, everything.resource_annotations, strict=True)
    )
    nobody = dict(include_annotators=["nobody@example.org"], return_segmentations=False)
    assert len(ImageDataset(project=project, include_unannotated=False, **nobody)) == 0
    kept = ImageDataset(project=project, include_unannotated=True, **nobody)
    assert len(kept) == 7
    item = kept[1]
    assert (item["annotations"], item["image_labels"], item["image_categories"]) == ([], {}, {})


@pytest.fixture
def external_project(sample_root: Path, tmp_path: Path) -> Path:
    """A copy of sample-images with annotations outside the worklist schema and one unannotated resource."""
    path = tmp_path / "sample-images"
    shutil.copytree(sample_root / "sample-images", path)
    project = LocalProject.open(path)
    resources = project.resources()
    target = resources[1]  # microaneurysms.png, (1,102,102)
    mask = np.zeros((102, 102), np.uint8)
    mask[10:30, 40:60] = 1
    project.add_annotation(target.id, "lesion", "segmentation", created_by=ALICE, mask=mask)
    project.add_annotation(target.id, "urgent", "label", created_by=BOB)
    project.add_annotation(target.id, "density", "category", created_by=BOB, text_value="high")
    phantom = project.local_path(resources[3].files[0])
    assert phantom is not None
    project.add_resource(phantom, filename="unannotated.png")
    project.close()
    return path


def test_external_annotations_are_dropped_unless_allowed(external_project: Path) -> None:
    strict = ImageDataset(project=str(external_project))
    assert len(strict) == 8
    assert strict.segmentation_labels_set == ["tissue", "bright"]
    assert strict.image_labels_set == ["artifact", "good_quality"]
    assert strict.image_categories_set == [("view", "standard"), ("view", "oblique")]
    assert {"lesion", "urgent", "density"}.isdisjoint(a.identifier for a in strict[1]["annotations"])

    allowed = ImageDataset(project=str(external_project), allow_external_annotations=True)
    assert allowed.segmentation_labels_set == ["tissue", "bright", "lesion"]
    assert allowed.image_labels_set == ["artifact", "good_quality", "urgent"]
    assert allowed.image_categories_set == [("view", "standard"), ("view", "oblique"), ("density", "high")]
    item = allowed[1]
    check_item(allowed, item, "image")
    assert 3 in item["seg_labels"][ALICE].tolist()
    assert item["image_labels"][BOB].tolist()[2] == 1
    semantic = ImageDataset(
        project=str(external_project), allow_external_annotations=True, return_as_semantic_segmentation=True
    )[1]
    assert semantic["segmentations"][ALICE].shape == (4, 102, 102)
    assert semantic["segmentations"][ALICE][3, 10:30, 40:60].all()


def test_unannotated_resource_items(external_project: Path) -> None:
    project = str(external_project)
    assert len(ImageDataset(project=project, include_unannotated=False)) == 7
    instance = ImageDataset(project=project)
    (index,) = [i for i, r in enumerate(instance.resources) if r.filename == "unannotated.png"]
    item = instance[index]
    check_item(instance, item, "image")
    assert (item["segmentations"], item["seg_labels"], item["image_labels"], item["image_categories"]) == (
        {},
        {},
        {},
        {},
    )
    merged = ImageDataset(project=project, **_merged("union"))[index]
    background = torch.zeros((3, 400, 400), dtype=torch.float32)
    background[0] = 1
    assert_same(merged["segmentations"], background)
    assert_same(merged["image_labels"], torch.zeros(2, dtype=torch.int32))
    assert_same(merged["image_categories"], torch.zeros(2, dtype=torch.int32))
    mode = ImageDataset(project=project, image_categories_merge_strategy="mode")[index]
    assert_same(mode["image_categories"], torch.tensor(-1, dtype=torch.int64))


# -- arguments, errors and lazy construction ------------------------------------------------------------------


def test_resources_argument_takes_local_project_resources(sample_root: Path) -> None:
    project = LocalProject.open(sample_root / "sample-images", read_only=True)
    subset = project.resources()[1:4]
    dataset = ImageDataset(resources=subset)
    assert [r.id for r in dataset.resources] == [r.id for r in subset]
    assert dataset.project is None
    assert dataset.segmentation_labels_set == ["bright", "tissue"]  # inferred: no worklists with resources=
    by_project = ImageDataset(project=str(sample_root / "sample-images"), worklists=None).subset([1, 2, 3])
    for index in range(len(dataset)):
        check_item(dataset, dataset[index], "image")
        assert_same(dataset[index], by_project[index], f"resources=[{index}]")
    with pytest.raises(DatamintDatasetException):
        len(ImageDataset(resources=[r.id for r in subset]))


def test_project_by_folder_name_id_or_object(sample_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATAMINT_PIPES_HOME", str(sample_root))  # the store root: projects by name
    stored = LocalProject.open(sample_root / "sample-videos", read_only=True)
    ids = [r.id for r in stored.resources()]
    for reference in (str(sample_root / "sample-videos"), "sample-videos", stored.id, stored.project):
        dataset = VideoDataset(project=reference)
        assert [r.id for r in dataset.resources] == ids, reference
        assert dataset.project is not None and dataset.project.id == stored.id
    with pytest.raises(DatamintPipesError, match="no-such-project"):
        len(VideoDataset(project="no-such-project"))


@pytest.mark.parametrize(
    ("options", "error"),
    [
        (dict(return_segmentations=False, return_as_semantic_segmentation=True), ValueError),
        (dict(semantic_seg_merge_strategy="union"), ValueError),
        (dict(return_as_semantic_segmentation=True, semantic_seg_merge_strategy="majority"), ValueError),
        (dict(include_annotators=[ALICE], exclude_annotators=[BOB]), DatamintDatasetException),
        (dict(include_segmentation_names=["a"], exclude_segmentation_names=["b"]), DatamintDatasetException),
        (dict(include_image_label_names=["a"], exclude_image_label_names=["b"]), DatamintDatasetException),
        (dict(include_frame_label_names=["a"], exclude_frame_label_names=["b"]), DatamintDatasetException),
    ],
)
@pytest.mark.parametrize("cls", [ImageDataset, VolumeDataset, VideoDataset])
def test_bad_options_raise_at_construction(
    sample_root: Path, cls: type[DatamintBaseDataset], options: dict[str, Any], error: type[Exception]
) -> None:
    with pytest.raises(error):
        cls(project=str(sample_root / "sample-images"), **options)


def test_project_and_resources_are_exclusive(sample_root: Path) -> None:
    resources = LocalProject.open(sample_root / "sample-images", read_only=True).resources()
    with pytest.raises(DatamintDatasetException):
        ImageDataset(project=str(sample_root / "sample-images"), resources=resources)
    with pytest.raises(DatamintDatasetException):
        ImageDataset()


@pytest.mark.parametrize("cls", [ImageDataset, VolumeDataset, VideoDataset])
def test_construction_makes_no_io(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cls: type[Any]) -> None:
    missing = tmp_path / "no-such-project"
    dataset = cls(project=str(missing))  # constructing is fine ...
    assert "not prepared" in repr(dataset)
    with pytest.raises(DatamintPipesError, match="no-such-project"):
        len(dataset)  # ... the first access fails

    base = importlib.import_module("datamint_compat.dataset.base")

    def no_io(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("construction opened the project")

    monkeypatch.setattr(base, "open_source", no_io)
    monkeypatch.setattr(base, "source_of_resources", no_io)
    cls(project="anything", server_url="http://127.0.0.1:9", api_key="k", return_as_semantic_segmentation=True)
    cls(resources=[Resource(id="r", filename="x.png", mimetype="image/png", files=("x.png",))])


def test_volume_dataset_of_2d_images_adds_a_unit_depth_to_image_and_masks(sample_root: Path) -> None:
    project = str(sample_root / "sample-images")
    images = ImageDataset(project=project)
    volumes = VolumeDataset(project=project)
    slices = volumes.slice("axial")
    assert len(volumes) == len(slices) == len(images) == 7
    for index in (1, 5):
        flat, deep, sliced = images[index], volumes[index], slices[index]
        check_item(volumes, deep, "volume")
        assert_same(deep["image"][:, 0], flat["image"])
        assert_same({a: m[:, 0] for a, m in deep["segmentations"].items()}, flat["segmentations"])
        assert_same(sliced["image"], flat["image"])
        assert_same(sliced["segmentations"], flat["segmentations"])


def test_image_dataset_refuses_multi_frame_resources(sample_root: Path) -> None:
    dataset = ImageDataset(project=str(sample_root / "sample-volumes"), return_segmentations=False)
    with pytest.raises(DatamintDatasetException, match=r"slice\(\)"):
        dataset[0]


# -- albumentations -----------------------------------------------------------------------------------------


def _needs_augment() -> None:
    augment = importlib.import_module("datamint_pipes.stages.augment")
    if not hasattr(augment, "Augment"):
        pytest.skip("alb_transform needs datamint_pipes.stages.augment.Augment (being written)")


def test_alb_transform_flips_image_and_masks_together(sample_root: Path) -> None:
    _needs_augment()
    import albumentations as A

    project = str(sample_root / "sample-images")
    plain = ImageDataset(project=project)[1]
    flipped = ImageDataset(project=project, alb_transform=A.HorizontalFlip(p=1.0))[1]
    assert_same(flipped["image"], np.ascontiguousarray(plain["image"][..., ::-1]))
    for author, masks in plain["segmentations"].items():
        assert np.array_equal(flipped["segmentations"][author], masks[..., ::-1])


def test_alb_transform_resizes_volumes_and_every_mask(sample_root: Path) -> None:
    _needs_augment()
    import albumentations as A

    dataset = VolumeDataset(project=str(sample_root / "sample-volumes"), alb_transform=A.Resize(8, 12))
    item = dataset[1]  # anatomical.nii (1,25,41,33)
    assert item["image"].shape == (1, 25, 8, 12)
    for masks in item["segmentations"].values():
        assert masks.shape[1:] == (25, 8, 12)
    sliced = dataset.slice("axial")
    sliced.return_segmentations = False
    sliced.set_transform(A.Resize(8, 12))
    assert sliced[0]["image"].shape == (1, 8, 12)  # applied without segmentations too


@pytest.mark.parametrize("view", ["image", "volume", "axial"])
def test_apply_alb_transform_moves_image_and_masks_together(sample_root: Path, view: str) -> None:
    _needs_augment()
    import albumentations as A

    dataset = make_view(sample_root, view, alb_transform=A.HorizontalFlip(p=1.0))
    image = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    masks = {ALICE: (image[:1] > 50).astype(np.uint8).repeat(2, axis=0)}
    if view == "image":
        image, masks = image[:, 0], {a: m[:, 0] for a, m in masks.items()}
    elif view == "axial":  # a single slice, (C,1,H,W) as the documentation allows
        image, masks = image[:, :1], {a: m[:, :1] for a, m in masks.items()}
    out = dataset.apply_alb_transform(image, masks)
    squeeze = (lambda a: a[:, 0]) if view == "axial" else (lambda a: a)
    assert_same(np.asarray(out["image"]), np.ascontiguousarray(squeeze(image)[..., ::-1]))
    assert np.array_equal(out["segmentations"][ALICE], squeeze(masks[ALICE])[..., ::-1])
