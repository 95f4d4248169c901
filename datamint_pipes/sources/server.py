"""The Datamint server source: the :class:`~datamint_pipes.sources.base.Source` protocol over REST.

:class:`ServerSource` reads a project from a Datamint server (or ``datamint-pipes serve``) with the calls of
shared/reference/datamint-rest-api.md. Its catalogue methods mirror
:class:`~datamint_pipes.sources.local.LocalProject`; its files are addressed by relative paths it defines
itself, never by text from the server:

* ``Resource.files`` -- ``resources/<rid>/file`` (``GET /resources/<rid>/file``), or for a resource the server
  lists with several files (a DICOM series from ``datamint-pipes serve``) ``resources/<rid>/files/<k>``;
* ``Annotation.file`` -- ``annotations/<rid>/<aid>/file`` (``GET /annotations/<rid>/annotations/<aid>/file``)
  for annotations that have a file; ``associated_file`` keeps the server's value.

Bytes go through a :class:`~datamint_pipes.cache.ByteCache`: :meth:`ServerSource.local_path` downloads on
first access (streamed, size-checked, published atomically, once per machine) and returns the cached file's
path, so decoders read from disk. Cache keys follow the protocol's validity rule: ``cache_key("resource",
rid, created_at, deleted_at, size)`` and ``cache_key("annotation", rid, aid, created_at, deleted_at,
associated_file)``; cache file names are hashes, never server-provided names.

Requests: a timeout on every call; retries with exponential backoff and jitter on connection errors,
timeouts, truncated bodies, 429 and 5xx (honouring ``Retry-After``), none on other 4xx; redirects are not
followed (they could carry the key to another host). Failures surface as
:class:`~datamint_pipes.errors.FetchError` naming the call, the resource and the cause. The API key is sent
in the ``apikey`` and ``Authorization: Bearer`` headers and never appears in ``repr()``, logs, exception
messages or cache files. One ``requests.Session`` per process, rebuilt after fork and after unpickling.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import email.utils
import ipaddress
import logging
import os
import random
import re
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar

import requests
import requests.adapters
import requests.auth

from datamint_pipes.cache import ByteCache, cache_key
from datamint_pipes.errors import CacheError, FetchError, ProjectError
from datamint_pipes.model import (
    Annotation,
    LabelSpec,
    Project,
    Resource,
    SplitAssignment,
    Worklist,
    parse_timestamp,
    utc_now_iso,
)

__all__ = ["DEFAULT_URL", "PAGE_SIZE", "ServerSource", "backoff_delay", "list_items"]

log = logging.getLogger(__name__)

DEFAULT_URL = "https://api.datamint.io"
PAGE_SIZE = 5000
_CHUNK = 1 << 20
_MAX_RETRY_AFTER = 60.0
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_RESOURCE_FILE = re.compile(r"^resources/([^/]+)/file$")
_RESOURCE_PART = re.compile(r"^resources/([^/]+)/files/(\d{1,6})$")
_ANNOTATION_FILE = re.compile(r"^annotations/([^/]+)/([^/]+)/file$")

T = TypeVar("T")


class _Secret:
    """The API key; ``repr`` and ``str`` never show it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "<secret>"

    __str__ = __repr__

    def __getstate__(self) -> str:
        return self._value

    def __setstate__(self, state: str) -> None:
        self._value = state


class _KeyAuth(requests.auth.AuthBase):
    """Adds the key to each request (as auth, so requests never swaps in ``.netrc`` credentials)."""

    def __init__(self, key: _Secret) -> None:
        self._key = key

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        value = self._key.reveal()
        request.headers["apikey"] = value
        request.headers["Authorization"] = f"Bearer {value}"
        return request

    def __repr__(self) -> str:
        return "_KeyAuth(<secret>)"


class _Retryable(Exception):
    """A failure worth retrying (429, 5xx, a truncated or malformed body)."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class _Fatal(Exception):
    """A failure retrying cannot fix (4xx other than 429, a redirect)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


_RETRYABLE = (
    _Retryable,
    CacheError,
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.ContentDecodingError,
)


def backoff_delay(
    attempt: int, *, base: float, cap: float, retry_after: float | None = None, rng: random.Random | None = None
) -> float:
    """Seconds to wait before retry number ``attempt + 1``: ``min(cap, base * 2**attempt)`` with jitter
    (uniform in its upper half), and never less than the server's ``Retry-After`` (itself capped at 60 s)."""
    ceiling = min(cap, base * 2.0**attempt)
    delay = (rng or random.Random()).uniform(ceiling / 2, ceiling)
    if retry_after is not None:
        delay = max(delay, min(max(retry_after, 0.0), _MAX_RETRY_AFTER))
    return delay


def _retry_after(value: str | None) -> float | None:
    """``Retry-After`` as seconds: an integer, or an HTTP date."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=_dt.UTC)
    return max(0.0, (when - _dt.datetime.now(_dt.UTC)).total_seconds())


def list_items(data: Any, what: str) -> list[Any]:
    """The items of a list response: a bare JSON list, ``{"data": [...]}`` or ``{"items": [...]}``."""
    if isinstance(data, list):
        return data
    if isinstance(data, Mapping):
        for key in ("data", "items"):
            if isinstance(data.get(key), list):
                return list(data[key])
    raise FetchError(f"{what}: expected a JSON list, got {type(data).__name__}")


def _check_id(value: Any, what: str) -> str:
    """Ids from the server end up in URLs and relative paths: letters, digits, ``.``, ``_``, ``-`` only."""
    if not isinstance(value, str) or not _ID.match(value):
        raise FetchError(f"the server sent a {what} id {value!r} that is not a plain identifier")
    return value


def _quote(value: str) -> str:
    return urllib.parse.quote(value, safe="")


@dataclass(frozen=True)
class _Target:
    """A downloadable file: its URL path, cache key and expected size."""

    relpath: str
    url_path: str
    key: str
    resource_id: str
    expected_size: int | None


class ServerSource:
    """A project on a Datamint server, as a :class:`~datamint_pipes.sources.base.Source` (module docstring).

    ``project`` is the project's name or id. ``url``/``api_key`` default to ``$DATAMINT_API_URL`` (else
    https://api.datamint.io) and ``$DATAMINT_API_KEY``. ``cache`` holds downloaded files (default: a
    :class:`ByteCache` in the default cache folder). ``timeout`` (seconds) applies to connecting and to each
    read; ``retries`` is the number of retries after the first attempt, waiting :func:`backoff_delay`
    (``backoff`` doubling up to ``max_backoff``); ``max_concurrency`` is the default parallelism of
    :meth:`prefetch`. ``verify`` is passed to requests (TLS verification, or a CA bundle path).

    The project is looked up when constructed (``GET /projects``), so a wrong URL, key or name fails here.
    """

    def __init__(
        self,
        project: str,
        *,
        url: str | None = None,
        api_key: str | None = None,
        cache: ByteCache | None = None,
        timeout: float = 30.0,
        retries: int = 5,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        max_concurrency: int = 8,
        verify: bool | str = True,
    ) -> None:
        if not isinstance(timeout, (int, float)) or timeout <= 0:
            raise ValueError(f"{timeout=} must be a positive number of seconds")
        if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
            raise ValueError(f"{retries=} must be a non-negative integer")
        if backoff < 0 or max_backoff < 0:
            raise ValueError(f"{backoff=} and {max_backoff=} must be >= 0")
        if not isinstance(max_concurrency, int) or isinstance(max_concurrency, bool) or max_concurrency < 1:
            raise ValueError(f"{max_concurrency=} must be a positive integer")
        base = url or os.environ.get("DATAMINT_API_URL") or DEFAULT_URL
        parsed = urllib.parse.urlsplit(base)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError(f"url {base!r} must be an http:// or https:// URL")
        key = api_key if api_key is not None else os.environ.get("DATAMINT_API_KEY")
        if not key:
            raise ValueError("an API key is needed: pass api_key=... or set DATAMINT_API_KEY")
        self._url = base.rstrip("/")
        self._key = _Secret(key)
        self._cache = cache if cache is not None else ByteCache()
        self._timeout = float(timeout)
        self._retries = retries
        self._backoff = float(backoff)
        self._max_backoff = float(max_backoff)
        self._max_concurrency = max_concurrency
        self._verify = verify
        self._resources: dict[str, Resource] = {}
        self._annotations: dict[str, Annotation] = {}
        self._init_runtime()
        if parsed.scheme == "http" and not _is_loopback(parsed.hostname or ""):
            log.warning("%s is plain HTTP: the API key is sent unencrypted", self._url)
        self._project = self._resolve_project(project)

    # -- process-local state ---------------------------------------------------------------------------------

    def _init_runtime(self) -> None:
        self._pid = os.getpid()
        self._session_obj: requests.Session | None = None
        self._lock = threading.Lock()
        self._rng = random.Random()

    def _session(self) -> requests.Session:
        """This process's session (connections do not survive a fork; rebuild in the child)."""
        if self._pid != os.getpid():
            self._init_runtime()
        session = self._session_obj
        if session is None:
            with self._lock:
                session = self._session_obj
                if session is None:
                    session = requests.Session()
                    adapter = requests.adapters.HTTPAdapter(
                        pool_connections=4, pool_maxsize=max(64, self._max_concurrency), max_retries=0
                    )
                    session.mount("http://", adapter)
                    session.mount("https://", adapter)
                    session.auth = _KeyAuth(self._key)
                    session.verify = self._verify
                    session.headers["User-Agent"] = "datamint-pipes"
                    self._session_obj = session
        return session

    def close(self) -> None:
        """Close this process's connections (a later call reopens them)."""
        session, self._session_obj = self._session_obj, None
        if session is not None and self._pid == os.getpid():
            session.close()

    def __enter__(self) -> ServerSource:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        # The session, lock and RNG are per process; the worker rebuilds them lazily.
        state = self.__dict__.copy()
        for name in ("_session_obj", "_lock", "_rng", "_pid"):
            state.pop(name, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_runtime()

    def __repr__(self) -> str:
        return f"ServerSource({self._url!r}, project={self._project.name!r})"

    # -- requests ----------------------------------------------------------------------------------------------

    def _redact(self, text: str) -> str:
        key = self._key.reveal()
        return text.replace(key, "<secret>") if key else text

    def _describe(self, error: BaseException) -> str:
        return self._redact(f"{type(error).__name__}: {error}")

    def _check_status(self, response: requests.Response) -> None:
        status = response.status_code
        if 200 <= status < 300:
            return
        if status == 429 or status >= 500:
            raise _Retryable(f"HTTP {status}", retry_after=_retry_after(response.headers.get("Retry-After")))
        if 300 <= status < 400:
            raise _Fatal(status, f"HTTP {status}: redirects are not followed (they could carry the API key away)")
        if status == 401:
            raise _Fatal(status, "HTTP 401: the server rejected the API key")
        try:
            detail = response.text[:300]
        except requests.RequestException:
            detail = ""
        raise _Fatal(status, self._redact(f"HTTP {status}: {detail}".strip()))

    def _retrying(
        self,
        method: str,
        path: str,
        operation: Callable[[], T],
        *,
        what: str,
        idempotent: bool = True,
        resource_id: str | None = None,
        filename: str | None = None,
    ) -> T:
        """Run ``operation`` with the retry policy; translate every failure into one :class:`FetchError`."""
        attempts = self._retries + 1
        last: BaseException | None = None
        for attempt in range(attempts):
            try:
                return operation()
            except _Fatal as error:
                message = f"{what}: {method} {path} failed: {self._redact(str(error))}"
                raise FetchError(message, resource_id=resource_id, filename=filename) from None
            except requests.exceptions.SSLError as error:  # a certificate problem does not heal by retrying
                message = f"{what}: {method} {path} failed: {self._describe(error)}"
                raise FetchError(message, resource_id=resource_id, filename=filename) from None
            except _RETRYABLE as error:
                last = error
                # A write is retried only when the server surely did not act on it.
                sure_not_applied = isinstance(error, (_Retryable, requests.ConnectTimeout))
                if not idempotent and not sure_not_applied:
                    break
                if attempt + 1 == attempts:
                    break
                delay = backoff_delay(
                    attempt,
                    base=self._backoff,
                    cap=self._max_backoff,
                    retry_after=getattr(error, "retry_after", None),
                    rng=self._rng,
                )
                log.debug(
                    "%s: %s %s attempt %d failed (%s); retrying in %.2fs",
                    what,
                    method,
                    path,
                    attempt + 1,
                    self._describe(error),
                    delay,
                )
                time.sleep(delay)
            except requests.RequestException as error:
                message = f"{what}: {method} {path} failed: {self._describe(error)}"
                raise FetchError(message, resource_id=resource_id, filename=filename) from None
        assert last is not None
        tries = f"after {attempt + 1} attempt{'s' if attempt else ''}"
        message = f"{what}: {method} {path} failed {tries}: {self._describe(last)}"
        raise FetchError(message, resource_id=resource_id, filename=filename) from None

    def _json(
        self,
        method: str,
        path: str,
        *,
        what: str,
        params: Mapping[str, Any] | None = None,
        body: Any = None,
        idempotent: bool = True,
    ) -> Any:
        """One JSON call, retried per the policy."""

        def call() -> Any:
            response = self._session().request(
                method,
                self._url + path,
                params=params,
                json=body,
                timeout=self._timeout,
                allow_redirects=False,
                headers={"accept": "application/json"},
            )
            with response:
                self._check_status(response)
                try:
                    return response.json()
                except ValueError as error:
                    raise _Retryable(f"the response is not JSON ({error})") from None

        return self._retrying(method, path, call, what=what, idempotent=idempotent)

    def _get_list(self, path: str, *, what: str, params: Mapping[str, Any] | None = None) -> list[Any]:
        """All items of a paged ``GET`` list (``offset``/``limit``; stops at an empty or short page)."""

        def fetch(offset: int) -> list[Any]:
            query = {**(params or {}), "offset": offset, "limit": PAGE_SIZE}
            return list_items(self._json("GET", path, what=what, params=query), what)

        return _all_pages(fetch, what)

    def _search(self, body: Mapping[str, Any]) -> list[Any]:
        """All pages of ``POST /annotations/search`` (``offset``/``limit`` sent as strings)."""

        def fetch(offset: int) -> list[Any]:
            page_body = {**body, "offset": str(offset), "limit": str(PAGE_SIZE)}
            data = self._json("POST", "/annotations/search", what="annotation search", body=page_body)
            return list_items(data, "annotation search")

        return _all_pages(fetch, "annotation search")

    # -- project -----------------------------------------------------------------------------------------------

    def _resolve_project(self, ref: str) -> Project:
        """The project whose id is ``ref``, else the one named ``ref``."""
        rows = [Project.from_dict(p) for p in self._get_list("/projects", what="project list") if isinstance(p, dict)]
        by_id = [p for p in rows if p.id == ref]
        by_name = [p for p in rows if p.name == ref]
        if by_id:
            found = by_id[0]
        elif len(by_name) == 1:
            found = by_name[0]
        elif by_name:
            raise ProjectError(f"{len(by_name)} projects are named {ref!r} at {self._url}; pass the project id")
        else:
            raise ProjectError(f"no project with id or name {ref!r} at {self._url}")
        _check_id(found.id, "project")
        return found

    @property
    def project(self) -> Project:
        """The project record as listed when this source was made."""
        return self._project

    @property
    def name(self) -> str:
        return self._project.name

    @property
    def id(self) -> str:
        return self._project.id

    @property
    def url(self) -> str:
        return self._url

    @property
    def cache(self) -> ByteCache:
        return self._cache

    # -- catalogue ---------------------------------------------------------------------------------------------

    def _parse_resource(self, data: Any) -> Resource:
        if not isinstance(data, Mapping):
            raise FetchError(f"resource list: expected JSON objects, got {type(data).__name__}")
        try:
            resource = Resource.from_dict(data)
        except (ValueError, TypeError) as error:
            raise FetchError(f"the server sent a malformed resource: {error}") from None
        rid = _check_id(resource.id, "resource")
        listed = data.get("files")
        count = len(listed) if isinstance(listed, list) and len(listed) > 1 else 1
        files = (f"resources/{rid}/file",) if count == 1 else tuple(f"resources/{rid}/files/{k}" for k in range(count))
        resource = dataclasses.replace(resource, files=files)
        self._resources[rid] = resource
        return resource

    def _parse_annotation(self, data: Any) -> Annotation:
        if not isinstance(data, Mapping):
            raise FetchError(f"annotation search: expected JSON objects, got {type(data).__name__}")
        try:
            annotation = Annotation.from_dict(data)
        except (ValueError, TypeError) as error:
            raise FetchError(f"the server sent a malformed annotation: {error}") from None
        rid = _check_id(annotation.resource_id, "resource")
        aid = _check_id(annotation.id, "annotation")
        has_file = bool(annotation.file or annotation.associated_file)
        annotation = dataclasses.replace(annotation, file=f"annotations/{rid}/{aid}/file" if has_file else None)
        self._annotations[aid] = annotation
        return annotation

    def resources(self, *, include_deleted: bool = False) -> list[Resource]:
        """The project's resources in the server's order (``GET /projects/{id}/resources``)."""
        path = f"/projects/{_quote(self.id)}/resources"
        params = {"include_deleted": "true"} if include_deleted else None
        data = self._json("GET", path, what="resource list", params=params)
        resources = [self._parse_resource(item) for item in list_items(data, "resource list")]
        if not include_deleted:
            resources = [r for r in resources if not r.deleted and r.deleted_at is None]
        return resources

    def resource(self, resource_id: str) -> Resource:
        """One resource (``GET /resources/{id}``)."""
        rid = _check_id(resource_id, "resource")
        data = self._json("GET", f"/resources/{_quote(rid)}", what=f"resource {rid}")
        resource = self._parse_resource(data)
        if resource.id != rid:
            raise FetchError(f"asked for resource {rid}, the server sent {resource.id}", resource_id=rid)
        return resource

    def annotations(
        self, resource_ids: Iterable[str] | None = None, *, include_deleted: bool = False
    ) -> list[Annotation]:
        """Annotations of the given resources (all of the project's by default), in the server's order."""
        ids = (
            list(dict.fromkeys(resource_ids))
            if resource_ids is not None
            else [r.id for r in self.resources(include_deleted=True)]
        )
        if not ids:
            return []
        body: dict[str, Any] = {"resource_ids": ids}
        if include_deleted:
            body["include_deleted"] = True
        wanted = set(ids)
        annotations = [self._parse_annotation(item) for item in self._search(body)]
        return [a for a in annotations if a.resource_id in wanted and (include_deleted or not a.deleted)]

    def annotations_by_resource(self, *, include_deleted: bool = False) -> dict[str, list[Annotation]]:
        """Every resource id (deleted ones too) mapped to its annotations (empty list when none)."""
        grouped: dict[str, list[Annotation]] = {r.id: [] for r in self.resources(include_deleted=True)}
        for annotation in self.annotations(list(grouped), include_deleted=include_deleted):
            grouped.setdefault(annotation.resource_id, []).append(annotation)
        return grouped

    def worklists(self) -> list[Worklist]:
        """Worklists with their label specs; segmentation codes and colours from the segmentation groups."""
        rows = list_items(
            self._json("GET", f"/projects/{_quote(self.id)}/worklists", what="worklist list"), "worklist list"
        )
        worklists = []
        for row in rows:
            if not isinstance(row, Mapping):
                raise FetchError(f"worklist list: expected JSON objects, got {type(row).__name__}")
            wid = _check_id(row.get("worklist_id", row.get("id")), "worklist")
            name = row.get("worklist_name", row.get("name"))
            annotators = row.get("annotators")
            specs = row.get("annotations")
            if specs is None:
                detail = self._json("GET", f"/annotationsets/{_quote(wid)}", what=f"annotation set {wid}")
                specs = detail.get("annotations") if isinstance(detail, Mapping) else None
                annotators = annotators if annotators is not None else (detail or {}).get("annotators")
            groups = self.segmentation_groups(wid)
            try:
                parsed = [LabelSpec.from_dict(s) for s in specs or ()]
            except (ValueError, TypeError, AttributeError) as error:
                raise FetchError(f"worklist {wid}: malformed label spec: {error}") from None
            parsed = [_with_group(spec, groups) for spec in parsed]
            worklists.append(
                Worklist(
                    id=wid,
                    name=str(name if name is not None else wid),
                    annotators=tuple(_annotator_email(a) for a in annotators or ()),
                    specs=tuple(parsed),
                )
            )
        return worklists

    def segmentation_groups(self, worklist_id: str) -> dict[str, dict[str, Any]]:
        """``{label: {'index': code, 'color': [r,g,b,a]}}`` (``GET /annotationsets/{id}/segmentation-group``)."""
        wid = _check_id(worklist_id, "worklist")
        data = self._json(
            "GET", f"/annotationsets/{_quote(wid)}/segmentation-group", what=f"segmentation groups of {wid}"
        )
        groups = data.get("groups") if isinstance(data, Mapping) else None
        if not isinstance(groups, Mapping):
            raise FetchError(f"segmentation groups of worklist {wid}: expected {{'groups': {{...}}}}")
        return {str(k): dict(v) for k, v in groups.items() if isinstance(v, Mapping)}

    def split_assignments(
        self, as_of: str | None = None, *, split_name: str | None = None, include_history: bool = False
    ) -> list[SplitAssignment]:
        """Assignments in force at ``as_of`` (default: now), or every row ever made with ``include_history``."""
        params: dict[str, Any] = {}
        if as_of is not None:
            parse_timestamp(as_of)  # a ValueError here, before any request
            params["as_of_timestamp"] = as_of
        if split_name is not None:
            params["split_name"] = split_name
        if include_history:
            params["include_history"] = "true"
        rows = self._get_list(f"/projects/{_quote(self.id)}/splits", what="split list", params=params)
        try:
            assignments = [SplitAssignment.from_dict(row) for row in rows]
        except (TypeError, AttributeError) as error:
            raise FetchError(f"split list: malformed assignment: {error}") from None
        # Filter here too: a server may ignore a parameter it does not know.
        if split_name is not None:
            assignments = [a for a in assignments if a.split_name == split_name]
        if include_history:
            return assignments
        when = parse_timestamp(as_of or utc_now_iso())
        return [a for a in assignments if a.active_at(when)]

    def assign_split(
        self, resource_ids: Iterable[str], split_name: str, *, at: str | None = None, by: str | None = None
    ) -> list[SplitAssignment]:
        """Assign resources to ``split_name`` (``POST /projects/{id}/splits``); returns what the server made.

        Not retried after errors that may have reached the server (a second assignment would add history).
        """
        ids = list(dict.fromkeys(resource_ids))
        if not split_name:
            raise ValueError("split_name must be a non-empty string")
        body: dict[str, Any] = {"resource_ids": ids, "split_name": split_name}
        if at is not None:
            parse_timestamp(at)
            body["at"] = at
        if by is not None:
            body["created_by"] = by
        data = self._json(
            "POST", f"/projects/{_quote(self.id)}/splits", what="split assignment", body=body, idempotent=False
        )
        try:
            return [SplitAssignment.from_dict(row) for row in list_items(data, "split assignment")]
        except (FetchError, TypeError, AttributeError):
            return []  # the protocol says the response is ignored

    # -- files -------------------------------------------------------------------------------------------------

    def _resource_for(self, rid: str) -> Resource:
        known = self._resources.get(rid)
        return known if known is not None else self.resource(rid)

    def _annotation_for(self, rid: str, aid: str) -> Annotation:
        known = self._annotations.get(aid)
        if known is None or known.resource_id != rid:
            self.annotations([rid], include_deleted=True)
            known = self._annotations.get(aid)
        if known is None or known.resource_id != rid:
            raise FetchError(f"no annotation {aid} of resource {rid} on the server", resource_id=rid)
        return known

    def _target(self, relpath: str) -> _Target:
        """What to download for one of this source's relative paths (see the module docstring)."""
        if match := _RESOURCE_FILE.match(relpath):
            rid = _check_id(match[1], "resource")
            resource = self._resource_for(rid)
            if len(resource.files) != 1:
                raise FetchError(
                    f"resource {rid} has {len(resource.files)} files: use {resource.files[0]!r}, ...",
                    resource_id=rid,
                    filename=relpath,
                )
            created, deleted, size = resource.cache_version
            return _Target(
                relpath,
                f"/resources/{_quote(rid)}/file",
                cache_key("resource", rid, created, deleted, size),
                rid,
                size,
            )
        if match := _RESOURCE_PART.match(relpath):
            rid, part = _check_id(match[1], "resource"), int(match[2])
            resource = self._resource_for(rid)
            if relpath not in resource.files:
                raise FetchError(f"resource {rid} has no file {part}", resource_id=rid, filename=relpath)
            created, deleted, size = resource.cache_version
            return _Target(
                relpath,
                f"/resources/{_quote(rid)}/files/{part}",
                cache_key("resource", rid, created, deleted, size, "file", part),
                rid,
                None,
            )
        if match := _ANNOTATION_FILE.match(relpath):
            rid, aid = _check_id(match[1], "resource"), _check_id(match[2], "annotation")
            annotation = self._annotation_for(rid, aid)
            return _Target(
                relpath,
                f"/annotations/{_quote(rid)}/annotations/{_quote(aid)}/file",
                cache_key(
                    "annotation", rid, aid, annotation.created_at, annotation.deleted_at, annotation.associated_file
                ),
                rid,
                None,
            )
        raise FetchError(f"{relpath!r} is not a file path of a server source", filename=relpath)

    def _stream(self, url_path: str) -> Iterator[bytes]:
        """The body of ``GET url_path`` in chunks; raises when it is shorter or longer than declared."""
        response = self._session().get(
            self._url + url_path,
            stream=True,
            timeout=self._timeout,
            allow_redirects=False,
            headers={"accept": "application/octet-stream", "accept-encoding": "identity"},
        )
        with response:
            self._check_status(response)
            declared = response.headers.get("content-length")
            received = 0
            for chunk in response.iter_content(_CHUNK):
                received += len(chunk)
                yield chunk
            if declared is not None and declared.isdigit() and received != int(declared):
                raise _Retryable(f"the body was cut short: {received} of {declared} bytes")

    def _download(self, target: _Target) -> Path:
        hit = self._cache.get(target.key)
        if hit is not None:
            return hit

        def fetch() -> Path:
            return self._cache.get_or_fetch(
                target.key, lambda: self._stream(target.url_path), expected_size=target.expected_size
            )

        return self._retrying(
            "GET",
            target.url_path,
            fetch,
            what="download",
            resource_id=target.resource_id,
            filename=target.relpath,
        )

    def local_path(self, relpath: str) -> str:
        """The cached copy of ``relpath`` (``Resource.files`` / ``Annotation.file``), downloaded if missing."""
        return os.fspath(self._download(self._target(relpath)))

    def open_file(self, relpath: str) -> IO[bytes]:
        """Open the cached copy of ``relpath`` for reading (downloading it first if needed)."""
        return open(self.local_path(relpath), "rb")

    def read_bytes(self, relpath: str) -> bytes:
        with self.open_file(relpath) as handle:
            return handle.read()

    def prefetch(
        self,
        resource_ids: Iterable[str] | None = None,
        *,
        include_annotations: bool = False,
        max_concurrency: int | None = None,
        progress: bool = True,
    ) -> int:
        """Download the files of the given resources (default: every current resource), and with
        ``include_annotations`` their annotation files, ``max_concurrency`` at a time (default: the source's).

        Returns the number of files now cached. Every file is attempted; if some fail after their retries,
        one :class:`FetchError` names how many and the first failure.
        """
        workers = self._max_concurrency if max_concurrency is None else max_concurrency
        if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
            raise ValueError(f"{max_concurrency=} must be None or a positive integer")
        if resource_ids is None:
            resources = self.resources()
        else:
            wanted = list(dict.fromkeys(resource_ids))
            if not all(rid in self._resources for rid in wanted):
                self.resources(include_deleted=True)
            resources = [self._resource_for(rid) for rid in wanted]
        relpaths = [relpath for resource in resources for relpath in resource.files]
        if include_annotations and resources:
            annotations = self.annotations([r.id for r in resources])
            relpaths += [a.file for a in annotations if a.file is not None]
        failures: list[FetchError] = []
        with (
            _progress_bar(len(relpaths), enabled=progress) as advance,
            ThreadPoolExecutor(max_workers=workers, thread_name_prefix="datamint-prefetch") as pool,
        ):
            futures = [pool.submit(self.local_path, relpath) for relpath in relpaths]
            for future in as_completed(futures):
                try:
                    future.result()
                except FetchError as error:
                    failures.append(error)
                advance()
        if failures:
            first = failures[0]
            raise FetchError(
                f"prefetch: {len(failures)} of {len(relpaths)} files failed; first: {first}",
                resource_id=first.resource_id,
            )
        return len(relpaths)


def _all_pages(fetch: Callable[[int], list[Any]], what: str) -> list[Any]:
    """Concatenate pages ``fetch(offset)`` until an empty or short page."""
    items: list[Any] = []
    previous: list[Any] | None = None
    while True:
        page = fetch(len(items))
        if previous is not None and page and page == previous:
            log.warning("%s: the server ignores offset (the same page came back); stopping", what)
            break
        items.extend(page)
        if len(page) < PAGE_SIZE:
            break
        previous = page
    return items


def _with_group(spec: LabelSpec, groups: Mapping[str, Mapping[str, Any]]) -> LabelSpec:
    group = groups.get(spec.identifier)
    if spec.type != "segmentation" or group is None:
        return spec
    index = group.get("index")
    color = group.get("color")
    return dataclasses.replace(
        spec,
        index=int(index) if index is not None else spec.index,
        color=tuple(int(c) for c in color) if color is not None else spec.color,
    )


def _annotator_email(value: Any) -> str:
    if isinstance(value, Mapping):
        return str(value.get("email", ""))
    return str(value)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@contextlib.contextmanager
def _progress_bar(total: int, *, enabled: bool) -> Iterator[Callable[[], None]]:
    """A tqdm bar when ``enabled`` and tqdm is installed; yields the function that advances it by one."""
    bar: Any = None
    if enabled:
        try:
            from tqdm.auto import tqdm
        except ImportError:
            log.info("prefetching %d files (install tqdm for a progress bar)", total)
        else:
            bar = tqdm(total=total, unit="file", desc="prefetch")
    try:
        yield (lambda: bar.update(1)) if bar is not None else (lambda: None)
    finally:
        if bar is not None:
            bar.close()
