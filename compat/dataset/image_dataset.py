"""``ImageDataset``: 2D images (PNG, JPEG, single-frame DICOM), items (C,H,W)."""

from __future__ import annotations

from ._items import Layout
from .volume_dataset import VolumeDataset

__all__ = ["ImageDataset"]


class ImageDataset(VolumeDataset):
    """Dataset for 2D medical images: ``image`` (C,H,W), instance masks (I,H,W)."""

    _layout: Layout = "2d"
