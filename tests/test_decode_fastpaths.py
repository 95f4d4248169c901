"""Tests of the decoders' fast paths: JPEG-baseline DICOM frames straight through libjpeg-turbo, video frame-range
reads, and the decode benchmark's smoke run.

Every fast result is cross-checked against the slow path it replaces: pydicom's ``pixel_array(as_rgb=True)``
(Pillow), and the full sequential video decode sliced to the range.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.pixels import pixel_array
from pydicom.uid import JPEGBaseline8Bit, JPEGExtended12Bit, SecondaryCaptureImageStorage, generate_uid

from datamint_pipes.decode import _jpeg, decode, decode_frames, video
from datamint_pipes.errors import DecodeError

Array = np.ndarray[Any, Any]
REPOSITORY = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.filterwarnings(
    "ignore:The pixel data is .* excess padding:UserWarning",
    "ignore:Invalid value for VR IS:UserWarning",
    "ignore:.*(Photometric Interpretation|Basic Offset Table).*:UserWarning",
    "ignore:Expected explicit VR:UserWarning",
)


# ---------------------------------------------------------------------------------------------------- JPEG DICOM


def fast_path(source: Path | bytes) -> tuple[Array | None, Dataset]:
    """What the fast path returns for a file (``None``: it leaves the file to pydicom), and the dataset."""
    ds = pydicom.dcmread(io.BytesIO(source) if isinstance(source, bytes) else source)
    frames = int(ds.get("NumberOfFrames") or 1)
    return _jpeg.decode_jpeg_frames(ds, frames, int(ds.Rows), int(ds.Columns)), ds


def pillow_frames(ds: Dataset) -> Array:
    """Each frame decoded by Pillow on its own, libjpeg converting YCbCr to RGB: (N,H,W[,3])."""
    frames = generate_frames(ds.PixelData, number_of_frames=int(ds.get("NumberOfFrames") or 1))
    return np.stack([np.asarray(Image.open(io.BytesIO(frame))) for frame in frames])


# name: whether the fast path takes it. Those it leaves: no APP14 and component ids 0,1,2 read as YCbCr by libjpeg
# but as RGB by pydicom; a malformed APP14; a Basic Offset Table pydicom.encaps refuses; lossless; 12-bit.
REAL_JPEG_FILES = {
    "examples_ybr_color.dcm": True,
    "color3d_jpeg_baseline.dcm": True,
    "SC_rgb_jpeg_dcmtk.dcm": True,
    "SC_rgb_jpeg_lossy_gdcm.dcm": True,
    "SC_rgb_small_odd_jpeg.dcm": True,
    "SC_jpeg_no_color_transform_2.dcm": True,
    "SC_rgb_jpeg_app14_dcmd.dcm": True,
    "SC_jpeg_no_color_transform.dcm": False,
    "SC_rgb_jpeg.dcm": False,
    "SC_rgb_jpeg_dcmd.dcm": False,
    "SC_rgb_jpeg_gdcm.dcm": False,
    "JPEG-lossy.dcm": False,
    "JPGExtended.dcm": False,
}


@pytest.mark.parametrize("name", sorted(REAL_JPEG_FILES))
def test_real_jpeg_files_equal_pydicom(name: str, dicom_file: Any) -> None:
    """Exactly pydicom's values on every real file (at most 8 frames checked through pydicom: it decodes ~30 fps),
    every frame against Pillow's own decode of it."""
    path = dicom_file(name)
    fast, ds = fast_path(path)
    assert (fast is not None) == REAL_JPEG_FILES[name]
    frames = int(ds.get("NumberOfFrames") or 1)
    checked = sorted({0, 1, frames // 2, frames - 1, *range(0, frames, max(1, frames // 4))} & set(range(frames)))
    try:
        reference = np.stack([pixel_array(ds, index=index, as_rgb=True) for index in checked])
    except (NotImplementedError, RuntimeError):  # 12-bit and lossless JPEG: no permissive codec installed
        with pytest.raises(DecodeError, match="no installed codec"):
            decode(path)
        return
    decoded = decode(path).array
    assert decoded.flags.c_contiguous and decoded.flags.writeable
    per_frame = decoded if frames > 1 else decoded[:, np.newaxis]
    np.testing.assert_array_equal(np.moveaxis(per_frame[:, checked], 0, -1).reshape(reference.shape), reference)
    if fast is not None:
        np.testing.assert_array_equal(fast.reshape(frames, *reference.shape[1:]), pillow_frames(ds))


def jpeg_bytes(image: Array, **options: Any) -> bytes:
    out = io.BytesIO()
    Image.fromarray(image).save(out, format="JPEG", **options)
    return out.getvalue()


def jpeg_dicom(
    encoded: list[bytes], shape: tuple[int, int], photometric: str, samples: int, syntax: str = JPEGBaseline8Bit
) -> bytes:
    """A DICOM file of JPEG frames, as an ultrasound cine would hold them."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.Modality = "US"
    ds.Rows, ds.Columns = shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = samples, photometric
    if samples == 3:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    if len(encoded) > 1:
        ds.NumberOfFrames = len(encoded)
    ds.PixelData = encapsulate(encoded)
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def noisy_frames(frames: int, shape: tuple[int, ...], seed: int) -> Array:
    rng = np.random.default_rng(seed)
    smooth = np.linspace(0, 255, shape[1], dtype=np.float64)[np.newaxis, :, *([np.newaxis] * (len(shape) - 2))]
    values = smooth + rng.normal(0, 40, (frames, *shape))
    return np.clip(values, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("frames", [1, 3, 12])
@pytest.mark.parametrize("photometric", ["YBR_FULL_422", "YBR_FULL"])
@pytest.mark.parametrize("subsampling", [0, 2])
def test_ybr_frames_equal_libjpeg_and_pydicom_within_one(frames: int, photometric: str, subsampling: int) -> None:
    """libjpeg's own YCbCr->RGB (what Pillow's Image.open gives) exactly; pydicom's float conversion within 1."""
    images = noisy_frames(frames, (40, 56, 3), seed=frames)
    encoded = [jpeg_bytes(image, quality=85, subsampling=subsampling) for image in images]
    fast, ds = fast_path(jpeg_dicom(encoded, (40, 56), photometric, 3))
    reference = pixel_array(ds, as_rgb=True)
    assert fast is not None
    libjpeg = np.stack([np.asarray(Image.open(io.BytesIO(data)).convert("RGB")) for data in encoded])
    np.testing.assert_array_equal(fast, libjpeg if frames > 1 else libjpeg[0])
    difference = np.abs(fast.astype(np.int16) - reference.astype(np.int16))
    assert difference.max() <= 1
    assert np.count_nonzero(difference) <= 0.001 * difference.size


@pytest.mark.parametrize("syntax", [JPEGBaseline8Bit, JPEGExtended12Bit])
@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_grey_frames_equal_pydicom_exactly(syntax: str, photometric: str) -> None:
    images = noisy_frames(9, (33, 47), seed=3)
    data = jpeg_dicom([jpeg_bytes(image, quality=90) for image in images], (33, 47), photometric, 1, syntax)
    fast, ds = fast_path(data)
    reference = pixel_array(ds)
    assert fast is not None
    np.testing.assert_array_equal(fast, reference)
    decoded = decode(data).array
    assert decoded.shape == (1, 9, 33, 47) and decoded.dtype == np.uint8
    expected = reference if photometric == "MONOCHROME2" else 255 - reference
    np.testing.assert_array_equal(decoded[0], expected)


def test_one_unusual_frame_sends_the_whole_file_to_pydicom() -> None:
    images = noisy_frames(10, (24, 32, 3), seed=5)
    encoded = [jpeg_bytes(image) for image in images]
    app14 = b"\xff\xee\x00\x0eAdobe\x00\x64\x00\x00\x00\x00\x01"  # an Adobe marker with transform 1
    encoded[6] = encoded[6][:2] + app14 + encoded[6][2:]
    data = jpeg_dicom(encoded, (24, 32), "YBR_FULL_422", 3)
    assert fast_path(data)[0] is None
    assert decode(data).array.shape == (3, 10, 24, 32)


def test_unusual_files_fall_back_to_pydicom() -> None:
    """Header/codestream mismatches, a header too short for its codestream, a truncated frame: pydicom decides."""
    encoded = jpeg_bytes(noisy_frames(1, (16, 16), seed=1)[0])
    assert fast_path(jpeg_dicom([encoded], (16, 16), "MONOCHROME2", 1))[0] is not None
    for photometric, samples in [("RGB", 3), ("YBR_FULL_422", 3), ("PALETTE COLOR", 1)]:
        assert fast_path(jpeg_dicom([encoded], (16, 16), photometric, samples))[0] is None
    ds = pydicom.dcmread(io.BytesIO(jpeg_dicom([encoded], (16, 16), "MONOCHROME2", 1)))
    assert _jpeg.decode_jpeg_frames(ds, 1, 16, 18) is None  # the codestream's size differs from Rows/Columns
    assert _jpeg.decode_jpeg_frames(ds, 2, 16, 16) is None  # fewer frames than NumberOfFrames
    ds.BitsStored = 7
    assert _jpeg.decode_jpeg_frames(ds, 1, 16, 16) is None
    colour = [jpeg_bytes(image) for image in noisy_frames(2, (32, 32, 3), seed=2)]
    truncated = jpeg_dicom([colour[0], colour[1][: len(colour[1]) // 2]], (32, 32), "YBR_FULL_422", 3)
    assert fast_path(truncated)[0] is None
    with pytest.raises(DecodeError, match="resource cine-1"):
        decode(truncated, resource_id="cine-1")


def test_codestream_parser() -> None:
    encoded = jpeg_bytes(noisy_frames(1, (8, 16, 3), seed=0)[0], subsampling=2)
    header = _jpeg._read_codestream(encoded)
    assert header is not None
    assert (header.sof, header.precision, header.rows, header.columns) == (0xC0, 8, 8, 16)
    assert header.component_ids == (1, 2, 3) and header.jfif and not header.app14
    for broken in (b"", b"\xff\xd8", encoded[:20], b"\x00" + encoded[1:], encoded[:2] + encoded[4:]):
        assert _jpeg._read_codestream(broken) is None


# ---------------------------------------------------------------------------------------------------- video ranges


def moving_frames(count: int, height: int, width: int, seed: int) -> Array:
    """(N,H,W,3) uint8 frames that all differ: moving gradients plus noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    frames = [
        np.stack([(xx * 4 + 5 * i) % 256, (yy * 4 + 3 * i) % 256, (xx + yy + 7 * i) % 256], -1) for i in range(count)
    ]
    return np.clip(np.asarray(frames) + rng.integers(-8, 8, (count, height, width, 3)), 0, 255).astype(np.uint8)


def encode(
    frames: Array, codec: str, container: str = "mp4", options: dict[str, str] | None = None, **kw: Any
) -> bytes:
    """Encode (N,H,W,3) frames; ``kw``: ``pix_fmt``, ``gop_size``, ``times`` (per-frame pts in ms, for VFR)."""
    out = io.BytesIO()
    times = kw.get("times")
    with av.open(out, mode="w", format=container, options=kw.get("container_options", {})) as muxer:
        stream = muxer.add_stream(codec, rate=25)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = kw.get("pix_fmt", "yuv420p")
        if "gop_size" in kw:
            stream.gop_size = kw["gop_size"]
        if times is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        stream.options = options or {}
        for index, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            if times is not None:
                frame.pts, frame.time_base = times[index], Fraction(1, 1000)
            muxer.mux(stream.encode(frame))
        muxer.mux(stream.encode())
    return out.getvalue()


X264_GOP12 = {"x264-params": "keyint=12:min-keyint=12:scenecut=0:bframes=2"}


@pytest.fixture(scope="module")
def videos() -> dict[str, tuple[bytes, Array]]:
    """name -> (file bytes, full decode (3,N,H,W)); every frame of every video differs from its neighbours."""
    frames = moving_frames(60, 48, 64, seed=0)
    vfr = np.cumsum(np.random.default_rng(1).integers(20, 90, 60)).tolist()
    files = {
        "h264 B-frames GOP 12": encode(frames, "libx264", options=X264_GOP12),
        "h264 open GOP": encode(frames, "libx264", options={"x264-params": "keyint=12:bframes=3:open-gop=1"}),
        "h264 no edit list": encode(frames, "libx264", options=X264_GOP12, container_options={"use_editlist": "0"}),
        "h264 VFR matroska": encode(frames, "libx264", "matroska", options=X264_GOP12, times=vfr),
        "mpeg4 B-frames": encode(frames, "mpeg4", options={"bf": "2", "g": "12"}),
        "mpeg4 avi": encode(frames, "mpeg4", "avi", gop_size=12),
    }
    facts = {name: stream_facts(data) for name, data in files.items()}
    assert all(facts[name]["reordered"] for name in files if name != "mpeg4 avi")  # B-frames
    assert facts["h264 no edit list"]["first_pts"] > 0
    assert facts["h264 VFR matroska"]["irregular"]
    decoded = {name: (data, decode(data).array) for name, data in files.items()}
    for _, full in decoded.values():
        assert full.shape == (3, 60, 48, 64)
        assert np.abs(np.diff(full.astype(np.int16), axis=1)).reshape(3, 59, -1).max(axis=(0, 2)).min() > 0
    return decoded


def stream_facts(data: bytes) -> dict[str, Any]:
    """Whether packets come out of presentation order (B-frames), the first pts, whether frame durations vary."""
    with av.open(io.BytesIO(data)) as container:
        pts = [packet.pts for packet in container.demux(video=0) if packet.size]
    gaps = set(np.diff(sorted(pts)).tolist())
    return {"reordered": pts != sorted(pts), "first_pts": min(pts), "irregular": len(gaps) > 1}


@given(data=st.data())
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_range_reads_equal_the_full_decode(videos: dict[str, tuple[bytes, Array]], data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(sorted(videos)))
    start = data.draw(st.integers(0, 59))
    stop = data.draw(st.integers(start + 1, min(60, start + 20)))
    encoded, full = videos[name]
    np.testing.assert_array_equal(decode_frames(encoded, start, stop), full[:, start:stop], err_msg=name)


def test_range_reads_do_not_decode_from_the_start() -> None:
    encoded = encode(moving_frames(96, 32, 32, seed=4), "libx264", options=X264_GOP12)
    for start, stop in [(0, 1), (11, 13), (12, 13), (50, 52), (90, 96), (95, 96)]:
        frames, decoded = video._read_range(io.BytesIO(encoded), start, stop)
        assert frames.shape == (3, stop - start, 32, 32)
        assert decoded <= (stop - start) + 12 + 3, (start, stop, decoded)  # at most a GOP (and the B-frame delay)


def test_range_read_without_timestamps_decodes_from_the_start(monkeypatch: pytest.MonkeyPatch) -> None:
    encoded = encode(moving_frames(30, 32, 32, seed=6), "mpeg4", options={"bf": "2", "g": "12"})
    full = decode(encoded).array
    monkeypatch.setattr(video, "_packet_index", lambda container, stream: (None, []))
    frames, decoded = video._read_range(io.BytesIO(encoded), 20, 25)
    np.testing.assert_array_equal(frames, full[:, 20:25])
    assert decoded == 25


def test_lossless_range_reads_are_exact() -> None:
    frames = moving_frames(30, 24, 32, seed=7)
    encoded = encode(frames, "libx264rgb", pix_fmt="rgb24", options={"qp": "0", "g": "8", "bf": "2"})
    for start, stop in [(0, 30), (3, 4), (8, 17), (29, 30)]:
        np.testing.assert_array_equal(decode_frames(encoded, start, stop), frames[start:stop].transpose(3, 0, 1, 2))


def test_full_decode_equals_pyav_rgb24() -> None:
    encoded = encode(moving_frames(20, 48, 64, seed=8), "libx264", options=X264_GOP12)
    with av.open(io.BytesIO(encoded)) as container:
        expected = np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])
    np.testing.assert_array_equal(decode(encoded).array, expected.transpose(3, 0, 1, 2))


def test_bad_ranges_and_files_raise_decode_error(tmp_path: Path) -> None:
    encoded = encode(moving_frames(10, 16, 16, seed=9), "mpeg4")
    for start, stop in [(-1, 2), (3, 3), (5, 2), (0, 11), (10, 11)]:
        with pytest.raises(DecodeError, match="frame"):
            decode_frames(encoded, start, stop, resource_id="clip-1")
    path = tmp_path / "clip.mp4"
    path.write_bytes(encoded[: len(encoded) // 3])
    with pytest.raises(DecodeError, match=r"clip\.mp4"):
        decode_frames(path, 0, 10)
    with pytest.raises(DecodeError, match="resource clip-2"):
        decode_frames(b"not a video at all" * 10, 0, 1, resource_id="clip-2")


# ---------------------------------------------------------------------------------------------------- benchmark


def test_decode_benchmark_quick_run(tmp_path: Path) -> None:
    command = [sys.executable, "benchmarks/decode.py", "--quick", "--cache-dir", str(tmp_path / "cache")]
    command += ["--results-dir", str(tmp_path / "results")]
    done = subprocess.run(command, cwd=REPOSITORY, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    results = json.loads((tmp_path / "results" / "decode.json").read_text())
    assert {"benchmark", "quick", "repeats", "seed", "machine", "comparisons", "measurements"} <= set(results)
    assert results["benchmark"] == "decode" and results["quick"] is True
    rows = results["comparisons"]
    assert {(row["target"], row["baseline"]) for row in rows} >= {
        ("P5", "pydicom"),
        ("P4", "reopen+seek per frame"),
        ("P4", "raw PyAV rgb24 loop"),
    }
    for row in rows:
        assert {"measure", "unit", "ours", "baseline_value", "ratio", "minimum_ratio", "passed", "note"} <= set(row)
    assert results["measurements"]["video_equals_pyav"] is True
    assert results["measurements"]["cine_max_abs_difference"] <= 1
    assert "W4 cine" in done.stdout


def test_a_frame_libjpeg_warns_about_goes_to_pydicom() -> None:
    """Junk before EOI is a warning to libjpeg ("extraneous bytes before marker"), not an error: the fast path is
    strict and leaves the file to pydicom, whose decode is then what ``decode`` returns."""
    images = noisy_frames(3, (24, 32, 3), seed=8)
    encoded = [jpeg_bytes(image) for image in images]
    assert encoded[1].endswith(b"\xff\xd9")
    encoded[1] = encoded[1][:-2] + bytes(range(1, 33)) + encoded[1][-2:]  # more than libjpeg reads ahead
    data = jpeg_dicom(encoded, (24, 32), "YBR_FULL_422", 3)
    assert fast_path(jpeg_dicom(encoded[:1] + encoded[2:], (24, 32), "YBR_FULL_422", 3))[0] is not None
    fast, ds = fast_path(data)
    assert fast is None
    np.testing.assert_array_equal(np.moveaxis(decode(data).array, 0, -1), pixel_array(ds, as_rgb=True))


def test_frames_of_different_sizes_in_one_thread_reuse_no_stale_buffer() -> None:
    """The per-thread frame buffer is replaced when the frame size changes: each cine equals Pillow's decode."""
    for shape in [(24, 32), (40, 16), (24, 32)]:
        images = noisy_frames(2, (*shape, 3), seed=shape[0])
        ds = pydicom.dcmread(io.BytesIO(jpeg_dicom([jpeg_bytes(image) for image in images], shape, "YBR_FULL_422", 3)))
        fast = _jpeg.decode_jpeg_frames(ds, 2, *shape)
        assert fast is not None
        np.testing.assert_array_equal(fast, pillow_frames(ds))


def _same_decode(a: Any, b: Any) -> None:
    np.testing.assert_array_equal(a.array, b.array)
    assert a.array.dtype == b.array.dtype
    assert a.metainfo == b.metainfo
    assert a.spacing == b.spacing
    assert (a.affine is None) == (b.affine is None)
    if a.affine is not None:
        np.testing.assert_array_equal(a.affine, b.affine)


@pytest.mark.parametrize("name", sorted(REAL_JPEG_FILES))
def test_a_local_jpeg_file_decodes_as_its_bytes_do(name: str, dicom_file: Any) -> None:
    """A path and the same bytes in memory give the same array, metainfo and geometry, and the same error where
    pydicom has no codec."""
    path = dicom_file(name)
    try:
        from_bytes = decode(path.read_bytes())
    except DecodeError as error:
        with pytest.raises(DecodeError, match="no installed codec"):
            decode(path)
        assert "no installed codec" in str(error)
        return
    _same_decode(decode(path), from_bytes)


def test_a_local_file_the_fast_path_refuses_decodes_as_pydicom_does(tmp_path: Path) -> None:
    images = noisy_frames(4, (24, 32, 3), seed=12)
    encoded = [jpeg_bytes(image) for image in images]
    app14 = b"\xff\xee\x00\x0eAdobe\x00\x64\x00\x00\x00\x00\x01"  # transform 1: the fast path declines
    encoded[2] = encoded[2][:2] + app14 + encoded[2][2:]
    path = tmp_path / "refused.dcm"
    path.write_bytes(jpeg_dicom(encoded, (24, 32), "YBR_FULL_422", 3))
    ds = pydicom.dcmread(path)
    np.testing.assert_array_equal(np.moveaxis(decode(path).array, 0, -1), pixel_array(ds, as_rgb=True))
    _same_decode(decode(path), decode(path.read_bytes()))


@pytest.mark.filterwarnings("ignore:End of file reached before delimiter:UserWarning")  # pydicom's, then ours
def test_a_truncated_local_jpeg_file_fails_as_its_bytes_do(tmp_path: Path) -> None:
    encoded = [jpeg_bytes(image) for image in noisy_frames(3, (24, 32, 3), seed=13)]
    data = jpeg_dicom(encoded, (24, 32), "YBR_FULL_422", 3)
    path = tmp_path / "cut.dcm"
    path.write_bytes(data[: len(data) - 700])
    with pytest.raises(DecodeError) as from_bytes:
        decode(path.read_bytes())
    with pytest.raises(DecodeError) as from_path:
        decode(path)
    assert str(from_path.value).split(" [")[0] == str(from_bytes.value).split(" [")[0]
