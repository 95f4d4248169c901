"""JPEG-baseline DICOM frames decoded straight by libjpeg-turbo (through OpenCV), a fast path for cine loops.

pydicom's default route (Pillow, one frame at a time, then a YCbCr->RGB conversion in numpy) reaches about 30
frames/s on a 480x640 ultrasound cine; decoding each encapsulated frame with ``cv2.imdecode`` into planes of a
preallocated (C,N,H,W) array, in a few threads (libjpeg releases the GIL), reaches 1,000-2,000.

The fast path is taken only where libjpeg's own reading of every frame's codestream gives what pydicom gives;
anything else returns ``None`` and the caller uses pydicom. Accepted (all of: transfer syntax JPEG Baseline or JPEG
Extended, BitsAllocated = BitsStored = 8, unsigned, PlanarConfiguration 0, SOF0/SOF1 with 8-bit precision and the
header's size, a frame ending in EOI):

==========================  =======  ======================================  ================================
Photometric Interpretation  samples  codestream                              output (both paths)
==========================  =======  ======================================  ================================
MONOCHROME1, MONOCHROME2    1        one component                           stored grey values
YBR_FULL, YBR_FULL_422      3        no APP14 marker, component ids not RGB  YCbCr -> RGB (see below)
RGB                         3        Adobe APP14 transform 0, no JFIF APP0   stored RGB, no conversion
==========================  =======  ======================================  ================================

YCbCr frames are converted to RGB by libjpeg's integer JFIF conversion (what Pillow's ``Image.open(...)`` and JPEG
viewers give). pydicom converts the raw YCbCr in float32 instead: the two differ by exactly 1 in a G or B value
for 0.03% of the 2^24 (Y,Cb,Cr) triples (0.01% of the values of noisy images), and on none of the real YBR files
of pydicom and pydicom-data.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import cv2  # opencv-python-headless, a dependency of albumentations (also used by stages.augment)
import numpy as np
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.uid import JPEGBaseline8Bit, JPEGExtended12Bit

__all__ = ["decode_jpeg_frames", "frame_size", "split_channels"]

_MAX_THREADS = 4
_MIN_FRAMES_FOR_THREADS = 8
_SOF_MARKERS = frozenset({0xC0, 0xC1})  # baseline, extended sequential Huffman: the two libjpeg decodes alike
_JPEG_LS_SOF = 0xF7  # SOF55: read for its size only (the fast path takes _SOF_MARKERS)
_RGB_COMPONENT_IDS = ((82, 71, 66), (114, 103, 98))  # "RGB" / "rgb": libjpeg and pydicom disagree on these


class _NotFastPath(Exception):
    """A frame the fast path does not decode exactly as pydicom would: the caller falls back."""


@dataclass(frozen=True)
class _Codestream:
    """What libjpeg reads from a frame's markers before the first scan to choose its colour conversion."""

    sof: int
    precision: int
    rows: int
    columns: int
    component_ids: tuple[int, ...]
    jfif: bool
    app14: bool
    adobe_transform: int | None


def decode_jpeg_frames(ds: Dataset, frames: int, rows: int, columns: int) -> np.ndarray[Any, Any] | None:
    """Decode a JPEG-baseline dataset's frames with libjpeg-turbo, or ``None`` when the fast path does not apply.

    Returns what ``pydicom.pixels.pixel_array(ds, as_rgb=True)`` returns: uint8 (N,H,W[,3]), or (H,W[,3]) for one
    frame. Colour results are a channels-last view of a C-contiguous (3,N,H,W) array, so moving the channel axis
    first gives the contiguous array without a copy.
    """
    photometric = str(ds.get("PhotometricInterpretation") or "").strip().upper()
    samples = int(ds.get("SamplesPerPixel") or 1)
    if not _header_allows(ds, photometric, samples):
        return None
    extended = None
    if "ExtendedOffsetTable" in ds and "ExtendedOffsetTableLengths" in ds:
        extended = (ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths)
    try:
        encoded = list(generate_frames(ds.PixelData, number_of_frames=frames, extended_offsets=extended))
    except (ValueError, KeyError, IndexError, TypeError):
        return None  # malformed encapsulation: pydicom reports it in its own words
    if len(encoded) < frames:
        return None
    first = _read_codestream(encoded[0])
    if first is None or not _codestream_allows(first, photometric, samples, rows, columns):
        return None  # checked before allocating what the header declares (a damaged header may declare gigabytes)
    out = np.empty((samples, frames, rows, columns), dtype=np.uint8)
    flags = cv2.IMREAD_IGNORE_ORIENTATION | (cv2.IMREAD_GRAYSCALE if samples == 1 else cv2.IMREAD_COLOR_RGB)

    def decode_one(index: int) -> None:
        data = encoded[index]
        header = _read_codestream(data)
        if header is None or not _codestream_allows(header, photometric, samples, rows, columns):
            raise _NotFastPath
        if not data.rstrip(b"\0").endswith(b"\xff\xd9"):
            raise _NotFastPath  # truncated: libjpeg would pad it with grey, Pillow raises
        image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flags)
        if image is None or image.shape[:2] != (rows, columns):
            raise _NotFastPath
        split_channels(image, [out[channel, index] for channel in range(samples)])

    threads = min(_MAX_THREADS, _usable_cpus(), frames) if frames >= _MIN_FRAMES_FOR_THREADS else 1
    try:
        if threads > 1:
            with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="jpeg-frames") as pool:
                list(pool.map(decode_one, range(frames)))
        else:
            for index in range(frames):
                decode_one(index)
    except (_NotFastPath, cv2.error):
        return None
    stored = np.moveaxis(out, 0, -1)  # (N,H,W,C) view of the (C,N,H,W) buffer
    if samples == 1:
        stored = stored[..., 0]
    return stored[0] if frames == 1 else stored


def frame_size(data: bytes) -> tuple[int, int] | None:
    """(rows, columns) from the frame header (SOFn, or JPEG-LS SOF55) of the JPEG codestream ``data``; ``None``
    when it is not a plain JPEG up to its first scan, or its height is 0 (given later, in a DNL marker)."""
    header = _read_codestream(data)
    if header is None or header.rows == 0:
        return None
    return header.rows, header.columns


def split_channels(image: np.ndarray[Any, Any], planes: Sequence[np.ndarray[Any, Any]]) -> None:
    """Copy an (H,W) or (H,W,C) image into C contiguous (H,W) ``planes`` of the same dtype (channels first)."""
    if image.ndim == 2:
        np.copyto(planes[0], image)
        return
    if image.flags.c_contiguous:
        written = cv2.split(image, list(planes))
        if all(a.ctypes.data == b.ctypes.data for a, b in zip(written, planes, strict=True)):
            return
    for channel, plane in enumerate(planes):  # OpenCV allocated its own planes (it should not): copy in numpy
        np.copyto(plane, image[..., channel])


def _header_allows(ds: Dataset, photometric: str, samples: int) -> bool:
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if syntax not in (JPEGBaseline8Bit, JPEGExtended12Bit) or "PixelData" not in ds:
        return False
    if (ds.get("BitsAllocated"), ds.get("BitsStored"), ds.get("PixelRepresentation")) != (8, 8, 0):
        return False
    if samples == 3:
        return int(ds.get("PlanarConfiguration") or 0) == 0 and photometric in ("YBR_FULL", "YBR_FULL_422", "RGB")
    return samples == 1 and photometric in ("MONOCHROME1", "MONOCHROME2")


def _codestream_allows(header: _Codestream, photometric: str, samples: int, rows: int, columns: int) -> bool:
    if header.sof not in _SOF_MARKERS or header.precision != 8 or (header.rows, header.columns) != (rows, columns):
        return False
    if len(header.component_ids) != samples:
        return False
    if samples == 1:
        return True
    if photometric == "RGB":
        return header.adobe_transform == 0 and not header.jfif
    return not header.app14 and header.component_ids not in _RGB_COMPONENT_IDS


def _read_codestream(data: bytes) -> _Codestream | None:
    """The markers before the first scan (SOS), or ``None`` for anything a plain JPEG does not have there."""
    if data[:2] != b"\xff\xd8":
        return None
    position, jfif, app14, transform = 2, False, False, None
    sof: tuple[int, bytes] | None = None
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            return None
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        length = int.from_bytes(data[position + 2 : position + 4], "big")
        segment = data[position + 4 : position + 2 + length]
        if length < 2 or len(segment) != length - 2:
            return None
        if marker == 0xDA:
            break
        if marker == 0xE0 and len(segment) >= 14 and segment[:5] == b"JFIF\0":  # libjpeg's own test
            jfif = True
        elif marker == 0xEE:
            app14 = True
            if len(segment) >= 12 and segment[:5] == b"Adobe":
                transform = segment[11]
        elif (0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC)) or marker == _JPEG_LS_SOF:
            sof = (marker, segment)
        position += 2 + length
    else:  # the data ended before the first scan (SOS)
        return None
    if sof is None or len(sof[1]) < 6 or len(sof[1]) < 6 + 3 * sof[1][5]:
        return None
    marker, segment = sof
    return _Codestream(
        sof=marker,
        precision=segment[0],
        rows=int.from_bytes(segment[1:3], "big"),
        columns=int.from_bytes(segment[3:5], "big"),
        component_ids=tuple(segment[6 : 6 + 3 * segment[5] : 3]),
        jfif=jfif,
        app14=app14,
        adobe_transform=transform,
    )


def _usable_cpus() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1
