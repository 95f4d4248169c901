"""Coverage audit of the real files: every image file shipped in pydicom, pydicom-data, nibabel and scikit-image
that ``tests/test_decode.py`` does not already cross-check, decoded and compared with an independent path.

Independent paths, written here and never fed our own output: pydicom's ``pixel_array`` with
``pydicom.pixels.apply_modality_lut`` / ``apply_color_lut`` / ``convert_color_space`` and the MONOCHROME1
inversion written out; Pillow decoding each JPEG frame of a DICOM on its own; the bits of a 1-bit SEG unpacked
with numpy; nibabel's ``get_fdata`` reordered by axis codes from ``nib.aff2axcodes``; Pillow for PNG/JPEG.

``test_every_shipped_dicom_is_accounted_for`` keeps the audit honest: a DICOM file with pixel data in either
package is cross-checked here, listed as covered by ``tests/test_decode.py``, or excluded with its reason.
Last, ``probe`` agrees with a full decode on every resource of the sample projects.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.encaps import generate_frames
from pydicom.pixels import apply_color_lut, apply_modality_lut, convert_color_space, pixel_array

from datamint_pipes.decode import Decoded, decode, probe
from datamint_pipes.samples import SAMPLE_NAMES
from datamint_pipes.sources.local import LocalProject
from datamint_pipes.stages.load import decode_resource

Array = np.ndarray[Any, Any]
Locate = Callable[[str], Path]

pytestmark = pytest.mark.filterwarnings(
    "ignore:Expected explicit VR, but found implicit VR:UserWarning",  # explicit_VR-UN.dcm
    "ignore:End of file reached before delimiter:UserWarning",  # the broken file the audit skips
)


def decode_checked(source: Any, **kwargs: Any) -> Decoded:
    """Decode, checking that probe promised exactly this array and that the array keeps the documented invariants."""
    probed = probe(source, **kwargs)
    decoded = decode(source, **kwargs)
    array = decoded.array
    assert (probed.shape, probed.dtype) == (array.shape, array.dtype.name)
    assert probed.frame_count == (1 if array.ndim == 3 else array.shape[1])
    assert array.dtype.isnative and array.flags.c_contiguous and array.flags.writeable
    return decoded


def assert_same_values(actual: Array, expected: Array) -> None:
    """Equal, or for floats equal to float32 precision (NaN equal to NaN)."""
    assert actual.shape == expected.shape
    if actual.dtype.kind == "f":
        scale = max(float(np.nanmax(np.abs(expected))), 1.0)
        np.testing.assert_allclose(actual, expected, rtol=1e-6, atol=1e-6 * scale)
    else:
        np.testing.assert_array_equal(actual, expected)


# ---------------------------------------------------------------------------------------------------- DICOM


def channels_first(pixels: Array, colour: bool) -> Array:
    """([N,] H, W[, C]) as pydicom returns it -> (C, [N,] H, W)."""
    return np.moveaxis(pixels, -1, 0) if colour else pixels[np.newaxis]


def pydicom_reference(path: Path) -> Array:
    """The decoded array as pydicom's own functions give it: palette through ``apply_color_lut``; monochrome
    MONOCHROME1-inverted over the BitsStored range, then through ``apply_modality_lut``; YBR_FULL(_422)
    uncompressed through ``convert_color_space``; everything else as ``pixel_array``."""
    ds = pydicom.dcmread(path)
    photometric = ds.PhotometricInterpretation
    if photometric in ("YBR_FULL", "YBR_FULL_422") and not ds.file_meta.TransferSyntaxUID.is_compressed:
        pixels = convert_color_space(pixel_array(ds, raw=True), "YBR_FULL", "RGB")
    else:
        pixels = ds.pixel_array
    if photometric == "PALETTE COLOR":
        pixels = apply_color_lut(pixels, ds)
    elif photometric.startswith("MONOCHROME"):
        if photometric == "MONOCHROME1":
            assert ds.PixelRepresentation == 0  # true of every MONOCHROME1 file below
            pixels = (2 ** int(ds.BitsStored) - 1) - pixels.astype(np.int64)
        pixels = apply_modality_lut(pixels, ds)
    return channels_first(pixels, colour=int(ds.SamplesPerPixel) > 1 or photometric == "PALETTE COLOR")


def pillow_jpeg_frame(fragment: bytes, photometric: str) -> Array:
    """One JPEG baseline frame decoded by Pillow: (H, W, 3) RGB.

    libjpeg converts YCbCr to RGB unless the stream says otherwise (an Adobe APP14 marker). A DICOM whose
    PhotometricInterpretation is RGB stores RGB components (PS3.5 8.2.1) even without that marker, so then the
    components are taken as decoded, without the conversion.
    """
    image = Image.open(io.BytesIO(fragment))
    if photometric == "RGB" and image.mode == "RGB" and "adobe_transform" not in image.info:
        image.draft("YCbCr", image.size)  # keep libjpeg from converting: the components are already R, G, B
        return np.asarray(image)
    return np.asarray(image.convert("RGB"))


def pillow_jpeg_reference(path: Path) -> Array:
    """Each JPEG baseline frame of a DICOM decoded by Pillow on its own: (3, [N,] H, W) uint8."""
    ds = pydicom.dcmread(path)
    frames = int(ds.get("NumberOfFrames") or 1)
    decoded = [
        pillow_jpeg_frame(fragment, ds.PhotometricInterpretation)
        for fragment in generate_frames(ds.PixelData, number_of_frames=frames)
    ]
    stacked = np.stack(decoded).transpose(3, 0, 1, 2)
    return stacked if frames > 1 else stacked[:, 0]


# Cross-checked in tests/test_decode.py (``DICOM_FILES`` and the palette, enhanced-rescale and YBR JPEG tests).
COVERED_IN_TEST_DECODE = {
    "CT_small.dcm", "MR_small.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm", "MR_small_expb.dcm",
    "MR_small_padded.dcm", "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "JPEG2000.dcm", "SC_rgb_rle.dcm",
    "SC_rgb_rle_2frame.dcm", "SC_rgb_rle_16bit.dcm", "SC_rgb_rle_16bit_2frame.dcm", "SC_rgb_rle_32bit.dcm",
    "SC_rgb_rle_32bit_2frame.dcm", "examples_rgb_color.dcm", "examples_ybr_color.dcm", "examples_palette.dcm",
    "rtdose.dcm", "rtdose_rle.dcm", "image_dfl.dcm", "liver_1frame.dcm", "emri_small.dcm", "emri_small_RLE.dcm",
    "emri_small_big_endian.dcm", "emri_small_jpeg_2k_lossless.dcm", "RG1_UNCR.dcm", "eCT_Supplemental.dcm",
}  # fmt: skip

# name: (shape, dtype) -- checked against pydicom_reference
DICOM_VIA_PYDICOM = {
    # pydicom test files
    "examples_jpeg2k.dcm": ((3, 480, 640), "uint8"),  # JPEG 2000 lossless, YBR_RCT
    "examples_overlay.dcm": ((1, 300, 484), "uint16"),
    "ExplVR_BigEnd.dcm": ((3, 60, 80), "uint8"),
    "GDCMJ2K_TextGBR.dcm": ((3, 400, 400), "uint8"),
    "explicit_VR-UN.dcm": ((1, 512, 512), "int16"),
    "SC_rgb_small_odd.dcm": ((3, 3, 3), "uint8"),
    "SC_rgb_jpeg_dcmd.dcm": ((3, 256, 256), "uint8"),  # implicit VR, uncompressed despite its name
    "SC_rgb_small_odd_big_endian.dcm": ((3, 3, 3), "uint8"),
    "SC_ybr_full_422_uncompressed.dcm": ((3, 100, 100), "uint8"),
    "SC_rgb_gdcm_KY.dcm": ((3, 100, 100), "uint8"),  # JPEG 2000, RGB
    "rtdose_1frame.dcm": ((1, 10, 10), "uint32"),
    "rtdose_expb.dcm": ((1, 15, 10, 10), "uint32"),
    "rtdose_expb_1frame.dcm": ((1, 10, 10), "uint32"),
    "rtdose_rle_1frame.dcm": ((1, 10, 10), "uint32"),
    "liver_expb_1frame.dcm": ((1, 512, 512), "uint8"),  # 1-bit SEG, big endian
    # pydicom-data
    "693_UNCI.dcm": ((1, 512, 512), "float32"),  # CT with rescale
    "693_UNCR.dcm": ((1, 512, 512), "float32"),
    "693_J2KR.dcm": ((1, 512, 512), "float32"),
    "693_J2KI.dcm": ((1, 512, 512), "float32"),
    "MR2_UNCR.dcm": ((1, 1024, 1024), "float32"),
    "MR2_UNCI.dcm": ((1, 1024, 1024), "float32"),
    "MR2_J2KR.dcm": ((1, 1024, 1024), "float32"),
    "RG1_UNCI.dcm": ((1, 1955, 1841), "uint16"),  # MONOCHROME1
    "RG3_UNCR.dcm": ((1, 1760, 1760), "uint16"),  # MONOCHROME1
    "RG3_J2KR.dcm": ((1, 1760, 1760), "uint16"),  # MONOCHROME1, JPEG 2000
    "JPEG2000_UNC.dcm": ((1, 1024, 256), "int16"),
    "MR-SIEMENS-DICOM-WithOverlays.dcm": ((1, 484, 484), "uint16"),
    "mlut_18.dcm": ((1, 512, 512), "float32"),  # Modality LUT Sequence
    "vlut_04.dcm": ((1, 512, 512), "uint8"),  # a VOI LUT, which decoding does not apply
    "OBXXXX1A.dcm": ((3, 600, 800), "uint16"),  # PALETTE COLOR
    "OBXXXX1A_2frame.dcm": ((3, 2, 600, 800), "uint16"),
    "OBXXXX1A_expb_2frame.dcm": ((3, 2, 600, 800), "uint16"),
    "OBXXXX1A_rle_2frame.dcm": ((3, 2, 600, 800), "uint16"),
    "gdcm-US-ALOKA-16.dcm": ((3, 480, 640), "uint16"),  # 16-bit PALETTE COLOR
    "gdcm-US-ALOKA-16_big.dcm": ((3, 480, 640), "uint16"),
    "SC_rgb.dcm": ((3, 100, 100), "uint8"),
    "SC_rgb_expb_16bit_2frame.dcm": ((3, 2, 100, 100), "uint16"),
    "SC_rgb_32bit_2frame.dcm": ((3, 2, 100, 100), "uint32"),
    "SC_rgb_expb_32bit.dcm": ((3, 100, 100), "uint32"),
    "SC_ybr_full_uncompressed.dcm": ((3, 100, 100), "uint8"),
    "SC_rgb_gdcm2k_uncompressed.dcm": ((3, 100, 100), "uint8"),
    "US1_UNCR.dcm": ((3, 480, 640), "uint8"),
    "US1_J2KR.dcm": ((3, 480, 640), "uint8"),  # JPEG 2000 lossless, YBR_RCT
    "US1_J2KI.dcm": ((3, 480, 640), "uint8"),  # JPEG 2000 lossy, YBR_ICT
    "color-pl.dcm": ((3, 120, 256), "uint8"),  # planar configuration 1
    "color-px.dcm": ((3, 120, 256), "uint8"),  # planar configuration 0
    "liver_expb.dcm": ((1, 3, 512, 512), "uint8"),  # 1-bit SEG, 3 frames, big endian
}

# name: (shape) -- JPEG baseline, checked frame by frame against Pillow (uint8 RGB)
DICOM_VIA_PILLOW = {
    "SC_rgb_jpeg_dcmtk.dcm": (3, 100, 100),
    "SC_rgb_dcmtk_+eb+cr.dcm": (3, 100, 100),
    "SC_rgb_dcmtk_+eb+cy+n1.dcm": (3, 100, 100),
    "SC_rgb_dcmtk_+eb+cy+n2.dcm": (3, 100, 100),
    "SC_rgb_dcmtk_+eb+cy+np.dcm": (3, 100, 100),
    "SC_rgb_dcmtk_+eb+cy+s2.dcm": (3, 100, 100),
    "SC_rgb_dcmtk_+eb+cy+s4.dcm": (3, 100, 100),
    "SC_rgb_jpeg_lossy_gdcm.dcm": (3, 100, 100),
    "SC_rgb_small_odd_jpeg.dcm": (3, 3, 3),
    "SC_jpeg_no_color_transform.dcm": (3, 256, 256),  # RGB components, APP14 transform 0
    "SC_jpeg_no_color_transform_2.dcm": (3, 256, 256),
    "SC_rgb_jpeg_app14_dcmd.dcm": (3, 256, 256),
    "SC_rgb_jpeg.dcm": (3, 256, 256),  # RGB components without an Adobe marker
}

# name: why it is not decoded here
EXCLUDED = {
    "J2K_pixelrep_mismatch.dcm": "tests/test_decode_fuzz.py (odd but valid)",
    "OT-PAL-8-face.dcm": "tests/test_decode_fuzz.py (odd but valid: no preamble, no transfer syntax)",
    "color3d_jpeg_baseline.dcm": "test_color3d_cine_matches_pillow_frame_by_frame",
    "liver.dcm": "test_one_bit_segmentation_is_uint8_zero_one_per_frame",
    "meta_missing_tsyntax.dcm": "no image (2 bytes of Pixel Data, no Rows/Columns): tests/test_decode_fuzz.py",
    "nested_priv_SQ.dcm": "no image (2 bytes of Pixel Data, no Rows/Columns): tests/test_decode_fuzz.py",
    "MR_truncated.dcm": "broken: tests/test_decode_fuzz.py",
    "badVR.dcm": "broken: tests/test_decode_fuzz.py",
    "emri_small_jpeg_2k_lossless_too_short.dcm": "broken: tests/test_decode_fuzz.py",
    "JPEG2000-embedded-sequence-delimiter.dcm": "broken: tests/test_decode_fuzz.py",
    "JPEG-lossy.dcm": "12-bit JPEG extended: no permissively licensed codec (pylibjpeg-libjpeg is GPL)",
    "JPGExtended.dcm": "12-bit JPEG extended: no permissively licensed codec",
    "JPEG-LL.dcm": "JPEG lossless: no permissively licensed codec",
    "JPGLosslessP14SV1_1s_1f_8b.dcm": "JPEG lossless: no permissively licensed codec",
    "SC_rgb_jpeg_gdcm.dcm": "JPEG lossless: no permissively licensed codec",
    "bad_sequence.dcm": "JPEG lossless: no permissively licensed codec",
    "MR_small_jpeg_ls_lossless.dcm": "JPEG-LS: no codec (tests/test_decode.py checks the error)",
    "emri_small_jpeg_ls_lossless.dcm": "JPEG-LS: no codec (tests/test_decode.py checks the error)",
    "JPEGLSNearLossless_08.dcm": "JPEG-LS: no codec",
    "JPEGLSNearLossless_16.dcm": "JPEG-LS: no codec",
    "SC_rgb_jls_lossy_line.dcm": "JPEG-LS: no codec",
    "SC_rgb_jls_lossy_sample.dcm": "JPEG-LS: no codec",
    # Larger twins of files checked above: same codec path, only slower.
    "RG1_J2KI.dcm": "twin of RG3_J2KR.dcm",
    "RG1_J2KR.dcm": "twin of RG3_J2KR.dcm",
    "RG3_J2KI.dcm": "twin of RG3_J2KR.dcm",
    "RG3_UNCI.dcm": "twin of RG3_UNCR.dcm",
    "MR2_J2KI.dcm": "twin of MR2_J2KR.dcm",
    "OBXXXX1A_expb.dcm": "twin of OBXXXX1A_expb_2frame.dcm",
    "OBXXXX1A_rle.dcm": "twin of OBXXXX1A_rle_2frame.dcm",
    "SC_rgb_16bit.dcm": "twin of SC_rgb_expb_16bit_2frame.dcm",
    "SC_rgb_16bit_2frame.dcm": "twin of SC_rgb_expb_16bit_2frame.dcm",
    "SC_rgb_2frame.dcm": "twin of SC_rgb.dcm",
    "SC_rgb_32bit.dcm": "twin of SC_rgb_32bit_2frame.dcm",
    "SC_rgb_expb.dcm": "twin of SC_rgb.dcm",
    "SC_rgb_expb_16bit.dcm": "twin of SC_rgb_expb_16bit_2frame.dcm",
    "SC_rgb_expb_2frame.dcm": "twin of SC_rgb.dcm",
    "SC_rgb_expb_32bit_2frame.dcm": "twin of SC_rgb_expb_32bit.dcm",
    "US1_UNCI.dcm": "twin of US1_UNCR.dcm",
    **{f"SC_rgb_dcmtk_{flags}_dcmd.dcm": "uncompressed twin of a JPEG file above" for flags in (
        "ebcr", "ebcyn1", "ebcyn2", "ebcynp", "ebcys2", "ebcys4")},
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(DICOM_VIA_PYDICOM))
def test_dicom_matches_pydicom_functions(name: str, dicom_file: Locate) -> None:
    path = dicom_file(name)
    decoded = decode_checked(path, filename=name)
    shape, dtype = DICOM_VIA_PYDICOM[name]
    assert (decoded.array.shape, decoded.array.dtype.name) == (shape, dtype)
    assert_same_values(decoded.array, pydicom_reference(path))
    assert isinstance(decoded.metainfo, pydicom.Dataset) and "PixelData" not in decoded.metainfo


@pytest.mark.parametrize("name", sorted(DICOM_VIA_PILLOW))
def test_dicom_jpeg_baseline_matches_pillow_per_frame(name: str, dicom_file: Locate) -> None:
    path = dicom_file(name)
    decoded = decode_checked(path, filename=name)
    assert (decoded.array.shape, decoded.array.dtype.name) == (DICOM_VIA_PILLOW[name], "uint8")
    np.testing.assert_array_equal(decoded.array, pillow_jpeg_reference(path))


def test_color3d_cine_matches_pillow_frame_by_frame(dicom_file: Locate) -> None:
    """The 120-frame YBR_FULL_422 cine (pydicom-data): every frame equals its own JPEG fragment decoded by Pillow,
    in stored order; the frames differ (no frame repeated)."""
    path = dicom_file("color3d_jpeg_baseline.dcm")
    decoded = decode_checked(path, filename=path.name)
    assert (decoded.array.shape, decoded.array.dtype.name) == ((3, 120, 480, 640), "uint8")
    np.testing.assert_array_equal(decoded.array, pillow_jpeg_reference(path))
    assert not np.array_equal(decoded.array[:, 0], decoded.array[:, 60])


def test_planar_configuration_does_not_change_the_array(dicom_file: Locate) -> None:
    """The same image stored colour-by-plane and colour-by-pixel decodes to one array."""
    by_plane = decode(dicom_file("color-pl.dcm")).array
    by_pixel = decode(dicom_file("color-px.dcm")).array
    assert pydicom.dcmread(dicom_file("color-pl.dcm")).PlanarConfiguration == 1
    np.testing.assert_array_equal(by_plane, by_pixel)


@pytest.mark.parametrize(("name", "frames"), [("liver_1frame.dcm", 1), ("liver.dcm", 3)])
def test_one_bit_segmentation_is_uint8_zero_one_per_frame(name: str, frames: int, dicom_file: Locate) -> None:
    """A 1-bit SEG decodes to uint8 0/1, one (H,W) plane per frame: the bits of Pixel Data unpacked LSB first
    (PS3.5 8.1.1), continuous across frame boundaries."""
    path = dicom_file(name)
    ds = pydicom.dcmread(path)
    assert ds.BitsAllocated == 1 and ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    rows, columns = int(ds.Rows), int(ds.Columns)
    bits = np.unpackbits(np.frombuffer(ds.PixelData, dtype=np.uint8), bitorder="little")
    expected = bits[: frames * rows * columns].reshape(frames, rows, columns)
    decoded = decode_checked(path, filename=name)
    array = decoded.array
    assert array.dtype == np.uint8
    assert array.shape == ((1, rows, columns) if frames == 1 else (1, frames, rows, columns))
    assert set(np.unique(array).tolist()) == {0, 1}
    np.testing.assert_array_equal(array.reshape(frames, rows, columns), expected)
    for frame in range(frames):
        assert expected[frame].any(), f"frame {frame} of {name} is empty: the check would prove little"


def test_every_shipped_dicom_is_accounted_for(dicom_test_dir: Path, dicom_file: Locate) -> None:
    """Each DICOM file with pixel data in pydicom or pydicom-data is cross-checked (here or in test_decode.py)
    or excluded with a reason; no name is listed twice."""
    pydicom_data = dicom_file("liver.dcm").parent
    listed = [*COVERED_IN_TEST_DECODE, *DICOM_VIA_PYDICOM, *DICOM_VIA_PILLOW, *EXCLUDED]
    assert len(listed) == len(set(listed))
    missing = []
    for path in sorted([*dicom_test_dir.glob("*.dcm"), *pydicom_data.glob("*.dcm")]):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=False, force=True)
        except Exception:  # unreadable: the broken files of test_decode_fuzz.py
            continue
        if "PixelData" in ds and path.name not in listed:
            missing.append(path.name)
    assert not missing, f"real DICOM files neither cross-checked nor excluded: {missing}"


def test_nibabel_dicom_slices_match_pydicom(nibabel_data_dir: Path) -> None:
    """nibabel's two test slices (implicit VR, no rescale)."""
    for name in ("0.dcm", "1.dcm"):
        path = nibabel_data_dir / name
        decoded = decode_checked(path, filename=name)
        assert (decoded.array.shape, decoded.array.dtype.name) == ((1, 256, 256), "uint16")
        assert_same_values(decoded.array, pydicom_reference(path))


# ---------------------------------------------------------------------------------------------------- NIfTI


def nibabel_reference(image: Any) -> Array:
    """``get_fdata()`` reordered to (C, S, P, L): axes and flips from ``nib.aff2axcodes``, moved with numpy."""
    data = np.asarray(image.get_fdata())
    data = data.reshape((*data.shape[:3], -1))
    codes = nib.aff2axcodes(image.affine)
    order, flips = [], []
    for wanted, opposite in (("L", "R"), ("P", "A"), ("S", "I")):
        axis = next(i for i, code in enumerate(codes) if code in (wanted, opposite))
        order.append(axis)
        flips.append(codes[axis] == opposite)
    lps = data.transpose(*order, 3)
    for axis, flip in enumerate(flips):
        if flip:
            lps = np.flip(lps, axis)
    return lps.transpose(3, 2, 1, 0)


def test_nifti_resampled_anat_matches_nibabel(nibabel_data_dir: Path) -> None:
    path = nibabel_data_dir / "resampled_anat_moved.nii"
    image: Any = nib.load(path)
    decoded = decode_checked(path, filename=path.name)
    assert (decoded.array.shape, decoded.array.dtype.name) == ((1, 3, 21, 17), "float32")
    assert_same_values(decoded.array, nibabel_reference(image))
    assert decoded.affine is not None and nib.aff2axcodes(decoded.affine) == ("S", "P", "L")


def test_nibabel_reference_reorders_as_documented() -> None:
    """The reference itself, on an RAS volume: L,P,S order means both in-plane axes flipped."""
    data = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    reference = nibabel_reference(nib.Nifti1Image(data, np.eye(4)))
    np.testing.assert_array_equal(reference[0], data[::-1, ::-1, :].transpose(2, 1, 0))


# ---------------------------------------------------------------------------------------------------- PNG / JPEG

COVERED_IMAGES = {"retina.jpg", "microaneurysms.png", "cell.png", "phantom.png"}  # tests/test_decode.py


def skimage_images() -> list[str]:
    import skimage

    folder = Path(skimage.__file__).parent / "data"
    names = sorted(p.name for p in folder.iterdir() if p.suffix in (".png", ".jpg"))
    return [name for name in names if name not in COVERED_IMAGES | {"chessboard_RGB.png"}]


@pytest.mark.parametrize("name", skimage_images())
def test_skimage_image_matches_pillow(name: str, skimage_data_dir: Path) -> None:
    path = skimage_data_dir / name
    decoded = decode_checked(path, filename=name)
    with Image.open(path) as image:
        expected = np.asarray(image)
    expected = expected[np.newaxis] if expected.ndim == 2 else expected.transpose(2, 0, 1)
    assert decoded.array.dtype == np.uint8
    np.testing.assert_array_equal(decoded.array, expected)


def test_16_bit_rgb_png_gives_the_high_bytes_with_a_warning(skimage_data_dir: Path) -> None:
    """chessboard_RGB.png is a real 16-bit RGB PNG. Pillow keeps 8 bits per channel; the decoder says so, and the 8
    bits are the high bytes of the stored values (read at full depth here by OpenCV's libpng)."""
    import cv2

    path = skimage_data_dir / "chessboard_RGB.png"
    header = path.read_bytes()[16:26]
    assert (header[8], header[9]) == (16, 2)  # IHDR bit depth 16, colour type 2 (RGB)
    stored: Array = np.asarray(cv2.imread(str(path), cv2.IMREAD_UNCHANGED))  # (H,W,3) BGR
    assert stored.dtype == np.uint16
    with pytest.warns(UserWarning, match="16-bit RGB"):
        decoded = decode_checked(path, filename=path.name)
    assert decoded.array.dtype == np.uint8
    np.testing.assert_array_equal(decoded.array, (stored[..., ::-1] >> 8).transpose(2, 0, 1))


# ---------------------------------------------------------------------------------------------------- samples


@pytest.mark.parametrize("project_name", SAMPLE_NAMES)
def test_sample_probe_agrees_with_full_decode(project_name: str, sample_root: Path) -> None:
    """For every resource: probing its file(s) and the catalogue's header facts give the decoded shape, dtype and
    frame count (a series: each slice probes to one (C,H,W) plane; the stack has one frame per file)."""
    project = LocalProject.open(sample_root / project_name, read_only=True)
    resources = project.resources()
    assert resources
    for resource in resources:
        decoded = decode_resource(project, resource).array
        frames = 1 if decoded.ndim == 3 else decoded.shape[1]
        probes = []
        for relpath in resource.files:
            path = project.local_path(relpath)
            source: Any = path if path is not None else project.read_bytes(relpath)
            probes.append(probe(source, filename=resource.filename, mimetype=resource.mimetype))
        if len(probes) == 1:
            shape, frame_count = probes[0].shape, probes[0].frame_count
        else:
            assert {p.shape for p in probes} == {decoded.shape[:1] + decoded.shape[2:]}, resource.filename
            shape, frame_count = (decoded.shape[0], len(probes), *probes[0].shape[1:]), len(probes)
        assert shape == decoded.shape, resource.filename
        assert frame_count == frames, resource.filename
        assert {p.dtype for p in probes} == {decoded.dtype.name}, resource.filename
        metadata = resource.metadata
        assert tuple(metadata["shape"]) == decoded.shape, resource.filename
        assert metadata["frame_count"] == frames and metadata["dtype"] == decoded.dtype.name, resource.filename
