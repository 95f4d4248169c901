"""Tests of the Datamint server source (datamint_pipes.sources.server) against ``datamint-pipes serve`` on
loopback: the same catalogue, pixels, masks and pipeline output as the local project it serves; the request
policy (no retries on 4xx, paging, environment); pickling and fork; secrets and hostile names.

Fault tolerance (retries under injected failures, single-flight downloads) is tested in test_faults.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import email.utils
import json
import logging
import math
import multiprocessing
import os
import pickle
import random
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from datamint_pipes.cache import ByteCache, cache_key
from datamint_pipes.errors import FetchError, ProjectError
from datamint_pipes.model import Annotation, Resource
from datamint_pipes.pipeline import Pipeline
from datamint_pipes.samples import SAMPLE_NAMES, SPLIT_TIMES, real_file
from datamint_pipes.serve import BackgroundServer, create_app
from datamint_pipes.sources import server as server_module
from datamint_pipes.sources.base import Source
from datamint_pipes.sources.faults import FaultInjector
from datamint_pipes.sources.local import LocalProject
from datamint_pipes.sources.server import ServerSource, backoff_delay, list_items
from datamint_pipes.stages.annotations import LoadMasks, load_mask
from datamint_pipes.stages.collate import Collate
from datamint_pipes.stages.expand import SliceVolume
from datamint_pipes.stages.load import DecodeImage, ReadResource, decode_resource

ROOT = Path(__file__).resolve().parents[1]
KEY = "dp-source-key-" + secrets.token_hex(16)


@dataclass
class Served:
    url: str
    project: LocalProject
    counter: FaultInjector  # injects nothing: counts requests by (method, path)
    cache_root: Path

    def source(self, **kwargs: Any) -> ServerSource:
        kwargs.setdefault("cache", ByteCache(self.cache_root))
        kwargs.setdefault("api_key", KEY)
        kwargs.setdefault("timeout", 10)
        kwargs.setdefault("retries", 2)
        kwargs.setdefault("backoff", 0.01)
        return ServerSource(self.project.name, url=self.url, **kwargs)

    def requests(self, method: str, path: str) -> int:
        return self.counter.requests[(method, path)]


@contextlib.contextmanager
def _serving(project: LocalProject, cache_root: Path) -> Iterator[Served]:
    counter = FaultInjector(create_app(project, api_key=KEY))
    with BackgroundServer(counter) as server:
        yield Served(server.url, project, counter, cache_root)


@pytest.fixture(scope="module", params=SAMPLE_NAMES)
def served(
    request: pytest.FixtureRequest, sample_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    """A copy of each sample project, served read-only."""
    folder = tmp_path_factory.mktemp("served") / request.param
    shutil.copytree(sample_root / request.param, folder)
    project = LocalProject.open(folder, read_only=True)
    with _serving(project, tmp_path_factory.mktemp("cache")) as running:
        yield running


@pytest.fixture(scope="module")
def images(sample_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A writable copy of sample-images."""
    folder = tmp_path_factory.mktemp("images") / "sample-images"
    shutil.copytree(sample_root / "sample-images", folder)
    with _serving(LocalProject.open(folder), tmp_path_factory.mktemp("cache")) as running:
        yield running


def _resource_view(resource: Resource) -> Resource:
    """A resource without what the sources define differently: file paths, and ``storage`` (the server
    fills it with the kind the local catalogue leaves implicit)."""
    return dataclasses.replace(resource, files=(), storage=None)


def _annotation_view(annotation: Annotation) -> Annotation:
    return dataclasses.replace(annotation, file=None)


def _same(a: Any, b: Any) -> bool:
    """Deep equality over tensors, arrays, dicts and sequences."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.asarray(a).dtype == np.asarray(b).dtype and np.array_equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


# The same project through both sources ------------------------------------------------------------------------


def test_catalogue_equals_the_local_project(served: Served) -> None:
    source, local = served.source(), served.project
    assert isinstance(source, Source)
    assert source.project.id == local.id and source.project.name == local.name
    assert source.project.description == local.project.description
    for include_deleted in (False, True):
        remote_resources = source.resources(include_deleted=include_deleted)
        local_resources = local.resources(include_deleted=include_deleted)
        assert [_resource_view(r) for r in remote_resources] == [_resource_view(r) for r in local_resources]
    for resource in source.resources():
        expected = (
            [f"resources/{resource.id}/file"]
            if len(resource.files) == 1
            else [f"resources/{resource.id}/files/{k}" for k in range(len(resource.files))]
        )
        assert list(resource.files) == expected
        assert len(resource.files) == len(local.resource(resource.id).files)
    assert [_annotation_view(a) for a in source.annotations()] == [_annotation_view(a) for a in local.annotations()]
    some = [r.id for r in local.resources()][1:3]
    assert [_annotation_view(a) for a in source.annotations(some)] == [
        _annotation_view(a) for a in local.annotations(some)
    ]
    assert source.annotations([]) == []
    for annotation in source.annotations():
        assert annotation.file == (
            f"annotations/{annotation.resource_id}/{annotation.id}/file" if annotation.associated_file else None
        )
    grouped = {k: [_annotation_view(a) for a in v] for k, v in source.annotations_by_resource().items()}
    assert grouped == {k: [_annotation_view(a) for a in v] for k, v in local.annotations_by_resource().items()}
    assert source.worklists() == local.worklists()
    for worklist in local.worklists():
        assert source.segmentation_groups(worklist.id) == local.segmentation_groups(worklist.id)
    times = (None, "2025-12-31T00:00:00Z", SPLIT_TIMES[0], "2026-03-01T00:00:00+00:00", SPLIT_TIMES[1], "2031-01-01")
    for as_of in times:
        for split_name in (None, "train", "test", "val"):
            remote = source.split_assignments(as_of, split_name=split_name)
            assert remote == local.split_assignments(as_of, split_name=split_name), (as_of, split_name)
    assert source.split_assignments(include_history=True) == local.split_assignments(include_history=True)
    with pytest.raises(ValueError):
        source.split_assignments("not a time")


@pytest.mark.filterwarnings("ignore")
def test_decoded_images_and_masks_equal(served: Served) -> None:
    source, local = served.source(), served.project
    for remote, resource in zip(source.resources(), local.resources(), strict=True):
        mine = decode_resource(source, remote, on_irregular="warn")
        theirs = decode_resource(local, resource, on_irregular="warn")
        assert mine.array.dtype == theirs.array.dtype and mine.array.shape == theirs.array.shape
        np.testing.assert_array_equal(mine.array, theirs.array)
        assert mine.spacing == theirs.spacing
        assert _same(mine.affine, theirs.affine)
        pairs = zip(source.annotations([remote.id]), local.annotations([resource.id]), strict=True)
        for remote_annotation, local_annotation in pairs:
            if local_annotation.is_segmentation():
                np.testing.assert_array_equal(
                    load_mask(source, remote_annotation, mine.array.shape),
                    load_mask(local, local_annotation, theirs.array.shape),
                )
        for relpath in remote.files:
            assert Path(source.local_path(relpath)).is_relative_to(served.cache_root)


def _pipeline_items(source: Source) -> list[dict[str, Any]]:
    resources = source.resources()
    pipe = (
        Pipeline(len(resources), seed=3)
        .map(ReadResource(resources, source.annotations_by_resource()))
        .map(DecodeImage(source, on_irregular="warn"))
        .map(LoadMasks(source))
        .expand(SliceVolume("axial"))
        .batch(1)
        .collate(Collate())
    )
    with pipe.loader(num_workers=2, worker_type="thread") as loader:
        return list(loader)


@pytest.mark.filterwarnings("ignore")
def test_a_full_pipeline_yields_the_same_items(served: Served) -> None:
    remote, local = _pipeline_items(served.source()), _pipeline_items(served.project)
    assert len(remote) == len(local) > 0
    for mine, theirs in zip(remote, local, strict=True):
        assert mine.keys() == theirs.keys()
        for key in mine.keys() - {"resource", "annotations", "metainfo"}:
            assert _same(mine[key], theirs[key]), key
        assert mine["image"].numel() > 0


# Files and the cache -----------------------------------------------------------------------------------------


def test_files_come_from_the_cache_and_download_once(images: Served) -> None:
    source, local = images.source(), images.project
    resource = source.resources()[1]
    relpath = resource.files[0]
    path = Path(source.local_path(relpath))
    expected_key = cache_key("resource", resource.id, resource.created_at, resource.deleted_at, resource.size)
    assert path == images.cache_root / "bytes" / expected_key[:2] / f"{expected_key}.bin"
    assert path.read_bytes() == local.read_bytes(local.resource(resource.id).files[0])
    with source.open_file(relpath) as handle:
        assert handle.read() == path.read_bytes()
    downloads = images.requests("GET", f"/resources/{resource.id}/file")
    assert downloads == 1
    assert source.local_path(relpath) == str(path)
    assert images.source().local_path(relpath) == str(path)  # another source, same cache
    assert images.requests("GET", f"/resources/{resource.id}/file") == downloads
    annotation = next(a for a in source.annotations([resource.id]) if a.file)
    assert annotation.file is not None
    mask_path = Path(source.local_path(annotation.file))
    mask_key = cache_key(
        "annotation",
        resource.id,
        annotation.id,
        annotation.created_at,
        annotation.deleted_at,
        annotation.associated_file,
    )
    assert mask_path.name == f"{mask_key}.bin"
    assert annotation.associated_file is not None
    assert mask_path.read_bytes() == local.read_bytes(annotation.associated_file)


def test_prefetch_fetches_resources_and_masks(images: Served, tmp_path: Path) -> None:
    source = images.source(cache=ByteCache(tmp_path))
    first = [r.id for r in source.resources()[:2]]
    masks = [a for a in source.annotations(first) if a.file]
    assert source.prefetch(first, include_annotations=True, max_concurrency=2, progress=True) == 2 + len(masks)
    assert len(list((tmp_path / "bytes").glob("*/*.bin"))) == 2 + len(masks)
    assert source.prefetch(progress=False) == len(source.resources())
    with pytest.raises(ValueError, match="max_concurrency"):
        source.prefetch(max_concurrency=0)


# Project, configuration, request policy ------------------------------------------------------------------------


def test_the_project_is_found_by_id_or_name(images: Served) -> None:
    by_id = ServerSource(images.project.id, url=images.url, api_key=KEY, cache=ByteCache(images.cache_root))
    assert by_id.project.name == images.project.name
    with pytest.raises(ProjectError, match="no project"):
        ServerSource("no-such-project", url=images.url, api_key=KEY, cache=ByteCache(images.cache_root))


def test_url_and_key_come_from_the_environment(images: Served, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DATAMINT_API_URL", images.url + "/")
    monkeypatch.setenv("DATAMINT_API_KEY", KEY)
    source = ServerSource(images.project.name, cache=ByteCache(tmp_path))
    assert source.url == images.url
    assert source.project.id == images.project.id
    monkeypatch.delenv("DATAMINT_API_KEY")
    with pytest.raises(ValueError, match="DATAMINT_API_KEY"):
        ServerSource(images.project.name, cache=ByteCache(tmp_path))
    bad_arguments: list[dict[str, Any]] = [
        {"url": "ftp://x.org"},
        {"timeout": 0},
        {"retries": -1},
        {"max_concurrency": 0},
    ]
    for bad in bad_arguments:
        with pytest.raises(ValueError):
            ServerSource(images.project.name, api_key=KEY, cache=ByteCache(tmp_path), **bad)


def test_a_wrong_key_fails_at_once_with_a_clear_error(images: Served) -> None:
    before = images.requests("GET", "/projects")
    with pytest.raises(FetchError, match="401") as info:
        images.source(api_key="wrong-key")
    assert "GET /projects" in str(info.value)
    assert images.requests("GET", "/projects") == before + 1  # a 4xx is not retried


def test_client_errors_are_not_retried(images: Served) -> None:
    source = images.source(retries=5)
    with pytest.raises(FetchError, match="not found") as info:
        source.local_path("resources/no-such-resource/file")
    assert info.value.resource_id == "no-such-resource" or "no-such-resource" in str(info.value)
    assert images.requests("GET", "/resources/no-such-resource") == 1


def test_tls_failures_are_not_retried(images: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    sleeps: list[float] = []
    monkeypatch.setattr(server_module, "time", type("Clock", (), {"sleep": staticmethod(sleeps.append)}))
    with pytest.raises(FetchError, match="SSL"):
        ServerSource(
            images.project.name,
            url=images.url.replace("http://", "https://"),
            api_key=KEY,
            cache=ByteCache(images.cache_root),
            retries=3,
            backoff=5.0,
        )
    assert sleeps == []


def test_lists_are_read_page_by_page(images: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server_module, "PAGE_SIZE", 4)
    source, local = images.source(), images.project
    searches = images.requests("POST", "/annotations/search")
    annotations = source.annotations()
    assert [_annotation_view(a) for a in annotations] == [_annotation_view(a) for a in local.annotations()]
    pages = math.floor(len(annotations) / 4) + 1  # the last page is short (or empty)
    assert images.requests("POST", "/annotations/search") - searches == pages
    assert source.split_assignments(include_history=True) == local.split_assignments(include_history=True)


def test_list_responses_in_every_shape() -> None:
    assert list_items([1, 2], "x") == [1, 2]
    assert list_items({"data": [1]}, "x") == [1]
    assert list_items({"items": [2], "total": 1}, "x") == [2]
    malformed: list[Any] = [{"rows": []}, "text", None, {"data": "no"}]
    for bad in malformed:
        with pytest.raises(FetchError, match="expected a JSON list"):
            list_items(bad, "x")


def test_backoff_grows_with_jitter_and_honours_retry_after() -> None:
    rng = random.Random(0)
    for attempt in range(10):
        ceiling = min(8.0, 0.5 * 2**attempt)
        assert ceiling / 2 <= backoff_delay(attempt, base=0.5, cap=8.0, rng=rng) <= ceiling
    assert backoff_delay(0, base=0.1, cap=1.0, retry_after=5.0) == 5.0
    assert backoff_delay(0, base=0.1, cap=1.0, retry_after=3600.0) == 60.0
    assert server_module._retry_after("7") == 7.0
    later = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25.0 <= (server_module._retry_after(later) or 0.0) <= 31.0
    assert server_module._retry_after("soon") is None and server_module._retry_after(None) is None


def _read_in_child(source: ServerSource, relpath: str, queue: Any) -> None:
    queue.put(source.read_bytes(relpath))


def test_pickles_and_reconnects_after_fork(images: Served, tmp_path: Path) -> None:
    source = images.source(cache=ByteCache(tmp_path))
    resources = source.resources()
    session = source._session()
    assert session.verify is True  # TLS verification on by default
    clone = pickle.loads(pickle.dumps(source))
    assert clone._session_obj is None
    assert clone.resources() == resources
    assert clone._session() is not session
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    relpath = resources[2].files[0]
    child = context.Process(target=_read_in_child, args=(source, relpath, queue))
    child.start()
    data = queue.get(timeout=60)
    child.join(30)
    assert child.exitcode == 0
    assert data == images.project.read_bytes(images.project.resource(resources[2].id).files[0])


def test_split_assignments_are_posted(images: Served) -> None:
    source, local = images.source(), images.project
    rid = source.resources()[0].id
    made = source.assign_split([rid], "holdout", at="2030-01-01T00:00:00Z", by="carol@example.org")
    assert [(a.resource_id, a.split_name, a.created_by) for a in made] == [(rid, "holdout", "carol@example.org")]
    later = "2030-01-02T00:00:00Z"
    assert [a.resource_id for a in local.split_assignments(later, split_name="holdout")] == [rid]
    assert source.split_assignments(later) == local.split_assignments(later)
    with pytest.raises(ValueError):
        source.assign_split([rid], "")
    with pytest.raises(FetchError, match="409"):
        source.assign_split([rid], "train", at="2020-01-01T00:00:00Z")  # history cannot be rewritten


# Secrets and hostile names -----------------------------------------------------------------------------------


def test_the_key_never_shows_in_logs_reprs_errors_or_cache(
    images: Served, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    caplog.set_level(logging.DEBUG)
    source = images.source(cache=ByteCache(tmp_path))
    source.prefetch(include_annotations=True, progress=False)
    texts = [repr(source), str(source), repr(vars(source)), repr(source._session().auth), repr(source._key)]
    failing = [
        lambda: images.source(api_key=KEY + "-suffix"),  # the server's refusal must not echo the key
        lambda: source.local_path("resources/missing/file"),
        lambda: source.local_path("not/a/server/path"),
    ]
    for call in failing:
        with pytest.raises(FetchError) as info:
            call()
        texts += [str(info.value), repr(info.value)]
    for text in texts:
        assert KEY not in text
    assert KEY not in caplog.text
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert files
    for path in files:
        assert KEY.encode() not in path.read_bytes()
        assert KEY not in str(path)


def test_hostile_file_names_stay_inside_the_cache_and_the_project(tmp_path: Path) -> None:
    project = LocalProject.create(tmp_path / "hostile", "hostile")
    absolute = os.path.join(tempfile.gettempdir(), f"{secrets.token_hex(8)}-escape.png")
    names = ["../../escape.png", absolute, "..\\..\\escape.png"]
    for name in names:
        project.add_resource(real_file("skimage", "data/cell.png"), filename=name)
    cache_root = tmp_path / "cache"
    with _serving(project, cache_root) as served:
        source = served.source()
        assert [r.filename for r in source.resources()] == names
        assert source.prefetch(progress=False) == len(names)
        for remote, local in zip(source.resources(), project.resources(), strict=True):
            np.testing.assert_array_equal(decode_resource(source, remote).array, decode_resource(project, local).array)
    for path in cache_root.rglob("*"):
        if path.is_file():
            relative = path.relative_to(cache_root).parts
            assert relative[0] in ("bytes", "locks") and "escape" not in path.name
    escaped = [p for p in tmp_path.rglob("*escape*") if not p.is_relative_to(tmp_path / "hostile" / "resources")]
    assert escaped == []
    assert not Path(absolute).exists() and not (tmp_path.parent / "escape.png").exists()


def test_paths_and_ids_that_are_not_plain_are_refused(images: Served) -> None:
    source = images.source()
    for relpath in (
        "resources/../project.sqlite",
        "resources/..%2Fproject.sqlite/file",
        "../../etc/passwd",
        "/etc/passwd",
        "resources/a/b/file",
        "annotations/x/../y/file",
        "resources/.hidden/file",
    ):
        with pytest.raises(FetchError):
            source.local_path(relpath)
    for rid in ("../x", "a/b", "", ".", "..", "x" * 200, None):
        with pytest.raises(FetchError):
            source._parse_resource({"id": rid, "filename": "a.png"})
    with pytest.raises(FetchError):
        source._parse_annotation({"id": "../a", "name": "x", "type": "label", "resource_id": "r1"})


# The benchmark -------------------------------------------------------------------------------------------------


def test_fetch_benchmark_quick_runs(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "fetch.py"),
            "--quick",
            "--results-dir",
            str(tmp_path),
            "--cache-dir",
            str(tmp_path / "inputs"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "fetch.json").read_text())
    measures = {row["measure"] for row in report["comparisons"]}
    assert {"prefetch x1, loopback", "prefetch x4, loopback", "prefetch x16, loopback + 20 ms"} <= measures
    assert all(row["baseline"] == "serial __getitem__" and row["ours"] > 0 for row in report["comparisons"])
    assert "MB/s" in result.stdout
