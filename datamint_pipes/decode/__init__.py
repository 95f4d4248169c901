"""Decoders: bytes, paths or file objects in, arrays in the documented layout out.

* :func:`decode` -> :class:`Decoded` (array, metainfo, spacing, affine); :func:`probe` -> :class:`ProbeResult`
  (shape, dtype, frame count, spacing) from headers only, equal to what ``decode`` returns.
* Layout: (C,H,W) for a 2D image; (C,N,H,W) for a volume, a multi-frame DICOM or a video.
* Formats: DICOM (:mod:`.dicom`), PNG/JPEG (:mod:`.image`), NIfTI (:mod:`.nifti`), MP4/AVI/MOV/MKV/WebM
  (:mod:`.video`). :func:`detect_format` checks magic bytes (DICOM's ``DICM`` at offset 128 first), then the
  mimetype, then the filename suffix.
* A DICOM series of single-frame files: :func:`decode_series` / :func:`probe_series` (:mod:`.series`) stack them
  along the slice normal, with the measured :class:`SeriesGeometry`; irregular spacing is an error or a
  :class:`SeriesGeometryWarning`, never a silent uniform spacing.
* A video's frames ``[start, stop)`` without decoding the rest: :func:`decode_frames` (:mod:`.video`).
* Every failure raises :class:`~datamint_pipes.errors.DecodeError` (a ``ValueError``) naming the resource id,
  the file and the cause.
* The registry is open: :func:`register` a decoder (``name``, ``mimetypes``, ``suffixes``, ``sniff``, ``probe``,
  ``decode``; see :class:`Decoder`), :func:`get_decoder` looks one up by format name.
"""

from datamint_pipes.decode._base import Decoded, Decoder, ProbeResult, minmax_to_uint8
from datamint_pipes.decode._registry import decode, detect_format, get_decoder, probe, register
from datamint_pipes.decode.dicom import DicomDecoder
from datamint_pipes.decode.image import JPEG, PNG
from datamint_pipes.decode.nifti import NiftiDecoder
from datamint_pipes.decode.series import SeriesGeometry, SeriesGeometryWarning, decode_series, probe_series
from datamint_pipes.decode.video import VideoDecoder, decode_frames

__all__ = [
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

# DICOM sniffs first: several DICOM files carry a TIFF (or other) header in their 128-byte preamble.
for _decoder in (DicomDecoder(), PNG, JPEG, NiftiDecoder(), VideoDecoder()):
    register(_decoder)
del _decoder
