"""Tests of datamint_pipes.pipeline: order, resume, errors, worker lifecycle, validation.

Expected sequences are computed here in plain Python from the documented order
(``numpy.random.default_rng((seed, epoch)).permutation``), never from the pipeline's own output.
Process-worker tests are few and small: each worker start costs up to ~1 s (spawn).
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from _pipeline_stages import (
    DropMultiples,
    FailFor,
    KillWorkerAt,
    Sleep,
    SliceVolume,
    check_loader_save_load_state,
    collate_keys,
    load_sample,
    return_none,
    sample_key,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from torchdata.nodes import IterableWrapper

from datamint_pipes.errors import DecodeError, PipelineError
from datamint_pipes.pipeline import Loader, Pipeline

Key = tuple[int, int]


def expected_keys(
    num_items: int, seed: int, epoch: int, *, shuffle: bool = True, drop: int | None = None, slices: int | None = None
) -> list[Key]:
    """What load_sample -> DropMultiples(drop) -> SliceVolume(slices) yields for one epoch."""
    order = np.random.default_rng((seed, epoch)).permutation(num_items) if shuffle else np.arange(num_items)
    keys: list[Key] = []
    for index in (int(i) for i in order):
        if drop is not None and index % drop == 0:
            continue
        keys += [(index, j) for j in range(index % slices)] if slices is not None else [(index, -1)]
    return keys


def batched(keys: list[Key], batch_size: int, drop_last: bool = False) -> list[list[Key]]:
    batches = [keys[i : i + batch_size] for i in range(0, len(keys), batch_size)]
    return [b for b in batches if len(b) == batch_size] if drop_last else batches


def make_pipeline(
    num_items: int, seed: int, *, drop: int | None = 3, slices: int | None = 3, batch_size: int | None = 4
) -> Pipeline:
    pipe = Pipeline(num_items, seed=seed).map(load_sample)
    if drop is not None:
        pipe = pipe.filter(DropMultiples(drop))
    if slices is not None:
        pipe = pipe.expand(SliceVolume(slices))
    if batch_size is None:
        return pipe.map(sample_key)
    return pipe.batch(batch_size).collate(collate_keys)


WORKER_MODES = [
    pytest.param(0, "thread", None, id="main-thread"),
    pytest.param(1, "thread", None, id="1-thread"),
    pytest.param(2, "thread", None, id="2-threads"),
    pytest.param(1, "process", "fork", id="1-process-fork"),
    pytest.param(2, "process", "spawn", id="2-processes-spawn"),
]


# Order ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("num_workers", "worker_type", "context"), WORKER_MODES)
def test_same_seed_same_order_in_every_worker_mode(num_workers: int, worker_type: Any, context: str | None) -> None:
    pipe = make_pipeline(23, seed=5)
    with pipe.loader(num_workers=num_workers, worker_type=worker_type, multiprocessing_context=context) as loader:
        epochs = [list(loader) for _ in range(2)]
    assert epochs == [batched(expected_keys(23, 5, epoch, drop=3, slices=3), 4) for epoch in range(2)]


def test_epochs_differ_deterministically_and_shuffle_false_is_range() -> None:
    with make_pipeline(30, seed=1, drop=None, slices=None, batch_size=None).loader() as loader:
        epochs = [list(loader) for _ in range(3)]
    assert epochs == [expected_keys(30, 1, epoch) for epoch in range(3)]
    assert len({tuple(epoch) for epoch in epochs}) == 3
    with Pipeline(30, seed=1, shuffle=False).map(load_sample).map(sample_key).loader(num_workers=2) as loader:
        assert list(loader) == list(loader) == [(i, -1) for i in range(30)]


def test_unbatched_pipeline_without_stages_yields_indices() -> None:
    with Pipeline(7, seed=2).loader() as loader:
        assert list(loader) == [key for key, _ in expected_keys(7, 2, 0)]


def test_batches_keep_a_short_last_batch_unless_drop_last() -> None:
    keys = expected_keys(10, 0, 0)
    pipe = Pipeline(10, seed=0).map(load_sample).batch(3)
    with pipe.collate(collate_keys).loader() as loader:
        assert list(loader) == batched(keys, 3)
    with Pipeline(10, seed=0).map(load_sample).batch(3, drop_last=True).collate(collate_keys).loader() as loader:
        assert list(loader) == batched(keys, 3, drop_last=True)
    with pipe.loader() as loader:  # no collate: lists of samples
        assert [[sample_key(s) for s in batch] for batch in loader] == batched(keys, 3)


def test_ranks_get_disjoint_equal_shards() -> None:
    shards = []
    for rank in range(3):
        pipe = Pipeline(10, seed=4, rank=rank, world_size=3).map(load_sample).map(sample_key)
        with pipe.loader() as loader:
            shards.append([index for index, _ in loader])
            assert len(loader) == 4
    order = [index for index, _ in expected_keys(10, 4, 0)]
    padded = order + order[:2]
    assert shards == [padded[rank::3] for rank in range(3)]


# Resume --------------------------------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    num_items=st.integers(0, 12),
    seed=st.integers(0, 3),
    drop=st.sampled_from([None, 2, 3]),
    slices=st.sampled_from([None, 3]),
    batch_size=st.integers(1, 4),
    num_workers=st.sampled_from([0, 0, 1, 2]),
    data=st.data(),
)
def test_resume_mid_epoch_gives_exactly_the_rest(
    num_items: int,
    seed: int,
    drop: int | None,
    slices: int | None,
    batch_size: int,
    num_workers: int,
    data: st.DataObject,
) -> None:
    pipe = make_pipeline(num_items, seed, drop=drop, slices=slices, batch_size=batch_size)
    epoch0 = batched(expected_keys(num_items, seed, 0, drop=drop, slices=slices), batch_size)
    epoch1 = batched(expected_keys(num_items, seed, 1, drop=drop, slices=slices), batch_size)
    k = data.draw(st.integers(0, len(epoch0)), label="batches before the snapshot")
    with pipe.loader(num_workers=num_workers) as loader:
        iterator = iter(loader)
        assert [next(iterator) for _ in range(k)] == epoch0[:k]
        state = loader.state_dict()
    with pipe.loader(num_workers=num_workers) as fresh:
        fresh.load_state_dict(state)
        # The rest of epoch 0; a snapshot after its last batch resumes with epoch 1.
        assert list(fresh) == (epoch0[k:] or epoch1)
        assert fresh.num_yielded == (len(epoch0) if epoch0[k:] else len(epoch1))


@pytest.mark.parametrize(
    ("num_workers", "worker_type", "context", "prefetch", "midpoint"),
    [
        pytest.param(0, "thread", None, None, 0, id="main-thread-at-0"),
        pytest.param(0, "thread", None, None, 2, id="main-thread-at-2"),
        pytest.param(2, "thread", None, None, 0, id="2-threads-at-0"),
        pytest.param(2, "thread", None, None, 2, id="2-threads-at-2"),
        pytest.param(2, "thread", None, 2, 3, id="2-threads-prefetch-at-3"),
        pytest.param(2, "process", "fork", None, 2, id="2-processes-fork-at-2"),
    ],
)
def test_full_graph_save_load_state(
    num_workers: int, worker_type: Any, context: str | None, prefetch: int | None, midpoint: int
) -> None:
    pipe = make_pipeline(11, seed=9, batch_size=2)

    def make_loader() -> Loader[Any]:
        return pipe.loader(
            num_workers=num_workers, worker_type=worker_type, multiprocessing_context=context, prefetch=prefetch
        )

    check_loader_save_load_state(make_loader, midpoint)


def test_state_dict_of_fresh_loader_starts_epoch_zero() -> None:
    pipe = make_pipeline(9, seed=2)
    with pipe.loader(num_workers=1) as loader:
        state = loader.state_dict()
        assert state["num_yielded"] == 0
        assert list(loader) == batched(expected_keys(9, 2, 0, drop=3, slices=3), 4)  # primed, not restarted
    with pipe.loader(num_workers=1) as fresh:
        fresh.load_state_dict(state)
        assert list(fresh) == batched(expected_keys(9, 2, 0, drop=3, slices=3), 4)
        assert list(fresh) == batched(expected_keys(9, 2, 1, drop=3, slices=3), 4)


def test_none_items_resume_exactly() -> None:
    """torchdata #1551: a None item made a restored loader restart the epoch."""
    with Loader(IterableWrapper([1, None, 2, None])) as loader:
        iterator = iter(loader)
        assert next(iterator) == 1
        state = loader.state_dict()
    with Loader(IterableWrapper([1, None, 2, None])) as fresh:
        fresh.load_state_dict(state)
        assert list(fresh) == [None, 2, None]
        assert fresh.num_yielded == 4


def test_new_iter_supersedes_the_previous_iterator() -> None:
    with make_pipeline(9, seed=0).loader() as loader:
        first = iter(loader)
        next(first)
        second = iter(loader)
        with pytest.raises(RuntimeError, match="superseded"):
            next(first)
        assert list(second) == batched(expected_keys(9, 0, 1, drop=3, slices=3), 4)


def test_load_state_dict_rejects_foreign_state() -> None:
    with pytest.raises(ValueError, match="num_yielded"), make_pipeline(3, 0).loader() as loader:
        loader.load_state_dict({"root": {}})


# Errors --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("num_workers", "worker_type", "context", "decode"),
    [
        pytest.param(num_workers, "thread", None, decode, id=f"{num_workers}-threads-{name}")
        for num_workers in (0, 1, 2)
        for decode, name in ((False, "ValueError"), (True, "DecodeError"))
    ]
    + [
        pytest.param(0, "process", None, False, id="process-type-0-workers-ValueError"),
        pytest.param(1, "process", "fork", False, id="1-process-fork-ValueError"),
        pytest.param(1, "process", "fork", True, id="1-process-fork-DecodeError"),
        pytest.param(2, "process", "forkserver", False, id="2-processes-forkserver-ValueError"),
        pytest.param(2, "process", "spawn", True, id="2-processes-spawn-DecodeError"),
    ],
)
def test_stage_error_keeps_type_and_names_resource(
    num_workers: int, worker_type: Any, context: str | None, decode: bool
) -> None:
    pipe = Pipeline(12, seed=0).map(load_sample).map(FailFor("res-7", decode=decode), name="decode_pixels")
    pipe = pipe.batch(2).collate(collate_keys)
    loader = pipe.loader(num_workers=num_workers, worker_type=worker_type, multiprocessing_context=context)
    with loader, pytest.raises(DecodeError if decode else ValueError) as caught:
        list(loader)
    message = str(caught.value)
    assert "res-7" in message
    assert "boom" in message
    assert "in stage decode_pixels for resource res-7" in message


def test_error_note_uses_index_when_item_has_no_resource_id() -> None:
    def fail(index: int) -> int:
        raise KeyError(index)

    with Pipeline(3, seed=0, shuffle=False).map(fail).loader() as loader, pytest.raises(KeyError) as caught:
        list(loader)
    assert "in stage fail for resource 0" in str(caught.value)


def test_collate_error_names_the_batch_resources() -> None:
    pipe = Pipeline(4, seed=0, shuffle=False).map(load_sample).batch(2).collate(FailFor("res-9"))
    with pipe.loader() as loader, pytest.raises(TypeError, match=r"in stage FailFor for resources res-0, res-1"):
        list(loader)  # FailFor indexes a sample, not a list: TypeError


def test_stage_returning_none_is_rejected() -> None:
    pipe = Pipeline(3, seed=0).map(load_sample).map(return_none)
    with pipe.loader(num_workers=1) as loader, pytest.raises(ValueError, match="stage return_none returned None"):
        list(loader)


def test_expand_must_return_a_list() -> None:
    with Pipeline(3).expand(load_sample).loader() as loader, pytest.raises(TypeError, match="must return a list"):
        list(loader)


def test_dead_process_worker_fails_fast() -> None:
    pipe = Pipeline(8, seed=0, shuffle=False).map(load_sample).map(KillWorkerAt(3)).map(sample_key)
    children_before = set(multiprocessing.active_children())
    start = time.monotonic()
    loader = pipe.loader(num_workers=2, worker_type="process", multiprocessing_context="fork")
    with loader, pytest.raises(PipelineError, match=r"process worker \d \(pid \d+\) was killed by signal SIGKILL"):
        list(loader)
    assert time.monotonic() - start < 10
    assert set(multiprocessing.active_children()) <= children_before


# Worker lifecycle ----------------------------------------------------------------------------------------------


def _wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _child_pids() -> set[int]:
    """Living (non-zombie) children of this process, from /proc."""
    pids = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == os.getpid() and fields[0] != "Z":
                pids.add(int(entry))
    return pids


@pytest.mark.parametrize(
    ("worker_type", "context", "prefetch"),
    [("thread", None, None), ("thread", None, 2), ("process", "fork", None)],
)
def test_close_stops_workers(worker_type: Any, context: str | None, prefetch: int | None) -> None:
    threads_before = set(threading.enumerate())
    children_before = _child_pids()
    mp_children_before = set(multiprocessing.active_children())
    pipe = Pipeline(40, seed=0).map(load_sample).map(Sleep(0.01)).batch(2)
    loader = pipe.loader(num_workers=2, worker_type=worker_type, multiprocessing_context=context, prefetch=prefetch)
    iterator = iter(loader)
    next(iterator)
    started = set(threading.enumerate()) - threads_before
    assert started  # worker / reader / sorter threads are running
    if worker_type == "process":
        assert len(_child_pids() - children_before) == 2
    loader.close()
    assert _wait_until(lambda: not any(thread.is_alive() for thread in started)), started
    assert _child_pids() - children_before == set()
    assert set(multiprocessing.active_children()) <= mp_children_before
    with pytest.raises(RuntimeError, match="superseded"):
        next(iterator)
    with pytest.raises(ValueError, match="closed"):
        iter(loader)


def test_context_manager_closes_and_epochs_do_not_leak_threads() -> None:
    threads_before = set(threading.enumerate())
    with make_pipeline(12, seed=0).loader(num_workers=2) as loader:
        for _ in range(3):
            list(loader)
        assert _wait_until(lambda: len(set(threading.enumerate()) - threads_before) == 0)
        iterator: Iterator[Any] = iter(loader)
        next(iterator)
    assert _wait_until(lambda: not set(threading.enumerate()) - threads_before)


# Length, builder, validation -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("batch_size", "drop_last", "expected"), [(None, False, 10), (3, False, 4), (3, True, 3)])
def test_len_counts_batches(batch_size: int | None, drop_last: bool, expected: int) -> None:
    pipe = Pipeline(10).map(load_sample)
    if batch_size is not None:
        pipe = pipe.batch(batch_size, drop_last=drop_last)
    with pipe.loader() as loader:
        assert len(loader) == expected == len(list(loader))


def test_len_is_unknown_with_filter_or_expand() -> None:
    for pipe in (Pipeline(10).filter(DropMultiples(2)), Pipeline(10).map(load_sample).expand(SliceVolume(2))):
        with pipe.batch(2).loader() as loader:
            with pytest.raises(TypeError, match="no len"):
                len(loader)
            assert loader  # still truthy


def test_builder_is_immutable_and_picklable() -> None:
    base = Pipeline(5, seed=1).map(load_sample)
    longer = base.filter(DropMultiples(2))
    assert len(base.stages) == 1
    assert len(longer.stages) == 2
    assert pickle.loads(pickle.dumps(longer)) == longer


@pytest.mark.parametrize(
    ("build", "error", "message"),
    [
        (lambda: Pipeline(5).batch(0), ValueError, "batch_size=0 must be a positive integer"),
        (lambda: Pipeline(5).batch(-2), ValueError, "batch_size=-2 must be a positive integer"),
        (lambda: Pipeline(5).batch(2).batch(2), ValueError, "already"),
        (lambda: Pipeline(5).batch(2).map(load_sample), ValueError, "before batch"),
        (lambda: Pipeline(5).collate(collate_keys), ValueError, "needs batch"),
        (lambda: Pipeline(5).batch(2).collate(collate_keys).collate(collate_keys), ValueError, "already"),
        (lambda: Pipeline(5).map(3), TypeError, "needs a callable"),
        (lambda: Pipeline(-1), ValueError, "num_items=-1"),
        (lambda: Pipeline(5, seed=-1), ValueError, "seed=-1"),
        (lambda: Pipeline(5, rank=2, world_size=2), ValueError, "rank=2"),
        (lambda: Pipeline(5).loader(num_workers=-1), ValueError, "num_workers=-1 must be a non-negative integer"),
        (lambda: Pipeline(5).loader(worker_type="gpu"), ValueError, "worker_type='gpu'"),
        (lambda: Pipeline(5).loader(num_workers=2, max_concurrent=3), ValueError, "max_concurrent=3"),
        (lambda: Pipeline(5).loader(max_concurrent=1), ValueError, "max_concurrent=1"),
        (lambda: Pipeline(5).loader(multiprocessing_context="fork"), ValueError, "worker_type='process'"),
        (
            lambda: Pipeline(5).loader(worker_type="process", multiprocessing_context="teleport"),
            ValueError,
            "multiprocessing_context='teleport'",
        ),
        (lambda: Pipeline(5).loader(prefetch=0), ValueError, "prefetch=0"),
        (lambda: Pipeline(5).loader(in_order=False), ValueError, "in_order=False"),
    ],
)
def test_bad_arguments_are_rejected(build: Callable[[], Any], error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        build()


def test_a_state_from_a_differently_built_loader_is_refused_clearly() -> None:
    pipeline = Pipeline(num_items=10).map(load_sample).batch(2)
    with pipeline.loader(num_workers=2) as loader:
        iterator = iter(loader)
        next(iterator)
        state = loader.state_dict()
    with pipeline.loader(num_workers=0) as other, pytest.raises(ValueError, match="built differently"):
        other.load_state_dict(state)


def test_a_state_resumes_with_another_number_of_workers() -> None:
    pipeline = Pipeline(num_items=12, seed=3).map(load_sample).batch(2).collate(collate_keys)
    with pipeline.loader(num_workers=2) as loader:
        everything = list(loader)
    with pipeline.loader(num_workers=2) as loader:
        iterator = iter(loader)
        head = [next(iterator), next(iterator)]
        state = loader.state_dict()
    with pipeline.loader(num_workers=1) as other:
        other.load_state_dict(state)
        assert head + list(other) == everything


@pytest.mark.parametrize(("worker_type", "context"), [("thread", None), ("process", "fork")])
def test_deleting_a_loader_mid_epoch_leaves_no_worker(worker_type: Any, context: str | None) -> None:
    threads_before = set(threading.enumerate())
    children_before = _child_pids()
    loader = (
        Pipeline(40)
        .map(load_sample)
        .map(Sleep(0.01))
        .batch(2)
        .loader(num_workers=2, worker_type=worker_type, multiprocessing_context=context)
    )
    iterator = iter(loader)
    next(iterator)
    del iterator, loader  # no close(), no gc.collect(): reference counting alone must stop the workers
    assert _wait_until(lambda: not set(threading.enumerate()) - threads_before)
    assert _wait_until(lambda: not _child_pids() - children_before)
