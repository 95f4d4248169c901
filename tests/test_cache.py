"""The machine-wide caches: atomic entries, single-flight creation across processes, LRU byte bound."""

from __future__ import annotations

import io
import multiprocessing
import os
import pickle
import signal
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from datamint_pipes import cache as cache_module
from datamint_pipes.cache import (
    ArrayCache,
    ByteCache,
    ChunkedArray,
    cache_key,
    from_slice_major,
    to_slice_major,
)
from datamint_pipes.errors import CacheError


def test_put_get_round_trip_is_memory_mapped_and_read_only(tmp_path: Path) -> None:
    cache = ArrayCache(tmp_path)
    array = np.arange(2 * 3 * 4 * 5, dtype=">i2").reshape(2, 3, 4, 5)
    key = cache_key("sha", "v1", "axial")
    assert cache.get(key) is None
    cache.put(key, array, {"spacing": (1.0, 0.5, 0.5)})
    hit = cache.get(key)
    assert hit is not None
    assert isinstance(hit.array, np.memmap)
    np.testing.assert_array_equal(hit.array, array)
    assert hit.array.dtype == array.dtype
    assert hit.meta["spacing"] == [1.0, 0.5, 0.5]
    with pytest.raises(ValueError):
        hit.array[0, 0, 0, 0] = 1  # read-only mapping
    assert pickle.loads(pickle.dumps(cache)).get(key) is not None


def test_keys_depend_on_every_part_and_are_checked(tmp_path: Path) -> None:
    assert cache_key("a", 1) == cache_key("a", 1)
    assert len({cache_key("a", 1), cache_key("a", 2), cache_key("b", 1), cache_key("a", 1, "axial")}) == 4
    cache = ArrayCache(tmp_path)
    with pytest.raises(CacheError):
        cache.get("../../etc/passwd")


def test_object_arrays_are_refused(tmp_path: Path) -> None:
    with pytest.raises(CacheError, match="pickle"):
        ArrayCache(tmp_path).put(cache_key("x"), np.array([{"a": 1}], dtype=object))


def test_a_damaged_or_foreign_file_is_never_served(tmp_path: Path) -> None:
    cache = ArrayCache(tmp_path)
    key = cache_key("damaged")
    cache.put(key, np.ones((4, 4), np.float32))
    path = cache.get(key).path  # type: ignore[union-attr]
    path.write_bytes(path.read_bytes()[:-7])  # torn: shorter than its header says
    assert cache.get(key) is None
    assert not path.exists()
    cache.put(key, np.ones((4, 4), np.float32))
    path.write_bytes(b"\x93NUMPY garbage that is not an npy header")
    assert cache.get(key) is None


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_slice_major_layout_puts_each_slice_in_one_contiguous_block(tmp_path: Path, axis: int) -> None:
    volume = np.random.default_rng(axis).integers(0, 1000, (2, 5, 6, 7), dtype=np.int16)
    cache = ArrayCache(tmp_path)
    entry = cache.put(cache_key("v", axis), to_slice_major(volume, axis))
    for k in range(volume.shape[axis + 1]):
        piece = entry.array[k]
        assert piece.flags["C_CONTIGUOUS"]
        np.testing.assert_array_equal(piece, np.take(volume, k, axis=axis + 1))
    np.testing.assert_array_equal(from_slice_major(entry.array, axis), volume)


def test_eviction_keeps_the_byte_bound_and_drops_least_recently_used(tmp_path: Path) -> None:
    entry_bytes = ArrayCache(tmp_path / "probe").put(cache_key("p"), np.zeros(1000, np.uint8)).path.stat().st_size
    meta_bytes = 100  # the JSON beside each array is well under this
    bound = 3 * (entry_bytes + meta_bytes)
    cache = ArrayCache(tmp_path / "c", max_bytes=bound)
    keys = [cache_key("k", i) for i in range(6)]
    for i, key in enumerate(keys[:3]):
        cache.put(key, np.full(1000, i, np.uint8))
        time.sleep(0.02)
    assert cache.get(keys[0]) is not None  # touch: keys[1] is now the least recently used
    time.sleep(0.02)
    for i, key in enumerate(keys[3:], start=3):
        cache.put(key, np.full(1000, i, np.uint8))
        assert cache.total_bytes() <= bound
        time.sleep(0.02)
    present = [i for i, key in enumerate(keys) if cache.get(key) is not None]
    assert present == [3, 4, 5] or present == [0, 4, 5]
    assert cache.get(keys[1]) is None and cache.get(keys[2]) is None
    assert all(p.suffix in (".npy", ".json") for p in (tmp_path / "c" / "arrays").glob("*/*"))


def _create_in_process(root: str, key: str, log_dir: str, value: int) -> list[int]:
    cache = ArrayCache(root)

    def create() -> tuple[np.ndarray, dict]:
        Path(log_dir, f"{os.getpid()}-{time.monotonic_ns()}").write_text(key)
        time.sleep(0.2)
        return np.full((64, 64), value, np.int32), {"by": os.getpid()}

    entry = cache.get_or_create(key, create)
    return [int(entry.array[0, 0]), int(entry.array.sum() // entry.array.size)]


def test_concurrent_processes_create_each_key_once_and_read_it_intact(tmp_path: Path) -> None:
    keys = [cache_key("shared", i) for i in range(3)]
    log_dir = tmp_path / "log"
    log_dir.mkdir()
    jobs = [(str(tmp_path / "cache"), keys[i % 3], str(log_dir), i % 3) for i in range(12)]
    with multiprocessing.get_context("fork").Pool(4) as pool:
        results = pool.starmap(_create_in_process, jobs)
    created = sorted(p.read_text() for p in log_dir.iterdir())
    assert created == sorted(keys), "each key must be created exactly once"
    for (_, key, _, value), (first, mean) in zip(jobs, results, strict=True):
        assert first == mean, "a reader saw a partial array"
        assert first == ArrayCache(tmp_path / "cache").get(key).array[0, 0]  # type: ignore[union-attr]
        assert value in (0, 1, 2)


def _slow_writer(root: str, key: str, ready: str) -> None:
    cache = ArrayCache(root)
    original = cache_module._write_bytes

    def stalling_write(handle, array):  # type: ignore[no-untyped-def]
        handle.write(b"partial")  # after the .npy header
        handle.flush()
        Path(ready).write_text("writing")
        time.sleep(60)
        original(handle, array)

    cache_module._write_bytes = stalling_write  # type: ignore[assignment]
    cache.put(key, np.zeros((256, 256), np.float32))


def test_a_writer_killed_mid_write_leaves_no_entry(tmp_path: Path) -> None:
    key = cache_key("killed")
    ready = tmp_path / "ready"
    process = multiprocessing.get_context("fork").Process(
        target=_slow_writer, args=(str(tmp_path / "cache"), key, str(ready))
    )
    process.start()
    deadline = time.monotonic() + 20
    while not ready.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert ready.exists()
    os.kill(process.pid, signal.SIGKILL)
    process.join(10)
    cache = ArrayCache(tmp_path / "cache")
    assert cache.get(key) is None
    leftovers = list((tmp_path / "cache" / "arrays").glob("*/.tmp-*"))
    assert leftovers, "the partial write should be a temp file"
    assert not list((tmp_path / "cache" / "arrays").glob("*/*.npy"))
    # Old temp files are swept at the next write; fresh ones (a live writer's) are left alone.
    old = time.time() - 7200
    for path in leftovers:
        os.utime(path, (old, old))
    cache.put(cache_key("next"), np.zeros(3))
    assert not list((tmp_path / "cache" / "arrays").glob("*/.tmp-*"))
    np.testing.assert_array_equal(cache.get_or_create(key, lambda: (np.ones(2), {})).array, np.ones(2))


def test_byte_cache_checks_size_and_publishes_nothing_on_a_short_body(tmp_path: Path) -> None:
    cache = ByteCache(tmp_path)
    key = cache_key("resource", "r1", ("2026-01-01", None, 6))
    with pytest.raises(CacheError, match="expected 6"):
        cache.put(key, [b"abc", b"de"], expected_size=6)
    assert cache.get(key) is None
    assert not list((tmp_path / "bytes").glob("*/*"))
    path = cache.put(key, [b"abc", b"def"], expected_size=6)
    assert path.read_bytes() == b"abcdef"
    assert cache.get(key) == path


def test_byte_cache_fetches_once_across_threads(tmp_path: Path) -> None:
    cache = ByteCache(tmp_path)
    key = cache_key("once")
    calls = []

    def fetch() -> list[bytes]:
        calls.append(1)
        time.sleep(0.1)
        return [b"payload"]

    paths = []
    threads = [threading.Thread(target=lambda: paths.append(cache.get_or_fetch(key, fetch))) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1
    assert {p.read_bytes() for p in paths} == {b"payload"}


def test_bad_max_bytes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_bytes"):
        ArrayCache(tmp_path, max_bytes=0)


# -- the compressed (lz4) entry format ----------------------------------------------------------------------

CHUNK_DTYPES = st.sampled_from(["|u1", "|b1", "<i2", ">i2", "<u2", "<i4", "<f4", ">f8", "<c8"])


@settings(max_examples=60, deadline=None)
@given(
    array=CHUNK_DTYPES.flatmap(
        lambda dtype: hnp.arrays(np.dtype(dtype), hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=6))
    )
)
def test_lz4_entries_round_trip_exactly_slice_by_slice(
    array: np.ndarray, tmp_path_factory: pytest.TempPathFactory
) -> None:
    cache = ArrayCache(tmp_path_factory.mktemp("lz4"), compression="lz4")
    key = cache_key("round-trip", array.dtype.str, array.shape, array.tobytes().hex()[:64])
    cache.put(key, array, {"spacing": [1.0]})
    hit = cache.get(key)
    assert hit is not None and isinstance(hit.array, ChunkedArray)
    assert hit.path.suffix == ".chunks"
    assert (hit.array.shape, hit.array.dtype, len(hit.array)) == (array.shape, array.dtype, array.shape[0])
    whole = hit.whole()
    assert whole.dtype == array.dtype and whole.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(whole, array)  # NaNs compare equal here, so bit-exact floats too
    assert whole.tobytes() == np.ascontiguousarray(array).tobytes()
    for k in (0, array.shape[0] - 1, -1):
        np.testing.assert_array_equal(hit.slice(k), array[k])
        assert hit.slice(k).tobytes() == np.take(array, [k], axis=0).tobytes()  # array[k] may be a native scalar
    with pytest.raises(IndexError):
        hit.slice(array.shape[0])


def test_lz4_makes_noisy_ct_like_slices_smaller_and_reads_one_slice(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    volume = (rng.normal(0, 10, (8, 64, 64)) - 1000).astype(np.int16)  # air with noise, as in CT
    volume[:, 16:48, 16:48] = (rng.normal(40, 10, (8, 32, 32))).astype(np.int16)
    plain = ArrayCache(tmp_path / "plain").put(cache_key("ct"), volume)
    packed = ArrayCache(tmp_path / "lz4", compression="lz4").put(cache_key("ct"), volume)
    assert packed.path.stat().st_size < 0.7 * plain.path.stat().st_size  # the byte shuffle is what makes this
    np.testing.assert_array_equal(packed.slice(3), volume[3])
    np.testing.assert_array_equal(packed.array[3, 5:9, 7], volume[3, 5:9, 7])  # int first index: one slice
    np.testing.assert_array_equal(packed.array[2:5], volume[2:5])


def test_every_cache_reads_both_formats_and_the_env_picks_the_writer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = np.arange(60, dtype=np.int16).reshape(3, 4, 5)
    ArrayCache(tmp_path, compression="lz4").put(cache_key("a"), data)
    ArrayCache(tmp_path, compression="none").put(cache_key("b"), data)
    for compression in ("none", "lz4"):
        reader = ArrayCache(tmp_path, compression=compression)  # type: ignore[arg-type]
        for key in ("a", "b"):
            np.testing.assert_array_equal(reader.get(cache_key(key)).whole(), data)  # type: ignore[union-attr]
    monkeypatch.setenv("DATAMINT_PIPES_CACHE_COMPRESSION", "lz4")
    from_env = ArrayCache(tmp_path)
    assert from_env.compression == "lz4"
    assert pickle.loads(pickle.dumps(from_env)).compression == "lz4"
    assert from_env.put(cache_key("c"), data).path.suffix == ".chunks"
    monkeypatch.setenv("DATAMINT_PIPES_CACHE_COMPRESSION", "zip")
    with pytest.raises(ValueError, match="compression"):
        ArrayCache(tmp_path)


def test_a_damaged_lz4_entry_is_never_served(tmp_path: Path) -> None:
    cache = ArrayCache(tmp_path, compression="lz4")
    key = cache_key("damaged-lz4")
    volume = np.random.default_rng(1).integers(0, 4000, (4, 32, 32), dtype=np.int16)
    path = cache.put(key, volume).path
    good = path.read_bytes()
    path.write_bytes(good[:-5])  # torn: offsets no longer match the size
    assert ArrayCache(tmp_path).get(key) is None and not path.exists()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"DMPCHNK1" + b"\xff" * 8)  # a header length past the end
    assert ArrayCache(tmp_path).get(key) is None
    # Bytes flipped inside a compressed slice: that slice raises (naming the file), never returns wrong data.
    cache.put(key, volume)
    damaged = bytearray(path.read_bytes())
    damaged[-40:-20] = b"\x00" * 20
    path.write_bytes(bytes(damaged))
    entry = ArrayCache(tmp_path).get(key)
    assert entry is not None
    np.testing.assert_array_equal(entry.slice(0), volume[0])
    try:
        last = entry.slice(3)
    except CacheError as error:
        assert str(path) in str(error)
    else:  # LZ4 has no checksum: a flip that still decodes must at least not be the original
        assert not np.array_equal(last, volume[3]) or damaged == good


@pytest.mark.parametrize("compression", ["none", "lz4"])
@pytest.mark.parametrize(
    "view",
    [
        lambda a: np.moveaxis(a, 2, 0),  # slice-major view of a (C,N,H,W) volume
        lambda a: np.moveaxis(a, 1, 0),  # frames of a (C,N,H,W) video: every (H,W) plane contiguous
        lambda a: np.asfortranarray(a),
        lambda a: a[:, ::-1, :, ::2],
        lambda a: a.astype(">i4")[:, :, 1:, :],
        lambda a: a.astype(">i2")[0, 0, :, ::2],  # 2D: its rows are single elements
    ],
    ids=["moveaxis", "frames", "fortran", "negative-strides", "big-endian-offset", "2d-big-endian-strided"],
)
def test_non_contiguous_arrays_are_stored_c_ordered_and_exact(tmp_path: Path, compression: str, view: Any) -> None:
    volume = np.random.default_rng(3).integers(-2000, 2000, (2, 5, 6, 7), dtype=np.int16)
    array = view(volume)
    assert not array.flags.c_contiguous
    entry = ArrayCache(tmp_path, compression=compression).put(cache_key("view", compression), array)  # type: ignore[arg-type]
    stored = ArrayCache(tmp_path).get(cache_key("view", compression))
    assert stored is not None
    for found in (entry, stored):
        whole = found.whole()
        assert whole.flags.c_contiguous and whole.dtype == array.dtype and whole.shape == array.shape
        np.testing.assert_array_equal(whole, array)
        np.testing.assert_array_equal(found.slice(1), array[1])


def test_an_entry_can_override_the_cache_format(tmp_path: Path) -> None:
    masks = np.zeros((3, 64, 64), np.uint8)
    masks[:, 10:20, 30:40] = 1
    cache = ArrayCache(tmp_path, compression="none")
    entry = cache.get_or_create(cache_key("masks"), lambda: (masks, {}), compression="lz4")
    assert entry.path.suffix == ".chunks" and entry.path.stat().st_size < masks.nbytes // 10
    np.testing.assert_array_equal(entry.whole(), masks)
    assert cache.put(cache_key("plain"), masks).path.suffix == ".npy"  # the cache's own format otherwise
    with pytest.raises(ValueError, match="compression"):
        cache.put(cache_key("bad"), masks, compression="zip")  # type: ignore[arg-type]


class _CountingWriter(io.BytesIO):
    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[int] = []

    def write(self, data: Any) -> int:
        self.sizes.append(memoryview(data).nbytes)
        return super().write(data)


@settings(max_examples=40, deadline=None)
@given(
    shape=st.lists(st.integers(0, 6), min_size=0, max_size=4),
    dtype=st.sampled_from([np.uint8, np.int16, np.float32, np.float64, np.bool_]),
    move=st.booleans(),
)
def test_npy_entries_are_byte_for_byte_what_np_save_writes(shape: list[int], dtype: Any, move: bool) -> None:
    """Whatever the layout (C-contiguous, a slice-major view, 0-d, empty), the entry is np.save's file."""
    array = np.arange(int(np.prod(shape)), dtype=np.int64).reshape(shape).astype(dtype)
    if move and array.ndim >= 2:
        array = np.moveaxis(array, -1, 0)  # what to_slice_major hands the cache: not C-contiguous
    written = _CountingWriter()
    cache_module._write_npy(written, array)
    expected = io.BytesIO()
    np.save(expected, array.copy(order="C"), allow_pickle=False)  # (ascontiguousarray would make 0-d 1-d)
    assert written.getvalue() == expected.getvalue()


def test_large_entries_are_written_a_mebibyte_at_a_time() -> None:
    for array in (np.ones((3, 1024, 1024), np.int16), np.ones((1024, 1024, 3), np.uint8).transpose(2, 0, 1)):
        written = _CountingWriter()
        cache_module._write_npy(written, array)
        assert max(written.sizes) <= cache_module._WRITE_BYTES
        assert sum(written.sizes[1:]) == array.nbytes  # the header is the first call
