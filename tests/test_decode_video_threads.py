"""Video decoding's thread settings change no value: the one-thread swscale conversion of small frames equals PyAV's
``frame.to_ndarray(format="rgb24")`` (swscale's automatic threads), frame by frame, for several codecs and sizes."""

from __future__ import annotations

import io
from typing import Any

import av
import numpy as np
import pytest

from datamint_pipes.decode import decode, decode_frames, video
from datamint_pipes.errors import DecodeError

Array = np.ndarray[Any, Any]


def frames(count: int, height: int, width: int, seed: int) -> Array:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    moving = [
        np.stack([(xx * 3 + 5 * i) % 256, (yy * 2 + 3 * i) % 256, (xx + yy + 7 * i) % 256], -1) for i in range(count)
    ]
    return np.clip(np.asarray(moving) + rng.integers(-12, 12, (count, height, width, 3)), 0, 255).astype(np.uint8)


def encode(images: Array, codec: str, pix_fmt: str = "yuv420p", container: str = "mp4") -> bytes:
    out = io.BytesIO()
    with av.open(out, mode="w", format=container) as muxer:
        stream = muxer.add_stream(codec, rate=30)
        stream.width, stream.height = images.shape[2], images.shape[1]
        stream.pix_fmt = pix_fmt
        for image in images:
            muxer.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        muxer.mux(stream.encode())
    return out.getvalue()


def pyav_rgb24(data: bytes) -> Array:
    """The raw PyAV loop: (3,N,H,W) from ``frame.to_ndarray(format="rgb24")``, frame threads on."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]).transpose(3, 0, 1, 2)


CASES = {
    "h264 256x256 (the W3 benchmark's)": (frames(40, 256, 256, seed=0), "libx264", "yuv420p", "mp4"),
    "h264 70x94 4:2:0 (not macroblock multiples)": (frames(20, 70, 94, seed=1), "libx264", "yuv420p", "mp4"),
    "h264 4:4:4": (frames(20, 64, 80, seed=2), "libx264", "yuv444p", "matroska"),
    "mpeg4 avi": (frames(25, 120, 160, seed=3), "mpeg4", "yuv420p", "avi"),
}


@pytest.fixture(scope="module")
def encoded() -> dict[str, bytes]:
    return {
        name: encode(images, codec, pix_fmt, container) for name, (images, codec, pix_fmt, container) in CASES.items()
    }


@pytest.mark.parametrize("name", sorted(CASES))
def test_decode_equals_pyav_rgb24_frame_by_frame(name: str, encoded: dict[str, bytes]) -> None:
    data = encoded[name]
    array = decode(data).array
    expected = pyav_rgb24(data)
    assert array.dtype == np.uint8 and array.shape == expected.shape and array.flags.c_contiguous
    np.testing.assert_array_equal(array, expected)
    np.testing.assert_array_equal(decode_frames(data, 3, 11), expected[:, 3:11])


@pytest.mark.parametrize("name", sorted(CASES))
def test_swscale_thread_counts_give_the_same_frames(
    name: str, encoded: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Frames at or above the threshold keep swscale's automatic threads; both settings give the same values."""
    one_thread = decode(encoded[name]).array
    monkeypatch.setattr(video, "_SWS_THREADS_FROM_PIXELS", 1)
    assert video._RGBConverter(16, 16).threads == 0
    np.testing.assert_array_equal(decode(encoded[name]).array, one_thread)


def test_converter_writes_into_the_given_planes() -> None:
    data = encode(frames(3, 32, 48, seed=4), "libx264")
    converter = video._RGBConverter(48, 32)
    assert converter.threads == 1
    out = np.zeros((3, 32, 48), dtype=np.uint8)
    with av.open(io.BytesIO(data)) as container:
        frame = next(iter(container.decode(video=0)))
        assert converter(frame, out) is out
        np.testing.assert_array_equal(out, frame.to_ndarray(format="rgb24").transpose(2, 0, 1))


def test_concurrent_decodes_share_the_cpus_and_give_the_same_frames(encoded: dict[str, bytes]) -> None:
    """Decodes running at once in threads (a pipeline's thread workers) take fewer frame threads each; they give the
    same frames as one decode alone, and the count of decodes in flight goes back to zero, also after errors."""
    import threading

    data = encoded["h264 256x256 (the W3 benchmark's)"]
    alone = decode(data, filename="v.mp4").array
    results: list[Array] = []
    barrier = threading.Barrier(3)

    def work() -> None:
        barrier.wait()
        results.append(decode(data, filename="v.mp4").array)
        results.append(decode_frames(data, 5, 17, filename="v.mp4"))

    threads = [threading.Thread(target=work) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 6
    for result in results:
        expected = alone if result.shape == alone.shape else alone[:, 5:17]
        np.testing.assert_array_equal(result, expected)
    assert video._active_decodes == 0
    with pytest.raises(DecodeError):
        decode(data[: len(data) // 2], filename="v.mp4")
    assert video._active_decodes == 0
