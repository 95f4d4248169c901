"""The decoded-array cache in the pipeline: same values as decoding, one decode per resource per machine."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from datamint_pipes.cache import ArrayCache
from datamint_pipes.pipeline import Pipeline
from datamint_pipes.samples import SAMPLE_NAMES
from datamint_pipes.sources.local import LocalProject
from datamint_pipes.stages.cached import CachedDecode, ReadSlice, SliceIndex, decoded_cache_key
from datamint_pipes.stages.collate import Collate
from datamint_pipes.stages.expand import SliceVolume
from datamint_pipes.stages.load import DecodeImage, ReadResource


def _datasets_equal(a: object, b: object) -> bool:
    if hasattr(a, "dir"):  # pydicom datasets: every element before the pixel data is equal
        keys = set(a.keys()) | set(b.keys())  # type: ignore[attr-defined]
        tags = {t for t in keys if t < 0x7FE00010}
        return all(a.get(t) == b.get(t) for t in tags)  # type: ignore[attr-defined]
    if isinstance(a, dict):
        return np.array_equal(a["affine"], b["affine"]) and a["shape"] == b["shape"]  # type: ignore[index]
    return a is None and b is None


@pytest.mark.parametrize("name", SAMPLE_NAMES)
@pytest.mark.parametrize("axis", ["axial", "coronal", "sagittal"])
@pytest.mark.parametrize("compression", ["none", "lz4"])
def test_cached_decode_equals_decode(sample_root: Path, tmp_path: Path, name: str, axis: str, compression: str) -> None:
    project = LocalProject.open(sample_root / name, read_only=True)
    read = ReadResource(project.resources())
    cache = ArrayCache(tmp_path, compression=compression)  # type: ignore[arg-type]
    for i in range(len(project.resources())):
        plain = DecodeImage(project)(read(i))
        for _ in range(2):  # a miss (decode + store), then a hit (memory map)
            cached = CachedDecode(project, cache, axis)(read(i))
            assert cached["image"].dtype == plain["image"].dtype
            np.testing.assert_array_equal(cached["image"], plain["image"])
            assert cached["spacing"] == plain["spacing"]
            if plain["affine"] is None:
                assert cached["affine"] is None
            else:
                np.testing.assert_allclose(cached["affine"], plain["affine"])
            assert _datasets_equal(cached["metainfo"], plain["metainfo"])


def test_cache_holds_one_entry_per_resource_and_layout(sample_root: Path, tmp_path: Path) -> None:
    project = LocalProject.open(sample_root / "sample-volumes", read_only=True)
    resources = project.resources()
    cache = ArrayCache(tmp_path)
    stage = CachedDecode(project, cache, "axial", metainfo=False)
    read = ReadResource(resources)
    for i in range(len(resources)):
        stage(read(i))
        stage(read(i))
    assert len(list((tmp_path / "arrays").glob("*/*.npy"))) == len(resources)
    keys = {decoded_cache_key(r, 0) for r in resources} | {decoded_cache_key(r, 1) for r in resources}
    assert len(keys) == 2 * len(resources)


@pytest.mark.parametrize("axis", ["axial", "sagittal"])
@pytest.mark.parametrize("compression", ["none", "lz4"])
def test_random_access_slices_equal_the_decoded_volume(
    sample_root: Path, tmp_path: Path, axis: str, compression: str
) -> None:
    project = LocalProject.open(sample_root / "sample-volumes", read_only=True)
    resources = project.resources()
    index = SliceIndex.from_resources(resources, axis)
    position = {"axial": 0, "sagittal": 2}[axis]
    expected_total = sum(r.metadata["shape"][position + 1] for r in resources)
    assert len(index) == expected_total
    reader = ReadSlice(project, ArrayCache(tmp_path, compression=compression), resources, index, slice_axis=axis)  # type: ignore[arg-type]
    volumes = [DecodeImage(project)(ReadResource(resources)(i))["image"] for i in range(len(resources))]
    for i in np.random.default_rng(0).permutation(len(index))[:40]:
        sample = reader(int(i))
        r, k = index[int(i)]
        assert sample["resource_id"] == resources[r].id and sample["slice_index"] == k
        np.testing.assert_array_equal(sample["image"], np.take(volumes[r], k, axis=position + 1))


def test_process_workers_share_the_cache_and_agree_with_streaming(sample_root: Path, tmp_path: Path) -> None:
    project_dir = tmp_path / "p"
    shutil.copytree(sample_root / "sample-volumes", project_dir)
    project = LocalProject.open(project_dir, read_only=True)
    resources = project.resources()
    cache = ArrayCache(tmp_path / "cache")
    index = SliceIndex.from_resources(resources)
    random_access = Pipeline(num_items=len(index), seed=2, shuffle=False).map(
        ReadSlice(project, cache, resources, index)
    )
    streaming = (
        Pipeline(num_items=len(resources), seed=2, shuffle=False)
        .map(ReadResource(resources))
        .map(DecodeImage(project))
        .expand(SliceVolume("axial"))
    )
    with streaming.loader(num_workers=2) as loader:
        expected = [(s["resource_id"], s["slice_index"], np.array(s["image"])) for s in loader]
    with (
        random_access.batch(1)
        .collate(Collate())
        .loader(num_workers=2, worker_type="process", multiprocessing_context="fork") as loader
    ):
        got = []
        for batch in loader:
            for j in range(len(batch["resource_id"])):
                got.append((batch["resource_id"][j], int(batch["slice_index"][j]), batch["image"][j].numpy()))
    assert [(a, b) for a, b, _ in got] == [(a, b) for a, b, _ in expected]
    for (_, _, a), (_, _, b) in zip(got, expected, strict=True):
        np.testing.assert_array_equal(a, b)
    assert len(list((tmp_path / "cache" / "arrays").glob("*/*.npy"))) == len(resources)


@pytest.mark.parametrize("name", SAMPLE_NAMES)
@pytest.mark.parametrize("axis", ["axial", "coronal"])
@pytest.mark.parametrize("compression", ["none", "lz4"])
def test_cached_segmentations_equal_loaded_segmentations(
    sample_root: Path, tmp_path: Path, name: str, axis: str, compression: str
) -> None:
    from datamint_pipes.stages.annotations import LoadSegmentations
    from datamint_pipes.stages.cached import CachedSegmentations

    project = LocalProject.open(sample_root / name, read_only=True)
    codes = {"tissue": 1, "bright": 2}
    read = ReadResource(project.resources(), project.annotations_by_resource())
    cache = ArrayCache(tmp_path, compression=compression)  # type: ignore[arg-type]
    for i in range(len(project.resources())):
        sample = CachedDecode(project, cache, axis, metainfo=False)(read(i))
        expected = LoadSegmentations(project, codes)(sample)
        for _ in range(2):  # miss, then hit
            got = CachedSegmentations(project, cache, codes, axis)(sample)
            assert list(got["segmentations"]) == list(expected["segmentations"])
            for author, masks in expected["segmentations"].items():
                assert got["segmentations"][author].dtype == masks.dtype == np.uint8
                np.testing.assert_array_equal(got["segmentations"][author], masks)
                np.testing.assert_array_equal(got["seg_labels"][author], expected["seg_labels"][author])


@pytest.mark.parametrize("axis", ["axial", "coronal", "sagittal"])
@pytest.mark.parametrize("compression", ["none", "lz4"])
def test_slice_only_reads_equal_the_slice_of_the_volume(
    sample_root: Path, tmp_path: Path, axis: str, compression: str
) -> None:
    """Random access to one slice (image and every author's masks) gives what slicing the whole volume gives."""
    from datamint_pipes.stages.cached import CachedSegmentations
    from datamint_pipes.stages.expand import slice_axis_index, slice_view

    project = LocalProject.open(sample_root / "sample-volumes", read_only=True)
    codes = {"tissue": 1, "bright": 2}
    read = ReadResource(project.resources(), project.annotations_by_resource())
    cache = ArrayCache(tmp_path, compression=compression)  # type: ignore[arg-type]
    position = slice_axis_index(axis) + 1
    rng = np.random.default_rng(0)
    checked_masks = 0
    for i in range(len(project.resources())):
        volume = CachedDecode(project, cache, axis, metainfo=False)(read(i))
        whole = CachedSegmentations(project, cache, codes, axis)(volume)
        count = volume["image"].shape[position]
        for k in {0, count - 1, int(rng.integers(count))}:
            sample = {**read(i), "slice_index": k}
            one = CachedDecode(project, cache, axis, metainfo=False, slice_only=True)(sample)  # type: ignore[arg-type]
            assert one["volume_shape"] == volume["image"].shape
            np.testing.assert_array_equal(one["image"], slice_view(volume["image"], k, position))
            assert one["image"].dtype == volume["image"].dtype
            masks = CachedSegmentations(project, cache, codes, axis, slice_only=True)(one)["segmentations"]
            assert list(masks) == list(whole["segmentations"])
            for author, full in whole["segmentations"].items():
                np.testing.assert_array_equal(masks[author], slice_view(full, k, position))
                checked_masks += 1
    assert checked_masks > 0
    # Without slice_index, slice_only changes nothing.
    plain = CachedDecode(project, cache, axis, metainfo=False, slice_only=True)(read(0))
    np.testing.assert_array_equal(plain["image"], CachedDecode(project, cache, axis, metainfo=False)(read(0))["image"])


@pytest.mark.parametrize("name", SAMPLE_NAMES)
@pytest.mark.parametrize("axis", ["axial", "sagittal"])
@pytest.mark.parametrize("compression", ["none", "lz4"])
def test_cached_masks_equal_load_masks_and_read_no_mask_file_when_warm(
    sample_root: Path, tmp_path: Path, name: str, axis: str, compression: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import datamint_pipes.stages.annotations as annotation_stages
    from datamint_pipes.stages.annotations import LoadMasks
    from datamint_pipes.stages.cached import CachedMasks

    project = LocalProject.open(sample_root / name, read_only=True)
    read = ReadResource(project.resources(), project.annotations_by_resource())
    cache = ArrayCache(tmp_path, compression=compression)  # type: ignore[arg-type]
    samples = [CachedDecode(project, cache, axis, metainfo=False)(read(i)) for i in range(len(project.resources()))]
    expected = [LoadMasks(project)(sample)["masks"] for sample in samples]
    assert any(expected), "the sample project should have segmentations"
    for sample, masks in zip(samples, expected, strict=True):
        got = CachedMasks(project, cache, axis)(sample)["masks"]  # a miss: reads and stores
        assert list(got) == list(masks)
        for key, mask in masks.items():
            assert got[key].dtype == mask.dtype == np.uint8
            np.testing.assert_array_equal(got[key], mask)

    def no_reads(*args: object, **kwargs: object) -> None:
        raise AssertionError("a warm CachedMasks read a mask file")

    monkeypatch.setattr(annotation_stages, "load_mask", no_reads)
    for sample, masks in zip(samples, expected, strict=True):
        reordered = {**sample, "annotations": list(reversed(sample["annotations"]))}
        got = CachedMasks(project, cache, axis)(reordered)["masks"]  # hits, whatever the annotations' order
        assert list(got) == [a.id for a in reordered["annotations"] if a.is_segmentation()]
        for key, mask in masks.items():
            np.testing.assert_array_equal(got[key], mask)
