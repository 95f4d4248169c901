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

This module reads the files and assembles the pixels; the header facts, the checks of one stack and the geometry
are in :mod:`._series_geometry` (:class:`SeriesGeometry` and :data:`MAX_ORIENTATION_DEGREES` are re-exported here).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from typing import Any, BinaryIO

import numpy as np
from pydicom.dataset import Dataset

from datamint_pipes.decode._base import Decoded, ProbeResult
from datamint_pipes.decode._registry import detect_format, opened, read_head, source_name, translated
from datamint_pipes.decode._series_geometry import (
    MAX_ORIENTATION_DEGREES,
    OnIrregular,
    SeriesGeometry,
    SliceHeader,
    check_alike,
    series_geometry,
    slice_header,
)
from datamint_pipes.decode.dicom import decode_dataset, describe, read_dataset
from datamint_pipes.errors import DecodeError

__all__ = ["MAX_ORIENTATION_DEGREES", "SeriesGeometry", "SeriesGeometryWarning", "decode_series", "probe_series"]

SeriesSource = str | os.PathLike[str] | bytes | BinaryIO


class SeriesGeometryWarning(UserWarning):
    """A series decodes, but its geometry is incomplete or irregular (see the message and ``SeriesGeometry``)."""


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
    slices: list[SliceHeader] = []
    dtypes: list[np.dtype[Any]] = []
    plane: tuple[int, int, int] | None = None
    for source, name in zip(sources, names, strict=True):
        with translated("probe", resource_id, name) as attempt, opened(source) as stream:
            attempt.format = _require_dicom(stream, name)
            ds = read_dataset(stream, stop_before_pixels=True)
            image = describe(ds)
            header = slice_header(ds, name)
        check_alike(slices[0] if slices else header, header, resource_id)
        shape = (image.channels, image.rows, image.columns)
        plane = plane or shape
        _check_decoded_shape(plane, shape, slices[0].name if slices else name, name, resource_id)
        slices.append(header)
        dtypes.append(image.dtype)
    geometry = series_geometry(slices, on_irregular, tolerance, resource_id)
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
    slices: list[SliceHeader] = []
    datasets: list[Dataset] = []
    dtypes: list[np.dtype[Any]] = []
    volume: np.ndarray[Any, Any] | None = None
    for index, (source, name) in enumerate(zip(sources, names, strict=True)):
        with translated("decode", resource_id, name) as attempt, opened(source) as stream:
            attempt.format = _require_dicom(stream, name)
            # Each file's own affine is not computed: the series measures its geometry across the files.
            decoded = decode_dataset(read_dataset(stream, stop_before_pixels=False), stream, geometry=False)
        ds = decoded.metainfo
        if not isinstance(ds, Dataset):
            raise DecodeError("the DICOM decoder returned no dataset", resource_id=resource_id, filename=name)
        header = slice_header(ds, name)
        check_alike(slices[0] if slices else header, header, resource_id)
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
    geometry = series_geometry(slices, on_irregular, tolerance, resource_id)
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
        name if name is not None else source_name(sources[index]) or f"<file {index}>"
        for index, name in enumerate(given)
    ]


def _require_dicom(stream: BinaryIO, name: str) -> str:
    """The file's format, which must be DICOM (files without a preamble count: the series says they are DICOM)."""
    found = detect_format(read_head(stream), name, "application/dicom")
    if found != "dicom":
        raise DecodeError(f"a DICOM series holds DICOM files only; this is a {found} file")
    return found


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
