"""The geometry of a DICOM series, from its files' headers: per-slice facts, consistency, order and spacing.

:func:`slice_header` takes from one file's dataset what the series needs; :func:`check_alike` refuses a file that
cannot belong to the same stack as the first; :func:`series_geometry` orders the slices along the slice normal and
measures their spacing into a :class:`SeriesGeometry`, raising or recording (``on_irregular``) what does not fit one
evenly spaced parallel stack. The rules are those of :mod:`datamint_pipes.decode.series`, which re-exports the public
names.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydicom.dataset import Dataset

from datamint_pipes.decode._dicom_geometry import build_affine, floats, functional_item, pixel_spacing
from datamint_pipes.errors import DecodeError

__all__ = [
    "MAX_ORIENTATION_DEGREES",
    "OnIrregular",
    "SeriesGeometry",
    "SliceHeader",
    "check_alike",
    "series_geometry",
    "slice_header",
]

OnIrregular = Literal["error", "warn"]

MAX_ORIENTATION_DEGREES = 0.1
"""Largest angle between two slices' row (or column) directions that still counts as one orientation."""

_DUPLICATE_MM = 1e-4  # positions closer than this are one position whatever the tolerance
_LISTED = 12  # positions and gaps listed in full in a message up to this many


@dataclass(frozen=True)
class SeriesGeometry:
    """Where the slices of a series lie, as measured from their headers.

    Attributes:
        order: input index of each output slice, ascending along the slice normal.
        positions: slice positions (mm) along ``normal``, in output order; empty when the files give no position
            (or their orientations differ), and the slices are ordered by InstanceNumber.
        normal: unit slice normal ``cross(row, column)`` (LPS, as DICOM stores it); ``None`` when unknown.
        slice_spacings: the measured gaps (mm) between consecutive output slices (``len(positions) - 1`` of them).
        spacing: (slice, row, column) spacing in mm; ``None`` when the slices are not evenly spaced or the pixel
            spacing is unknown.
        affine: 4x4 float64 mapping the (n, h, w) indices of the decoded (C,N,H,W) array to RAS+
            world millimetres, as :attr:`datamint_pipes.decode.Decoded.affine` of a single DICOM file. Its n column
            is the normal times the slice spacing; when the positions also drift in-plane (a gantry tilt: more
            than a tenth of a pixel over the stack) it is the measured step between positions, a sheared affine,
            and ``warnings`` says so. ``None`` when the slices are not evenly spaced or the pixel spacing is unknown.
        warnings: what is irregular or unknown about the geometry, in words (each also issued as a warning).
    """

    order: tuple[int, ...]
    positions: tuple[float, ...]
    normal: tuple[float, float, float] | None
    slice_spacings: tuple[float, ...]
    spacing: tuple[float, float, float] | None
    affine: np.ndarray[Any, Any] | None
    warnings: tuple[str, ...] = ()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SeriesGeometry):
            return NotImplemented
        if self.affine is None or other.affine is None:
            same_affine = self.affine is other.affine
        else:
            same_affine = np.array_equal(self.affine, other.affine)
        return same_affine and self._key() == other._key()

    def __hash__(self) -> int:
        return hash((self._key(), None if self.affine is None else self.affine.tobytes()))

    def _key(self) -> tuple[Any, ...]:
        return (self.order, self.positions, self.normal, self.slice_spacings, self.spacing, self.warnings)


@dataclass(frozen=True)
class SliceHeader:
    """The header facts of one file that the series checks and geometry need."""

    name: str
    frames: int
    rows: int
    columns: int
    samples: int
    series_uid: str | None
    orientation: tuple[float, ...] | None
    position: tuple[float, ...] | None
    pixel_spacing: tuple[float, float] | None
    instance_number: int | None
    declared_spacing: float | None

    @property
    def located(self) -> bool:
        return self.orientation is not None and self.position is not None


def slice_header(ds: Dataset, name: str) -> SliceHeader:
    """The :class:`SliceHeader` of the dataset of file ``name`` (missing or malformed values become None)."""
    declared = [
        floats(_attribute(ds, keyword, "PixelMeasuresSequence"), 1)
        for keyword in ("SpacingBetweenSlices", "SliceThickness")
    ]
    uid = ds.get("SeriesInstanceUID")
    return SliceHeader(
        name=name,
        frames=_int(ds.get("NumberOfFrames")) or 1,
        rows=_int(ds.get("Rows")) or 0,
        columns=_int(ds.get("Columns")) or 0,
        samples=_int(ds.get("SamplesPerPixel")) or 1,
        series_uid=str(uid) if uid else None,
        orientation=floats(_attribute(ds, "ImageOrientationPatient", "PlaneOrientationSequence"), 6),
        position=floats(_attribute(ds, "ImagePositionPatient", "PlanePositionSequence"), 3),
        pixel_spacing=pixel_spacing(ds),
        instance_number=_int(ds.get("InstanceNumber")),
        declared_spacing=next((d[0] for d in declared if d is not None and d[0] > 0), None),
    )


def _attribute(ds: Dataset, keyword: str, sequence: str) -> Any:
    """Top-level ``keyword``, else the one in the (enhanced) functional group ``sequence``."""
    value = ds.get(keyword)
    if value is None and (item := functional_item(ds, sequence)) is not None:
        value = item.get(keyword)
    return value


def _int(value: Any) -> int | None:
    try:
        return None if value is None or value == "" else int(value)
    except (TypeError, ValueError):
        return None


def check_alike(first: SliceHeader, other: SliceHeader, resource_id: str | None) -> None:
    """Refuse a file that cannot be a slice of the same stack as the first one."""

    def fail(what: str, label: str, mine: object, theirs: object) -> DecodeError:
        return DecodeError(
            f"the series mixes {what}: file {other.name} has {label} {mine}, file {first.name} has {label} {theirs}",
            resource_id=resource_id,
            filename=other.name,
        )

    if other.frames != 1:
        raise DecodeError(
            f"a DICOM series is made of single-frame files; file {other.name} holds {other.frames} frames "
            "(decode it on its own)",
            resource_id=resource_id,
            filename=other.name,
        )
    if first.series_uid and other.series_uid and first.series_uid != other.series_uid:
        raise fail("series", "SeriesInstanceUID", other.series_uid, first.series_uid)
    if (other.rows, other.columns) != (first.rows, first.columns):
        raise fail("slice sizes", "Rows x Columns", f"{other.rows}x{other.columns}", f"{first.rows}x{first.columns}")
    if other.samples != first.samples:
        raise fail("samples per pixel", "SamplesPerPixel", other.samples, first.samples)
    mine, theirs = other.pixel_spacing, first.pixel_spacing
    if (mine is None) != (theirs is None) or (
        mine is not None
        and theirs is not None
        and any(abs(a - b) > 1e-3 * abs(b) for a, b in zip(mine, theirs, strict=True))
    ):
        raise fail("pixel spacings", "PixelSpacing", mine, theirs)


def series_geometry(
    slices: list[SliceHeader], on_irregular: OnIrregular, tolerance: float, resource_id: str | None
) -> SeriesGeometry:
    """Order the slices and measure their spacing; raise or record what does not fit one regular stack."""
    located = [s for s in slices if s.located]
    if not located:
        return _by_instance_number(slices, "no file has ImagePositionPatient and ImageOrientationPatient", resource_id)
    if len(located) < len(slices):
        missing = [s.name for s in slices if not s.located]
        raise DecodeError(
            f"ImagePositionPatient or ImageOrientationPatient is missing on {_names_list(missing)} but present on "
            f"{_names_list([s.name for s in located])}: the slices cannot be ordered",
            resource_id=resource_id,
            filename=missing[0],
        )
    orientation = np.array([s.orientation for s in slices], dtype=np.float64)
    rows = orientation[:, :3] / np.linalg.norm(orientation[:, :3], axis=1, keepdims=True)
    columns = orientation[:, 3:] / np.linalg.norm(orientation[:, 3:], axis=1, keepdims=True)
    # Compare with, and average in, an order fixed by the values, so that file order changes nothing.
    canonical = np.lexsort(orientation.T[::-1])
    ref = int(canonical[0])
    angles = np.degrees(
        np.maximum(np.arccos(np.clip(rows @ rows[ref], -1, 1)), np.arccos(np.clip(columns @ columns[ref], -1, 1)))
    )
    if angles.max() > MAX_ORIENTATION_DEGREES:
        worst = int(np.argmax(angles))
        others = int(np.count_nonzero(angles > MAX_ORIENTATION_DEGREES)) - 1
        message = (
            f"slices are not parallel: ImageOrientationPatient {_mm(orientation[worst])} of file {slices[worst].name} "
            f"is {angles[worst]:.3g}° from {_mm(orientation[ref])} of file {slices[ref].name}"
            + (f" ({others} more files differ)" if others else "")
        )
        if on_irregular == "error":
            raise DecodeError(
                f"{message}; pass on_irregular='warn' to stack them in InstanceNumber order without geometry",
                resource_id=resource_id,
                filename=slices[worst].name,
            )
        return _by_instance_number(slices, message, resource_id)

    normal = np.cross(rows[canonical].mean(axis=0), columns[canonical].mean(axis=0))
    normal /= np.linalg.norm(normal)
    points = np.array([s.position for s in slices], dtype=np.float64)
    along = points @ normal
    order = np.argsort(along, kind="stable")
    positions = along[order]
    gaps = np.diff(positions)
    notes: list[str] = []
    spacing_along: float | None = None
    step: np.ndarray[Any, Any] | None = None
    if len(slices) == 1:
        spacing_along = slices[0].declared_spacing
        step = normal * (spacing_along or 1.0)
    else:
        median = float(np.median(gaps))
        _refuse_duplicates(slices, order, positions, gaps, max(tolerance * median, _DUPLICATE_MM), resource_id)
        irregular = _irregularity(slices, order, positions, gaps, median, tolerance)
        irregular = irregular or _off_line(slices, order, points[order], positions, normal)
        if irregular is not None:
            if on_irregular == "error":
                raise DecodeError(
                    f"{irregular}; pass on_irregular='warn' to decode it with spacing and affine left unknown (None)",
                    resource_id=resource_id,
                )
            notes.append(f"{irregular}; spacing and affine left unknown (None)")
        else:
            spacing_along = float((positions[-1] - positions[0]) / (len(slices) - 1))
            step = normal * spacing_along
            measured = (points[order[-1]] - points[order[0]]) / (len(slices) - 1)
            drift = float(np.linalg.norm(measured - step)) * (len(slices) - 1)  # in-plane, over the whole stack
            if drift > _in_plane_limit(slices[int(order[0])]):  # a gantry tilt, not rounding of the positions
                step = measured
                tilt = math.degrees(math.acos(min(1.0, spacing_along / float(np.linalg.norm(measured)))))
                notes.append(
                    f"the slices are sheared by {tilt:.3g}° (gantry tilt): the affine's slice axis is not "
                    f"perpendicular to the image plane; spacing {spacing_along:.6g} mm is the distance between planes"
                )
    first = slices[int(order[0])]
    in_plane = first.pixel_spacing
    spacing = None if spacing_along is None or in_plane is None else (spacing_along, *in_plane)
    affine = None
    if step is not None and in_plane is not None and first.position is not None:
        affine = build_affine(np.asarray(first.position), step, columns[order[0]], rows[order[0]], in_plane)
        affine.setflags(write=False)
    return SeriesGeometry(
        order=tuple(int(i) for i in order),
        positions=tuple(float(p) for p in positions),
        normal=(float(normal[0]), float(normal[1]), float(normal[2])),
        slice_spacings=tuple(float(g) for g in gaps),
        spacing=spacing,
        affine=affine,
        warnings=tuple(notes),
    )


def _by_instance_number(slices: list[SliceHeader], reason: str, resource_id: str | None) -> SeriesGeometry:
    missing = [s.name for s in slices if s.instance_number is None]
    if missing:
        raise DecodeError(
            f"{reason}, and InstanceNumber is missing on {_names_list(missing)}: the slices cannot be ordered",
            resource_id=resource_id,
            filename=missing[0],
        )
    first_with: dict[int | None, str] = {}
    for s in slices:
        if s.instance_number in first_with:
            raise DecodeError(
                f"{reason}, and files {first_with[s.instance_number]} and {s.name} share InstanceNumber "
                f"{s.instance_number}: the slices cannot be ordered",
                resource_id=resource_id,
                filename=s.name,
            )
        first_with[s.instance_number] = s.name
    order = sorted(range(len(slices)), key=lambda i: slices[i].instance_number or 0)
    return SeriesGeometry(
        order=tuple(order),
        positions=(),
        normal=None,
        slice_spacings=(),
        spacing=None,
        affine=None,
        warnings=(f"{reason}: slices ordered by InstanceNumber; spacing and affine unknown (None)",),
    )


def _refuse_duplicates(
    slices: list[SliceHeader],
    order: np.ndarray[Any, Any],
    positions: np.ndarray[Any, Any],
    gaps: np.ndarray[Any, Any],
    limit: float,
    resource_id: str | None,
) -> None:
    pairs = [(int(order[k]), int(order[k + 1]), float(positions[k])) for k in np.flatnonzero(gaps <= limit)]
    if not pairs:
        return
    listed = "; ".join(f"files {slices[a].name} and {slices[b].name} at {p:.6g} mm" for a, b, p in pairs[:5])
    more = f" (and {len(pairs) - 5} more pairs)" if len(pairs) > 5 else ""
    raise DecodeError(
        f"duplicate slice positions along the normal: {listed}{more}; several images per position (echoes, time "
        "points, a repeated acquisition?) are not one volume",
        resource_id=resource_id,
        filename=slices[pairs[0][1]].name,
    )


def _irregularity(
    slices: list[SliceHeader],
    order: np.ndarray[Any, Any],
    positions: np.ndarray[Any, Any],
    gaps: np.ndarray[Any, Any],
    median: float,
    tolerance: float,
) -> str | None:
    deviation = np.abs(gaps - median)
    if not np.any(deviation > tolerance * median):
        return None
    k = int(np.argmax(deviation))
    return (
        f"slices are not evenly spaced: gaps {_mm(gaps)} mm between positions {_mm(positions)} mm along the slice "
        f"normal (median gap {median:.6g} mm, tolerance {tolerance:.3g} relative); the largest deviation is the "
        f"{gaps[k]:.6g} mm gap between files {slices[int(order[k])].name} and {slices[int(order[k + 1])].name}"
    )


def _off_line(
    slices: list[SliceHeader],
    order: np.ndarray[Any, Any],
    points: np.ndarray[Any, Any],
    positions: np.ndarray[Any, Any],
    normal: np.ndarray[Any, Any],
) -> str | None:
    """Whether the in-plane offsets of the positions drift other than linearly (a gantry tilt is linear)."""
    offsets = points - positions[:, np.newaxis] * normal
    drift = (offsets[-1] - offsets[0]) / (positions[-1] - positions[0])
    expected = offsets[0] + (positions - positions[0])[:, np.newaxis] * drift
    misses = np.linalg.norm(offsets - expected, axis=1)
    limit = _in_plane_limit(slices[int(order[0])])
    if misses.max() <= limit:
        return None
    k = int(np.argmax(misses))
    return (
        f"slice positions do not lie on one line: file {slices[int(order[k])].name} at {_mm(points[k])} is "
        f"{misses[k]:.3g} mm off the line through the first and last slice (limit {limit:.3g} mm)"
    )


def _in_plane_limit(first: SliceHeader) -> float:
    """In-plane offsets (mm) below this are rounding of the positions: a tenth of a pixel (of 1 mm if unknown)."""
    return 0.1 * min(first.pixel_spacing) if first.pixel_spacing is not None else 0.1


def _mm(values: Any) -> str:
    numbers = [f"{float(v):.6g}" for v in values]
    if len(numbers) > _LISTED:
        numbers = [*numbers[: _LISTED // 2], "...", *numbers[-_LISTED // 2 :]]
    return f"[{', '.join(numbers)}]"


def _names_list(names: list[str]) -> str:
    shown = ", ".join(names[:5])
    return f"{shown} (and {len(names) - 5} more)" if len(names) > 5 else shown
