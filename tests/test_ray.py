"""The Ray Data adapter: a Ray-built decoded cache is the single-machine cache, and training over it (after a
mirror, for a URL) never decodes."""

from __future__ import annotations

import dataclasses
import importlib
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pytest

from datamint_pipes.cache import ArrayCache
from datamint_pipes.errors import CacheError
from datamint_pipes.pipeline import Pipeline
from datamint_pipes.sources.local import LocalProject
from datamint_pipes.stages import cached
from datamint_pipes.stages.cached import CachedDecode, decoded_cache_key
from datamint_pipes.stages.expand import SliceVolume
from datamint_pipes.stages.load import ReadResource

try:
    import ray
except ImportError:
    ray = None

needs_ray = pytest.mark.skipif(ray is None, reason="Ray is not installed: pip install 'datamint-pipes[ray]'")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.*")  # Ray's own, on first use


def test_importing_without_ray_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # makes `import ray` fail, as if not installed
    monkeypatch.delitem(sys.modules, "datamint_pipes.ray_adapter", raising=False)
    with pytest.raises(ImportError, match=r"datamint-pipes\[ray\]"):
        importlib.import_module("datamint_pipes.ray_adapter")


# -- fixtures ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[None]:
    assert ray is not None
    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def project(sample_root: Path) -> LocalProject:
    return LocalProject.open(sample_root / "sample-volumes", read_only=True)


def _training_pipeline(project: LocalProject, cache: ArrayCache) -> list[dict[str, Any]]:
    """Volumes -> axial slices through the decoded cache, as a training run reads them."""
    resources = project.resources()
    pipeline = (
        Pipeline(num_items=len(resources), seed=3, shuffle=True)
        .map(ReadResource(resources, project.annotations_by_resource()))
        .map(CachedDecode(project, cache, "axial"))
        .expand(SliceVolume("axial"))
    )
    # In the calling thread: numpy parses .npy headers with ast.literal_eval, which CPython < 3.11.8 can break
    # with a spurious SystemError when threads parse at once (python/cpython#106905).
    with pipeline.loader(num_workers=0) as loader:
        return list(loader)


@dataclasses.dataclass(frozen=True)
class Reference:
    """The single-machine path: a cache filled by CachedDecode, and the items the pipeline yielded."""

    root: Path
    items: list[dict[str, Any]]


@pytest.fixture(scope="module")
def reference(project: LocalProject, tmp_path_factory: pytest.TempPathFactory) -> Reference:
    root = tmp_path_factory.mktemp("single-machine-cache")
    items = _training_pipeline(project, ArrayCache(root))  # decodes every resource, filling the cache
    return Reference(root, items)


@pytest.fixture
def memory_url() -> Iterator[str]:
    url = f"memory://datamint-pipes-test-{uuid.uuid4().hex}/cache"
    yield url
    fs, path = fsspec.core.url_to_fs(url)
    if fs.exists(path):
        fs.rm(path, recursive=True)


@pytest.fixture
def no_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Decoding in this process (the driver, then the training run) fails the test. Ray workers are other
    processes, untouched: they do the decoding. Request it after ``reference``, which decodes."""

    def refuse(*args: object) -> Any:
        raise AssertionError("this process decoded a resource instead of reading the cache")

    monkeypatch.setattr(cached, "_decode_for_cache", refuse)


# -- helpers -------------------------------------------------------------------------------------------------


def _entry_files(root: Path) -> dict[str, bytes]:
    """Published entry files of a cache folder, by path relative to it."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted((root / "arrays").glob("*/*"))
        if not p.name.startswith(".tmp-")
    }


def _assert_same_cache(root: Path, reference_root: Path) -> None:
    files, expected = _entry_files(root), _entry_files(reference_root)
    assert sorted(files) == sorted(expected)  # the same keys, in the same layout
    keys = sorted({Path(name).stem for name in expected})
    got_cache, expected_cache = ArrayCache(root), ArrayCache(reference_root)
    for key in keys:
        got, want = got_cache.get(key), expected_cache.get(key)
        assert got is not None and want is not None
        assert got.array.dtype == want.array.dtype and got.array.shape == want.array.shape
        np.testing.assert_array_equal(got.array, want.array)
        assert got.meta == want.meta
    for name in expected:  # and byte for byte (what a reader memory-maps)
        assert files[name] == expected[name], name


def _same_metainfo(a: Any, b: Any) -> bool:
    if hasattr(a, "dir"):  # pydicom datasets: every element before the pixel data
        tags = {t for t in set(a.keys()) | set(b.keys()) if t < 0x7FE00010}
        return all(a.get(t) == b.get(t) for t in tags)
    if isinstance(a, dict):
        return np.array_equal(a["affine"], b["affine"]) and a["shape"] == b["shape"]
    return a is None and b is None


def _assert_same_items(got: list[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
    assert len(got) == len(expected) > 0
    for item, want in zip(got, expected, strict=True):
        assert item.keys() == want.keys()
        for name, value in want.items():
            if name == "metainfo":
                assert _same_metainfo(item[name], value), name
            elif isinstance(value, np.ndarray):
                assert item[name].dtype == value.dtype
                np.testing.assert_array_equal(item[name], value)
            else:
                assert item[name] == value, name


def _url_folder(url: str) -> Path:
    return Path(fsspec.core.url_to_fs(url)[1])


# -- building ------------------------------------------------------------------------------------------------


@pytest.mark.slow
@needs_ray
def test_ray_build_into_a_folder_is_the_single_machine_cache(
    ray_cluster: None, project: LocalProject, reference: Reference, tmp_path: Path, no_decoding: None
) -> None:
    from datamint_pipes.ray_adapter import build_decoded_cache

    resources = project.resources()
    target = tmp_path / "ray-cache"
    report = build_decoded_cache(project, target=target, slice_axis="axial", batch_size=1, concurrency=2)
    expected_keys = {r.id: decoded_cache_key(r, 0) for r in resources}
    assert dict(report.keys) == expected_keys
    assert sorted(report.written) == sorted(set(expected_keys.values())) and report.present == ()
    assert report.failed == {} and report.bytes_written == sum(len(b) for b in _entry_files(target).values())
    _assert_same_cache(target, reference.root)

    again = build_decoded_cache(project, target=target)  # every entry is there: nothing is decoded again
    assert again.written == () and sorted(again.present) == sorted(report.written)

    _assert_same_items(_training_pipeline(project, ArrayCache(target)), reference.items)


@pytest.mark.slow
@needs_ray
def test_ray_build_into_a_url_then_mirror_trains_without_decoding(
    ray_cluster: None, project: LocalProject, reference: Reference, tmp_path: Path, no_decoding: None
) -> None:
    from datamint_pipes.ray_adapter import build_decoded_cache, mirror_cache

    url = (tmp_path / "shared").as_uri()  # file://: written through fsspec, as s3:// or gs:// would be
    report = build_decoded_cache(project, target=url)
    assert report.failed == {} and len(report.written) == len(set(report.keys.values()))
    _assert_same_cache(_url_folder(url), reference.root)

    local = tmp_path / "local"
    mirrored = mirror_cache(url, local)
    assert sorted(mirrored.keys) == sorted(report.written)
    assert mirrored.files_copied == 2 * len(mirrored.keys) and mirrored.bytes_copied == report.bytes_written
    _assert_same_cache(local, reference.root)
    assert mirror_cache(url, local).files_copied == 0  # already mirrored: nothing copied

    _assert_same_items(_training_pipeline(project, ArrayCache(local)), reference.items)


@pytest.mark.slow
@needs_ray
def test_memory_url_is_refused_as_target_and_mirrors_into_a_local_cache(
    project: LocalProject, reference: Reference, memory_url: str, tmp_path: Path, no_decoding: None
) -> None:
    from datamint_pipes.ray_adapter import build_decoded_cache, mirror_cache

    # Ray workers are other processes: they cannot write the caller's memory:// file system.
    with pytest.raises(ValueError, match="inside one process"):
        build_decoded_cache(project, target=memory_url)

    fs, root = fsspec.core.url_to_fs(memory_url)
    files = _entry_files(reference.root)
    for name, data in files.items():
        fs.pipe_file(f"{root}/{name}", data)
    some_key = Path(next(iter(files))).stem
    fs.pipe_file(f"{root}/arrays/{some_key[:2]}/.tmp-1234-{some_key}.npy", b"torn")  # an upload in progress
    fs.pipe_file(f"{root}/arrays/README.txt", b"foreign")
    fs.pipe_file(f"{root}/arrays/ab/{'ab' + '0' * 62}.json", b"{}")  # metadata whose array is not there yet

    local = tmp_path / "local"
    report = mirror_cache(memory_url, local)
    assert sorted(report.keys) == sorted({Path(name).stem for name in files})
    assert report.files_copied == len(files) and report.bytes_copied == sum(len(b) for b in files.values())
    _assert_same_cache(local, reference.root)
    assert not list(local.glob("arrays/*/.tmp-*")) and not (local / "arrays" / "README.txt").exists()
    _assert_same_items(_training_pipeline(project, ArrayCache(local)), reference.items)


@needs_ray
def test_mirror_refuses_a_damaged_entry(reference: Reference, memory_url: str, tmp_path: Path) -> None:
    from datamint_pipes.ray_adapter import mirror_cache

    fs, root = fsspec.core.url_to_fs(memory_url)
    files = _entry_files(reference.root)
    npy = next(name for name in files if name.endswith(".npy"))
    fs.pipe_file(f"{root}/{npy[:-4]}.json", files[npy[:-4] + ".json"])
    fs.pipe_file(f"{root}/{npy}", files[npy][: len(files[npy]) // 2])  # a truncated array, published anyway
    with pytest.raises(CacheError, match="not a valid decoded-array cache entry"):
        mirror_cache(memory_url, tmp_path / "local")
    assert ArrayCache(tmp_path / "local").get(Path(npy).stem) is None  # never served
    with pytest.raises(CacheError, match="no decoded-array cache"):
        mirror_cache(memory_url + "-missing", tmp_path / "other")


@pytest.mark.slow
@needs_ray
def test_a_failing_resource_keeps_its_error_type_and_name(
    ray_cluster: None, project: LocalProject, tmp_path: Path
) -> None:
    from datamint_pipes.ray_adapter import build_decoded_cache

    resources = project.resources()
    broken = dataclasses.replace(
        resources[0], id="broken-resource", files=("resources/broken-resource/missing.nii.gz",), metadata={}
    )
    with pytest.raises(Exception) as single_machine:  # what CachedDecode raises for it on one machine
        cached._decode_for_cache(project, broken, 0)
    expected_type = type(single_machine.value)

    target = tmp_path / "cache"
    with pytest.raises(expected_type, match="broken-resource") as raised:
        build_decoded_cache(project, [*resources, broken], target=target)
    assert getattr(raised.value, "resource_id", None) == "broken-resource"
    assert "Ray worker" in str(raised.value) and f"1 of {len(resources) + 1} failed" in str(raised.value)
    assert len(_entry_files(target)) == 2 * len(resources)  # every other entry was written

    report = build_decoded_cache(project, [broken, *resources], target=target, on_error="skip")
    assert list(report.failed) == ["broken-resource"]
    assert report.failed["broken-resource"].startswith(expected_type.__name__)
    assert report.written == () and len(report.present) == len(resources)


@needs_ray
def test_bad_arguments_are_refused_before_any_work(project: LocalProject, tmp_path: Path) -> None:
    from datamint_pipes.ray_adapter import build_decoded_cache

    class Unpicklable(LocalProject):  # a local class cannot be pickled by reference
        pass

    source = Unpicklable.open(project.root, read_only=True)
    with pytest.raises(TypeError, match="must pickle"):
        build_decoded_cache(source, project.resources(), target=tmp_path)
    for bad in ({"batch_size": 0}, {"concurrency": -1}, {"num_cpus": 0}, {"on_error": "ignore"}, {"slice_axis": "up"}):
        with pytest.raises(ValueError):
            build_decoded_cache(project, project.resources(), target=tmp_path, **bad)
    assert not (tmp_path / "arrays").exists()
