"""Picklable stages for the ``items_per_task`` and shared-array tests (importable by spawned workers)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from datamint_pipes.cache import ArrayCache, cache_key


def volume(index: int) -> np.ndarray[Any, Any]:
    """The (4, 6, 8) int16 volume of resource ``index``."""
    return (np.arange(4 * 6 * 8, dtype=np.int16).reshape(4, 6, 8) * 3 + index).astype(np.int16)


def label(index: int, k: int) -> np.ndarray[Any, Any]:
    """A (2, 200, 200) uint8 label (80 kB: large enough to travel through shared memory)."""
    return np.full((2, 200, 200), index * 10 + k, np.uint8)


@dataclass(frozen=True)
class CachedVolumeSlices:
    """index -> the slices of ``volume(index)`` as views of its memory-mapped ``ArrayCache`` entry in ``root``:
    per slice a plain view (``image``), a flipped, strided one (``flipped``), and a ``label`` of its own."""

    root: str

    def __call__(self, index: int) -> list[dict[str, Any]]:
        entry = ArrayCache(self.root).get_or_create(cache_key("test-volume", int(index)), lambda: (volume(index), {}))
        whole = entry.array
        return [
            {
                "resource_id": f"res-{int(index)}",
                "index": int(index),
                "slice": k,
                "image": whole[k],
                "flipped": whole[k, ::-1, ::2],
                "label": label(index, k),
            }
            for k in range(whole.shape[0])
        ]
