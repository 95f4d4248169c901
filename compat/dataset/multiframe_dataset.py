"""``MultiFrameDataset``: items (C,N,H,W) -- volumes and videos."""

from __future__ import annotations

from ._items import Layout
from .base import DatamintBaseDataset

__all__ = ["MultiFrameDataset"]


class MultiFrameDataset(DatamintBaseDataset):
    """Abstract base for multi-frame datasets: ``image`` (C,N,H,W), instance masks (I,N,H,W)."""

    _layout: Layout = "volume"
