"""Videos (MP4, MOV, AVI, MKV, WebM) through PyAV, as (3,N,H,W) uint8 RGB.

One sequential decode of the first video stream per call; frames are converted to RGB (``rgb24``) at the
stream's coded width and height. Rotation metadata is not applied. The frame count comes from the container
header; when the header has none (``frames == 0``, common for MKV/WebM), ``probe`` counts the stream's packets
without decoding them.

Truncated or damaged files raise :class:`~datamint_pipes.errors.DecodeError` rather than give a silently short
video: a file shorter than its RIFF (AVI) or Matroska Segment header declares; a decode that yields another number
of frames than the header promises; or, without a count, frames ending well before the container's duration.
"""

from __future__ import annotations

from typing import Any, BinaryIO

import av
import numpy as np

from datamint_pipes.decode._base import Decoded, ProbeResult
from datamint_pipes.errors import DecodeError

__all__ = ["VideoDecoder"]

# ISO base media brands that are still images, not videos (HEIF/AVIF share MP4's container).
_IMAGE_BRANDS = (b"heic", b"heix", b"heim", b"heis", b"mif1", b"msf1", b"avif", b"avis")


class VideoDecoder:
    """Any container PyAV opens, with at least one video stream."""

    name = "video"
    mimetypes = (
        "video/mp4",
        "video/quicktime",
        "video/x-msvideo",
        "video/avi",
        "video/x-matroska",
        "video/webm",
    )
    suffixes = (".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm")

    def sniff(self, head: bytes) -> bool:
        if head[4:8] == b"ftyp":
            return head[8:12] not in _IMAGE_BRANDS
        if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
            return True
        return head[:4] == b"\x1a\x45\xdf\xa3"  # EBML: Matroska / WebM

    def probe(self, stream: BinaryIO) -> ProbeResult:
        _check_length(stream)
        with av.open(stream, mode="r") as container:
            video = _video_stream(container)
            width, height = video.codec_context.width, video.codec_context.height
            frames = video.frames or sum(1 for packet in container.demux(video) if packet.size)
        _check_size(width, height, frames)
        return ProbeResult(
            kind="video",
            format=self.name,
            shape=(3, frames, height, width),
            dtype="uint8",
            frame_count=frames,
            stored_shape=(frames, height, width),
            spacing=None,
        )

    def decode(self, stream: BinaryIO) -> Decoded:
        """Decode every frame of the first video stream to (3,N,H,W) uint8 RGB."""
        _check_length(stream)
        with av.open(stream, mode="r") as container:
            video = _video_stream(container)
            video.thread_type = "AUTO"
            width, height = video.codec_context.width, video.codec_context.height
            expected = video.frames
            _check_size(width, height, max(expected, 1))
            frames: list[np.ndarray[Any, Any]] = []
            out = np.empty((3, expected, height, width), dtype=np.uint8) if expected else None
            count = 0
            times: list[float] = []
            for frame in container.decode(video):
                rgb = frame.to_ndarray(format="rgb24", width=width, height=height)
                if out is not None and count < expected:
                    out[:, count] = rgb.transpose(2, 0, 1)
                else:
                    frames.append(rgb.transpose(2, 0, 1))
                if frame.time is not None:
                    times.append(float(frame.time))
                count += 1
            if out is None:
                _check_duration(container, video, times)
        if out is None:
            if not frames:
                raise DecodeError("the video stream has no decodable frame")
            out = np.ascontiguousarray(np.stack(frames, axis=1))
        elif count != expected:
            raise DecodeError(f"decoded {count} video frames, the container header says {expected} (truncated?)")
        return Decoded(array=out, metainfo=None, spacing=None, affine=None)


def _video_stream(container: Any) -> Any:
    if not container.streams.video:
        raise DecodeError("the file has no video stream")
    return container.streams.video[0]


def _check_size(width: int, height: int, frames: int) -> None:
    if min(width, height, frames) < 1:
        raise DecodeError(f"video of {frames} frame(s) of {width}x{height} is empty")


def _check_duration(container: Any, video: Any, times: list[float]) -> None:
    """Without a frame count in the header, a truncated file shows as frames ending well before the duration."""
    rate = float(video.average_rate or video.guessed_rate or 0)
    if not container.duration or rate <= 0 or not times:
        return
    duration = container.duration / av.time_base
    covered = max(times) - min(times) + 1 / rate
    if duration - covered > max(2 / rate, 0.02 * duration):
        raise DecodeError(f"decoded frames cover {covered:.3g} s of a {duration:.3g} s video (truncated?)")


def _check_length(stream: BinaryIO) -> None:
    """Raise when the container's top-level header declares more bytes than the file has (a truncated file)."""
    head = stream.read(64)
    length = stream.seek(0, 2)
    stream.seek(0)
    declared = _declared_length(head)
    if declared is not None and declared > length:
        raise DecodeError(f"the video file is truncated: its header declares {declared} bytes, it has {length}")


def _declared_length(head: bytes) -> int | None:
    """Total file length implied by a RIFF header or a Matroska/WebM Segment of known size; else None."""
    if head[:4] == b"RIFF" and len(head) >= 8:
        return 8 + int.from_bytes(head[4:8], "little")
    if head[:4] != b"\x1a\x45\xdf\xa3":
        return None
    header_size, position = _ebml_size(head, 4)
    if header_size is None:
        return None
    position += header_size
    if head[position : position + 4] != b"\x18\x53\x80\x67":  # Segment
        return None
    segment_size, position = _ebml_size(head, position + 4)
    return None if segment_size is None else position + segment_size


def _ebml_size(data: bytes, position: int) -> tuple[int | None, int]:
    """An EBML variable-length size at ``position``: (value or None when unknown/unreadable, position after it)."""
    if position >= len(data):
        return None, position
    first = data[position]
    length = 1
    while length <= 8 and not first & (0x80 >> (length - 1)):
        length += 1
    if length > 8 or position + length > len(data):
        return None, position
    value = first & (0xFF >> length)
    for byte in data[position + 1 : position + length]:
        value = value << 8 | byte
    unknown = value == (1 << (7 * length)) - 1
    return (None if unknown else value), position + length
