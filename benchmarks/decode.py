"""Decode throughput, W3 video and W4 DICOM, against their baselines in the same run (targets P4 and P5).

    .venv/bin/python benchmarks/decode.py [--quick] [--repeats N] [--seed S] [--cache-dir DIR] [--results-dir DIR]

Workloads (generated from the seed, cached under ``--cache-dir``):

* W4 series: 2 series of 100 uncompressed 512x512 int16 CT slices (IPP/IOP, PixelSpacing, rescale; files written in
  shuffled order). Ours: ``decode_series``; baseline: pydicom's default path (dcmread each file, sort by IPP along
  the slice normal, stack ``pixel_array``, rescale in float32). MB/s of stored pixels, page cache warm.
* W4 cine: pydicom-data's ``color3d_jpeg_baseline.dcm`` (120 frames 480x640, JPEG baseline, YBR_FULL_422). Ours:
  ``decode``; baseline: ``pydicom.dcmread(path).pixel_array``. Frames/s.
* W3 video: 4 MP4 (h264 with libx264's defaults: B-frames, keyint 250, but scene-cut detection off) of 240 frames
  256x256, one GOP each (see :func:`make_video`). Ours: ``decode`` (one sequential decode per video); baselines: a
  raw PyAV loop (``frame.to_ndarray(format="rgb24")``, frame threads) and the reference client's per-frame
  reopen-and-seek (30 frames per video). Informational: ``decode_frames`` in batches of 32, PyAV with one reused
  reformatter, and both ``decode`` and reopen-and-seek on the same videos encoded with scene cuts (a keyframe
  every ~46 frames), where the seek lands near the frame.

``--quick`` shrinks everything (and uses pydicom's 30-frame ``examples_ybr_color.dcm`` as the cine) for a smoke test.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pydicom
from _common import Comparison, arguments, print_table, rate, time_interleaved, write_results
from av.video.reformatter import VideoReformatter
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

import datamint_pipes.decode as decoding

FULL = {"slices": 100, "size": 512, "videos": 4, "frames": 240, "video_size": 256, "reopen_frames": 30}
QUICK = {"slices": 8, "size": 64, "videos": 2, "frames": 24, "video_size": 64, "reopen_frames": 4}
BATCH = 32
WORKLOAD_VERSION = 3  # bump when the generated inputs change: it names their cache folder


def make_series(folder: Path, rng: np.random.Generator, slices: int, size: int) -> list[Path]:
    """One CT-like series of ``slices`` int16 files (rescale -1024), written in shuffled InstanceNumber order."""
    folder.mkdir(parents=True, exist_ok=True)
    series_uid, study_uid = generate_uid(), generate_uid()
    yy, xx = np.mgrid[0:size, 0:size]
    body = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (0.4 * size) ** 2) * 1000
    paths = []
    for position, number in enumerate(rng.permutation(slices)):
        pixels = (body + 24 + rng.normal(0, 20, (size, size))).astype(np.int16)
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
        ds.SOPClassUID, ds.Modality = CTImageStorage, "CT"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.InstanceNumber = study_uid, series_uid, int(number) + 1
        ds.ImagePositionPatient = [-0.35 * size, -0.35 * size, 2.5 * position]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing, ds.SliceThickness = [0.7, 0.7], 2.5
        ds.Rows = ds.Columns = size
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.PixelData = pixels.tobytes()
        path = folder / f"slice_{number:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return sorted(paths)


def make_video(path: Path, rng: np.random.Generator, frames: int, size: int, *, scene_cuts: bool = False) -> Path:
    """An h264 MP4 of moving gradients with noise, with libx264's defaults (yuv420p, keyint 250, 3 B-frames) except
    scene-cut detection, off unless ``scene_cuts``: a 240-frame video is then one GOP.

    Why off: the reference client's measured 20 frames/s on W3 (performance.md) is a decode from frame 0 for every
    frame read, i.e. videos whose only keyframe is the first. The wrapping noisy gradients make libx264 cut a
    keyframe every ~46 frames, where the same reopen-and-seek runs 6-9x faster than the reference was measured; that
    variant is kept as an informational row."""
    yy, xx = np.mgrid[0:size, 0:size]
    with av.open(str(path), mode="w") as muxer:
        stream = muxer.add_stream("libx264", rate=30)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        if not scene_cuts:
            stream.options = {"x264-params": "scenecut=0"}
        for index in range(frames):
            image = np.stack([(xx + 3 * index) % 256, (yy + 2 * index) % 256, (xx + yy + index) % 256], axis=-1)
            image = np.clip(image + rng.integers(-12, 12, image.shape), 0, 255).astype(np.uint8)
            muxer.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        muxer.mux(stream.encode())
    return path


def workload(cache: Path, seed: int, sizes: dict[str, int]) -> tuple[list[list[Path]], list[Path], list[Path]]:
    """The generated series, videos and the same videos with scene cuts, made once per (seed, sizes) in ``cache``."""
    name = "-".join([f"decode-v{WORKLOAD_VERSION}-seed{seed}", *(f"{key}{value}" for key, value in sizes.items())])
    folder = cache / name
    done = folder / "complete"
    rng = np.random.default_rng(seed)
    series = [folder / f"series{index}" for index in range(2)]
    videos = [folder / f"video{index}.mp4" for index in range(sizes["videos"])]
    cut = [folder / f"video{index}-scene-cuts.mp4" for index in range(sizes["videos"])]
    if not done.exists():
        for path in series:
            make_series(path, rng, sizes["slices"], sizes["size"])
        for path, cut_path in zip(videos, cut, strict=True):
            state = rng.bit_generator.state
            make_video(path, rng, sizes["frames"], sizes["video_size"])
            rng.bit_generator.state = state  # the same frames, encoded again with scene cuts
            make_video(cut_path, rng, sizes["frames"], sizes["video_size"], scene_cuts=True)
        done.write_text("ok\n")
    return [sorted(path.glob("*.dcm")) for path in series], videos, cut


def pydicom_series(paths: Sequence[Path]) -> np.ndarray[Any, Any]:
    """pydicom's default path: read every file, sort by IPP along the slice normal, stack, rescale (float32)."""
    datasets = [pydicom.dcmread(path) for path in paths]
    normal = np.cross(*np.reshape(np.asarray(datasets[0].ImageOrientationPatient, dtype=float), (2, 3)))
    datasets.sort(key=lambda ds: float(np.dot(normal, np.asarray(ds.ImagePositionPatient, dtype=float))))
    volume = np.stack([ds.pixel_array for ds in datasets]).astype(np.float32)
    return volume * np.float32(datasets[0].RescaleSlope) + np.float32(datasets[0].RescaleIntercept)


def pyav_frames(path: Path, reuse_reformatter: bool = False) -> list[np.ndarray[Any, Any]]:
    """The raw PyAV loop: every frame to an (H,W,3) rgb24 array, frame threads on."""
    reformatter = VideoReformatter() if reuse_reformatter else None
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        video.thread_type = "AUTO"
        if reformatter is None:
            return [frame.to_ndarray(format="rgb24") for frame in container.decode(video)]
        return [reformatter.reformat(frame, format="rgb24").to_ndarray() for frame in container.decode(video)]


def reopen_and_seek(path: Path, indices: Sequence[int]) -> int:
    """The reference client's per-frame read: write the video's bytes to a temporary file, open it, seek to the
    frame's time (backward to a keyframe: frame 0 with these GOPs), decode up to it.

    Returns how many of the frames it found."""
    found = 0
    data = path.read_bytes()
    for index in indices:
        with (
            tempfile.NamedTemporaryFile(suffix=path.suffix) as rewritten,
            av.open(_rewrite(rewritten, data)) as container,
        ):
            video = container.streams.video[0]
            frame_time = Fraction(index) / (video.average_rate or 1)
            target = (video.start_time or 0) + round(frame_time / (video.time_base or 1))
            container.seek(target, stream=video, backward=True, any_frame=False)
            for frame in container.decode(video):
                if frame.pts is not None and frame.pts >= target:
                    frame.to_ndarray(format="rgb24")
                    found += 1
                    break
    return found


def _rewrite(handle: Any, data: bytes) -> str:
    handle.write(data)
    handle.flush()
    return str(handle.name)


def keyframes(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(packet.is_keyframe for packet in container.demux(video=0) if packet.size)


def in_batches(path: Path, frames: int) -> int:
    """Read the video as ``decode_frames`` batches of 32, the way W3 consumes it; return the frames read."""
    starts = range(0, frames, BATCH)
    return sum(decoding.decode_frames(path, start, min(start + BATCH, frames)).shape[1] for start in starts)


def measure_series(series: list[list[Path]], size: int, repeats: int, found: dict[str, Any]) -> Comparison:
    """W4 series: MB/s of stored pixels, ``decode_series`` against pydicom's default path."""
    stored_mb = sum(len(paths) for paths in series) * size**2 * 2 / 1e6
    decode_series = getattr(decoding, "decode_series", None)
    candidates = {"pydicom": lambda: [pydicom_series(paths) for paths in series]}
    if decode_series is not None:
        ours, reference = decode_series(series[0]).array[0], pydicom_series(series[0])
        found["series_max_abs_difference"] = float(np.abs(ours - reference).max())
        candidates["ours"] = lambda: [decode_series(paths) for paths in series]
    seconds = found["series_seconds"] = time_interleaved(candidates, repeats)
    ours_rate = rate(stored_mb, seconds["ours"]) if "ours" in seconds else None
    note = "" if decode_series is not None else "skipped: no decode_series yet"
    return Comparison("P5", "W4 series", "MB/s", ours_rate, "pydicom", rate(stored_mb, seconds["pydicom"]), 1.0, note)


def measure_cine(cine: Path, repeats: int, found: dict[str, Any]) -> Comparison:
    """W4 cine: frames/s, ``decode`` against ``pydicom.dcmread(path).pixel_array``."""
    frames = int(pydicom.dcmread(cine, stop_before_pixels=True).NumberOfFrames)
    ours, reference = decoding.decode(cine).array, np.moveaxis(pydicom.dcmread(cine).pixel_array, -1, 0)
    found["cine_max_abs_difference"] = int(np.abs(ours.astype(int) - reference).max())
    del ours, reference  # not held while timing: a decode's output memory is recycled once it is dropped
    seconds = found["cine_seconds"] = time_interleaved(
        {"ours": lambda: decoding.decode(cine), "pydicom": lambda: pydicom.dcmread(cine).pixel_array}, repeats
    )
    ours_rate, pydicom_rate = rate(frames, seconds["ours"]), rate(frames, seconds["pydicom"])
    return Comparison("P5", "W4 cine", "frames/s", ours_rate, "pydicom", pydicom_rate, 10.0)


def measure_video(
    videos: list[Path], cut: list[Path], sizes: dict[str, int], seed: int, repeats: int, found: dict[str, Any]
) -> list[Comparison]:
    """W3 video: frames/s of the full decode against raw PyAV and per-frame reopen-and-seek (also on the videos
    encoded with scene cuts: informational)."""
    total = sizes["frames"] * len(videos)
    found["video_equals_pyav"] = all(
        np.array_equal(decoding.decode(path).array, np.moveaxis(np.stack(pyav_frames(path)), -1, 0)) for path in videos
    )
    found["video_keyframes"] = [keyframes(path) for path in videos]
    found["scene_cut_video_keyframes"] = [keyframes(path) for path in cut]
    reopen = np.random.default_rng(seed).choice(sizes["frames"], sizes["reopen_frames"], replace=False).tolist()
    seconds = found["video_seconds"] = time_interleaved(
        {
            "ours": lambda: [decoding.decode(path) for path in videos],
            "pyav": lambda: [pyav_frames(path) for path in videos],
            "pyav_reused_reformatter": lambda: [pyav_frames(path, reuse_reformatter=True) for path in videos],
            "reopen_and_seek": lambda: [reopen_and_seek(path, reopen) for path in videos],
            "ours_batches": lambda: [in_batches(path, sizes["frames"]) for path in videos],
            "ours_scene_cuts": lambda: [decoding.decode(path) for path in cut],
            "reopen_and_seek_scene_cuts": lambda: [reopen_and_seek(path, reopen) for path in cut],
        },
        repeats,
    )
    ours, pyav = rate(total, seconds["ours"]), rate(total, seconds["pyav"])
    reopen_rate = rate(len(reopen) * len(videos), seconds["reopen_and_seek"])
    gop = f"mean GOP {total / sum(found['video_keyframes']):.0f} frames"
    cut_gop = f"mean GOP {total / sum(found['scene_cut_video_keyframes']):.0f} frames"
    return [
        Comparison("P4", "W3 video", "frames/s", ours, "reopen+seek per frame", reopen_rate, 20.0, gop),
        Comparison("P4", "W3 video", "frames/s", ours, "raw PyAV rgb24 loop", pyav, 0.8),
        Comparison(
            "-",
            "W3 video",
            "frames/s",
            ours,
            "PyAV, reused reformatter",
            rate(total, seconds["pyav_reused_reformatter"]),
        ),
        Comparison(
            "-",
            f"W3 decode_frames x{BATCH}",
            "frames/s",
            rate(total, seconds["ours_batches"]),
            "raw PyAV rgb24 loop",
            pyav,
        ),
        Comparison(
            "-",
            "W3 video, scene cuts",
            "frames/s",
            rate(total, seconds["ours_scene_cuts"]),
            "reopen+seek per frame",
            rate(len(reopen) * len(cut), seconds["reopen_and_seek_scene_cuts"]),
            note=cut_gop,
        ),
    ]


def main(argv: Sequence[str] | None = None) -> int:
    args = arguments(__doc__.splitlines()[0], argv, repeats=5)
    sizes = QUICK if args.quick else FULL
    series, videos, cut = workload(Path(args.cache_dir), args.seed, sizes)
    cine = Path(get_testdata_file("examples_ybr_color.dcm" if args.quick else "color3d_jpeg_baseline.dcm") or "")
    found: dict[str, Any] = {"sizes": sizes, "cine": cine.name}
    rows = [
        measure_series(series, sizes["size"], args.repeats, found),
        measure_cine(cine, args.repeats, found),
        *measure_video(videos, cut, sizes, args.seed, args.repeats, found),
    ]
    print_table(f"decode benchmark ({'quick' if args.quick else 'full'}, median of {args.repeats})", rows)
    path = write_results("decode", args, rows, found)
    print(f"\nresults: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
