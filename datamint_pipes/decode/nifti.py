"""NIfTI-1 and NIfTI-2 single files (``.nii``, ``.nii.gz``) through nibabel, normalized to (C,N,H,W).

Layout, for any stored orientation: the voxel axes are reoriented (flips and transposes only, no resampling) to
the closest of L,P,S -- i increasing toward patient Left, j toward Posterior, k toward Superior -- and the array is
transposed to (C, N=k, H=j, W=i). So N runs inferior -> superior, each axial slice (H,W) shows anterior at the top and
the patient's right on the left (radiological display), whatever the file's storage order. The 4th NIfTI axis (time,
or components) becomes C; 3D data give C=1. Dimensions beyond the 4th must be 1.

Values: the stored dtype (native byte order) when the header has no scaling; float32 ``raw * scl_slope +
scl_inter`` when it has a non-identity one -- the values of ``get_fdata()`` (same rules as nibabel: a slope of 0
or NaN means no scaling). ``Decoded.affine`` maps the normalized (n,h,w) indices to the file's RAS+ world;
``metainfo`` keeps the file's own affine, header and shape. Spacing is the header's pixdim, permuted to (N,H,W).

A file (a ``.nii.gz`` once decompressed) shorter than its header's vox_offset plus the declared voxels raises
:class:`~datamint_pipes.errors.DecodeError` before any voxel is allocated.
"""

from __future__ import annotations

import gzip
import io
import math
import struct
import zlib
from dataclasses import dataclass
from typing import Any, BinaryIO

import nibabel as nib
import numpy as np
from isal import isal_zlib
from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, io_orientation, ornt_transform

from datamint_pipes.decode._base import Decoded, ProbeResult, native_contiguous
from datamint_pipes.errors import DecodeError

__all__ = ["NiftiDecoder"]

_GZIP_MAGIC = b"\x1f\x8b"
_LPS = axcodes2ornt(("L", "P", "S"))
# Columns reorder voxel indices (n, h, w) = (k, j, i) of the LPS-ordered array into (i, j, k).
_NHW_TO_IJK = np.eye(4)[:, [2, 1, 0, 3]]
_SUPPORTED_KINDS = "biuf"
# The stubs declare isal's error as an instance; at run time it is the exception class.
_INFLATE_ERROR: type[Exception] = isal_zlib.error  # type: ignore[assignment]


@dataclass(frozen=True)
class _Layout:
    """How the stored array maps to the normalized one; derived from the header alone."""

    stored_shape: tuple[int, ...]
    spatial_shape: tuple[int, int, int]
    channels: int
    transform: np.ndarray[Any, Any]  # nibabel orientation transform, stored (i,j,k) -> L,P,S
    shape: tuple[int, int, int, int]  # (C, N, H, W)
    dtype: np.dtype[Any]
    slope: float | None  # None: no scaling
    inter: float
    spacing: tuple[float, float, float] | None
    affine: np.ndarray[Any, Any]


class NiftiDecoder:
    """NIfTI-1/-2, gzipped or not, 2D to 4D."""

    name = "nifti"
    mimetypes = ("application/nifti", "application/x-nifti", "application/gzip+nifti", "image/nifti")
    suffixes = (".nii", ".nii.gz")

    def sniff(self, head: bytes) -> bool:
        if head.startswith(_GZIP_MAGIC):
            try:
                head = zlib.decompressobj(wbits=31).decompress(head, 544)
            except zlib.error:
                return False
        return _header_size(head) is not None

    def probe(self, stream: BinaryIO) -> ProbeResult:
        compressed = stream.read(2) == _GZIP_MAGIC
        stream.seek(0)
        reader: BinaryIO = gzip.GzipFile(fileobj=stream, mode="rb") if compressed else stream  # type: ignore[assignment]
        raw = reader.read(544)
        size = _single_file_size(raw)
        header_class = nib.Nifti1Header if size == 348 else nib.Nifti2Header
        layout = _layout(header_class.from_fileobj(io.BytesIO(raw[:size])))
        return ProbeResult(
            kind="volume",
            format=self.name,
            shape=layout.shape,
            dtype=layout.dtype.name,
            frame_count=layout.shape[1],
            stored_shape=layout.stored_shape,
            spacing=layout.spacing,
        )

    def decode(self, stream: BinaryIO) -> Decoded:
        """Decode to (C,N,H,W) as the module docstring describes."""
        data = stream.read()
        if data.startswith(_GZIP_MAGIC):
            data = _gunzip(data)
        size = _single_file_size(data)
        image_class = nib.Nifti1Image if size == 348 else nib.Nifti2Image
        # The layout comes from the file's header bytes: nibabel moves scl_slope/scl_inter out of ``image.header``.
        header = image_class.header_class.from_fileobj(io.BytesIO(data[:size]))
        layout = _layout(header)
        _check_data_size(header, layout, len(data))  # nibabel allocates the declared size before reading
        image = image_class.from_bytes(data)  # lazy: header and affine only
        # The voxels as a read-only view of the decompressed bytes (stored dtype and byte order, Fortran order,
        # as nibabel's ArrayProxy reads them); the one copy is native_contiguous below.
        stored = np.frombuffer(
            data,
            dtype=header.get_data_dtype(),
            count=math.prod(layout.stored_shape),
            offset=int(header.get_data_offset()),
        ).reshape(layout.stored_shape, order="F")
        xyzc = stored.reshape((*layout.spatial_shape, layout.channels))  # pads or drops trailing 1-sized axes
        array = apply_orientation(xyzc, layout.transform).transpose(3, 2, 1, 0)
        if layout.slope is None:
            out = native_contiguous(array, layout.dtype)
        else:
            out = np.array(array, dtype=np.float32, order="C")
            out *= np.float32(layout.slope)
            out += np.float32(layout.inter)
        metainfo = {"affine": image.affine, "header": image.header, "shape": image.shape}
        return Decoded(array=out, metainfo=metainfo, spacing=layout.spacing, affine=layout.affine)


def _gunzip(data: bytes) -> bytes:
    """Decompress every gzip member, CRC and length checked.

    ISA-L's inflate (``isal``) runs at 2.5x zlib's rate here (795 vs 320 MB/s on CT-like volumes), and the
    gzip decode is most of a ``.nii.gz`` decode; ``gzip.decompress`` would also add a second CRC pass.
    """
    out = []
    while data:
        decompressor = isal_zlib.decompressobj(wbits=31)
        try:
            out.append(decompressor.decompress(data))
        except _INFLATE_ERROR as error:
            raise DecodeError(f"corrupt gzip stream: {error}") from error
        if not decompressor.eof:
            raise DecodeError("the gzip stream is truncated")
        data = decompressor.unused_data.lstrip(b"\x00")
    return b"".join(out)


def _header_size(raw: bytes) -> int | None:
    """348 (NIfTI-1) or 540 (NIfTI-2) if ``raw`` starts with a NIfTI header, else None (either byte order)."""
    if len(raw) < 348:
        return None
    for order in "<>":
        (size,) = struct.unpack(f"{order}i", raw[:4])
        magic = raw[344:348] if size == 348 else raw[4:8] if size == 540 else b""
        if magic in (b"n+1\0", b"n+2\0", b"ni1\0", b"ni2\0"):
            return int(size)
    return None


def _single_file_size(raw: bytes) -> int:
    """The header size of a single-file NIfTI (magic ``n+1`` / ``n+2``); :class:`DecodeError` otherwise."""
    size = _header_size(raw)
    if size is None:
        raise DecodeError("not a NIfTI-1 or NIfTI-2 file (no sizeof_hdr 348/540 with its magic)")
    magic = raw[344:348] if size == 348 else raw[4:8]
    if magic[1:2] == b"i":
        raise DecodeError("NIfTI header points to a separate .img file (a .hdr/.img pair); only .nii is supported")
    return size


def _check_data_size(header: nib.Nifti1Header, layout: _Layout, available: int) -> None:
    """Raise when the voxels the header declares end beyond the ``available`` bytes of the (decompressed) file."""
    offset = int(header.get_data_offset())
    declared = math.prod(layout.stored_shape) * header.get_data_dtype().itemsize
    if offset < 0 or offset + declared > available:
        raise DecodeError(
            f"the NIfTI header declares {declared} bytes of {layout.stored_shape} voxels at offset {offset}, "
            f"the file holds {available} bytes (truncated, or a damaged header)"
        )


def _layout(header: nib.Nifti1Header) -> _Layout:
    stored = tuple(int(d) for d in header.get_data_shape())
    if len(stored) > 4 and any(d != 1 for d in stored[4:]):
        raise DecodeError(f"NIfTI data of shape {stored}: dimensions beyond the 4th are not supported")
    if not stored or min(stored) < 1:
        raise DecodeError(f"NIfTI data shape {stored} is empty")
    padded = (*stored, 1, 1)
    spatial = (padded[0], padded[1], padded[2])
    channels = padded[3]
    stored_dtype = header.get_data_dtype()
    if stored_dtype.fields is not None or stored_dtype.kind not in _SUPPORTED_KINDS:
        raise DecodeError(f"NIfTI datatype {stored_dtype} (RGB, complex, ...) is not supported")
    slope, inter = header.get_slope_inter()
    scaled = slope is not None and (slope != 1 or (inter or 0.0) != 0)
    dtype = np.dtype(np.float32) if scaled else stored_dtype.newbyteorder("=")

    affine = np.asarray(header.get_best_affine(), dtype=np.float64)
    ornt = io_orientation(affine)
    if np.isnan(ornt).any():
        raise DecodeError(f"the NIfTI affine defines no orientation for every axis:\n{affine}")
    transform = ornt_transform(ornt, _LPS)
    lps_shape = [0, 0, 0]
    lps_zooms = [0.0, 0.0, 0.0]
    zooms = np.abs(np.asarray(header["pixdim"][1:4], dtype=np.float64))
    for axis, (target, _flip) in enumerate(transform):
        lps_shape[int(target)] = spatial[axis]
        lps_zooms[int(target)] = float(zooms[axis])
    spacing = (lps_zooms[2], lps_zooms[1], lps_zooms[0])
    valid_spacing = all(np.isfinite(s) and s > 0 for s in spacing)
    return _Layout(
        stored_shape=stored,
        spatial_shape=spatial,
        channels=channels,
        transform=transform,
        shape=(channels, lps_shape[2], lps_shape[1], lps_shape[0]),
        dtype=dtype,
        slope=float(slope) if scaled and slope is not None else None,
        inter=float(inter or 0.0),
        spacing=spacing if valid_spacing else None,
        affine=affine @ inv_ornt_aff(transform, spatial) @ _NHW_TO_IJK,
    )
