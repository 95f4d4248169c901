"""Scale-out with Ray Data: decode a whole project on a Ray cluster into a decoded-array cache.

Needs the optional extra ``ray`` (``pip install 'datamint-pipes[ray]'``); importing this module without
Ray raises :class:`ImportError` saying so.

* :func:`build_decoded_cache` -- runs the stage code of the single-machine path (the key of
  :func:`~datamint_pipes.stages.cached.decoded_cache_key` and the decode of
  :class:`~datamint_pipes.stages.cached.CachedDecode`) inside ``ray.data ... map_batches``, one Ray task per
  batch of resources, and writes every entry in the :class:`~datamint_pipes.cache.ArrayCache` format
  (``arrays/<key[:2]>/<key>.json`` and ``.npy``, byte for byte what ``ArrayCache.put`` writes) to a local
  or shared folder, or to any fsspec URL. Each file is published atomically (a ``.tmp-`` name, then a
  rename), metadata before array, so a reader sees a complete entry or none. Entries already there are
  kept: a key is a content hash, so an existing valid entry is the same array.
* :func:`mirror_cache` -- copies such a cache from a URL into a local :class:`ArrayCache` folder
  (size-checked, atomic, entries validated), after which the normal pipeline
  (``CachedDecode(source, ArrayCache(local_root), ...)``) serves every resource without decoding.

Where the workers run: every Ray worker receives the source by pickling (``LocalProject`` pickles and
reopens lazily) and reads the resource files through it, so on a multi-node cluster the project and the
target must be reachable from every node (shared storage or a URL). ``memory://`` lives inside one
process and Ray workers are separate processes, so it is refused as a build target (it is fine for
:func:`mirror_cache`, which runs in the calling process).

Errors: a resource that fails comes back as a row of the report, never as a lost Ray task. With
``on_error="raise"`` (the default) every other entry is still written, then the first failure (in catalogue
order) is raised with its original type -- the way worker errors are re-raised by the pipeline: the message
is ``Caught TYPE in a Ray worker ...`` followed by the worker's traceback, and a type whose constructor
does not take one message string comes back as ``RuntimeError``. With ``on_error="skip"`` failures are only
reported (:attr:`CacheBuildReport.failed`) and logged.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import pickle
import posixpath
import re
import shutil
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NoReturn

import fsspec
import numpy as np

try:
    import ray.data
except ImportError as _error:
    raise ImportError(
        "datamint_pipes.ray_adapter needs Ray Data, the optional extra 'ray': pip install 'datamint-pipes[ray]'"
    ) from _error

from datamint_pipes.cache import ArrayCache
from datamint_pipes.errors import CacheError, DatamintPipesError
from datamint_pipes.model import Resource
from datamint_pipes.sources.base import Source
from datamint_pipes.stages.cached import _decode_for_cache, decoded_cache_key
from datamint_pipes.stages.expand import slice_axis_index

__all__ = ["CacheBuildReport", "MirrorReport", "build_decoded_cache", "mirror_cache"]

log = logging.getLogger(__name__)

OnError = Literal["raise", "skip"]

# Where ArrayCache keeps an entry (checked against ArrayCache itself on every write, see _stage_entry).
_ARRAYS = "arrays"
_ENTRY_NAME = re.compile(r"^([0-9a-f]{64})\.(json|npy)$")
# fsspec back ends whose files exist only inside one process: Ray workers cannot write there for the caller.
_PROCESS_LOCAL_PROTOCOLS = frozenset({"memory"})
_COPY_CHUNK = 1 << 20  # per write call; larger writes into new files are slower on some VMs (cache._write_npy)


def _entry_relpaths(key: str) -> tuple[str, str]:
    """(metadata, array) paths of an entry relative to the cache root, in ArrayCache's layout."""
    return f"{_ARRAYS}/{key[:2]}/{key}.json", f"{_ARRAYS}/{key[:2]}/{key}.npy"


# -- reports -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CacheBuildReport:
    """What :func:`build_decoded_cache` did.

    ``keys`` maps every requested resource id to its cache key (resources with the same content share
    one); ``written`` and ``present`` are the keys this run wrote and the keys it found already valid;
    ``failed`` maps resource ids to ``"TYPE: message"``; ``bytes_written`` counts both files of every entry
    written.
    """

    target: str
    slice_axis: int
    keys: Mapping[str, str]
    written: tuple[str, ...]
    present: tuple[str, ...]
    failed: Mapping[str, str]
    bytes_written: int
    seconds: float


@dataclass(frozen=True)
class MirrorReport:
    """What :func:`mirror_cache` did: ``keys`` of every complete entry now in ``local_root``, files copied
    and files already there (same name and size), and the bytes copied."""

    source: str
    local_root: Path
    keys: tuple[str, ...]
    files_copied: int
    files_present: int
    bytes_copied: int


# -- targets: where the workers write ------------------------------------------------------------------------


@dataclass(frozen=True)
class _FolderTarget:
    """A folder every worker can reach (local disk on one machine, or shared storage): ArrayCache itself."""

    root: str

    def build(self, key: str, create: Callable[[], tuple[np.ndarray[Any, Any], dict[str, Any]]]) -> int | None:
        """Write the entry for ``key`` unless a valid one exists; the bytes written, or ``None`` if present."""
        cache = ArrayCache(self.root)
        if cache.get(key) is not None:  # (a damaged entry is removed by get() and rebuilt here)
            return None
        array, meta = create()
        entry = cache.put(key, array, meta)
        return entry.path.stat().st_size + entry.path.with_suffix(".json").stat().st_size


@dataclass(frozen=True)
class _FsspecTarget:
    """Any fsspec URL: each entry is staged by ArrayCache on the worker's disk, then uploaded file by file."""

    url: str

    def build(self, key: str, create: Callable[[], tuple[np.ndarray[Any, Any], dict[str, Any]]]) -> int | None:
        fs, root = fsspec.core.url_to_fs(self.url)
        meta_rel, array_rel = _entry_relpaths(key)
        meta_path, array_path = posixpath.join(root, meta_rel), posixpath.join(root, array_rel)
        if _remote_entry_is_valid(fs, meta_path, array_path):
            return None
        array, meta = create()
        with tempfile.TemporaryDirectory(prefix="datamint-pipes-ray-") as staging:
            _stage_entry(staging, key, array, meta)
            written = 0
            for relpath, remote in ((meta_rel, meta_path), (array_rel, array_path)):  # metadata first
                written += _upload_atomically(fs, os.path.join(staging, *relpath.split("/")), remote)
        return written


def _stage_entry(staging: str, key: str, array: np.ndarray[Any, Any], meta: dict[str, Any]) -> None:
    """Write the entry with ArrayCache itself, so the uploaded bytes are exactly the single-machine ones."""
    entry = ArrayCache(staging).put(key, array, meta)
    if entry.path.relative_to(staging).as_posix() != _entry_relpaths(key)[1]:
        raise CacheError(f"ArrayCache stored {key[:12]} at {entry.path}, not where this adapter mirrors it")


def _upload_atomically(fs: Any, local: str, remote: str) -> int:
    """Upload ``local`` to ``remote`` under a ``.tmp-`` name, check its size, then rename it into place."""
    folder, name = posixpath.split(remote)
    tmp = posixpath.join(folder, f".tmp-{uuid.uuid4().hex}-{name}")
    size = os.path.getsize(local)
    fs.makedirs(folder, exist_ok=True)
    try:
        fs.put_file(local, tmp)
        uploaded = fs.size(tmp)
        if uploaded != size:
            raise CacheError(f"uploaded {uploaded} bytes of {size} to {tmp}; not publishing {remote}")
        fs.mv(tmp, remote)
    except BaseException:
        with contextlib.suppress(Exception):
            fs.rm(tmp)
        raise
    return size


def _npy_layout(handle: Any) -> tuple[list[int], str, int]:
    """(shape, dtype string, byte offset of the data) from the header of a C-ordered ``.npy`` file."""
    version = np.lib.format.read_magic(handle)
    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    if version not in readers:
        raise ValueError(f"unsupported .npy format version {version}")
    shape, fortran_order, dtype = readers[version](handle)
    if fortran_order or dtype.hasobject:
        raise ValueError("not a C-ordered, pickle-free array")
    return list(shape), dtype.str, handle.tell()


def _remote_entry_is_valid(fs: Any, meta_path: str, array_path: str) -> bool:
    """Both files present, the metadata describing the array header, and the array file complete."""
    try:
        meta = json.loads(fs.cat_file(meta_path))
        with fs.open(array_path, "rb") as handle:
            shape, dtype, offset = _npy_layout(handle)
        size = fs.size(array_path)
    except (FileNotFoundError, ValueError, OSError):
        return False
    expected = offset + math.prod(shape) * np.dtype(dtype).itemsize
    return meta.get("shape") == shape and meta.get("dtype") == dtype and size == expected


def _resolve_target(target: str | os.PathLike[str]) -> _FolderTarget | _FsspecTarget:
    text = os.fspath(target)
    if "://" not in text:
        return _FolderTarget(os.path.abspath(text))
    fs, _ = fsspec.core.url_to_fs(text)
    protocols = {fs.protocol} if isinstance(fs.protocol, str) else set(fs.protocol)
    if protocols & _PROCESS_LOCAL_PROTOCOLS:
        raise ValueError(
            f"{text}: this file system lives inside one process and Ray workers are separate processes; "
            "build into a shared folder or a shared URL (s3://, gs://, ...), then mirror_cache() it locally"
        )
    return _FsspecTarget(text)


# -- the Ray stage -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _BuildEntries:
    """The ``map_batches`` function: one batch of catalogue rows -> one row of outcome per resource.

    Input columns: ``resource_id``, ``key`` (computed by the driver), ``resource`` (the catalogue entry as
    JSON). Output columns: ``resource_id``, ``key``, ``status`` (``written`` / ``present`` / ``failed``),
    ``nbytes``, ``error_type`` (qualified name), ``reason`` (``TYPE: message``) and ``error`` (the formatted
    traceback, notes included).
    """

    source: Source
    target: _FolderTarget | _FsspecTarget
    slice_axis: int

    def __call__(self, batch: dict[str, np.ndarray[Any, Any]]) -> dict[str, np.ndarray[Any, Any]]:
        rows = [
            (str(resource_id), str(key), *self._one(str(resource_id), str(key), str(text)))
            for resource_id, key, text in zip(batch["resource_id"], batch["key"], batch["resource"], strict=True)
        ]
        columns = ("resource_id", "key", "status", "nbytes", "error_type", "reason", "error")
        return {
            name: np.array([row[i] for row in rows], dtype=np.int64 if name == "nbytes" else str)
            for i, name in enumerate(columns)
        }

    def _one(self, resource_id: str, key: str, text: str) -> tuple[str, int, str, str, str]:
        try:
            resource = Resource.from_dict(json.loads(text))
            if decoded_cache_key(resource, self.slice_axis) != key:
                raise CacheError(f"resource {resource_id} did not survive the trip to the Ray worker (key changed)")
            written = self.target.build(key, lambda: _decode_for_cache(self.source, resource, self.slice_axis))
        except Exception as error:
            error.add_note(f"while building the decoded cache entry of resource {resource_id}")
            name = f"{type(error).__module__}.{type(error).__qualname__}"
            reason = f"{type(error).__name__}: {error}"
            return "failed", 0, name, reason, "".join(traceback.format_exception(error))
        return ("present", 0, "", "", "") if written is None else ("written", written, "", "", "")


def _reraise(error_type: str, resource_id: str, where: str, formatted: str) -> NoReturn:
    """Raise a worker's error with its original type when that type is loaded here and takes one message."""
    module, _, qualname = error_type.rpartition(".")
    found: Any = sys.modules.get(module)
    for part in qualname.split("."):
        found = getattr(found, part, None)
    message = f"Caught {qualname.rsplit('.', 1)[-1]} {where}.\nOriginal {formatted}"
    exc_type = found if isinstance(found, type) and issubclass(found, Exception) else RuntimeError
    try:
        error = exc_type(message)
    except Exception:
        error = RuntimeError(message)
    if isinstance(error, DatamintPipesError):
        error.resource_id = resource_id
    raise error


def _check_positive(name: str, value: int | None) -> None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
        raise ValueError(f"{name}={value!r} must be a positive integer")


def build_decoded_cache(
    source: Source,
    resources: Sequence[Resource] | None = None,
    *,
    target: str | os.PathLike[str],
    slice_axis: str | int = "axial",
    num_cpus: float | None = None,
    concurrency: int | None = None,
    batch_size: int = 4,
    on_error: OnError = "raise",
) -> CacheBuildReport:
    """Decode every resource (default: all of ``source``) on the current Ray cluster into the cache ``target``.

    ``target`` is a folder (local, or shared by the cluster's nodes) or an fsspec URL; the entries are
    those ``CachedDecode(source, ArrayCache(...), slice_axis)`` would create: the same keys, files and bytes.
    ``num_cpus`` is reserved per decode task (Ray's default: 1), ``concurrency`` caps the tasks running at
    once, and ``batch_size`` resources go to each task. Ray is started with its defaults if no
    ``ray.init()`` ran yet. ``source`` must pickle (Ray workers receive it). See the module docstring for
    ``on_error``.
    """
    axis = slice_axis_index(slice_axis)
    _check_positive("batch_size", batch_size)
    _check_positive("concurrency", concurrency)
    if num_cpus is not None and not num_cpus > 0:
        raise ValueError(f"{num_cpus=} must be None or a positive number")
    if on_error not in ("raise", "skip"):
        raise ValueError(f"{on_error=} must be 'raise' or 'skip'")
    try:
        pickle.dumps(source)
    except Exception as error:
        message = f"the source must pickle to reach Ray workers; {type(source).__name__} does not: {error}"
        raise TypeError(message) from error
    resolved = _resolve_target(target)
    started = time.perf_counter()
    resources = list(source.resources() if resources is None else resources)
    keys = {resource.id: decoded_cache_key(resource, axis) for resource in resources}
    rows, seen = [], set()
    for resource in resources:  # one row per key: resources with the same content share an entry
        if keys[resource.id] not in seen:
            seen.add(keys[resource.id])
            rows.append(
                {"resource_id": resource.id, "key": keys[resource.id], "resource": json.dumps(resource.to_dict())}
            )

    outcomes: dict[str, dict[str, Any]] = {}
    if rows:
        options: dict[str, Any] = {}
        if num_cpus is not None:
            options["num_cpus"] = num_cpus
        if concurrency is not None:
            strategy = getattr(ray.data, "TaskPoolStrategy", None)  # Ray >= 2.4x; older ones take concurrency=
            options.update({"compute": strategy(size=concurrency)} if strategy else {"concurrency": concurrency})
        dataset = ray.data.from_items(rows, override_num_blocks=math.ceil(len(rows) / batch_size)).map_batches(
            _BuildEntries(source, resolved, axis), batch_size=batch_size, batch_format="numpy", **options
        )
        outcomes = {str(row["resource_id"]): row for row in dataset.iter_rows()}

    failed = {row["resource_id"]: row for row in rows if outcomes[row["resource_id"]]["status"] == "failed"}
    report = CacheBuildReport(
        target=os.fspath(target),
        slice_axis=axis,
        keys=keys,
        written=tuple(row["key"] for row in rows if outcomes[row["resource_id"]]["status"] == "written"),
        present=tuple(row["key"] for row in rows if outcomes[row["resource_id"]]["status"] == "present"),
        failed={rid: str(outcomes[rid]["reason"]) for rid in failed},
        bytes_written=sum(int(outcome["nbytes"]) for outcome in outcomes.values()),
        seconds=time.perf_counter() - started,
    )
    log.info(
        "decoded cache %s: %d written, %d present, %d failed (%d bytes, %.1f s)",
        report.target,
        len(report.written),
        len(report.present),
        len(report.failed),
        report.bytes_written,
        report.seconds,
    )
    for resource_id, reason in report.failed.items():
        log.warning("decoded cache %s: resource %s failed: %s", report.target, resource_id, reason)
    if failed and on_error == "raise":
        first = outcomes[next(iter(failed))]
        where = (
            f"in a Ray worker building the decoded cache entry of resource {first['resource_id']} "
            f"({len(failed)} of {len(rows)} failed; every other entry was written)"
        )
        _reraise(str(first["error_type"]), str(first["resource_id"]), where, str(first["error"]))
    return report


# -- mirroring -----------------------------------------------------------------------------------------------


def mirror_cache(url: str | os.PathLike[str], local_root: str | os.PathLike[str]) -> MirrorReport:
    """Copy the decoded-array cache at ``url`` (any fsspec URL or folder) into the local ArrayCache folder
    ``local_root``, so that ``CachedDecode(source, ArrayCache(local_root), ...)`` serves it without decoding.

    Only complete entries (``<key>.json`` and ``<key>.npy``, named by a key under ``arrays/<key[:2]>/``) are
    copied, metadata first; temporary and foreign files are ignored. Each file is copied to a temporary
    name next to its destination, its size checked against the listing, then renamed into place; files
    already there with the same size are kept. Every mirrored entry is then read back through
    :class:`ArrayCache`: one that does not describe its array raises :class:`CacheError` and is not kept.
    """
    text = os.fspath(url)
    fs, root = fsspec.core.url_to_fs(text)
    if not fs.exists(root):
        raise CacheError(f"{text}: no decoded-array cache there")
    cache = ArrayCache(local_root)
    prefix = posixpath.join(root.rstrip("/"), _ARRAYS)
    listing: dict[str, Any] = fs.find(prefix, detail=True) if fs.exists(prefix) else {}
    sizes: dict[str, dict[str, int]] = {}
    for path, info in listing.items():
        folder, name = posixpath.split(path)
        match = _ENTRY_NAME.match(name)
        if match is None or posixpath.basename(folder) != match.group(1)[:2] or info.get("type") != "file":
            continue  # in-progress uploads (.tmp-*) and foreign files are never mirrored
        sizes.setdefault(match.group(1), {})[match.group(2)] = int(info["size"])
    keys = tuple(sorted(key for key, files in sizes.items() if set(files) == {"json", "npy"}))
    incomplete = sorted(set(sizes) - set(keys))
    if incomplete:
        log.warning("%s: skipping %d incomplete entries (e.g. %s)", text, len(incomplete), incomplete[0])

    copied = present = nbytes = 0
    for key in keys:
        for relpath in _entry_relpaths(key):  # metadata first, as ArrayCache writes them
            size = sizes[key][relpath.rsplit(".", 1)[1]]
            destination = cache.root.joinpath(*relpath.split("/"))
            if destination.exists() and destination.stat().st_size == size:
                present += 1
                continue
            _download_atomically(fs, posixpath.join(root, relpath), destination, size)
            copied += 1
            nbytes += size
        if cache.get(key) is None:  # (get() removes an entry whose metadata does not describe its array)
            raise CacheError(f"{text}: entry {key} is not a valid decoded-array cache entry; not mirrored")
    log.info("mirrored %s into %s: %d files copied, %d present", text, cache.root, copied, present)
    return MirrorReport(text, cache.root, keys, copied, present, nbytes)


def _download_atomically(fs: Any, remote: str, destination: Path, size: int) -> None:
    destination.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=destination.parent)
    try:
        with os.fdopen(fd, "wb") as out, fs.open(remote, "rb") as src:
            shutil.copyfileobj(src, out, _COPY_CHUNK)
            out.flush()
            copied = out.tell()
        if copied != size:
            raise CacheError(f"copied {copied} bytes of {remote}, expected {size}; not publishing {destination}")
        os.replace(tmp, destination)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
