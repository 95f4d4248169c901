"""Geometry and value-transform facts of one DICOM image, from its header (classic or enhanced multi-frame).

Enhanced (functional-group) files keep pixel spacing, orientation, position and rescale in
``SharedFunctionalGroupsSequence`` / ``PerFrameFunctionalGroupsSequence``; classic files keep them at the top level.
Every helper looks at the top level first, then the shared groups, then the per-frame groups.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

__all__ = [
    "affine_and_slice_spacing",
    "build_affine",
    "floats",
    "functional_item",
    "pixel_spacing",
    "rescale",
    "stored_range",
]

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def functional_item(ds: Dataset, sequence: str, frame: int | None = None) -> Dataset | None:
    """First item of the functional group ``sequence`` (e.g. ``"PixelMeasuresSequence"``).

    Looks in the shared groups, then in the per-frame groups of ``frame`` (of frame 0 when ``frame`` is None).
    """
    shared = _shared_item(ds, sequence)
    if shared is not None:
        return shared
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    index = frame or 0
    if per_frame and index < len(per_frame) and per_frame[index].get(sequence):
        return per_frame[index][sequence].value[0]
    return None


def floats(value: Any, count: int) -> tuple[float, ...] | None:
    """``value`` as ``count`` finite floats, or None when absent or malformed."""
    if value is None or isinstance(value, (str, bytes)):
        return None
    try:
        numbers = tuple(float(v) for v in (value if isinstance(value, Sequence) else [value]))
    except (TypeError, ValueError):
        return None
    if len(numbers) != count or not all(math.isfinite(n) for n in numbers):
        return None
    return numbers


def _attribute(ds: Dataset, keyword: str, sequence: str, count: int) -> tuple[float, ...] | None:
    found = floats(ds.get(keyword), count)
    if found is None and (item := functional_item(ds, sequence)) is not None:
        found = floats(item.get(keyword), count)
    return found


def pixel_spacing(ds: Dataset) -> tuple[float, float] | None:
    """(row spacing, column spacing) = spacing along (H, W): PixelSpacing, else ImagerPixelSpacing; positive only."""
    for found in (_attribute(ds, "PixelSpacing", "PixelMeasuresSequence", 2), floats(ds.get("ImagerPixelSpacing"), 2)):
        if found is not None and min(found) > 0:
            return (found[0], found[1])
    return None


def rescale(ds: Dataset, frames: int) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]] | None:
    """(slopes, intercepts), float64 arrays of shape (frames,) when the per-frame functional groups give each frame
    its own pair, else of shape (1,) (one pair for every frame: broadcast it); None when absent or the identity.

    Only a complete pair (RescaleSlope and RescaleIntercept) counts, as in ``pydicom.pixels.apply_modality_lut``.
    Nothing is allocated per frame the header declares: a damaged NumberOfFrames may declare billions.
    """
    items: list[Dataset]
    if "RescaleSlope" in ds or "RescaleIntercept" in ds:
        items = [ds]
    elif (shared := _shared_item(ds, "PixelValueTransformationSequence")) is not None:
        items = [shared]
    else:
        per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
        items = [
            group.PixelValueTransformationSequence[0]
            for group in per_frame
            if group.get("PixelValueTransformationSequence")
        ]
        if items and len(items) != frames:
            raise ValueError(f"{len(items)} per-frame rescale items for {frames} frames")
    pairs = [(floats(item.get("RescaleSlope"), 1), floats(item.get("RescaleIntercept"), 1)) for item in items]
    if not pairs or any(slope is None or intercept is None for slope, intercept in pairs):
        return None
    slopes = np.array([slope[0] for slope, _ in pairs if slope is not None], dtype=np.float64)
    intercepts = np.array([intercept[0] for _, intercept in pairs if intercept is not None], dtype=np.float64)
    if np.all(slopes == 1) and np.all(intercepts == 0):
        return None
    return slopes, intercepts


def _shared_item(ds: Dataset, sequence: str) -> Dataset | None:
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared and shared[0].get(sequence):
        return shared[0][sequence].value[0]
    return None


def stored_range(ds: Dataset) -> tuple[int, int]:
    """The (min, max) a stored value can take, from BitsStored and PixelRepresentation."""
    bits = int(ds.get("BitsStored") or ds.BitsAllocated)
    if int(ds.get("PixelRepresentation") or 0) == 1:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def _frame_positions(ds: Dataset, frames: int, normal: np.ndarray[Any, Any]) -> np.ndarray[Any, Any] | None:
    """(frames, 3) LPS positions of each frame's first voxel, when the header gives them."""
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame and len(per_frame) == frames:
        positions = [
            floats(group.PlanePositionSequence[0].get("ImagePositionPatient"), 3)
            if group.get("PlanePositionSequence")
            else None
            for group in per_frame
        ]
        if all(p is not None for p in positions):
            return np.array(positions, dtype=np.float64)
    origin = floats(ds.get("ImagePositionPatient"), 3)
    offsets = ds.get("GridFrameOffsetVector")  # RT Dose: frame offsets along the normal
    if origin is not None and offsets is not None and (steps := floats(offsets, frames)) is not None:
        along = np.asarray(steps) - steps[0]
        return np.asarray(origin) + along[:, np.newaxis] * normal
    return None


def affine_and_slice_spacing(
    ds: Dataset, frames: int, in_plane: tuple[float, float] | None
) -> tuple[np.ndarray[Any, Any] | None, float | None]:
    """The RAS+ affine of the (n, h, w) voxel indices, and the spacing along n, from the header.

    Multi-frame: the frame positions must be evenly spaced (a warning says so otherwise, and both come back None);
    without positions the spacing is SpacingBetweenSlices, else SliceThickness, and the affine is None.
    Single frame: the n column of the affine is the slice normal times that spacing (1 mm when unknown).
    """
    declared = [
        _attribute(ds, keyword, "PixelMeasuresSequence", 1) for keyword in ("SpacingBetweenSlices", "SliceThickness")
    ]
    slice_spacing = next((found[0] for found in declared if found is not None and found[0] > 0), None)
    orientation = _attribute(ds, "ImageOrientationPatient", "PlaneOrientationSequence", 6)
    if orientation is None:
        return None, slice_spacing
    row_direction = np.asarray(orientation[:3])  # along a row: increasing column index (w)
    column_direction = np.asarray(orientation[3:])  # down a column: increasing row index (h)
    normal = np.cross(row_direction, column_direction)
    if frames == 1:
        origin = _attribute(ds, "ImagePositionPatient", "PlanePositionSequence", 3)
        if origin is None or in_plane is None:
            return None, slice_spacing
        n_step = normal * (slice_spacing or 1.0)
        return build_affine(np.asarray(origin), n_step, column_direction, row_direction, in_plane), slice_spacing
    positions = _frame_positions(ds, frames, normal)
    if positions is None:
        return None, slice_spacing
    steps = np.diff(positions, axis=0)
    step = steps[0]
    size = float(np.linalg.norm(step))
    if size == 0 or not np.allclose(steps, step, atol=max(1e-3 * size, 1e-4)):
        if size > 0 or np.any(steps):
            sizes = np.linalg.norm(steps, axis=1)
            warnings.warn(
                f"DICOM frame positions are not evenly spaced (steps {sizes.min():.4g} to {sizes.max():.4g} mm): "
                "spacing and affine left unknown",
                stacklevel=5,  # the caller of datamint_pipes.decode.decode/probe
            )
        return None, None
    if in_plane is None:
        return None, size
    return build_affine(positions[0], step, column_direction, row_direction, in_plane), size


def build_affine(
    origin: np.ndarray[Any, Any],
    n_step: np.ndarray[Any, Any],
    column_direction: np.ndarray[Any, Any],
    row_direction: np.ndarray[Any, Any],
    in_plane: tuple[float, float],
) -> np.ndarray[Any, Any]:
    """RAS+ affine of (n, h, w) indices: LPS origin, n step, unit h and w directions, (h, w) spacing ``in_plane``."""
    lps = np.eye(4)
    lps[:3, 0] = n_step
    lps[:3, 1] = column_direction * in_plane[0]
    lps[:3, 2] = row_direction * in_plane[1]
    lps[:3, 3] = origin
    return _LPS_TO_RAS @ lps
