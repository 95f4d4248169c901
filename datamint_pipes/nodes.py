"""The few ``torchdata.nodes`` pieces 0.11 lacks, and the worker lifecycle it gets wrong.

* :class:`Filter` and :class:`Header` are ``BaseNode`` subclasses following the node contract exactly
  (upstream state nested under ``SOURCE_KEY``; ``get_state()`` returns a fresh dict).
* :class:`EpochSampler` is the index source: a permutation that is a pure function of (seed, epoch), used
  behind :class:`EpochSamplerWrapper`, a ``torchdata.nodes.SamplerWrapper`` (which calls ``set_epoch`` and
  resumes by fast-forwarding) whose restored mid-epoch state counts as started.
* :func:`shutdown_workers` and :class:`WorkerWatchdog` stop the threads and processes of a
  ``ParallelMapper`` / ``Prefetcher`` deterministically, and turn a dead process worker (which hangs
  ``ParallelMapper`` forever in 0.11) into a :class:`~datamint_pipes.errors.PipelineError`. Both read
  torchdata 0.11 internals (the version is pinned ``<0.12``); the pipeline tests prove their effect.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import logging
import math
import os
import queue
import signal
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import numpy as np
from torch.utils.data import Sampler
from torchdata.nodes import BaseNode, ParallelMapper, Prefetcher, SamplerWrapper
from torchdata.nodes.exception_wrapper import StartupExceptionWrapper

from datamint_pipes.errors import PipelineError

__all__ = [
    "BlockShuffle",
    "EpochIndex",
    "EpochSampler",
    "EpochSamplerWrapper",
    "Filter",
    "Header",
    "WorkerWatchdog",
    "die_with_parent",
    "return_freed_memory_promptly",
    "shutdown_workers",
]

logger = logging.getLogger(__name__)
T = TypeVar("T")


class Filter(BaseNode[T]):
    """Yields the items of ``source`` for which ``predicate(item)`` is true, in order."""

    SOURCE_KEY = "source"

    def __init__(self, source: BaseNode[T], predicate: Callable[[T], bool]) -> None:
        super().__init__()
        self.source = source
        self.predicate = predicate

    def reset(self, initial_state: dict[str, Any] | None = None) -> None:
        super().reset(initial_state)
        self.source.reset(initial_state[self.SOURCE_KEY] if initial_state is not None else None)

    def next(self) -> T:
        while True:
            item = next(self.source)
            if self.predicate(item):
                return item

    def get_state(self) -> dict[str, Any]:
        # The source stops right after the last item we returned, so its state alone resumes exactly.
        return {self.SOURCE_KEY: self.source.state_dict()}


class Header(BaseNode[T]):
    """Yields the first ``n`` items of ``source`` (fewer if it ends sooner), then stops pulling from it."""

    SOURCE_KEY = "source"
    NUM_YIELDED_KEY = "num_yielded"

    def __init__(self, source: BaseNode[T], n: int) -> None:
        super().__init__()
        if not isinstance(n, int) or n < 0:
            raise ValueError(f"{n=} must be a non-negative integer")
        self.source = source
        self.n = n
        self._num_yielded = 0

    def reset(self, initial_state: dict[str, Any] | None = None) -> None:
        super().reset(initial_state)
        if initial_state is not None:
            self.source.reset(initial_state[self.SOURCE_KEY])
            self._num_yielded = int(initial_state[self.NUM_YIELDED_KEY])
        else:
            self.source.reset(None)
            self._num_yielded = 0

    def next(self) -> T:
        if self._num_yielded >= self.n:
            raise StopIteration
        item = next(self.source)
        self._num_yielded += 1
        return item

    def get_state(self) -> dict[str, Any]:
        return {self.SOURCE_KEY: self.source.state_dict(), self.NUM_YIELDED_KEY: self._num_yielded}


class BlockShuffle(BaseNode[T]):
    """Shuffles ``source`` within consecutive blocks of ``block_size`` items (a shuffle buffer that resumes).

    Slices expanded from volumes arrive volume by volume; a block spanning several volumes mixes them.
    The order inside block ``b`` of epoch ``e`` is ``default_rng((seed, e, b)).permutation`` -- a pure
    function, so it does not depend on workers. The state is the source's state at the start of the current
    block plus an offset: a restore re-reads that block (cheap with the decoded cache) and skips what was
    already yielded, instead of storing buffered items. Each ``reset()`` without a state starts the next
    epoch (the first is epoch 0).
    """

    BLOCK_START_KEY = "block_start"
    OFFSET_KEY = "offset"
    BLOCK_INDEX_KEY = "block_index"
    EPOCH_KEY = "epoch"

    def __init__(self, source: BaseNode[T], block_size: int, *, seed: int = 0) -> None:
        super().__init__()
        if not isinstance(block_size, int) or isinstance(block_size, bool) or block_size <= 0:
            raise ValueError(f"{block_size=} must be a positive integer")
        self.source = source
        self.block_size = block_size
        self.seed = seed
        self._epoch = -1
        self._block: list[T] = []
        self._order: list[int] = []
        self._offset = 0
        self._block_index = 0
        self._block_start: dict[str, Any] | None = None

    def reset(self, initial_state: dict[str, Any] | None = None) -> None:
        super().reset(initial_state)
        if initial_state is None:
            self._epoch += 1
            self.source.reset(None)
            self._block_index = 0
            self._fill()
            return
        self._epoch = int(initial_state[self.EPOCH_KEY])
        self._block_index = int(initial_state[self.BLOCK_INDEX_KEY])
        self.source.reset(initial_state[self.BLOCK_START_KEY])
        self._fill()
        self._offset = int(initial_state[self.OFFSET_KEY])

    def _fill(self) -> None:
        self._block_start = copy.deepcopy(self.source.state_dict())
        self._block = []
        for item in self.source:
            self._block.append(item)
            if len(self._block) == self.block_size:
                break
        rng = np.random.default_rng((self.seed, self._epoch, self._block_index))
        self._order = [int(i) for i in rng.permutation(len(self._block))]
        self._offset = 0

    def next(self) -> T:
        if self._offset >= len(self._block):
            if len(self._block) < self.block_size:
                raise StopIteration
            self._block_index += 1
            self._fill()
            if not self._block:
                raise StopIteration
        item = self._block[self._order[self._offset]]
        self._offset += 1
        return item

    def get_state(self) -> dict[str, Any]:
        return {
            self.BLOCK_START_KEY: self._block_start,
            self.OFFSET_KEY: self._offset,
            self.BLOCK_INDEX_KEY: self._block_index,
            self.EPOCH_KEY: self._epoch,
        }


class EpochIndex(int):
    """An index that also carries the ``epoch`` it was drawn in (it is an ``int`` everywhere else), so stages
    can derive per-epoch randomness -- augmentation -- from (seed, epoch, sample key) without global state."""

    epoch: int

    def __new__(cls, value: int, epoch: int = 0) -> EpochIndex:
        index = super().__new__(cls, value)
        index.epoch = epoch
        return index

    def __reduce__(self) -> tuple[object, ...]:
        return (EpochIndex, (int(self), self.epoch))


class EpochSampler(Sampler[int]):
    """Indices ``0..num_items-1`` in an order that is a pure function of (``seed``, epoch).

    The order is ``numpy.random.default_rng((seed, epoch)).permutation(num_items)``, or ``range(num_items)``
    when ``shuffle=False``. With ``world_size > 1`` the permutation is cut into disjoint strided shards
    (rank ``r`` takes positions ``r, r + world_size, ...``) of equal length: the permutation is first padded
    with its own leading indices (wrapping around), or, with ``drop_last=True``, its tail is dropped.
    """

    def __init__(
        self,
        num_items: int,
        *,
        seed: int = 0,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(num_items, int) or num_items < 0:
            raise ValueError(f"{num_items=} must be a non-negative integer")
        if not isinstance(seed, int) or seed < 0:
            raise ValueError(f"{seed=} must be a non-negative integer")
        if not isinstance(world_size, int) or world_size < 1:
            raise ValueError(f"{world_size=} must be a positive integer")
        if not isinstance(rank, int) or not 0 <= rank < world_size:
            raise ValueError(f"{rank=} must be an integer in [0, {world_size=})")
        self.num_items = num_items
        self.seed = seed
        self.shuffle = shuffle
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        if not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"{epoch=} must be a non-negative integer")
        self.epoch = epoch

    def config(self) -> dict[str, Any]:
        """What fixes this sampler's indices for every epoch (recorded in states, checked on restore)."""
        return {
            "num_items": self.num_items,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "rank": self.rank,
            "world_size": self.world_size,
            "drop_last": self.drop_last,
        }

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_items // self.world_size
        return math.ceil(self.num_items / self.world_size)

    def indices(self) -> list[int]:
        """This rank's indices for the current epoch, in order."""
        if self.shuffle:
            order = np.random.default_rng((self.seed, self.epoch)).permutation(self.num_items)
        else:
            order = np.arange(self.num_items)
        total = len(self) * self.world_size
        if total > self.num_items:  # pad by wrapping around (possibly several times for tiny datasets)
            order = np.resize(order, total)
        return [int(i) for i in order[:total][self.rank :: self.world_size]]

    def __iter__(self) -> Iterator[int]:
        epoch = self.epoch
        return (EpochIndex(i, epoch) for i in self.indices())


class EpochSamplerWrapper(SamplerWrapper[int]):
    """``SamplerWrapper`` whose next ``reset()`` after restoring a mid-epoch state starts the next epoch.

    0.11's wrapper advances the epoch only if ``next()`` ran since the last ``reset``; a downstream node that
    is restored already finished (a :class:`Header` at its limit) never calls it, so the following epoch
    would silently repeat the restored one.

    Around an :class:`EpochSampler` the state also holds the sampler's :meth:`~EpochSampler.config`;
    restoring it into a sampler configured differently -- another rank's or world size's checkpoint, another
    seed or dataset size -- raises ``ValueError`` instead of silently resuming someone else's shard. (A state
    without it is trusted.)
    """

    SAMPLER_CONFIG_KEY = "sampler_config"

    def reset(self, initial_state: dict[str, Any] | None = None) -> None:
        if initial_state is not None and isinstance(self.sampler, EpochSampler):
            saved = initial_state.get(self.SAMPLER_CONFIG_KEY)
            current = self.sampler.config()
            if saved is not None and saved != current:
                differences = ", ".join(
                    f"{key}={saved.get(key)!r} (now {value!r})"
                    for key, value in current.items()
                    if saved.get(key) != value
                )
                raise ValueError(f"this state was saved by a differently configured sampler: {differences}")
        super().reset(initial_state)
        if initial_state is not None and self._num_yielded > 0:
            self._started = True

    def get_state(self) -> dict[str, Any]:
        if not isinstance(self.sampler, EpochSampler):
            return dict(super().get_state())
        # Our sampler is not Stateful (its order is a pure function of seed and epoch): skip the base class's
        # isinstance(sampler, Stateful) Protocol check, ~45 us on every item the loader snapshots.
        return {
            self.NUM_YIELDED_KEY: self._num_yielded,
            self.EPOCH_KEY: self.epoch,
            self.SAMPLER_CONFIG_KEY: self.sampler.config(),
        }


def _parallel_iter(node: BaseNode[Any]) -> Any:
    """The running ``_ParallelMapperIter`` of a ``ParallelMapper`` (torchdata 0.11 layout), or ``None``."""
    impl = getattr(node, "_it", None)
    inner = getattr(impl, "_it", None)
    return inner if inner is not None and hasattr(inner, "_workers") else None


def _drain(q: Any) -> None:
    try:
        while True:
            q.get_nowait()
    except (queue.Empty, OSError, ValueError):
        pass


def _join(thread: threading.Thread, deadline: float) -> None:
    if thread.ident is not None and thread.is_alive():
        thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            logger.warning("worker thread %s did not stop (a stage may be stuck); leaving it as a daemon", thread.name)


def shutdown_workers(node: BaseNode[Any], timeout: float = 5.0) -> None:
    """Stop the threads and processes behind ``node`` (a ``ParallelMapper`` or ``Prefetcher``).

    Process workers still alive after ``timeout`` seconds are terminated, then killed. The node can be
    ``reset()`` afterwards, which starts fresh workers. Other nodes are left alone.
    """
    deadline = time.monotonic() + timeout
    if isinstance(node, Prefetcher):
        it = node._it
        if it is not None:
            it._stop_event.set()
            _join(it._thread, deadline)
        return
    if not isinstance(node, ParallelMapper):
        return
    it = _parallel_iter(node)
    if it is None:
        return
    it._stop.set()
    it._mp_stop.set()
    _drain(it._in_q)  # workers exit only once their input queue is empty
    for thread in (it._read_thread, it._sort_thread):
        _join(thread, deadline)
    for worker in it._workers:
        if isinstance(worker, threading.Thread):
            _join(worker, deadline)
            continue
        worker.join(max(0.0, deadline - time.monotonic()))
        if worker.is_alive():
            logger.warning("terminating process worker pid %s that did not stop in time", worker.pid)
            worker.terminate()
            worker.join(1.0)
        if worker.is_alive():
            worker.kill()
            worker.join()
    if it.method == "process":
        for q in (it._in_q, it._intermed_q):
            _drain(q)
            q.close()
            q.join_thread()


_DEATH_SIGNAL_SET: set[int] = set()


def die_with_parent(owner_pid: int) -> None:
    """In a worker process: exit when the process that owns the loader (``owner_pid``) dies, once armed per
    process. When the owner is our parent (fork, spawn) on Linux the kernel sends SIGKILL
    (``prctl(PR_SET_PDEATHSIG)``); otherwise (forkserver, other systems) a daemon thread polls the owner."""
    pid = os.getpid()
    if pid in _DEATH_SIGNAL_SET:
        return
    _DEATH_SIGNAL_SET.add(pid)
    if os.getppid() == owner_pid and sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG = 1
        except (OSError, AttributeError):  # pragma: no cover - no prctl in this libc
            pass
        else:
            if os.getppid() != owner_pid:  # the owner died before the signal was armed
                os._exit(1)
            return
    threading.Thread(target=_exit_when_gone, args=(owner_pid,), name="datamint-owner-watch", daemon=True).start()


_MALLOC_TUNED: set[int] = set()
_M_MMAP_THRESHOLD = -3  # glibc <malloc.h>
MMAP_THRESHOLD_BYTES = 128 * 1024


def return_freed_memory_promptly() -> None:
    """In a worker process (glibc): serve every allocation of ``MMAP_THRESHOLD_BYTES`` or more with its own
    ``mmap``, so a freed buffer goes back to the kernel at once. Once per process; elsewhere a no-op.

    glibc raises its mmap threshold (up to 32 MiB) each time such a block is freed, after which buffers of
    one task -- a volume's slices and labels (~0.5 MB each), decode buffers -- come from the heap and stay
    resident after the task: a process worker then held 250-400 MB between tasks. Setting the threshold
    explicitly turns that adjustment off (``mallopt(M_MMAP_THRESHOLD)``); the cost is a ``mmap`` and page
    faults per large allocation, small against the work that fills it."""
    pid = os.getpid()
    if pid in _MALLOC_TUNED:
        return
    _MALLOC_TUNED.add(pid)
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):  # a libc without mallopt: nothing to tune
        ctypes.CDLL(None).mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)


def _exit_when_gone(owner_pid: int, interval: float = 0.5) -> None:
    while True:
        try:
            os.kill(owner_pid, 0)
        except ProcessLookupError:
            os._exit(1)
        except PermissionError:  # alive, owned by someone else: cannot happen for our own owner
            pass
        time.sleep(interval)


def _describe_exit(exitcode: int) -> str:
    if exitcode < 0:
        try:
            return f"was killed by signal {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"was killed by signal {-exitcode}"
    return f"exited with code {exitcode}"


class WorkerWatchdog:
    """Polls the process workers of ``ParallelMapper`` nodes; a worker that dies unasked fails the pipeline.

    torchdata 0.11 waits forever for the item a dead worker held. The watchdog puts a
    :class:`~datamint_pipes.errors.PipelineError` naming the worker on the mapper's output queue, so the
    consumer's next ``next()`` raises it (items already finished are delivered first). Nodes are held by
    weak reference; the daemon thread ends with :meth:`stop` or once every node is gone.

    Not covered: a worker dying while a restore fast-forwards inside ``reset()`` (the mapper's iterator is
    not yet published then).
    """

    def __init__(self, nodes: list[ParallelMapper[Any]], interval: float = 0.2) -> None:
        self._nodes = [weakref.ref(node) for node in nodes]
        self._interval = interval
        self._stop = threading.Event()
        self._reported: weakref.WeakSet[Any] = weakref.WeakSet()
        self._thread = threading.Thread(target=self._run, name="datamint-pipes-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            nodes = [ref() for ref in self._nodes]
            if all(node is None for node in nodes):
                return
            for node in nodes:
                it = _parallel_iter(node) if node is not None else None
                if it is not None and it not in self._reported:
                    self._check(it)

    def _check(self, it: Any) -> None:
        if it._mp_stop.is_set() or not threading.main_thread().is_alive():
            return  # stopping on purpose, or interpreter exit (multiprocessing terminates daemon workers)
        for worker_id, worker in enumerate(it._workers):
            exitcode = getattr(worker, "exitcode", None)
            if exitcode is None:
                continue
            message = f"process worker {worker_id} (pid {worker.pid}) {_describe_exit(exitcode)}"
            logger.error("%s; failing the pipeline", message)
            try:
                raise PipelineError(message)
            except PipelineError:
                # A startup wrapper, so the mapper does not release a semaphore slot it never took.
                wrapper = StartupExceptionWrapper(where="in the datamint-pipes worker watchdog")
            self._reported.add(it)
            it._out_q.put((wrapper, -1))
            return
