"""Recycled large arrays: memory that is already mapped, for arrays that are made, used and dropped over and over
(a cine or a video decoded, written to the cache, then freed; a collated batch, dropped after its training step).

A fresh large array costs its page faults: the kernel zeroes and maps every page on first write. On the 2-core VM the
benchmarks run on, that is 10-25 ms for a 110 MB cine (up to a third of its decode), and more while another thread
faults into the same huge page. :func:`empty` hands out arrays whose memory comes back to a small per-process pool
once the last array or view using it is freed, so the next array of about the same size is written into pages that
are already there. To the caller it is an ordinary ``np.ndarray``: the pool takes memory back only when nothing can
reach it any more, just as ``free`` would.

How a block knows it is free: the array handed out views an *owner* array made by ``np.frombuffer`` over a memoryview
of the block. numpy sets a view's ``base`` to the first array up the chain whose own base is not an array of the same
type, which is that owner, so every array and view derived from the output keeps the owner alive, and a
``weakref.finalize`` on the owner returns the block.

Bounds: at most ``_POOL_BYTES`` stay idle in a process; blocks idle for longer than ``_IDLE_SECONDS`` are freed at the
next call; arrays under ``_MIN_BYTES`` are plain ``np.empty``. A forked child starts with an empty pool.
"""

from __future__ import annotations

import math
import os
import threading
import time
import weakref
from typing import Any

import numpy as np

__all__ = ["empty", "idle_bytes"]

_MIN_BYTES = 4 << 20
_POOL_BYTES = 256 << 20
_IDLE_SECONDS = 5.0
_LARGEST_WASTE = 1.25  # a block at most this many times the output's size may serve it


_idle: list[tuple[float, np.ndarray[Any, Any]]] = []  # (when it was given back, the block), oldest first
_lock = threading.RLock()  # reentrant: a collection inside the lock may run a finalizer that gives a block back


def empty(shape: tuple[int, ...], dtype: Any = np.uint8) -> np.ndarray[Any, Any]:
    """An uninitialised C-contiguous array of ``shape`` and ``dtype``, like ``np.empty``, whose memory may be a
    recycled block (then its pages are already mapped) and goes back to the pool when nothing refers to it."""
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes < _MIN_BYTES:
        return np.empty(shape, dtype=dtype)
    block = _take(nbytes)
    owner = np.frombuffer(block.data[:nbytes], dtype=np.uint8)  # its base is a memoryview: views stop here
    finalizer = weakref.finalize(owner, _give_back, block, os.getpid())
    finalizer.atexit = False
    return owner.view(dtype).reshape(shape)


def idle_bytes() -> int:
    """Bytes held idle in this process's pool."""
    with _lock:
        return sum(block.nbytes for _, block in _idle)


def _take(nbytes: int) -> np.ndarray[Any, Any]:
    with _lock:
        _expire(time.monotonic())
        best: tuple[float, np.ndarray[Any, Any]] | None = None
        for entry in list(_idle):
            size = entry[1].nbytes
            if nbytes <= size <= nbytes * _LARGEST_WASTE and (best is None or size < best[1].nbytes):
                best = entry
        for position, entry in enumerate(_idle):
            if entry is best:  # still there (a finalizer run meanwhile may have expired it)
                del _idle[position]
                return entry[1]
    return np.empty(nbytes, dtype=np.uint8)


def _give_back(block: np.ndarray[Any, Any], pid: int) -> None:
    if pid != os.getpid():
        return  # a block of the parent's, freed in a forked child: the child's copy is not worth keeping
    with _lock:
        now = time.monotonic()
        _idle.append((now, block))
        _expire(now)
        while sum(idle.nbytes for _, idle in _idle) > _POOL_BYTES:
            _idle.pop(0)


def _expire(now: float) -> None:
    while _idle and now - _idle[0][0] > _IDLE_SECONDS:
        _idle.pop(0)


def _reset_after_fork() -> None:
    global _lock
    _lock = threading.RLock()  # a parent thread may have held it at the fork
    _idle.clear()  # copies of the parent's idle blocks: freed rather than shared copy-on-write


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)
