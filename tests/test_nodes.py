"""Tests of datamint_pipes.nodes: Filter, Header, EpochSampler behind SamplerWrapper."""

from __future__ import annotations

import numpy as np
import pytest
from _pipeline_stages import check_node_save_load_state
from hypothesis import given, settings
from hypothesis import strategies as st
from torchdata.nodes import BaseNode, IterableWrapper, SamplerWrapper

from datamint_pipes.nodes import EpochSampler, EpochSamplerWrapper, Filter, Header


def permutation(num_items: int, seed: int, epoch: int) -> list[int]:
    """The documented order, computed without EpochSampler."""
    return [int(i) for i in np.random.default_rng((seed, epoch)).permutation(num_items)]


def is_odd(x: int) -> bool:
    return x % 2 == 1


def indices_node(num_items: int, seed: int = 0) -> BaseNode[int]:
    return EpochSamplerWrapper(EpochSampler(num_items, seed=seed))


# EpochSampler ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("num_items", "seed"), [(0, 0), (1, 3), (17, 0), (17, 5)])
def test_epoch_sampler_order_is_documented_permutation(num_items: int, seed: int) -> None:
    sampler = EpochSampler(num_items, seed=seed)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        assert list(sampler) == permutation(num_items, seed, epoch)
        assert all(isinstance(i, int) and i.epoch == epoch for i in sampler)  # plain ints, not numpy ints
        assert len(sampler) == num_items


def test_epoch_sampler_epochs_differ_and_repeat() -> None:
    sampler = EpochSampler(50, seed=1)
    orders = []
    for epoch in range(4):
        sampler.set_epoch(epoch)
        orders.append(list(sampler))
    assert len({tuple(order) for order in orders}) == 4
    assert all(sorted(order) == list(range(50)) for order in orders)
    again = EpochSampler(50, seed=1)
    again.set_epoch(2)
    assert list(again) == orders[2]
    assert list(EpochSampler(50, seed=2)) != orders[0]


def test_epoch_sampler_without_shuffle_is_range() -> None:
    sampler = EpochSampler(9, seed=4, shuffle=False)
    sampler.set_epoch(3)
    assert list(sampler) == list(range(9))


@settings(max_examples=60, deadline=None)
@given(
    num_items=st.integers(0, 30),
    world_size=st.integers(1, 5),
    seed=st.integers(0, 3),
    epoch=st.integers(0, 3),
    drop_last=st.booleans(),
)
def test_epoch_sampler_shards(num_items: int, world_size: int, seed: int, epoch: int, drop_last: bool) -> None:
    order = permutation(num_items, seed, epoch)
    shards = []
    for rank in range(world_size):
        sampler = EpochSampler(num_items, seed=seed, rank=rank, world_size=world_size, drop_last=drop_last)
        sampler.set_epoch(epoch)
        shards.append(list(sampler))
        assert len(shards[-1]) == len(sampler)
    lengths = {len(shard) for shard in shards}
    assert len(lengths) == 1  # equal length on every rank
    per_rank = lengths.pop()
    if drop_last:
        assert per_rank == num_items // world_size
        kept = order[: per_rank * world_size]
    else:
        assert per_rank == -(-num_items // world_size)
        kept = (order * (world_size + 1))[: per_rank * world_size] if num_items else []
    # Rank r takes positions r, r + world_size, ... of the (padded or cut) permutation.
    for rank, shard in enumerate(shards):
        assert shard == kept[rank::world_size]
    if drop_last or num_items % world_size == 0:
        assert sorted(i for shard in shards for i in shard) == sorted(kept)
        assert len({i for shard in shards for i in shard}) == len(kept)  # disjoint
    else:
        assert {i for shard in shards for i in shard} == set(range(num_items))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_items": -1}, "num_items=-1"),
        ({"num_items": 3, "seed": -2}, "seed=-2"),
        ({"num_items": 3, "world_size": 0}, "world_size=0"),
        ({"num_items": 3, "world_size": 2, "rank": 2}, "rank=2"),
        ({"num_items": 3, "rank": -1}, "rank=-1"),
    ],
)
def test_epoch_sampler_rejects_bad_arguments(kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        EpochSampler(**kwargs)


def test_epoch_sampler_rejects_negative_epoch() -> None:
    with pytest.raises(ValueError, match="epoch=-1"):
        EpochSampler(3).set_epoch(-1)


def test_sampler_wrapper_sets_epochs() -> None:
    node = indices_node(12, seed=7)
    assert list(node) == permutation(12, 7, 0)
    node.reset()
    assert list(node) == permutation(12, 7, 1)


@pytest.mark.parametrize("midpoint", [0, 1, 5, 11, 12])
def test_sampler_wrapper_save_load_state(midpoint: int) -> None:
    check_node_save_load_state(lambda: indices_node(12, seed=3), midpoint)


# Filter ------------------------------------------------------------------------------------------------------


def test_filter_keeps_matching_items_in_order() -> None:
    node = Filter(indices_node(20, seed=2), is_odd)
    assert list(node) == [i for i in permutation(20, 2, 0) if i % 2 == 1]
    node.reset()
    assert list(node) == [i for i in permutation(20, 2, 1) if i % 2 == 1]


def test_filter_of_nothing_is_empty() -> None:
    assert list(Filter(IterableWrapper([0, 2, 4]), is_odd)) == []


@pytest.mark.parametrize("midpoint", [0, 1, 4, 10])
def test_filter_save_load_state(midpoint: int) -> None:
    check_node_save_load_state(lambda: Filter(indices_node(20, seed=2), is_odd), midpoint)


@settings(max_examples=40, deadline=None)
@given(num_items=st.integers(0, 25), seed=st.integers(0, 5), midpoint=st.integers(0, 25))
def test_filter_save_load_state_property(num_items: int, seed: int, midpoint: int) -> None:
    check_node_save_load_state(lambda: Filter(indices_node(num_items, seed), is_odd), midpoint)


# Header ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 1, 5, 12, 30])
def test_header_yields_first_n(n: int) -> None:
    node = Header(indices_node(12, seed=1), n)
    assert list(node) == permutation(12, 1, 0)[:n]
    node.reset()
    assert list(node) == permutation(12, 1, 1)[:n]


def test_header_stops_pulling_its_source() -> None:
    pulled: list[int] = []

    def numbers():  # type: ignore[no-untyped-def]
        for i in range(10):
            pulled.append(i)
            yield i

    assert list(Header(IterableWrapper(numbers()), 3)) == [0, 1, 2]
    assert pulled == [0, 1, 2]


@pytest.mark.parametrize(("n", "midpoint"), [(0, 0), (5, 0), (5, 3), (5, 5), (30, 7)])
def test_header_save_load_state(n: int, midpoint: int) -> None:
    check_node_save_load_state(lambda: Header(indices_node(12, seed=1), n), midpoint)


def test_header_over_filter_save_load_state() -> None:
    check_node_save_load_state(lambda: Header(Filter(indices_node(30, seed=4), is_odd), 6), 2)


def test_plain_sampler_wrapper_repeats_epoch_after_header_restore() -> None:
    """Why EpochSamplerWrapper exists: 0.11's SamplerWrapper repeats the epoch here."""
    plain = Header(SamplerWrapper(EpochSampler(12, seed=1)), 5)
    end_state = {"source": {"_num_yielded": 5, "_epoch": 0}, "num_yielded": 5}
    plain.reset(end_state)
    assert list(plain) == []
    plain.reset()
    assert list(plain) == permutation(12, 1, 0)[:5]  # epoch 0 again
    fixed = Header(indices_node(12, seed=1), 5)
    fixed.reset(end_state)
    assert list(fixed) == []
    fixed.reset()
    assert list(fixed) == permutation(12, 1, 1)[:5]


@pytest.mark.parametrize("n", [-1, 1.5])
def test_header_rejects_bad_n(n: int) -> None:
    with pytest.raises(ValueError, match="n="):
        Header(IterableWrapper([1]), n)


def test_sampler_indices_carry_their_epoch_and_pickle() -> None:
    import pickle

    from datamint_pipes.nodes import EpochIndex

    sampler = EpochSampler(5, seed=1)
    sampler.set_epoch(3)
    drawn = list(sampler)
    assert [int(i) for i in drawn] == permutation(5, 1, 3)
    assert all(isinstance(i, EpochIndex) and i.epoch == 3 for i in drawn)
    copy = pickle.loads(pickle.dumps(drawn[0]))
    assert copy == drawn[0] and copy.epoch == 3 and [10, 11, 12, 13, 14][copy] == 10 + int(drawn[0])
