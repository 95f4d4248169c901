"""Serve a local project over the Datamint REST API subset (shared/reference/datamint-rest-api.md).

:func:`create_app` builds a Starlette ASGI app over a :class:`~datamint_pipes.sources.local.LocalProject`;
:func:`serve` runs it with uvicorn (``datamint-pipes serve PROJECT``); :class:`BackgroundServer` runs an app in
a thread on a free port (tests, notebooks, benchmarks). Needs the ``serve`` extra (starlette, uvicorn).

Calls (the protocol's table; wire names from ``to_dict(wire=True)``):

=======================================================  ==============================================
``GET /projects``                                        the one project, paged by ``offset``/``limit``
``GET /projects/{pid}/resources``                        resources (``include_deleted=true`` adds deleted)
``POST /annotations/search``                             annotations; ``offset``/``limit`` as strings
``GET /projects/{pid}/worklists``                        worklists with their label specs
``GET /annotationsets/{wid}``, ``.../segmentation-group``  one worklist; its segmentation codes and colours
``GET /resources/{rid}/file``                            the file, streamed; ``Range: bytes=...`` -> 206
``GET /annotations/{rid}/annotations/{aid}/file``        a mask file (ranges too)
``GET /resources/{rid}``, ``GET /resources?project=...``  one resource; resources filtered by project
``GET|POST /projects/{pid}/splits``                      split assignments (``as_of_timestamp``, ``split_name``)
=======================================================  ==============================================

Extensions a real server does not have, used by :class:`~datamint_pipes.sources.server.ServerSource` when
present: ``GET /resources/{rid}/files/{k}`` serves file ``k`` of a multi-file resource (a DICOM series; the
resource's ``files`` lists one path per file), ``include_history=true`` on the splits call, ``include_deleted``
in the search body, and ``at``/``created_by`` in the splits POST body.

Security: every request needs the API key in an ``apikey`` or ``Authorization: Bearer`` header (compared in
constant time), else 401 with no data. The default bind address is 127.0.0.1. Files are served only when the
catalogue names them: ids in URLs are looked up in the catalogue, paths are never built from URL text, and a
catalogue path that leaves the project folder (``..``, absolute, a symlink out) is refused. Requests are
logged (method, path, status, time) without headers or query strings. Errors are JSON ``{"error": ...}``;
404 bodies say "not found".
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any

from starlette.applications import Starlette
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from datamint_pipes.errors import ProjectError
from datamint_pipes.model import Annotation, Resource, Worklist, parse_timestamp
from datamint_pipes.sources.local import LocalProject, open_project

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "BackgroundServer", "create_app", "serve"]

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
_CHUNK = 1 << 20


class _HttpError(Exception):
    """An error answered as JSON ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


def _not_found(what: str) -> _HttpError:
    return _HttpError(404, f"{what} not found")


def _error_response(status: int, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "status": status}, status_code=status, headers=dict(headers or {}))


# -- wire form of the catalogue --------------------------------------------------------------------------------


def _resource_file_paths(resource: Resource) -> list[str]:
    """The relative URL paths of a resource's files: ``resources/<rid>/file`` for one file, else one
    ``resources/<rid>/files/<k>`` per file of a series."""
    if len(resource.files) <= 1:
        return [f"resources/{resource.id}/file"]
    return [f"resources/{resource.id}/files/{k}" for k in range(len(resource.files))]


def _resource_wire(resource: Resource) -> dict[str, Any]:
    data = resource.to_dict()
    data["files"] = _resource_file_paths(resource)
    kind = resource.kind
    # The protocol's required fields; ``storage`` names the kind.
    data["storage"] = resource.storage or (kind.value if kind is not None else None)
    data.setdefault("resource_uri", f"/resources/{resource.id}/file")
    data.setdefault("location", "datamint-pipes")
    data.setdefault("upload_channel", "datamint-pipes")
    data.setdefault("customer_id", None)
    data.setdefault("published", resource.status == "published")
    return data


def _annotation_wire(annotation: Annotation) -> dict[str, Any]:
    data = annotation.to_dict(wire=True)
    if annotation.file or annotation.associated_file:
        data["file"] = f"/annotations/{annotation.resource_id}/annotations/{annotation.id}/file"
    return data


def _annotators_wire(worklist: Worklist) -> list[dict[str, str]]:
    return [{"email": email, "status": "active"} for email in worklist.annotators]


# -- request parsing ------------------------------------------------------------------------------------------


def _int_param(value: Any, name: str, *, minimum: int) -> int:
    """An integer given as an int or a decimal string (the protocol sends search paging as strings)."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise _HttpError(400, f"{name} must be an integer, got {value!r}")
    try:
        number = int(value)
    except ValueError:
        raise _HttpError(400, f"{name} must be an integer, got {value!r}") from None
    if number < minimum:
        raise _HttpError(400, f"{name} must be >= {minimum}, got {number}")
    return number


def _paging(offset: Any, limit: Any) -> tuple[int, int | None]:
    start = _int_param(offset, "offset", minimum=0) if offset is not None else 0
    count = _int_param(limit, "limit", minimum=0) if limit is not None else None
    return start, count


def _page(items: Sequence[Any], offset: int, limit: int | None) -> list[Any]:
    return list(items[offset : None if limit is None else offset + limit])


def _bool_param(value: Any, name: str) -> bool:
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("1", "true", "yes"):
        return True
    if isinstance(value, str) and value.lower() in ("0", "false", "no", ""):
        return False
    raise _HttpError(400, f"{name} must be true or false, got {value!r}")


async def _json_body(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError):
        raise _HttpError(400, "the request body must be a JSON object") from None
    if not isinstance(body, dict):
        raise _HttpError(400, "the request body must be a JSON object")
    return body


def _parse_range(header: str, size: int) -> tuple[int, int] | None:
    """``(start, end)`` (inclusive) of a single ``bytes=`` range, ``None`` to ignore the header (malformed or
    several ranges: the whole file is sent, as RFC 9110 allows); :class:`_HttpError` 416 when unsatisfiable."""
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    if not dash:
        return None
    try:
        if first == "":
            suffix = int(last)
            if suffix <= 0:
                raise ValueError
            start, end = max(0, size - suffix), size - 1
        else:
            start = int(first)
            end = int(last) if last else max(start, size - 1)
            if start < 0 or end < start:
                return None
            end = min(end, size - 1)
    except ValueError:
        return None
    if size == 0 or start >= size:
        raise _HttpError(416, "range not satisfiable", headers={"content-range": f"bytes */{size}"})
    return start, end


def _read_range(handle: IO[bytes], start: int, length: int) -> Iterator[bytes]:
    """Yield ``length`` bytes of ``handle`` from ``start`` in chunks, closing the file at the end."""
    try:
        handle.seek(start)
        remaining = length
        while remaining > 0:
            chunk = handle.read(min(_CHUNK, remaining))
            if not chunk:
                break
            remaining -= len(chunk)
            yield chunk
    finally:
        handle.close()


# -- the application ------------------------------------------------------------------------------------------


@dataclass
class _Api:
    """The endpoints over one project. Catalogue calls are synchronous SQLite reads, run in the thread pool."""

    project: LocalProject

    # -- lookups

    def _check_project(self, pid: str) -> None:
        if pid != self.project.id:
            raise _not_found(f"project {pid}")

    def _resource(self, rid: str) -> Resource:
        try:
            return self.project.resource(rid)
        except ProjectError:
            raise _not_found(f"resource {rid}") from None

    def _annotation(self, rid: str, aid: str) -> Annotation:
        self._resource(rid)
        for annotation in self.project.annotations([rid], include_deleted=True):
            if annotation.id == aid:
                return annotation
        raise _not_found(f"annotation {aid} of resource {rid}")

    def _worklist(self, wid: str) -> Worklist:
        for worklist in self.project.worklists():
            if worklist.id == wid:
                return worklist
        raise _not_found(f"annotation set {wid}")

    def _open_catalogued(self, relpath: str, what: str) -> IO[bytes]:
        """Open a file the catalogue names; refuse paths (or symlinks) that leave the project folder."""
        try:
            local = self.project.local_path(relpath)
            if local is not None:
                root = os.path.realpath(self.project.root)
                if not os.path.realpath(local).startswith(root + os.sep):
                    raise ProjectError(f"{relpath!r} resolves outside the project folder")
            return self.project.open_file(relpath)
        except ProjectError as error:
            log.warning("refusing to serve %s: %s", what, error)
            raise _not_found(what) from None

    def _file_response(self, request: Request, relpath: str, what: str) -> Response:
        handle = self._open_catalogued(relpath, what)
        try:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            headers = {"accept-ranges": "bytes"}
            status, start, end = 200, 0, size - 1
            header = request.headers.get("range")
            if header:
                parsed = _parse_range(header, size)
                if parsed is not None:
                    start, end = parsed
                    status = 206
                    headers["content-range"] = f"bytes {start}-{end}/{size}"
        except BaseException:
            handle.close()
            raise
        headers["content-length"] = str(end - start + 1)
        return StreamingResponse(
            iterate_in_threadpool(_read_range(handle, start, end - start + 1)),
            status_code=status,
            headers=headers,
            media_type="application/octet-stream",
        )

    # -- endpoints (request -> response); sync ones run in the thread pool

    def projects(self, request: Request) -> Response:
        offset, limit = _paging(request.query_params.get("offset"), request.query_params.get("limit"))
        return JSONResponse(_page([self.project.project.to_dict()], offset, limit))

    def project_resources(self, request: Request) -> Response:
        self._check_project(request.path_params["pid"])
        include_deleted = _bool_param(request.query_params.get("include_deleted"), "include_deleted")
        offset, limit = _paging(request.query_params.get("offset"), request.query_params.get("limit"))
        resources = self.project.resources(include_deleted=include_deleted)
        return JSONResponse([_resource_wire(r) for r in _page(resources, offset, limit)])

    def resources(self, request: Request) -> Response:
        """``GET /resources``: resources of the projects named in the ``project`` filter (all without one)."""
        offset, limit = _paging(request.query_params.get("offset"), request.query_params.get("limit"))
        text = request.query_params.get("project")
        resources = self.project.resources()
        if text is not None:
            try:
                spec = json.loads(text)
                names = spec["items"] if isinstance(spec, dict) else spec
                if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                    raise TypeError
            except (ValueError, TypeError, KeyError):
                raise _HttpError(
                    400, 'project must be JSON {"items": ["<name>"], "filterType": "intersection"}'
                ) from None
            filter_type = spec.get("filterType", "intersection") if isinstance(spec, dict) else "intersection"
            ours = {self.project.name, self.project.id}
            matches = [n in ours for n in names]
            keep = all(matches) if filter_type == "intersection" else any(matches)
            if not keep:
                resources = []
        return JSONResponse([_resource_wire(r) for r in _page(resources, offset, limit)])

    def resource(self, request: Request) -> Response:
        return JSONResponse(_resource_wire(self._resource(request.path_params["rid"])))

    def resource_file(self, request: Request) -> Response:
        rid = request.path_params["rid"]
        resource = self._resource(rid)
        if len(resource.files) != 1:
            raise _HttpError(
                404, f"resource {rid} has {len(resource.files)} files, not one: file not found at this path"
            )
        return self._file_response(request, resource.files[0], f"file of resource {rid}")

    def resource_part(self, request: Request) -> Response:
        rid = request.path_params["rid"]
        resource = self._resource(rid)
        part = request.path_params["part"]
        if not 0 <= part < len(resource.files):
            raise _not_found(f"file {part} of resource {rid}")
        return self._file_response(request, resource.files[part], f"file {part} of resource {rid}")

    def annotation_file(self, request: Request) -> Response:
        rid, aid = request.path_params["rid"], request.path_params["aid"]
        annotation = self._annotation(rid, aid)
        relpath = annotation.file or annotation.associated_file
        if relpath is None:
            raise _not_found(f"file of annotation {aid}")
        return self._file_response(request, relpath, f"file of annotation {aid}")

    async def search_annotations(self, request: Request) -> Response:
        body = await _json_body(request)
        return JSONResponse(await run_in_threadpool(self._search, body))

    def _search(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        resource_ids = body.get("resource_ids")
        if resource_ids is not None and (
            not isinstance(resource_ids, list) or not all(isinstance(r, str) for r in resource_ids)
        ):
            raise _HttpError(422, "resource_ids must be a list of strings")
        offset, limit = _paging(body.get("offset"), body.get("limit"))
        deleted = body.get("deleted")
        if deleted is not None and not isinstance(deleted, bool):
            raise _HttpError(422, f"deleted must be true or false, got {deleted!r}")
        include_deleted = _bool_param(body.get("include_deleted"), "include_deleted") or deleted is True
        annotations = self.project.annotations(resource_ids, include_deleted=include_deleted)
        if deleted is not None:
            annotations = [a for a in annotations if a.deleted == deleted]
        for key, field_name in (
            ("annotation_type", "annotation_type"),
            ("status", "status"),
            ("source", "source"),
            ("annotation_worklist_id", "annotation_worklist_id"),
        ):
            wanted = body.get(key)
            if wanted is None:
                continue
            allowed = set(wanted) if isinstance(wanted, list) else {wanted}
            annotations = [a for a in annotations if getattr(a, field_name) in allowed]
        return [_annotation_wire(a) for a in _page(annotations, offset, limit)]

    def worklists(self, request: Request) -> Response:
        self._check_project(request.path_params["pid"])
        offset, limit = _paging(request.query_params.get("offset"), request.query_params.get("limit"))
        return JSONResponse(
            [
                {
                    "worklist_id": w.id,
                    "worklist_name": w.name,
                    "annotators": _annotators_wire(w),
                    "annotations": [s.to_dict() for s in w.specs],
                }
                for w in _page(self.project.worklists(), offset, limit)
            ]
        )

    def annotation_set(self, request: Request) -> Response:
        worklist = self._worklist(request.path_params["wid"])
        return JSONResponse(
            {
                "id": worklist.id,
                "name": worklist.name,
                "annotators": _annotators_wire(worklist),
                "annotations": [s.to_dict() for s in worklist.specs],
            }
        )

    def segmentation_group(self, request: Request) -> Response:
        worklist = self._worklist(request.path_params["wid"])
        return JSONResponse({"groups": self.project.segmentation_groups(worklist.id)})

    def splits(self, request: Request) -> Response:
        self._check_project(request.path_params["pid"])
        query = request.query_params
        as_of = query.get("as_of_timestamp")
        if as_of is not None:
            try:
                parse_timestamp(as_of)
            except ValueError:
                raise _HttpError(400, f"as_of_timestamp {as_of!r} is not an ISO 8601 timestamp") from None
        include_history = _bool_param(query.get("include_history"), "include_history")
        offset, limit = _paging(query.get("offset"), query.get("limit"))
        rows = self.project.split_assignments(
            as_of or None, split_name=query.get("split_name") or None, include_history=include_history
        )
        return JSONResponse([a.to_dict() for a in _page(rows, offset, limit)])

    async def assign_split(self, request: Request) -> Response:
        self._check_project(request.path_params["pid"])
        body = await _json_body(request)
        return JSONResponse(await run_in_threadpool(self._assign_split, body))

    def _assign_split(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        ids, split_name = body.get("resource_ids"), body.get("split_name")
        if not isinstance(ids, list) or not ids or not all(isinstance(r, str) for r in ids):
            raise _HttpError(422, "resource_ids must be a non-empty list of strings")
        if not isinstance(split_name, str) or not split_name:
            raise _HttpError(422, "split_name must be a non-empty string")
        at, created_by = body.get("at"), body.get("created_by")
        if at is not None and not isinstance(at, str):
            raise _HttpError(422, "at must be an ISO 8601 timestamp string")
        if created_by is not None and not isinstance(created_by, str):
            raise _HttpError(422, "created_by must be a string")
        if self.project.read_only:
            raise _HttpError(403, "the project is served read-only")
        for rid in ids:
            self._resource(rid)
        try:
            created = self.project.assign_split(ids, split_name, at=at, by=created_by)
        except ProjectError as error:
            raise _HttpError(409, str(error)) from None
        return [a.to_dict() for a in created]


def _guarded(endpoint: Callable[[Request], Any]) -> Callable[[Request], Any]:
    """Turn :class:`_HttpError` into its JSON response and any other failure into a logged 500 (no details)."""
    if asyncio.iscoroutinefunction(endpoint):

        @functools.wraps(endpoint)
        async def run_async(request: Request) -> Response:
            try:
                response: Response = await endpoint(request)
                return response
            except _HttpError as error:
                return _error_response(error.status, error.message, error.headers)
            except Exception:
                log.exception("%s %s failed", request.method, request.url.path)
                return _error_response(500, "internal server error")

        return run_async

    @functools.wraps(endpoint)
    def run_sync(request: Request) -> Response:
        try:
            response: Response = endpoint(request)
            return response
        except _HttpError as error:
            return _error_response(error.status, error.message, error.headers)
        except Exception:
            log.exception("%s %s failed", request.method, request.url.path)
            return _error_response(500, "internal server error")

    return run_sync


async def _http_exception(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    message = "not found" if status == 404 else (exc.detail if isinstance(exc, HTTPException) else "error")
    return _error_response(status, str(message))


class _ApiKeyAuth:
    """ASGI middleware: 401 (no data) unless the ``apikey`` or ``Authorization: Bearer`` header holds the key."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        if not api_key:
            raise ValueError("the server needs a non-empty API key")
        self.app = app
        self._key = api_key.encode()

    def _authorized(self, headers: Sequence[tuple[bytes, bytes]]) -> bool:
        ok = False
        for name, value in headers:
            candidate: bytes | None = None
            if name == b"apikey":
                candidate = value.strip()
            elif name == b"authorization":
                scheme, _, token = value.strip().partition(b" ")
                if scheme.lower() == b"bearer":
                    candidate = token.strip()
            if candidate is not None:
                # Constant time; keep scanning so timing does not depend on which header matched.
                ok = hmac.compare_digest(candidate, self._key) or ok
        return ok

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not self._authorized(scope.get("headers", [])):
            response = _error_response(
                401, "unauthorized: send the API key in an apikey or Authorization: Bearer header"
            )
            response.headers["www-authenticate"] = "Bearer"
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


class _RequestLog:
    """ASGI middleware: log method, path, status and time of each request (never headers or the query)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 0

        async def send_logged(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_logged)
        finally:
            elapsed = (time.perf_counter() - started) * 1000
            log.info("%s %s %d %.1fms", scope.get("method"), scope.get("path"), status, elapsed)


def create_app(project: LocalProject, *, api_key: str) -> ASGIApp:
    """The ASGI app serving ``project`` (see the module docstring), requiring ``api_key`` on every request."""
    api = _Api(project)
    routes = [
        Route("/projects", _guarded(api.projects), methods=["GET"]),
        Route("/projects/{pid}/resources", _guarded(api.project_resources), methods=["GET"]),
        Route("/projects/{pid}/worklists", _guarded(api.worklists), methods=["GET"]),
        Route("/projects/{pid}/splits", _guarded(api.splits), methods=["GET"]),
        Route("/projects/{pid}/splits", _guarded(api.assign_split), methods=["POST"]),
        Route("/annotations/search", _guarded(api.search_annotations), methods=["POST"]),
        Route("/annotationsets/{wid}", _guarded(api.annotation_set), methods=["GET"]),
        Route("/annotationsets/{wid}/segmentation-group", _guarded(api.segmentation_group), methods=["GET"]),
        Route("/resources", _guarded(api.resources), methods=["GET"]),
        Route("/resources/{rid}", _guarded(api.resource), methods=["GET"]),
        Route("/resources/{rid}/file", _guarded(api.resource_file), methods=["GET"]),
        Route("/resources/{rid}/files/{part:int}", _guarded(api.resource_part), methods=["GET"]),
        Route("/annotations/{rid}/annotations/{aid}/file", _guarded(api.annotation_file), methods=["GET"]),
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: _http_exception})
    return _RequestLog(_ApiKeyAuth(app, api_key))


# -- running --------------------------------------------------------------------------------------------------


def _is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


def _bind(host: str, port: int) -> socket.socket:
    """A bound, listening TCP socket (``port=0`` picks a free one): clients that connect before uvicorn
    runs wait in the backlog instead of being refused."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except BaseException:
        sock.close()
        raise
    return sock


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class _DropRecords(logging.Filter):
    """Drops every record of the logger it filters."""

    def filter(self, record: logging.LogRecord) -> bool:
        return False


def _silence_uvicorn_access_log() -> None:
    """uvicorn's access log prints query strings, and turns itself on whenever its logger has a handler
    (pytest's log capture attaches one); :class:`_RequestLog` logs requests without the query instead."""
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, _DropRecords) for f in access.filters):
        access.addFilter(_DropRecords())


def _uvicorn_server(app: ASGIApp) -> Any:
    import uvicorn

    _silence_uvicorn_access_log()
    # log_config=None keeps the application's logging configuration.
    config = uvicorn.Config(
        app,
        log_config=None,
        access_log=False,
        lifespan="off",
        server_header=False,
        timeout_graceful_shutdown=2,
    )
    return uvicorn.Server(config)


class BackgroundServer:
    """Run ``app`` with uvicorn in a daemon thread on ``host``:``port`` (0: a free port) until :meth:`stop`.

    Use as a context manager; :attr:`url` is the base URL (``http://127.0.0.1:PORT``).
    """

    def __init__(self, app: ASGIApp, *, host: str = DEFAULT_HOST, port: int = 0) -> None:
        self.app = app
        self.host = host
        self.port = port
        self.url = ""
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def start(self, timeout: float = 10.0) -> BackgroundServer:
        sock = _bind(self.host, self.port)
        self.url = _url(sock)
        self._server = _uvicorn_server(self.app)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="datamint-serve", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server at {self.url} did not start")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout)

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def serve(
    project: str | os.PathLike[str] | LocalProject,
    *,
    api_key: str,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    read_only: bool | None = None,
    wrap: Callable[[ASGIApp], ASGIApp] | None = None,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve ``project`` until interrupted (SIGINT/SIGTERM).

    The project opens writable when its folder is (split assignments can then be POSTed) unless
    ``read_only``. ``wrap`` wraps the app (fault injection); ``on_ready(url)`` is called once bound.
    """
    opened = open_project(project, read_only=read_only)
    if not _is_loopback(host):
        log.warning(
            "serving on %s: reachable from other machines over plain HTTP; the API key crosses the network "
            "unencrypted (put a TLS proxy in front)",
            host,
        )
    app = create_app(opened, api_key=api_key)
    if wrap is not None:
        app = wrap(app)
    sock = _bind(host, port)
    url = _url(sock)
    mode = "read-only" if opened.read_only else "writable"
    log.info("serving project %s (%s, %s) at %s", opened.name, opened.id, mode, url)
    if on_ready is not None:
        on_ready(url)
    with contextlib.closing(sock):
        _uvicorn_server(app).run(sockets=[sock])
