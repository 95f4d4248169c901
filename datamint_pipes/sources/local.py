"""The local project store: a SQLite catalogue plus files, the embedded default source.

Layout of a project folder::

    project.sqlite                          the catalogue (resources, annotations, worklists, splits)
    resources/<resource_id>/<file>          one file, or the slices of a DICOM series
    annotations/<resource_id>/<id>.png      2D and frame masks, (H,W) uint8, nonzero = foreground
    annotations/<resource_id>/<id>.nii.gz   volume masks, NIfTI with the image's shape and affine

A project is addressed by a local path, an fsspec URL (opened read-only; the catalogue is copied to a
local temporary file), or a name inside the store root (``$DATAMINT_PIPES_HOME``, else the per-user data
folder). Every edit runs in one transaction: when it fails, the catalogue is unchanged and the files it
copied are removed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import sqlite3
import tempfile
import threading
import urllib.parse
import urllib.request
import uuid
import weakref
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

from datamint_pipes.errors import ProjectError
from datamint_pipes.model import (
    Annotation,
    LabelSpec,
    Project,
    Resource,
    SplitAssignment,
    Worklist,
    file_suffix,
    guess_mimetype,
    parse_timestamp,
    utc_now_iso,
)
from datamint_pipes.sources import _masks
from datamint_pipes.sources._files import FsspecFiles, LocalFiles, ProjectFiles

__all__ = ["CATALOGUE", "LocalProject", "open_project", "store_root"]

CATALOGUE = "project.sqlite"
SOURCE_ROOT_KEY = "_source_root"
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE resources (
    id TEXT PRIMARY KEY, position INTEGER NOT NULL, data TEXT NOT NULL, deleted_at TEXT
);
CREATE TABLE annotations (
    id TEXT PRIMARY KEY, position INTEGER NOT NULL,
    resource_id TEXT NOT NULL REFERENCES resources(id), data TEXT NOT NULL, deleted_at TEXT
);
CREATE INDEX annotations_by_resource ON annotations(resource_id);
CREATE TABLE worklists (id TEXT PRIMARY KEY, position INTEGER NOT NULL, data TEXT NOT NULL);
CREATE TABLE splits (
    id TEXT PRIMARY KEY, position INTEGER NOT NULL, resource_id TEXT NOT NULL REFERENCES resources(id),
    split_name TEXT NOT NULL, created_at TEXT NOT NULL, created_by TEXT,
    deleted_at TEXT, deleted_by TEXT
);
CREATE INDEX splits_by_resource ON splits(resource_id);
"""

_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def store_root() -> Path:
    """Folder holding projects addressed by name: ``$DATAMINT_PIPES_HOME``, else the per-user data folder."""
    env = os.environ.get("DATAMINT_PIPES_HOME")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(Path.home(), ".local", "share")
    return Path(base) / "datamint-pipes"


def _remove_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def _file_url_to_path(url: str) -> str:
    parsed = urllib.parse.urlparse(url)
    return urllib.request.url2pathname(parsed.path)


_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def _check_id(value: str, what: str) -> str:
    """Ids name folders and files: letters, digits, ``.``, ``_``, ``-``, starting with a letter or digit."""
    if not isinstance(value, str) or not _ID_PATTERN.match(value):
        raise ProjectError(f"{what} id {value!r} must match {_ID_PATTERN.pattern} (it names files in the project)")
    return value


def _safe_filename(name: str) -> str:
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    cleaned = _SAFE_NAME.sub("_", base).lstrip(".")
    return cleaned or "file"


def _new_id() -> str:
    return str(uuid.uuid4())


def _check_timestamp(value: str | None) -> str:
    if value is None:
        return utc_now_iso()
    try:
        parse_timestamp(value)
    except ValueError as error:
        raise ProjectError(str(error)) from error
    return value


class LocalProject:
    """A local project: open with :meth:`open` or :func:`open_project`, make one with :meth:`create`.

    Thread-safe for reads; one SQLite connection per thread. Edits need a writable local folder.
    """

    def __init__(self, files: ProjectFiles, catalogue_path: str, *, read_only: bool) -> None:
        self._files = files
        self._catalogue_path = catalogue_path
        self.read_only = read_only
        self._local = threading.local()
        self._lock = threading.RLock()
        with self._connection() as conn:
            version = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            if version is None or int(version[0]) != SCHEMA_VERSION:
                raise ProjectError(f"{catalogue_path}: unsupported catalogue schema version {version}")
            self._project = Project.from_dict(
                json.loads(conn.execute("SELECT value FROM meta WHERE key='project'").fetchone()[0])
            )

    # -- opening -----------------------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        location: str | os.PathLike[str],
        name: str | None = None,
        *,
        description: str | None = None,
        created_by: str | None = None,
        project_id: str | None = None,
    ) -> LocalProject:
        """Create an empty project in the folder ``location`` (which must not hold a project yet)."""
        root = Path(location)
        if "://" in os.fspath(location):
            raise ProjectError(f"{location}: projects are created in a local folder; upload it afterwards")
        catalogue = root / CATALOGUE
        if catalogue.exists():
            raise ProjectError(f"{root}: a project already exists here")
        root.mkdir(parents=True, exist_ok=True)
        project = Project(
            id=project_id or _new_id(),
            name=name or root.name,
            created_at=utc_now_iso(),
            created_by=created_by,
            description=description,
        )
        tmp = root / f".{CATALOGUE}.tmp"
        with contextlib.closing(sqlite3.connect(tmp)) as conn:
            conn.executescript(_SCHEMA)
            conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            conn.execute("INSERT INTO meta VALUES ('project', ?)", (json.dumps(project.to_dict()),))
            conn.commit()
        os.replace(tmp, catalogue)
        return cls(LocalFiles(root), os.fspath(catalogue), read_only=False)

    @classmethod
    def open(cls, location: str | os.PathLike[str], *, read_only: bool | None = None) -> LocalProject:
        """Open the project at a local folder or an fsspec URL (URLs open read-only)."""
        text = os.fspath(location)
        if "://" in text and not text.startswith("file://"):
            if read_only is False:
                raise ProjectError(f"{text}: projects behind a URL open read-only")
            files: ProjectFiles = FsspecFiles(text)
            if not files.exists(CATALOGUE):
                raise ProjectError(f"{text}: no {CATALOGUE} found; not a datamint-pipes project")
            handle, local_copy = tempfile.mkstemp(prefix="datamint-pipes-", suffix=".sqlite")
            with os.fdopen(handle, "wb") as out, files.open(CATALOGUE) as src:
                out.write(src.read())
            project = cls(files, local_copy, read_only=True)
            # The local copy of the catalogue lives as long as this object (not its pickled copies).
            weakref.finalize(project, _remove_quietly, local_copy)
            return project
        root = Path(_file_url_to_path(text) if text.startswith("file://") else text)
        catalogue = root / CATALOGUE
        if not catalogue.is_file():
            raise ProjectError(f"{root}: no {CATALOGUE} found; not a datamint-pipes project")
        writable = os.access(catalogue, os.W_OK) and os.access(root, os.W_OK)
        ro = (not writable) if read_only is None else read_only
        if not ro and not writable:
            raise ProjectError(f"{root}: the project folder is not writable")
        return cls(LocalFiles(root, read_only=ro), os.fspath(catalogue), read_only=ro)

    def _connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None or getattr(self._local, "pid", None) != os.getpid():
            if self.read_only:
                uri = Path(self._catalogue_path).resolve().as_uri() + "?mode=ro"
                conn = sqlite3.connect(uri, uri=True, check_same_thread=False)
            else:
                conn = sqlite3.connect(self._catalogue_path, check_same_thread=False, timeout=30)
                conn.execute("PRAGMA foreign_keys = ON")
            self._local.conn = conn
            self._local.pid = os.getpid()
        return conn

    def close(self) -> None:
        """Close this thread's catalogue connection (others close when their thread ends)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def __getstate__(self) -> dict[str, Any]:
        # Connections do not cross processes; a worker reopens the catalogue lazily.
        state = self.__dict__.copy()
        del state["_local"], state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._local = threading.local()
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        mode = "read-only" if self.read_only else "writable"
        return f"LocalProject({self._files.root!r}, name={self.name!r}, {mode})"

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        if self.read_only:
            raise ProjectError(f"{self._files.root}: the project is read-only")
        conn = self._connection()
        with self._lock:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.rollback()
                raise
            conn.commit()

    @property
    def _writable_files(self) -> LocalFiles:
        assert isinstance(self._files, LocalFiles)  # guaranteed by _transaction's read-only check
        return self._files

    # -- project -----------------------------------------------------------------------------------------

    @property
    def project(self) -> Project:
        """The project record, with ``resource_count`` counted now."""
        count = self._connection().execute("SELECT COUNT(*) FROM resources WHERE deleted_at IS NULL").fetchone()[0]
        return Project(**{**self._project.to_dict(), "resource_count": int(count)})

    @property
    def name(self) -> str:
        return self._project.name

    @property
    def id(self) -> str:
        return self._project.id

    @property
    def root(self) -> str:
        """The project's folder or URL."""
        return self._files.root

    # -- files -------------------------------------------------------------------------------------------

    def open_file(self, relpath: str) -> IO[bytes]:
        """Open one of the project's files (a path from ``Resource.files`` or ``Annotation.file``)."""
        try:
            return self._files.open(relpath)
        except FileNotFoundError as error:
            raise ProjectError(f"{self.root}: file {relpath} is missing from the project") from error

    def read_bytes(self, relpath: str) -> bytes:
        with self.open_file(relpath) as handle:
            return handle.read()

    def local_path(self, relpath: str) -> str | None:
        """A local filesystem path for ``relpath`` when the project is on local disk, else ``None``."""
        return self._files.local_path(relpath)

    # -- resources ---------------------------------------------------------------------------------------

    def add_resource(
        self,
        source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        *,
        filename: str | None = None,
        resource_id: str | None = None,
        mimetype: str | None = None,
        tags: Iterable[str] = (),
        patient_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        created_at: str | None = None,
        created_by: str | None = None,
    ) -> Resource:
        """Copy a file (or the files of one DICOM series, given as a list) into the project.

        The file's header is probed (no pixel decode) to record ``metadata``: ``format``, ``shape``
        (the decoded layout, (C,H,W) or (C,N,H,W)), ``dtype``, ``frame_count``, ``height``, ``width``,
        ``stored_shape``. Raises :class:`ProjectError` for a missing or unreadable file, an unknown
        format, or a duplicate id; the catalogue is then unchanged.
        """
        paths = [Path(source)] if isinstance(source, (str, os.PathLike)) else [Path(p) for p in source]
        if not paths:
            raise ProjectError("add_resource needs at least one file")
        for path in paths:
            if not path.is_file():
                raise ProjectError(f"{path}: no such file")
        is_series = len(paths) > 1
        name = filename or (paths[0].parent.name if is_series else paths[0].name)
        mimetype = mimetype or ("application/dicom" if is_series else guess_mimetype(paths[0].name))
        header = _probe_files(paths, name, mimetype)
        if mimetype is None:
            mimetype = _MIMETYPE_BY_FORMAT.get(str(header["format"]))
        rid = _check_id(resource_id, "resource") if resource_id is not None else _new_id()
        if is_series:
            relpaths = [f"resources/{rid}/{i:05d}_{_safe_filename(p.name)}" for i, p in enumerate(paths)]
        else:
            relpaths = [f"resources/{rid}/{_safe_filename(name)}"]
        resource = Resource(
            id=rid,
            filename=name,
            mimetype=mimetype,
            size=sum(p.stat().st_size for p in paths),
            created_at=_check_timestamp(created_at),
            created_by=created_by,
            tags=tuple(tags),
            patient_id=patient_id,
            metadata={**header, "sha256": _content_digest(paths), **dict(metadata or {})},
            files=tuple(relpaths),
        )
        with self._transaction() as conn:
            if conn.execute("SELECT 1 FROM resources WHERE id=?", (rid,)).fetchone():
                raise ProjectError(f"resource id {rid} already exists in the project", resource_id=rid)
            files = self._writable_files
            try:
                for path, relpath in zip(paths, relpaths, strict=True):
                    files.put_file(path, relpath)
                conn.execute(
                    "INSERT INTO resources VALUES (?, (SELECT COALESCE(MAX(position), -1) + 1 FROM resources), ?, ?)",
                    (rid, json.dumps(resource.to_dict()), None),
                )
            except BaseException:
                files.remove_tree(f"resources/{rid}")
                raise
        return resource

    def remove_resource(self, resource_id: str, *, at: str | None = None) -> None:
        """Mark a resource deleted (its files stay, so historical splits and caches keep their meaning)."""
        when = _check_timestamp(at)
        with self._transaction() as conn:
            resource = self._resource_row(conn, resource_id)
            if resource.deleted_at is not None:
                raise ProjectError(f"resource {resource_id} was already removed at {resource.deleted_at}")
            data = {**resource.to_dict(), "deleted": True, "deleted_at": when}
            conn.execute("UPDATE resources SET data=?, deleted_at=? WHERE id=?", (json.dumps(data), when, resource_id))

    def purge_resources(self, resource_ids: Iterable[str]) -> None:
        """Erase resources with their annotations, split history and files, leaving no trace.

        For undoing an import that failed halfway; use :meth:`remove_resource` for ordinary deletion.
        """
        ids = list(resource_ids)
        with self._transaction() as conn:
            for rid in ids:
                conn.execute("DELETE FROM annotations WHERE resource_id=?", (rid,))
                conn.execute("DELETE FROM splits WHERE resource_id=?", (rid,))
                conn.execute("DELETE FROM resources WHERE id=?", (rid,))
        for rid in ids:
            self._writable_files.remove_tree(f"resources/{rid}")
            self._writable_files.remove_tree(f"annotations/{rid}")

    def resources(self, *, include_deleted: bool = False) -> list[Resource]:
        """Resources in the order they were added."""
        query = "SELECT data FROM resources"
        if not include_deleted:
            query += " WHERE deleted_at IS NULL"
        rows = self._connection().execute(query + " ORDER BY position").fetchall()
        return [self._stamp(Resource.from_dict(json.loads(row[0]))) for row in rows]

    def resource(self, resource_id: str) -> Resource:
        return self._resource_row(self._connection(), resource_id)

    def _resource_row(self, conn: sqlite3.Connection, resource_id: str) -> Resource:
        row = conn.execute("SELECT data FROM resources WHERE id=?", (resource_id,)).fetchone()
        if row is None:
            raise ProjectError(f"no resource {resource_id} in project {self.name}", resource_id=resource_id)
        return self._stamp(Resource.from_dict(json.loads(row[0])))

    def _stamp(self, resource: Resource) -> Resource:
        """Note (in ``extra['_source_root']``, never serialised) which project a resource was read from, so a
        dataset built from ``resources=`` can find their files."""
        return dataclasses.replace(resource, extra={**resource.extra, SOURCE_ROOT_KEY: self.root})

    # -- annotations -------------------------------------------------------------------------------------

    def add_annotation(
        self,
        resource_id: str,
        identifier: str,
        annotation_type: str,
        *,
        created_by: str | None = None,
        frame_index: int | None = None,
        mask: str | os.PathLike[str] | np.ndarray[Any, Any] | None = None,
        geometry: Any = None,
        text_value: str | None = None,
        numeric_value: float | None = None,
        annotation_id: str | None = None,
        worklist_id: str | None = None,
        created_at: str | None = None,
        created_by_model: str | None = None,
        status: str = "published",
        source: str | None = "manual",
    ) -> Annotation:
        """Add an annotation; a frame index makes it frame-scoped.

        ``mask`` (segmentations): for a 2D image or a frame, a PNG path or an (H,W) array; for a whole
        volume or video, a NIfTI path or array -- for NIfTI resources in the image file's stored voxel
        order (as ``nibabel``'s ``get_fdata``), for others in the decoded (N,H,W) order. The mask's shape
        must match its image (:class:`ProjectError` otherwise). Boxes (``annotation_type='square'``) take
        ``geometry={'points': [[x1,y1,z],[x2,y1,z],[x1,y2,z],[x2,y2,z]]}``.
        """
        aid = _check_id(annotation_id, "annotation") if annotation_id is not None else _new_id()
        with self._transaction() as conn:
            resource = self._resource_row(conn, resource_id)
            if conn.execute("SELECT 1 FROM annotations WHERE id=?", (aid,)).fetchone():
                raise ProjectError(f"annotation id {aid} already exists", resource_id=resource_id)
            frame_count = resource.frame_count or 1
            if frame_index is not None and not 0 <= frame_index < frame_count:
                raise ProjectError(
                    f"annotation {aid}: {frame_index=} is outside the resource's {frame_count} frames",
                    resource_id=resource_id,
                )
            if annotation_type == "segmentation" and mask is None:
                raise ProjectError(f"segmentation annotation {aid} needs a mask", resource_id=resource_id)
            if mask is not None and annotation_type != "segmentation":
                raise ProjectError(
                    f"annotation {aid}: only segmentations carry a mask, not {annotation_type!r}",
                    resource_id=resource_id,
                )
            relpath = None
            if mask is not None:
                scope_2d = frame_index is not None or (resource.metadata.get("kind") == "image")
                suffix = ".png" if scope_2d else ".nii.gz"
                relpath = f"annotations/{resource_id}/{aid}{suffix}"
                payload = _masks.prepare_mask(self, resource, mask, frame_scoped=scope_2d, annotation_id=aid)
            annotation = Annotation(
                id=aid,
                identifier=identifier,
                scope="frame" if frame_index is not None else "image",
                annotation_type=annotation_type,
                resource_id=resource_id,
                created_by=created_by,
                annotation_worklist_id=worklist_id,
                status=status,
                frame_index=frame_index,
                text_value=text_value,
                numeric_value=numeric_value,
                geometry=geometry if geometry is not None else [],
                created_at=_check_timestamp(created_at),
                associated_file=relpath,
                file=relpath,
                created_by_model=created_by_model,
                resource_filename=resource.filename,
                source=source,
            )
            files = self._writable_files
            try:
                if relpath is not None:
                    files.put_bytes(payload, relpath)
                conn.execute(
                    "INSERT INTO annotations VALUES "
                    "(?, (SELECT COALESCE(MAX(position), -1) + 1 FROM annotations), ?, ?, NULL)",
                    (aid, resource_id, json.dumps(annotation.to_dict())),
                )
            except BaseException:
                if relpath is not None:
                    files.remove(relpath)
                raise
        return annotation

    def delete_annotation(self, annotation_id: str, *, deleted_by: str | None = None, at: str | None = None) -> None:
        """Mark an annotation deleted; it stays in the catalogue for history."""
        when = _check_timestamp(at)
        with self._transaction() as conn:
            row = conn.execute("SELECT data FROM annotations WHERE id=?", (annotation_id,)).fetchone()
            if row is None:
                raise ProjectError(f"no annotation {annotation_id} in project {self.name}")
            previous = json.loads(row[0])
            if previous.get("deleted_at"):
                raise ProjectError(f"annotation {annotation_id} was already deleted at {previous['deleted_at']}")
            data = {**json.loads(row[0]), "deleted": True, "deleted_at": when, "deleted_by": deleted_by}
            conn.execute(
                "UPDATE annotations SET data=?, deleted_at=? WHERE id=?", (json.dumps(data), when, annotation_id)
            )

    def annotations(
        self, resource_ids: Iterable[str] | None = None, *, include_deleted: bool = False
    ) -> list[Annotation]:
        """Annotations (of the given resources, or all) in the order they were added."""
        query = "SELECT data FROM annotations"
        clauses, params = [], []
        if resource_ids is not None:
            ids = list(resource_ids)
            clauses.append(f"resource_id IN ({','.join('?' * len(ids))})")
            params.extend(ids)
        if not include_deleted:
            clauses.append("deleted_at IS NULL")
        if clauses:
            query += " WHERE " + " AND ".join(clauses)
        rows = self._connection().execute(query + " ORDER BY position", params).fetchall()
        return [Annotation.from_dict(json.loads(row[0])) for row in rows]

    def annotations_by_resource(self, *, include_deleted: bool = False) -> dict[str, list[Annotation]]:
        """Every resource id mapped to its annotations (empty list when none), in one catalogue query."""
        grouped: dict[str, list[Annotation]] = {r.id: [] for r in self.resources(include_deleted=True)}
        for annotation in self.annotations(include_deleted=include_deleted):
            grouped.setdefault(annotation.resource_id, []).append(annotation)
        return grouped

    # -- worklists and label schema ----------------------------------------------------------------------

    def add_worklist(
        self,
        name: str,
        specs: Sequence[LabelSpec | Mapping[str, Any]],
        *,
        annotators: Sequence[str] = (),
        worklist_id: str | None = None,
    ) -> Worklist:
        """Define a worklist with its label schema. Segmentation specs get 1-based ``index`` codes
        (their position among the worklist's segmentations unless given); codes must be unique."""
        parsed = [s if isinstance(s, LabelSpec) else LabelSpec.from_dict(s) for s in specs]
        identifiers = [(s.type, s.identifier) for s in parsed]
        duplicates = [key for key, n in Counter(identifiers).items() if n > 1]
        if duplicates:
            raise ProjectError(f"worklist {name!r}: label specs repeat {duplicates}")
        worklist = Worklist(id=worklist_id or _new_id(), name=name, annotators=tuple(annotators), specs=tuple(parsed))
        codes = worklist.segmentation_codes()
        if len(set(codes.values())) != len(codes) or any(c < 1 for c in codes.values()):
            raise ProjectError(f"worklist {name!r}: segmentation codes must be unique and >= 1, got {codes}")
        specs_with_codes = tuple(
            LabelSpec(**{**s.__dict__, "index": codes[s.identifier]}) if s.type == "segmentation" else s for s in parsed
        )
        worklist = Worklist(id=worklist.id, name=name, annotators=tuple(annotators), specs=specs_with_codes)
        with self._transaction() as conn:
            if conn.execute("SELECT 1 FROM worklists WHERE id=?", (worklist.id,)).fetchone():
                raise ProjectError(f"worklist id {worklist.id} already exists")
            conn.execute(
                "INSERT INTO worklists VALUES (?, (SELECT COALESCE(MAX(position), -1) + 1 FROM worklists), ?)",
                (worklist.id, json.dumps(_worklist_to_dict(worklist))),
            )
        return worklist

    def worklists(self) -> list[Worklist]:
        rows = self._connection().execute("SELECT data FROM worklists ORDER BY position").fetchall()
        return [_worklist_from_dict(json.loads(row[0])) for row in rows]

    def segmentation_groups(self, worklist_id: str) -> dict[str, dict[str, Any]]:
        """``{label: {'index': code, 'color': [r,g,b,a]}}`` as the server's segmentation-group call returns."""
        for worklist in self.worklists():
            if worklist.id == worklist_id:
                return {
                    s.identifier: {"index": s.index, "color": list(s.color) if s.color else None}
                    for s in worklist.specs
                    if s.type == "segmentation"
                }
        raise ProjectError(f"no worklist {worklist_id} in project {self.name}")

    # -- splits ------------------------------------------------------------------------------------------

    def assign_split(
        self, resource_ids: Iterable[str], split_name: str, *, at: str | None = None, by: str | None = None
    ) -> list[SplitAssignment]:
        """Assign resources to ``split_name`` at time ``at`` (default now), ending any current assignment
        of each at that same instant. History is kept, so :meth:`split_assignments` can replay any time."""
        if not split_name:
            raise ProjectError("split_name must be a non-empty string")
        when = _check_timestamp(at)
        ids = list(dict.fromkeys(resource_ids))
        created: list[SplitAssignment] = []
        with self._transaction() as conn:
            for rid in ids:
                self._resource_row(conn, rid)
                self._end_assignments(conn, rid, when, by)
                assignment = SplitAssignment(
                    id=_new_id(),
                    project_id=self.id,
                    resource_id=rid,
                    split_name=split_name,
                    created_at=when,
                    created_by=by,
                )
                conn.execute(
                    "INSERT INTO splits VALUES (?, (SELECT COALESCE(MAX(position), -1) + 1 FROM splits), "
                    "?, ?, ?, ?, NULL, NULL)",
                    (assignment.id, rid, split_name, when, by),
                )
                created.append(assignment)
        return created

    def unassign_split(self, resource_ids: Iterable[str], *, at: str | None = None, by: str | None = None) -> None:
        """End the current split assignment of each resource at ``at`` (default now)."""
        when = _check_timestamp(at)
        with self._transaction() as conn:
            for rid in dict.fromkeys(resource_ids):
                self._resource_row(conn, rid)
                self._end_assignments(conn, rid, when, by)

    def _end_assignments(self, conn: sqlite3.Connection, rid: str, when: str, by: str | None) -> None:
        """End the resource's open assignment at ``when``; history cannot be rewritten, so ``when`` may not
        precede any earlier change to the resource's split."""
        instant = parse_timestamp(when)
        rows = conn.execute("SELECT id, created_at, deleted_at FROM splits WHERE resource_id=?", (rid,)).fetchall()
        for _, created_at, deleted_at in rows:
            latest = max(parse_timestamp(t) for t in (created_at, deleted_at) if t is not None)
            if latest > instant:
                raise ProjectError(
                    f"cannot change the split of resource {rid} at {when}: its split already changed later, at "
                    f"{latest.isoformat()}",
                    resource_id=rid,
                )
        for split_id, _, deleted_at in rows:
            if deleted_at is None:
                conn.execute("UPDATE splits SET deleted_at=?, deleted_by=? WHERE id=?", (when, by, split_id))

    def split_assignments(
        self, as_of: str | None = None, *, split_name: str | None = None, include_history: bool = False
    ) -> list[SplitAssignment]:
        """Assignments in force at ``as_of`` (default: now), or every row ever made with ``include_history``."""
        rows = self._connection().execute(
            "SELECT id, resource_id, split_name, created_at, created_by, deleted_at, deleted_by "
            "FROM splits ORDER BY position"
        )
        assignments = [
            SplitAssignment(
                id=r[0],
                project_id=self.id,
                resource_id=r[1],
                split_name=r[2],
                created_at=r[3],
                created_by=r[4],
                deleted_at=r[5],
                deleted_by=r[6],
            )
            for r in rows
        ]
        if split_name is not None:
            assignments = [a for a in assignments if a.split_name == split_name]
        if include_history:
            return assignments
        when = parse_timestamp(as_of or utc_now_iso())
        return [a for a in assignments if a.active_at(when)]

    # -- summary -----------------------------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        """Counts by format, kind, annotator, annotation label and current split (for ``info``)."""
        resources = self.resources()
        annotations = self.annotations()
        splits = self.split_assignments()
        return {
            "project": self.name,
            "id": self.id,
            "root": self.root,
            "resources": len(resources),
            "by_format": dict(Counter(str(r.metadata.get("format", r.mimetype)) for r in resources)),
            "by_kind": dict(Counter(str(r.metadata.get("kind")) for r in resources)),
            "annotations": len(annotations),
            "by_annotator": dict(Counter(a.author for a in annotations)),
            "by_label": dict(Counter(f"{a.annotation_type}:{a.identifier}" for a in annotations)),
            "by_split": dict(Counter(s.split_name for s in splits)),
            "worklists": [w.name for w in self.worklists()],
        }


_MIMETYPE_BY_FORMAT = {
    "dicom": "application/dicom",
    "nifti": "application/nifti",
    "png": "image/png",
    "jpeg": "image/jpeg",
    "video": "video/mp4",
}


def _probe_files(paths: list[Path], name: str, mimetype: str | None) -> dict[str, Any]:
    """Header facts of one file or a DICOM series, for the catalogue (see ``LocalProject.add_resource``)."""
    from datamint_pipes import decode

    if mimetype is None and not file_suffix(name) and len(paths) == 1:
        with open(paths[0], "rb") as handle:
            head = handle.read(512)
        try:
            decode.detect_format(head, name, None)
        except ValueError as error:
            raise ProjectError(f"{paths[0]}: unknown file type ({error})") from error
    try:
        if len(paths) > 1:
            # An irregular series is stored, with a SeriesGeometryWarning; decoding it later raises unless asked to
            # warn. Its measured gaps are kept in the metadata, and its spacing is None.
            probed = decode.probe_series(paths, filenames=[p.name for p in paths], on_irregular="warn")
        else:
            probed = decode.probe(paths[0], filename=name, mimetype=mimetype)
    except ValueError as error:
        what = "one DICOM series" if len(paths) > 1 else "a medical image"
        raise ProjectError(f"{name if len(paths) > 1 else paths[0]}: cannot be read as {what}: {error}") from error
    header: dict[str, Any] = {
        "format": probed.format,
        "kind": probed.kind,
        "shape": list(probed.shape),
        "dtype": probed.dtype,
        "frame_count": probed.frame_count,
        "height": probed.shape[-2],
        "width": probed.shape[-1],
        "stored_shape": list(probed.stored_shape),
    }
    if probed.geometry is not None:
        header["spacing"] = None if probed.spacing is None else list(probed.spacing)
        header["slice_spacings"] = list(probed.geometry.slice_spacings)
    return header


def _content_digest(paths: list[Path]) -> str:
    """SHA-256 of a file, or of the ordered per-file digests of a series (the decoded cache's content key)."""
    digests = []
    for path in paths:
        with open(path, "rb") as handle:
            digests.append(hashlib.file_digest(handle, "sha256").hexdigest())
    return digests[0] if len(digests) == 1 else hashlib.sha256("\n".join(digests).encode()).hexdigest()


def _worklist_to_dict(worklist: Worklist) -> dict[str, Any]:
    return {
        "id": worklist.id,
        "name": worklist.name,
        "annotators": list(worklist.annotators),
        "annotations": [s.to_dict() for s in worklist.specs],
    }


def _worklist_from_dict(data: Mapping[str, Any]) -> Worklist:
    return Worklist(
        id=str(data["id"]),
        name=str(data["name"]),
        annotators=tuple(data.get("annotators") or ()),
        specs=tuple(LabelSpec.from_dict(s) for s in data.get("annotations") or ()),
    )


def open_project(ref: str | os.PathLike[str] | LocalProject, *, read_only: bool | None = None) -> LocalProject:
    """Open a project by folder, fsspec URL, or name inside :func:`store_root`."""
    if isinstance(ref, LocalProject):
        return ref
    text = os.fspath(ref)
    if "://" in text or Path(text, CATALOGUE).is_file():
        return LocalProject.open(text, read_only=read_only)
    named = store_root() / text
    if (named / CATALOGUE).is_file():
        return LocalProject.open(named, read_only=read_only)
    raise ProjectError(f"no project at {text!r}, and none named {text!r} in the store root {store_root()}")
