"""Fuzzing the decoders with damaged copies of real files, and the deliberately broken files of the test data.

Property, for every input: ``probe`` and ``decode`` each return, or raise :class:`DecodeError` naming the file
passed as ``filename=``; never another exception, never a crash, never a hang. When both return, the decoded
array has exactly the probed shape, dtype and frame count.

The inputs are real files (reference/test-data.md; PNG 16-bit and palette files and an MP4 are made here from real
images) damaged by a few Hypothesis-drawn mutations: truncation, bit flips, ranges overwritten with random, 0x00 or
0xFF bytes, inserted and deleted ranges, and header fields (DICOM element lengths and values, encapsulated
fragment and codestream headers, NIfTI header fields, PNG chunks, JPEG segments, MP4 boxes) set to awkward values.
Compressed wrappers are also damaged from the inside: a ``.nii.gz`` or deflated DICOM is decompressed, damaged
and recompressed; a PNG gets valid CRCs after the damage, so the damage reaches the decoder behind the checksum.

Each call runs bounded, so that a failure is a test failure on any machine, never a stuck or killed CI runner:

* time: a generous watchdog (``HANG_SECONDS``), no timing assertion: it dumps every thread's stack and raises
  :class:`Hang` in the main thread;
* memory (Linux): ``RLIMIT_DATA`` allows ``MEMORY_HEADROOM`` more than the process already uses. None of these
  files needs a tenth of it; a damaged header that makes a decoder allocate what the header claims (gigabytes from
  kilobytes) then raises ``MemoryError`` at once -- a failure here, since ``MemoryError`` is not a ``DecodeError`` --
  instead of a multi-GB allocation that only some machines survive (or the OOM killer ending the test run).
"""

from __future__ import annotations

import contextlib
import faulthandler
import gzip
import io
import math
import re
import signal
import struct
import sys
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import av
import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.filereader import data_element_generator

from datamint_pipes.decode import Decoded, ProbeResult, decode, probe
from datamint_pipes.errors import DecodeError

Locate = Callable[[str], Path]

pytestmark = pytest.mark.filterwarnings("ignore")  # damaged files warn in every library; only errors matter here

HANG_SECONDS = 10.0  # far above any legitimate call on these small files, even on a slow 2-core CI runner
MEMORY_HEADROOM = 2 << 30  # bytes a call may allocate on top of what the process holds: 2 GiB
HEAD = 4096  # half of the drawn offsets land in the first bytes, where the headers are

FUZZ = settings(
    max_examples=30,
    deadline=None,
    derandomize=True,  # the same inputs on every run: CI failures reproduce
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# ---------------------------------------------------------------------------------------------------- watchdog


class Hang(BaseException):
    """A decoder call ran longer than ``HANG_SECONDS``.

    A ``BaseException``, so that no ``except Exception`` on the way out (the registry translates every
    ``Exception`` into a ``DecodeError``) can turn a hang into a pass.
    """


@contextlib.contextmanager
def watchdog(what: str, seconds: float = HANG_SECONDS) -> Iterator[None]:
    """Raise :class:`Hang` in the main thread if the block runs past ``seconds``.

    The stacks of all threads are dumped at the same moment: a hang inside C code never returns to the interpreter,
    so the alarm cannot interrupt it, but the dump still says where it is stuck.
    """

    def alarm(signum: int, frame: Any) -> None:
        raise Hang(f"{what} still running after {seconds} s")

    faulthandler.dump_traceback_later(seconds, exit=False)
    has_alarm = hasattr(signal, "setitimer")
    previous = signal.signal(signal.SIGALRM, alarm) if has_alarm else None
    if has_alarm:
        signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        if has_alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
        faulthandler.cancel_dump_traceback_later()


def _data_segment_size() -> int | None:
    """VmData of this process (private writable memory, what ``RLIMIT_DATA`` limits), where Linux reports it."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmData:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


@contextlib.contextmanager
def memory_ceiling(headroom: int = MEMORY_HEADROOM) -> Iterator[None]:
    """Let the block allocate at most ``headroom`` bytes more than the process holds; beyond that, ``MemoryError``.

    A no-op where the OS does not report the data segment (not Linux); the limit is restored afterwards.
    """
    used = _data_segment_size() if sys.platform.startswith("linux") else None
    if used is None:
        yield
        return
    import resource  # POSIX only

    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    ceiling = used + headroom
    if soft != resource.RLIM_INFINITY:
        ceiling = min(ceiling, soft)
    if hard != resource.RLIM_INFINITY:
        ceiling = min(ceiling, hard)
    resource.setrlimit(resource.RLIMIT_DATA, (ceiling, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))


@contextlib.contextmanager
def bounded(what: str) -> Iterator[None]:
    """The block runs under :func:`watchdog` and :func:`memory_ceiling`."""
    with watchdog(what), memory_ceiling():
        yield


def assert_contract(data: bytes, filename: str) -> tuple[ProbeResult | None, Decoded | None]:
    """Probe and decode ``data``; check the property of the module docstring. None stands for a DecodeError."""
    outcomes: list[Any] = []
    for function in (probe, decode):
        with bounded(f"{function.__name__}({filename!r}) of {len(data)} bytes"):
            try:
                outcomes.append(function(data, filename=filename))
            except DecodeError as error:
                assert filename in str(error), f"the DecodeError does not name {filename}: {error}"
                outcomes.append(None)
    probed, decoded = outcomes
    if probed is not None and decoded is not None:
        array = decoded.array
        assert (array.shape, array.dtype.name) == (probed.shape, probed.dtype), f"{filename}: decode != probe"
        assert probed.frame_count == (1 if array.ndim == 3 else array.shape[1])
    return probed, decoded


# ---------------------------------------------------------------------------------------------------- mutations


@dataclass(frozen=True)
class Field:
    """A header field worth corrupting: ``size`` bytes at ``offset``.

    ``kind``: ``"<"`` / ``">"`` an unsigned integer of that byte order, ``"<f"`` / ``">f"`` a float, ``"ascii"``
    a DICOM IS/DS string. ``name`` says what it is, for the failure report.
    """

    name: str
    offset: int
    size: int
    kind: str


@dataclass(frozen=True)
class Truncate:
    length: int

    def apply(self, data: bytes) -> bytes:
        return data[: self.length]


@dataclass(frozen=True)
class FlipBits:
    offset: int
    mask: int

    def apply(self, data: bytes) -> bytes:
        if not data:
            return data
        at = min(self.offset, len(data) - 1)
        return data[:at] + bytes([data[at] ^ self.mask]) + data[at + 1 :]


@dataclass(frozen=True)
class Overwrite:
    offset: int
    payload: bytes

    def apply(self, data: bytes) -> bytes:
        at = min(self.offset, len(data))
        return data[:at] + self.payload + data[at + len(self.payload) :]


@dataclass(frozen=True)
class Insert:
    offset: int
    payload: bytes

    def apply(self, data: bytes) -> bytes:
        at = min(self.offset, len(data))
        return data[:at] + self.payload + data[at:]


@dataclass(frozen=True)
class Delete:
    offset: int
    length: int

    def apply(self, data: bytes) -> bytes:
        return data[: self.offset] + data[self.offset + self.length :]


@dataclass(frozen=True)
class SetField:
    field: Field
    value: bytes

    def apply(self, data: bytes) -> bytes:
        if self.field.offset + self.field.size > len(data):
            return data
        return data[: self.field.offset] + self.value + data[self.field.offset + self.field.size :]


Mutation = Truncate | FlipBits | Overwrite | Insert | Delete | SetField


def field_values(field: Field) -> st.SearchStrategy[bytes]:
    """Awkward values for ``field``, encoded to exactly its size."""
    size = field.size
    if field.kind == "ascii":
        texts = st.sampled_from(["0", "-1", "1A", "", "99999", "2147483648", "nan", "1e308", "3\\4"])
        return texts.map(lambda text: text.encode().ljust(size)[:size])
    if field.kind in ("<f", ">f"):
        code = field.kind[0] + ("f" if size == 4 else "d")
        floats = st.sampled_from([0.0, -1.0, math.nan, math.inf, -math.inf, 1e30, -1e30, 1e-30])
        return floats.map(lambda value: struct.pack(code, value))
    order: Literal["little", "big"] = "little" if field.kind == "<" else "big"
    top = (1 << (8 * size)) - 1
    special = st.sampled_from([0, 1, 2, 3, 7, 255, top, top - 1, top >> 1, (top >> 1) + 1, 0x10000 & top])
    numbers = st.one_of(special, st.integers(0, top))
    return numbers.map(lambda value: value.to_bytes(size, order))


def mutations(size: int, fields: Sequence[Field]) -> st.SearchStrategy[Mutation]:
    """One mutation of a ``size``-byte input whose header fields are ``fields``."""
    last = max(size - 1, 0)
    offsets = st.one_of(st.integers(0, min(last, HEAD)), st.integers(0, last))
    runs = st.builds(lambda byte, count: bytes([byte]) * count, st.sampled_from([0x00, 0xFF]), st.integers(1, 512))
    payloads = st.one_of(st.binary(min_size=1, max_size=64), runs)
    options: list[st.SearchStrategy[Any]] = [
        st.builds(Truncate, st.integers(0, last)),
        st.builds(FlipBits, offsets, st.integers(1, 255)),
        st.builds(Overwrite, offsets, payloads),
        st.builds(Insert, offsets, payloads),
        st.builds(Delete, offsets, st.integers(1, 4096)),
    ]
    if fields:
        chosen = st.sampled_from(list(fields))
        options.append(chosen.flatmap(lambda field: st.builds(SetField, st.just(field), field_values(field))))
    return st.one_of(options)


@dataclass(frozen=True)
class Layer:
    """A representation of a file to damage: ``wrap`` turns the damaged bytes back into the file."""

    name: str
    data: bytes
    fields: tuple[Field, ...]
    wrap: Callable[[bytes], bytes] = bytes


@dataclass(frozen=True)
class Case:
    """A real file, named ``filename`` in every call, and the layers it can be damaged in."""

    filename: str
    layers: tuple[Layer, ...]


# ---------------------------------------------------------------------------------------------------- header fields


def jpeg_fields(data: bytes, start: int = 0, prefix: str = "jpeg") -> list[Field]:
    """Segment lengths and frame header fields of a JPEG stream at ``start``, up to its first scan."""
    fields = []
    position = start + 2  # after SOI
    while position + 4 <= len(data) and data[position] == 0xFF:
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        fields.append(Field(f"{prefix} FF{marker:02X} length", position + 2, 2, ">"))
        if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
            fields += [
                Field(f"{prefix} SOF precision", position + 4, 1, ">"),
                Field(f"{prefix} SOF height", position + 5, 2, ">"),
                Field(f"{prefix} SOF width", position + 7, 2, ">"),
                Field(f"{prefix} SOF components", position + 9, 1, ">"),
                Field(f"{prefix} SOF sampling", position + 11, 1, ">"),
            ]
        if marker == 0xDA:
            fields.append(Field(f"{prefix} SOS components", position + 4, 1, ">"))
            break
        position += 2 + int.from_bytes(data[position + 2 : position + 4], "big")
    return fields


def j2k_fields(data: bytes, start: int, prefix: str = "j2k") -> list[Field]:
    """The SIZ marker segment of a JPEG 2000 codestream at ``start`` (SOC, then SIZ)."""
    if data[start : start + 4] != b"\xff\x4f\xff\x51":
        return []
    at = start + 4
    layout = [("Lsiz", 0, 2), ("Rsiz", 2, 2), ("Xsiz", 4, 4), ("Ysiz", 8, 4), ("XOsiz", 12, 4), ("YOsiz", 16, 4)]
    layout += [("XTsiz", 20, 4), ("YTsiz", 24, 4), ("Csiz", 36, 2), ("Ssiz", 38, 1), ("XRsiz", 39, 1)]
    return [Field(f"{prefix} {name}", at + offset, size, ">") for name, offset, size in layout]


def rle_fields(start: int) -> list[Field]:
    """The 64-byte RLE header at ``start``: segment count and the first offsets."""
    return [Field("RLE segment count", start, 4, "<")] + [
        Field(f"RLE offset {i}", start + 4 * i, 4, "<") for i in range(1, 4)
    ]


_LONG_LENGTH_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}
_VALUE_KINDS = {"US": 2, "SS": 2, "UL": 4, "SL": 4}


def dicom_element_fields(data: bytes, start: int, implicit: bool, little: bool, group: str) -> tuple[list[Field], int]:
    """Length and integer/IS/DS value fields of the elements read from ``data[start:]``; and where they end.

    Also the encapsulated Pixel Data: item lengths and the headers of the JPEG, JPEG 2000 or RLE fragments.
    """
    stream = io.BytesIO(data)
    stream.seek(start)
    stop = (lambda tag, vr, length: tag.group != 2) if group == "meta" else None
    order = "<" if little else ">"
    fields: list[Field] = []
    end = start
    with contextlib.suppress(Exception):  # read as far as pydicom can
        for element in data_element_generator(stream, implicit, little, stop_when=stop, defer_size=256):
            if not isinstance(element, RawDataElement):
                continue
            vr = element.VR
            if vr is None:
                with contextlib.suppress(KeyError):
                    vr = dictionary_VR(element.tag)
            tell = element.value_tell
            long_length = implicit or vr in _LONG_LENGTH_VRS
            name = f"{group} {element.tag} {vr}"
            fields.append(Field(f"{name} length", tell - (4 if long_length else 2), 4 if long_length else 2, order))
            if vr in _VALUE_KINDS and element.length == _VALUE_KINDS[vr]:
                fields.append(Field(f"{name} value", tell, element.length, order))
            elif vr in ("IS", "DS") and 0 < element.length <= 16:
                fields.append(Field(f"{name} value", tell, element.length, "ascii"))
            if element.tag == 0x7FE00010 and element.length == 0xFFFFFFFF:
                fields += fragment_fields(data, tell)
            end = stream.tell()
    return fields, end


def fragment_fields(data: bytes, position: int) -> list[Field]:
    """Item lengths of encapsulated Pixel Data at ``position``, and the codec headers of its fragments."""
    fields = []
    index = 0
    while data[position : position + 4] == b"\xfe\xff\x00\xe0" and index < 4:
        fields.append(Field(f"pixel item {index} length", position + 4, 4, "<"))
        length = int.from_bytes(data[position + 4 : position + 8], "little")
        fragment = position + 8
        if index > 0:  # item 0 is the basic offset table
            head = data[fragment : fragment + 4]
            if head[:3] == b"\xff\xd8\xff":
                fields += jpeg_fields(data, fragment, f"fragment {index} jpeg")
            elif head == b"\xff\x4f\xff\x51":
                fields += j2k_fields(data, fragment, f"fragment {index} j2k")
            elif length >= 64:
                fields += rle_fields(fragment)
        position = fragment + length
        index += 1
    return fields


def dicom_layers(data: bytes) -> tuple[Layer, ...]:
    """The file as stored; for a deflated dataset also the inflated dataset, re-deflated after the damage."""
    meta_fields, meta_end = dicom_element_fields(data, 132, implicit=False, little=True, group="meta")
    syntax = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).file_meta.TransferSyntaxUID
    if syntax.is_deflated:
        body = zlib.decompress(data[meta_end:], wbits=-15)
        inflated = data[:meta_end] + body
        body_fields, _ = dicom_element_fields(inflated, meta_end, implicit=False, little=True, group="dataset")

        def deflate(damaged: bytes) -> bytes:
            compressor = zlib.compressobj(wbits=-15)
            return damaged[:meta_end] + compressor.compress(damaged[meta_end:]) + compressor.flush()

        return (
            Layer("deflated", data, tuple(meta_fields)),
            Layer("inflated", inflated, tuple(meta_fields + body_fields), deflate),
        )
    body_fields, _ = dicom_element_fields(
        data, meta_end, syntax.is_implicit_VR, syntax.is_little_endian, group="dataset"
    )
    return (Layer("stored", data, tuple(meta_fields + body_fields)),)


def nifti_fields(data: bytes) -> list[Field]:
    """The geometry, type and scaling fields of a NIfTI-1 or NIfTI-2 header, in the header's byte order."""
    order = "<" if struct.unpack("<i", data[:4])[0] in (348, 540) else ">"
    if struct.unpack(f"{order}i", data[:4])[0] == 348:
        layout = [("sizeof_hdr", 0, 4, ""), ("datatype", 70, 2, ""), ("bitpix", 72, 2, ""), ("magic", 344, 4, "")]
        layout += [(f"dim[{i}]", 40 + 2 * i, 2, "") for i in range(8)]
        layout += [(f"pixdim[{i}]", 76 + 4 * i, 4, "f") for i in range(5)]
        layout += [("vox_offset", 108, 4, "f"), ("scl_slope", 112, 4, "f"), ("scl_inter", 116, 4, "f")]
        layout += [("qform_code", 252, 2, ""), ("sform_code", 254, 2, ""), ("quatern_b", 256, 4, "f")]
        layout += [(f"srow_x[{i}]", 280 + 4 * i, 4, "f") for i in range(4)]
    else:
        layout = [("sizeof_hdr", 0, 4, ""), ("magic", 4, 4, ""), ("datatype", 12, 2, ""), ("bitpix", 14, 2, "")]
        layout += [(f"dim[{i}]", 16 + 8 * i, 8, "") for i in range(8)]
        layout += [(f"pixdim[{i}]", 104 + 8 * i, 8, "f") for i in range(5)]
        layout += [("vox_offset", 168, 8, ""), ("scl_slope", 176, 8, "f"), ("scl_inter", 184, 8, "f")]
        layout += [("qform_code", 344, 4, ""), ("sform_code", 348, 4, ""), ("quatern_b", 352, 8, "f")]
        layout += [(f"srow_x[{i}]", 400 + 8 * i, 8, "f") for i in range(4)]
    return [Field(name, offset, size, order + kind) for name, offset, size, kind in layout]


def nifti_layers(data: bytes) -> tuple[Layer, ...]:
    if data[:2] != b"\x1f\x8b":
        return (Layer("stored", data, tuple(nifti_fields(data))),)
    inner = gzip.decompress(data)
    gzip_fields = (Field("gzip flags", 3, 1, "<"), Field("gzip ISIZE", len(data) - 4, 4, "<"))
    return (
        Layer("gzipped", data, gzip_fields),
        Layer("gunzipped", inner, tuple(nifti_fields(inner)), lambda damaged: gzip.compress(damaged, mtime=0)),
    )


def png_chunks(data: bytes) -> Iterator[tuple[int, bytes, int]]:
    """(offset, type, length) of each chunk that fits in ``data``."""
    position = 8
    while position + 12 <= len(data):
        length = int.from_bytes(data[position : position + 4], "big")
        yield position, data[position + 4 : position + 8], length
        position += 12 + length


def fix_png_crcs(data: bytes) -> bytes:
    """``data`` with the CRC of every complete chunk recomputed, so that the damage gets past the checksums."""
    out = bytearray(data)
    for position, _kind, length in png_chunks(data):
        end = position + 8 + length
        if end + 4 <= len(out):
            out[end : end + 4] = struct.pack(">I", zlib.crc32(out[position + 4 : end]))
    return bytes(out)


def png_layers(data: bytes) -> tuple[Layer, ...]:
    fields = []
    for position, kind, _length in png_chunks(data):
        fields.append(Field(f"{kind!r} length", position, 4, ">"))
        if kind == b"IHDR":
            layout = [("width", 8, 4), ("height", 12, 4), ("bit depth", 16, 1), ("colour type", 17, 1)]
            layout += [("compression", 18, 1), ("filter", 19, 1), ("interlace", 20, 1)]
            fields += [Field(f"IHDR {name}", position + offset, size, ">") for name, offset, size in layout]
    return (Layer("stored", data, tuple(fields)), Layer("CRCs fixed", data, tuple(fields), fix_png_crcs))


_MP4_CONTAINERS = {b"moov", b"trak", b"mdia", b"minf", b"stbl", b"edts", b"dinf", b"udta"}
_MP4_TABLES = {b"mvhd", b"tkhd", b"mdhd", b"hdlr", b"elst", b"stts", b"stss", b"ctts", b"stsc", b"stsz", b"stco"}


def mp4_fields(data: bytes, start: int = 0, end: int | None = None) -> list[Field]:
    """Box sizes, the first words of the sample tables and headers, and the avc1/avcC fields of an MP4."""
    end = len(data) if end is None else end
    fields = []
    position = start
    while position + 8 <= end:
        size = int.from_bytes(data[position : position + 4], "big")
        kind = data[position + 4 : position + 8]
        fields.append(Field(f"{kind!r} size", position, 4, ">"))
        if size < 8:
            break
        if kind in _MP4_CONTAINERS:
            fields += mp4_fields(data, position + 8, position + size)
        elif kind in _MP4_TABLES:
            words = range(position + 12, min(position + size, position + 44) - 3, 4)
            fields += [Field(f"{kind!r} word {(at - position) // 4}", at, 4, ">") for at in words]
        elif kind == b"stsd":
            fields.append(Field("stsd entry count", position + 12, 4, ">"))
            fields += mp4_fields(data, position + 16, position + size)
        elif kind == b"avc1":
            fields += [Field("avc1 width", position + 32, 2, ">"), Field("avc1 height", position + 34, 2, ">")]
            fields += mp4_fields(data, position + 86, position + size)
        elif kind == b"avcC":
            fields += [Field("avcC lengthSizeMinusOne", position + 12, 1, ">")]
            fields += [Field("avcC SPS count", position + 13, 1, ">"), Field("avcC SPS length", position + 14, 2, ">")]
        position += size
    return fields


# ---------------------------------------------------------------------------------------------------- the cases


def encode_mp4(frames: np.ndarray[Any, Any]) -> bytes:
    """H.264 (yuv420p) MP4 of (N,H,W,3) uint8 frames."""
    out = io.BytesIO()
    with av.open(out, mode="w", format="mp4") as muxer:
        stream = muxer.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for frame in frames:
            muxer.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        muxer.mux(stream.encode())
    return out.getvalue()


def png_bytes(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


DICOM_CASES = {
    "CT_small.dcm": "explicit VR little endian, rescaled",
    "MR_small_implicit.dcm": "implicit VR little endian",
    "MR_small_bigendian.dcm": "explicit VR big endian",
    "image_dfl.dcm": "deflated explicit VR little endian",
    "MR_small_RLE.dcm": "RLE lossless",
    "SC_rgb_jpeg_dcmtk.dcm": "JPEG baseline, YBR_FULL",
    "MR_small_jp2klossless.dcm": "JPEG 2000 lossless",
    "emri_small.dcm": "enhanced MR, 10 frames, functional groups",
    "examples_ybr_color.dcm": "30-frame JPEG baseline cine, YBR_FULL_422 (the libjpeg fast path)",
    "examples_palette.dcm": "PALETTE COLOR with 16-bit LUTs",
}
NIFTI_CASES = ("anatomical.nii", "functional.nii", "example_nifti2.nii.gz", "standard.nii.gz")
IMAGE_CASES = ("microaneurysms.png", "ct_slice_16bit.png", "phantom_palette.png", "retina.jpg")
VIDEO_CASES = ("cine.mp4",)
ALL_CASES = sorted(DICOM_CASES) + list(NIFTI_CASES) + list(IMAGE_CASES) + list(VIDEO_CASES)


@pytest.fixture(scope="module")
def fuzz_cases(dicom_file: Locate, nibabel_data_dir: Path, skimage_data_dir: Path) -> dict[str, Case]:
    cases = {name: Case(name, dicom_layers(dicom_file(name).read_bytes())) for name in DICOM_CASES}
    cases |= {name: Case(name, nifti_layers((nibabel_data_dir / name).read_bytes())) for name in NIFTI_CASES}

    ct = pydicom.dcmread(dicom_file("CT_small.dcm")).pixel_array
    with Image.open(skimage_data_dir / "phantom.png") as phantom:
        palette = phantom.quantize(64)
    images = {
        "microaneurysms.png": (skimage_data_dir / "microaneurysms.png").read_bytes(),
        "ct_slice_16bit.png": png_bytes(Image.fromarray((ct.astype(np.int32) + 1024).clip(0).astype(np.uint16))),
        "phantom_palette.png": png_bytes(palette),
    }
    assert Image.open(io.BytesIO(images["ct_slice_16bit.png"])).mode == "I;16"
    assert Image.open(io.BytesIO(images["phantom_palette.png"])).mode == "P"
    cases |= {name: Case(name, png_layers(data)) for name, data in images.items()}
    retina = (skimage_data_dir / "retina.jpg").read_bytes()
    cases["retina.jpg"] = Case("retina.jpg", (Layer("stored", retina, tuple(jpeg_fields(retina))),))

    # Eight frames of a real ultrasound cine, a quarter of the size in each direction.
    cine = pydicom.dcmread(dicom_file("examples_ybr_color.dcm")).pixel_array[:8, ::4, ::4]
    mp4 = encode_mp4(np.ascontiguousarray(cine))
    cases["cine.mp4"] = Case("cine.mp4", (Layer("stored", mp4, tuple(mp4_fields(mp4))),))
    return cases


def test_every_case_decodes_undamaged(fuzz_cases: dict[str, Case]) -> None:
    """The fuzzing starts from files that decode, and the header walkers found fields in each."""
    assert sorted(fuzz_cases) == sorted(ALL_CASES)
    for name, case in fuzz_cases.items():
        for layer in case.layers:
            probed, decoded = assert_contract(layer.wrap(layer.data), name)
            assert probed is not None and decoded is not None, f"{name} ({layer.name}) does not decode undamaged"
        assert any(layer.fields for layer in case.layers), name
    field_names = {field.name for case in fuzz_cases.values() for layer in case.layers for field in layer.fields}
    expected = ["fragment 1 jpeg SOF height", "fragment 1 j2k Xsiz", "RLE segment count", "(0028,0010) US value"]
    expected += ["dim[1]", "IHDR width", "b'stsz' word 3", "jpeg SOF width", "avcC SPS length"]
    for fragment in expected:
        assert any(fragment in name for name in field_names), fragment


@FUZZ
@given(draw=st.data())
@pytest.mark.parametrize("name", ALL_CASES)
def test_damaged_files_decode_or_raise_decode_error(
    name: str, draw: st.DataObject, fuzz_cases: dict[str, Case]
) -> None:
    """One to three mutations of a real file, in one of its layers: the property of the module docstring."""
    case = fuzz_cases[name]
    layer = draw.draw(st.sampled_from(case.layers), label="layer") if len(case.layers) > 1 else case.layers[0]
    damage = draw.draw(st.lists(mutations(len(layer.data), layer.fields), min_size=1, max_size=3), label="damage")
    data = layer.data
    for mutation in damage:
        data = mutation.apply(data)
    assert_contract(layer.wrap(data), name)


@FUZZ
@given(cut=st.floats(0.0, 1.0, exclude_max=True))
@pytest.mark.parametrize("name", ALL_CASES)
def test_truncated_files_decode_or_raise_decode_error(name: str, cut: float, fuzz_cases: dict[str, Case]) -> None:
    """Truncation alone, anywhere: a DecodeError, or (a cut in trailing bytes that hold no pixels) the full array."""
    data = fuzz_cases[name].layers[0].data
    truncated = data[: int(len(data) * cut)]
    _probed, decoded = assert_contract(truncated, name)
    if decoded is not None:
        np.testing.assert_array_equal(decoded.array, decode(data, filename=name).array)


# ---------------------------------------------------------------------------------------------------- wrong values
# Damage a byte-level mutation rarely produces: DICOM attributes set to valid-looking but wrong values (another
# photometric interpretation or transfer syntax, other bit depths, a frame or two more or fewer, a missing element),
# written back by pydicom so that the file itself stays well formed. Sizes stay modest: the huge ones are above.

PHOTOMETRIC_TERMS = ("MONOCHROME1", "MONOCHROME2", "RGB", "PALETTE COLOR", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "")
TRANSFER_SYNTAXES = (
    pydicom.uid.ImplicitVRLittleEndian,
    pydicom.uid.ExplicitVRLittleEndian,
    pydicom.uid.ExplicitVRBigEndian,
    pydicom.uid.RLELossless,
    pydicom.uid.JPEGBaseline8Bit,
    pydicom.uid.JPEG2000Lossless,
    pydicom.uid.JPEGLSLossless,
)
REMOVABLE = (
    "Rows", "Columns", "BitsAllocated", "BitsStored", "PhotometricInterpretation", "SamplesPerPixel",
    "PixelRepresentation", "NumberOfFrames", "RescaleSlope", "RedPaletteColorLookupTableData", "PixelData",
    "PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence",
)  # fmt: skip


@dataclass(frozen=True)
class SetAttribute:
    """Set ``keyword`` (in the file meta for the transfer syntax) to ``value``; ``None`` removes the element."""

    keyword: str
    value: Any

    def apply(self, ds: pydicom.Dataset) -> None:
        target = ds.file_meta if self.keyword == "TransferSyntaxUID" else ds
        if self.value is None:
            if self.keyword in target:
                delattr(target, self.keyword)
        else:
            setattr(target, self.keyword, self.value)


def attribute_edits(rows: int, columns: int) -> st.SearchStrategy[SetAttribute]:
    choices: dict[str, Sequence[Any]] = {
        "PhotometricInterpretation": PHOTOMETRIC_TERMS,
        "TransferSyntaxUID": TRANSFER_SYNTAXES,
        "SamplesPerPixel": (0, 1, 2, 3, 4),
        "BitsAllocated": (0, 1, 8, 12, 16, 32, 64),
        "BitsStored": (0, 1, 7, 8, 12, 16, 17, 32),
        "HighBit": (0, 7, 11, 15, 31),
        "PixelRepresentation": (0, 1, 2),
        "PlanarConfiguration": (0, 1, 2),
        "NumberOfFrames": (0, 1, 2, 3, 10, 30, -1),
        "Rows": (0, 1, rows // 2, rows - 1, rows + 1, rows * 2),
        "Columns": (0, 1, columns // 2, columns - 1, columns + 1, columns * 2),
        "RescaleSlope": ("0", "-1", "2", "1e38", "nan", "inf"),
        "RescaleIntercept": ("0", "-1e38", "nan", "1024"),
        "PixelSpacing": (["0", "0"], ["-1", "1"], ["nan", "1"], ["1"]),
        "ImageOrientationPatient": (["0"] * 6, ["1", "0", "0", "1", "0", "0"], ["nan"] * 6),
        "RedPaletteColorLookupTableDescriptor": ([0, 0, 16], [1, 0, 16], [256, 0, 8], [65535, 65535, 16], [256, 0, 3]),
    }
    values = [
        st.builds(SetAttribute, st.just(keyword), st.sampled_from(options)) for keyword, options in choices.items()
    ]
    removals = st.builds(SetAttribute, st.sampled_from(REMOVABLE), st.none())
    return st.one_of(*values, removals)


@FUZZ
@given(draw=st.data())
@pytest.mark.parametrize("name", sorted(DICOM_CASES))
def test_dicom_with_wrong_header_values_decodes_or_raises_decode_error(
    name: str, draw: st.DataObject, dicom_file: Locate
) -> None:
    ds = pydicom.dcmread(dicom_file(name))
    edits = draw.draw(st.lists(attribute_edits(int(ds.Rows), int(ds.Columns)), min_size=1, max_size=3), label="edits")
    out = io.BytesIO()
    try:
        for edit in edits:
            edit.apply(ds)
        ds.save_as(out)
    except Exception:  # pydicom refuses to write this combination: nothing to decode
        assume(False)
    assert_contract(out.getvalue(), name)


# ---------------------------------------------------------------------------------------------------- broken files


BROKEN_DICOM = {
    # name: why it cannot decode
    "MR_truncated.dcm": "pixel data shorter than Rows x Columns",
    "badVR.dcm": "NumberOfFrames '1A'",
    "no_meta.dcm": "no preamble, no file meta, no image",
    "rtplan_truncated.dcm": "truncated RT Plan: no image",
    "emri_small_jpeg_2k_lossless_too_short.dcm": "encapsulated pixel data cut before its sequence delimiter",
    "JPEG2000-embedded-sequence-delimiter.dcm": "JPEG 2000 codestream broken by a sequence delimiter",
    "ExplVR_BigEndNoMeta.dcm": "no file meta; an RT Ion Plan, no image",
    "ExplVR_LitEndNoMeta.dcm": "no file meta; an RT Ion Plan, no image",
    "meta_missing_tsyntax.dcm": "file meta without a transfer syntax; 2 bytes of Pixel Data, no Rows/Columns",
    "UN_sequence.dcm": "no image",
    "nested_priv_SQ.dcm": "2 bytes of Pixel Data, no Rows/Columns",
    "waveform_ecg.dcm": "a waveform, no image",
}
BROKEN_NIFTI = {
    "nifti1.hdr": "the header of a .hdr/.img pair",
    "nifti2.hdr": "the header of a NIfTI-2 .hdr/.img pair",
    "row_major.dconn.nii": "CIFTI-2: dimensions beyond the 4th",
}


@pytest.mark.parametrize("name", sorted(BROKEN_DICOM))
def test_broken_dicom_files_raise_decode_error_naming_the_file(name: str, dicom_file: Locate) -> None:
    data = dicom_file(name).read_bytes()
    for function in (probe, decode):
        try:
            with bounded(f"{function.__name__}({name!r})"):
                function(data, filename=name, resource_id="res-7")
        except DecodeError as error:
            assert name in str(error) and "res-7" in str(error)
            assert error.filename == name and error.resource_id == "res-7"
        else:
            # probe reads headers only: it may succeed where only the pixel data is damaged.
            assert function is probe, f"{name} ({BROKEN_DICOM[name]}) decoded"


@pytest.mark.parametrize("name", sorted(BROKEN_NIFTI))
def test_unsupported_nifti_files_raise_decode_error_naming_the_file(name: str, nibabel_data_dir: Path) -> None:
    data = (nibabel_data_dir / name).read_bytes()
    for function in (probe, decode):
        with pytest.raises(DecodeError) as caught, bounded(f"{function.__name__}({name!r})"):
            function(data, filename=name)
        assert name in str(caught.value)


@pytest.mark.parametrize(("name", "cause"), [("MR_truncated.dcm", "less than expected"), ("badVR.dcm", "'1A'")])
def test_broken_dicom_error_names_the_cause(name: str, cause: str, dicom_file: Locate) -> None:
    with pytest.raises(DecodeError, match=cause), bounded(name):
        decode(dicom_file(name).read_bytes(), filename=name)


def test_dicom_cut_inside_encapsulated_pixel_data_is_reported_as_truncated(dicom_file: Locate) -> None:
    name = "emri_small_jpeg_2k_lossless_too_short.dcm"
    data = dicom_file(name).read_bytes()
    assert probe(data, filename=name).frame_count == 10
    with pytest.raises(DecodeError) as caught, bounded(name):
        decode(data, filename=name)
    assert "truncated" in str(caught.value).lower() or "end of file" in str(caught.value).lower(), caught.value


def test_corrupt_jpeg2000_is_not_reported_as_a_missing_codec(dicom_file: Locate) -> None:
    decode(dicom_file("MR_small_jp2klossless.dcm"))  # the JPEG 2000 codec is installed
    name = "JPEG2000-embedded-sequence-delimiter.dcm"
    with pytest.raises(DecodeError) as caught, bounded(name):
        decode(dicom_file(name).read_bytes(), filename=name)
    assert "no installed codec" not in str(caught.value), caught.value


def test_odd_but_valid_dicom_decodes_as_pydicom_reads_it(dicom_file: Locate) -> None:
    """Files that look broken but are not: a JPEG 2000 stream whose signedness disagrees with the dataset
    (pydicom follows the dataset), and a file without preamble, meta or transfer syntax (implicit VR LE)."""
    path = dicom_file("J2K_pixelrep_mismatch.dcm")
    with bounded("J2K_pixelrep_mismatch.dcm"):
        decoded = decode(path.read_bytes(), filename=path.name).array
    expected = pydicom.dcmread(path).pixel_array
    assert decoded.dtype == np.int16 and expected.dtype == np.int16
    np.testing.assert_array_equal(decoded[0], expected)

    path = dicom_file("OT-PAL-8-face.dcm")
    data = path.read_bytes()
    assert data[128:132] != b"DICM"
    ds = pydicom.dcmread(path, force=True)
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian  # what the bytes are: checked by hand
    expected = pydicom.pixels.apply_color_lut(ds.pixel_array, ds)
    with bounded("OT-PAL-8-face.dcm"):
        decoded = decode(data, filename=path.name).array
    np.testing.assert_array_equal(decoded, np.moveaxis(expected, -1, 0))


# ---------------------------------------------------------------------------------------------------- regressions
# Found by the fuzzing above (or by following its findings up): a small file whose header claims a huge array.
# Each runs under memory_ceiling, so that today's failure is a prompt MemoryError on every machine.


def _dicom_with(path: Path, **attributes: int) -> bytes:
    ds = pydicom.dcmread(path)
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    out = io.BytesIO()
    ds.save_as(out)
    return out.getvalue()


@pytest.mark.parametrize(
    ("name", "attributes"),
    [
        # Native pixel data: pydicom compares the declared size with the element's length first.
        ("CT_small.dcm", {"Rows": 65535, "Columns": 65535}),
        ("emri_small.dcm", {"NumberOfFrames": 2**31 - 1}),
        # Encapsulated: pydicom's RLE / JPEG 2000 decoders and the libjpeg fast path (_jpeg.py) allocate first.
        pytest.param("MR_small_RLE.dcm", {"Rows": 65535, "Columns": 65535}),
        pytest.param("SC_rgb_rle_2frame.dcm", {"NumberOfFrames": 100000}),
        pytest.param("MR_small_jp2klossless.dcm", {"Rows": 65535, "Columns": 65535}),
        pytest.param("SC_rgb_jpeg_dcmtk.dcm", {"Rows": 65535, "Columns": 65535}),
        pytest.param("examples_ybr_color.dcm", {"NumberOfFrames": 100000}),
    ],
    ids=lambda value: "-".join(f"{k}={v}" for k, v in value.items()) if isinstance(value, dict) else value,
)
def test_dicom_declaring_more_pixels_than_it_holds_raises_decode_error(
    name: str, attributes: dict[str, int], dicom_file: Locate
) -> None:
    """Rows x Columns x NumberOfFrames far beyond the Pixel Data: a DecodeError, not gigabytes allocated."""
    data = _dicom_with(dicom_file(name), **attributes)
    with bounded(name):
        probed = probe(data, filename=name)  # headers only: the shape the header declares
        assert probed.shape[-2:] == (
            attributes.get("Rows", probed.shape[-2]),
            attributes.get("Columns", probed.shape[-1]),
        )
        with pytest.raises(DecodeError, match=name):
            decode(data, filename=name)


def test_dicom_probe_of_a_huge_frame_count_allocates_nothing(dicom_file: Locate) -> None:
    """A rescaled single-frame CT whose NumberOfFrames says 2^31-1: probe reads headers, it must not allocate per
    declared frame; decode finds the Pixel Data short."""
    data = _dicom_with(dicom_file("CT_small.dcm"), NumberOfFrames=2**31 - 1)
    with bounded("CT_small.dcm"):
        assert probe(data, filename="CT_small.dcm").frame_count == 2**31 - 1
        with pytest.raises(DecodeError, match=re.escape("CT_small.dcm")):
            decode(data, filename="CT_small.dcm")


def test_video_header_frame_count_beyond_the_stream_raises_decode_error() -> None:
    """Found by fuzzing: the MP4 time-to-sample table claims 2^31 frames for a 4-frame stream."""
    frames = np.broadcast_to(np.arange(16, dtype=np.uint8)[:, None, None] * 16, (4, 16, 16, 3)).copy()
    data = bytearray(encode_mp4(frames))
    stts = data.index(b"stts")
    assert int.from_bytes(data[stts + 8 : stts + 12], "big") == 1  # one (sample_count, sample_delta) entry
    data[stts + 12 : stts + 16] = (2**31).to_bytes(4, "big")
    with bounded("clip.mp4"), pytest.raises(DecodeError, match=re.escape("clip.mp4")):
        decode(bytes(data), filename="clip.mp4")


def _nifti_with_huge_dims(nibabel_data_dir: Path, name: str) -> bytes:
    """``name`` with header dimensions raised far beyond what the file holds."""
    raw = (nibabel_data_dir / name).read_bytes()
    gzipped = raw[:2] == b"\x1f\x8b"
    header = bytearray(gzip.decompress(raw) if gzipped else raw)
    if struct.unpack(">i", header[:4])[0] == 348:  # anatomical.nii: a big-endian NIfTI-1 header, int16 dims
        header[42:48] = struct.pack(">3h", 30000, 30000, 30000)
    else:  # example_nifti2.nii.gz: a little-endian NIfTI-2 header, int64 dims; the fuzzer's own find
        header[48:56] = struct.pack("<q", 846636)  # dim[4]: 13 GB of int16
    return gzip.compress(bytes(header), mtime=0) if gzipped else bytes(header)


@pytest.mark.parametrize("name", ["anatomical.nii", "example_nifti2.nii.gz"])
def test_nifti_declaring_more_voxels_than_the_file_holds_raises_decode_error(name: str, nibabel_data_dir: Path) -> None:
    data = _nifti_with_huge_dims(nibabel_data_dir, name)
    with bounded(name):
        assert probe(data, filename=name).shape[0] >= 1  # headers only: the shape it declares
        with pytest.raises(DecodeError, match=name):
            decode(data, filename=name)


def test_memory_ceiling_turns_a_huge_allocation_into_memory_error() -> None:
    """The guard itself (Linux): 8 GiB at once is refused, a few MB are not, and the limit is restored."""
    if not sys.platform.startswith("linux") or _data_segment_size() is None:
        pytest.skip("the data segment size is not reported on this platform")
    import resource

    before = resource.getrlimit(resource.RLIMIT_DATA)
    with memory_ceiling():
        assert np.ones(4 << 20, dtype=np.uint8).sum() == 4 << 20
        with pytest.raises(MemoryError):
            np.ones(8 << 30, dtype=np.uint8)
    assert resource.getrlimit(resource.RLIMIT_DATA) == before


def test_watchdog_interrupts_a_hang() -> None:
    """The watchdog itself: a loop that never ends is interrupted by Hang, which no ``except Exception`` stops."""
    if not hasattr(signal, "setitimer"):
        pytest.skip("no SIGALRM on this platform")
    with pytest.raises(Hang), watchdog("a busy loop", seconds=0.05):
        while True:
            with contextlib.suppress(Exception):  # what a library's blanket handler would do
                sum(range(1000))
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
