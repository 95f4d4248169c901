"""Tests of ``Pipeline.loader(items_per_task=...)``: several indices per worker task.

The invariants of one-index tasks must hold for every ``items_per_task``: the same output in every worker
mode, exact mid-epoch resume (also in the middle of a task, with expansion and a shuffle buffer), errors that
name the resource after the samples before them, dead-worker detection and no leftover workers. Expected
sequences come from the documented order (``test_pipeline.expected_keys``) or from ``num_workers=0``,
whose output test_pipeline checks against that order.
"""

from __future__ import annotations

import itertools
import multiprocessing
import threading
from typing import Any

import pytest
from _pipeline_stages import (
    DropMultiples,
    FailFor,
    KillWorkerAt,
    Sleep,
    SliceVolume,
    check_loader_save_load_state,
    load_sample,
    sample_key,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from test_pipeline import _child_pids, _wait_until, batched, expected_keys, make_pipeline

from datamint_pipes.errors import DecodeError, PipelineError
from datamint_pipes.pipeline import Loader, Pipeline

MODES = [
    pytest.param(1, "thread", None, id="1-thread"),
    pytest.param(2, "thread", None, id="2-threads"),
    pytest.param(2, "process", "fork", id="2-processes-fork"),
]


@pytest.mark.parametrize("items_per_task", [1, 2, 3, 64])
@pytest.mark.parametrize(("num_workers", "worker_type", "context"), MODES)
def test_output_does_not_depend_on_items_per_task(
    num_workers: int, worker_type: Any, context: str | None, items_per_task: int
) -> None:
    pipe = make_pipeline(23, seed=5)
    loader = pipe.loader(
        num_workers=num_workers, worker_type=worker_type, multiprocessing_context=context, items_per_task=items_per_task
    )
    with loader:
        epochs = [list(loader) for _ in range(2)]
    assert epochs == [batched(expected_keys(23, 5, epoch, drop=3, slices=3), 4) for epoch in range(2)]


def test_spawned_process_workers_take_chunks() -> None:
    pipe = make_pipeline(17, seed=2)
    with pipe.loader(num_workers=2, worker_type="process", multiprocessing_context="spawn", items_per_task=4) as loader:
        assert list(loader) == batched(expected_keys(17, 2, 0, drop=3, slices=3), 4)


def test_items_per_task_has_no_effect_without_workers() -> None:
    pipe = make_pipeline(10, seed=1)
    with pipe.loader() as plain, pipe.loader(items_per_task=8) as chunked:
        assert chunked._graph == plain._graph
        assert list(chunked) == list(plain)


@pytest.mark.parametrize("items_per_task", [0, -2, True, 1.5, "4"])
def test_items_per_task_is_validated(items_per_task: Any) -> None:
    with pytest.raises(ValueError, match=r"items_per_task=.* must be a positive integer"):
        Pipeline(5).map(load_sample).loader(num_workers=1, items_per_task=items_per_task)


# Resume --------------------------------------------------------------------------------------------------------


def _unbatched(
    num_items: int, seed: int, *, drop: int | None, slices: int | None, shuffle_block: int | None
) -> Pipeline:
    pipe = Pipeline(num_items, seed=seed).map(load_sample)
    if drop is not None:
        pipe = pipe.filter(DropMultiples(drop))
    if slices is not None:
        pipe = pipe.expand(SliceVolume(slices))
    if shuffle_block is not None:
        pipe = pipe.shuffle_buffer(shuffle_block)
    return pipe.map(sample_key)


@settings(max_examples=30, deadline=None)
@given(
    num_items=st.integers(0, 14),
    seed=st.integers(0, 3),
    drop=st.sampled_from([None, 3]),
    slices=st.sampled_from([None, 4]),
    shuffle_block=st.sampled_from([None, 1, 5]),
    items_per_task=st.integers(2, 5),
    num_workers=st.sampled_from([1, 2]),
    data=st.data(),
)
def test_resume_anywhere_in_a_task_gives_exactly_the_rest(
    num_items: int,
    seed: int,
    drop: int | None,
    slices: int | None,
    shuffle_block: int | None,
    items_per_task: int,
    num_workers: int,
    data: st.DataObject,
) -> None:
    pipe = _unbatched(num_items, seed, drop=drop, slices=slices, shuffle_block=shuffle_block)
    with pipe.loader() as reference:
        epoch0, epoch1 = list(reference), list(reference)
    assert epoch0 == expected_keys(num_items, seed, 0, drop=drop, slices=slices) or shuffle_block is not None
    k = data.draw(st.integers(0, len(epoch0)), label="items before the snapshot")
    with pipe.loader(num_workers=num_workers, items_per_task=items_per_task) as loader:
        iterator = iter(loader)
        head = list(itertools.islice(iterator, k))
        state = loader.state_dict()
    assert head == epoch0[:k]
    with pipe.loader(num_workers=num_workers, items_per_task=items_per_task) as fresh:
        fresh.load_state_dict(state)
        rest = list(fresh)
        # No loss, no duplicate: the head and the rest are the epoch; after its last item, the next epoch.
        assert rest == (epoch0[k:] or epoch1)
        assert fresh.num_yielded == (len(epoch0) if epoch0[k:] else len(epoch1))
        assert list(fresh) == (epoch1 if epoch0[k:] else list(reference_epoch(pipe, 2)))


def reference_epoch(pipe: Pipeline, epoch: int) -> list[Any]:
    with pipe.loader() as loader:
        for _ in range(epoch):
            list(loader)
        return list(loader)


@pytest.mark.parametrize(
    ("num_workers", "worker_type", "context", "prefetch", "midpoint"),
    [
        pytest.param(2, "thread", None, None, 3, id="2-threads-at-3"),
        pytest.param(1, "thread", None, 2, 5, id="1-thread-prefetch-at-5"),
        pytest.param(2, "process", "fork", None, 3, id="2-processes-fork-at-3"),
    ],
)
def test_full_graph_save_load_state_with_chunks(
    num_workers: int, worker_type: Any, context: str | None, prefetch: int | None, midpoint: int
) -> None:
    pipe = Pipeline(13, seed=9).map(load_sample).filter(DropMultiples(4)).expand(SliceVolume(3)).shuffle_buffer(5)
    pipe = pipe.map(sample_key)

    def make_loader() -> Loader[Any]:
        return pipe.loader(
            num_workers=num_workers,
            worker_type=worker_type,
            multiprocessing_context=context,
            prefetch=prefetch,
            items_per_task=3,
        )

    check_loader_save_load_state(make_loader, midpoint)


def test_a_state_resumes_only_with_the_same_items_per_task() -> None:
    pipe = make_pipeline(12, seed=3)
    with pipe.loader(num_workers=2, items_per_task=4) as loader:
        iterator = iter(loader)
        next(iterator)
        state = loader.state_dict()
    for other in (1, 2):
        with (
            pipe.loader(num_workers=2, items_per_task=other) as fresh,
            pytest.raises(ValueError, match="built differently"),
        ):
            fresh.load_state_dict(state)
    with pipe.loader(num_workers=1, items_per_task=4) as fresh:  # another number of workers is fine
        fresh.load_state_dict(state)
        assert list(fresh) == batched(expected_keys(12, 3, 0, drop=3, slices=3), 4)[1:]


# Errors and workers --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("num_workers", "worker_type", "context", "decode"),
    [
        pytest.param(2, "thread", None, False, id="2-threads-ValueError"),
        pytest.param(1, "thread", None, True, id="1-thread-DecodeError"),
        pytest.param(2, "process", "fork", True, id="2-processes-fork-DecodeError"),
        pytest.param(1, "process", "spawn", False, id="1-process-spawn-ValueError"),
    ],
)
@pytest.mark.parametrize("failing", [0, 2, 5], ids=lambda f: f"index-{f}")
def test_an_error_in_a_task_comes_after_the_samples_before_it(
    num_workers: int, worker_type: Any, context: str | None, decode: bool, failing: int
) -> None:
    # shuffle=False, 3 indices a task: index 0 fails first in its task, 2 last, 5 in the middle... of the second.
    pipe = (
        Pipeline(9, seed=0, shuffle=False).map(load_sample).map(FailFor(f"res-{failing}", decode=decode), name="decode")
    )
    pipe = pipe.map(sample_key)
    loader = pipe.loader(
        num_workers=num_workers, worker_type=worker_type, multiprocessing_context=context, items_per_task=3
    )
    got: list[Any] = []
    with loader, pytest.raises(DecodeError if decode else ValueError) as caught:
        for item in loader:
            got.append(item)
    assert got == [(i, -1) for i in range(failing)]
    message = str(caught.value)
    assert "boom" in message
    assert f"in stage decode for resource res-{failing}" in message


def test_dead_process_worker_fails_fast_with_chunks() -> None:
    pipe = Pipeline(12, seed=0, shuffle=False).map(load_sample).map(KillWorkerAt(4)).map(sample_key)
    children_before = set(multiprocessing.active_children())
    loader = pipe.loader(num_workers=2, worker_type="process", multiprocessing_context="fork", items_per_task=3)
    with loader, pytest.raises(PipelineError, match=r"process worker \d \(pid \d+\) was killed by signal SIGKILL"):
        list(loader)
    assert set(multiprocessing.active_children()) <= children_before


@pytest.mark.parametrize(("worker_type", "context"), [("thread", None), ("process", "fork")])
def test_close_mid_epoch_leaves_no_worker_with_chunks(worker_type: Any, context: str | None) -> None:
    threads_before = set(threading.enumerate())
    children_before = _child_pids()
    pipe = Pipeline(60, seed=0).map(load_sample).map(Sleep(0.005)).batch(2)
    loader = pipe.loader(num_workers=2, worker_type=worker_type, multiprocessing_context=context, items_per_task=4)
    iterator = iter(loader)
    next(iterator)
    loader.close()
    assert _wait_until(lambda: not set(threading.enumerate()) - threads_before)
    assert _wait_until(lambda: not _child_pids() - children_before)
    with pytest.raises(RuntimeError, match="superseded"):
        next(iterator)
