"""A process worker's task outputs sent to the consumer without copying their arrays through the pipe.

Pickled the ordinary way, every array of a task's samples is copied into the result pipe, unpickled into
anonymous memory of the consumer and held there while it waits its turn; the worker also keeps the pickled
copy until its next result (CPython's queue feeder thread holds its last payload). For a W1 volume -- 100
slices and their labels -- that is ~100 MB per task, several tasks per worker. :func:`pack` (called by the
pipeline when a process worker's outputs are pickled) sends instead:

* **views of the decoded cache by reference.** A slice that is a view into a read-only memory map of an
  :class:`~datamint_pipes.cache.ArrayCache` entry travels as (entry path, file identity, byte offset,
  shape, dtype, strides) and is re-mapped by the consumer, which reads the same page-cache pages as the
  worker (shared, file-backed; nothing copied). Cache entries are immutable and named by a hash of their
  content. Only views of a read-only map of a published entry (a file ``<root>/arrays/<key[:2]>/<key>.npy``,
  ``key`` a lowercase hex digest) qualify; any other ``memmap`` is pickled by value, as before.
* **other arrays of ``SHARED_MIN_BYTES`` or more through one shared-memory block per task**, copied in once
  and handed over as a file descriptor by torch's own sharing (``torch.multiprocessing``, as
  ``DataLoader`` does for tensors), when ``/dev/shm`` has twice the block's size free. The consumer's arrays
  are writable views of that block (C- or Fortran-ordered like their originals, as pickling makes them); it
  is freed when the last is dropped.

Everything else (small arrays, other objects) is pickled as usual, and so is the whole task if packing
fails. The consumer gets the same values, types (``numpy.ndarray``; a re-mapped cache view is read-only, as
it was in the worker) and shapes.

A re-mapped cache view is a read-only ``numpy.ndarray`` (not a ``memmap``) with the view's shape, dtype
and strides. The consumer maps each entry file once (a small per-process LRU of open maps), so an entry
evicted after it was first mapped stays readable. An entry evicted (or replaced by a file of another size)
*before* the consumer could map it fails the task with :class:`~datamint_pipes.errors.CacheError` naming the
file, raised where the consumer reaches the task: give the cache a ``max_bytes`` that holds the entries in
flight. A worker that finds its entry already gone from the folder sends the values instead.
"""

from __future__ import annotations

import collections
import copyreg
import io
import logging
import mmap
import os
import pickle
import threading
from typing import Any

import numpy as np
import torch
from torch.multiprocessing.reductions import reduce_storage
from torchdata.nodes.exception_wrapper import ExceptionWrapper

from datamint_pipes.cache import is_array_entry_file
from datamint_pipes.errors import CacheError

__all__ = ["SHARED_MIN_BYTES", "is_cache_entry", "pack", "rebuild_view", "reduce_memmap", "reference", "unpack"]

log = logging.getLogger(__name__)
SHARED_MIN_BYTES = 64 * 1024
_ALIGN = 64

_OPEN_LIMIT = 64
# path -> ((st_dev, st_ino, st_size), whole-file uint8 view of a read-only map); receiving side only
_MAPS: collections.OrderedDict[str, tuple[tuple[int, int, int], np.ndarray[Any, Any]]] = collections.OrderedDict()
_MAPS_LOCK = threading.Lock()

Reference = tuple[str, int, int, int, int, tuple[int, ...], np.dtype[Any], tuple[int, ...]]


def is_cache_entry(filename: str | os.PathLike[str]) -> bool:
    """Whether ``filename`` is a published ``ArrayCache`` entry's file (see :func:`is_array_entry_file`)."""
    return is_array_entry_file(filename)


def _extent(shape: tuple[int, ...], strides: tuple[int, ...], itemsize: int) -> tuple[int, int]:
    """Bytes before and after (exclusive of) the first element that the view touches."""
    low = sum(stride * (size - 1) for size, stride in zip(shape, strides, strict=True) if stride < 0)
    high = sum(stride * (size - 1) for size, stride in zip(shape, strides, strict=True) if stride > 0)
    return low, high + itemsize


def reference(array: np.memmap[Any, Any]) -> Reference | None:
    """The reference :func:`rebuild_view` turns back into ``array``'s values, or ``None`` when ``array`` must
    be copied (not a read-only view of a published cache entry's map, empty, or its file already gone)."""
    if array.size == 0 or array.flags.writeable or getattr(array, "mode", None) != "r":
        return None
    filename = getattr(array, "filename", None)
    if filename is None or not is_cache_entry(filename):
        return None
    root: Any = array  # the array made directly on the mmap buffer: its data starts at file byte root.offset
    while isinstance(root, np.ndarray) and not isinstance(root.base, mmap.mmap):
        root = root.base
    if not isinstance(root, np.memmap) or not isinstance(root.offset, int):
        return None
    first = root.offset + (array.__array_interface__["data"][0] - root.__array_interface__["data"][0])
    low, high = _extent(array.shape, array.strides, array.dtype.itemsize)
    try:
        stat = os.stat(filename)
    except OSError:
        return None  # evicted already: this process still has the bytes mapped, so send them
    if first + low < root.offset or first + high > stat.st_size:
        return None
    return (
        str(filename),
        stat.st_dev,
        stat.st_ino,
        stat.st_size,
        first,
        tuple(array.shape),
        array.dtype,
        tuple(array.strides),
    )


def reduce_memmap(array: np.memmap[Any, Any]) -> tuple[Any, ...]:
    """``ForkingPickler`` reducer for ``numpy.memmap``: by reference when :func:`reference` allows, else by value."""
    found = reference(array)
    if found is None:
        reduced = array.__reduce_ex__(4)  # numpy's own pickling: a copy
        assert isinstance(reduced, tuple)
        return reduced
    return (rebuild_view, found)


def _whole_file(filename: str, identity: tuple[int, int, int]) -> np.ndarray[Any, Any]:
    """A read-only uint8 array over the whole entry file, mapped once per process (LRU of ``_OPEN_LIMIT``)."""
    with _MAPS_LOCK:
        memo = _MAPS.get(filename)
        if memo is not None and memo[0] == identity:
            _MAPS.move_to_end(filename)
            return memo[1]
    size = identity[2]
    try:
        fd = os.open(filename, os.O_RDONLY)
    except FileNotFoundError:
        raise CacheError(
            f"cache entry {filename} was evicted before this process could map the arrays a worker sent from it; "
            "give the ArrayCache a max_bytes that holds every entry in flight",
            filename=filename,
        ) from None
    try:
        stat = os.fstat(fd)
        if stat.st_size != size:
            raise CacheError(
                f"cache entry {filename} changed size ({size} -> {stat.st_size} bytes) between a worker and "
                "this process",
                filename=filename,
            )
        mapped = mmap.mmap(fd, size, access=mmap.ACCESS_READ)
    finally:
        os.close(fd)
    buffer = np.frombuffer(mapped, dtype=np.uint8)
    # A replacement file with another inode holds the same bytes (entries are content-keyed), so it serves too;
    # it is remembered under its own identity.
    with _MAPS_LOCK:
        _MAPS[filename] = ((stat.st_dev, stat.st_ino, stat.st_size), buffer)
        _MAPS.move_to_end(filename)
        while len(_MAPS) > _OPEN_LIMIT:
            _MAPS.popitem(last=False)
    return buffer


def rebuild_view(
    filename: str,
    st_dev: int,
    st_ino: int,
    st_size: int,
    first: int,
    shape: tuple[int, ...],
    dtype: np.dtype[Any],
    strides: tuple[int, ...],
) -> np.ndarray[Any, Any]:
    """The receiving side of :func:`reduce_memmap`: a read-only view of the entry file's bytes starting at
    byte ``first`` with ``shape`` / ``dtype`` / ``strides``. Raises ``CacheError`` if the entry is gone."""
    buffer = _whole_file(filename, (st_dev, st_ino, st_size))
    return np.ndarray(shape, dtype=dtype, buffer=buffer, offset=first, strides=strides)


Layout = tuple[int, tuple[int, ...], np.dtype[Any], str]  # offset in the block, shape, dtype, order


class _Packer(pickle.Pickler):
    """Pickles cache views by reference and sets the arrays for the shared block aside (persistent ids)."""

    def __init__(self, file: io.BytesIO) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.dispatch_table = {**copyreg.dispatch_table, np.memmap: reduce_memmap}
        self.large: list[np.ndarray[Any, Any]] = []
        self._ids: dict[int, int] = {}

    def persistent_id(self, obj: Any) -> int | None:
        if type(obj) is not np.ndarray or obj.nbytes < SHARED_MIN_BYTES or obj.dtype.hasobject:
            return None
        found = self._ids.get(id(obj))
        if found is None:
            found = self._ids[id(obj)] = len(self.large)
            self.large.append(obj)
        return found


def pack(obj: Any) -> tuple[Any, ...]:
    """``__reduce__`` value for ``obj`` (a task's outputs) leaving a process worker: see the module docstring.
    ``obj`` comes back from :func:`unpack` in the consumer."""
    try:
        buffer = io.BytesIO()
        packer = _Packer(buffer)
        packer.dump(obj)
        layouts: list[Layout] = []
        end = 0
        for array in packer.large:
            order = "F" if array.flags.f_contiguous and not array.flags.c_contiguous else "C"
            layouts.append((end, array.shape, array.dtype, order))
            end += -(-array.nbytes // _ALIGN) * _ALIGN
        shared: tuple[Any, ...] | None = None
        if packer.large:
            if not _shm_has_room(end):
                raise MemoryError(f"{_SHM_DIR} has no room for {end} bytes")
            storage = torch.UntypedStorage._new_shared(end)
            flat = _as_bytes(storage)
            for array, layout in zip(packer.large, layouts, strict=True):
                np.copyto(_place(flat, layout), array)
            # torch's own hand-over (a file descriptor, as for DataLoader tensors), rebuilt inside unpack() so
            # that a failure there reaches the consumer as the task's error.
            shared = reduce_storage(storage)
        return (unpack, (buffer.getvalue(), shared, layouts))
    except Exception as error:  # (e.g. no room in /dev/shm): the plain way still works
        log.warning("sending a task's outputs by value: %s: %s", type(error).__name__, error)
        return (_identity, (obj,))


def _identity(obj: Any) -> Any:
    return obj


_SHM_DIR = "/dev/shm"


def _shm_has_room(size: int) -> bool:
    """Whether the shared-memory filesystem has twice ``size`` free: writing into a full one is a SIGBUS, not an
    exception (a container's default 64 MB ``/dev/shm``), so a task that may not fit goes by value."""
    try:
        stat = os.statvfs(_SHM_DIR)
    except OSError:
        return True  # no /dev/shm to check (torch then shares another way)
    return stat.f_bavail * stat.f_frsize >= 2 * size


def _as_bytes(storage: torch.UntypedStorage) -> np.ndarray[Any, Any]:
    """A writable uint8 array over ``storage`` (keeps it alive)."""
    return torch.empty(0, dtype=torch.uint8).set_(storage).numpy()


def _place(flat: np.ndarray[Any, Any], layout: Layout) -> np.ndarray[Any, Any]:
    offset, shape, dtype, order = layout
    size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    return flat[offset : offset + size].view(dtype).reshape(shape, order=order)  # type: ignore[call-overload]


def unpack(payload: bytes, shared: tuple[Any, ...] | None, layouts: list[Layout]) -> Any:
    """The consumer side of :func:`pack`. A failure (a cache entry evicted before it could be mapped) comes
    back as an ``ExceptionWrapper``, which the mapper re-raises where the consumer reaches this task."""
    try:
        flat = np.empty(0, np.uint8)
        if shared is not None:
            rebuild, args = shared
            flat = _as_bytes(rebuild(*args))
        arrays = [_place(flat, layout) for layout in layouts]
        unpickler = pickle.Unpickler(io.BytesIO(payload))
        unpickler.persistent_load = arrays.__getitem__  # type: ignore[method-assign]
        return unpickler.load()
    except Exception:
        return ExceptionWrapper(where="in the consumer, receiving a process worker's outputs")
