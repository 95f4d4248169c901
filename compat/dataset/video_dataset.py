"""``VideoDataset``: videos and multi-frame DICOM, items (C,N,H,W); ``frame_by_frame()`` gives frames."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .multiframe_dataset import MultiFrameDataset

if TYPE_CHECKING:
    from .sliced_video_dataset import SlicedVideoDataset

__all__ = ["VideoDataset"]


class VideoDataset(MultiFrameDataset):
    """Dataset for video medical data: ``image`` (C,N,H,W) with N frames."""

    def frame_by_frame(self) -> SlicedVideoDataset:
        """A 2D dataset of every frame; items (C,H,W). Each video is decoded once (then memory-mapped)."""
        from .sliced_video_dataset import SlicedVideoDataset

        return SlicedVideoDataset.from_dataset(self)
