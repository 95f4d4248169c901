"""Machine-wide caches shared by every worker thread and process: decoded arrays and fetched bytes.

Both live in a folder and keep the same guarantees:

* **Atomic entries.** An entry is written to a temporary file in its final folder and published with
  ``os.replace``; a reader sees a complete entry or none. A writer killed mid-write leaves only a temporary
  file, which is never served and is swept later.
* **Concurrent writers.** :meth:`ArrayCache.get_or_create` and :meth:`ByteCache.get_or_fetch` take an
  exclusive ``flock`` on a per-key lock file, so one process computes or downloads while the others wait
  and then read. Without working locks (some network filesystems) the worst case is duplicate work: the
  last complete replace wins and every reader still sees an intact entry.
* **Bounded size.** ``max_bytes`` bounds the folder; the least recently used entries (by modification time,
  refreshed on every hit) are evicted after each write. Unlinking an entry that a reader has memory-mapped
  is safe on POSIX: the reader keeps its mapping.
* **No pickle.** Arrays are ``.npy`` files read with ``allow_pickle=False`` (or chunk files with a JSON
  header); metadata is JSON. File names are hashes of the key, never names taken from a server or a catalogue.

:class:`ArrayCache` stores decoded volumes uncompressed by default and memory-maps them, so reading one slice
costs one contiguous read when the slicing axis is stored first (see :func:`to_slice_major`).

``compression="lz4"`` trades read speed for disk: each slice along the first axis is byte-shuffled and
LZ4-compressed on its own (a :class:`ChunkedArray`), so one slice still costs one small read plus a
decompression. On CT-like int16 volumes with realistic noise this stores 1.9x less than ``.npy`` (about the
size of the ``.nii.gz`` it came from) and a random 512x512 slice costs about 0.25 ms instead of 0.05 ms. An
``ArrayCache`` reads entries of both formats whatever it writes.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import hashlib
import itertools
import json
import logging
import mmap
import os
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

import lz4.block
import numpy as np

from datamint_pipes.errors import CacheError

__all__ = [
    "ArrayCache",
    "ByteCache",
    "CachedArray",
    "ChunkedArray",
    "Compression",
    "cache_key",
    "default_cache_dir",
    "from_slice_major",
    "is_array_entry_file",
    "to_slice_major",
]

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
# numpy parses .npy headers with ast.literal_eval, which CPython 3.11 before 3.11.8 can break when threads
# call it at once ("SystemError: AST constructor recursion depth mismatch", python/cpython#106905). Opening
# a memory map is short (a header parse and an mmap), so threads take turns for that part only.
_NPY_OPEN_LOCK = threading.Lock()
_STALE_TEMP_SECONDS = 3600.0
_WRITE_BYTES = 1 << 20  # per write call: see _write_npy

Compression = Literal["none", "lz4"]
COMPRESSIONS: tuple[Compression, ...] = ("none", "lz4")
_CHUNKS_MAGIC = b"DMPCHNK1"
_CHUNKS_SUFFIX = ".chunks"
_LZ4_MAX_CHUNK = 0x7E000000  # LZ4_MAX_INPUT_SIZE: a larger slice is stored uncompressed (.npy)


def default_cache_dir() -> Path:
    """``$DATAMINT_PIPES_CACHE``, else ``$XDG_CACHE_HOME/datamint-pipes``, else ``~/.cache/datamint-pipes``."""
    env = os.environ.get("DATAMINT_PIPES_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(base) / "datamint-pipes"


def cache_key(*parts: Any) -> str:
    """A stable hex key from JSON-serialisable parts (content hash, decoder version, layout, ...)."""
    text = json.dumps([CACHE_FORMAT, *parts], sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def is_array_entry_file(filename: str | os.PathLike[str]) -> bool:
    """Whether ``filename`` is named like a published uncompressed :class:`ArrayCache` entry,
    ``<root>/arrays/<key[:2]>/<key>.npy`` with ``key`` a lowercase hex digest (temporary files never are)."""
    path = Path(filename)
    key = path.name[: -len(".npy")] if path.name.endswith(".npy") else ""
    return (
        len(key) >= 8
        and all(c in "0123456789abcdef" for c in key)
        and path.parent.name == key[:2]
        and path.parent.parent.name == "arrays"
    )


def to_slice_major(array: np.ndarray[Any, Any], axis: int) -> np.ndarray[Any, Any]:
    """(C,N,H,W) -> the slicing axis first: axis 0 (N) -> (N,C,H,W), 1 (H) -> (H,C,N,W), 2 (W) -> (W,C,N,H)."""
    return np.moveaxis(array, axis + 1, 0)


def from_slice_major(array: np.ndarray[Any, Any], axis: int) -> np.ndarray[Any, Any]:
    """Inverse of :func:`to_slice_major` (a view, no copy)."""
    return np.moveaxis(array, 0, axis + 1)


class _Store:
    """Files named by key under ``root/<kind>/<key[:2]>/``, with locks, LRU eviction and temp sweeping."""

    def __init__(self, root: str | os.PathLike[str], kind: str, max_bytes: int | None) -> None:
        if max_bytes is not None and max_bytes <= 0:
            raise ValueError(f"{max_bytes=} must be None or a positive number of bytes")
        self.root = Path(root)
        self.kind = kind
        self.max_bytes = max_bytes
        (self.root / kind).mkdir(parents=True, exist_ok=True)
        (self.root / "locks").mkdir(parents=True, exist_ok=True)

    def _check_key(self, key: str) -> str:
        if len(key) < 8 or any(c not in "0123456789abcdef" for c in key):
            raise CacheError(f"cache key {key!r} is not a lowercase hex digest")
        return key

    def path(self, key: str, suffix: str) -> Path:
        key = self._check_key(key)
        return self.root / self.kind / key[:2] / f"{key}{suffix}"

    @contextlib.contextmanager
    def lock(self, key: str) -> Iterator[None]:
        """Exclusive lock for one key across threads and processes of this machine."""
        path = self.root / "locks" / f"{self._check_key(key)}.lock"
        with open(path, "a+b") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    @contextlib.contextmanager
    def writing(self, target: Path) -> Iterator[IO[bytes]]:
        """A temporary file next to ``target``, published by ``os.replace`` only if the block completes."""
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                yield handle
                handle.flush()
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def touch(self, path: Path) -> None:
        with contextlib.suppress(OSError):
            os.utime(path)

    def entries(self) -> list[tuple[float, int, Path]]:
        """(mtime, size, path) of every published entry file."""
        found = []
        for path in (self.root / self.kind).glob("*/*"):
            if path.name.startswith(".tmp-"):
                continue
            with contextlib.suppress(FileNotFoundError):
                stat = path.stat()
                found.append((stat.st_mtime, stat.st_size, path))
        return found

    def total_bytes(self) -> int:
        return sum(size for _, size, _ in self.entries())

    def evict(self, keep: Iterable[Path] = ()) -> None:
        """Remove least recently used entries until the folder fits ``max_bytes``; sweep stale temp files."""
        now = time.time()
        for tmp in (self.root / self.kind).glob("*/.tmp-*"):
            with contextlib.suppress(OSError):
                if now - tmp.stat().st_mtime > _STALE_TEMP_SECONDS:
                    tmp.unlink()
        if self.max_bytes is None:
            return
        protected = {Path(p).name.split(".", 1)[0] for p in keep}
        groups: dict[str, list[tuple[float, int, Path]]] = {}
        for entry in self.entries():
            groups.setdefault(entry[2].name.split(".", 1)[0], []).append(entry)
        total = sum(size for members in groups.values() for _, size, _ in members)
        # Least recently used first; a key's files (array + metadata) go together.
        for stem, members in sorted(groups.items(), key=lambda item: max(m[0] for m in item[1])):
            if total <= self.max_bytes:
                break
            if stem in protected:
                continue
            for _, size, path in members:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    total -= size
                    log.debug("cache evicted %s (%d bytes)", path, size)


class ChunkedArray:
    """A read-only array stored as independently compressed slices along its first axis.

    ``array[k]`` (an int) decompresses slice ``k`` only and returns a new C-contiguous ndarray of shape
    ``shape[1:]``; ``np.asarray(array)`` decompresses everything into one new ndarray of ``shape``. Any other
    index decompresses everything first. The compressed bytes stay memory-mapped, shared by every process.
    """

    def __init__(self, path: Path, shape: tuple[int, ...], dtype: np.dtype[Any], offsets: list[int], data: Any):
        self.path = path
        self.shape = shape
        self.dtype = dtype
        self._offsets = offsets
        self._data = data  # memoryview of the chunk bytes

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"ChunkedArray(shape={self.shape}, dtype={self.dtype}, path={str(self.path)!r})"

    def _decompress_into(self, k: int, out: np.ndarray[Any, Any]) -> None:
        expected = out.nbytes
        try:
            raw = lz4.block.decompress(self._data[self._offsets[k] : self._offsets[k + 1]], uncompressed_size=expected)
        except lz4.block.LZ4BlockError as error:
            raise CacheError(f"damaged cache entry {self.path}: slice {k}: {error}") from error
        if len(raw) != expected:
            raise CacheError(f"damaged cache entry {self.path}: slice {k} has {len(raw)} bytes, expected {expected}")
        _unshuffle(np.frombuffer(raw, np.uint8), out, self.dtype.itemsize)

    def chunk(self, k: int) -> np.ndarray[Any, Any]:
        """Slice ``k`` along the first axis, decompressed: shape ``shape[1:]``, a new writeable array."""
        count = self.shape[0]
        if not -count <= k < count:
            raise IndexError(f"index {k} is out of bounds for axis 0 with size {count}")
        out = np.empty(self.shape[1:], dtype=self.dtype)
        self._decompress_into(k % count, out)
        return out

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, (int, np.integer)) and not isinstance(index, bool):
            return self.chunk(int(index))
        if isinstance(index, tuple) and index and isinstance(index[0], (int, np.integer)):
            return self.chunk(int(index[0]))[index[1:]]
        return np.asarray(self)[index]

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray[Any, Any]:
        out = np.empty(self.shape, dtype=self.dtype)
        for k in range(self.shape[0]):
            self._decompress_into(k, out[k : k + 1])  # a view even when out[k] would be a scalar
        return out if dtype is None else out.astype(dtype, copy=False)


def _shuffle(flat: np.ndarray[Any, Any], itemsize: int) -> np.ndarray[Any, Any]:
    """Bytes of ``flat`` (uint8, a whole number of elements) as byte planes: plane b holds byte b of each element."""
    if itemsize == 1:
        return flat
    planes = np.empty((itemsize, flat.size // itemsize), np.uint8)
    for b in range(itemsize):
        planes[b] = flat[b::itemsize]
    return planes


def _unshuffle(planes: np.ndarray[Any, Any], out: np.ndarray[Any, Any], itemsize: int) -> None:
    """Inverse of :func:`_shuffle` into the memory of ``out`` (C-contiguous).

    Byte planes are combined as little-endian words (``b0 | b1 << 8 | ...``) written through a ``<uN`` view, which
    is byte-exact on any host and an order of magnitude faster than a strided transpose (0.05 vs 0.9 ms for
    512x512 int16 here)."""
    memory = out.reshape(-1).view(np.uint8)
    if itemsize == 1:
        memory[:] = planes
        return
    planes = planes.reshape(itemsize, -1)
    if itemsize in (2, 4, 8):
        word = np.dtype(f"<u{itemsize}")
        target = memory.view(word)
        np.copyto(target, planes[0], casting="unsafe")
        for b in range(1, itemsize):
            target |= np.left_shift(planes[b], 8 * b, dtype=word)
        return
    for b in range(itemsize):
        memory[b::itemsize] = planes[b]


def _write_npy(handle: IO[bytes], array: np.ndarray[Any, Any]) -> None:
    """``array`` as a C-ordered ``.npy``, written at most ``_WRITE_BYTES`` per ``write`` call.

    A non-contiguous array (a slice-major view of a decoded volume) is written slice by slice through one small
    reused buffer: a contiguous copy of the whole would first fault in as much fresh memory, which costs more than
    the copy itself (0.4 s for 188 MB of video on this machine).

    Why 1 MiB a call: on the VM the benchmarks run on, writing 47 MB into a new file takes 10-14 ms in writes of
    64 KiB to 1 MiB, and 105-175 ms in writes of 4 MiB or more (one ``tofile`` call included) once recently freed
    pages run out: larger writes take larger page-cache folios, which this VM backs slowly (its free memory is
    reported to the host). Elsewhere 1 MiB calls cost the same as one large call."""
    header = {"descr": np.lib.format.dtype_to_descr(array.dtype), "fortran_order": False, "shape": array.shape}
    np.lib.format.write_array_header_1_0(handle, header)
    if array.flags.c_contiguous or array.ndim == 0 or array.shape[0] == 0:
        _write_bytes(handle, np.ascontiguousarray(array))
        return
    buffer = np.empty(array.shape[1:], dtype=array.dtype)
    for plane in range(array.shape[0]):
        block = array[plane]
        if block.ndim >= 2 and all(part.flags.c_contiguous for part in block):
            for part in block:  # e.g. the colour planes of one video frame: written as they are
                _write_bytes(handle, part)
        else:
            np.copyto(buffer, block)
            _write_bytes(handle, buffer)


def _write_bytes(handle: IO[bytes], array: np.ndarray[Any, Any]) -> None:
    """The bytes of the C-contiguous ``array``, ``_WRITE_BYTES`` at most per call."""
    memory = array.reshape(-1).view(np.uint8)
    for start in range(0, memory.size, _WRITE_BYTES):
        handle.write(memory[start : start + _WRITE_BYTES].data)


def _write_chunks(handle: IO[bytes], array: np.ndarray[Any, Any]) -> None:
    """``array`` (ndim >= 1, any strides) as a chunk file: magic, header length, JSON header, chunks."""
    itemsize = array.dtype.itemsize
    chunks = []
    for k in range(array.shape[0]):
        flat = np.ascontiguousarray(array[k : k + 1]).reshape(-1).view(np.uint8)  # array[k] may be a native scalar
        chunks.append(lz4.block.compress(_shuffle(flat, itemsize), store_size=False))  # byte planes compress better
    offsets = [0]
    for chunk in chunks:
        offsets.append(offsets[-1] + len(chunk))
    header = json.dumps(
        {"codec": "lz4-shuffle", "shape": list(array.shape), "dtype": array.dtype.str, "offsets": offsets}
    ).encode()
    handle.write(_CHUNKS_MAGIC + struct.pack("<Q", len(header)) + header)
    for chunk in chunks:
        handle.write(chunk)


def _open_chunks(path: Path) -> ChunkedArray:
    """Map a chunk file; ``ValueError`` when it is not one, or its header does not describe its bytes."""
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        if size < len(_CHUNKS_MAGIC) + 8:
            raise ValueError("too short for a chunk file")
        mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    view = memoryview(mapped)
    if bytes(view[: len(_CHUNKS_MAGIC)]) != _CHUNKS_MAGIC:
        raise ValueError("not a chunk file (bad magic)")
    (length,) = struct.unpack("<Q", view[len(_CHUNKS_MAGIC) : len(_CHUNKS_MAGIC) + 8])
    start = len(_CHUNKS_MAGIC) + 8 + length
    if start > size:
        raise ValueError("header runs past the end of the file")
    header = json.loads(bytes(view[len(_CHUNKS_MAGIC) + 8 : start]))
    shape = tuple(int(n) for n in header["shape"])
    dtype = np.dtype(header["dtype"])
    offsets = [int(n) for n in header["offsets"]]
    if header.get("codec") != "lz4-shuffle" or dtype.hasobject or not shape:
        raise ValueError(f"unsupported chunk file header {header.get('codec')!r} {dtype} {shape}")
    if len(offsets) != shape[0] + 1 or offsets[0] != 0 or offsets[-1] != size - start:
        raise ValueError("chunk offsets do not match the file size")
    if any(b < a for a, b in itertools.pairwise(offsets)):
        raise ValueError("chunk offsets are not increasing")
    return ChunkedArray(path, shape, dtype, offsets, view[start:])


@dataclass(frozen=True)
class CachedArray:
    """A cache hit: the read-only ``array`` and the JSON ``meta`` stored with it.

    ``array`` is a memory-mapped ``np.ndarray`` for an uncompressed entry, a :class:`ChunkedArray` for an
    ``lz4`` one; :meth:`whole` and :meth:`slice` work for both.
    """

    array: np.ndarray[Any, Any] | ChunkedArray
    meta: dict[str, Any]
    path: Path

    def whole(self) -> np.ndarray[Any, Any]:
        """The whole array: the memory map itself (no copy), or everything decompressed (a new array)."""
        return self.array if isinstance(self.array, np.ndarray) else np.asarray(self.array)

    def slice(self, k: int) -> np.ndarray[Any, Any]:
        """``array[k]``: a view of the memory map, or slice ``k`` alone decompressed."""
        return self.array[k] if isinstance(self.array, np.ndarray) else self.array.chunk(k)


class ArrayCache:
    """Decoded arrays as ``.npy`` files memory-mapped on read, or LZ4-compressed slices (see the module
    docstring)."""

    # Entries this process has open, so a hit costs a stat, not a header parse and a new map. A memo entry is
    # used only while the file is the same one (inode and size); eviction or replacement shows as a change.
    _OPEN_LIMIT = 256
    _TOUCH_EVERY = 30.0

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        *,
        max_bytes: int | None = None,
        compression: Compression | None = None,
    ) -> None:
        """``root`` defaults to :func:`default_cache_dir`; ``max_bytes`` bounds the folder (LRU eviction);
        ``compression`` chooses the format of new entries: ``"none"`` (``.npy``, memory-mapped) or ``"lz4"``
        (see the module docstring); ``None`` takes ``$DATAMINT_PIPES_CACHE_COMPRESSION``, else ``"none"``."""
        if compression is None:
            compression = os.environ.get("DATAMINT_PIPES_CACHE_COMPRESSION") or "none"  # type: ignore[assignment]
        if compression not in COMPRESSIONS:
            raise ValueError(f"{compression=} must be one of {COMPRESSIONS} (or $DATAMINT_PIPES_CACHE_COMPRESSION)")
        self.compression: Compression = compression
        self._store = _Store(root if root is not None else default_cache_dir(), "arrays", max_bytes)
        self._open: collections.OrderedDict[str, tuple[int, int, float, CachedArray]] = collections.OrderedDict()
        self._open_lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        return {"_store": self._store, "compression": self.compression}  # open maps stay in their process

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._store = state["_store"]
        self.compression = state.get("compression", "none")
        self._open = collections.OrderedDict()
        self._open_lock = threading.Lock()

    @property
    def root(self) -> Path:
        return self._store.root

    def _stat(self, key: str) -> tuple[Path, os.stat_result] | None:
        """The published data file of ``key`` (either format) and its stat, or ``None``."""
        for suffix in (".npy", _CHUNKS_SUFFIX):
            path = self._store.path(key, suffix)
            try:
                return path, os.stat(path)
            except FileNotFoundError:
                continue
        return None

    def get(self, key: str) -> CachedArray | None:
        """The entry for ``key``, or ``None``. A damaged entry is removed and reported as a miss."""
        found = self._stat(key)
        if found is None:
            self._forget(key)
            return None
        array_path, stat = found
        with self._open_lock:
            memo = self._open.get(key)
            if memo is not None and memo[:2] == (stat.st_ino, stat.st_size):
                self._open.move_to_end(key)
                if time.monotonic() - memo[2] > self._TOUCH_EVERY:
                    self._store.touch(array_path)
                    self._open[key] = (memo[0], memo[1], time.monotonic(), memo[3])
                return memo[3]
        entry = self._load(key, array_path)
        if entry is not None:
            with self._open_lock:
                self._open[key] = (stat.st_ino, stat.st_size, time.monotonic(), entry)
                while len(self._open) > self._OPEN_LIMIT:
                    self._open.popitem(last=False)
        return entry

    def _forget(self, key: str) -> None:
        with self._open_lock:
            self._open.pop(key, None)

    def _load(self, key: str, array_path: Path) -> CachedArray | None:
        meta_path = self._store.path(key, ".json")
        array: np.ndarray[Any, Any] | ChunkedArray
        try:
            if array_path.suffix == _CHUNKS_SUFFIX:
                array = _open_chunks(array_path)
            else:
                with _NPY_OPEN_LOCK:
                    array = np.load(array_path, mmap_mode="r", allow_pickle=False)
            meta = json.loads(meta_path.read_text())
        except FileNotFoundError:
            return None
        except (ValueError, OSError, KeyError, TypeError, json.JSONDecodeError) as error:
            log.warning("discarding damaged cache entry %s: %s", array_path, error)
            for path in (array_path, meta_path):
                with contextlib.suppress(OSError):
                    path.unlink()
            return None
        if meta.get("shape") != list(array.shape) or meta.get("dtype") != array.dtype.str:
            log.warning("discarding cache entry %s: metadata does not describe the array", array_path)
            return None
        self._store.touch(array_path)
        return CachedArray(array=array, meta=meta, path=array_path)

    def put(
        self,
        key: str,
        array: np.ndarray[Any, Any],
        meta: dict[str, Any] | None = None,
        *,
        compression: Compression | None = None,
    ) -> CachedArray:
        """Store ``array`` (any non-object dtype) with JSON ``meta``; returns the entry. ``compression``
        overrides the cache's format for this entry (e.g. ``"lz4"`` for masks, which are mostly zeros)."""
        if array.dtype.hasobject:
            raise CacheError(f"cannot cache an array of dtype {array.dtype}: object arrays would need pickle")
        if compression is not None and compression not in COMPRESSIONS:
            raise ValueError(f"{compression=} must be None or one of {COMPRESSIONS}")
        chunked = (
            (compression or self.compression) == "lz4"
            and array.ndim >= 1
            and array.shape[0] > 0
            and array.nbytes // array.shape[0] <= _LZ4_MAX_CHUNK
        )
        array_path = self._store.path(key, _CHUNKS_SUFFIX if chunked else ".npy")
        meta_path = self._store.path(key, ".json")
        record = {**(meta or {}), "shape": list(array.shape), "dtype": array.dtype.str}
        try:
            # Metadata first: a published data file always has its .json beside it (the same for both formats).
            with self._store.writing(meta_path) as handle:
                handle.write(json.dumps(record, default=_json_default).encode())
            with self._store.writing(array_path) as handle:
                if chunked:
                    _write_chunks(handle, array)
                else:
                    _write_npy(handle, array)
        except OSError as error:
            raise CacheError(f"cannot write cache entry {array_path}: {error}") from error
        self._store.evict(keep=(array_path, meta_path))
        entry = self.get(key)
        if entry is None:
            raise CacheError(f"cache entry {array_path} vanished right after writing (max_bytes too small?)")
        return entry

    def get_or_create(
        self,
        key: str,
        create: Callable[[], tuple[np.ndarray[Any, Any], dict[str, Any]]],
        *,
        compression: Compression | None = None,
    ) -> CachedArray:
        """The entry for ``key``; on a miss ``create()`` runs once across all processes of the machine and its
        result is stored as :meth:`put` stores it (``compression`` overrides the cache's format)."""
        hit = self.get(key)
        if hit is not None:
            return hit
        with self._store.lock(key):
            hit = self.get(key)
            if hit is not None:
                return hit
            array, meta = create()
            return self.put(key, array, meta, compression=compression)

    def total_bytes(self) -> int:
        return self._store.total_bytes()


class ByteCache:
    """Fetched file bytes, one file per key (see the module docstring)."""

    def __init__(self, root: str | os.PathLike[str] | None = None, *, max_bytes: int | None = None) -> None:
        self._store = _Store(root if root is not None else default_cache_dir(), "bytes", max_bytes)

    @property
    def root(self) -> Path:
        return self._store.root

    def get(self, key: str) -> Path | None:
        path = self._store.path(key, ".bin")
        if not path.exists():
            return None
        self._store.touch(path)
        return path

    def put(self, key: str, chunks: Iterable[bytes], *, expected_size: int | None = None) -> Path:
        """Write ``chunks``; with ``expected_size`` a short or long body raises and publishes nothing."""
        path = self._store.path(key, ".bin")
        written = 0
        with self._store.writing(path) as handle:
            for chunk in chunks:
                handle.write(chunk)
                written += len(chunk)
            if expected_size is not None and written != expected_size:
                raise CacheError(f"received {written} bytes for cache entry {key[:12]}, expected {expected_size}")
        self._store.evict(keep=(path,))
        return path

    def get_or_fetch(self, key: str, fetch: Callable[[], Iterable[bytes]], *, expected_size: int | None = None) -> Path:
        """The cached file for ``key``; on a miss ``fetch()`` runs once across the machine's processes."""
        hit = self.get(key)
        if hit is not None:
            return hit
        with self._store.lock(key):
            hit = self.get(key)
            if hit is not None:
                return hit
            return self.put(key, fetch(), expected_size=expected_size)

    def total_bytes(self) -> int:
        return self._store.total_bytes()


def _json_default(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
