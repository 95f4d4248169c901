"""``split`` / ``filter`` / ``subset`` / ``+`` of the facades (compat contract, "split / filter / subset").

* Local splits reproduce the reference client's partition (``random.Random(seed).shuffle``, ``round``),
  checked with Hypothesis over sizes, ratios and seeds on subsets of a generated project.
* Project splits replay the sample projects' assignment history (``SPLIT_TIMES``) and keep their lineage
  through ``.slice()`` and ``.frame_by_frame()``.
* Legacy ``split:*`` tags warn; conflicting arguments raise; ``filter`` is an AND of its criteria (checked
  with Hypothesis against predicates evaluated here); ``subset`` keeps order; ``a + b`` still collates.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import random
import re
import shutil
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from datamint_compat.dataset import DatamintBaseDataset, ImageDataset, VideoDataset, VolumeDataset
from datamint_pipes.model import Annotation, Resource
from datamint_pipes.samples import SPLIT_TIMES
from datamint_pipes.sources.local import LocalProject

SPLIT_NAMES = ("train", "val", "test", "holdout")
GENERATED_SIZE = 30
HYPOTHESIS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module", autouse=True)
def compat_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The decoded-array cache of this module's datasets, never the home folder."""
    path = tmp_path_factory.mktemp("compat-split-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DATAMINT_PIPES_CACHE", str(path))
        yield path


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project of GENERATED_SIZE 8x8 gray PNGs: tags ``split:*`` and ``even``/``odd``/``third``, five patients,
    an image label on two of three resources and a segmentation on every fourth."""
    root = tmp_path_factory.mktemp("generated")
    project = LocalProject.create(root / "project", "generated")
    files = root / "files"
    files.mkdir()
    rng = np.random.default_rng(0)
    for i in range(GENERATED_SIZE):
        path = files / f"{'scan' if i % 2 else 'photo'}_{i:02d}.png"
        Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(path)
        tags = [f"split:{'train' if i % 3 else 'test'}", "even" if i % 2 == 0 else "odd"]
        if i % 3 == 0:
            tags.append("third")
        resource = project.add_resource(path, tags=tags, patient_id=f"patient-{i % 5}")
        if i % 3:
            project.add_annotation(resource.id, "finding" if i % 2 else "normal", "label", created_by="alice")
        if i % 4 == 0:
            mask = np.zeros((8, 8), np.uint8)
            mask[2:5, 2:6] = 1
            project.add_annotation(resource.id, "lesion", "segmentation", created_by="bob", mask=mask)
    project.close()
    return root / "project"


@pytest.fixture(scope="module")
def generated_dataset(generated: Path) -> ImageDataset:
    return ImageDataset(project=str(generated))


def reference_partition(n: int, ratios: Mapping[str, float], seed: int) -> dict[str, list[int]]:
    """The documented partition: shuffle ``range(n)`` with ``random.Random(seed)``; in keyword order, each split
    but the last takes ``round(ratio * n)``, the last the rest."""
    indices = list(range(n))
    random.Random(seed).shuffle(indices)
    parts: dict[str, list[int]] = {}
    start = 0
    names = list(ratios)
    for name in names[:-1]:
        count = round(ratios[name] * n)
        parts[name] = indices[start : start + count]
        start += count
    parts[names[-1]] = indices[start:]
    return parts


@st.composite
def split_ratios(draw: st.DrawFn) -> dict[str, float]:
    weights = draw(st.lists(st.integers(1, 20), min_size=2, max_size=len(SPLIT_NAMES)))
    names = draw(st.permutations(SPLIT_NAMES))[: len(weights)]
    return {name: weight / sum(weights) for name, weight in zip(names, weights, strict=True)}


@HYPOTHESIS
@given(n=st.integers(0, GENERATED_SIZE), ratios=split_ratios(), seed=st.integers(0, 2**32 - 1))
def test_local_split_reproduces_the_reference_partition(
    generated_dataset: ImageDataset, n: int, ratios: dict[str, float], seed: int
) -> None:
    dataset = generated_dataset.subset(list(range(n)))
    position = {r.id: p for p, r in enumerate(dataset.resources)}
    parts = dataset.split(seed=seed, **ratios)
    assert list(parts) == list(ratios)
    expected = reference_partition(n, ratios, seed)
    for name, part in parts.items():
        assert type(part) is ImageDataset
        assert [position[r.id] for r in part.resources] == expected[name]
        assert (part.split_name, part.split_source, part.split_as_of_timestamp) == (name, "local", None)
    assert sorted(p for part in parts.values() for p in (position[r.id] for r in part.resources)) == list(range(n))


def test_local_split_of_slices_counts_slices(sample_root: Path) -> None:
    slices = VolumeDataset(project=str(sample_root / "sample-volumes")).slice("coronal")
    parts = slices.split(train=0.8, test=0.2, seed=7)
    expected = reference_partition(len(slices), {"train": 0.8, "test": 0.2}, 7)
    assert {name: len(part) for name, part in parts.items()} == {name: len(v) for name, v in expected.items()}
    first = expected["train"][0]
    assert np.array_equal(parts["train"][0]["image"], slices[first]["image"])


@HYPOTHESIS
@given(ratios=split_ratios(), seed=st.integers(0, 2**16))
def test_patient_split_keeps_patients_together(
    generated_dataset: ImageDataset, ratios: dict[str, float], seed: int
) -> None:
    parts = generated_dataset.split(seed=seed, by_patient=True, **ratios)
    owner: dict[str | None, str] = {}
    total = 0
    for name, part in parts.items():
        assert part.split_source == "local_by_patient"
        total += len(part)
        for resource in part.resources:
            assert owner.setdefault(resource.patient_id, name) == name, "a patient is in two splits"
    assert total == len(generated_dataset)


@pytest.mark.parametrize(
    "ratios",
    [{"train": 1.0}, {"train": 0.7, "test": 0.2}, {"train": 1.2, "test": -0.2}, {"train": 0.5, "test": 0.0}],
)
def test_invalid_ratios_raise(generated_dataset: ImageDataset, ratios: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        generated_dataset.split(seed=0, **ratios)


@pytest.mark.parametrize(
    "arguments",
    [
        dict(use_server_splits=True, use_project_splits=True),
        dict(use_project_splits=True, train=0.5, test=0.5),
        dict(use_server_splits=True, train=0.5, test=0.5),
    ],
)
def test_conflicting_split_arguments_raise(generated_dataset: ImageDataset, arguments: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        generated_dataset.split(**arguments)


def test_project_splits_need_a_project(generated: Path) -> None:
    by_resources = ImageDataset(resources=LocalProject.open(generated, read_only=True).resources())
    with pytest.raises(ValueError):
        by_resources.split(use_project_splits=True)


# -- project-scoped splits ------------------------------------------------------------------------------------


def expected_project_parts(project: LocalProject, as_of: str) -> dict[str, list[str]]:
    """Resource ids per split at ``as_of``, from the sample builder's two revisions (see ``samples.py``)."""
    ids = [r.id for r in project.resources()]
    cut = max(1, round(0.7 * len(ids)))
    assigned = dict.fromkeys(ids[:cut], "train") | dict.fromkeys(ids[cut:], "test")
    if as_of >= SPLIT_TIMES[1]:
        assigned[ids[0]] = "val"
        if len(ids) > cut:
            assigned[ids[-1]] = "train"
    parts: dict[str, list[str]] = {}
    for rid in ids:
        parts.setdefault(assigned[rid], []).append(rid)
    return parts


@pytest.mark.parametrize("as_of", [*SPLIT_TIMES, "2026-03-01T00:00:00Z", "2027-01-01T00:00:00+00:00"])
@pytest.mark.parametrize(
    ("name", "cls"),
    [("sample-images", ImageDataset), ("sample-volumes", VolumeDataset), ("sample-videos", VideoDataset)],
)
def test_project_splits_replay_history(sample_root: Path, name: str, cls: type[Any], as_of: str) -> None:
    dataset = cls(project=str(sample_root / name))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the project mode is chosen without a deprecation warning
        parts = dataset.split(as_of_timestamp=as_of)
    project = LocalProject.open(sample_root / name, read_only=True)
    expected = expected_project_parts(project, as_of)
    assert {n: [r.id for r in p.resources] for n, p in parts.items()} == expected
    for split_name, part in parts.items():
        assert type(part) is cls
        assert (part.split_name, part.split_source, part.split_as_of_timestamp) == (split_name, "project_api", as_of)
    assert dataset.split(use_project_splits=True, as_of_timestamp=as_of).keys() == parts.keys()


def test_project_split_before_any_assignment_is_empty(sample_root: Path) -> None:
    assert VideoDataset(project=str(sample_root / "sample-videos")).split(as_of_timestamp="2025-01-01T00:00:00Z") == {}


def test_project_split_captures_now_and_replays_it(sample_root: Path) -> None:
    dataset = ImageDataset(project=str(sample_root / "sample-images"))
    before = dt.datetime.now(dt.UTC)
    parts = dataset.split()
    snapshot = parts["train"].split_as_of_timestamp
    assert snapshot is not None and re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", snapshot)
    captured = dt.datetime.fromisoformat(snapshot.replace("Z", "+00:00"))
    assert before - dt.timedelta(seconds=1) <= captured <= dt.datetime.now(dt.UTC)
    assert all(part.split_as_of_timestamp == snapshot for part in parts.values())
    replayed = dataset.split(as_of_timestamp=snapshot)
    assert {n: [r.id for r in p.resources] for n, p in replayed.items()} == {
        n: [r.id for r in p.resources] for n, p in parts.items()
    }


def _lineage(dataset: DatamintBaseDataset) -> tuple[Any, ...]:
    return (dataset.split_name, dataset.split_source, dataset.split_as_of_timestamp)


def test_split_lineage_survives_slice_and_frame_by_frame(sample_root: Path) -> None:
    volumes = VolumeDataset(project=str(sample_root / "sample-volumes")).split(as_of_timestamp=SPLIT_TIMES[1])
    for split_name, part in volumes.items():
        for axis in ("axial", "coronal"):
            sliced = part.slice(axis)
            assert _lineage(sliced) == (split_name, "project_api", SPLIT_TIMES[1])
            ids = {r.id for r in part.resources}
            assert {sliced.get_resource(i).id for i in range(len(sliced))} == ids
            shapes = [r.metadata["shape"] for r in part.resources]
            assert len(sliced) == sum(s[{"axial": 1, "coronal": 2}[axis]] for s in shapes)
    videos = VideoDataset(project=str(sample_root / "sample-videos")).split(as_of_timestamp=SPLIT_TIMES[0])
    for split_name, part in videos.items():
        frames = part.frame_by_frame()
        assert _lineage(frames) == (split_name, "project_api", SPLIT_TIMES[0])
        assert len(frames) == 30 * len(part)
        assert frames[0]["image"].shape == (3, 240, 320)


def test_splitting_slices_by_project_keeps_slices_of_assigned_resources(sample_root: Path) -> None:
    slices = VolumeDataset(project=str(sample_root / "sample-volumes")).slice("axial")
    parts = slices.split(as_of_timestamp=SPLIT_TIMES[0])
    project = LocalProject.open(sample_root / "sample-volumes", read_only=True)
    expected = expected_project_parts(project, SPLIT_TIMES[0])
    for split_name, part in parts.items():
        assert _lineage(part) == (split_name, "project_api", SPLIT_TIMES[0])
        assert {part.get_resource(i).id for i in range(len(part))} == set(expected[split_name])


# -- legacy tags ----------------------------------------------------------------------------------------------


def test_legacy_tag_splits_warn(generated: Path) -> None:
    resources = LocalProject.open(generated, read_only=True).resources()
    by_resources = ImageDataset(resources=resources)
    with pytest.deprecated_call():
        parts = by_resources.split()
    expected = {name: [r.id for r in resources if f"split:{name}" in r.tags] for name in ("train", "test")}
    assert {n: [r.id for r in p.resources] for n, p in parts.items()} == expected
    assert all(p.split_source == "server_tags" and p.split_as_of_timestamp is None for p in parts.values())
    with pytest.deprecated_call():
        forced = ImageDataset(project=str(generated)).split(use_server_splits=True)
    assert {n: len(p) for n, p in forced.items()} == {n: len(v) for n, v in expected.items()}


# -- filter / subset / concatenation ------------------------------------------------------------------------


def keep(
    resource: Resource,
    annotations: Sequence[Annotation],
    tags: list[str] | None,
    filename_pattern: str | None,
    has_annotations: bool | None,
    annotation_names: list[str] | None,
    custom_fn: Callable[[Resource, Sequence[Annotation]], bool] | None,
) -> bool:
    """The documented meaning of each criterion, combined with AND."""
    return (
        (tags is None or bool(set(tags) & set(resource.tags)))
        and (filename_pattern is None or fnmatch.fnmatch(resource.filename, filename_pattern))
        and (has_annotations is None or bool(annotations) == has_annotations)
        and (annotation_names is None or any(a.identifier in annotation_names for a in annotations))
        and (custom_fn is None or custom_fn(resource, annotations))
    )


def _odd_position(resource: Resource, annotations: Sequence[Annotation]) -> bool:
    return int(resource.filename[-6:-4]) % 2 == 1


CRITERIA = st.fixed_dictionaries(
    {},
    optional={
        "tags": st.lists(st.sampled_from(["even", "odd", "third", "split:test", "absent"]), min_size=1, max_size=2),
        "filename_pattern": st.sampled_from(["scan_*", "photo_1*.png", "*_0?.png", "*.jpg"]),
        "has_annotations": st.booleans(),
        "annotation_names": st.lists(st.sampled_from(["finding", "normal", "lesion", "absent"]), min_size=1),
        "custom_fn": st.just(_odd_position),
    },
).filter(bool)


@HYPOTHESIS
@given(criteria=CRITERIA, more=CRITERIA)
def test_filter_is_the_and_of_its_criteria_and_chains(
    generated_dataset: ImageDataset, criteria: dict[str, Any], more: dict[str, Any]
) -> None:
    arguments = dict.fromkeys(("tags", "filename_pattern", "has_annotations", "annotation_names", "custom_fn"))
    pairs = list(zip(generated_dataset.resources, generated_dataset.resource_annotations, strict=True))
    filtered = generated_dataset.filter(**criteria)
    assert type(filtered) is ImageDataset
    expected = [r.id for r, anns in pairs if keep(r, anns, **{**arguments, **criteria})]
    assert [r.id for r in filtered.resources] == expected
    chained = filtered.filter(**more)
    both = [
        r.id
        for r, anns in pairs
        if keep(r, anns, **{**arguments, **criteria}) and keep(r, anns, **{**arguments, **more})
    ]
    assert [r.id for r in chained.resources] == both


def test_filter_without_criteria_raises(generated_dataset: ImageDataset) -> None:
    with pytest.raises(ValueError):
        generated_dataset.filter()


def test_filter_keeps_class_and_configuration(sample_root: Path) -> None:
    dataset = VolumeDataset(
        project=str(sample_root / "sample-volumes"),
        return_as_semantic_segmentation=True,
        semantic_seg_merge_strategy="union",
        return_metainfo=False,
    )
    niftis = dataset.filter(filename_pattern="*.nii*").filter(annotation_names=["key_frame"])
    assert type(niftis) is VolumeDataset and len(niftis) == 3
    item = niftis[0]
    assert set(item) == {"image", "segmentations", "image_labels", "image_categories", "annotations", "resource"}
    assert isinstance(item["segmentations"], torch.Tensor) and item["segmentations"].shape[0] == 3
    assert niftis.slice("axial")[0]["image"].ndim == 3


def test_filter_sees_filtered_annotations(sample_root: Path) -> None:
    dataset = ImageDataset(project=str(sample_root / "sample-images"), exclude_segmentation_names=["bright"])
    assert len(dataset.filter(annotation_names=["bright"])) == 0
    assert len(dataset.filter(annotation_names=["tissue"])) == 7


def test_subset_keeps_order(sample_root: Path, generated_dataset: ImageDataset) -> None:
    order = [5, 0, 17, 3, 3]
    subset = generated_dataset.subset(order)
    assert [r.id for r in subset.resources] == [generated_dataset.resources[i].id for i in order]
    for position, index in enumerate(order):
        assert np.array_equal(subset[position]["image"], generated_dataset[index]["image"])
    slices = VideoDataset(project=str(sample_root / "sample-videos")).frame_by_frame()
    picked = slices.subset([45, 2])
    assert np.array_equal(picked[0]["image"], slices[45]["image"])
    assert np.array_equal(picked[1]["image"], slices[2]["image"])


def test_concatenation_still_collates(generated_dataset: ImageDataset) -> None:
    parts = generated_dataset.split(train=0.5, val=0.25, test=0.25, seed=3)
    both = parts["train"] + parts["val"]
    everything = both + parts["test"]
    assert len(both) == len(parts["train"]) + len(parts["val"])
    assert len(everything) == len(generated_dataset)
    assert np.array_equal(both[len(parts["train"])]["image"], parts["val"][0]["image"])
    loader = everything.get_dataloader(batch_size=8, shuffle=False)
    batches = list(loader)
    assert sum(len(b["image"]) for b in batches) == len(generated_dataset)
    first = batches[0]
    assert isinstance(first["image"], torch.Tensor) and tuple(first["image"].shape) == (8, 1, 8, 8)
    assert len(first["resource"]) == 8 and len(first["image_labels"]) == 8
    assert torch.equal(first["image"][0], torch.from_numpy(parts["train"][0]["image"].copy()))


def test_mixed_shapes_fail_to_collate_with_a_resize_hint(sample_root: Path) -> None:
    dataset = ImageDataset(project=str(sample_root / "sample-images"), return_segmentations=False)
    with pytest.raises(ValueError, match="resize"):
        next(iter(dataset.get_dataloader(batch_size=2)))


def test_split_of_a_copied_project_sees_new_assignments(sample_root: Path, tmp_path: Path) -> None:
    path = tmp_path / "sample-images"
    shutil.copytree(sample_root / "sample-images", path)
    project = LocalProject.open(path)
    ids = [r.id for r in project.resources()]
    project.assign_split(ids[:2], "holdout", at="2026-09-01T00:00:00Z")
    project.close()
    parts = ImageDataset(project=str(path)).split(as_of_timestamp="2026-09-02T00:00:00Z")
    assert [r.id for r in parts["holdout"].resources] == ids[:2]
    earlier = ImageDataset(project=str(path)).split(as_of_timestamp=SPLIT_TIMES[1])
    assert "holdout" not in earlier
