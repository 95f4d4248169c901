"""Tests of the decoders' recycled output arrays (``datamint_pipes._buffers``): memory goes back to the pool
only once nothing can reach it, and comes out again for an output of about the same size."""

from __future__ import annotations

import gc
import multiprocessing
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch

from datamint_pipes import _buffers

LARGE = (3, 4, 512, 1024)  # 6 MiB of uint8: above the pool's threshold


@pytest.fixture(autouse=True)
def empty_pool() -> Iterator[None]:
    gc.collect()
    _buffers._idle.clear()
    yield
    gc.collect()
    _buffers._idle.clear()


def address(array: np.ndarray[Any, Any]) -> int:
    return int(array.__array_interface__["data"][0])


def idle_addresses() -> set[int]:
    return {address(block) for _, block in _buffers._idle}


def test_an_output_behaves_like_np_empty() -> None:
    array = _buffers.empty(LARGE, np.int16)
    assert array.shape == LARGE and array.dtype == np.int16
    assert array.flags.c_contiguous and array.flags.writeable and array.flags.aligned
    array[...] = 7
    assert int(array.sum()) == 7 * array.size


def test_memory_returns_only_when_no_view_is_left() -> None:
    array = _buffers.empty(LARGE)
    start = address(array)
    array[...] = 1
    views: list[Any] = [
        np.moveaxis(array, 0, -1)[::2],
        array[1].reshape(-1),
        torch.from_numpy(array[2]),
        memoryview(array[0]),
        np.frombuffer(memoryview(array), dtype=np.uint8),
    ]
    del array
    gc.collect()
    while views:
        assert start not in idle_addresses()  # a view is still alive: the block is in use
        other = _buffers.empty(LARGE)
        assert address(other) != start
        del other
        views.pop()
        gc.collect()
    idle = idle_addresses()
    assert start in idle
    again = _buffers.empty(LARGE)
    assert address(again) in idle  # recycled, not freshly mapped
    assert address(again) not in idle_addresses()


def test_small_outputs_are_plain_arrays() -> None:
    small = _buffers.empty((16, 16))
    assert small.flags.owndata
    del small
    assert _buffers.idle_bytes() == 0


def test_a_block_serves_only_outputs_of_about_its_size() -> None:
    block = _buffers.empty(LARGE)
    start = address(block)
    del block
    assert address(_buffers.empty((LARGE[0] * 2, *LARGE[1:]))) != start  # too small for it
    smaller = _buffers.empty((3, 4, 512, 900))  # 88 % of the block: within the allowed waste
    assert address(smaller) == start
    del smaller
    much_smaller = _buffers.empty((3, 4, 512, 512))  # half of it: not worth tying up the block
    assert address(much_smaller) != start


def test_the_pool_keeps_at_most_its_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_buffers, "_POOL_BYTES", 2 * int(np.prod(LARGE)))
    arrays = [_buffers.empty(LARGE) for _ in range(5)]
    del arrays
    gc.collect()
    assert _buffers.idle_bytes() == 2 * int(np.prod(LARGE))


def test_idle_blocks_expire(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_buffers, "_IDLE_SECONDS", 0.05)
    array = _buffers.empty(LARGE)
    start = address(array)
    del array
    assert start in idle_addresses()
    threading.Event().wait(0.1)
    held = _buffers.empty((2, *LARGE))  # too large for the idle block; the call drops what has idled too long
    assert start not in idle_addresses() and _buffers.idle_bytes() == 0
    del held


def test_concurrent_outputs_never_share_memory() -> None:
    """Threads take, fill, check and drop outputs at once: no output's contents change while it is held."""
    errors: list[str] = []

    def work(worker: int) -> None:
        for iteration in range(60):
            value = (worker * 61 + iteration) % 251
            array = _buffers.empty(LARGE)
            array[...] = value
            threading.Event().wait(0.0005)
            if not (array == value).all():
                errors.append(f"worker {worker} iteration {iteration}")
            del array

    threads = [threading.Thread(target=work, args=(worker,)) for worker in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


def _child_pool(queue: Any) -> None:
    queue.put(_buffers.idle_bytes())


def test_a_forked_child_starts_with_an_empty_pool() -> None:
    array = _buffers.empty(LARGE)
    del array
    assert _buffers.idle_bytes() > 0
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_child_pool, args=(queue,))
    child.start()
    try:
        assert queue.get(timeout=30) == 0
    finally:
        child.join(30)
        queue.close()
        queue.join_thread()
    assert child.exitcode == 0
