"""``VolumeDataset``: 3D volumes (NIfTI, DICOM series), items (C,N,H,W); ``slice()`` gives 2D slices."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from .multiframe_dataset import MultiFrameDataset

if TYPE_CHECKING:
    from .sliced_dataset import SlicedVolumeDataset

__all__ = ["VolumeDataset"]


class VolumeDataset(MultiFrameDataset):
    """Dataset for 3D medical volumes; slices are counted from headers, never by decoding."""

    def slice(self, axis: Literal["axial", "sagittal", "coronal"] | int = "axial") -> SlicedVolumeDataset:
        """A 2D dataset of every slice along ``axis`` ('axial', 'coronal', 'sagittal' or 0-2); items (C,H,W).

        Decoded volumes are kept once per machine in the memory-mapped decoded-array cache, slice-major, so a
        slice costs one contiguous read."""
        from .sliced_dataset import SlicedVolumeDataset

        return SlicedVolumeDataset.from_dataset(self, slice_axis=axis)
