"""Encapsulated (compressed) DICOM Pixel Data checked against the header before anything is decoded.

pydicom's decoders, and the libjpeg fast path (:mod:`._jpeg`) when its own checks pass, allocate the whole
NumberOfFrames x Rows x Columns x SamplesPerPixel array before they read a codestream, so a damaged header can make a
file of a few kilobytes ask for gigabytes. :func:`check_encapsulated` reads item headers and the first codestream's
header only, and raises :class:`~datamint_pipes.errors.DecodeError` when the data cannot hold what the header
declares:

* the items are malformed (no Basic Offset Table item first, another tag, an undefined length): pydicom cannot
  split them into frames either;
* NumberOfFrames exceeds the fragments: every frame starts a fragment of its own (PS3.5 A.4);
* the first fragment's JPEG frame header (SOFn, also JPEG-LS SOF55) or JPEG 2000 SIZ gives another size than
  Rows x Columns (a JPEG height of 0, a JP2 file or a header not in the first fragment: no size, no check);
* RLE: the decoded bytes exceed 64 times the fragments' size; PackBits needs at least 2 bytes per 128 decoded bytes.
"""

from __future__ import annotations

import struct

from pydicom.uid import UID, RLELossless

from datamint_pipes.decode._jpeg import frame_size
from datamint_pipes.errors import DecodeError

__all__ = ["check_encapsulated"]

_ITEM = 0xFFFEE000
_SEQUENCE_DELIMITER = 0xFFFEE0DD
_UNDEFINED_LENGTH = 0xFFFFFFFF
_J2K_SOC_SIZ = b"\xff\x4f\xff\x51"
_RLE_MAX_RATIO = 64  # a PackBits replicate run: 2 bytes for 128
_HEADER_BYTES = 1 << 20  # where a codestream's header must lie to be checked (APPn segments come before SOF)


def check_encapsulated(
    pixel_data: bytes, syntax: UID, *, frames: int, rows: int, columns: int, samples: int, sample_bytes: int
) -> None:
    """Raise :class:`DecodeError` when the encapsulated ``pixel_data`` cannot hold ``frames`` frames of
    ``rows`` x ``columns`` x ``samples`` values of ``sample_bytes`` bytes (see the module docstring).

    Costs one pass over the item headers and a read of the first codestream's header.
    """
    fragments = _fragments(pixel_data)
    if frames > len(fragments):
        raise DecodeError(
            f"DICOM NumberOfFrames {frames} exceeds the {len(fragments)} fragment(s) of the encapsulated Pixel Data"
        )
    if syntax == RLELossless:
        stored = sum(length for _, length in fragments)
        declared = frames * rows * columns * samples * sample_bytes
        if declared > _RLE_MAX_RATIO * stored:
            raise DecodeError(
                f"DICOM RLE Pixel Data of {stored} bytes cannot hold {frames} frame(s) of {rows}x{columns}x{samples} "
                f"({declared} bytes decoded)"
            )
        return
    start, length = fragments[0]
    size = _codestream_size(pixel_data[start : start + min(length, _HEADER_BYTES)])
    if size is not None and size != (rows, columns):
        raise DecodeError(
            f"DICOM Rows x Columns {rows}x{columns} differ from the {size[0]}x{size[1]} of the first codestream"
        )


def _fragments(pixel_data: bytes) -> list[tuple[int, int]]:
    """(offset, length) of the value of each item after the Basic Offset Table; a length is cut at the data's end."""
    items: list[tuple[int, int]] = []
    position = 0
    while position + 8 <= len(pixel_data):
        group, element, length = struct.unpack_from("<HHL", pixel_data, position)
        tag = group << 16 | element
        if tag == _SEQUENCE_DELIMITER and items:
            break
        if tag != _ITEM:
            what = "an item" if items else "the Basic Offset Table item"
            raise DecodeError(
                f"encapsulated DICOM Pixel Data holds tag ({group:04X},{element:04X}) at byte {position}, not {what}"
            )
        if length == _UNDEFINED_LENGTH:
            raise DecodeError(f"encapsulated DICOM Pixel Data has an item of undefined length at byte {position}")
        items.append((position + 8, min(length, len(pixel_data) - position - 8)))
        position += 8 + length
    if not items:
        raise DecodeError(f"encapsulated DICOM Pixel Data of {len(pixel_data)} bytes holds no Basic Offset Table item")
    return items[1:]


def _codestream_size(head: bytes) -> tuple[int, int] | None:
    """(rows, columns) from the header of a JPEG, JPEG-LS or JPEG 2000 codestream; None when not readable there."""
    if head[:4] == _J2K_SOC_SIZ and len(head) >= 24:
        width, height, x_offset, y_offset = struct.unpack_from(">4L", head, 8)  # Xsiz, Ysiz, XOsiz, YOsiz
        return height - y_offset, width - x_offset
    return frame_size(head)
