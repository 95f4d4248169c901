"""Facades streamed through real workers (compat contract, "Augmentation, collate, loaders").

* ``get_dataloader(num_workers=2)`` -- a ``torch.utils.data.DataLoader`` with the facade's collate -- under
  ``fork`` for every facade and under ``spawn`` for two (each spawn start costs seconds);
* ``dataset.pipeline().loader(...)`` -- the torchdata-nodes loader -- with thread and process workers;
* batches equal the collate of the map-style items; worker errors keep their type.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import torch

from datamint_compat.dataset import (
    DatamintBaseDataset,
    DatamintDatasetException,
    ImageDataset,
    VideoDataset,
    VolumeDataset,
)
from datamint_pipes.stages.collate import Collate

VIEWS = ("image", "volume", "video", "axial", "coronal", "frames")
UNIFORM_VIEWS = ("frames", "video")  # every item has one shape: batches of several items stack
needs_fork = pytest.mark.skipif(
    "fork" not in multiprocessing.get_all_start_methods(), reason="the fork start method is not available"
)


@pytest.fixture(scope="module", autouse=True)
def compat_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The decoded-array cache of this module's datasets (shared with the workers through the environment)."""
    path = tmp_path_factory.mktemp("compat-loaders-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DATAMINT_PIPES_CACHE", str(path))
        yield path


def make_view(root: Path, view: str, **options: Any) -> DatamintBaseDataset:
    if view == "image":
        return ImageDataset(project=str(root / "sample-images"), **options)
    if view in ("volume", "axial", "coronal"):
        volumes = VolumeDataset(project=str(root / "sample-volumes"), **options)
        return volumes if view == "volume" else volumes.slice(view)
    videos = VideoDataset(project=str(root / "sample-videos"), **options)
    return videos if view == "video" else videos.frame_by_frame()


def view_indices(dataset: DatamintBaseDataset, most: int = 8) -> list[int]:
    """A few items of every resource (all of them for small datasets): loaders are checked on a subset."""
    n = len(dataset)
    return list(range(n)) if n <= most else sorted({0, n - 1, *range(0, n, n // most)})


def assert_same(actual: Any, expected: Any, where: str = "batch") -> None:
    """Equal key by key (in order), array by array (dtype, shape, values) and object by object."""
    if isinstance(expected, np.ndarray):
        assert isinstance(actual, np.ndarray) and actual.dtype == expected.dtype, f"{where}: not the same array type"
        assert actual.shape == expected.shape and np.array_equal(actual, expected), f"{where}: arrays differ"
    elif isinstance(expected, torch.Tensor):
        assert isinstance(actual, torch.Tensor) and actual.dtype == expected.dtype, f"{where}: not the same tensor type"
        assert actual.shape == expected.shape and torch.equal(actual, expected), f"{where}: tensors differ"
    elif isinstance(expected, Mapping) and not isinstance(expected, pydicom.Dataset):
        assert isinstance(actual, Mapping) and list(actual) == list(expected), f"{where}: keys differ"
        for key in expected:
            assert_same(actual[key], expected[key], f"{where}[{key!r}]")
    elif isinstance(expected, (list, tuple)):
        assert type(actual) is type(expected) and len(actual) == len(expected), f"{where}: sequences differ"
        for position, (a, e) in enumerate(zip(actual, expected, strict=True)):
            assert_same(a, e, f"{where}[{position}]")
    else:
        assert actual == expected, f"{where}: {actual!r} != {expected!r}"


def expected_batches(dataset: DatamintBaseDataset, indices: list[int], batch_size: int) -> list[dict[str, Any]]:
    collate = dataset.get_collate_fn()
    items = [dataset[i] for i in indices]
    return [collate(items[start : start + batch_size]) for start in range(0, len(items), batch_size)]


def check_dataloader(dataset: DatamintBaseDataset, context: str, batch_size: int) -> None:
    indices = view_indices(dataset)
    subset = dataset.subset(indices)
    loader = subset.get_dataloader(batch_size=batch_size, num_workers=2, multiprocessing_context=context, shuffle=False)
    assert isinstance(loader, torch.utils.data.DataLoader)
    batches = list(loader)
    expected = expected_batches(dataset, indices, batch_size)
    assert len(batches) == len(expected)
    for number, (batch, reference) in enumerate(zip(batches, expected, strict=True)):
        assert_same(batch, reference, f"{context} batch {number}")


@needs_fork
@pytest.mark.parametrize("view", VIEWS)
def test_get_dataloader_with_forked_workers(sample_root: Path, view: str) -> None:
    dataset = make_view(sample_root, view, return_as_semantic_segmentation=view in ("video", "coronal"))
    check_dataloader(dataset, "fork", 4 if view in UNIFORM_VIEWS else 1)


def test_get_dataloader_with_spawned_workers_over_every_facade(sample_root: Path) -> None:
    """One spawned worker pool for all six facades (``a + b + ...``): a spawn start costs seconds."""
    subsets = []
    for view in VIEWS:
        options = (
            dict(return_as_semantic_segmentation=True, semantic_seg_merge_strategy="mode") if view == "frames" else {}
        )
        dataset = make_view(sample_root, view, **options)
        subsets.append(dataset.subset(view_indices(dataset, most=3)))
    everything = subsets[0] + subsets[1]
    for subset in subsets[2:]:
        everything = everything + subset
    loader = everything.get_dataloader(batch_size=1, num_workers=2, multiprocessing_context="spawn")
    batches = list(loader)
    expected = [batch for subset in subsets for batch in expected_batches(subset, list(range(len(subset))), 1)]
    assert len(batches) == len(expected)
    for number, (batch, reference) in enumerate(zip(batches, expected, strict=True)):
        assert_same(batch, reference, f"spawn batch {number}")


@pytest.mark.parametrize("view", VIEWS)
def test_pipeline_loader_with_process_workers(sample_root: Path, view: str) -> None:
    dataset = make_view(sample_root, view, image_labels_merge_strategy="union")
    subset = dataset.subset(view_indices(dataset))
    context = "fork" if "fork" in multiprocessing.get_all_start_methods() else None
    pipeline = subset.pipeline()
    if view in UNIFORM_VIEWS:
        pipeline = pipeline.batch(4).collate(subset.get_collate_fn())
    with pipeline.loader(num_workers=2, worker_type="process", multiprocessing_context=context) as loader:
        streamed = list(loader)
    expected = expected_batches(subset, list(range(len(subset))), 4) if view in UNIFORM_VIEWS else list(subset)
    assert len(streamed) == len(expected)
    for number, (got, reference) in enumerate(zip(streamed, expected, strict=True)):
        assert_same(got, reference, f"{view}.pipeline() process item {number}")


def test_pipeline_loader_with_spawned_process_workers(sample_root: Path) -> None:
    dataset = make_view(sample_root, "axial")
    subset = dataset.subset(view_indices(dataset, most=4))
    with subset.pipeline().loader(num_workers=2, worker_type="process", multiprocessing_context="spawn") as loader:
        streamed = list(loader)
    for number, (got, reference) in enumerate(zip(streamed, list(subset), strict=True)):
        assert_same(got, reference, f"spawned item {number}")


def test_shuffled_pipeline_is_a_seeded_permutation_of_the_items(sample_root: Path) -> None:
    dataset = make_view(sample_root, "volume")
    pipeline = dataset.pipeline(shuffle=True, seed=5)
    with pipeline.loader(num_workers=2) as loader:
        first = [item["resource"].id for item in loader]
        second = [item["resource"].id for item in loader]  # the next epoch
    with dataset.pipeline(shuffle=True, seed=5).loader() as again:
        replay = [item["resource"].id for item in again]
    ids = [r.id for r in dataset.resources]
    assert sorted(first) == sorted(second) == sorted(ids)
    assert replay == first


def first_error(iterable: Iterable[Any]) -> BaseException:
    """The error raised for the first item, without its traceback: a traceback would keep the loader's iterator
    alive until a garbage collection, and a DataLoader finalized that way takes seconds to stop its workers."""
    iterator = iter(iterable)
    try:
        next(iterator)
    except Exception as error:
        return error.with_traceback(None)
    finally:
        del iterator
    raise AssertionError("the first item did not fail")


@needs_fork
def test_worker_errors_keep_their_type(sample_root: Path) -> None:
    wrong = ImageDataset(project=str(sample_root / "sample-volumes"), return_segmentations=False)
    error = first_error(wrong.get_dataloader(batch_size=1, num_workers=2, multiprocessing_context="fork"))
    assert isinstance(error, DatamintDatasetException) and "frames" in str(error)
    with wrong.pipeline().loader(num_workers=2) as loader:
        error = first_error(loader)
    assert isinstance(error, DatamintDatasetException) and "frames" in str(error)
    with pytest.raises(DatamintDatasetException, match="frames"):
        wrong[0]


def test_collate_fn_is_picklable_and_stacks_equal_shapes(sample_root: Path) -> None:
    import pickle

    dataset = make_view(sample_root, "frames", return_segmentations=False)
    collate = pickle.loads(pickle.dumps(dataset.get_collate_fn()))
    assert isinstance(collate, Collate)
    batch = collate([dataset[0], dataset[1]])
    assert tuple(batch["image"].shape) == (2, 3, 240, 320) and batch["image"].dtype == torch.uint8
