"""Rank sharding for data-parallel training: which rank this process is, and which items it reads.

A :class:`~datamint_pipes.pipeline.Pipeline` built with ``rank=None`` / ``world_size=None`` (the defaults)
asks :func:`current_rank_and_world_size` when it builds a loader: ``torch.distributed`` when it is
initialised, else the ``RANK`` / ``WORLD_SIZE`` environment variables that ``torchrun`` sets, else a single
process (0, 1). Pass both explicitly to override (``rank=0, world_size=1`` reads the whole dataset on every
rank, e.g. for evaluation on rank 0 only).

How an epoch is sharded (:class:`~datamint_pipes.nodes.EpochSampler`, described by :class:`ShardInfo`):

* The global order of epoch ``e`` is ``numpy.random.default_rng((seed, e)).permutation(num_items)``
  (``range(num_items)`` without shuffling): a pure function of (seed, epoch), the same for every world size
  and worker count.
* That order is cut to a multiple of ``world_size`` -- padded by wrapping around to its own leading items
  (``shard_padding="pad"``, every item is read at least once and exactly :attr:`ShardInfo.num_padded`
  reads are duplicates), or with its last ``num_items % world_size`` items skipped for this epoch
  (``"drop"``, no duplicates; shuffled, a different tail each epoch) -- and rank ``r`` reads positions
  ``r, r + world_size, r + 2 * world_size, ...``. The shards are disjoint (up to the padding), every rank
  reads the same number of indices, and interleaving the ranks' items in stride order gives back the
  global order.
* A loader's ``state_dict()`` is per rank: each rank saves its own and restores exactly its remaining
  items. Loading it on another rank, world size, seed or dataset size raises ``ValueError``.

Equal index counts give equal item -- and therefore batch -- counts per rank only when every index yields
exactly one item (``map`` stages). A ``filter`` or a 1 -> N ``expand`` (volumes -> slices) runs *after*
sharding, so ranks that drew larger volumes yield more slices, and DDP ranks with different batch counts
hang in the last collective. For DDP over slices, shard the slices themselves: random access over a
:class:`~datamint_pipes.stages.cached.SliceIndex` (``Pipeline(len(index)).map(ReadSlice(...))``) gives
every rank the same number of slices. (If an expansion cannot be avoided, bound each epoch by the smallest
rank's batch count, or use ``torch.distributed.algorithms.Join``.) A ``shuffle_buffer()`` mixes each rank's
own stream, so the item order after it depends on the world size; the sharding above does not.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "SHARD_PADDINGS",
    "ShardInfo",
    "ShardPadding",
    "current_rank_and_world_size",
    "resolve_rank_and_world_size",
    "shard_info",
]

ShardPadding = Literal["pad", "drop"]
SHARD_PADDINGS: tuple[ShardPadding, ...] = ("pad", "drop")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check(rank: int, world_size: int, where: str) -> tuple[int, int]:
    if not _is_int(world_size) or world_size < 1:
        raise ValueError(f"{world_size=} must be a positive integer{where}")
    if not _is_int(rank) or not 0 <= rank < world_size:
        raise ValueError(f"{rank=} must be an integer in [0, {world_size=}){where}")
    return rank, world_size


def _from_environment(environ: Mapping[str, str]) -> tuple[int, int] | None:
    rank_text, world_size_text = environ.get("RANK"), environ.get("WORLD_SIZE")
    if rank_text is None and world_size_text is None:
        return None
    if rank_text is None or world_size_text is None:
        # Half a launcher environment: guessing (0, 1) would make every rank read the whole dataset.
        raise ValueError(
            f"the environment sets only one of RANK={rank_text!r} and WORLD_SIZE={world_size_text!r}; "
            "set both, or pass rank= and world_size= explicitly"
        )
    try:
        rank, world_size = int(rank_text), int(world_size_text)
    except ValueError:
        raise ValueError(
            f"environment RANK={rank_text!r} and WORLD_SIZE={world_size_text!r} must be integers"
        ) from None
    return _check(rank, world_size, " (from the environment variables RANK and WORLD_SIZE)")


def current_rank_and_world_size(environ: Mapping[str, str] | None = None) -> tuple[int, int]:
    """This process's ``(rank, world_size)`` for data sharding.

    In order: ``torch.distributed.get_rank()`` / ``get_world_size()`` of the default process group when
    ``torch.distributed`` is available and initialised; else the ``RANK`` and ``WORLD_SIZE`` variables of
    ``environ`` (default ``os.environ``; ``torchrun`` sets them, so this also works before
    ``init_process_group``); else ``(0, 1)``. Raises ``ValueError`` when only one of the two variables is
    set, or they are not integers with ``0 <= RANK < WORLD_SIZE``.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return _check(dist.get_rank(), dist.get_world_size(), " (from torch.distributed)")
    found = _from_environment(os.environ if environ is None else environ)
    return found if found is not None else (0, 1)


def resolve_rank_and_world_size(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """``(rank, world_size)`` with each ``None`` taken from :func:`current_rank_and_world_size`.

    Explicit values are returned as given (after validation) without looking at the environment.
    """
    if rank is None or world_size is None:
        current_rank, current_world_size = current_rank_and_world_size()
        rank = current_rank if rank is None else rank
        world_size = current_world_size if world_size is None else world_size
    return _check(rank, world_size, "")


@dataclass(frozen=True)
class ShardInfo:
    """Which positions of an epoch's global order of ``num_items`` indices rank ``rank`` reads.

    Every rank reads :attr:`items_per_rank` indices: the global positions :meth:`positions` (``rank``,
    ``rank + world_size``, ...) of the order padded by wrapping around (``padding="pad"``) or cut
    (``"drop"``) to :attr:`num_slots` = ``items_per_rank * world_size`` positions.
    """

    num_items: int
    rank: int
    world_size: int
    padding: ShardPadding = "pad"

    def __post_init__(self) -> None:
        if not _is_int(self.num_items) or self.num_items < 0:
            raise ValueError(f"num_items={self.num_items!r} must be a non-negative integer")
        _check(self.rank, self.world_size, "")
        if self.padding not in SHARD_PADDINGS:
            raise ValueError(f"padding={self.padding!r} must be one of {SHARD_PADDINGS}")

    @property
    def items_per_rank(self) -> int:
        """Indices every rank reads per epoch (the same on all ranks)."""
        if self.padding == "drop":
            return self.num_items // self.world_size
        return -(-self.num_items // self.world_size)

    @property
    def num_slots(self) -> int:
        """Indices read per epoch by all ranks together."""
        return self.items_per_rank * self.world_size

    @property
    def num_padded(self) -> int:
        """Reads per epoch, over all ranks, of an index some rank already reads (padding duplicates)."""
        return max(0, self.num_slots - self.num_items)

    @property
    def num_dropped(self) -> int:
        """Indices no rank reads this epoch (the tail of the global order, with ``padding="drop"``)."""
        return max(0, self.num_items - self.num_slots)

    def positions(self) -> range:
        """This rank's positions in the (padded or cut) global order, in the order it reads them."""
        return range(self.rank, self.num_slots, self.world_size)


def shard_info(
    num_items: int, *, rank: int | None = None, world_size: int | None = None, padding: ShardPadding = "pad"
) -> ShardInfo:
    """The :class:`ShardInfo` of ``num_items`` indices, with ``None`` rank or world size taken from
    :func:`current_rank_and_world_size`."""
    resolved_rank, resolved_world_size = resolve_rank_and_world_size(rank, world_size)
    return ShardInfo(num_items, resolved_rank, resolved_world_size, padding)
