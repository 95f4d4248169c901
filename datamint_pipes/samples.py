"""Sample projects built from real medical files that ship inside installed packages.

:func:`build_samples` writes three local projects under a folder:

* ``sample-images`` -- 2D: a colour fundus photograph (JPEG), grey microscopy and phantom PNGs, a 16-bit
  PNG made from a real CT slice, single-frame DICOM (CT, MR);
* ``sample-volumes`` -- a DICOM CT series and NIfTI volumes, 3D and 4D;
* ``sample-videos`` -- a multi-frame ultrasound DICOM cine and an MP4 encoded here from its frames.

Each project has a worklist schema, annotations from two annotators (image labels, categories,
image-scoped segmentations, frame-scoped segmentations on volumes and videos) and split assignments made
at two timestamps, so split history can be replayed. Masks are thresholds of the images themselves, so
overlays show real anatomy. Sources: pydicom and pydicom-data (MIT), nibabel (MIT), scikit-image (CC0
images), see ``reference`` in the README.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from datamint_pipes.errors import ProjectError
from datamint_pipes.model import LabelSpec
from datamint_pipes.sources.local import LocalProject

__all__ = ["SAMPLE_NAMES", "build_samples", "real_file"]

SAMPLE_NAMES = ("sample-images", "sample-volumes", "sample-videos")
ANNOTATORS = ("alice@example.org", "bob@example.org")
SPLIT_TIMES = ("2026-01-15T09:00:00Z", "2026-06-01T12:00:00Z")


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ProjectError(f"the sample data needs the package {package!r}: pip install {package}")
    return Path(next(iter(spec.submodule_search_locations)))


def real_file(package: str, relpath: str) -> Path:
    """Path of a real test file shipped in an installed package (``pydicom``, ``nibabel``, ``skimage``,
    ``data_store`` for pydicom-data)."""
    path = _package_dir(package) / relpath
    if not path.exists():
        raise ProjectError(f"{path} is missing: reinstall {package}")
    return path


def _pydicom(relpath: str) -> Path:
    return real_file("pydicom", f"data/test_files/{relpath}")


def _series_files(folder: Path) -> list[Path]:
    """DICOM files of a series folder, sorted along the slice normal (the decoded order)."""
    import pydicom

    files = [p for p in folder.iterdir() if p.is_file()]

    def position(path: Path) -> float:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        orientation = np.asarray(ds.ImageOrientationPatient, float)
        normal = np.cross(orientation[:3], orientation[3:])
        return float(np.dot(normal, np.asarray(ds.ImagePositionPatient, float)))

    return sorted(files, key=position)


def _masks_for(plane: np.ndarray[Any, Any], annotator: int) -> dict[str, np.ndarray[Any, Any]]:
    """Two nested threshold masks of a 2D plane; the second annotator draws slightly tighter ones."""
    plane = plane.astype(np.float64)
    lo, hi = np.percentile(plane, [50 + 5 * annotator, 90 + 2 * annotator])
    return {"tissue": (plane > lo).astype(np.uint8), "bright": (plane > hi).astype(np.uint8)}


def _worklist(project: LocalProject, name: str, *, frame_labels: bool) -> str:
    specs = [
        LabelSpec(type="segmentation", identifier="tissue", index=1, color=(255, 80, 80, 255)),
        LabelSpec(type="segmentation", identifier="bright", index=2, color=(80, 160, 255, 255)),
        LabelSpec(type="label", identifier="artifact"),
        LabelSpec(type="label", identifier="good_quality"),
        LabelSpec(type="category", identifier="view", values=("standard", "oblique")),
    ]
    if frame_labels:
        specs.append(LabelSpec(type="label", identifier="key_frame", scope="frame"))
    return project.add_worklist(name, specs, annotators=ANNOTATORS).id


def _label_and_categorise(project: LocalProject, rid: str, position: int, worklist_id: str) -> None:
    for who, annotator in enumerate(ANNOTATORS):
        label = "good_quality" if (position + who) % 3 else "artifact"
        project.add_annotation(rid, label, "label", created_by=annotator, worklist_id=worklist_id)
        view = "standard" if (position + who) % 2 == 0 else "oblique"
        project.add_annotation(rid, "view", "category", created_by=annotator, text_value=view, worklist_id=worklist_id)


def _annotate_frames(
    project: LocalProject,
    resource_id: str,
    volume: np.ndarray[Any, Any],
    frames_by_annotator: list[list[int]],
    key_frame: int,
    worklist_id: str,
) -> None:
    """Frame-scoped threshold masks of ``volume`` (N,H,W) on each annotator's frames, and a key-frame label."""
    for who, annotator in enumerate(ANNOTATORS):
        for frame in frames_by_annotator[who]:
            for label, mask in _masks_for(volume[frame], who).items():
                project.add_annotation(
                    resource_id,
                    label,
                    "segmentation",
                    created_by=annotator,
                    frame_index=frame,
                    mask=mask,
                    worklist_id=worklist_id,
                )
        project.add_annotation(
            resource_id, "key_frame", "label", created_by=annotator, frame_index=key_frame, worklist_id=worklist_id
        )


def _assign_splits(project: LocalProject) -> None:
    ids = [r.id for r in project.resources()]
    cut = max(1, round(0.7 * len(ids)))
    project.assign_split(ids[:cut], "train", at=SPLIT_TIMES[0])
    project.assign_split(ids[cut:], "test", at=SPLIT_TIMES[0])
    # The later revision moves one training resource to validation and one test resource into training.
    project.assign_split(ids[:1], "val", at=SPLIT_TIMES[1])
    if len(ids) > cut:
        project.assign_split(ids[-1:], "train", at=SPLIT_TIMES[1])


def _build_images(project: LocalProject, work: Path) -> None:
    import pydicom
    from PIL import Image

    from datamint_pipes.stages.load import decode_resource

    ct = pydicom.dcmread(_pydicom("CT_small.dcm")).pixel_array.astype(np.int32)
    sixteen = work / "ct_slice_16bit.png"
    Image.fromarray((ct - ct.min()).astype(np.uint16)).save(sixteen)
    files = [
        real_file("skimage", "data/retina.jpg"),
        real_file("skimage", "data/microaneurysms.png"),
        real_file("skimage", "data/cell.png"),
        real_file("skimage", "data/phantom.png"),
        sixteen,
        _pydicom("CT_small.dcm"),
        _pydicom("MR_small.dcm"),
    ]
    worklist_id = _worklist(project, "image review", frame_labels=False)
    for position, path in enumerate(files):
        resource = project.add_resource(path, patient_id=f"patient-{position % 4}", tags=("sample", "2d"))
        _label_and_categorise(project, resource.id, position, worklist_id)
        plane = decode_resource(project, resource).array.mean(axis=0)
        for who, annotator in enumerate(ANNOTATORS):
            for label, mask in _masks_for(plane, who).items():
                project.add_annotation(
                    resource.id, label, "segmentation", created_by=annotator, mask=mask, worklist_id=worklist_id
                )
    _assign_splits(project)


def _build_volumes(project: LocalProject, work: Path) -> None:
    from datamint_pipes.stages.load import decode_resource

    worklist_id = _worklist(project, "volume review", frame_labels=True)
    # CT5N is the one real parallel stack among pydicom's series (MR700 mixes orientations; CT2 has a gap).
    series = [_pydicom("dicomdirtests/98892001/CT5N")]
    niftis = [
        real_file("nibabel", "tests/data/anatomical.nii"),
        real_file("nibabel", "tests/data/example4d.nii.gz"),
        real_file("nibabel", "tests/data/standard.nii.gz"),
    ]
    for position, source in enumerate([*series, *niftis]):
        if source.is_dir():
            resource = project.add_resource(_series_files(source), filename=source.name, patient_id="patient-dicom")
        else:
            resource = project.add_resource(source, patient_id=f"patient-{position}")
        _label_and_categorise(project, resource.id, position, worklist_id)
        volume = decode_resource(project, resource).array.astype(np.float64).mean(axis=0)  # (N,H,W)
        frames = sorted({0, volume.shape[0] // 2, volume.shape[0] - 1})
        _annotate_frames(project, resource.id, volume, [frames, frames[1:]], frames[-1], worklist_id)
        if resource.metadata.get("format") == "nifti":
            # A whole-volume mask in the file's stored voxel order, as a user with nibabel would write it.
            import nibabel as nib

            data = np.asarray(nib.load(str(source)).dataobj, dtype=np.float64)  # type: ignore[attr-defined]
            if data.ndim == 4:
                data = data.mean(axis=3)
            mask = (data > np.percentile(data, 60)).astype(np.uint8)
            project.add_annotation(
                resource.id, "tissue", "segmentation", created_by=ANNOTATORS[0], mask=mask, worklist_id=worklist_id
            )
    _assign_splits(project)


def _encode_mp4(frames: np.ndarray[Any, Any], path: Path, fps: int = 15) -> None:
    """Encode (N,H,W,3) uint8 frames as H.264 MP4 with PyAV (even sizes, yuv420p)."""
    import av

    height, width = frames.shape[1] // 2 * 2, frames.shape[2] // 2 * 2
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for frame in frames:
            video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame[:height, :width]), format="rgb24")
            for packet in stream.encode(video_frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _build_videos(project: LocalProject, work: Path) -> None:
    from datamint_pipes.stages.load import decode_resource

    worklist_id = _worklist(project, "cine review", frame_labels=True)
    cine = project.add_resource(_pydicom("examples_ybr_color.dcm"), patient_id="patient-us", tags=("cine",))
    frames = decode_resource(project, cine).array  # (3,N,H,W) uint8 RGB
    mp4 = work / "ultrasound_cine.mp4"
    _encode_mp4(np.transpose(frames, (1, 2, 3, 0)), mp4)
    video = project.add_resource(mp4, patient_id="patient-us", tags=("mp4",))
    for position, resource in enumerate([cine, video]):
        _label_and_categorise(project, resource.id, position, worklist_id)
        array = decode_resource(project, resource).array.astype(np.float64).mean(axis=0)
        count = array.shape[0]
        step = max(1, count // 5)
        frames_by_annotator = [list(range(who, count, step)) for who in range(len(ANNOTATORS))]
        _annotate_frames(project, resource.id, array, frames_by_annotator, count // 2, worklist_id)
    _assign_splits(project)


_BUILDERS: dict[str, Callable[[LocalProject, Path], None]] = {
    "sample-images": _build_images,
    "sample-volumes": _build_volumes,
    "sample-videos": _build_videos,
}


def build_samples(folder: str | os.PathLike[str], *, overwrite: bool = False) -> list[LocalProject]:
    """Build (or reuse) the three sample projects under ``folder``; returns them opened.

    Each project is built in a temporary folder and renamed into place, so an interrupted build never
    leaves a half-made project behind. Existing complete projects are reused unless ``overwrite``.
    """
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    projects = []
    for name, builder in _BUILDERS.items():
        target = root / name
        if target.exists() and not overwrite:
            projects.append(LocalProject.open(target))
            continue
        staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
        try:
            project = LocalProject.create(staging / "project", name, description=f"datamint-pipes {name}")
            with tempfile.TemporaryDirectory() as work:
                builder(project, Path(work))
            project.close()
            if target.exists():
                shutil.rmtree(target)
            os.replace(staging / "project", target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        projects.append(LocalProject.open(target))
    return projects
