"""Expansion stages (1 -> N samples): a volume into 2D slices, a video into frames.

A (C,N,H,W) image along ``slice_axis``:

* ``'axial'`` (or 0): N slices of (C,H,W);
* ``'coronal'`` (or 1): H slices of (C,N,W);
* ``'sagittal'`` (or 2): W slices of (C,N,H).

Masks ``(N,H,W)`` follow their slice. 2D samples pass through unchanged (one sample).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from datamint_pipes.model import Sample

__all__ = ["SLICE_AXES", "SliceVolume", "slice_axis_index", "slice_view"]

SLICE_AXES = {"axial": 0, "coronal": 1, "sagittal": 2}


def slice_axis_index(slice_axis: str | int) -> int:
    """Index into (N,H,W) of a named or numbered slicing axis."""
    if isinstance(slice_axis, str):
        if slice_axis not in SLICE_AXES:
            raise ValueError(f"{slice_axis=} must be one of {sorted(SLICE_AXES)} or 0, 1, 2")
        return SLICE_AXES[slice_axis]
    if slice_axis not in (0, 1, 2):
        raise ValueError(f"{slice_axis=} must be one of {sorted(SLICE_AXES)} or 0, 1, 2")
    return int(slice_axis)


def slice_view(array: np.ndarray[Any, Any], index: int, axis: int) -> np.ndarray[Any, Any]:
    """``array`` at ``index`` along ``axis``, as a view. (``np.take`` would first copy a non-contiguous array
    whole -- an RGB video, or coronal slices of a slice-major cache -- for every slice.)"""
    key: list[Any] = [slice(None)] * array.ndim
    key[axis] = index
    return array[tuple(key)]


@dataclass(frozen=True)
class SliceVolume:
    """``sample -> list[sample]``: one sample per slice of a (C,N,H,W) ``image`` along ``slice_axis``.

    Each slice sample has ``slice_index``, ``slice_axis`` and views (not copies) of the image and masks.
    """

    slice_axis: str | int = "axial"

    def __post_init__(self) -> None:
        slice_axis_index(self.slice_axis)

    def __call__(self, sample: Sample) -> list[Sample]:
        image = sample["image"]
        if image.ndim != 4:
            return [sample]
        axis = slice_axis_index(self.slice_axis)
        masks = sample.get("masks") or {}
        out: list[Sample] = []
        for k in range(image.shape[axis + 1]):
            item: dict[str, Any] = dict(sample)
            item["image"] = slice_view(image, k, axis + 1)
            item["masks"] = {key: slice_view(m, k, axis) for key, m in masks.items()}
            item["slice_index"] = k
            item["slice_axis"] = self.slice_axis
            out.append(item)  # type: ignore[arg-type]
        return out
