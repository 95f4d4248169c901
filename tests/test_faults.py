"""Fault injection (datamint_pipes.sources.faults) and the server source's resilience to it.

The injector is checked as a plain client sees each fault; then a :class:`ServerSource` prefetches a whole
sample project while 30% of requests fail (resets, 503 with and without Retry-After, truncated bodies,
stalls longer than the client timeout) and must end with byte-identical files, never showing a partial file
in the cache. Also: the retry budget ends in a clear error, and two processes fetching one file download it
once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from datamint_pipes.cache import ByteCache, cache_key
from datamint_pipes.errors import FetchError
from datamint_pipes.serve import BackgroundServer, create_app
from datamint_pipes.sources.faults import FAULT_KINDS, FaultInjector, FaultRates
from datamint_pipes.sources.local import LocalProject
from datamint_pipes.sources.server import ServerSource

KEY = "dp-faults-key-" + secrets.token_hex(16)
AUTH = {"apikey": KEY}


@pytest.fixture(scope="module")
def project(sample_root: Path, tmp_path_factory: pytest.TempPathFactory) -> LocalProject:
    """A read-only copy of sample-volumes (DICOM series served file by file, NIfTI masks)."""
    folder = tmp_path_factory.mktemp("faults") / "sample-volumes"
    shutil.copytree(sample_root / "sample-volumes", folder)
    return LocalProject.open(folder, read_only=True)


@contextlib.contextmanager
def _serving(project: LocalProject, **injector: object) -> Iterator[tuple[str, FaultInjector]]:
    faults = FaultInjector(create_app(project, api_key=KEY), **injector)  # type: ignore[arg-type]
    with BackgroundServer(faults) as server:
        yield server.url, faults


def _expected_files(project: LocalProject) -> dict[str, bytes]:
    """Cache key -> bytes of every resource file and mask, by the protocol's cache-validity rule."""
    expected = {}
    for resource in project.resources():
        version = (resource.created_at, resource.deleted_at, resource.size)
        if len(resource.files) == 1:
            expected[cache_key("resource", resource.id, *version)] = project.read_bytes(resource.files[0])
        else:
            for part, relpath in enumerate(resource.files):
                expected[cache_key("resource", resource.id, *version, "file", part)] = project.read_bytes(relpath)
    for annotation in project.annotations():
        if annotation.file:
            key = cache_key(
                "annotation",
                annotation.resource_id,
                annotation.id,
                annotation.created_at,
                annotation.deleted_at,
                annotation.associated_file,
            )
            expected[key] = project.read_bytes(annotation.file)
    return expected


async def _no_app(scope: object, receive: object, send: object) -> None:
    raise AssertionError("the app is never called in these checks")


def _file_paths(project: LocalProject) -> list[str]:
    """The URL paths of every file download of ``project``."""
    paths = []
    for resource in project.resources():
        if len(resource.files) == 1:
            paths.append(f"/resources/{resource.id}/file")
        else:
            paths += [f"/resources/{resource.id}/files/{k}" for k in range(len(resource.files))]
    for annotation in project.annotations():
        if annotation.file:
            paths.append(f"/annotations/{annotation.resource_id}/annotations/{annotation.id}/file")
    return paths


def _seed_with_every_fault(paths: list[str], rates: FaultRates) -> int:
    """A seed whose first attempts at ``paths`` meet every kind of fault (the sample's ids are random, so a
    fixed seed would meet a different mix each session)."""
    for seed in range(1000):
        probe = FaultInjector(_no_app, rates, seed=seed)
        if {probe.choose("GET", path) for path in paths} >= set(FAULT_KINDS):
            return seed
    raise AssertionError("no seed meets every fault")


# The injector ------------------------------------------------------------------------------------------------


def test_rates_are_validated() -> None:
    assert FaultRates.uniform(0.3).total == pytest.approx(0.3)
    assert FaultRates.uniform(0.2, ("reset", "stall")) == FaultRates(reset=0.1, stall=0.1)
    for bad in ({"reset": 1.5}, {"stall": -0.1}, {"reset": 0.6, "truncate": 0.6}):
        with pytest.raises(ValueError):
            FaultRates(**bad)
    for total, kinds in ((1.2, FAULT_KINDS), (0.1, ("explode",)), (0.1, ())):
        with pytest.raises(ValueError):
            FaultRates.uniform(total, kinds)


def test_choices_are_deterministic_per_seed_and_request() -> None:
    def draws(seed: int) -> list[str | None]:
        injector = FaultInjector(_no_app, FaultRates.uniform(0.3), seed=seed)
        return [injector.choose("GET", f"/resources/{i % 50}/file") for i in range(2000)]

    first = draws(7)
    assert first == draws(7)
    assert first != draws(8)
    share = sum(kind is not None for kind in first) / len(first)
    assert 0.25 < share < 0.35
    assert {kind for kind in first if kind} == set(FAULT_KINDS)
    # A repeated request draws again: the 40 repeats of one path do not all fail.
    assert len({first[i] for i in range(0, 2000, 50)}) > 1


@pytest.mark.parametrize("kind", FAULT_KINDS)
def test_each_fault_as_a_plain_client_sees_it(project: LocalProject, kind: str) -> None:
    resource = project.resources()[2]
    with _serving(project, rates=FaultRates(**{kind: 1.0}), stall_seconds=1.0, retry_after_seconds=3) as (url, faults):
        target = f"{url}/resources/{resource.id}/file"
        if kind == "reset":
            with pytest.raises(requests.ConnectionError, match="reset"):
                requests.get(target, headers=AUTH, timeout=5)
        elif kind in ("close_before_body", "truncate"):
            response = requests.get(target, headers=AUTH, timeout=5, stream=True)
            assert response.status_code == 200 and response.headers["content-length"] == str(resource.size)
            received = bytearray()
            with pytest.raises(requests.exceptions.ChunkedEncodingError):
                for chunk in response.iter_content(4096):
                    received += chunk
            # The client may drop the last partial chunk when the connection breaks.
            half = (resource.size or 0) // 2
            assert 0 < len(received) <= half if kind == "truncate" else len(received) == 0
        elif kind == "stall":
            with pytest.raises(requests.ReadTimeout):
                requests.get(target, headers=AUTH, timeout=0.3)
            assert requests.get(target, headers=AUTH, timeout=5).status_code == 200  # slow, not broken
        else:
            response = requests.get(target, headers=AUTH, timeout=5)
            assert response.status_code == 503
            assert response.headers.get("retry-after") == ("3" if kind == "unavailable_retry_after" else None)
        assert faults.injected[kind] >= 1


# The server source under faults ------------------------------------------------------------------------------


def test_prefetch_completes_through_30_percent_failures(
    project: LocalProject, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    expected = _expected_files(project)
    cache_root = tmp_path / "cache"
    seen_partial: list[str] = []
    done = threading.Event()

    def scan() -> None:
        """Every published cache file must be complete, at every moment."""
        while not done.is_set():
            for path in (cache_root / "bytes").glob("*/*"):
                if path.name.startswith(".tmp-"):
                    continue
                with contextlib.suppress(FileNotFoundError):
                    data = path.read_bytes()
                    if expected.get(path.stem) != data:
                        seen_partial.append(f"{path.name}: {len(data)} bytes")
            time.sleep(0.005)

    rates = FaultRates.uniform(0.3)
    seed = _seed_with_every_fault(_file_paths(project), rates)
    with _serving(project, rates=rates, seed=seed, stall_seconds=2.0, retry_after_seconds=1) as (url, faults):
        source = ServerSource(
            project.name,
            url=url,
            api_key=KEY,
            cache=ByteCache(cache_root),
            timeout=0.5,
            retries=10,
            backoff=0.05,
            max_backoff=0.5,
        )
        scanner = threading.Thread(target=scan, daemon=True)
        scanner.start()
        try:
            count = source.prefetch(include_annotations=True, max_concurrency=4, progress=False)
        finally:
            done.set()
            scanner.join()
    assert count == len(expected)
    assert seen_partial == []
    published = {p.stem: p.read_bytes() for p in (cache_root / "bytes").glob("*/*.bin")}
    assert published == expected  # byte-identical, one entry per file, keyed by the documented rule
    assert list((cache_root / "bytes").glob("*/.tmp-*")) == []
    assert set(faults.injected) == set(FAULT_KINDS), faults.injected
    assert sum(faults.injected.values()) >= 0.15 * sum(faults.requests.values())
    assert KEY not in caplog.text


@pytest.mark.parametrize(
    ("kind", "cause"),
    [("unavailable", "HTTP 503"), ("truncate", "IncompleteRead"), ("reset", "reset"), ("stall", "timed out")],
)
def test_the_retry_budget_ends_in_an_error_naming_the_resource(
    project: LocalProject, tmp_path: Path, kind: str, cause: str
) -> None:
    resource = project.resources()[3]
    path = f"/resources/{resource.id}/file"
    injector = {"rates": FaultRates(**{kind: 1.0}), "paths": (path,), "stall_seconds": 1.0}
    with _serving(project, **injector) as (url, faults):
        source = ServerSource(
            project.name, url=url, api_key=KEY, cache=ByteCache(tmp_path), timeout=0.3, retries=2, backoff=0.01
        )
        with pytest.raises(FetchError) as info:
            source.local_path(f"resources/{resource.id}/file")
        assert faults.requests[("GET", path)] == 3
    message = str(info.value)
    assert info.value.resource_id == resource.id
    assert resource.id in message and path in message and "after 3 attempts" in message and cause in message
    assert KEY not in message
    assert [p for p in tmp_path.rglob("*.bin")] == []  # nothing published
    assert list(tmp_path.glob("bytes/*/.tmp-*")) == []


def test_retry_after_is_honoured(project: LocalProject, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from datamint_pipes.sources import server as server_module

    sleeps: list[float] = []
    monkeypatch.setattr(server_module, "time", type("Clock", (), {"sleep": staticmethod(sleeps.append)}))
    resource = project.resources()[3]
    path = f"/resources/{resource.id}/file"
    rates = FaultRates(unavailable_retry_after=1.0)
    with _serving(project, rates=rates, paths=(path,), retry_after_seconds=7) as (url, _):
        source = ServerSource(project.name, url=url, api_key=KEY, cache=ByteCache(tmp_path), retries=2, backoff=0.01)
        with pytest.raises(FetchError, match="HTTP 503"):
            source.local_path(f"resources/{resource.id}/file")
    assert sleeps == [7.0, 7.0]


_FETCH_IN_A_PROCESS = """
import hashlib, sys
from datamint_pipes.cache import ByteCache
from datamint_pipes.sources.server import ServerSource
source = ServerSource(sys.argv[1], url=sys.argv[2], cache=ByteCache(sys.argv[3]), timeout=20)
source.resources()
print("ready", flush=True)
sys.stdin.readline()
path = source.local_path(sys.argv[4])
with open(path, "rb") as handle:
    print(path, hashlib.sha256(handle.read()).hexdigest(), flush=True)
"""


def test_two_processes_fetching_one_file_download_it_once(project: LocalProject, tmp_path: Path) -> None:
    import hashlib

    resource = project.resources()[2]
    path = f"/resources/{resource.id}/file"
    relpath = f"resources/{resource.id}/file"
    env = {**os.environ, "DATAMINT_API_KEY": KEY}
    with _serving(project, latency_seconds=0.5, paths=(path,)) as (url, faults):
        command = [sys.executable, "-c", _FETCH_IN_A_PROCESS, project.name, url, str(tmp_path), relpath]
        processes = [
            subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
            for _ in range(2)
        ]
        try:
            for process in processes:
                assert process.stdout is not None and process.stdout.readline().strip() == "ready"
            for process in processes:  # both start fetching at once
                assert process.stdin is not None
                process.stdin.write("go\n")
                process.stdin.flush()
            outputs = [process.communicate(timeout=60)[0].split() for process in processes]
        finally:
            for process in processes:
                if process.poll() is None:
                    process.kill()
        assert faults.requests[("GET", path)] == 1
    assert all(process.returncode == 0 for process in processes)
    digest = hashlib.sha256(project.read_bytes(resource.files[0])).hexdigest()
    assert outputs[0] == outputs[1] and outputs[0][1] == digest
    assert len(list(tmp_path.glob("bytes/*/*.bin"))) == 1
