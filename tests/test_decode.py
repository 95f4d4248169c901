"""Tests of ``datamint_pipes.decode``.

Every decoded real file is cross-checked against an independent path written here: pydicom's ``pixel_array`` and
``apply_modality_lut``, nibabel's ``get_fdata`` reoriented with numpy ops derived from ``aff2axcodes``, Pillow's
``np.asarray(Image.open(...))``, and arrays the tests themselves encode (PNG, NIfTI, lossless video).
"""

from __future__ import annotations

import contextlib
import gzip
import io
import itertools
import pickle
import struct
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import av
import nibabel as nib
import numpy as np
import pydicom
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image
from pydicom.encaps import generate_frames
from pydicom.pixels import apply_modality_lut

import datamint_pipes.decode as decoding
from datamint_pipes.decode import (
    Decoded,
    ProbeResult,
    _registry,
    decode,
    detect_format,
    get_decoder,
    minmax_to_uint8,
    probe,
)
from datamint_pipes.errors import DecodeError

Array = np.ndarray[Any, Any]
Locate = Callable[[str], Path]

pytestmark = pytest.mark.filterwarnings(
    "ignore:The pixel data is .* excess padding:UserWarning",
    "ignore:Invalid value for VR IS:UserWarning",
    "ignore:End of file reached before delimiter:UserWarning",
)


def decode_checked(source: Any, **kwargs: Any) -> Decoded:
    """Decode, and check the probe/decode contract and the array invariants on the way."""
    probed = probe(source, **kwargs)
    decoded = decode(source, **kwargs)
    array = decoded.array
    assert isinstance(probed, ProbeResult)
    assert probed.shape == array.shape
    assert probed.dtype == array.dtype.name
    assert array.dtype.isnative and array.flags.c_contiguous and array.flags.writeable
    assert probed.frame_count == (1 if array.ndim == 3 else array.shape[1])
    assert (probed.kind == "image") == (array.ndim == 3)
    assert probed.spacing == decoded.spacing
    if decoded.spacing is not None:
        assert len(decoded.spacing) == array.ndim - 1
    return decoded


def test_public_surface_is_exactly_all() -> None:
    assert sorted(decoding.__all__) == sorted(
        [
            "Decoded",
            "Decoder",
            "ProbeResult",
            "SeriesGeometry",
            "SeriesGeometryWarning",
            "decode",
            "decode_frames",
            "decode_series",
            "detect_format",
            "get_decoder",
            "minmax_to_uint8",
            "probe",
            "probe_series",
            "register",
        ]
    )
    for name in decoding.__all__:
        assert getattr(decoding, name) is not None


# ---------------------------------------------------------------------------------------------------- DICOM


def dicom_reference(path: Path) -> Array:
    """(C,[N,]H,W) expected from pydicom alone: pixel_array, modality LUT, MONOCHROME1 inversion by BitsStored."""
    ds = pydicom.dcmread(path)
    pixels = ds.pixel_array
    photometric = ds.PhotometricInterpretation
    frames = int(ds.get("NumberOfFrames") or 1)
    if ds.SamplesPerPixel == 1 and photometric.startswith("MONOCHROME"):
        if photometric == "MONOCHROME1":
            full = 2 ** int(ds.BitsStored) - 1
            assert ds.PixelRepresentation == 0
            pixels = full - pixels.astype(np.int64)
        pixels = apply_modality_lut(pixels, ds)
    if ds.SamplesPerPixel == 1 and photometric != "PALETTE COLOR":
        return pixels[np.newaxis]
    channels_last = pixels if frames > 1 else pixels[np.newaxis]
    result = np.transpose(channels_last, (3, 0, 1, 2))
    return result if frames > 1 else result[:, 0]


def assert_values(actual: Array, expected: Array) -> None:
    assert actual.shape == expected.shape
    if actual.dtype.kind == "f":
        scale = max(float(np.abs(expected).max()), 1.0)
        np.testing.assert_allclose(actual, expected, rtol=1e-6, atol=1e-6 * scale)
    else:
        np.testing.assert_array_equal(actual, expected)


DICOM_FILES = {
    # name: (shape, dtype)
    "CT_small.dcm": ((1, 128, 128), "float32"),
    "MR_small.dcm": ((1, 64, 64), "int16"),
    "MR_small_implicit.dcm": ((1, 64, 64), "int16"),
    "MR_small_bigendian.dcm": ((1, 64, 64), "int16"),
    "MR_small_expb.dcm": ((1, 64, 64), "int16"),
    "MR_small_padded.dcm": ((1, 64, 64), "int16"),
    "MR_small_RLE.dcm": ((1, 64, 64), "int16"),
    "MR_small_jp2klossless.dcm": ((1, 64, 64), "int16"),
    "JPEG2000.dcm": ((1, 1024, 256), "int16"),
    "SC_rgb_rle.dcm": ((3, 100, 100), "uint8"),
    "SC_rgb_rle_2frame.dcm": ((3, 2, 100, 100), "uint8"),
    "SC_rgb_rle_16bit.dcm": ((3, 100, 100), "uint16"),
    "SC_rgb_rle_16bit_2frame.dcm": ((3, 2, 100, 100), "uint16"),
    "SC_rgb_rle_32bit.dcm": ((3, 100, 100), "uint32"),
    "SC_rgb_rle_32bit_2frame.dcm": ((3, 2, 100, 100), "uint32"),
    "examples_rgb_color.dcm": ((3, 240, 320), "uint8"),
    "examples_ybr_color.dcm": ((3, 30, 240, 320), "uint8"),
    "rtdose.dcm": ((1, 15, 10, 10), "uint32"),
    "rtdose_rle.dcm": ((1, 15, 10, 10), "uint32"),
    "image_dfl.dcm": ((1, 512, 512), "uint8"),
    "liver_1frame.dcm": ((1, 512, 512), "uint8"),
    "emri_small.dcm": ((1, 10, 64, 64), "uint16"),
    "emri_small_RLE.dcm": ((1, 10, 64, 64), "uint16"),
    "emri_small_big_endian.dcm": ((1, 10, 64, 64), "uint16"),
    "emri_small_jpeg_2k_lossless.dcm": ((1, 10, 64, 64), "uint16"),
    "RG1_UNCR.dcm": ((1, 1955, 1841), "uint16"),
}


@pytest.mark.parametrize("name", sorted(DICOM_FILES))
def test_dicom_matches_pydicom(name: str, dicom_file: Locate) -> None:
    path = dicom_file(name)
    decoded = decode_checked(path)
    shape, dtype = DICOM_FILES[name]
    assert decoded.array.shape == shape
    assert decoded.array.dtype == np.dtype(dtype)
    assert_values(decoded.array, dicom_reference(path))
    metainfo = decoded.metainfo
    assert isinstance(metainfo, pydicom.Dataset)
    assert "PixelData" not in metainfo and "Rows" in metainfo
    assert pickle.loads(pickle.dumps(metainfo)).Rows == metainfo.Rows


def test_dicom_ybr_jpeg_frames_match_pillow(dicom_file: Locate) -> None:
    """Each JPEG frame decoded by Pillow on its own (YCbCr -> RGB by libjpeg) equals our frame: no row of frame 0."""
    path = dicom_file("examples_ybr_color.dcm")
    ds = pydicom.dcmread(path)
    frames = [
        np.asarray(Image.open(io.BytesIO(frame)).convert("RGB"))
        for frame in generate_frames(ds.PixelData, number_of_frames=int(ds.NumberOfFrames))
    ]
    expected = np.stack(frames).transpose(3, 0, 1, 2)
    np.testing.assert_array_equal(decode(path).array, expected)
    assert not np.array_equal(expected[:, 0], expected[:, 1])


def test_dicom_palette_matches_manual_lut(dicom_file: Locate) -> None:
    path = dicom_file("examples_palette.dcm")
    ds = pydicom.dcmread(path)
    entries, first, _bits = ds.RedPaletteColorLookupTableDescriptor
    index = np.clip(ds.pixel_array.astype(np.int64) - first, 0, (entries or 65536) - 1)
    expected = np.stack(
        [
            np.frombuffer(getattr(ds, f"{colour}PaletteColorLookupTableData"), dtype="<u2")[index]
            for colour in ("Red", "Green", "Blue")
        ]
    )
    decoded = decode_checked(path)
    assert decoded.array.dtype == np.uint16
    np.testing.assert_array_equal(decoded.array, expected)


def test_dicom_monochrome1_is_inverted(dicom_file: Locate) -> None:
    path = dicom_file("RG1_UNCR.dcm")
    ds = pydicom.dcmread(path)
    decoded = decode(path).array
    assert ds.PhotometricInterpretation == "MONOCHROME1" and ds.BitsStored == 15
    np.testing.assert_array_equal(decoded[0], 32767 - ds.pixel_array.astype(np.int64))
    assert probe(path).spacing is None  # its PixelSpacing is [0, 0]: not a spacing


def test_dicom_monochrome1_with_rescale_inverts_over_rescaled_range(dicom_file: Locate) -> None:
    ds = pydicom.dcmread(dicom_file("CT_small.dcm"))
    stored = ds.pixel_array.astype(np.float64)
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.RescaleSlope, ds.RescaleIntercept = 2, -1000
    buffer = io.BytesIO()
    ds.save_as(buffer)
    low, high = -(2**15), 2**15 - 1  # BitsStored 16, signed
    expected = 2 * ((low + high) - stored) - 1000
    decoded = decode_checked(buffer.getvalue())
    assert decoded.array.dtype == np.float32
    np.testing.assert_allclose(decoded.array[0], expected)


def test_dicom_enhanced_per_frame_rescale(dicom_file: Locate) -> None:
    path = dicom_file("eCT_Supplemental.dcm")
    ds = pydicom.dcmread(path)
    expected = []
    for frame, group in zip(ds.pixel_array, ds.PerFrameFunctionalGroupsSequence, strict=True):
        transform = group.get("PixelValueTransformationSequence") or (
            ds.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence
        )
        expected.append(frame * float(transform[0].RescaleSlope) + float(transform[0].RescaleIntercept))
    decoded = decode_checked(path)
    assert decoded.array.dtype == np.float32
    np.testing.assert_allclose(decoded.array[0], np.stack(expected))
    assert decoded.spacing is not None and decoded.spacing[1:] == (0.388672, 0.388672)


def test_dicom_spacing_and_affine(dicom_file: Locate) -> None:
    ct = pydicom.dcmread(dicom_file("CT_small.dcm"))
    decoded = decode(dicom_file("CT_small.dcm"))
    assert decoded.spacing == tuple(float(v) for v in ct.PixelSpacing)
    assert decoded.affine is not None
    row_dir, col_dir = np.array(ct.ImageOrientationPatient[:3]), np.array(ct.ImageOrientationPatient[3:])
    h, w = 7, 11  # voxel (row 7, column 11): LPS = IPP + row * dr * col_dir + column * dc * row_dir
    lps = np.array(ct.ImagePositionPatient) + h * ct.PixelSpacing[0] * col_dir + w * ct.PixelSpacing[1] * row_dir
    np.testing.assert_allclose(decoded.affine @ [0, h, w, 1], [-lps[0], -lps[1], lps[2], 1])

    dose = pydicom.dcmread(dicom_file("rtdose.dcm"))
    decoded = decode(dicom_file("rtdose.dcm"))
    assert decoded.spacing == (5.0, 10.0, 10.0)
    assert decoded.affine is not None
    for frame, offset in enumerate(dose.GridFrameOffsetVector):
        lps = np.array(dose.ImagePositionPatient) + np.array([0, 0, offset])  # axial: frames step along +z
        np.testing.assert_allclose(decoded.affine @ [frame, 0, 0, 1], [-lps[0], -lps[1], lps[2], 1])


@pytest.mark.parametrize(
    ("name", "probe_ok", "message"),
    [
        ("MR_truncated.dcm", True, "less than expected"),  # header intact, pixel data cut short
        ("badVR.dcm", False, "NumberOfFrames '1A'"),
        ("no_meta.dcm", False, "no image"),  # no preamble, and only one empty element: nothing to decode
        ("emri_small_jpeg_ls_lossless.dcm", True, "no installed codec decodes DICOM JPEG-LS"),
    ],
)
def test_broken_dicom_fails_cleanly(name: str, probe_ok: bool, message: str, dicom_file: Locate) -> None:
    """Probe reads headers only, so it passes where only the pixels are bad (the truncated payload, a missing
    JPEG-LS codec); decode then fails with a DecodeError naming the resource, the file and the cause."""
    path = dicom_file(name)
    if probe_ok:
        assert probe(path).frame_count >= 1
    else:
        with pytest.raises(DecodeError, match=message):
            probe(path)
    with pytest.raises(DecodeError, match=message) as caught:
        decode(path, resource_id="res-42")
    assert caught.value.resource_id == "res-42" and "res-42" in str(caught.value) and name in str(caught.value)


def test_dicom_without_preamble_is_read_by_suffix_or_mimetype(dicom_file: Locate) -> None:
    """A bare implicit-VR dataset (no preamble, no file meta) decodes when the suffix or mimetype says DICOM."""
    ds = pydicom.dcmread(dicom_file("MR_small.dcm"))
    expected = ds.pixel_array
    bare = pydicom.filebase.DicomBytesIO()
    bare.is_little_endian, bare.is_implicit_VR = True, True
    pydicom.filewriter.write_dataset(bare, ds)
    raw = bare.getvalue()
    assert raw[128:132] != b"DICM"
    by_suffix = decode_checked(raw, filename="slice.dcm")
    np.testing.assert_array_equal(by_suffix.array[0], expected)
    np.testing.assert_array_equal(decode(raw, mimetype="application/dicom").array, by_suffix.array)
    with pytest.raises(DecodeError, match="unrecognised"):
        decode(raw)


# ---------------------------------------------------------------------------------------------------- detection


def test_dicom_magic_wins_over_tiff_preamble(dicom_file: Locate) -> None:
    data = dicom_file("CT_small.dcm").read_bytes()
    assert data[:4] == b"II*\x00"  # a TIFF header in the preamble: a first-bytes sniffer says TIFF
    assert detect_format(data[:4096], "scan.tif", "image/tiff") == "dicom"
    assert decode(data, filename="scan.tif").array.shape == (1, 128, 128)


def test_detection_order() -> None:
    png = _png_bytes(Image.new("L", (3, 2)))
    assert detect_format(png, "image.jpg", "image/jpeg") == "png"  # magic beats mimetype and suffix
    assert detect_format(b"\0" * 600, None, "application/dicom; charset=binary") == "dicom"
    assert detect_format(b"\0" * 600, "a/b/volume.NII.GZ", None) == "nifti"
    assert detect_format(b"\0" * 600, "clip.mp4", "application/octet-stream") == "video"
    assert detect_format(b"\0" * 600, "x.png", "application/dicom") == "dicom"  # mimetype beats suffix
    with pytest.raises(DecodeError, match="unrecognised"):
        detect_format(b"\0" * 600, "notes.txt", "text/plain")


def test_registry() -> None:
    assert get_decoder("dicom").name == "dicom"
    with pytest.raises(DecodeError, match="no decoder for format 'tiff'"):
        get_decoder("tiff")
    with pytest.raises(ValueError, match="already registered"):
        decoding.register(get_decoder("png"))
    with pytest.raises(TypeError):
        decoding.register(object())  # type: ignore[arg-type]


def test_a_registered_decoder_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_registry, "_DECODERS", dict(_registry._DECODERS))

    class Fake:
        name = "fake"
        mimetypes = ("application/x-fake",)
        suffixes = (".fake",)

        def sniff(self, head: bytes) -> bool:
            return head.startswith(b"FAKE")

        def probe(self, stream: Any) -> ProbeResult:
            return ProbeResult("image", "fake", (1, 1, 1), "uint8", 1, (1, 1))

        def decode(self, stream: Any) -> Decoded:
            raise RuntimeError("boom")

    decoding.register(Fake())
    assert probe(b"FAKE....").format == "fake"
    with pytest.raises(DecodeError, match="cannot decode fake file: RuntimeError: boom") as caught:
        decode(b"FAKE....", resource_id="r1", filename="a.fake")
    assert isinstance(caught.value.__cause__, RuntimeError)
    assert caught.value.filename == "a.fake"


def test_sources(tmp_path: Path, dicom_file: Locate) -> None:
    data = dicom_file("MR_small.dcm").read_bytes()
    expected = decode(data).array
    path = tmp_path / "x.dcm"
    path.write_bytes(data)

    class Unseekable(io.RawIOBase):
        def __init__(self, payload: bytes) -> None:
            self._inner = io.BytesIO(payload)

        def readable(self) -> bool:
            return True

        def readinto(self, buffer: Any) -> int:
            return self._inner.readinto(buffer)

    offset = io.BytesIO(b"junk" + data)
    offset.seek(4)
    with path.open("rb") as handle:
        sources: list[Any] = [path, str(path), memoryview(data), bytearray(data), handle, Unseekable(data), offset]
        for source in sources:
            np.testing.assert_array_equal(decode(source).array, expected)
    with pytest.raises(DecodeError, match="empty"):
        decode(b"", filename="empty.png")
    with pytest.raises(DecodeError, match="FileNotFoundError") as caught:
        decode(tmp_path / "missing.dcm")
    assert "missing.dcm" in str(caught.value)
    with pytest.raises(DecodeError, match="binary file object"):
        decode(12)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------- NIfTI


def nifti_reference(image: nib.Nifti1Image) -> tuple[Array, Callable[[Array], Array]]:
    """get_fdata() reoriented to (C, S, P, L) with numpy ops from aff2axcodes; plus the index map back to storage."""
    data = np.asarray(image.get_fdata())
    if data.ndim == 3:
        data = data[..., np.newaxis]
    codes = nib.aff2axcodes(image.affine)
    order, flips = [], []
    for wanted, opposite in (("L", "R"), ("P", "A"), ("S", "I")):
        axis = codes.index(wanted) if wanted in codes else codes.index(opposite)
        order.append(axis)
        flips.append(codes[axis] != wanted)
    lps = np.transpose(data, [*order, 3])
    for axis, flip in enumerate(flips):
        if flip:
            lps = np.flip(lps, axis)
    spatial = image.shape[:3]

    def stored_index(nhw: Array) -> Array:
        """(n, h, w) of the normalized array -> (i, j, k) in the file."""
        lps_index = [nhw[2], nhw[1], nhw[0]]
        ijk = [0, 0, 0]
        for target, (axis, flip) in enumerate(zip(order, flips, strict=True)):
            ijk[axis] = spatial[axis] - 1 - lps_index[target] if flip else lps_index[target]
        return np.array(ijk)

    return lps.transpose(3, 2, 1, 0), stored_index


NIFTI_FILES = {
    "anatomical.nii": ((1, 25, 41, 33), "int16"),  # big-endian int16 on disk
    "functional.nii": ((20, 3, 21, 17), "float32"),  # scl_slope 0.0754, scl_inter 3100.8
    "example4d.nii.gz": ((2, 24, 96, 128), "int16"),  # oblique affine
    "example_nifti2.nii.gz": ((2, 12, 20, 32), "int16"),
    "standard.nii.gz": ((1, 7, 5, 4), "uint8"),
    "reoriented_anat_moved.nii": ((1, 22, 26, 21), "float32"),  # big-endian float32
}


@pytest.mark.parametrize("name", sorted(NIFTI_FILES))
def test_nifti_matches_nibabel(name: str, nibabel_data_dir: Path) -> None:
    path = nibabel_data_dir / name
    image: Any = nib.load(path)
    decoded = decode_checked(path)
    assert (decoded.array.shape, decoded.array.dtype.name) == NIFTI_FILES[name]
    expected, stored_index = nifti_reference(image)
    assert_values(decoded.array, expected)
    if decoded.array.dtype != np.float32 or image.get_data_dtype().kind == "f":
        assert decoded.array.dtype == image.get_data_dtype().newbyteorder("=")
    # The affine maps normalized indices to the same world point as the file's affine maps the stored voxel.
    assert decoded.affine is not None
    assert nib.aff2axcodes(decoded.affine) == ("S", "P", "L")
    rng = np.random.default_rng(0)
    for _ in range(5):
        nhw = np.array([rng.integers(0, size) for size in decoded.array.shape[1:]])
        np.testing.assert_allclose(decoded.affine @ [*nhw, 1], image.affine @ [*stored_index(nhw), 1], atol=1e-9)
    zooms = image.header.get_zooms()[:3]
    assert decoded.spacing is not None
    np.testing.assert_allclose(
        sorted(decoded.spacing), sorted(float(z) for z in zooms)
    )  # a permutation of the header zooms
    metainfo = decoded.metainfo
    assert set(metainfo) == {"affine", "header", "shape"}
    np.testing.assert_array_equal(metainfo["affine"], image.affine)
    assert metainfo["shape"] == image.shape
    pickle.loads(pickle.dumps(metainfo))


def asymmetric_volume(shape: tuple[int, ...] = (4, 5, 6)) -> Array:
    return np.arange(int(np.prod(shape)), dtype=np.int16).reshape(shape)


AFFINES = {
    "RAS": np.diag([1.5, 2.0, 3.0, 1.0]),
    "LPS": np.diag([-1.5, -2.0, 3.0, 1.0]),
    "PIR-oblique": np.array(
        [[0.0, 0.1, 2.0, -10.0], [-1.5, 0.0, 0.1, 20.0], [0.1, -3.0, 0.0, 5.0], [0.0, 0.0, 0.0, 1.0]]
    ),
}
ALL_ORIENTATIONS = [
    np.array([[axis, flip] for axis, flip in zip(permutation, flips, strict=True)], dtype=float)
    for permutation in itertools.permutations(range(3))
    for flips in itertools.product((1, -1), repeat=3)
]


@pytest.mark.parametrize("affine_name", sorted(AFFINES))
@pytest.mark.parametrize("four_d", [False, True])
def test_nifti_every_stored_orientation_gives_the_same_array(affine_name: str, four_d: bool) -> None:
    shape = (4, 5, 6, 2) if four_d else (4, 5, 6)
    original = nib.Nifti1Image(asymmetric_volume(shape), AFFINES[affine_name])
    reference = decode(original.to_bytes())
    assert reference.array.shape[0] == (2 if four_d else 1)
    for ornt in ALL_ORIENTATIONS:  # 48 storage orders: 6 axis permutations x 8 flip patterns
        stored = original.as_reoriented(ornt)
        image_class = nib.Nifti2Image if int(ornt[0, 0]) == 2 else nib.Nifti1Image
        data = image_class(np.asanyarray(stored.dataobj), stored.affine).to_bytes()
        if ornt[0, 1] < 0:
            data = gzip.compress(data)
        decoded = decode_checked(data, filename="v.nii.gz" if ornt[0, 1] < 0 else "v.nii")
        np.testing.assert_array_equal(decoded.array, reference.array)
        assert decoded.affine is not None and reference.affine is not None
        np.testing.assert_allclose(decoded.affine, reference.affine, atol=1e-5)  # sform is stored as float32
        assert decoded.spacing == pytest.approx(reference.spacing)


def test_nifti_ras_and_lps_storage_layout() -> None:
    """An LPS-stored volume comes out as stored (transposed); an RAS one with H and W flipped."""
    data = asymmetric_volume()
    lps = decode(nib.Nifti1Image(data, AFFINES["LPS"]).to_bytes())
    np.testing.assert_array_equal(lps.array[0], data.transpose(2, 1, 0))
    assert lps.spacing == (3.0, 2.0, 1.5)
    ras = decode(nib.Nifti1Image(data, AFFINES["RAS"]).to_bytes())
    np.testing.assert_array_equal(ras.array[0], data.transpose(2, 1, 0)[:, ::-1, ::-1])


def test_nifti_gzip_members_and_damage() -> None:
    """Every gzip member is inflated (pigz and bgzip write several); a bad CRC or a cut stream is an error."""
    raw = nib.Nifti1Image(asymmetric_volume((6, 7, 8)), AFFINES["LPS"]).to_bytes()
    expected = decode(raw).array
    cut = len(raw) // 3
    members = gzip.compress(raw[:cut]) + b"\x00" * 4 + gzip.compress(raw[cut:])
    np.testing.assert_array_equal(decode_checked(members, filename="v.nii.gz").array, expected)
    damaged = bytearray(gzip.compress(raw))
    damaged[-6] ^= 0x01  # CRC-32 of the member
    with pytest.raises(DecodeError, match="checksum"):
        decode(bytes(damaged), filename="v.nii.gz")
    with pytest.raises(DecodeError, match="truncated"):
        decode(gzip.compress(raw)[:-100], filename="v.nii.gz")


@pytest.mark.parametrize(
    ("slope", "inter", "scaled"),
    [(2.5, -10.0, True), (1.0, 7.0, True), (1.0, 0.0, False), (0.0, 5.0, False), (float("nan"), 3.0, False)],
)
def test_nifti_scaling(slope: float, inter: float, scaled: bool) -> None:
    """A slope of 0 or NaN means no scaling at all (the NIfTI rule nibabel follows); identity keeps the dtype."""
    data = bytearray(nib.Nifti1Image(asymmetric_volume(), AFFINES["LPS"]).to_bytes())
    data[112:120] = struct.pack("<ff", slope, inter)  # scl_slope, scl_inter of a little-endian NIfTI-1 header
    reloaded = nib.Nifti1Image.from_bytes(bytes(data))
    decoded = decode_checked(bytes(data))
    assert decoded.array.dtype == (np.float32 if scaled else np.int16)
    np.testing.assert_allclose(decoded.array[0], reloaded.get_fdata().transpose(2, 1, 0), rtol=1e-6)


def test_nifti_unusual_shapes_and_types() -> None:
    flat = decode_checked(nib.Nifti1Image(np.arange(12, dtype=np.uint8).reshape(3, 4), np.eye(4)).to_bytes())
    assert flat.array.shape == (1, 1, 4, 3)
    five_d = decode_checked(nib.Nifti1Image(asymmetric_volume((4, 5, 6, 2, 1)), np.eye(4)).to_bytes())
    assert five_d.array.shape == (2, 6, 5, 4)
    with pytest.raises(DecodeError, match="beyond the 4th"):
        decode(nib.Nifti1Image(asymmetric_volume((4, 5, 6, 1, 3)), np.eye(4)).to_bytes())
    with pytest.raises(DecodeError, match="complex"):
        decode(nib.Nifti1Image(np.zeros((2, 2, 2), np.complex64), np.eye(4)).to_bytes())
    pair_header = bytearray(nib.Nifti1Image(asymmetric_volume(), np.eye(4)).to_bytes())
    pair_header[344:348] = b"ni1\0"
    with pytest.raises(DecodeError, match=r"separate \.img"):
        decode(bytes(pair_header))


# ---------------------------------------------------------------------------------------------------- PNG / JPEG


def _png_bytes(image: Image.Image, **params: Any) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG", **params)
    return out.getvalue()


@pytest.mark.parametrize(
    ("name", "shape"),
    [
        ("retina.jpg", (3, 1411, 1411)),
        ("microaneurysms.png", (1, 102, 102)),
        ("cell.png", (1, 660, 550)),
        ("phantom.png", (3, 400, 400)),
    ],
)
def test_real_images_match_pillow(name: str, shape: tuple[int, ...], skimage_data_dir: Path) -> None:
    path = skimage_data_dir / name
    decoded = decode_checked(path)
    assert decoded.array.shape == shape and decoded.array.dtype == np.uint8
    expected = np.asarray(Image.open(path))
    expected = expected[np.newaxis] if expected.ndim == 2 else expected.transpose(2, 0, 1)
    np.testing.assert_array_equal(decoded.array, expected)
    assert decoded.metainfo is None and decoded.affine is None


def test_png_16_bit_keeps_stored_values() -> None:
    values = np.array([[0, 1000, 65535], [7, 32768, 12345]], dtype=np.uint16)
    decoded = decode_checked(_png_bytes(Image.fromarray(values)))
    assert decoded.array.dtype == np.uint16
    np.testing.assert_array_equal(decoded.array, values[np.newaxis])


def test_png_modes() -> None:
    rgba = np.array([[[1, 2, 3, 4], [5, 6, 7, 8]]], dtype=np.uint8)
    np.testing.assert_array_equal(decode_checked(_png_bytes(Image.fromarray(rgba))).array, rgba.transpose(2, 0, 1))

    gray_alpha = np.array([[[10, 255], [20, 0]]], dtype=np.uint8)
    decoded = decode_checked(_png_bytes(Image.fromarray(gray_alpha, mode="LA")))
    np.testing.assert_array_equal(decoded.array, gray_alpha.transpose(2, 0, 1))

    bits = np.array([[True, False, True], [False, False, True]])
    decoded = decode_checked(_png_bytes(Image.fromarray(bits)))
    np.testing.assert_array_equal(decoded.array, np.where(bits, 255, 0)[np.newaxis].astype(np.uint8))

    palette_image = Image.new("P", (3, 1))
    palette_image.putpalette([255, 0, 0, 0, 128, 0, 0, 0, 64])
    palette_image.putdata([2, 0, 1])
    decoded = decode_checked(_png_bytes(palette_image))
    expected = np.array([[[0, 0, 64], [255, 0, 0], [0, 128, 0]]], dtype=np.uint8).transpose(2, 0, 1)
    np.testing.assert_array_equal(decoded.array, expected)


def test_png_16_bit_rgb_warns() -> None:
    """Pillow keeps only the high byte of 16-bit RGB: say so instead of passing it off silently."""
    height, width = 2, 3
    pixels = np.arange(height * width * 3, dtype=">u2").reshape(height, width * 3) * 1000
    raw = b"".join(b"\0" + row.tobytes() for row in pixels)

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    with pytest.warns(UserWarning, match="16-bit RGB"):
        decoded = decode_checked(png)
    assert decoded.array.shape == (3, height, width) and decoded.array.dtype == np.uint8


def test_jpeg_gray_and_cmyk() -> None:
    gray = np.tile(np.arange(0, 256, 16, dtype=np.uint8), (8, 1))
    out = io.BytesIO()
    Image.fromarray(gray).save(out, format="JPEG", quality=100)
    decoded = decode_checked(out.getvalue())
    assert decoded.array.shape == (1, 8, 16)
    np.testing.assert_array_equal(decoded.array[0], np.asarray(Image.open(io.BytesIO(out.getvalue()))))
    out = io.BytesIO()
    Image.new("CMYK", (4, 2), (0, 255, 255, 0)).save(out, format="JPEG")
    assert decode_checked(out.getvalue()).array.shape == (3, 2, 4)


# ---------------------------------------------------------------------------------------------------- video


def encode_video(frames: Array, container: str = "mp4") -> bytes:
    """Lossless RGB video (libx264rgb, qp 0) of (N,H,W,3) uint8 frames."""
    out = io.BytesIO()
    with av.open(out, mode="w", format=container) as muxer:
        stream = muxer.add_stream("libx264rgb", rate=10)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "rgb24"
        stream.options = {"qp": "0"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                muxer.mux(packet)
        for packet in stream.encode():
            muxer.mux(packet)
    return out.getvalue()


@pytest.mark.parametrize("container", ["mp4", "matroska"])
def test_video_decodes_every_frame_exactly(container: str) -> None:
    frames = np.random.default_rng(1).integers(0, 256, (7, 24, 32, 3), dtype=np.uint8)
    data = encode_video(frames, container)
    decoded = decode_checked(data)
    assert probe(data).kind == "video"
    np.testing.assert_array_equal(decoded.array, frames.transpose(3, 0, 1, 2))


# ---------------------------------------------------------------------------------------------------- truncation


def truncation_cases(dicom_file: Locate, nibabel_data_dir: Path, skimage_data_dir: Path) -> list[tuple[str, bytes]]:
    dicom = [
        "CT_small.dcm", "MR_small_RLE.dcm", "examples_ybr_color.dcm", "JPEG2000.dcm", "image_dfl.dcm", "rtdose.dcm",
        "examples_palette.dcm", "SC_rgb_rle_2frame.dcm", "emri_small.dcm",
    ]  # fmt: skip
    cases = [(name, dicom_file(name).read_bytes()) for name in dicom]
    cases += [(name, (nibabel_data_dir / name).read_bytes()) for name in ("anatomical.nii", "example4d.nii.gz")]
    cases += [(name, (skimage_data_dir / name).read_bytes()) for name in ("retina.jpg", "microaneurysms.png")]
    frames = np.random.default_rng(2).integers(0, 256, (6, 16, 16, 3), dtype=np.uint8)
    cases += [("clip.mp4", encode_video(frames)), ("clip.mkv", encode_video(frames, "matroska"))]
    return cases


def test_truncated_files_raise_decode_error(dicom_file: Locate, nibabel_data_dir: Path, skimage_data_dir: Path) -> None:
    """Cut anywhere up to 90%: DecodeError. Cut near the end: DecodeError, or the very same array (trailing
    bytes that hold no pixels). Never another exception, never a different array."""
    for name, data in truncation_cases(dicom_file, nibabel_data_dir, skimage_data_dir):
        full = decode(data, filename=name).array
        for fraction in (0.0005, 0.05, 0.3, 0.6, 0.9):
            cut = data[: max(1, int(len(data) * fraction))]
            with pytest.raises(DecodeError):
                decode(cut, filename=name)
            with contextlib.suppress(DecodeError):
                probe(cut, filename=name)
        for missing in (1, 10):
            try:
                array = decode(data[:-missing], filename=name).array
            except DecodeError:
                continue
            np.testing.assert_array_equal(array, full, err_msg=f"{name} without its last {missing} bytes")


# ---------------------------------------------------------------------------------------------------- minmax


def test_minmax_to_uint8_matches_the_reference_formula() -> None:
    image = np.array([[0, 1000], [65535, 300]], dtype=np.uint16)
    as_float = image.astype(np.float32)
    upstream = ((as_float - as_float.min()) / (as_float.max() - as_float.min()) * 255).astype(np.uint8)
    np.testing.assert_array_equal(minmax_to_uint8(image), upstream)
    np.testing.assert_array_equal(minmax_to_uint8(image), [[0, 3], [255, 1]])
    assert image[1, 0] == 65535  # input untouched


def test_minmax_to_uint8_constant_and_nan() -> None:
    np.testing.assert_array_equal(minmax_to_uint8(np.full((2, 3), 777, np.uint16)), np.zeros((2, 3), np.uint8))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = minmax_to_uint8(np.array([np.nan, 1.0, 3.0], dtype=np.float32))
    np.testing.assert_array_equal(result, [0, 0, 255])
    assert minmax_to_uint8(np.zeros((0, 4), np.uint16)).shape == (0, 4)


@settings(max_examples=60, deadline=None)
@given(hnp.arrays(np.uint16, hnp.array_shapes(min_dims=2, max_dims=4, max_side=6)))
def test_minmax_to_uint8_properties(image: Array) -> None:
    result = minmax_to_uint8(image)
    assert result.dtype == np.uint8 and result.shape == image.shape
    if image.min() == image.max():
        assert not result.any()
    else:
        assert result[image == image.min()].max() == 0 and result[image == image.max()].min() == 255
        order = np.argsort(image, axis=None, kind="stable")
        assert np.all(np.diff(result.ravel()[order].astype(int)) >= 0)  # monotone


@settings(max_examples=25, deadline=None)
@given(st.binary(min_size=0, max_size=700), st.sampled_from([None, "x.dcm", "x.nii.gz", "x.png", "x.mp4"]))
def test_garbage_only_ever_raises_decode_error(data: bytes, filename: str | None) -> None:
    for function in (probe, decode):
        with contextlib.suppress(DecodeError):
            function(data, filename=filename)
