"""What every decoder shares: the result types, the decoder interface, and small array helpers."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO, Literal, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from datamint_pipes.decode.series import SeriesGeometry

__all__ = ["Decoded", "Decoder", "ProbeResult", "minmax_to_uint8", "native_contiguous", "usable_cpus"]

Kind = Literal["image", "volume", "video"]


@dataclass(frozen=True)
class ProbeResult:
    """What a file decodes to, read from its headers without decoding pixels.

    ``shape``, ``dtype`` and ``frame_count`` are exactly those of :attr:`Decoded.array` for the same file.

    Attributes:
        kind: ``"image"`` (a 2D still, array (C,H,W)), ``"volume"`` (slices or frames, array (C,N,H,W)) or
            ``"video"`` (frames of a video container, array (C,N,H,W)).
        format: the registered decoder's name (``"png"``, ``"jpeg"``, ``"nifti"``, ``"dicom"``, ``"video"``).
        shape: shape of the decoded array: (C,H,W) or (C,N,H,W).
        dtype: numpy dtype name of the decoded array (native byte order), e.g. ``"uint8"``, ``"float32"``.
        frame_count: N, the number of slices or frames (1 for a 2D image).
        stored_shape: the shape as the file stores it: NIfTI data shape (X,Y,Z[,T]), DICOM
            (frames,rows,columns[,samples]), PNG/JPEG (H,W[,bands]), video (frames,H,W).
        spacing: voxel spacing along (N,H,W) for volumes or (H,W) for 2D images, when the header gives
            every one of them; else ``None``.
        geometry: for a series of files (:func:`datamint_pipes.decode.probe_series`), where its slices lie;
            else ``None``.
    """

    kind: Kind
    format: str
    shape: tuple[int, ...]
    dtype: str
    frame_count: int
    stored_shape: tuple[int, ...]
    spacing: tuple[float, ...] | None = None
    geometry: SeriesGeometry | None = None


@dataclass
class Decoded:
    """A decoded file.

    Attributes:
        array: the pixels, (C,H,W) for a 2D image, (C,N,H,W) for a volume or multi-frame file; C-contiguous,
            native byte order, writeable, owned by this object.
        metainfo: DICOM: the ``pydicom.Dataset`` without pixel data; NIfTI: ``{'affine', 'header', 'shape'}`` of
            the file as stored; other formats: ``None``. Always picklable.
        spacing: as :attr:`ProbeResult.spacing`.
        affine: 4x4 float64 matrix mapping the array's voxel indices (n, h, w, 1) to RAS+ world coordinates
            (the NIfTI/nibabel convention, millimetres), when the header defines the geometry; else ``None``.
            For a 2D image the n column is the slice normal (times the slice spacing when known).
        geometry: for a series of files (:func:`datamint_pipes.decode.decode_series`), where its slices lie;
            else ``None``.
    """

    array: np.ndarray[Any, Any]
    metainfo: Any
    spacing: tuple[float, ...] | None
    affine: np.ndarray[Any, Any] | None
    geometry: SeriesGeometry | None = None


@runtime_checkable
class Decoder(Protocol):
    """A format family's decoder, as the registry needs it.

    ``probe`` and ``decode`` get a seekable binary stream positioned at the start of the file; they may raise any
    exception: :func:`datamint_pipes.decode.decode` turns it into a :class:`~datamint_pipes.errors.DecodeError`
    naming the resource and file.
    """

    @property
    def name(self) -> str:
        """The format name :func:`detect_format` returns and :func:`get_decoder` looks up."""
        ...

    @property
    def mimetypes(self) -> tuple[str, ...]:
        """Lower-case mimetypes that select this decoder when no magic matched."""
        ...

    @property
    def suffixes(self) -> tuple[str, ...]:
        """Lower-case filename suffixes (``".nii.gz"`` counts as one) that select it after the mimetype."""
        ...

    def sniff(self, head: bytes) -> bool:
        """Whether ``head`` (the file's first bytes, up to 4 KiB) carries this format's magic."""
        ...

    def probe(self, stream: BinaryIO) -> ProbeResult:
        """Read the headers only; no pixel decoding."""
        ...

    def decode(self, stream: BinaryIO) -> Decoded:
        """Decode the whole file."""
        ...


def minmax_to_uint8(array: np.ndarray[Any, Any]) -> np.ndarray[Any, np.dtype[np.uint8]]:
    """Scale one image's values to uint8 by its own minimum and maximum, as the reference client does.

    ``(x - min) / (max - min) * 255`` computed in float32 and truncated to uint8, so a given 16-bit image gives the
    same bytes as upstream. A constant image (or an empty one) gives zeros, never NaN. NaN values map to 0.
    The input is not modified; the output has the input's shape.
    """
    values = np.asarray(array, dtype=np.float32)
    out = np.zeros(values.shape, dtype=np.uint8)
    finite = np.isfinite(values)
    if not finite.any():
        return out
    low = values[finite].min()
    span = values[finite].max() - low
    if span <= 0:
        return out
    scaled = (values - low) / span * np.float32(255)
    np.copyto(out, scaled, where=finite, casting="unsafe")
    return out


def native_contiguous(array: np.ndarray[Any, Any], dtype: np.dtype[Any] | str | None = None) -> np.ndarray[Any, Any]:
    """``array`` as a C-contiguous, writeable array in native byte order (and ``dtype`` if given).

    Copies at most once; an array that already qualifies is returned as is, so pass only arrays the decoder owns.
    """
    target = np.dtype(dtype) if dtype is not None else array.dtype.newbyteorder("=")
    if array.dtype == target and array.flags.c_contiguous and array.flags.writeable:
        return array  # callers pass arrays (or views of arrays) they made themselves
    return np.array(array, dtype=target, order="C", copy=True)


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one), at least 1."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1
