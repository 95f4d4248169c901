"""A DICOM series: several single-frame files stacked into one (C,N,H,W) volume along the slice normal.

* :func:`probe_series` -> :class:`~datamint_pipes.decode.ProbeResult` from the headers only (one
  ``dcmread(stop_before_pixels=True)`` per file); :func:`decode_series` -> :class:`~datamint_pipes.decode.Decoded`,
  reading each file once. Both carry a :class:`SeriesGeometry` in their ``geometry`` field.
* Order: ImagePositionPatient projected on the slice normal, ``cross(row, column)`` of ImageOrientationPatient,
  ascending; neither file order nor InstanceNumber matters. When *no* file has a position and orientation the
  slices are ordered by InstanceNumber instead, with spacing and affine unknown.
* Refused with :class:`~datamint_pipes.errors.DecodeError` (naming the resource, the files and the values): files
  that are not single-frame DICOM images, mixed SeriesInstanceUID, Rows/Columns, SamplesPerPixel or PixelSpacing,
  two slices at one position, positions present on some files only.
* Slices that do not form one evenly spaced parallel stack -- gaps between consecutive positions that differ from
  their median by more than ``tolerance`` (relative), positions off the line through the first and last slice, or
  orientations that differ by more than :data:`MAX_ORIENTATION_DEGREES` -- raise ``DecodeError`` with
  ``on_irregular="error"`` (the default). With ``"warn"`` a :class:`SeriesGeometryWarning` is issued and the
  series decodes with ``spacing=None`` and ``affine=None``; the measured positions and gaps stay in the geometry.
  A uniform spacing is never reported for slices that are not evenly spaced.
* Every entry of ``SeriesGeometry.warnings`` is also issued as a :class:`SeriesGeometryWarning`.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO, Literal

import numpy as np
from pydicom.dataset import Dataset

from datamint_pipes.decode import _dicom_geometry, _registry, dicom
from datamint_pipes.decode._base import Decoded, ProbeResult
from datamint_pipes.errors import DecodeError

__all__ = ["MAX_ORIENTATION_DEGREES", "SeriesGeometry", "SeriesGeometryWarning", "decode_series", "probe_series"]

SeriesSource = str | os.PathLike[str] | bytes | BinaryIO
OnIrregular = Literal["error", "warn"]

MAX_ORIENTATION_DEGREES = 0.1
"""Largest angle between two slices' row (or column) directions that still counts as one orientation."""

_DUPLICATE_MM = 1e-4  # positions closer than this are one position whatever the tolerance
_LISTED = 12  # positions and gaps listed in full in a message up to this many


class SeriesGeometryWarning(UserWarning):
    """A series decodes, but its geometry is incomplete or irregular (see the message and ``SeriesGeometry``)."""


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
class _Slice:
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


def probe_series(
    sources: Sequence[SeriesSource],
    *,
    resource_id: str | None = None,
    filenames: Sequence[str | None] | None = None,
    on_irregular: OnIrregular = "error",
    tolerance: float = 0.01,
) -> ProbeResult:
    """What :func:`decode_series` returns for ``sources``, from their headers only.

    ``shape`` is (C,N,H,W), ``stored_shape`` (N, Rows, Columns[, SamplesPerPixel]), ``spacing`` and ``geometry``
    as :func:`decode_series` reports them. ``filenames`` name the files in errors (default: the paths or the file
    objects' names). Raises :class:`DecodeError` as the module docstring says; ``ValueError`` for bad arguments.
    """
    _check_arguments(on_irregular, tolerance)
    names = _names(sources, filenames)
    slices: list[_Slice] = []
    dtypes: list[np.dtype[Any]] = []
    plane: tuple[int, int, int] | None = None
    for source, name in zip(sources, names, strict=True):
        with _registry._translated("probe", resource_id, name) as attempt, _registry._opened(source) as stream:
            attempt.format = _require_dicom(stream, name)
            ds = dicom._read(stream, stop_before_pixels=True)
            image = dicom._describe(ds)
            header = _slice(ds, name)
        _check_alike(slices[0] if slices else header, header, resource_id)
        shape = (image.channels, image.rows, image.columns)
        plane = plane or shape
        _check_decoded_shape(plane, shape, slices[0].name if slices else name, name, resource_id)
        slices.append(header)
        dtypes.append(image.dtype)
    geometry = _geometry(slices, on_irregular, tolerance, resource_id)
    _issue(geometry)
    assert plane is not None  # _names refuses an empty series
    first = slices[0]
    stored = (len(slices), first.rows, first.columns) + ((first.samples,) if first.samples > 1 else ())
    return ProbeResult(
        kind="volume",
        format="dicom",
        shape=(plane[0], len(slices), plane[1], plane[2]),
        dtype=np.result_type(*dtypes).name,
        frame_count=len(slices),
        stored_shape=stored,
        spacing=geometry.spacing,
        geometry=geometry,
    )


def decode_series(
    sources: Sequence[SeriesSource],
    *,
    resource_id: str | None = None,
    filenames: Sequence[str | None] | None = None,
    on_irregular: OnIrregular = "error",
    tolerance: float = 0.01,
) -> Decoded:
    """Decode single-frame DICOM files into one (C,N,H,W) array, slices ascending along the slice normal.

    Each slice's values are exactly those :func:`datamint_pipes.decode.decode` gives for its file alone (modality
    LUT, MONOCHROME1 inversion, colour); when the files decode to different dtypes the array has their common
    ``np.result_type``. ``metainfo`` is the lowest slice's dataset without pixel data; ``spacing`` (slice, row,
    column) and ``affine`` come from :attr:`Decoded.geometry`. Each file is read once; the slices are placed in
    one preallocated array and put in order in place. Arguments and errors as :func:`probe_series`.
    """
    _check_arguments(on_irregular, tolerance)
    names = _names(sources, filenames)
    decoder = _registry.get_decoder("dicom")
    slices: list[_Slice] = []
    datasets: list[Dataset] = []
    dtypes: list[np.dtype[Any]] = []
    volume: np.ndarray[Any, Any] | None = None
    for index, (source, name) in enumerate(zip(sources, names, strict=True)):
        with _registry._translated("decode", resource_id, name) as attempt, _registry._opened(source) as stream:
            attempt.format = _require_dicom(stream, name)
            decoded = decoder.decode(stream)
        ds = decoded.metainfo
        if not isinstance(ds, Dataset):
            raise DecodeError("the DICOM decoder returned no dataset", resource_id=resource_id, filename=name)
        header = _slice(ds, name)
        _check_alike(slices[0] if slices else header, header, resource_id)
        array = decoded.array
        if volume is None:
            volume = np.empty((array.shape[0], len(names), *array.shape[1:]), dtype=array.dtype)
        _check_decoded_shape(
            (volume.shape[0], *volume.shape[2:]), array.shape, slices[0].name if slices else name, name, resource_id
        )
        dtypes.append(array.dtype)
        if (common := np.result_type(*dtypes)) != volume.dtype:  # rare: one slice without a rescale among others
            volume = volume.astype(common)
        volume[:, index] = array
        slices.append(header)
        datasets.append(ds)
    assert volume is not None  # _names refuses an empty series
    geometry = _geometry(slices, on_irregular, tolerance, resource_id)
    _issue(geometry)
    _permute_slices(volume, geometry.order)
    affine = None if geometry.affine is None else geometry.affine.copy()
    return Decoded(
        array=volume, metainfo=datasets[geometry.order[0]], spacing=geometry.spacing, affine=affine, geometry=geometry
    )


def _check_arguments(on_irregular: str, tolerance: float) -> None:
    if on_irregular not in ("error", "warn"):
        raise ValueError(f"{on_irregular=} must be 'error' or 'warn'")
    if not (isinstance(tolerance, (int, float)) and math.isfinite(tolerance) and 0 <= tolerance < 1):
        raise ValueError(f"{tolerance=} must be a relative tolerance in [0, 1)")


def _names(sources: Sequence[SeriesSource], filenames: Sequence[str | None] | None) -> list[str]:
    if isinstance(sources, (str, bytes, os.PathLike)):
        raise TypeError("sources must be a sequence of files (paths, bytes or file objects), not one file")
    if len(sources) == 0:
        raise DecodeError("a DICOM series needs at least one file")
    if filenames is not None and len(filenames) != len(sources):
        raise ValueError(f"{len(filenames)} filenames for {len(sources)} sources")
    given = filenames if filenames is not None else [None] * len(sources)
    # Index ``sources`` only for unnamed files: a lazy sequence reads a remote file when indexed.
    return [
        name if name is not None else _registry._source_name(sources[index]) or f"<file {index}>"
        for index, name in enumerate(given)
    ]


def _require_dicom(stream: BinaryIO, name: str) -> str:
    """The file's format, which must be DICOM (files without a preamble count: the series says they are DICOM)."""
    head = stream.read(_registry.HEAD_SIZE)
    stream.seek(0)
    if not head:
        raise DecodeError("the file is empty")
    found = _registry.detect_format(head, name, "application/dicom")
    if found != "dicom":
        raise DecodeError(f"a DICOM series holds DICOM files only; this is a {found} file")
    return found


def _slice(ds: Dataset, name: str) -> _Slice:
    declared = [
        _floats(_attribute(ds, keyword, "PixelMeasuresSequence"), 1)
        for keyword in ("SpacingBetweenSlices", "SliceThickness")
    ]
    uid = ds.get("SeriesInstanceUID")
    return _Slice(
        name=name,
        frames=_int(ds.get("NumberOfFrames")) or 1,
        rows=_int(ds.get("Rows")) or 0,
        columns=_int(ds.get("Columns")) or 0,
        samples=_int(ds.get("SamplesPerPixel")) or 1,
        series_uid=str(uid) if uid else None,
        orientation=_floats(_attribute(ds, "ImageOrientationPatient", "PlaneOrientationSequence"), 6),
        position=_floats(_attribute(ds, "ImagePositionPatient", "PlanePositionSequence"), 3),
        pixel_spacing=_dicom_geometry.pixel_spacing(ds),
        instance_number=_int(ds.get("InstanceNumber")),
        declared_spacing=next((d[0] for d in declared if d is not None and d[0] > 0), None),
    )


def _attribute(ds: Dataset, keyword: str, sequence: str) -> Any:
    """Top-level ``keyword``, else the one in the (enhanced) functional group ``sequence``."""
    value = ds.get(keyword)
    if value is None and (item := _dicom_geometry.functional_item(ds, sequence)) is not None:
        value = item.get(keyword)
    return value


def _floats(value: Any, count: int) -> tuple[float, ...] | None:
    if value is None or isinstance(value, (str, bytes)):
        return None
    try:
        numbers = tuple(float(v) for v in (value if isinstance(value, Sequence) else [value]))
    except (TypeError, ValueError):
        return None
    return numbers if len(numbers) == count and all(math.isfinite(n) for n in numbers) else None


def _int(value: Any) -> int | None:
    try:
        return None if value is None or value == "" else int(value)
    except (TypeError, ValueError):
        return None


def _check_alike(first: _Slice, other: _Slice, resource_id: str | None) -> None:
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


def _check_decoded_shape(
    expected: tuple[int, ...], shape: tuple[int, ...], first: str, name: str, resource_id: str | None
) -> None:
    if tuple(shape) != tuple(expected):
        raise DecodeError(
            f"the series mixes decoded slice shapes: file {name} decodes to {tuple(shape)} (C,H,W), "
            f"file {first} to {tuple(expected)}",
            resource_id=resource_id,
            filename=name,
        )


def _geometry(
    slices: list[_Slice], on_irregular: OnIrregular, tolerance: float, resource_id: str | None
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
        affine = _dicom_geometry._affine(np.asarray(first.position), step, columns[order[0]], rows[order[0]], in_plane)
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


def _by_instance_number(slices: list[_Slice], reason: str, resource_id: str | None) -> SeriesGeometry:
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
    slices: list[_Slice],
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
    slices: list[_Slice],
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
    slices: list[_Slice],
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


def _in_plane_limit(first: _Slice) -> float:
    """In-plane offsets (mm) below this are rounding of the positions: a tenth of a pixel (of 1 mm if unknown)."""
    return 0.1 * min(first.pixel_spacing) if first.pixel_spacing is not None else 0.1


def _permute_slices(volume: np.ndarray[Any, Any], order: Sequence[int]) -> None:
    """Reorder ``volume`` (C,N,H,W) in place so that slice k becomes the old slice ``order[k]``.

    Follows each cycle of the permutation with one slice of scratch memory, so the volume is never held twice.
    """
    done = [False] * len(order)
    for start in range(len(order)):
        if done[start] or order[start] == start:
            continue
        saved = volume[:, start].copy()
        k = start
        while True:
            done[k] = True
            source = order[k]
            if source == start:
                volume[:, k] = saved
                break
            volume[:, k] = volume[:, source]
            k = source


def _issue(geometry: SeriesGeometry) -> None:
    for note in geometry.warnings:
        warnings.warn(SeriesGeometryWarning(note), stacklevel=3)  # the caller of probe_series/decode_series


def _mm(values: Any) -> str:
    numbers = [f"{float(v):.6g}" for v in values]
    if len(numbers) > _LISTED:
        numbers = [*numbers[: _LISTED // 2], "...", *numbers[-_LISTED // 2 :]]
    return f"[{', '.join(numbers)}]"


def _names_list(names: list[str]) -> str:
    shown = ", ".join(names[:5])
    return f"{shown} (and {len(names) - 5} more)" if len(names) > 5 else shown
