"""Picklable stages for the pipeline tests, and the shared save/load-state checks.

Stages live in an importable module (not in test files' closures) so spawned worker processes can unpickle
them. The checks follow torchdata's ``run_test_save_load_state``: iterate partway, take the state, finish;
then restore the state into a freshly built node or loader and require exactly the remaining items, and
the next epoch after them.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import pickle
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from torchdata.nodes import BaseNode

from datamint_pipes.errors import DecodeError
from datamint_pipes.pipeline import Loader


def load_sample(index: int) -> dict[str, Any]:
    """index -> a minimal sample."""
    return {"resource_id": f"res-{index}", "index": index}


@dataclass(frozen=True)
class DropMultiples:
    """Filter predicate: drop samples whose index is a multiple of ``modulus``."""

    modulus: int

    def __call__(self, sample: dict[str, Any]) -> bool:
        return sample["index"] % self.modulus != 0


@dataclass(frozen=True)
class SliceVolume:
    """Expansion: sample ``i`` becomes ``i % modulus`` slices (zero slices drops it)."""

    modulus: int

    def __call__(self, sample: dict[str, Any]) -> list[dict[str, Any]]:
        return [{**sample, "slice_index": j} for j in range(sample["index"] % self.modulus)]


def sample_key(sample: dict[str, Any]) -> tuple[int, int]:
    return (sample["index"], sample.get("slice_index", -1))


def collate_keys(batch: list[dict[str, Any]]) -> list[tuple[int, int]]:
    """Collate: a batch of samples -> their (index, slice_index) keys."""
    return [sample_key(sample) for sample in batch]


@dataclass(frozen=True)
class FailFor:
    """Raises for one resource: ``ValueError("boom")``, or ``DecodeError`` when ``decode`` is set."""

    resource_id: str
    decode: bool = False

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        if sample["resource_id"] == self.resource_id:
            if self.decode:
                raise DecodeError("boom: truncated pixel data")
            raise ValueError("boom")
        return sample


@dataclass(frozen=True)
class KillWorkerAt:
    """SIGKILLs the worker process handling ``index`` (refuses to kill a process that is not a worker)."""

    index: int

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        if sample["index"] == self.index:
            if multiprocessing.parent_process() is None:
                raise RuntimeError("KillWorkerAt must run in a worker process")
            os.kill(os.getpid(), signal.SIGKILL)
        return sample


@dataclass(frozen=True)
class Sleep:
    seconds: float

    def __call__(self, sample: Any) -> Any:
        time.sleep(self.seconds)
        return sample


def return_none(sample: Any) -> None:
    return None


def _take(iterator: Iterator[Any], count: int) -> list[Any]:
    return list(itertools.islice(iterator, count))


def _roundtrip(state: dict[str, Any]) -> dict[str, Any]:
    restored: dict[str, Any] = pickle.loads(pickle.dumps(state))  # a state must be plain, picklable data
    return restored


def check_node_save_load_state(make_node: Callable[[], BaseNode[Any]], midpoint: int) -> None:
    """States taken at the start, ``midpoint`` and end of epoch 0 and ``midpoint`` of epoch 1 of a node
    resume, in a fresh node, with exactly the rest of that epoch; then ``reset()`` gives the next epoch."""
    node = make_node()
    node.reset()
    initial = node.state_dict()
    epoch0 = _take(node, midpoint)
    mid0 = node.state_dict()
    epoch0 += list(node)
    end0 = node.state_dict()
    node.reset()
    epoch1 = _take(node, midpoint)
    mid1 = node.state_dict()
    epoch1 += list(node)
    cases = [(initial, epoch0, epoch1), (mid0, epoch0[midpoint:], epoch1), (end0, [], epoch1)]
    cases.append((mid1, epoch1[midpoint:], None))
    for state, rest, next_epoch in cases:
        fresh = make_node()
        fresh.reset(_roundtrip(state))
        assert list(fresh) == rest
        if next_epoch is not None:
            fresh.reset()
            assert list(fresh) == next_epoch


def check_loader_save_load_state(make_loader: Callable[[], Loader[Any]], midpoint: int) -> None:
    """Loader-level variant: states at ``midpoint`` and end of epoch 0, and at the start and ``midpoint`` of
    epoch 1, loaded into a fresh loader (after a premature ``state_dict()``, torchdata #1548) give exactly
    the remaining items with an exact ``num_yielded``, then the next epoch. A state after an epoch's last
    item resumes with the next epoch."""
    with make_loader() as loader:
        iterator = iter(loader)
        taken0 = _take(iterator, midpoint)
        mid0 = loader.state_dict()
        epoch0 = taken0 + list(iterator)
        end0 = loader.state_dict()
        iterator = iter(loader)
        start1 = loader.state_dict()
        taken1 = _take(iterator, midpoint)
        mid1 = loader.state_dict()
        epoch1 = taken1 + list(iterator)
    # (state, items expected, num_yielded before them, the epoch expected after them or None)
    rest0, rest1 = epoch0[len(taken0) :], epoch1[len(taken1) :]
    cases = [(mid0, rest0, len(taken0), epoch1) if rest0 else (mid0, epoch1, 0, None)]
    cases += [(end0, epoch1, 0, None), (start1, epoch1, 0, None)]
    if rest1:  # (a state at the end of epoch 1 would resume with epoch 2, not recorded here)
        cases.append((mid1, rest1, len(taken1), None))
    for state, expected, already, following in cases:
        with make_loader() as fresh:
            fresh.state_dict()
            fresh.load_state_dict(_roundtrip(state))
            assert fresh.state_dict() == state
            iterator = iter(fresh)
            got = _take(iterator, 1)
            assert fresh.num_yielded == already + len(got)
            got += list(iterator)
            assert got == expected
            assert fresh.num_yielded == already + len(expected)
            if following is not None:
                assert list(fresh) == following


@dataclass(frozen=True)
class RecordPid:
    """Stage: note the worker's pid in ``folder``, then sleep (so workers are busy when the parent dies)."""

    folder: str
    seconds: float = 0.5

    def __call__(self, sample: Any) -> Any:
        import os
        import time
        from pathlib import Path

        Path(self.folder, str(os.getpid())).touch()
        time.sleep(self.seconds)
        return sample
