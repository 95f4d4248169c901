"""The JPEG-baseline DICOM fast path decoding frames in parallel: the same arrays as frame-by-frame decoding.

Real multi-frame files (pydicom's test data) and generated cines (repeated frames, several fragments per frame, a
damaged frame in the middle) are decoded in the frame pool and compared with a one-thread decode and with each frame
decoded on its own by libjpeg through Pillow. Also: the pool is one per process, rebuilt in a forked child.
"""

from __future__ import annotations

import hashlib
import io
import multiprocessing
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import JPEGBaseline8Bit, SecondaryCaptureImageStorage, generate_uid

from datamint_pipes.decode import _jpeg, decode

Array = np.ndarray[Any, Any]

pytestmark = pytest.mark.filterwarnings(
    "ignore:The pixel data is .* excess padding:UserWarning",
    "ignore:.*(Photometric Interpretation|Basic Offset Table).*:UserWarning",
)


def fast(ds: Dataset) -> Array | None:
    frames = int(ds.get("NumberOfFrames") or 1)
    return _jpeg.decode_jpeg_frames(ds, frames, int(ds.Rows), int(ds.Columns))


def one_thread(ds: Dataset, monkeypatch: pytest.MonkeyPatch) -> Array | None:
    with monkeypatch.context() as patch:
        patch.setattr(_jpeg, "usable_cpus", lambda: 1)
        return fast(ds)


def each_frame_alone(ds: Dataset) -> Array:
    """Every frame decoded on its own by libjpeg (Pillow): (N,H,W[,3])."""
    frames = generate_frames(ds.PixelData, number_of_frames=int(ds.get("NumberOfFrames") or 1))
    return np.stack([np.asarray(Image.open(io.BytesIO(frame))) for frame in frames])


def assert_identical(actual: Array | None, expected: Array) -> None:
    assert actual is not None
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    np.testing.assert_array_equal(actual, expected)


def noisy(frames: int, shape: tuple[int, ...], seed: int) -> Array:
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 255, shape[1])[np.newaxis, :, *([np.newaxis] * (len(shape) - 2))]
    return np.clip(ramp + rng.normal(0, 40, (frames, *shape)), 0, 255).astype(np.uint8)


def jpeg(image: Array) -> bytes:
    out = io.BytesIO()
    Image.fromarray(image).save(out, format="JPEG", quality=90)
    return out.getvalue()


def cine(encoded: list[bytes], shape: tuple[int, int], samples: int, fragments_per_frame: int = 1) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.Rows, ds.Columns = shape
    ds.SamplesPerPixel = samples
    ds.PhotometricInterpretation = "YBR_FULL_422" if samples == 3 else "MONOCHROME2"
    if samples == 3:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.NumberOfFrames = len(encoded)
    ds.PixelData = encapsulate(encoded, fragments_per_frame=fragments_per_frame, has_bot=fragments_per_frame > 1)
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return pydicom.dcmread(io.BytesIO(out.getvalue()))


@pytest.mark.parametrize("name", ["color3d_jpeg_baseline.dcm", "examples_ybr_color.dcm"])
def test_real_cines_decode_in_parallel_as_frame_by_frame(
    name: str, dicom_file: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    ds = pydicom.dcmread(dicom_file(name))
    assert int(ds.NumberOfFrames) > 1
    parallel = fast(ds)
    assert parallel is not None and parallel.nbytes >= _jpeg._MIN_BYTES_FOR_THREADS  # the threaded path ran
    assert_identical(parallel, each_frame_alone(ds))
    assert_identical(parallel, one_thread(ds, monkeypatch))
    # The decoder's (C,N,H,W) array: contiguous once the channels come first, without a copy.
    assert np.moveaxis(parallel, -1, 0).flags.c_contiguous


def test_the_benchmark_cine_through_decode_equals_each_frame(dicom_file: Any) -> None:
    path: Path = dicom_file("color3d_jpeg_baseline.dcm")
    array = decode(path).array
    assert array.shape == (3, 120, 480, 640) and array.dtype == np.uint8 and array.flags.c_contiguous
    np.testing.assert_array_equal(np.moveaxis(array, 0, -1), each_frame_alone(pydicom.dcmread(path)))


@pytest.mark.parametrize(("samples", "fragments_per_frame"), [(3, 1), (1, 1), (3, 2)])
def test_repeated_frames_and_fragmented_frames(
    samples: int, fragments_per_frame: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A still held over several frames (byte-identical codestreams) is decoded once and copied; frames split over
    several fragments go through pydicom's splitter; either way every frame is what libjpeg gives it alone."""
    shape = (96, 128, 3) if samples == 3 else (96, 128)
    images = noisy(12, shape, seed=samples)
    encoded = [jpeg(images[index]) for index in (0, 1, 1, 2, 3, 1, 4, 4, 5, 6, 7, 0)]
    ds = cine(encoded, (96, 128), samples, fragments_per_frame)
    assert _jpeg._repeated_frames(encoded) == {2: 1, 5: 1, 7: 6, 11: 0}
    frames = _jpeg._split_frames(ds, len(encoded))
    assert frames is not None and [bytes(frame).rstrip(b"\0") for frame in frames] == encoded
    parallel = fast(ds)
    assert_identical(parallel, each_frame_alone(ds))
    assert_identical(parallel, one_thread(ds, monkeypatch))


def test_a_damaged_frame_in_the_middle_leaves_the_file_to_pydicom() -> None:
    encoded = [jpeg(image) for image in noisy(16, (64, 96, 3), seed=3)]
    encoded[9] = encoded[9][: len(encoded[9]) // 2]  # no EOI: libjpeg would pad it with grey
    assert fast(cine(encoded, (64, 96), 3)) is None
    encoded[9] = encoded[9][:2] + b"\xff\xc4\x00"  # not even a readable header
    assert fast(cine(encoded, (64, 96), 3)) is None


def test_run_each_hands_out_every_item_once_and_raises_the_first_error() -> None:
    seen: list[int] = []
    lock = threading.Lock()

    def record(item: int) -> None:
        with lock:
            seen.append(item)

    _jpeg._run_each(record, list(range(200)), threads=4)
    assert sorted(seen) == list(range(200))

    def fail_on_7(item: int) -> None:
        if item == 7:
            raise ValueError("frame 7")

    with pytest.raises(ValueError, match="frame 7"):
        _jpeg._run_each(fail_on_7, list(range(50)), threads=3)


def test_one_pool_per_process_and_no_threads_left_per_call(dicom_file: Any) -> None:
    ds = pydicom.dcmread(dicom_file("examples_ybr_color.dcm"))
    for _ in range(5):
        assert fast(ds) is not None
    pool = _jpeg._frame_pool()
    assert _jpeg._frame_pool() is pool
    workers = [thread for thread in threading.enumerate() if thread.name.startswith("jpeg-frames")]
    assert len(workers) <= max(1, min(_jpeg._MAX_THREADS, _jpeg.usable_cpus()) - 1)


def _digest_in_child(path: str, queue: Any) -> None:
    ds = pydicom.dcmread(path)
    array = fast(ds)
    queue.put(None if array is None else hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest())


def test_a_forked_child_decodes_with_its_own_pool(dicom_file: Any) -> None:
    path = str(dicom_file("examples_ybr_color.dcm"))
    parent = fast(pydicom.dcmread(path))  # the parent's pool exists before the fork
    assert parent is not None
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_digest_in_child, args=(path, queue))
    child.start()
    digest = queue.get(timeout=60)
    child.join(timeout=60)
    assert child.exitcode == 0
    assert digest == hashlib.sha256(np.ascontiguousarray(parent).tobytes()).hexdigest()
