"""BlockShuffle: slices of several volumes mix, deterministically per (seed, epoch), and resume exactly."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from _pipeline_stages import (
    SliceVolume,
    check_loader_save_load_state,
    check_node_save_load_state,
    collate_keys,
    load_sample,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from torchdata.nodes import IterableWrapper

from datamint_pipes.nodes import BlockShuffle
from datamint_pipes.pipeline import Pipeline


def expected_epoch(items: list[int], block_size: int, seed: int, epoch: int) -> list[int]:
    """The documented order, computed independently: permute each consecutive block."""
    out = []
    for b, start in enumerate(range(0, len(items), block_size)):
        block = items[start : start + block_size]
        order = np.random.default_rng((seed, epoch, b)).permutation(len(block))
        out += [block[i] for i in order]
    return out


@pytest.mark.parametrize(("num_items", "block_size"), [(10, 4), (12, 4), (3, 8), (0, 2), (7, 1)])
def test_order_is_the_documented_block_permutation(num_items: int, block_size: int) -> None:
    node = BlockShuffle(IterableWrapper(range(num_items)), block_size, seed=5)
    items = list(range(num_items))
    for epoch in range(3):
        node.reset()
        assert list(node) == expected_epoch(items, block_size, 5, epoch)


@settings(max_examples=30, deadline=None)
@given(num_items=st.integers(0, 30), block_size=st.integers(1, 9), midpoint=st.integers(0, 30))
def test_save_load_state(num_items: int, block_size: int, midpoint: int) -> None:
    check_node_save_load_state(
        lambda: BlockShuffle(IterableWrapper(range(num_items)), block_size, seed=1), min(midpoint, num_items)
    )


def test_bad_block_size() -> None:
    with pytest.raises(ValueError, match="block_size"):
        BlockShuffle(IterableWrapper(range(3)), 0)
    with pytest.raises(ValueError, match="block_size"):
        Pipeline(num_items=3).shuffle_buffer(0)
    with pytest.raises(ValueError, match="before batch"):
        Pipeline(num_items=3).batch(2).shuffle_buffer(4)


def _pipeline(block: int) -> Pipeline:
    return (
        Pipeline(num_items=12, seed=4)
        .map(load_sample)
        .expand(SliceVolume(5))
        .shuffle_buffer(block)
        .batch(3)
        .collate(collate_keys)
    )


def test_slices_of_different_volumes_mix_and_none_is_lost() -> None:
    with _pipeline(8).loader() as loader:
        keys = [key for batch in loader for key in batch]
    assert Counter(keys) == Counter((i, j) for i in range(12) for j in range(i % 5))
    volumes_per_batch = [len({i for i, _ in keys[k : k + 3]}) for k in range(0, len(keys), 3)]
    assert max(volumes_per_batch) > 1


@pytest.mark.parametrize("num_workers", [0, 1, 2])
def test_same_order_for_any_number_of_thread_workers(num_workers: int) -> None:
    with _pipeline(8).loader() as reference:
        expected = [list(reference), list(reference)]
    with _pipeline(8).loader(num_workers=num_workers) as loader:
        assert [list(loader), list(loader)] == expected


@settings(max_examples=15, deadline=None)
@given(midpoint=st.integers(0, 12), block=st.integers(1, 10), num_workers=st.sampled_from([0, 2]))
def test_loader_resumes_exactly_with_expansion_and_shuffle_buffer(midpoint: int, block: int, num_workers: int) -> None:
    check_loader_save_load_state(lambda: _pipeline(block).loader(num_workers=num_workers), midpoint)
