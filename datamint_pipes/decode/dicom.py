"""Single-file DICOM (single-frame and multi-frame) through pydicom 3.

Layout: one frame -> (C,H,W); NumberOfFrames > 1 -> (C,N,H,W), frames in stored order, colour frames too. Rows
and columns are kept as stored (no reorientation).

Values, in this order:

* stored pixels decoded by pydicom (uncompressed, deflated, RLE; JPEG baseline through Pillow; JPEG 2000 through
  pylibjpeg-openjpeg, the ``codecs`` extra), YBR_FULL / YBR_FULL_422 converted to RGB by pydicom. 8-bit JPEG
  baseline/extended frames (grey, YBR, Adobe RGB) are decoded by libjpeg-turbo directly, in a few threads
  (:mod:`._jpeg`: same values, except that libjpeg converts YCbCr to RGB itself, at most 1 apart from pydicom);
* PALETTE COLOR -> RGB (RGBA with an alpha LUT) through ``pydicom.pixels.apply_color_lut``: uint8 or uint16 as the
  LUT entries are 8 or 16 bits;
* MONOCHROME1 is inverted so that higher means brighter, over the representable stored range:
  ``stored' = (smin + smax) - clip(stored, smin, smax)`` with ``[smin, smax]`` from BitsStored and
  PixelRepresentation (e.g. ``4095 - v`` for 12 unsigned bits). It keeps the integer dtype and, with a rescale,
  equals ``lo + hi - value`` over the rescaled range. With a Modality LUT Sequence the LUT output is inverted over
  its observed range instead;
* the modality LUT: RescaleSlope/RescaleIntercept (top level, or the enhanced functional groups, per frame) ->
  float32 ``stored * slope + intercept``, unless it is the identity (slope 1, intercept 0: the stored integer dtype
  is kept); a Modality LUT Sequence -> its output as float32.

Otherwise the dtype is the stored one (BitsAllocated 1 -> uint8 0/1). ``metainfo`` is the dataset without its
pixel data. Files without the 128-byte preamble and ``DICM`` (detected by suffix or mimetype) are read with
``force=True`` and their transfer syntax inferred from the encoding. Float Pixel Data is not supported.

Errors (:class:`~datamint_pipes.errors.DecodeError`) before any pixel is decoded: encapsulated Pixel Data that
cannot hold the frames the header declares (:mod:`._encapsulated`), and a file that ends inside an element. A
failed decode says "no installed codec" when pydicom has no decoder for the transfer syntax (or none for this
variant of it), "corrupt pixel data" when an installed one failed on the data.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import apply_color_lut, apply_modality_lut, get_decoder, pixel_array
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from datamint_pipes.decode import _dicom_geometry as dicom_geometry
from datamint_pipes.decode._base import Decoded, ProbeResult, native_contiguous
from datamint_pipes.decode._encapsulated import check_encapsulated
from datamint_pipes.decode._jpeg import decode_jpeg_frames
from datamint_pipes.errors import DecodeError

__all__ = ["DicomDecoder"]
# Internal API, shared with .series (not re-exported by the package): read_dataset, describe, ImageDescription.

_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
# How pydicom's decoding plugins refuse a variant they do not implement (e.g. Pillow and GDCM: "... does not support
# 'JPEG Extended' for samples with 12-bit precision"), as opposed to failing on the data.
_UNSUPPORTED_VARIANT = re.compile(r"does not support|not supported|are supported")


@dataclass(frozen=True)
class ImageDescription:
    """What the header says the decoded array will be, and how to get there from the stored pixels."""

    frames: int
    rows: int
    columns: int
    samples: int
    photometric: str
    stored_dtype: np.dtype[Any]
    dtype: np.dtype[Any]
    channels: int
    rescale: tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]] | None
    modality_lut: bool
    spacing: tuple[float, ...] | None
    affine: np.ndarray[Any, Any] | None

    @property
    def shape(self) -> tuple[int, ...]:
        plane = (self.rows, self.columns)
        return (self.channels, *plane) if self.frames == 1 else (self.channels, self.frames, *plane)

    @property
    def monochrome(self) -> bool:
        return self.samples == 1 and self.photometric in ("MONOCHROME1", "MONOCHROME2")


class DicomDecoder:
    """One DICOM file holding an image (any number of frames)."""

    name = "dicom"
    mimetypes = ("application/dicom",)
    suffixes = (".dcm", ".dicom")

    def sniff(self, head: bytes) -> bool:
        return head[128:132] == b"DICM"

    def probe(self, stream: BinaryIO) -> ProbeResult:
        ds = read_dataset(stream, stop_before_pixels=True)
        image = describe(ds)
        return ProbeResult(
            kind="image" if image.frames == 1 else "volume",
            format=self.name,
            shape=image.shape,
            dtype=image.dtype.name,
            frame_count=image.frames,
            stored_shape=(image.frames, image.rows, image.columns) + ((image.samples,) if image.samples > 1 else ()),
            spacing=image.spacing,
        )

    def decode(self, stream: BinaryIO) -> Decoded:
        """Decode to (C,H,W) or (C,N,H,W) with the value rules of the module docstring."""
        return decode_dataset(read_dataset(stream, stop_before_pixels=False), stream)


def decode_dataset(ds: Dataset, stream: BinaryIO, *, geometry: bool = True) -> Decoded:
    """:meth:`DicomDecoder.decode` of ``ds``, read in full from ``stream``. Without ``geometry`` the affine is
    None and a multi-frame spacing too (the series decoder measures both across files itself)."""
    if "Rows" not in ds or "PixelData" not in ds:
        _raise_if_truncated(stream, ds)
    image = describe(ds, geometry=geometry)
    if "PixelData" not in ds:
        present = [keyword for keyword in _PIXEL_KEYWORDS if keyword in ds]
        raise DecodeError(f"DICOM file has no (integer) Pixel Data{f' (it has {present})' if present else ''}")
    stored = _stored_pixels(ds, image)
    array = _values(stored, ds, image)
    array = array[np.newaxis] if image.samples == 1 and image.channels == 1 else np.moveaxis(array, -1, 0)
    array = native_contiguous(array, image.dtype)
    if array.shape != image.shape:
        raise DecodeError(f"DICOM pixels decoded to {array.shape}, the header says {image.shape}")
    for keyword in _PIXEL_KEYWORDS:
        if keyword in ds:
            del ds[keyword]
    return Decoded(array=array, metainfo=ds, spacing=image.spacing, affine=image.affine)


def read_dataset(stream: BinaryIO, *, stop_before_pixels: bool) -> Dataset:
    """Read the dataset from the start of ``stream``; without a preamble, with ``force`` and an inferred syntax."""
    has_preamble = stream.read(132)[128:132] == b"DICM"
    stream.seek(0)
    ds = dcmread(stream, force=not has_preamble, stop_before_pixels=stop_before_pixels)
    if not has_preamble:
        _infer_transfer_syntax(ds)
    ds.filename = None  # the stream may be an open file; the metainfo must pickle
    return ds


def _raise_if_truncated(stream: BinaryIO, full: Dataset) -> None:
    """Raise when the file ends inside an element, e.g. inside encapsulated Pixel Data before its delimiter.

    pydicom then only warns and returns the elements read so far -- none at all when the end of file is met in a
    top-level element -- so the full read holds fewer elements than a read that stops before the pixels. (Reading
    the warning instead would need ``warnings.catch_warnings``, which is process-wide and not thread-safe.)
    """
    header = read_dataset(stream, stop_before_pixels=True)
    if len(full) < len(header):
        raise DecodeError(
            f"the DICOM file is truncated: it ends inside an element (Pixel Data cut before its delimiter?); a full "
            f"read kept {len(full)} of the {len(header)} elements before the Pixel Data"
        )


def _infer_transfer_syntax(ds: Dataset) -> None:
    """Give a dataset read without file meta the transfer syntax its encoding implies (pydicom needs one)."""
    meta = getattr(ds, "file_meta", None) or FileMetaDataset()
    if "TransferSyntaxUID" not in meta:
        implicit, little = ds.original_encoding
        meta.TransferSyntaxUID = (
            ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
        )
    ds.file_meta = meta


def describe(ds: Dataset, *, geometry: bool = True) -> ImageDescription:
    """What the header says the decoded array will be; :class:`DecodeError` when it describes no usable image.
    Without ``geometry``, ``affine`` is None and so is a multi-frame ``spacing`` (no positions are read)."""
    if "Rows" not in ds or "Columns" not in ds:
        sop = getattr(ds.get("SOPClassUID"), "name", None) or "unknown SOP class"
        raise DecodeError(f"DICOM file holds no image (no Rows/Columns; {sop})")
    rows, columns = int(ds.Rows), int(ds.Columns)
    frames = _int_attribute(ds, "NumberOfFrames", 1)
    samples = _int_attribute(ds, "SamplesPerPixel", 1)
    bits = _int_attribute(ds, "BitsAllocated", 0)
    signed = _int_attribute(ds, "PixelRepresentation", 0) == 1
    if min(rows, columns, frames, samples) < 1:
        raise DecodeError(f"DICOM image of {frames} frame(s) of {rows}x{columns}x{samples} is empty")
    if bits not in (1, 8, 16, 32, 64):
        raise DecodeError(f"DICOM BitsAllocated {bits} is not supported")
    stored_dtype = np.dtype("uint8" if bits == 1 else f"{'i' if signed else 'u'}{bits // 8}")
    photometric = str(ds.get("PhotometricInterpretation") or "").strip().upper()
    dtype, channels = stored_dtype, samples
    rescale = modality_lut = None
    if photometric == "PALETTE COLOR":
        # Applying the LUT to one dummy pixel gives the output dtype and channel count without decoding pixels.
        sample = apply_color_lut(np.zeros((1, 1), dtype=stored_dtype), ds)
        dtype, channels = sample.dtype, sample.shape[-1]
    elif samples == 1:
        modality_lut = bool(ds.get("ModalityLUTSequence"))
        rescale = None if modality_lut else dicom_geometry.rescale(ds, frames)
        if modality_lut or rescale is not None:
            dtype = np.dtype(np.float32)
    in_plane = dicom_geometry.pixel_spacing(ds)
    affine, slice_spacing = dicom_geometry.affine_and_slice_spacing(ds, frames, in_plane) if geometry else (None, None)
    if frames == 1:
        spacing: tuple[float, ...] | None = in_plane
    else:
        spacing = (slice_spacing, *in_plane) if in_plane is not None and slice_spacing is not None else None
    return ImageDescription(
        frames=frames,
        rows=rows,
        columns=columns,
        samples=samples,
        photometric=photometric,
        stored_dtype=stored_dtype,
        dtype=dtype,
        channels=channels,
        rescale=rescale,
        modality_lut=bool(modality_lut),
        spacing=spacing,
        affine=affine,
    )


def _int_attribute(ds: Dataset, keyword: str, default: int) -> int:
    value = ds.get(keyword)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise DecodeError(f"DICOM {keyword} {value!r} is not an integer") from None


def _stored_pixels(ds: Dataset, image: ImageDescription) -> np.ndarray[Any, Any]:
    """Stored values as pydicom decodes them: (rows, cols[, samples]) or (frames, rows, cols[, samples])."""
    syntax = ds.file_meta.TransferSyntaxUID
    if _is_encapsulated(syntax):
        check_encapsulated(
            ds.PixelData,
            syntax,
            frames=image.frames,
            rows=image.rows,
            columns=image.columns,
            samples=image.samples,
            sample_bytes=image.stored_dtype.itemsize,
        )
    stored = decode_jpeg_frames(ds, image.frames, image.rows, image.columns)
    if stored is None:
        try:
            stored = pixel_array(ds, as_rgb=True)
        except (NotImplementedError, RuntimeError) as exc:
            raise _codec_error(syntax, exc) from exc
    frames = () if image.frames == 1 else (image.frames,)
    samples = (image.samples,) if image.samples > 1 else ()
    expected = (*frames, image.rows, image.columns, *samples)
    if stored.shape != expected:
        raise DecodeError(f"DICOM pixel data decoded to {stored.shape}, the header says {expected}")
    if stored.dtype.newbyteorder("=") != image.stored_dtype:
        raise DecodeError(f"DICOM pixel data decoded as {stored.dtype}, the header says {image.stored_dtype}")
    return stored


def _is_encapsulated(syntax: UID) -> bool:
    try:
        return bool(syntax.is_encapsulated)
    except ValueError:  # not a transfer syntax: pydicom finds no decoder, and says so
        return False


def _codec_error(syntax: UID, exc: Exception) -> DecodeError:
    """What a failed pydicom decode means: no installed codec for the transfer syntax (or for this variant of it,
    e.g. 12-bit JPEG Extended with Pillow alone), or an installed codec that cannot read the data: corrupt."""
    plugins: tuple[str, ...] = ()
    with contextlib.suppress(NotImplementedError, ValueError):  # no decoder at all for this UID
        decoder = get_decoder(syntax)
        plugins = tuple(decoder.available_plugins) if decoder.is_available else ()
    if plugins and not _UNSUPPORTED_VARIANT.search(str(exc)):
        codecs = ", ".join(plugins)
        return DecodeError(f"corrupt DICOM {syntax.name} pixel data: the installed codecs ({codecs}) failed: {exc}")
    hint = "; install the 'codecs' extra (pylibjpeg-openjpeg)" if "JPEG 2000" in syntax.name else ""
    return DecodeError(f"no installed codec decodes DICOM {syntax.name} pixel data{hint}: {exc}")


def _values(stored: np.ndarray[Any, Any], ds: Dataset, image: ImageDescription) -> np.ndarray[Any, Any]:
    """Palette, MONOCHROME1 inversion and the modality LUT, on the (frames first) stored array."""
    if image.photometric == "PALETTE COLOR":
        return apply_color_lut(stored, ds)
    if not image.monochrome:
        return stored
    invert = image.photometric == "MONOCHROME1"
    if image.modality_lut:
        values = apply_modality_lut(stored, ds).astype(np.float32)
        if invert:
            values = values.min() + values.max() - values
        return values
    if invert:
        low, high = dicom_geometry.stored_range(ds)
        clipped = np.clip(stored, low, high).astype(image.stored_dtype)
        stored = np.asarray(low + high, dtype=image.stored_dtype) - clipped
    if image.rescale is None:
        return stored
    slopes, intercepts = image.rescale
    values = stored.astype(np.float32)
    shape = (-1, 1, 1) if image.frames > 1 else ()
    values *= slopes.astype(np.float32).reshape(shape)
    values += intercepts.astype(np.float32).reshape(shape)
    return values
