"""Tests of ``datamint_pipes.decode.series``: DICOM series assembled from several single-frame files.

Real series come from pydicom's ``dicomdirtests`` (see shared/reference/test-data.md); every expectation on them
is computed here from pydicom alone (``pixel_array``, ``apply_modality_lut``, the headers). Synthetic series are
small 4x5 int16 slices written with pydicom, with known positions, orientations and values.
"""

from __future__ import annotations

import functools
import io
import math
import pickle
import random
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
import pydicom
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import apply_modality_lut
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from datamint_pipes import decode
from datamint_pipes.decode import (
    SeriesGeometry,
    SeriesGeometryWarning,
    decode_series,
    probe_series,
)
from datamint_pipes.decode.series import _permute_slices
from datamint_pipes.errors import DecodeError, ProjectError
from datamint_pipes.sources.local import LocalProject
from datamint_pipes.stages.load import DecodeImage, decode_resource

Array = np.ndarray[Any, Any]
Vector = Sequence[float] | Array  # a position, direction or orientation

CT5N = "dicomdirtests/98892001/CT5N"
CT2 = "dicomdirtests/77654033/CT2"
MR700 = "dicomdirtests/98892003/MR700"
CT2N = "dicomdirtests/98892001/CT2N"

ROWS, COLUMNS = 4, 5
PIXEL_SPACING = (0.5, 0.6)  # (row spacing, column spacing) = along (H, W)
SLOPE, INTERCEPT = 2.0, -10.0
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


# ------------------------------------------------------------------------------------------------ helpers


def series_files(dicom_test_dir: Path, folder: str) -> list[Path]:
    return sorted((dicom_test_dir / folder).iterdir())


def lps_to_ras(point: Array) -> Array:
    return np.array([-point[0], -point[1], point[2], 1.0])


def normal_of(orientation: Vector) -> Array:
    return np.cross(np.asarray(orientation[:3], float), np.asarray(orientation[3:], float))


def pydicom_volume(datasets: Sequence[Dataset]) -> Array:
    """(1,N,H,W) float64 as pydicom alone gives it: pixel_array through the modality LUT, in the given order."""
    return np.stack([apply_modality_lut(ds.pixel_array, ds) for ds in datasets])[np.newaxis]


def slice_values(k: int) -> Array:
    """Stored (Rows, Columns) int16 pixels of synthetic slice k: distinct per slice and per pixel."""
    return (np.arange(ROWS * COLUMNS, dtype=np.int16).reshape(ROWS, COLUMNS) + 100 * k - 300).astype(np.int16)


def write_slice(
    path: Path,
    pixels: Array,
    *,
    position: Vector | None,
    orientation: Vector | None = AXIAL,
    instance_number: int | None = 1,
    series_uid: str = "1.2.826.0.1.3680043.8.498.77",
    pixel_spacing: Sequence[float] = PIXEL_SPACING,
    rescale: bool = True,
    frames: int = 1,
) -> Path:
    """One uncompressed CT image: ``pixels`` is (Rows, Columns) int16, or (frames, Rows, Columns)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.SeriesInstanceUID = series_uid
    ds.Modality = "CT"
    if instance_number is not None:
        ds.InstanceNumber = instance_number
    if position is not None:
        ds.ImagePositionPatient = [float(v) for v in position]
    if orientation is not None:
        ds.ImageOrientationPatient = [float(v) for v in orientation]
    ds.PixelSpacing = [float(v) for v in pixel_spacing]
    ds.SliceThickness = 1.0
    ds.Rows, ds.Columns = pixels.shape[-2:]
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    if rescale:
        ds.RescaleSlope = SLOPE
        ds.RescaleIntercept = INTERCEPT
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<i2").tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_series(
    folder: Path,
    count: int = 5,
    *,
    spacing: float = 2.0,
    orientation: Vector = AXIAL,
    origin: Vector = (-20.0, 30.0, 5.0),
    step: Vector | None = None,
) -> list[Path]:
    """``count`` slices k = 0.. at ``origin + k * step`` (default: ``spacing`` along the normal), written in
    reverse InstanceNumber order and returned in a scrambled file order. Slice k holds ``slice_values(k)``."""
    step_vector = np.asarray(step, float) if step is not None else spacing * normal_of(orientation)
    paths = [
        write_slice(
            folder / f"slice_{k}.dcm",
            slice_values(k),
            position=np.asarray(origin, float) + k * step_vector,
            orientation=orientation,
            instance_number=count - k,
        )
        for k in range(count)
    ]
    random.Random(count).shuffle(paths)
    return paths


def expected_synthetic(count: int) -> Array:
    return np.stack([slice_values(k).astype(np.float32) * SLOPE + INTERCEPT for k in range(count)])[np.newaxis]


def decode_and_probe(sources: Sequence[Any], **kwargs: Any) -> decode.Decoded:
    """Decode, and check that the probe agrees on everything it reports."""
    probed = probe_series(sources, **kwargs)
    decoded = decode_series(sources, **kwargs)
    array = decoded.array
    assert probed.kind == "volume" and probed.format == "dicom"
    assert probed.shape == array.shape
    assert probed.dtype == array.dtype.name
    assert probed.frame_count == array.shape[1] == len(sources)
    assert probed.spacing == decoded.spacing
    assert probed.geometry == decoded.geometry
    assert array.dtype.isnative and array.flags.c_contiguous and array.flags.writeable
    return decoded


def geometry_of(decoded: decode.Decoded) -> SeriesGeometry:
    assert decoded.geometry is not None
    return decoded.geometry


def refused(action: Callable[[], object], *fragments: str) -> DecodeError:
    with pytest.raises(DecodeError) as caught:
        action()
    for fragment in fragments:
        assert fragment in str(caught.value), f"{fragment!r} not in {caught.value}"
    return caught.value


# ------------------------------------------------------------------------------------------ real series


def test_ct5n_is_ordered_by_position_not_instance_number(dicom_test_dir: Path) -> None:
    files = series_files(dicom_test_dir, CT5N)
    datasets = [pydicom.dcmread(f) for f in files]
    by_z = sorted(datasets, key=lambda ds: float(ds.ImagePositionPatient[2]))  # axial: the normal is +z
    assert [int(ds.InstanceNumber) for ds in by_z] == [10, 9, 8, 7, 6]  # InstanceNumber runs opposite to z

    decoded = decode_and_probe(files, resource_id="ct5n")
    np.testing.assert_array_equal(decoded.array, pydicom_volume(by_z))
    assert decoded.array.dtype == np.float32
    z = [float(ds.ImagePositionPatient[2]) for ds in by_z]
    geometry = geometry_of(decoded)
    assert [files[i].name for i in geometry.order] == [Path(str(ds.filename)).name for ds in by_z]
    np.testing.assert_allclose(geometry.positions, z)
    np.testing.assert_allclose(geometry.slice_spacings, np.diff(z))
    assert geometry.normal == pytest.approx((0.0, 0.0, 1.0))
    assert geometry.warnings == ()
    assert decoded.spacing == pytest.approx((z[1] - z[0], *map(float, by_z[0].PixelSpacing)))
    assert decoded.spacing is not None and decoded.spacing[0] == pytest.approx(2.5)
    assert int(decoded.metainfo.InstanceNumber) == 10 and "PixelData" not in decoded.metainfo

    # Each slice n sits at its file's ImagePositionPatient; the affine is the lowest file's own (its
    # SliceThickness equals the gap), extended along n.
    assert decoded.affine is not None
    for n, ds in enumerate(by_z):
        np.testing.assert_allclose(decoded.affine @ [n, 0, 0, 1], lps_to_ras(np.asarray(ds.ImagePositionPatient)))
    single = decode.decode(Path(str(by_z[0].filename)))
    assert single.affine is not None
    np.testing.assert_allclose(decoded.affine, single.affine)


def test_ct2_gap_is_an_error_naming_the_gap_and_positions(dicom_test_dir: Path) -> None:
    files = series_files(dicom_test_dir, CT2)
    for action in (probe_series, decode_series):
        error = refused(
            functools.partial(action, files, resource_id="ct2"),
            "not evenly spaced",
            "[202.5, 1.25, 1.25]",
            "[-99.48, 103.02, 104.27, 105.52]",
            "17106",
            "17136",
            "on_irregular='warn'",
        )
        assert error.resource_id == "ct2" and "resource ct2" in str(error)


def test_ct2_with_warn_decodes_with_the_measured_gaps_and_no_spacing(dicom_test_dir: Path) -> None:
    files = series_files(dicom_test_dir, CT2)[::-1]
    with pytest.warns(SeriesGeometryWarning, match=r"not evenly spaced: gaps \[202.5, 1.25, 1.25\]"):
        decoded = decode_and_probe(files, on_irregular="warn")
    geometry = geometry_of(decoded)
    assert decoded.spacing is None and geometry.spacing is None
    assert decoded.affine is None and geometry.affine is None
    np.testing.assert_allclose(geometry.slice_spacings, [202.5, 1.25, 1.25], atol=1e-4)
    np.testing.assert_allclose(geometry.positions, [-99.48, 103.02, 104.27, 105.52], atol=1e-4)
    assert len(geometry.warnings) == 1 and "202.5" in geometry.warnings[0]
    by_z = sorted((pydicom.dcmread(f) for f in files), key=lambda ds: float(ds.ImagePositionPatient[2]))
    np.testing.assert_array_equal(decoded.array, pydicom_volume(by_z))


def test_mr700_radial_slices_are_not_one_stack(dicom_test_dir: Path) -> None:
    """MR700's seven slices rotate about their common column direction (radial planes, 16.4° apart), so
    there is no slice normal to stack them along: an error by default, whatever the file order."""
    files = series_files(dicom_test_dir, MR700)
    datasets = [pydicom.dcmread(f) for f in files]
    normals = np.array([normal_of(ds.ImageOrientationPatient) for ds in datasets])
    assert np.degrees(np.arccos(np.clip(normals @ normals.T, -1, 1))).max() > 90  # the premise
    for order in (files, files[::-1], [files[i] for i in (3, 0, 6, 1, 5, 2, 4)]):
        refused(functools.partial(decode_series, order, resource_id="mr"), "not parallel", "°", "resource mr")


def test_mr700_with_warn_stacks_in_instance_number_order_whatever_the_file_order(dicom_test_dir: Path) -> None:
    files = series_files(dicom_test_dir, MR700)
    datasets = {f: pydicom.dcmread(f) for f in files}
    by_instance = sorted(datasets.values(), key=lambda ds: int(ds.InstanceNumber))
    assert files != sorted(files, key=lambda f: int(datasets[f].InstanceNumber))  # shuffled on disk
    expected = pydicom_volume(by_instance)
    for order in (files, files[::-1], [files[i] for i in (3, 0, 6, 1, 5, 2, 4)]):
        with pytest.warns(SeriesGeometryWarning, match="not parallel"):
            decoded = decode_and_probe(order, on_irregular="warn")
        np.testing.assert_array_equal(decoded.array, expected)
        geometry = geometry_of(decoded)
        assert [int(datasets[order[i]].InstanceNumber) for i in geometry.order] == list(range(1, 8))
        assert decoded.spacing is None and decoded.affine is None and geometry.normal is None
        assert geometry.positions == () and geometry.slice_spacings == ()


def test_orthogonal_localizers_are_refused(dicom_test_dir: Path) -> None:
    files = series_files(dicom_test_dir, CT2N)  # one sagittal, one coronal image
    refused(lambda: probe_series(files), "not parallel", "90°", "6293", "6924")


# ------------------------------------------------------------------------------------- synthetic geometry


def test_known_positions_and_spacing(tmp_path: Path) -> None:
    files = write_series(tmp_path, 5, spacing=2.0, origin=(-20.0, 30.0, 5.0))
    decoded = decode_and_probe(files)
    np.testing.assert_array_equal(decoded.array, expected_synthetic(5))
    geometry = geometry_of(decoded)
    assert [files[i].name for i in geometry.order] == [f"slice_{k}.dcm" for k in range(5)]
    np.testing.assert_allclose(geometry.positions, [5.0, 7.0, 9.0, 11.0, 13.0])
    np.testing.assert_allclose(geometry.slice_spacings, [2.0] * 4)
    assert decoded.spacing == pytest.approx((2.0, *PIXEL_SPACING))
    assert int(decoded.metainfo.InstanceNumber) == 5  # slice 0 is the lowest
    assert pickle.loads(pickle.dumps(decoded)).geometry == geometry  # process workers pickle it


def test_tilted_orientation_uses_the_real_normal_and_spacing(tmp_path: Path) -> None:
    theta = math.radians(20)  # the axial plane rotated 20° about x
    row, column = np.array([1.0, 0.0, 0.0]), np.array([0.0, math.cos(theta), math.sin(theta)])
    normal = np.array([0.0, -math.sin(theta), math.cos(theta)])
    origin = np.array([-20.0, 30.0, 5.0])
    files = write_series(tmp_path, 6, spacing=1.5, orientation=(*row, *column), origin=origin)
    decoded = decode_and_probe(files)
    np.testing.assert_array_equal(decoded.array, expected_synthetic(6))
    geometry = geometry_of(decoded)
    assert geometry.normal == pytest.approx(tuple(normal))
    np.testing.assert_allclose(geometry.slice_spacings, [1.5] * 5)
    assert decoded.spacing == pytest.approx((1.5, *PIXEL_SPACING))
    assert decoded.affine is not None and geometry.warnings == ()
    for n, h, w in [(0, 0, 0), (2, 3, 1), (5, ROWS - 1, COLUMNS - 1)]:
        lps = origin + n * 1.5 * normal + h * PIXEL_SPACING[0] * column + w * PIXEL_SPACING[1] * row
        np.testing.assert_allclose(decoded.affine @ [n, h, w, 1], lps_to_ras(lps), atol=1e-9)


def test_gantry_tilt_shears_the_affine_and_says_so(tmp_path: Path) -> None:
    """Axial images whose positions also step along y (a tilted gantry): spacing is the distance between
    the planes, and the affine puts every slice exactly at its ImagePositionPatient."""
    step = np.array([0.0, 2.0 * math.tan(math.radians(15)), 2.0])
    origin = np.array([-20.0, 30.0, 5.0])
    files = write_series(tmp_path, 4, origin=origin, step=step)
    with pytest.warns(SeriesGeometryWarning, match="sheared by 15°"):
        decoded = decode_and_probe(files)
    assert decoded.spacing == pytest.approx((2.0, *PIXEL_SPACING))
    assert decoded.affine is not None
    for n in range(4):
        np.testing.assert_allclose(decoded.affine @ [n, 0, 0, 1], lps_to_ras(origin + n * step), atol=1e-9)


def test_rounded_headers_are_one_orthogonal_stack(tmp_path: Path) -> None:
    """Orientations a millionth apart and positions rounded to 0.01 mm: no warning, no shear, no error."""
    theta = math.radians(20)
    normal = np.array([0.0, -math.sin(theta), math.cos(theta)])
    files = []
    for k in range(4):
        jitter = 1e-6 * (k % 2)
        orientation = (1.0, jitter, 0.0, 0.0, math.cos(theta), math.sin(theta))
        position = np.round(np.array([-20.0, 30.0, 5.0]) + k * 1.3 * normal, 2)
        path = tmp_path / f"s{k}.dcm"
        files.append(write_slice(path, slice_values(k), position=position, orientation=orientation))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        decoded = decode_and_probe(files[::-1])
    assert decoded.spacing is not None and decoded.spacing[0] == pytest.approx(1.3, abs=0.01)
    assert decoded.affine is not None
    ras_normal = np.array([-normal[0], -normal[1], normal[2]])
    np.testing.assert_allclose(decoded.affine[:3, 0], ras_normal * decoded.spacing[0], atol=1e-5)  # orthogonal


def test_orientation_tolerance_does_not_depend_on_file_order(tmp_path: Path) -> None:
    """Rotations of 0°, 0.06° and 0.12°: each neighbour is within 0.1°, the extremes are not."""
    files = []
    for k, degrees in enumerate((0.0, 0.06, 0.12)):
        a = math.radians(degrees)
        orientation = (math.cos(a), math.sin(a), 0.0, -math.sin(a), math.cos(a), 0.0)
        files.append(
            write_slice(tmp_path / f"s{k}.dcm", slice_values(k), position=(0, 0, 2.0 * k), orientation=orientation)
        )
    for order in ([0, 1, 2], [1, 0, 2], [1, 2, 0], [2, 1, 0]):
        refused(functools.partial(probe_series, [files[i] for i in order]), "not parallel", "0.12°")


def test_gaps_within_the_tolerance_are_even(tmp_path: Path) -> None:
    z = [0.0, 2.0, 4.01, 6.0]
    files = [write_slice(tmp_path / f"s{k}.dcm", slice_values(k), position=(0, 0, z[k])) for k in range(4)]
    assert geometry_of(decode_and_probe(files)).spacing == pytest.approx((2.0, *PIXEL_SPACING))
    refused(lambda: probe_series(files, tolerance=0.001), "not evenly spaced")


def test_positions_off_one_line_are_irregular(tmp_path: Path) -> None:
    points = [(0, 0, 0), (0, 0, 2), (3, 0, 4), (0, 0, 6)]  # slice 2 moved 3 mm sideways
    files = [write_slice(tmp_path / f"s{k}.dcm", slice_values(k), position=p) for k, p in enumerate(points)]
    refused(lambda: decode_series(files), "do not lie on one line", "s2.dcm")
    with pytest.warns(SeriesGeometryWarning, match="one line"):
        decoded = decode_and_probe(files, on_irregular="warn")
    assert decoded.spacing is None and decoded.affine is None


def test_missing_positions_everywhere_falls_back_to_instance_number(tmp_path: Path) -> None:
    files = [
        write_slice(tmp_path / f"s{k}.dcm", slice_values(k), position=None, orientation=None, instance_number=9 - k)
        for k in range(3)
    ]
    with pytest.warns(SeriesGeometryWarning, match="ordered by InstanceNumber"):
        decoded = decode_and_probe(files)
    np.testing.assert_array_equal(decoded.array, expected_synthetic(3)[:, ::-1])
    geometry = geometry_of(decoded)
    assert geometry.order == (2, 1, 0) and geometry.spacing is None and decoded.affine is None
    assert len(geometry.warnings) == 1

    clash = write_slice(tmp_path / "clash.dcm", slice_values(5), position=None, orientation=None, instance_number=8)
    refused(lambda: probe_series([*files, clash]), "share InstanceNumber 8", "s1.dcm", "clash.dcm")


def test_a_single_file_series(tmp_path: Path) -> None:
    path = write_slice(tmp_path / "one.dcm", slice_values(0), position=(1, 2, 3))
    decoded = decode_and_probe([path])
    assert decoded.array.shape == (1, 1, ROWS, COLUMNS)
    assert decoded.spacing == pytest.approx((1.0, *PIXEL_SPACING))  # SliceThickness: nothing to measure
    single = decode.decode(path)
    assert decoded.affine is not None and single.affine is not None
    np.testing.assert_allclose(decoded.affine, single.affine)


def test_mixed_dtypes_stack_in_their_common_type(tmp_path: Path) -> None:
    files = write_series(tmp_path, 3)
    plain = write_slice(tmp_path / "plain.dcm", slice_values(3), position=(-20.0, 30.0, 11.0), rescale=False)
    decoded = decode_and_probe([plain, *files])
    assert decoded.array.dtype == np.float32
    expected = expected_synthetic(4)
    expected[:, 3] = slice_values(3)  # no rescale: the stored values
    np.testing.assert_array_equal(decoded.array, expected)


def test_sources_may_be_bytes_or_file_objects(tmp_path: Path) -> None:
    files = write_series(tmp_path, 4)
    from_paths = decode_series(files)
    data = [f.read_bytes() for f in files]
    names = [f.name for f in files]
    decoded = decode_and_probe(data, filenames=names)
    np.testing.assert_array_equal(decoded.array, from_paths.array)
    assert decoded.geometry == from_paths.geometry
    # File objects are read from their current position, so each call gets fresh ones.
    assert probe_series([io.BytesIO(d) for d in data]).geometry == from_paths.geometry
    decoded = decode_series([io.BytesIO(d) for d in data], filenames=names)
    np.testing.assert_array_equal(decoded.array, from_paths.array)


# -------------------------------------------------------------------------------------------- bad input


def _bad_series(tmp_path: Path, case: str) -> tuple[list[Path], tuple[str, ...]]:
    """A 3-slice series plus one odd file; the fragments the error must contain."""
    good = write_series(tmp_path / "good", 3)
    z = 11.0  # the next free position of write_series' default layout

    def odd(**kwargs: Any) -> Path:
        settings: dict[str, Any] = {"position": (-20.0, 30.0, z), "instance_number": 7, **kwargs}
        return write_slice(tmp_path / "odd.dcm", settings.pop("pixels", slice_values(3)), **settings)

    if case == "duplicate":
        return [*good, odd(position=(-20.0, 30.0, 7.0))], ("duplicate slice positions", "slice_1.dcm", "odd.dcm")
    if case == "size":
        pixels = np.zeros((ROWS + 1, COLUMNS), np.int16)
        return [*good, odd(pixels=pixels)], ("slice sizes", "odd.dcm", "5x5", "4x5")
    if case == "series":
        return [*good, odd(series_uid="1.2.3.4")], ("SeriesInstanceUID 1.2.3.4", "odd.dcm")
    if case == "orientation":
        tilted = (1.0, 0.0, 0.0, 0.0, math.cos(0.1), math.sin(0.1))
        return [*good, odd(orientation=tilted)], ("not parallel", "odd.dcm", "5.73°")
    if case == "pixel spacing":
        return [*good, odd(pixel_spacing=(0.5, 0.7))], ("pixel spacings", "odd.dcm", "0.7")
    if case == "multi-frame":
        pixels = np.stack([slice_values(3)] * 2)
        return [*good, odd(pixels=pixels, frames=2)], ("single-frame", "odd.dcm", "2 frames")
    if case == "missing position":
        return [*good, odd(position=None)], ("is missing on", "odd.dcm", "present on", "slice_0.dcm")
    if case == "not DICOM":
        png = tmp_path / "odd.png"
        png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
        return [*good, png], ("DICOM files only", "png", "odd.png")
    raise AssertionError(case)


BAD_CASES = ["duplicate", "size", "series", "orientation", "pixel spacing", "multi-frame", "missing position"]


@pytest.mark.parametrize("case", [*BAD_CASES, "not DICOM"])
def test_bad_series_are_refused_naming_the_files(tmp_path: Path, case: str) -> None:
    files, fragments = _bad_series(tmp_path, case)
    for action in (probe_series, decode_series):
        for order in (files, files[::-1]):
            error = refused(functools.partial(action, order, resource_id="r7"), *fragments, "resource r7")
            assert error.resource_id == "r7"


@pytest.mark.parametrize("case", ["duplicate", "size", "series", "pixel spacing", "multi-frame", "missing position"])
def test_warn_does_not_excuse_what_cannot_be_stacked(tmp_path: Path, case: str) -> None:
    files, fragments = _bad_series(tmp_path, case)
    refused(lambda: decode_series(files, on_irregular="warn"), *fragments)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="on_irregular"):
        probe_series([b""], on_irregular="ignore")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="tolerance"):
        decode_series([b""], tolerance=-1)
    with pytest.raises(ValueError, match="2 filenames for 1 sources"):
        decode_series([b""], filenames=["a", "b"])
    with pytest.raises(TypeError, match="sequence of files"):
        decode_series("one.dcm")
    refused(lambda: decode_series([]), "at least one file")
    refused(lambda: probe_series([b""], filenames=["empty.dcm"]), "empty", "empty.dcm")


# ---------------------------------------------------------------------------------------------- properties


@pytest.fixture(scope="module")
def shuffled_series(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], decode.Decoded]:
    files = write_series(tmp_path_factory.mktemp("series"), 7, spacing=1.25, orientation=(0, 1, 0, 0, 0, -1))
    return files, decode_series(files)


@settings(max_examples=25, deadline=None)
@given(permutation=st.permutations(range(7)))
def test_file_order_never_matters(shuffled_series: tuple[list[Path], decode.Decoded], permutation: list[int]) -> None:
    files, reference = shuffled_series
    decoded = decode_series([files[i] for i in permutation])
    np.testing.assert_array_equal(decoded.array, reference.array)
    np.testing.assert_array_equal(decoded.array, expected_synthetic(7))
    assert decoded.spacing == reference.spacing
    assert geometry_of(decoded).positions == geometry_of(reference).positions
    assert decoded.metainfo.SOPInstanceUID == reference.metainfo.SOPInstanceUID


@settings(max_examples=50, deadline=None)
@given(
    permutation=st.lists(st.integers(0, 5), min_size=1, max_size=9).flatmap(lambda v: st.permutations(range(len(v))))
)
def test_in_place_permutation_equals_fancy_indexing(permutation: list[int]) -> None:
    volume = np.arange(2 * len(permutation) * 3, dtype=np.float32).reshape(2, len(permutation), 3, 1)
    expected = volume[:, permutation].copy()
    _permute_slices(volume, permutation)
    np.testing.assert_array_equal(volume, expected)


# --------------------------------------------------------------------------------------------- end to end


class _RemoteOnly:
    """A source without local paths: the series' files arrive as bytes, one at a time."""

    def __init__(self, project: LocalProject) -> None:
        self.project = project
        self.opened: list[str] = []

    def local_path(self, relpath: str) -> str | None:
        return None

    def open_file(self, relpath: str) -> IO[bytes]:
        self.opened.append(relpath)
        return self.project.open_file(relpath)


def test_a_stored_series_decodes_through_the_project(tmp_path: Path, dicom_test_dir: Path) -> None:
    project = LocalProject.create(tmp_path / "proj", "series")
    files = series_files(dicom_test_dir, CT5N)
    resource = project.add_resource(files, resource_id="ct5n")
    assert resource.metadata["shape"] == [1, 5, 16, 16] and resource.frame_count == 5
    assert resource.metadata["spacing"] == pytest.approx([2.5, 0.488281, 0.488281])
    assert resource.metadata["slice_spacings"] == pytest.approx([2.5] * 4)

    decoded = decode_resource(project, resource)
    reference = decode_series(files)
    np.testing.assert_array_equal(decoded.array, reference.array)
    assert decoded.spacing == reference.spacing
    np.testing.assert_array_equal(decoded.affine, reference.affine)
    remote = _RemoteOnly(project)
    np.testing.assert_array_equal(decode_resource(remote, resource).array, reference.array)  # type: ignore[arg-type]
    assert sorted(remote.opened) == sorted(resource.files)  # each file read once


def test_an_irregular_series_is_stored_but_refused_when_decoded(tmp_path: Path, dicom_test_dir: Path) -> None:
    project = LocalProject.create(tmp_path / "proj", "series")
    files = series_files(dicom_test_dir, CT2)
    with pytest.warns(SeriesGeometryWarning, match="202.5"):
        resource = project.add_resource(files, resource_id="ct2")
    assert resource.metadata["spacing"] is None
    assert resource.metadata["slice_spacings"] == pytest.approx([202.5, 1.25, 1.25], abs=1e-4)

    error = refused(lambda: decode_resource(project, resource), "not evenly spaced", "202.5", "resource ct2")
    assert error.resource_id == "ct2"
    with pytest.warns(SeriesGeometryWarning):
        sample = DecodeImage(project, on_irregular="warn")({"resource": resource})
    assert sample["image"].shape == (1, 4, 16, 16) and sample["spacing"] is None


def test_a_series_that_cannot_be_stacked_is_not_stored(tmp_path: Path) -> None:
    project = LocalProject.create(tmp_path / "proj", "series")
    files, _ = _bad_series(tmp_path / "src", "size")
    with pytest.raises(ProjectError, match="mixed-up") as caught:
        project.add_resource(files, filename="mixed-up")
    assert "odd.dcm" in str(caught.value)
    assert project.resources() == []


def test_warnings_are_issued_once_per_call(tmp_path: Path) -> None:
    files = write_series(tmp_path, 3, step=(0.0, 1.0, 2.0))  # sheared: one note
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        decode_series(files)
    assert [type(w.message) for w in caught] == [SeriesGeometryWarning]
    assert caught[0].filename == __file__  # attributed to the caller
