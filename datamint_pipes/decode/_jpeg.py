"""JPEG-baseline DICOM frames decoded straight by libjpeg-turbo (through simplejpeg), a fast path for cine loops.

pydicom's default route (Pillow, one frame at a time, then a YCbCr->RGB conversion in numpy) reaches 30-200
frames/s on a 480x640 ultrasound cine. Here each encapsulated frame is decoded by libjpeg-turbo's TurboJPEG API
(``simplejpeg.decode_jpeg``, about 0.75 ms a frame on one core) into a buffer that its thread reuses, then split into
planes of a preallocated (C,N,H,W) array; a grey frame is decoded straight into its plane. Reusing the buffer
matters as much as the decoder: a decoder that returns a fresh 0.9 MB array per frame spends as long faulting in its
pages as decoding (1.4 ms a frame with ``cv2.imdecode``). Frames are decoded in parallel (both calls release the GIL):
the calling thread and the workers of one process-wide pool (:func:`_frame_pool`, created lazily, again in a forked
child) take frames in turn from a shared counter. Frames whose codestream repeats an earlier frame's byte for byte (a
cine holding a still) are copied from that frame instead of decoded again.

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
import struct
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

import cv2  # opencv-python-headless, a dependency of albumentations (also used by stages.augment)
import numpy as np
import simplejpeg
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.uid import JPEGBaseline8Bit, JPEGExtended12Bit

from datamint_pipes import _buffers
from datamint_pipes.decode._base import usable_cpus

__all__ = ["decode_jpeg_frames", "frame_size", "split_channels"]

_MAX_THREADS = 4
# Below this many decoded bytes a second thread costs about what it saves (a hand-off is ~0.1 ms, libjpeg ~1.5 ns/byte).
_MIN_BYTES_FOR_THREADS = 1 << 19
_ITEM_TAG = 0xE000FFFE  # (FFFE,E000) read as one little-endian uint32 of group then element
_SEQUENCE_DELIMITER_TAG = 0xE0DDFFFE
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
    encoded = _split_frames(ds, frames)
    if encoded is None:
        return None  # malformed encapsulation: pydicom reports it in its own words
    first = _read_codestream(encoded[0])
    if first is None or not _codestream_allows(first, photometric, samples, rows, columns):
        return None  # checked before allocating what the header declares (a damaged header may declare gigabytes)
    out = _buffers.empty((samples, frames, rows, columns))  # recycled: a cine's pages are mapped once, not per call
    repeats = _repeated_frames(encoded)
    unique = [index for index in range(frames) if index not in repeats]

    def decode_one(index: int) -> None:
        data = encoded[index]
        header = first if index == 0 else _read_codestream(data)
        if header is None or not _codestream_allows(header, photometric, samples, rows, columns):
            raise _NotFastPath
        if not _ends_with_eoi(data):
            raise _NotFastPath  # truncated: libjpeg would pad it with grey, Pillow raises
        if samples == 1:
            # strict: libjpeg's warnings (corrupt data it would skip over) raise, and pydicom gets the frame
            grey = simplejpeg.decode_jpeg(data, colorspace="GRAY", buffer=out[0, index], strict=True)
            if grey.shape[:2] != (rows, columns):
                raise _NotFastPath
            return
        image = _thread_buffer((rows, columns, samples))
        decoded = simplejpeg.decode_jpeg(data, colorspace="RGB", buffer=image, strict=True)
        if decoded.shape != image.shape:
            raise _NotFastPath
        split_channels(image, [out[channel, index] for channel in range(samples)])

    threads = min(_MAX_THREADS, usable_cpus(), len(unique)) if out.nbytes >= _MIN_BYTES_FOR_THREADS else 1
    try:
        _run_each(decode_one, unique, threads)
    except (_NotFastPath, ValueError, cv2.error):
        return None
    for index, original in repeats.items():
        out[:, index] = out[:, original]
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


def _split_frames(ds: Dataset, frames: int) -> list[bytes | memoryview] | None:
    """The codestream of each of the ``frames`` frames (at least that many), or ``None`` when pydicom cannot split
    the encapsulated Pixel Data either.

    When the items hold exactly one fragment per frame (what cines hold: every frame starts a fragment, PS3.5 A.4)
    the frames are zero-copy views of the items, read with ``struct`` (pydicom's ``generate_frames`` copies them and
    costs ~20 us a frame); otherwise pydicom splits them (Basic or Extended Offset Table, fragment guessing).
    """
    pixel_data = ds.PixelData
    fragments = _fragments(pixel_data)
    if fragments is not None and len(fragments) == frames:
        view = memoryview(pixel_data)
        return [view[start : start + length] for start, length in fragments]
    extended = None
    if "ExtendedOffsetTable" in ds and "ExtendedOffsetTableLengths" in ds:
        extended = (ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths)
    try:
        encoded: list[bytes | memoryview] = list(
            generate_frames(pixel_data, number_of_frames=frames, extended_offsets=extended)
        )
    except (ValueError, KeyError, IndexError, TypeError):
        return None
    return encoded if len(encoded) >= frames else None


def _fragments(pixel_data: bytes) -> list[tuple[int, int]] | None:
    """(offset, length) of every fragment after the Basic Offset Table item; ``None`` unless the data is a sequence
    of items of defined length that lie wholly inside it (the delimiter and anything after it are ignored)."""
    fragments: list[tuple[int, int]] = []
    position, size = 0, len(pixel_data)
    while position + 8 <= size:
        tag, length = struct.unpack_from("<LL", pixel_data, position)
        if tag == _SEQUENCE_DELIMITER_TAG:
            break
        if tag != _ITEM_TAG or position + 8 + length > size:
            return None  # includes the undefined length 0xFFFFFFFF
        fragments.append((position + 8, length))
        position += 8 + length
    return fragments[1:] if fragments else None


def _repeated_frames(encoded: Sequence[bytes | memoryview]) -> dict[int, int]:
    """{frame: the earlier frame whose codestream is byte for byte the same} (libjpeg decodes both alike).

    Only frames of the same length are compared, so distinct frames cost one length lookup each."""
    first_of_length: dict[int, list[int]] = {}
    repeats: dict[int, int] = {}
    for index, data in enumerate(encoded):
        same_length = first_of_length.setdefault(len(data), [])
        original = next((earlier for earlier in same_length if encoded[earlier] == data), None)
        if original is None:
            same_length.append(index)
        else:
            repeats[index] = original
    return repeats


def _ends_with_eoi(data: bytes | memoryview) -> bool:
    """Whether the codestream ends with the EOI marker, before any trailing zero padding."""
    end = len(data)
    while end and data[end - 1] == 0:
        end -= 1
    return end >= 2 and data[end - 2] == 0xFF and data[end - 1] == 0xD9


def _run_each(task: Callable[[int], None], items: Sequence[int], threads: int) -> None:
    """``task(item)`` for every item, in the calling thread and ``threads - 1`` workers of the frame pool.

    Threads take items in turn from a shared counter, so a slow frame does not hold up a fixed share of the others.
    The first exception stops the hand-out of further items and is raised once every thread has finished its item.
    """
    if threads <= 1:
        for item in items:
            task(item)
        return
    lock = threading.Lock()
    next_item = [0]
    failed = threading.Event()

    def work() -> None:
        while not failed.is_set():
            with lock:
                position = next_item[0]
                next_item[0] += 1
            if position >= len(items):
                return
            try:
                task(items[position])
            except BaseException:
                failed.set()
                raise

    pool = _frame_pool()
    helpers: list[Future[None]] = [pool.submit(work) for _ in range(threads - 1)]
    try:
        work()
    finally:
        for helper in helpers:
            helper.cancel()  # still queued behind another call's frames: nothing left for it to do
        wait(helpers)  # the output array must not be handed out while a worker still writes into it
    for helper in helpers:
        if not helper.cancelled():
            helper.result()  # re-raises a worker's exception


_thread_frames = threading.local()


def _thread_buffer(shape: tuple[int, int, int]) -> np.ndarray[Any, Any]:
    """A uint8 array of ``shape`` that belongs to the calling thread and is reused by its next frames (one per
    thread: a frame of another size replaces it). Its pages are faulted in once, not once per frame."""
    buffer: np.ndarray[Any, Any] | None = getattr(_thread_frames, "frame", None)
    if buffer is None or buffer.shape != shape:
        buffer = _thread_frames.frame = np.empty(shape, dtype=np.uint8)
    return buffer


_pool_state: tuple[int, ThreadPoolExecutor] | None = None
_pool_lock = threading.Lock()


def _frame_pool() -> ThreadPoolExecutor:
    """This process's pool of frame-decoding threads (one fewer than the usable CPUs, at most ``_MAX_THREADS - 1``:
    the calling thread decodes too), created on first use.

    Keyed by the process id: a pool inherited through ``fork`` (a DataLoader worker) has no threads in the child,
    so the child makes its own. Its threads idle between calls and are joined at interpreter exit.
    """
    global _pool_state
    state = _pool_state
    if state is not None and state[0] == os.getpid():
        return state[1]
    with _pool_lock:
        state = _pool_state
        if state is None or state[0] != os.getpid():
            workers = max(1, min(_MAX_THREADS, usable_cpus()) - 1)
            pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="jpeg-frames")
            state = _pool_state = (os.getpid(), pool)
        return state[1]


def _reset_after_fork() -> None:
    global _pool_lock, _pool_state
    _pool_lock = threading.Lock()  # a parent thread may have held it at the fork: the child's copy stays locked
    _pool_state = None  # the parent's pool object: threads that do not exist here


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


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


def _read_codestream(data: bytes | memoryview) -> _Codestream | None:
    """The markers before the first scan (SOS), or ``None`` for anything a plain JPEG does not have there."""
    if data[:2] != b"\xff\xd8":
        return None
    position, jfif, app14, transform = 2, False, False, None
    sof: tuple[int, bytes | memoryview] | None = None
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
