"""Tests of rank sharding: datamint_pipes.distributed and ``Pipeline(rank=, world_size=, shard_padding=)``.

Expected shards are computed here from the documented global order
(``numpy.random.default_rng((seed, epoch)).permutation``), never from the pipeline's own output. The last
tests run real ``torch.distributed`` gloo process groups on 127.0.0.1 (2 ranks spawned, 3 ranks forked).
"""

from __future__ import annotations

import collections
import datetime
import itertools
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytest
from _pipeline_stages import SliceVolume, load_sample, sample_key
from hypothesis import given, settings
from hypothesis import strategies as st

from datamint_pipes.distributed import (
    ShardInfo,
    current_rank_and_world_size,
    resolve_rank_and_world_size,
    shard_info,
)
from datamint_pipes.pipeline import Pipeline

Padding = Literal["pad", "drop"]


def global_order(num_items: int, seed: int, epoch: int) -> list[int]:
    """The documented order of one epoch, the same for every world size."""
    return [int(i) for i in np.random.default_rng((seed, epoch)).permutation(num_items)]


def cut_order(order: list[int], world_size: int, padding: Padding) -> list[int]:
    """The order padded by wrapping around, or cut, to a multiple of ``world_size`` (independent of ShardInfo)."""
    if padding == "drop":
        return order[: len(order) - len(order) % world_size]
    slots = -(-len(order) // world_size) * world_size
    return list(itertools.islice(itertools.cycle(order), slots)) if order else []


def index_pipeline(
    num_items: int, seed: int, rank: int, world_size: int, padding: Padding, batch_size: int | None = None
) -> Pipeline:
    pipe = Pipeline(num_items, seed=seed, rank=rank, world_size=world_size, shard_padding=padding)
    pipe = pipe.map(load_sample).map(sample_key)
    return pipe.batch(batch_size) if batch_size is not None else pipe


def flatten(batches: list[Any], batched: bool) -> list[int]:
    keys = [key for batch in batches for key in batch] if batched else batches
    return [index for index, _ in keys]


def test_public_surface_is_exactly_all() -> None:
    from datamint_pipes import distributed

    assert sorted(distributed.__all__) == [
        "SHARD_PADDINGS",
        "ShardInfo",
        "ShardPadding",
        "current_rank_and_world_size",
        "resolve_rank_and_world_size",
        "shard_info",
    ]
    imported = {"annotations", "os", "Mapping", "dataclass", "Literal"}
    assert {name for name in vars(distributed) if not name.startswith("_")} - imported == set(distributed.__all__)


# current_rank_and_world_size ----------------------------------------------------------------------------------


def test_single_process_without_environment() -> None:
    assert current_rank_and_world_size({}) == (0, 1)
    assert current_rank_and_world_size({"LOCAL_RANK": "3"}) == (0, 1)  # the global rank is what shards data


def test_launcher_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert current_rank_and_world_size({"RANK": "2", "WORLD_SIZE": "4"}) == (2, 4)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert current_rank_and_world_size() == (1, 3)
    assert shard_info(10) == ShardInfo(10, 1, 3, "pad")
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    assert current_rank_and_world_size() == (0, 1)


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"RANK": "1"}, "only one of RANK='1' and WORLD_SIZE=None"),
        ({"WORLD_SIZE": "2"}, "only one of RANK=None and WORLD_SIZE='2'"),
        ({"RANK": "one", "WORLD_SIZE": "2"}, "RANK='one' and WORLD_SIZE='2' must be integers"),
        ({"RANK": "2", "WORLD_SIZE": "2"}, r"rank=2 must be an integer in \[0, world_size=2\) \(from the environ"),
        ({"RANK": "0", "WORLD_SIZE": "0"}, "world_size=0 must be a positive integer"),
    ],
)
def test_bad_launcher_environment_is_rejected(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        current_rank_and_world_size(environ)


def test_explicit_values_win_and_fill_in(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "1")  # half an environment: an error, but only when it is consulted
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert resolve_rank_and_world_size(3, 4) == (3, 4)
    with pytest.raises(ValueError, match="only one of"):
        resolve_rank_and_world_size(None, 4)
    monkeypatch.setenv("WORLD_SIZE", "5")
    assert resolve_rank_and_world_size(None, None) == (1, 5)
    assert resolve_rank_and_world_size(None, 2) == (1, 2)
    assert resolve_rank_and_world_size(4, None) == (4, 5)
    with pytest.raises(ValueError, match="rank=3 must be an integer in"):
        resolve_rank_and_world_size(3, 2)


def test_pipeline_resolves_rank_when_a_loader_is_built(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    pipe = Pipeline(10, seed=4).map(load_sample).map(sample_key)  # described before the launcher is known
    assert (pipe.rank, pipe.world_size) == (None, None)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert pipe.shard_info() == ShardInfo(10, 1, 3, "pad")
    with pipe.loader() as loader:
        assert len(loader) == 4
        assert [index for index, _ in loader] == cut_order(global_order(10, 4, 0), 3, "pad")[1::3]
    explicit = Pipeline(10, seed=4, rank=0, world_size=1)  # explicit values ignore the environment
    assert len(explicit.sampler()) == 10


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"shard_padding": "wrap"}, "shard_padding='wrap' must be one of"),
        ({"rank": -1}, "rank=-1 must be None or a non-negative integer"),
        ({"rank": True}, "rank=True"),
        ({"world_size": 0}, "world_size=0 must be None or a positive integer"),
        ({"world_size": 2.0}, "world_size=2.0"),
        ({"rank": 3, "world_size": 2}, r"rank=3 must be an integer in \[0, world_size=2\)"),
    ],
)
def test_pipeline_rejects_bad_sharding(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Pipeline(5, **kwargs)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((-1, 0, 1), "num_items=-1"),
        ((5, 2, 2), "rank=2"),
        ((5, 0, 0), "world_size=0"),
        ((5, 0, 1, "wrap"), "padding='wrap'"),
    ],
)
def test_shard_info_rejects_bad_arguments(args: tuple[Any, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ShardInfo(*args)


# Sharding properties ------------------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    num_items=st.integers(0, 40),
    world_size=st.integers(1, 4),
    padding=st.sampled_from(["pad", "drop"]),
    seed=st.integers(0, 3),
    epoch=st.integers(0, 3),
)
def test_shard_info_describes_the_sampler(
    num_items: int, world_size: int, padding: Padding, seed: int, epoch: int
) -> None:
    cut = cut_order(global_order(num_items, seed, epoch), world_size, padding)
    for rank in range(world_size):
        info = ShardInfo(num_items, rank, world_size, padding)
        sampler = index_pipeline(num_items, seed, rank, world_size, padding).sampler()
        sampler.set_epoch(epoch)
        assert len(sampler) == info.items_per_rank == len(info.positions())
        assert sampler.indices() == [cut[position] for position in info.positions()]
        assert info.num_slots == len(cut)
        assert info.num_padded == (len(cut) - num_items if padding == "pad" else 0)
        assert info.num_dropped == (num_items % world_size if padding == "drop" else 0)


@settings(max_examples=30, deadline=None)
@given(
    num_items=st.integers(0, 40),
    world_size=st.integers(1, 4),
    num_workers=st.integers(0, 2),
    padding=st.sampled_from(["pad", "drop"]),
    batch_size=st.sampled_from([None, 1, 3]),
    seed=st.integers(0, 3),
)
def test_ranks_partition_the_single_process_epoch(
    num_items: int, world_size: int, num_workers: int, padding: Padding, batch_size: int | None, seed: int
) -> None:
    """(Epoch 0 only: the sampler test above covers other epochs, the resume test epoch 1 through loaders.)"""
    batched = batch_size is not None
    with index_pipeline(num_items, seed, 0, 1, padding, batch_size).loader() as loader:
        single = flatten(list(loader), batched)  # one process, no workers
    assert single == global_order(num_items, seed, 0)
    shards: list[list[int]] = []
    batch_counts = []
    for rank in range(world_size):
        pipe = index_pipeline(num_items, seed, rank, world_size, padding, batch_size)
        with pipe.loader(num_workers=num_workers) as loader:
            batches = list(loader)
            assert len(loader) == len(batches)
        batch_counts.append(len(batches))
        shards.append(flatten(batches, batched))
    info = ShardInfo(num_items, 0, world_size, padding)
    # Equal item and batch counts on every rank.
    assert {len(shard) for shard in shards} == {info.items_per_rank}
    assert len(set(batch_counts)) == 1
    # Interleaving the ranks in stride order gives back the single-process order (padded or cut).
    interleaved = [shards[position % world_size][position // world_size] for position in range(info.num_slots)]
    assert interleaved == cut_order(single, world_size, padding)
    # No index lost (pad) / none read twice (drop); padding adds exactly num_padded reads: the leading indices.
    reads = collections.Counter(index for shard in shards for index in shard)
    duplicates = reads - collections.Counter(single)
    if padding == "pad":
        assert set(reads) == set(single)
        assert sum(duplicates.values()) == info.num_padded == info.num_slots - num_items
        assert duplicates == collections.Counter(itertools.islice(itertools.cycle(single), num_items, info.num_slots))
        if num_items >= world_size:
            assert max(reads.values()) <= 2  # a wrap-around pads at most once per index
    else:
        assert not duplicates
        assert sum(reads.values()) == num_items - num_items % world_size
        assert set(single) - set(reads) == set(single[info.num_slots :])


@settings(max_examples=20, deadline=None)
@given(
    num_items=st.integers(0, 40),
    world_size=st.integers(1, 4),
    num_workers=st.sampled_from([0, 0, 1, 2]),  # (each epoch with workers costs ~0.1 s of torchdata polling)
    padding=st.sampled_from(["pad", "drop"]),
    batch_size=st.sampled_from([None, 2]),
    seed=st.integers(0, 3),
    data=st.data(),
)
def test_resume_per_rank_mid_epoch(
    num_items: int,
    world_size: int,
    num_workers: int,
    padding: Padding,
    batch_size: int | None,
    seed: int,
    data: st.DataObject,
) -> None:
    """Every rank checkpoints at its own point; each rank's restored loader yields exactly its remaining items,
    then its shard of the next epoch, and the ranks together still read the whole epoch."""
    batched = batch_size is not None
    cut = [cut_order(global_order(num_items, seed, epoch), world_size, padding) for epoch in range(2)]
    resumed_shards = []
    for rank in range(world_size):
        pipe = index_pipeline(num_items, seed, rank, world_size, padding, batch_size)
        with pipe.loader(num_workers=num_workers) as loader:
            iterator = iter(loader)
            num_batches = len(loader)
            count = data.draw(st.integers(0, num_batches), label=f"batches rank {rank} takes before its snapshot")
            before = [next(iterator) for _ in range(count)]
            state = loader.state_dict()
        with pipe.loader(num_workers=num_workers) as fresh:
            fresh.load_state_dict(state)
            rest = list(fresh)
            assert fresh.num_yielded == num_batches
            following = list(fresh)
        if count < num_batches:  # the rest of epoch 0, then epoch 1
            shard = flatten(before + rest, batched)
            assert flatten(following, batched) == cut[1][rank::world_size]
        else:  # a snapshot after the epoch's last batch (or of an empty shard) resumes with epoch 1
            shard = flatten(before, batched)
            assert flatten(rest, batched) == cut[1][rank::world_size]
        assert shard == cut[0][rank::world_size]
        resumed_shards.append(shard)
    assert sorted(index for shard in resumed_shards for index in shard) == sorted(cut[0])


def test_restoring_another_ranks_state_is_refused() -> None:
    with index_pipeline(10, 1, 0, 2, "pad").loader() as loader:
        iterator = iter(loader)
        next(iterator)
        state = loader.state_dict()
    others: list[tuple[int, int, Padding, str]] = [
        (1, 2, "pad", r"rank=0 \(now 1\)"),
        (0, 4, "pad", r"world_size=2 \(now 4\)"),
        (0, 2, "drop", r"drop_last=False \(now True\)"),
    ]
    for rank, world_size, padding, message in others:
        with index_pipeline(10, 1, rank, world_size, padding).loader() as other:
            other.load_state_dict(state)
            with pytest.raises(ValueError, match="differently configured sampler: " + message):
                iter(other)
    with index_pipeline(11, 1, 0, 2, "pad").loader() as other:
        other.load_state_dict(state)
        with pytest.raises(ValueError, match=r"num_items=10 \(now 11\)"):
            iter(other)
    with index_pipeline(10, 1, 0, 2, "pad").loader() as same:
        same.load_state_dict(state)
        assert [index for index, _ in same] == cut_order(global_order(10, 1, 0), 2, "pad")[0::2][1:]


# Expansion after sharding, and random access over slices ------------------------------------------------------


def test_expansion_after_sharding_can_give_ranks_unequal_counts() -> None:
    """The documented caveat: volumes are sharded, their slices are not, so slice counts per rank differ."""
    order = global_order(12, 0, 0)
    pipes = [
        Pipeline(12, seed=0, rank=rank, world_size=2).map(load_sample).expand(SliceVolume(4)).map(sample_key)
        for rank in range(2)
    ]
    shards = []
    for pipe in pipes:
        with pipe.loader(num_workers=2) as loader:
            shards.append(list(loader))
    expected = [[(index, j) for index in order[rank::2] for j in range(index % 4)] for rank in range(2)]
    assert shards == expected
    assert len(shards[0]) != len(shards[1])  # (for this seed: 7 vs 11 slices)
    assert sorted(shards[0] + shards[1]) == sorted((index, j) for index in range(12) for j in range(index % 4))


@dataclass(frozen=True)
class SlicePosition:
    """Random-access stage: global slice index -> (resource position, slice number)."""

    index: Any  # a SliceIndex

    def __call__(self, slice_index: int) -> tuple[int, int]:
        return self.index[slice_index]


@pytest.mark.parametrize("padding", ["pad", "drop"])
def test_random_access_over_a_slice_index_shards_slices_evenly(padding: Padding) -> None:
    # (Imported here: the spawned ranks below import this module, and the stages pull in every decoder.)
    from datamint_pipes.model import Resource
    from datamint_pipes.stages.cached import SliceIndex

    depths = [1, 7, 2, 9, 3]  # volumes of very different depth, and a 2D image
    resources = [
        Resource(id=f"vol-{position}", filename=f"vol-{position}.nii", metadata={"shape": [1, depth, 4, 4]})
        for position, depth in enumerate(depths)
    ] + [Resource(id="img", filename="img.png", metadata={"shape": [3, 8, 8]})]
    index = SliceIndex.from_resources(resources, slice_axis=0)
    assert len(index) == sum(depths) + 1 == 23
    world_size = 3
    shards = []
    for rank in range(world_size):
        pipe = Pipeline(len(index), seed=2, rank=rank, world_size=world_size, shard_padding=padding)
        with pipe.map(SlicePosition(index)).batch(2).loader(num_workers=2) as loader:
            shards.append([pair for batch in loader for pair in batch])
    info = ShardInfo(len(index), 0, world_size, padding)
    assert {len(shard) for shard in shards} == {info.items_per_rank}  # 8 (pad) or 7 (drop) slices each
    reads = collections.Counter(pair for shard in shards for pair in shard)
    every_slice = {(position, number) for position, depth in enumerate(depths) for number in range(depth)}
    every_slice.add((len(depths), 0))
    if padding == "pad":
        assert set(reads) == every_slice and sum(reads.values()) - len(every_slice) == info.num_padded == 1
    else:
        assert set(reads) <= every_slice and len(reads) == sum(reads.values()) == len(every_slice) - 2


# Real torch.distributed process groups -------------------------------------------------------------------------

NUM_ITEMS = 23  # not a multiple of 2 or 3: padding and dropping both show
SEED = 11


def _rank_main(rank: int, world_size: int, port: int, out_dir: str) -> None:
    """One rank: a Pipeline that takes its rank from torch.distributed, two epochs (the second interrupted
    and resumed in a fresh loader), per padding mode; all ranks' items are gathered on rank 0."""
    import torch.distributed as dist

    # A launcher environment that contradicts the process group: torch.distributed must win once initialised.
    os.environ["RANK"], os.environ["WORLD_SIZE"] = "0", "1"
    if sys.platform.startswith("linux"):
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # loopback only, whatever the host name resolves to
    timeout = datetime.timedelta(seconds=60)
    pipes = {
        padding: Pipeline(NUM_ITEMS, seed=SEED, shard_padding=padding).map(load_sample).map(sample_key)
        for padding in ("pad", "drop")
    }  # described before the process group exists
    assert current_rank_and_world_size() == (0, 1)
    store = dist.TCPStore("127.0.0.1", port, is_master=False, timeout=timeout)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world_size, timeout=timeout)
    try:
        assert current_rank_and_world_size() == (rank, world_size)
        report: dict[str, Any] = {"rank": rank}
        for padding, pipe in pipes.items():
            with pipe.loader(num_workers=2) as loader:
                epoch0 = [index for index, _ in loader]
                iterator = iter(loader)
                epoch1 = [index for index, _ in itertools.islice(iterator, 1 + rank)]
                state = loader.state_dict()
            with pipe.loader(num_workers=2) as resumed:
                resumed.load_state_dict(state)
                epoch1 += [index for index, _ in resumed]
            report[padding] = {"positions": list(pipe.shard_info().positions()), "epochs": [epoch0, epoch1]}
        gathered: list[Any] = [None] * world_size
        dist.all_gather_object(gathered, report)
        if rank == 0:
            assert [entry["rank"] for entry in gathered] == list(range(world_size))
            for padding in ("pad", "drop"):
                for epoch in range(2):
                    union = {index for entry in gathered for index in entry[padding]["epochs"][epoch]}
                    expected = global_order(NUM_ITEMS, SEED, epoch)
                    if padding == "drop":
                        expected = expected[: NUM_ITEMS - NUM_ITEMS % world_size]
                    assert union == set(expected), (padding, epoch)
            Path(out_dir, f"world-{world_size}.json").write_text(json.dumps(gathered))
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize(("world_size", "start_method"), [(2, "spawn"), (3, "fork")])
def test_real_process_group_ranks_cover_the_epoch(world_size: int, start_method: str, tmp_path: Path) -> None:
    import torch.distributed as dist
    import torch.multiprocessing as torch_mp

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with the gloo backend is not available")
    if start_method not in torch_mp.get_all_start_methods():
        pytest.skip(f"start method {start_method} is not available here")
    # The parent holds the store server on a port the OS picked (no race for a "free" port).
    store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    context = torch_mp.start_processes(
        _rank_main,
        args=(world_size, store.port, str(tmp_path)),
        nprocs=world_size,
        join=False,
        start_method=start_method,
    )
    deadline = time.monotonic() + 120
    while not context.join(timeout=1):  # raises, with the rank's traceback, if a rank failed
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"the {world_size} ranks did not finish within 120 s")
    gathered = json.loads((tmp_path / f"world-{world_size}.json").read_text())
    for padding in ("pad", "drop"):
        info = ShardInfo(NUM_ITEMS, 0, world_size, padding)
        for epoch in range(2):
            shards = [entry[padding]["epochs"][epoch] for entry in gathered]
            assert {len(shard) for shard in shards} == {info.items_per_rank}
            cut = cut_order(global_order(NUM_ITEMS, SEED, epoch), world_size, padding)
            assert shards == [cut[rank::world_size] for rank in range(world_size)]
        assert [entry[padding]["positions"] for entry in gathered] == [
            list(ShardInfo(NUM_ITEMS, rank, world_size, padding).positions()) for rank in range(world_size)
        ]
