"""The pipeline builder: chains stage callables into ``torchdata.nodes`` and a resumable :class:`Loader`.

The graph a :class:`Pipeline` builds::

    EpochSamplerWrapper(EpochSampler)     this rank's indices, a pure function of (seed, epoch, rank, world size)
      -> IndexChunks                      if ``loader(items_per_task=k)`` with k > 1 and workers: lists of k indices
      -> ParallelMapper(fused stages)     map / filter / expand fused into one ``index -> list[sample]``
                                          (``list[index] -> list[sample]`` over a chunk)
      -> Unbatcher                        flattens (a filtered-out item yields nothing)
      -> BlockShuffle                     if ``shuffle_buffer()``: mixes items across resources
      -> Batcher                          if ``batch()``
      -> Mapper(collate)                  if ``collate()``
      -> Prefetcher                       if ``loader(prefetch=...)``

Stage callables must be picklable (module-level functions, frozen dataclasses with ``__call__``) so the same
stage runs in a thread or a process worker. Randomness inside stages must come from (seed, epoch, sample
key), never from global state.

Errors: an exception escaping a stage gets the note ``in stage NAME for resource ID`` and is re-raised the
way torch re-raises worker errors, in every mode (main thread, thread or process workers): an exception of
the *original type* whose message is ``Caught TYPE in ...`` followed by the original traceback, notes
included, so ``str(error)`` names the resource. A type whose constructor does not take one message string
comes back as ``RuntimeError`` (every :mod:`datamint_pipes.errors` class keeps its type). In the main
thread, the original exception object stays reachable as ``__context__``. With ``items_per_task > 1`` the
samples of a chunk's indices before the failing one are delivered first, exactly as with one index a task.

Process workers send slices of the decoded cache (views of a read-only memory map of an
:class:`~datamint_pipes.cache.ArrayCache` entry) by reference, not by value: the consumer re-maps the entry
file and receives read-only arrays over the same page-cache pages; other large arrays travel through
shared memory instead of the result pipe (see :mod:`datamint_pipes._shared_arrays`).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import multiprocessing
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

from torchdata.nodes import (
    BaseNode,
    Batcher,
    Mapper,
    ParallelMapper,
    Prefetcher,
    Unbatcher,
)
from torchdata.nodes.exception_wrapper import ExceptionWrapper

from datamint_pipes import _shared_arrays
from datamint_pipes.distributed import SHARD_PADDINGS, ShardInfo, ShardPadding, resolve_rank_and_world_size
from datamint_pipes.errors import PipelineError
from datamint_pipes.nodes import (
    BlockShuffle,
    EpochSampler,
    EpochSamplerWrapper,
    WorkerWatchdog,
    die_with_parent,
    return_freed_memory_promptly,
    shutdown_workers,
)

__all__ = ["Loader", "Pipeline", "WorkerType"]

WorkerType = Literal["thread", "process"]
StageKind = Literal["map", "filter", "expand"]
T = TypeVar("T")


def _resource_id(item: Any, index: int) -> Any:
    if isinstance(item, Mapping) and "resource_id" in item:
        return item["resource_id"]
    return index


@dataclass(frozen=True)
class _Stage:
    kind: StageKind
    fn: Callable[[Any], Any]
    name: str

    def apply(self, item: Any, index: int) -> list[Any]:
        """Run the stage on one item: ``[result]`` (map), ``[item]`` or ``[]`` (filter), a list (expand)."""
        try:
            result = self.fn(item)
        except Exception as error:
            error.add_note(f"in stage {self.name} for resource {_resource_id(item, index)}")
            raise
        if self.kind == "filter":
            return [item] if result else []
        outputs = [result] if self.kind == "map" else result
        if self.kind == "expand" and not isinstance(result, (list, tuple)):
            raise TypeError(
                f"stage {self.name} must return a list, got {type(result).__name__} "
                f"for resource {_resource_id(item, index)}"
            )
        if any(output is None for output in outputs):
            raise ValueError(
                f"stage {self.name} returned None for resource {_resource_id(item, index)}; "
                "a sample must not be None (did the stage forget to return?)"
            )
        return list(outputs)


@dataclass(frozen=True)
class _FusedStages:
    """Consecutive per-item stages as one picklable ``index -> list[sample]`` callable.

    ``owner_pid`` is the process that built the loader: in any other process (a process worker) the first
    call asks the kernel to kill the worker when its parent dies, so a parent killed by SIGTERM or SIGKILL
    leaves no orphaned worker behind (Linux; elsewhere a no-op), makes freed buffers return to the kernel
    at once (:func:`~datamint_pipes.nodes.return_freed_memory_promptly`). With ``process_workers`` (the
    callable of a process-worker mapper) the outputs leave the worker wrapped in :class:`_HandOver`.
    """

    stages: tuple[_Stage, ...]
    owner_pid: int = dataclasses.field(default_factory=os.getpid)
    process_workers: bool = False

    def __call__(self, index: int) -> list[Any]:
        self.set_up_worker_process()
        items = self.map_index(index)
        return _HandOver(items) if self.process_workers else items  # type: ignore[return-value]

    def set_up_worker_process(self) -> None:
        """In a process other than the owner (a process worker): the set-up above, once per process."""
        if os.getpid() != self.owner_pid:
            die_with_parent(self.owner_pid)
            return_freed_memory_promptly()

    def map_index(self, index: int) -> list[Any]:
        items: list[Any] = [index]
        for stage in self.stages:
            items = [output for item in items for output in stage.apply(item, index)]
        return items


class _HandOver:
    """A task's outputs leaving a process worker; the consumer unpickles the plain list.

    Pickled by :func:`datamint_pipes._shared_arrays.pack`: cache views by reference, large arrays through
    shared memory. torchdata's worker loop keeps its last result referenced until the next task is done, so
    a worker would hold a whole resource's samples (~50 MB for a W1 volume's labels) while it computes the
    next one: pickling (once, by the result queue) hands the list over and leaves this wrapper empty."""

    __slots__ = ("items",)

    def __init__(self, items: list[Any]) -> None:
        self.items: list[Any] | None = items

    def __reduce__(self) -> tuple[Any, ...]:
        items, self.items = self.items, None
        if items is None:
            raise PipelineError("a worker's task outputs were pickled twice")
        return _shared_arrays.pack(items)


@dataclass(frozen=True)
class _DeferredError:
    """Stands, in a chunk's outputs, for the error of the index that failed, after the samples of the indices
    before it; :class:`_FlattenTasks` raises it when the consumer reaches it."""

    error: ExceptionWrapper


@dataclass(frozen=True)
class _FusedChunk:
    """``list[index] -> list[sample]``: :class:`_FusedStages` over a chunk of indices, outputs concatenated.

    Runs only in workers. An error in the chunk's first index propagates as from one-index tasks; a later
    index's error is wrapped as a worker wraps it (same message) and delivered after the earlier samples.
    """

    fused: _FusedStages

    def __call__(self, indices: Sequence[int]) -> list[Any]:
        self.fused.set_up_worker_process()
        outputs: list[Any] = []
        for position, index in enumerate(indices):
            try:
                outputs += self.fused.map_index(index)
            except Exception:
                if position == 0:
                    raise
                # torchdata's _apply_udf wraps a worker's error as ExceptionWrapper(where="in _apply_udf").
                outputs.append(_DeferredError(ExceptionWrapper(where="in _apply_udf")))
                break
        return _HandOver(outputs) if self.fused.process_workers else outputs  # type: ignore[return-value]


class _IndexChunks(Batcher[Any]):
    """The sampler's indices in lists of ``items_per_task`` (the epoch's last one shorter): one worker task each.

    Its state is the sampler's after the chunk, so a restore re-maps at most one chunk."""

    def __init__(self, source: BaseNode[Any], items_per_task: int) -> None:
        super().__init__(source, batch_size=items_per_task, drop_last=False)

    @property
    def graph_label(self) -> str:
        return f"IndexChunks[items_per_task={self.batch_size}]"


class _FlattenTasks(Unbatcher[Any]):
    """``Unbatcher`` over chunk outputs that raises a :class:`_DeferredError` where the consumer reaches it.

    Its state is the mapper's before the current chunk plus the offset in that chunk's samples: a restore
    in the middle of a chunk maps the chunk again and skips what was already yielded."""

    graph_label = "Unbatcher[chunks]"

    def next(self) -> Any:
        item = super().next()
        if isinstance(item, _DeferredError):
            item.error.reraise()
        return item


@dataclass(frozen=True)
class _Collate:
    fn: Callable[[list[Any]], Any]
    name: str

    def __call__(self, batch: list[Any]) -> Any:
        try:
            result = self.fn(batch)
        except Exception as error:
            ids = list(
                dict.fromkeys(
                    str(item["resource_id"]) for item in batch if isinstance(item, Mapping) and "resource_id" in item
                )
            )
            error.add_note(f"in stage {self.name} for resources {', '.join(ids) or '(unknown)'}")
            raise
        if result is None:
            raise ValueError(f"stage {self.name} returned None; a batch must not be None")
        return result


@dataclass(frozen=True)
class _InMainThread:
    """Re-raises errors as worker errors are re-raised, so every ``num_workers`` gives the same error."""

    fn: Callable[[Any], Any]

    def __call__(self, item: Any) -> Any:
        try:
            return self.fn(item)
        except Exception:
            ExceptionWrapper(where="in the main thread").reraise()
            raise  # unreachable: reraise() always raises


def _stage_name(fn: Callable[..., Any], name: str | None) -> str:
    return name or getattr(fn, "__name__", None) or type(fn).__name__


@dataclass(frozen=True)
class Pipeline:
    """An immutable description of a pipeline; each builder method returns a new ``Pipeline``.

    ``num_items`` indices (0..num_items-1, resource positions) are drawn per epoch by
    :class:`~datamint_pipes.nodes.EpochSampler` (``seed``, ``shuffle``). The first stage receives the index.

    Data-parallel sharding (see :mod:`datamint_pipes.distributed`): rank ``rank`` of ``world_size`` reads a
    strided shard of the epoch's global order, every rank the same number of indices -- the order padded by
    wrapping around (``shard_padding="pad"``) or its tail dropped (``"drop"``). ``rank`` / ``world_size``
    left ``None`` are resolved by :func:`~datamint_pipes.distributed.current_rank_and_world_size`
    (``torch.distributed``, else ``RANK`` / ``WORLD_SIZE``, else a single process) each time a loader or
    sampler is built -- not when the pipeline is described -- so one description serves every rank. Equal
    batch counts per rank need one item per index: ``filter`` and ``expand`` run after sharding.
    """

    num_items: int
    seed: int = 0
    shuffle: bool = True
    rank: int | None = None
    world_size: int | None = None
    shard_padding: ShardPadding = "pad"
    stages: tuple[_Stage, ...] = ()
    shuffle_block: int | None = None
    batch_size: int | None = None
    drop_last: bool = False
    collate_fn: _Collate | None = None

    def __post_init__(self) -> None:
        if self.shard_padding not in SHARD_PADDINGS:
            raise ValueError(f"shard_padding={self.shard_padding!r} must be one of {SHARD_PADDINGS}")
        EpochSampler(self.num_items, seed=self.seed)  # validates num_items and seed
        # rank / world_size as far as given; None ones are checked when resolved.
        rank, world_size = self.rank, self.world_size
        if world_size is not None and (
            not isinstance(world_size, int) or isinstance(world_size, bool) or world_size < 1
        ):
            raise ValueError(f"{world_size=} must be None or a positive integer")
        if rank is not None and (not isinstance(rank, int) or isinstance(rank, bool) or rank < 0):
            raise ValueError(f"{rank=} must be None or a non-negative integer")
        if rank is not None and world_size is not None and rank >= world_size:
            raise ValueError(f"{rank=} must be an integer in [0, {world_size=})")

    def sampler(self) -> EpochSampler:
        """A fresh sampler giving this rank's index order (``set_epoch`` it to see an epoch's order)."""
        rank, world_size = resolve_rank_and_world_size(self.rank, self.world_size)
        return EpochSampler(
            self.num_items,
            seed=self.seed,
            shuffle=self.shuffle,
            rank=rank,
            world_size=world_size,
            drop_last=self.shard_padding == "drop",
        )

    def shard_info(self) -> ShardInfo:
        """Which positions of each epoch's global order this rank reads (``rank`` / ``world_size`` resolved now)."""
        rank, world_size = resolve_rank_and_world_size(self.rank, self.world_size)
        return ShardInfo(self.num_items, rank, world_size, self.shard_padding)

    def _add_stage(self, kind: StageKind, fn: Callable[[Any], Any], name: str | None) -> Pipeline:
        if not callable(fn):
            raise TypeError(f"{kind}() needs a callable, got {type(fn).__name__}")
        if self.batch_size is not None:
            raise ValueError(f"{kind}() must come before batch(); use collate() to transform batches")
        return dataclasses.replace(self, stages=(*self.stages, _Stage(kind, fn, _stage_name(fn, name))))

    def map(self, fn: Callable[[Any], Any], *, name: str | None = None) -> Pipeline:
        """Apply ``fn(sample) -> sample`` to every item."""
        return self._add_stage("map", fn, name)

    def filter(self, predicate: Callable[[Any], bool], *, name: str | None = None) -> Pipeline:
        """Keep the items for which ``predicate(sample)`` is true."""
        return self._add_stage("filter", predicate, name)

    def expand(self, fn: Callable[[Any], Sequence[Any]], *, name: str | None = None) -> Pipeline:
        """Replace every item by the items of the list ``fn(sample)`` (1 -> N; an empty list drops it)."""
        return self._add_stage("expand", fn, name)

    def shuffle_buffer(self, block_size: int) -> Pipeline:
        """Shuffle the expanded items within blocks of ``block_size`` (see :class:`~datamint_pipes.nodes.BlockShuffle`),
        so slices of several volumes mix in a batch. Deterministic per (seed, epoch); resumes exactly."""
        if not isinstance(block_size, int) or isinstance(block_size, bool) or block_size <= 0:
            raise ValueError(f"{block_size=} must be a positive integer")
        if self.batch_size is not None:
            raise ValueError("shuffle_buffer() must come before batch()")
        return dataclasses.replace(self, shuffle_block=block_size)

    def batch(self, batch_size: int, *, drop_last: bool = False) -> Pipeline:
        """Group items into lists of ``batch_size`` (the last one shorter unless ``drop_last``)."""
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size <= 0:
            raise ValueError(f"{batch_size=} must be a positive integer")
        if self.batch_size is not None:
            raise ValueError("batch() was already called on this pipeline")
        return dataclasses.replace(self, batch_size=batch_size, drop_last=drop_last)

    def collate(self, fn: Callable[[list[Any]], Any], *, name: str | None = None) -> Pipeline:
        """Turn each batch (a list of samples) into ``fn(batch)``; runs in the consuming thread."""
        if not callable(fn):
            raise TypeError(f"collate() needs a callable, got {type(fn).__name__}")
        if self.batch_size is None:
            raise ValueError("collate() needs batch() first")
        if self.collate_fn is not None:
            raise ValueError("collate() was already called on this pipeline")
        return dataclasses.replace(self, collate_fn=_Collate(fn, _stage_name(fn, name)))

    def length(self) -> int | None:
        """Items (or batches) per epoch on this rank, or ``None`` when a filter or expand stage makes it unknown."""
        return self._length(len(self.sampler()))

    def _length(self, num_items: int) -> int | None:
        if any(stage.kind != "map" for stage in self.stages):
            return None
        if self.batch_size is None:
            return num_items
        return num_items // self.batch_size if self.drop_last else math.ceil(num_items / self.batch_size)

    def loader(
        self,
        *,
        num_workers: int = 0,
        worker_type: WorkerType = "thread",
        multiprocessing_context: str | None = None,
        prefetch: int | None = None,
        in_order: bool = True,
        max_concurrent: int | None = None,
        items_per_task: int = 1,
    ) -> Loader[Any]:
        """Build the node graph and wrap it in a :class:`Loader`.

        ``num_workers=0`` runs the stages in the consuming thread. ``prefetch`` adds a background thread
        keeping that many finished batches ready. ``max_concurrent`` (at most ``num_workers``; default
        ``2 * num_workers``) bounds the worker tasks in flight. Output order never depends on the workers.

        ``items_per_task`` is how many indices (resources) a worker gets as one task, mapped one after the
        other with their samples handed back together (an epoch's last task may be shorter). The default, 1,
        spreads heavy resources -- volumes, videos -- over the workers one by one. Raise it (32-256) for
        cheap items, tens of microseconds each (small images from memory), where the per-task hand-off
        between threads or processes costs more than the work: tasks in flight then hold up to
        ``max_concurrent * items_per_task`` resources' samples. It has no effect with ``num_workers=0``.
        Outputs, errors (the samples before a failing index come first) and resuming do not depend on it,
        except that a ``state_dict()`` resumes only in a loader built with the same ``items_per_task``
        (another one is refused); a state taken in the middle of a task maps that task again on restore.
        """
        if not isinstance(num_workers, int) or isinstance(num_workers, bool) or num_workers < 0:
            raise ValueError(f"{num_workers=} must be a non-negative integer")
        if worker_type not in ("thread", "process"):
            raise ValueError(f"{worker_type=} must be 'thread' or 'process'")
        if multiprocessing_context is not None:
            if worker_type != "process":
                raise ValueError(f"{multiprocessing_context=} applies only to worker_type='process'")
            if multiprocessing_context not in multiprocessing.get_all_start_methods():
                methods = multiprocessing.get_all_start_methods()
                raise ValueError(f"{multiprocessing_context=} must be None or one of {methods}")
        if prefetch is not None and (not isinstance(prefetch, int) or prefetch <= 0):
            raise ValueError(f"{prefetch=} must be None or a positive integer")
        if in_order is not True:
            raise ValueError(f"{in_order=} is not supported: out-of-order mapping loses items on resume")
        if max_concurrent is not None and (
            not isinstance(max_concurrent, int) or not 0 < max_concurrent <= num_workers
        ):
            raise ValueError(f"{max_concurrent=} must be None or a positive integer <= {num_workers=}")
        if not isinstance(items_per_task, int) or isinstance(items_per_task, bool) or items_per_task <= 0:
            raise ValueError(f"{items_per_task=} must be a positive integer")

        sampler = self.sampler()  # rank and world size resolved once, for this loader's lifetime
        node: BaseNode[Any] = EpochSamplerWrapper(sampler)
        if self.stages:
            fused = _FusedStages(self.stages, process_workers=num_workers > 0 and worker_type == "process")
            chunked = num_workers > 0 and items_per_task > 1
            if num_workers == 0:
                node = Mapper(node, _InMainThread(fused))
            else:
                node = ParallelMapper(
                    _IndexChunks(node, items_per_task) if chunked else node,
                    _FusedChunk(fused) if chunked else fused,
                    num_workers=num_workers,
                    in_order=True,
                    method=worker_type,
                    multiprocessing_context=multiprocessing_context,
                    max_concurrent=max_concurrent,
                )
            node = _FlattenTasks(node) if chunked else Unbatcher(node)
        if self.shuffle_block is not None:
            node = BlockShuffle(node, self.shuffle_block, seed=self.seed)
        if self.batch_size is not None:
            node = Batcher(node, batch_size=self.batch_size, drop_last=self.drop_last)
        if self.collate_fn is not None:
            node = Mapper(node, _InMainThread(self.collate_fn))
        if prefetch is not None:
            node = Prefetcher(node, prefetch_factor=prefetch)
        return Loader(node, length=self._length(len(sampler)))


class Loader(Generic[T]):
    """A resumable iterable over a node graph; each ``iter()`` starts the next epoch.

    Replaces ``torchdata.nodes.Loader``, fixing its 0.11 bugs: ``num_yielded`` is exact after a restore;
    ``state_dict()`` before ``load_state_dict()`` does not make the loaded state be ignored (#1548); a
    ``None`` item is an ordinary item (#1551: no look-ahead sentinel); worker threads and processes stop on
    :meth:`close` (or leaving a ``with`` block) and at every epoch change, not at garbage collection.

    ``state_dict()`` taken between items resumes, in a freshly built loader given ``load_state_dict()``, with
    exactly the items not yet yielded; a state taken after the epoch's last item resumes with the next epoch.
    ``len()`` is ``length`` (items per epoch) when known, else ``TypeError``. One consumer at a time: after a
    new ``iter()`` the previous iterator raises ``RuntimeError``. The loader manages the workers of every
    ``ParallelMapper`` and ``Prefetcher`` reachable from ``root`` through ``.source`` links, and watches
    process workers (:class:`~datamint_pipes.nodes.WorkerWatchdog`).
    """

    ROOT_KEY = "root"
    NUM_YIELDED_KEY = "num_yielded"
    GRAPH_KEY = "graph"

    def __init__(self, root: BaseNode[T], *, length: int | None = None) -> None:
        self.root = root
        self.length = length
        self._pending_state: dict[str, Any] | None = None
        self._root_primed = False  # root was reset for a state_dict() before the first iter()
        self._num_yielded = 0
        self._generation = 0
        self._closed = False
        self._worker_nodes: list[BaseNode[Any]] = []  # upstream first
        self._graph: list[str] = []  # node classes, root first: a state only fits the same graph
        node: Any = root
        while isinstance(node, BaseNode):
            workers = getattr(node, "num_workers", None)
            # In-thread mapping (0 workers) and worker mapping keep differently shaped states; a node may
            # name what else shapes its state (``graph_label``).
            label = getattr(node, "graph_label", None) or type(node).__name__
            self._graph.append(label + ("" if workers is None else "[inline]" if workers == 0 else ""))
            if isinstance(node, (ParallelMapper, Prefetcher)):
                self._worker_nodes.insert(0, node)
            node = getattr(node, "source", None)
        process_mappers = [n for n in self._worker_nodes if isinstance(n, ParallelMapper) and n.method == "process"]
        self._watchdog = WorkerWatchdog(process_mappers) if process_mappers else None

    @property
    def num_yielded(self) -> int:
        """Items yielded so far in the current epoch (restored by ``load_state_dict``)."""
        return self._num_yielded

    def __len__(self) -> int:
        if self.length is None:
            raise TypeError("this loader has no len(): filter or expand stages make the item count unknown")
        return self.length

    def __bool__(self) -> bool:
        return True  # not len(): a loader without a length is still a loader

    def __iter__(self) -> Iterator[T]:
        if self._closed:
            raise ValueError("cannot iterate a closed Loader")
        self._generation += 1
        state, self._pending_state = self._pending_state, None
        restored = state is not None
        if state is not None or not self._root_primed:  # (a primed root is where state_dict() said it is)
            self._shutdown_workers()
            self.root.reset(state[self.ROOT_KEY] if state is not None else None)
        self._root_primed = False
        self._num_yielded = int(state[self.NUM_YIELDED_KEY]) if state is not None else 0
        return self._iterate(self._generation, restored)

    def _iterate(self, generation: int, restored: bool) -> Iterator[T]:
        while True:
            if generation != self._generation:
                raise RuntimeError("this iterator was superseded by a later iter() or close() of its Loader")
            try:
                item = next(self.root)
            except StopIteration:
                self._shutdown_workers()
                if not restored:
                    return
                # Restored from a state at the end of an epoch: continue with the next epoch.
                self.root.reset(None)
                self._num_yielded = 0
                restored = False
                continue
            except BaseException:
                self._shutdown_workers()  # the epoch cannot continue past an error
                raise
            restored = False
            self._num_yielded += 1
            yield item

    def state_dict(self) -> dict[str, Any]:
        """The state after the last item yielded (a loaded but not yet used state is returned as is)."""
        if self._pending_state is not None:
            return copy.deepcopy(self._pending_state)
        if self._generation == 0 and not self._root_primed:
            self.root.reset(None)
            self._root_primed = True
        return {
            self.ROOT_KEY: copy.deepcopy(self.root.state_dict()),
            self.NUM_YIELDED_KEY: self._num_yielded,
            self.GRAPH_KEY: list(self._graph),
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Resume from ``state_dict`` at the next ``iter()``."""
        missing = {self.ROOT_KEY, self.NUM_YIELDED_KEY} - set(state_dict)
        if missing:
            raise ValueError(f"not a Loader state_dict: missing keys {sorted(missing)}")
        graph = state_dict.get(self.GRAPH_KEY)
        if graph is not None and list(graph) != self._graph:
            raise ValueError(
                f"this state_dict was saved by a loader built differently ({' <- '.join(graph)}), not this one "
                f"({' <- '.join(self._graph)}): resume with the same stages and batching, and with workers "
                "if it had workers"
            )
        self._pending_state = copy.deepcopy(dict(state_dict))
        self._root_primed = False

    def _shutdown_workers(self) -> None:
        for node in self._worker_nodes:
            shutdown_workers(node)

    def close(self) -> None:
        """Stop every worker thread and process; the loader cannot be iterated afterwards."""
        if self._closed:
            return
        self._closed = True
        self._generation += 1
        if self._watchdog is not None:
            self._watchdog.stop()
        self._shutdown_workers()

    def __enter__(self) -> Loader[T]:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
