"""PNG and JPEG through Pillow, as (C,H,W) arrays.

Pillow mode -> channels, dtype:

=========================  ==========  =======  =====================================================
stored mode                channels    dtype    note
=========================  ==========  =======  =====================================================
``1`` (1-bit)              1           uint8    0 / 255, as Pillow's conversion to ``L``
``L``                      1           uint8
``LA``                     2           uint8    gray + alpha
``P`` (palette)            3           uint8    RGB through the palette (a transparency entry is dropped)
``PA``                     4           uint8    RGBA through the palette
``RGB``, ``YCbCr``, ``CMYK`` 3         uint8    converted to RGB
``RGBA``                   4           uint8
``I;16`` / ``I;16B``       1           uint16   stored values, not scaled (see ``minmax_to_uint8``)
``I``                      1           int32
``F``                      1           float32
=========================  ==========  =======  =====================================================

Pixels are returned as stored: an EXIF orientation tag is not applied, and only the first frame of an animated
file is read. Pillow reads 16-bit RGB(A) PNGs as 8-bit RGB(A) (the high byte); a warning says so.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
from PIL import Image

from datamint_pipes.decode._base import Decoded, ProbeResult, native_contiguous
from datamint_pipes.errors import DecodeError

__all__ = ["PillowDecoder"]

# stored mode -> (mode to convert to, or None to keep; dtype of the result)
_MODES: dict[str, tuple[str | None, str]] = {
    "1": ("L", "uint8"),
    "L": (None, "uint8"),
    "LA": (None, "uint8"),
    "La": ("LA", "uint8"),
    "P": ("RGB", "uint8"),
    "PA": ("RGBA", "uint8"),
    "RGB": (None, "uint8"),
    "RGBX": ("RGB", "uint8"),
    "YCbCr": ("RGB", "uint8"),
    "CMYK": ("RGB", "uint8"),
    "HSV": ("RGB", "uint8"),
    "LAB": ("RGB", "uint8"),
    "RGBA": (None, "uint8"),
    "RGBa": ("RGBA", "uint8"),
    "I;16": (None, "uint16"),
    "I;16L": (None, "uint16"),
    "I;16B": (None, "uint16"),
    "I;16N": (None, "uint16"),
    "I": (None, "int32"),
    "F": (None, "float32"),
}
_BANDS = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4}

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class PillowDecoder:
    """One Pillow format (``pillow_format``, e.g. ``"PNG"``) registered under ``name``, recognised by ``magic``."""

    name: str
    pillow_format: str
    magic: bytes
    mimetypes: tuple[str, ...]
    suffixes: tuple[str, ...]

    def sniff(self, head: bytes) -> bool:
        return head.startswith(self.magic)

    def probe(self, stream: BinaryIO) -> ProbeResult:
        with self._open(stream) as image:
            convert_to, dtype = _MODES[image.mode]
            width, height = image.size
            stored_bands = len(image.getbands())
            channels = _BANDS.get(convert_to or image.mode, 1)
        stored = (height, width) if stored_bands == 1 else (height, width, stored_bands)
        return ProbeResult(
            kind="image",
            format=self.name,
            shape=(channels, height, width),
            dtype=dtype,
            frame_count=1,
            stored_shape=stored,
            spacing=None,
        )

    def decode(self, stream: BinaryIO) -> Decoded:
        """Decode to (C,H,W); dtype and channels per the module table."""
        head = stream.read(32)
        stream.seek(0)
        if self.magic == _PNG_MAGIC and len(head) >= 26 and head[24] == 16 and head[25] in (2, 6):
            warnings.warn("Pillow reads 16-bit RGB(A) PNGs as 8 bits per channel", stacklevel=3)
        with self._open(stream) as image:
            convert_to, dtype = _MODES[image.mode]
            image.load()
            pixels = image.convert(convert_to) if convert_to is not None else image
            array = np.asarray(pixels)
        array = array[np.newaxis] if array.ndim == 2 else np.moveaxis(array, -1, 0)
        return Decoded(array=native_contiguous(array, dtype), metainfo=None, spacing=None, affine=None)

    def _open(self, stream: BinaryIO) -> Image.Image:
        image = Image.open(stream, formats=[self.pillow_format])
        if image.mode not in _MODES:
            image.close()
            raise DecodeError(f"{self.pillow_format} image mode {image.mode!r} is not supported")
        return image


PNG = PillowDecoder("png", "PNG", _PNG_MAGIC, ("image/png",), (".png",))
JPEG = PillowDecoder("jpeg", "JPEG", b"\xff\xd8\xff", ("image/jpeg", "image/jpg", "image/pjpeg"), (".jpg", ".jpeg"))
