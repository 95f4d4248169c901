"""Tests of datamint_pipes._shared_arrays: a process worker's outputs leave it with cache views by reference
and large arrays through shared memory; everything else is pickled by value.

``dumps`` is a plain ``pickle.Pickler`` given the module's memmap reducer; ``pack`` / ``unpack`` are tested
directly in this process, and through real process workers at the end.
"""

from __future__ import annotations

import copyreg
import io
import mmap
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _chunk_stages import CachedVolumeSlices, label, volume
from torchdata.nodes.exception_wrapper import ExceptionWrapper

from datamint_pipes import _shared_arrays
from datamint_pipes.cache import ArrayCache, cache_key, from_slice_major, to_slice_major
from datamint_pipes.errors import CacheError
from datamint_pipes.pipeline import Pipeline


def dumps(obj: Any) -> bytes:
    buffer = io.BytesIO()
    pickler = pickle.Pickler(buffer)
    pickler.dispatch_table = {**copyreg.dispatch_table, np.memmap: _shared_arrays.reduce_memmap}
    pickler.dump(obj)
    return buffer.getvalue()


def cached(root: Path, array: np.ndarray[Any, Any], name: str = "v") -> np.ndarray[Any, Any]:
    return ArrayCache(root).put(cache_key("shared-arrays-test", name, str(root)), array).array


def mapped_from_file(array: np.ndarray[Any, Any]) -> bool:
    base: Any = array
    while isinstance(base, np.ndarray):
        base = base.base
    if isinstance(base, memoryview):
        base = base.obj
    return isinstance(base, mmap.mmap)


VIEWS = {
    "whole": lambda a: a,
    "slice": lambda a: a[2],
    "strided": lambda a: a[1:, ::2, 3:],
    "flipped": lambda a: a[::-1, :, ::-2],
    "transposed": lambda a: a.T,
    "slice-major-round-trip": lambda a: from_slice_major(a, 0)[0, :, 1],
}


@pytest.mark.parametrize("view", VIEWS.values(), ids=VIEWS.keys())
def test_cache_views_travel_as_references_with_their_values(tmp_path: Path, view: Any) -> None:
    source = np.arange(5 * 6 * 7, dtype=np.float32).reshape(5, 6, 7)
    entry = cached(tmp_path, to_slice_major(source[None], 0)[:, 0])
    original = view(entry)
    assert isinstance(original, np.memmap)
    payload = dumps(original)
    assert len(payload) < 600 < original.nbytes or original.nbytes < 600  # a reference, not the values
    rebuilt = pickle.loads(payload)
    assert type(rebuilt) is np.ndarray
    assert rebuilt.dtype == original.dtype
    assert rebuilt.shape == original.shape
    np.testing.assert_array_equal(rebuilt, np.asarray(original))
    assert not rebuilt.flags.writeable
    assert mapped_from_file(rebuilt)


def test_big_views_are_not_copied(tmp_path: Path) -> None:
    entry = cached(tmp_path, np.ones((8, 256, 256), np.int16))
    payload = dumps([entry[k] for k in range(8)])
    assert len(payload) < 8 * 400 < entry.nbytes
    assert all(np.array_equal(view, np.ones((256, 256))) for view in pickle.loads(payload))


def test_other_memmaps_are_pickled_by_value(tmp_path: Path) -> None:
    data = np.arange(1000, dtype=np.int32)
    np.save(tmp_path / "user.npy", data)
    for array in (
        np.load(tmp_path / "user.npy", mmap_mode="r")[10:],  # not a cache entry
        np.load(tmp_path / "user.npy", mmap_mode="r+")[10:],  # writable
    ):
        payload = dumps(array)
        assert len(payload) > array.nbytes
        np.testing.assert_array_equal(pickle.loads(payload), data[10:])
    writable_entry = np.load(cached(tmp_path, data).filename, mmap_mode="r+")  # a cache entry, mapped writable
    assert _shared_arrays.reference(writable_entry) is None
    assert _shared_arrays.reference(cached(tmp_path, data, "same")[:0]) is None  # empty


def test_is_cache_entry_wants_the_cache_layout(tmp_path: Path) -> None:
    entry = cached(tmp_path, np.zeros(4))
    assert _shared_arrays.is_cache_entry(entry.filename)
    key = "ab" + "0" * 62
    assert _shared_arrays.is_cache_entry(f"/x/arrays/ab/{key}.npy")
    assert not _shared_arrays.is_cache_entry(f"/x/arrays/cd/{key}.npy")  # wrong fan-out folder
    assert not _shared_arrays.is_cache_entry(f"/x/bytes/ab/{key}.npy")
    assert not _shared_arrays.is_cache_entry(f"/x/arrays/ab/{key}.bin")
    assert not _shared_arrays.is_cache_entry("/x/arrays/ab/abXYZ123.npy")


def test_an_entry_evicted_before_it_is_mapped_is_a_clear_error(tmp_path: Path) -> None:
    entry = cached(tmp_path, np.arange(100, dtype=np.int64))
    payload = dumps(entry[5:])
    os.unlink(entry.filename)
    with pytest.raises(CacheError, match="was evicted before this process could map") as caught:
        pickle.loads(payload)
    assert str(entry.filename) in str(caught.value)


def test_an_entry_evicted_after_it_was_mapped_still_serves(tmp_path: Path) -> None:
    entry = cached(tmp_path, np.arange(100, dtype=np.int64))
    first, second = dumps(entry[:10]), dumps(entry[50:])
    np.testing.assert_array_equal(pickle.loads(first), np.arange(10))
    os.unlink(entry.filename)
    np.testing.assert_array_equal(pickle.loads(second), np.arange(50, 100))


def test_a_sender_whose_entry_is_gone_sends_the_values(tmp_path: Path) -> None:
    entry = cached(tmp_path, np.arange(100, dtype=np.int64))
    os.unlink(entry.filename)  # evicted while this process still has it mapped
    payload = dumps(entry[5:])
    assert len(payload) > 95 * 8
    np.testing.assert_array_equal(pickle.loads(payload), np.arange(5, 100))


def roundtrip(obj: Any) -> tuple[Any, bytes, Any]:
    """``pack`` then ``unpack`` in this process: (what the consumer gets, the pickled rest, the shared block's
    hand-over or None)."""
    function, args = _shared_arrays.pack(obj)
    assert function is _shared_arrays.unpack
    return function(*args), args[0], args[1]


def test_pack_sends_large_arrays_through_one_shared_block(tmp_path: Path) -> None:
    big = np.arange(300 * 400, dtype=np.int32).reshape(300, 400)
    fortran = np.asfortranarray(big[:, :200].astype(np.float64))
    outputs = [
        {"label": big, "again": big, "strided": big[::2, ::3], "fortran": fortran, "small": np.ones(3), "n": 7},
        {"view": cached(tmp_path, big)[5:], "text": "kept"},
    ]
    got, payload, shared = roundtrip(outputs)
    assert shared is not None
    assert len(payload) < 2000  # the big arrays went through shared memory, the cache view by reference
    first, second = got
    for key in ("label", "again", "strided", "fortran", "small"):
        assert type(first[key]) is np.ndarray
        np.testing.assert_array_equal(first[key], outputs[0][key])
        assert first[key].dtype == outputs[0][key].dtype
    assert first["again"] is first["label"]  # one object twice stays one object, as with pickle
    assert first["fortran"].flags.f_contiguous and first["strided"].flags.c_contiguous  # as pickling gives
    assert first["label"].flags.writeable
    assert first["n"] == 7 and second["text"] == "kept"
    np.testing.assert_array_equal(second["view"], big[5:])
    assert mapped_from_file(second["view"]) and not second["view"].flags.writeable


def test_pack_without_large_arrays_needs_no_block() -> None:
    got, _, shared = roundtrip([{"a": np.zeros(10), "b": [1, 2]}])
    assert shared is None
    np.testing.assert_array_equal(got[0]["a"], np.zeros(10))


def test_pack_falls_back_to_plain_pickling(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_room(size: int) -> Any:
        raise RuntimeError("no space left in /dev/shm")

    monkeypatch.setattr(_shared_arrays.torch.UntypedStorage, "_new_shared", no_room)
    outputs = [{"label": np.ones((300, 300))}]
    function, args = _shared_arrays.pack(outputs)
    assert function is not _shared_arrays.unpack
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(function(*args)))[0]["label"], np.ones((300, 300)))


def test_pack_goes_by_value_when_shared_memory_is_short(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_shared_arrays, "_shm_has_room", lambda size: False)
    function, args = _shared_arrays.pack([{"label": np.ones((300, 300))}])
    assert function is not _shared_arrays.unpack
    np.testing.assert_array_equal(function(*args)[0]["label"], np.ones((300, 300)))


def test_unpack_reports_an_evicted_entry_as_an_error_for_the_consumer(tmp_path: Path) -> None:
    entry = cached(tmp_path, np.arange(100, dtype=np.int64))
    function, args = _shared_arrays.pack([{"image": entry[3:]}])
    os.unlink(entry.filename)
    result = function(*args)
    assert isinstance(result, ExceptionWrapper)  # re-raised by the mapper where the consumer reaches the task
    with pytest.raises(CacheError, match="was evicted before this process could map"):
        result.reraise()


# Through the pipeline ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("num_workers", "worker_type", "context", "items_per_task"),
    [
        pytest.param(2, "process", "fork", 1, id="2-processes-fork"),
        pytest.param(2, "process", "spawn", 2, id="2-processes-spawn-chunks"),
        pytest.param(2, "thread", None, 3, id="2-threads-chunks"),
    ],
)
def test_process_workers_deliver_cache_slices_by_reference(
    tmp_path: Path, num_workers: int, worker_type: Any, context: str | None, items_per_task: int
) -> None:
    pipe = Pipeline(5, seed=1).expand(CachedVolumeSlices(str(tmp_path)))
    with pipe.loader() as loader:
        expected = [(s["index"], s["slice"]) for s in loader]
    loader = pipe.loader(
        num_workers=num_workers, worker_type=worker_type, multiprocessing_context=context, items_per_task=items_per_task
    )
    with loader:
        samples = list(loader)
    assert [(s["index"], s["slice"]) for s in samples] == expected
    for sample in samples:
        whole = volume(sample["index"])
        np.testing.assert_array_equal(sample["image"], whole[sample["slice"]])
        np.testing.assert_array_equal(sample["flipped"], whole[sample["slice"], ::-1, ::2])
        np.testing.assert_array_equal(sample["label"], label(sample["index"], sample["slice"]))
        assert not sample["image"].flags.writeable
        if worker_type == "process":  # re-mapped from the entry file here, not unpickled copies
            assert type(sample["image"]) is np.ndarray
            assert mapped_from_file(sample["image"]) and mapped_from_file(sample["flipped"])
