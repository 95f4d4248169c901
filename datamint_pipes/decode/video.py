"""Videos (MP4, MOV, AVI, MKV, WebM) through PyAV, as (3,N,H,W) uint8 RGB.

One sequential decode of the first video stream per call (frame threads on); frames are converted to RGB
(``rgb24``, the values of PyAV's ``frame.to_ndarray(format="rgb24")``) at the stream's coded width and height through
one reused swscale context, straight into the planes of the preallocated (3,N,H,W) array. Frames under
``_SWS_THREADS_FROM_PIXELS`` are converted in one swscale thread, whose values are the same: swscale's slice threads
cost more than they save on small frames. Rotation metadata is not applied. :func:`decode_frames` reads frames
``[start, stop)`` alone: it seeks to the keyframe before ``start``.

The frame count comes from the container header; when the header has none (``frames == 0``, common for MKV/WebM),
``probe`` counts the stream's packets without decoding them. ``decode`` demuxes the stream's packets before decoding
them and allocates the output only for a header count that the packets bear out.

Truncated or damaged files raise :class:`~datamint_pipes.errors.DecodeError` rather than give a silently short
video: a file shorter than its RIFF (AVI) or Matroska Segment header declares; a header frame count above the
stream's packets, or a decode that yields another number of frames than the header promises; or, without a count,
frames ending well before the container's duration.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

import av
import cv2
import numpy as np
from av.video.reformatter import VideoReformatter

from datamint_pipes import _buffers
from datamint_pipes.decode._base import Decoded, ProbeResult, usable_cpus
from datamint_pipes.decode._jpeg import split_channels
from datamint_pipes.decode._registry import Source, opened, source_name, translated
from datamint_pipes.errors import DecodeError

__all__ = ["VideoDecoder", "decode_frames"]

# ISO base media brands that are still images, not videos (HEIF/AVIF share MP4's container).
_IMAGE_BRANDS = (b"heic", b"heix", b"heim", b"heis", b"mif1", b"msf1", b"avif", b"avis")
_SWS_THREADS_FROM_PIXELS = 1 << 20  # smaller frames: one swscale thread (0: swscale picks, one per CPU)


_active_decodes = 0
_recent_peak = 1  # most decodes seen at once lately: the first decode of a burst should not take every CPU
_peak_seen_at = 0.0
_PEAK_MEMORY_SECONDS = 2.0
_active_lock = threading.Lock()


@contextlib.contextmanager
def _sharing_cpus(video: Any) -> Iterator[None]:
    """Frame threads for one decode: FFmpeg's own count (one per CPU) while it is this process's only video decode;
    with k decodes at once (a pipeline's thread workers), each started one gets ``cpus // k`` (at least 1). k is the
    most seen at once in the last two seconds, so the first decode of the next video also leaves room for the
    others (its thread count is fixed for the whole decode).

    Two 256x256 h264 decodes on two threads each oversubscribe two cores: 3,100 frames/s, against 3,800 with one
    thread each. Frame threading gives the same frames whatever the count."""
    global _active_decodes, _recent_peak, _peak_seen_at
    with _active_lock:
        _active_decodes += 1
        now = time.monotonic()
        if now - _peak_seen_at > _PEAK_MEMORY_SECONDS:
            _recent_peak = 1
        if _active_decodes >= _recent_peak:
            _recent_peak, _peak_seen_at = _active_decodes, now
        sharing = _recent_peak
    try:
        video.thread_type = "AUTO"
        if sharing > 1:
            video.codec_context.thread_count = max(1, usable_cpus() // sharing)
        yield
    finally:
        with _active_lock:
            _active_decodes -= 1
            if _active_decodes:  # another decode ran alongside this one until now
                _peak_seen_at = time.monotonic()


def _reset_after_fork() -> None:
    global _active_decodes, _active_lock, _recent_peak
    _active_decodes, _recent_peak, _active_lock = 0, 1, threading.Lock()  # the parent's decodes are not here


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


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
        with av.open(stream, mode="r") as container, contextlib.ExitStack() as sharing:
            video = _video_stream(container)
            sharing.enter_context(_sharing_cpus(video))
            width, height = video.codec_context.width, video.codec_context.height
            expected = video.frames
            _check_size(width, height, max(expected, 1))
            # Demuxed whole before decoding (cheap next to decoding): the output is allocated from the header's frame
            # count only once the stream holds that many packets, so a damaged count cannot make it huge.
            packets = list(container.demux(video))
            if expected > (held := sum(1 for packet in packets if packet.size)):
                raise DecodeError(f"the container header says {expected} video frames, the stream has {held} packets")
            frames: list[np.ndarray[Any, Any]] = []
            out = _buffers.empty((3, expected, height, width)) if expected else None
            count = 0
            times: list[float] = []
            to_rgb = _RGBConverter(width, height)
            for packet in packets:  # the last one, empty, flushes the decoder
                for frame in video.decode(packet):
                    if out is not None and count < expected:
                        to_rgb(frame, out[:, count])
                    else:
                        frames.append(to_rgb(frame, np.empty((3, height, width), dtype=np.uint8)))
                    if out is None and frame.time is not None:  # only needed to check a count-less stream
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


class _RGBConverter:
    """Frames to RGB through one reused swscale context (a fresh one per frame costs more than decoding)."""

    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.threads = 1 if width * height < _SWS_THREADS_FROM_PIXELS else 0
        self.reformatter = VideoReformatter()

    def __call__(self, frame: Any, out: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        """Write ``frame`` as RGB into ``out``, a (3,H,W) uint8 array with contiguous planes; return ``out``."""
        rgb = self.reformatter.reformat(
            frame, width=self.width, height=self.height, format="rgb24", threads=self.threads
        ).to_ndarray()
        planes = [out[0], out[1], out[2]]
        if rgb.flags.c_contiguous:
            # OpenCV writes into the given planes and returns them (GIL released); a new array means it did not.
            written = cv2.split(rgb, planes)
            if all(plane is given for plane, given in zip(written, planes, strict=True)):
                return out
        split_channels(rgb, planes)
        return out


def decode_frames(
    source: Source, start: int, stop: int, *, filename: str | None = None, resource_id: str | None = None
) -> np.ndarray[Any, np.dtype[np.uint8]]:
    """Frames ``[start, stop)`` of a video's first stream as (3, stop-start, H, W) uint8 RGB.

    Equal to ``decode(source).array[:, start:stop]``. The stream's packets are demuxed once, without decoding, to list
    the frames' timestamps in presentation order and the keyframes; the read seeks to the last keyframe at or before
    frame ``start``, decodes forward and converts only the wanted frames, so it decodes about one GOP more than it
    returns, wherever the range lies. Streams whose packets lack timestamps (or disagree with the header's frame
    count) are decoded from their first frame instead. ``source`` and the keywords are as for :func:`decode`.
    Raises :class:`DecodeError`, also for a range outside the video's frames.
    """
    name = filename if filename is not None else source_name(source)
    with translated("decode", resource_id, name) as attempt, opened(source) as stream:
        attempt.format = "video"
        return _read_range(stream, start, stop)[0]


def _read_range(stream: BinaryIO, start: int, stop: int) -> tuple[np.ndarray[Any, np.dtype[np.uint8]], int]:
    """(frames ``[start, stop)`` as (3,n,H,W) uint8, how many frames the decoder produced to get them)."""
    if not 0 <= start < stop:
        raise DecodeError(f"frame range {start=}, {stop=} must satisfy 0 <= start < stop")
    _check_length(stream)
    with av.open(stream, mode="r") as container:
        video = _video_stream(container)
        width, height = video.codec_context.width, video.codec_context.height
        timestamps, keyframes = _packet_index(container, video)
        count = video.frames or (len(timestamps) if timestamps is not None else 0)
        if count and stop > count:
            raise DecodeError(f"frames [{start}, {stop}) are outside the video's {count} frames")
        _check_size(width, height, max(count, 1))
        out = _buffers.empty((3, stop - start, height, width))
        if timestamps is not None and len(timestamps) == count:
            keyframe = max((pts for pts in keyframes if pts <= timestamps[start]), default=timestamps[0])
            container.seek(keyframe, stream=video, backward=True, any_frame=False)
            position = {pts: index for index, pts in enumerate(timestamps)}
            decoded, complete = _decode_into(out, container, video, start, lambda frame, _: position.get(frame.pts))
            if complete:
                return out, decoded
    stream.seek(0)  # no usable index, or the seek did not land before frame `start`: decode from the first frame
    with av.open(stream, mode="r") as container:
        video = _video_stream(container)
        decoded, complete = _decode_into(out, container, video, start, lambda _, decoded: decoded)
    if not complete:
        raise DecodeError(f"the video ended before frame {stop - 1} (it has {decoded} decodable frames)")
    return out, decoded


def _packet_index(container: Any, video: Any) -> tuple[list[int] | None, list[int]]:
    """Sorted presentation timestamps of the stream's frames (``None`` when some packet has none, is discarded, or
    shares one), and the keyframes' timestamps, from one pass of demuxing without decoding."""
    timestamps: list[int] = []
    keyframes: list[int] = []
    for packet in container.demux(video):
        if not packet.size:
            continue  # the demuxer's final flush packet
        if packet.pts is None or packet.is_discard:
            return None, []
        timestamps.append(packet.pts)
        if packet.is_keyframe:
            keyframes.append(packet.pts)
    timestamps.sort()
    return (timestamps if len(set(timestamps)) == len(timestamps) else None), keyframes


def _decode_into(
    out: np.ndarray[Any, Any], container: Any, video: Any, start: int, index_of: Callable[[Any, int], int | None]
) -> tuple[int, bool]:
    """Decode from the container's position, writing frames ``start + i`` (``index_of(frame, decoded so far)``) into
    ``out[:, i]``; stop once all are written. Returns (frames decoded, whether all were written)."""
    with _sharing_cpus(video):
        to_rgb = _RGBConverter(video.codec_context.width, video.codec_context.height)
        written = np.zeros(out.shape[1], dtype=bool)
        missing = out.shape[1]
        decoded = 0
        for frame in container.decode(video):
            index = index_of(frame, decoded)
            decoded += 1
            if index is None or not 0 <= index - start < out.shape[1] or written[index - start]:
                continue
            to_rgb(frame, out[:, index - start])
            written[index - start] = True
            missing -= 1
            if not missing:
                break
        return decoded, not missing


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
