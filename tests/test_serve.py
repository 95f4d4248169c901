"""Tests of ``datamint-pipes serve`` (datamint_pipes.serve): every call of the protocol table against the
catalogue it serves, authentication, range requests, path tricks, request logging and the CLI.

Servers are real uvicorn servers on 127.0.0.1 (a thread, or the CLI in a subprocess) over copies of the
sample projects.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from datamint_pipes.samples import SPLIT_TIMES
from datamint_pipes.serve import BackgroundServer, create_app
from datamint_pipes.sources.local import LocalProject

KEY = "dp-serve-key-" + secrets.token_hex(16)
AUTH = {"apikey": KEY}


@dataclass
class Served:
    url: str
    project: LocalProject

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("headers", AUTH)
        return requests.get(self.url + path, timeout=10, **kwargs)

    def post(self, path: str, body: Any, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("headers", AUTH)
        return requests.post(self.url + path, json=body, timeout=10, **kwargs)


def _copy(sample_root: Path, name: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("serve") / name
    shutil.copytree(sample_root / name, target)
    return target


@pytest.fixture(scope="module")
def volumes_copy(sample_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _copy(sample_root, "sample-volumes", tmp_path_factory)


@pytest.fixture(scope="module")
def served(volumes_copy: Path) -> Iterator[Served]:
    """sample-volumes (two DICOM series, NIfTI volume masks), writable."""
    project = LocalProject.open(volumes_copy)
    with BackgroundServer(create_app(project, api_key=KEY)) as server:
        yield Served(server.url, project)


def _routes(served: Served) -> list[tuple[str, str]]:
    project = served.project
    rid = project.resources()[2].id
    aid = next(a.id for a in project.annotations([rid]) if a.file)
    wid = project.worklists()[0].id
    pid = project.id
    return [
        ("GET", "/projects"),
        ("GET", f"/projects/{pid}/resources"),
        ("POST", "/annotations/search"),
        ("GET", f"/projects/{pid}/worklists"),
        ("GET", f"/annotationsets/{wid}"),
        ("GET", f"/annotationsets/{wid}/segmentation-group"),
        ("GET", f"/resources/{rid}/file"),
        ("GET", f"/annotations/{rid}/annotations/{aid}/file"),
        ("GET", f"/resources/{rid}"),
        ("GET", f"/projects/{pid}/splits"),
        ("POST", f"/projects/{pid}/splits"),
        ("GET", "/resources"),
        ("GET", "/no/such/route"),
    ]


# Authentication ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"apikey": "wrong"},
        {"apikey": KEY[:-1]},
        {"Authorization": "Bearer wrong"},
        {"Authorization": KEY},  # no scheme
        {"Authorization": f"Basic {KEY}"},
        {"apikey": ""},
    ],
    ids=["none", "wrong-apikey", "prefix-apikey", "wrong-bearer", "no-scheme", "basic", "empty"],
)
def test_every_call_needs_the_key_and_a_refusal_carries_no_data(served: Served, headers: dict[str, str]) -> None:
    project = served.project
    for method, path in _routes(served):
        body = {"resource_ids": [r.id for r in project.resources()], "split_name": "train"}
        response = requests.request(method, served.url + path, headers=headers, json=body, timeout=10)
        assert response.status_code == 401, (method, path)
        assert set(response.json()) == {"error", "status"}
        assert project.id not in response.text and project.name not in response.text
        assert response.headers["www-authenticate"] == "Bearer"
    assert project.split_assignments() == project.split_assignments()  # nothing was written


@pytest.mark.parametrize(
    "headers",
    [{"apikey": KEY}, {"Authorization": f"Bearer {KEY}"}, {"authorization": f"bearer {KEY}"}],
    ids=["apikey", "bearer", "lowercase-bearer"],
)
def test_either_header_carries_the_key(served: Served, headers: dict[str, str]) -> None:
    response = served.get("/projects", headers=headers)
    assert response.status_code == 200
    assert response.json()[0]["id"] == served.project.id


# Catalogue calls --------------------------------------------------------------------------------------------


def test_projects_lists_the_one_project_with_paging(served: Served) -> None:
    (project,) = served.get("/projects").json()
    expected = served.project.project.to_dict()
    assert project == expected
    for key in ("id", "name", "created_at", "created_by", "dataset_id", "archived", "resource_count", "description"):
        assert key in project
    assert served.get("/projects", params={"limit": 1}).json() == [expected]
    assert served.get("/projects", params={"offset": 1, "limit": 5000}).json() == []
    for bad in ({"offset": -1}, {"limit": "x"}):
        response = served.get("/projects", params=bad)
        assert response.status_code == 400 and "error" in response.json()


def test_project_resources_are_the_catalogue_in_wire_form(served: Served) -> None:
    project = served.project
    rows = served.get(f"/projects/{project.id}/resources").json()
    assert [r["id"] for r in rows] == [r.id for r in project.resources()]
    for row, resource in zip(rows, project.resources(), strict=True):
        for key in ("resource_uri", "storage", "location", "upload_channel", "customer_id", "status", "published"):
            assert key in row
        assert row["filename"] == resource.filename and row["size"] == resource.size
        assert row["mimetype"] == resource.mimetype and row["metadata"] == dict(resource.metadata)
        assert row["storage"] == resource.kind.value  # type: ignore[union-attr]
        if len(resource.files) == 1:
            assert row["files"] == [f"resources/{resource.id}/file"]
        else:
            assert row["files"] == [f"resources/{resource.id}/files/{k}" for k in range(len(resource.files))]
    assert served.get(f"/projects/{project.id}/resources", params={"offset": 1, "limit": 2}).json() == rows[1:3]
    missing = served.get("/projects/not-this-project/resources")
    assert missing.status_code == 404 and "not found" in missing.text


def test_resources_filter_by_project_name(served: Served) -> None:
    project = served.project
    everything = served.get(f"/projects/{project.id}/resources").json()
    for ref in (project.name, project.id):
        spec = json.dumps({"items": [ref], "filterType": "intersection"})
        assert served.get("/resources", params={"project": spec}).json() == everything
    spec = json.dumps({"items": [project.name], "filterType": "intersection"})
    assert served.get("/resources", params={"project": spec, "offset": 0, "limit": 2}).json() == everything[:2]
    other = json.dumps({"items": ["another-project"], "filterType": "intersection"})
    assert served.get("/resources", params={"project": other}).json() == []
    both = json.dumps({"items": [project.name, "another-project"], "filterType": "intersection"})
    assert served.get("/resources", params={"project": both}).json() == []
    assert served.get("/resources", params={"project": "{not json"}).status_code == 400


def test_one_resource_and_unknown_ids(served: Served) -> None:
    resource = served.project.resources()[0]
    assert served.get(f"/resources/{resource.id}").json()["filename"] == resource.filename
    for path in (
        "/resources/nope",
        "/resources/nope/file",
        "/annotationsets/nope",
        "/annotationsets/nope/segmentation-group",
    ):
        response = served.get(path)
        assert response.status_code == 404 and "not found" in response.text


def test_annotation_search_pages_with_string_offsets_and_filters(served: Served) -> None:
    project = served.project
    ids = [r.id for r in project.resources()]
    full = served.post("/annotations/search", {"resource_ids": ids, "offset": "0", "limit": "5000"}).json()
    assert [a["id"] for a in full] == [a.id for a in project.annotations(ids)]
    assert full[0]["type"] and "name" in full[0] and "added_by" in full[0] and "index" in full[0]
    pages: list[Any] = []
    while True:
        page = served.post("/annotations/search", {"resource_ids": ids, "offset": str(len(pages)), "limit": "7"}).json()
        pages += page
        if len(page) < 7:
            break
    assert pages == full
    one = served.post("/annotations/search", {"resource_ids": ids[:1]}).json()
    assert [a["id"] for a in one] == [a.id for a in project.annotations(ids[:1])]
    segs = served.post("/annotations/search", {"resource_ids": ids, "annotation_type": "segmentation"}).json()
    assert [a["id"] for a in segs] == [a.id for a in project.annotations(ids) if a.is_segmentation()]
    assert all(a["file"] == f"/annotations/{a['resource_id']}/annotations/{a['id']}/file" for a in segs)
    for bad, status in (({"offset": "x"}, 400), ({"resource_ids": "abc"}, 422), ({"deleted": "no"}, 422)):
        assert served.post("/annotations/search", bad).status_code == status
    response = requests.post(served.url + "/annotations/search", data=b"[1,", headers=AUTH, timeout=10)
    assert response.status_code == 400


def test_worklists_annotation_sets_and_segmentation_groups(served: Served) -> None:
    project = served.project
    rows = served.get(f"/projects/{project.id}/worklists").json()
    worklists = project.worklists()
    assert [r["worklist_id"] for r in rows] == [w.id for w in worklists]
    for row, worklist in zip(rows, worklists, strict=True):
        assert row["worklist_name"] == worklist.name
        assert [a["email"] for a in row["annotators"]] == list(worklist.annotators)
        assert row["annotations"] == [s.to_dict() for s in worklist.specs]
        detail = served.get(f"/annotationsets/{worklist.id}").json()
        assert (detail["id"], detail["name"], detail["annotations"]) == (worklist.id, worklist.name, row["annotations"])
        groups = served.get(f"/annotationsets/{worklist.id}/segmentation-group").json()
        assert groups == {"groups": project.segmentation_groups(worklist.id)}
        assert groups["groups"]["tissue"] == {"index": 1, "color": [255, 80, 80, 255]}


# Files ------------------------------------------------------------------------------------------------------


def test_files_are_the_catalogued_bytes(served: Served) -> None:
    project = served.project
    for resource in project.resources():
        if len(resource.files) == 1:
            response = served.get(
                f"/resources/{resource.id}/file", headers={**AUTH, "accept": "application/octet-stream"}
            )
            assert response.status_code == 200
            assert response.content == project.read_bytes(resource.files[0])
            assert response.headers["content-length"] == str(resource.size)
        else:
            whole = served.get(f"/resources/{resource.id}/file")
            assert whole.status_code == 404 and "not found" in whole.text
            for k, relpath in enumerate(resource.files):
                assert served.get(f"/resources/{resource.id}/files/{k}").content == project.read_bytes(relpath)
            assert served.get(f"/resources/{resource.id}/files/{len(resource.files)}").status_code == 404
        for annotation in project.annotations([resource.id]):
            path = f"/annotations/{resource.id}/annotations/{annotation.id}/file"
            if annotation.file:
                assert served.get(path).content == project.read_bytes(annotation.file)
            else:
                assert served.get(path).status_code == 404
    other = project.resources()[0].id
    annotation = next(a for a in project.annotations() if a.file and a.resource_id != other)
    assert served.get(f"/annotations/{other}/annotations/{annotation.id}/file").status_code == 404


def test_range_requests(served: Served) -> None:
    resource = next(r for r in served.project.resources() if len(r.files) == 1)
    data = served.project.read_bytes(resource.files[0])
    size = len(data)
    path = f"/resources/{resource.id}/file"
    cases = {
        "bytes=0-9": (0, 9),
        "bytes=10-": (10, size - 1),
        "bytes=-16": (size - 16, size - 1),
        f"bytes=100-{size + 500}": (100, size - 1),
        f"bytes={size - 1}-{size - 1}": (size - 1, size - 1),
    }
    for header, (start, end) in cases.items():
        response = served.get(path, headers={**AUTH, "Range": header})
        assert response.status_code == 206, header
        assert response.content == data[start : end + 1]
        assert response.headers["content-range"] == f"bytes {start}-{end}/{size}"
        assert response.headers["content-length"] == str(end - start + 1)
    unsatisfiable = served.get(path, headers={**AUTH, "Range": f"bytes={size}-"})
    assert unsatisfiable.status_code == 416 and unsatisfiable.headers["content-range"] == f"bytes */{size}"
    for ignored in ("bytes=0-1,5-6", "items=0-3", "bytes=9-2", "bytes=abc"):
        response = served.get(path, headers={**AUTH, "Range": ignored})
        assert response.status_code == 200 and response.content == data, ignored
    assert served.get(path).headers["accept-ranges"] == "bytes"


def _raw_get(url: str, target: str) -> tuple[int, bytes]:
    """GET with the request target sent exactly as given (no client-side normalisation)."""
    parsed = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parsed.hostname or "127.0.0.1", parsed.port, timeout=10)
    try:
        connection.putrequest("GET", target, skip_accept_encoding=True)
        connection.putheader("apikey", KEY)
        connection.endheaders()
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_path_tricks_are_not_found(served: Served) -> None:
    project = served.project
    rid = project.resources()[2].id
    targets = [
        "/resources/../project.sqlite",
        "/resources/..%2Fproject.sqlite/file",
        "/resources/..%2F..%2Fproject.sqlite/file",
        "/resources/%2e%2e/file",
        "/resources/%2E%2E%2Fproject.sqlite/file",
        f"/resources/{rid}%2F..%2F..%2Fproject.sqlite/file",
        "/resources/%2Fetc%2Fpasswd/file",
        f"/annotations/{rid}/annotations/..%2F..%2Fproject.sqlite/file",
        f"/annotations/..%2F{rid}/annotations/x/file",
        f"/resources/{rid}/files/..%2F0",
        "/../project.sqlite",
        "/project.sqlite",
    ]
    for target in targets:
        status, body = _raw_get(served.url, target)
        assert status == 404, target
        assert b"not found" in body.lower(), target
        assert b"SQLite format" not in body


def test_a_symlink_out_of_the_project_is_refused(sample_root: Path, tmp_path: Path) -> None:
    folder = tmp_path / "project"
    shutil.copytree(sample_root / "sample-images", folder)
    secret = tmp_path / "outside.txt"
    secret.write_bytes(b"outside the project")
    project = LocalProject.open(folder, read_only=True)
    resource = project.resources()[0]
    local = Path(project.local_path(resource.files[0]) or "")
    local.unlink()
    local.symlink_to(secret)
    with BackgroundServer(create_app(project, api_key=KEY)) as server:
        response = requests.get(f"{server.url}/resources/{resource.id}/file", headers=AUTH, timeout=10)
    assert response.status_code == 404 and b"outside" not in response.content


# Splits -----------------------------------------------------------------------------------------------------


def test_splits_replay_any_timestamp(served: Served) -> None:
    project = served.project
    path = f"/projects/{project.id}/splits"
    for as_of in ("2025-12-31T00:00:00Z", SPLIT_TIMES[0], "2026-03-01T00:00:00+00:00", SPLIT_TIMES[1], None):
        for split_name in (None, "train", "val"):
            params = {k: v for k, v in (("as_of_timestamp", as_of), ("split_name", split_name)) if v is not None}
            expected = [a.to_dict() for a in project.split_assignments(as_of, split_name=split_name)]
            assert served.get(path, params=params).json() == expected, (as_of, split_name)
    history = served.get(path, params={"include_history": "true"}).json()
    assert history == [a.to_dict() for a in project.split_assignments(include_history=True)]
    assert served.get(path, params={"include_history": "true", "offset": 2, "limit": 3}).json() == history[2:5]
    for row in history:
        assert set(row) >= {"id", "split_name", "project_id", "resource_id", "created_at", "created_by"}
    assert served.get(path, params={"as_of_timestamp": "yesterday"}).status_code == 400


def test_split_assignments_can_be_posted(served: Served) -> None:
    project = served.project
    path = f"/projects/{project.id}/splits"
    rid = project.resources()[-1].id
    response = served.post(path, {"resource_ids": [rid], "split_name": "holdout"})
    assert response.status_code == 200
    assert [a["resource_id"] for a in response.json()] == [rid]
    current = served.get(path, params={"split_name": "holdout"}).json()
    assert [a["resource_id"] for a in current] == [rid]
    assert [a.resource_id for a in project.split_assignments(split_name="holdout")] == [rid]
    assert served.post(path, {"resource_ids": ["nope"], "split_name": "x"}).status_code == 404
    for bad in (
        {"resource_ids": [], "split_name": "x"},
        {"resource_ids": [rid]},
        {"resource_ids": rid, "split_name": "x"},
    ):
        assert served.post(path, bad).status_code == 422
    # History cannot be rewritten: an assignment before the last change of the resource is refused.
    conflict = served.post(path, {"resource_ids": [rid], "split_name": "x", "at": "2020-01-01T00:00:00Z"})
    assert conflict.status_code == 409 and "error" in conflict.json()


def test_a_read_only_project_refuses_split_writes(volumes_copy: Path) -> None:
    project = LocalProject.open(volumes_copy, read_only=True)
    with BackgroundServer(create_app(project, api_key=KEY)) as server:
        response = requests.post(
            f"{server.url}/projects/{project.id}/splits",
            json={"resource_ids": [project.resources()[0].id], "split_name": "train"},
            headers=AUTH,
            timeout=10,
        )
    assert response.status_code == 403


# Logging and the CLI ----------------------------------------------------------------------------------------


def test_request_log_names_calls_but_never_the_key(served: Served, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    served.get("/projects", params={"apikey": KEY, "token": KEY})  # a key in the query is not logged either
    served.get("/projects", headers={"Authorization": f"Bearer {KEY}"})
    requests.get(served.url + "/projects", headers={"apikey": KEY + "x"}, timeout=10)
    served.get(f"/resources/{served.project.resources()[2].id}/file", headers={**AUTH, "Range": "bytes=0-3"})

    def server_messages() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name.startswith(("datamint_pipes", "uvicorn"))]

    deadline = time.monotonic() + 5
    while not any("/file 206" in m for m in server_messages()) and time.monotonic() < deadline:
        time.sleep(0.01)  # the server logs a request once its response is done, maybe after the client returned
    messages = server_messages()
    assert any("GET /projects 200" in m for m in messages)
    assert any("GET /projects 401" in m for m in messages)
    assert any("/file 206" in m for m in messages)
    assert not any(KEY in m for m in messages)


def test_cli_serves_a_project_until_interrupted(volumes_copy: Path, tmp_path: Path) -> None:
    env = {**os.environ, "DATAMINT_API_KEY": KEY}
    command = [sys.executable, "-m", "datamint_pipes.cli", "-v", "serve", str(volumes_copy), "--port", "0"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("serving "), line
        url = line.split(" at ", 1)[1].split()[0]
        assert url.startswith("http://127.0.0.1:")
        assert requests.get(url + "/projects", headers=AUTH, timeout=10).json()[0]["name"] == "sample-volumes"
        assert requests.get(url + "/projects", timeout=10).status_code == 401
    finally:
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=20)
    assert process.returncode == 0, stderr
    assert "GET /projects 200" in stderr and "GET /projects 401" in stderr
    assert KEY not in stderr

    env.pop("DATAMINT_API_KEY")
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 2 and "DATAMINT_API_KEY" in result.stderr
