"""``SlicedVideoDataset``: one 2D item per frame of every video."""

from __future__ import annotations

from typing import Any

from .base import DatamintBaseDataset
from .sliced_dataset import SlicedVolumeDataset

__all__ = ["SlicedVideoDataset"]


class SlicedVideoDataset(SlicedVolumeDataset):
    """2D dataset of video frames: ``image`` (C,H,W), masks (I,H,W) or semantic (L+1,H,W).

    Each video is decoded once per machine (one sequential decode, then memory-mapped), never once per frame.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        parent = kwargs.pop("parent_dataset", None)
        if args:
            raise TypeError("SlicedVideoDataset takes keyword arguments (see DatamintBaseDataset)")
        super().__init__(slice_axis="axial", parent_dataset=parent, **kwargs)

    @classmethod
    def from_dataset(cls, parent_dataset: DatamintBaseDataset, slice_axis: Any = "axial") -> SlicedVideoDataset:
        """Frames of an already prepared dataset, without fetching anything again."""
        parent_dataset._prepare()
        return cls(parent_dataset=parent_dataset)
