"""The sample projects built from real bundled files, and real data streamed through the pipeline."""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image

from datamint_pipes import cli
from datamint_pipes.model import parse_timestamp
from datamint_pipes.pipeline import Pipeline
from datamint_pipes.samples import ANNOTATORS, SAMPLE_NAMES, SPLIT_TIMES, build_samples
from datamint_pipes.sources.local import LocalProject
from datamint_pipes.stages.annotations import LoadMasks
from datamint_pipes.stages.collate import Collate
from datamint_pipes.stages.expand import SliceVolume
from datamint_pipes.stages.load import DecodeImage, ReadResource


def _open(root: Path, name: str) -> LocalProject:
    return LocalProject.open(root / name, read_only=True)


def test_three_projects_with_the_promised_content(sample_root: Path) -> None:
    assert sorted(p.name for p in sample_root.iterdir() if not p.name.startswith(".")) == sorted(SAMPLE_NAMES)
    images, volumes, videos = (_open(sample_root, n) for n in SAMPLE_NAMES)

    image_formats = Counter(r.metadata["format"] for r in images.resources())
    assert image_formats == {"png": 4, "jpeg": 1, "dicom": 2}
    shapes = {r.filename: tuple(r.metadata["shape"]) for r in images.resources()}
    assert shapes["retina.jpg"] == (3, 1411, 1411)
    assert shapes["cell.png"][0] == 1
    assert shapes["CT_small.dcm"] == (1, 128, 128)
    assert {r.metadata["dtype"] for r in images.resources() if r.filename.endswith("16bit.png")} == {"uint16"}

    kinds = {r.filename: (r.metadata["format"], len(r.files), tuple(r.metadata["shape"])) for r in volumes.resources()}
    assert kinds["CT5N"] == ("dicom", 5, (1, 5, 16, 16))
    assert kinds["anatomical.nii"] == ("nifti", 1, (1, 25, 41, 33))
    assert kinds["example4d.nii.gz"] == ("nifti", 1, (2, 24, 96, 128))

    video_kinds = sorted((r.metadata["format"], r.metadata["frame_count"]) for r in videos.resources())
    assert video_kinds == [("dicom", 30), ("video", 30)]

    for project in (images, volumes, videos):
        annotations = project.annotations()
        assert {a.created_by for a in annotations} == set(ANNOTATORS)
        types = Counter(a.annotation_type for a in annotations)
        assert types["segmentation"] and types["label"] and types["category"]
        assert len(project.worklists()) == 1
        assert project.segmentation_groups(project.worklists()[0].id)["tissue"]["index"] == 1
        for resource in project.resources():
            mine = [a for a in annotations if a.resource_id == resource.id]
            assert {a.created_by for a in mine} == set(ANNOTATORS), resource.filename
    assert any(a.scope == "frame" and a.is_segmentation() for a in volumes.annotations())
    assert any(a.scope == "image" and a.is_segmentation() for a in volumes.annotations())
    assert any(a.scope == "frame" and a.is_segmentation() for a in videos.annotations())


def test_split_history_has_two_revisions(sample_root: Path) -> None:
    project = _open(sample_root, "sample-volumes")
    before = project.split_assignments(as_of="2026-01-01T00:00:00Z")
    first = {a.resource_id: a.split_name for a in project.split_assignments(as_of=SPLIT_TIMES[0])}
    second = {a.resource_id: a.split_name for a in project.split_assignments(as_of=SPLIT_TIMES[1])}
    assert before == []
    ids = [r.id for r in project.resources()]
    assert set(first) == set(second) == set(ids)
    assert Counter(first.values()) == {"train": 3, "test": 1}
    assert first != second and second[ids[0]] == "val" and second[ids[-1]] == "train"
    history = project.split_assignments(include_history=True)
    assert len(history) == len(ids) + 2
    assert all(parse_timestamp(a.deleted_at) == parse_timestamp(SPLIT_TIMES[1]) for a in history if a.deleted_at)


def test_copied_files_are_the_real_files(sample_root: Path, dicom_test_dir: Path, nibabel_data_dir: Path) -> None:
    project = _open(sample_root, "sample-volumes")
    by_name = {r.filename: r for r in project.resources()}
    nifti = by_name["anatomical.nii"]
    assert project.read_bytes(nifti.files[0]) == (nibabel_data_dir / "anatomical.nii").read_bytes()
    series_digests = {hashlib.sha256(project.read_bytes(f)).hexdigest() for f in by_name["CT5N"].files}
    originals = {
        hashlib.sha256(p.read_bytes()).hexdigest() for p in (dicom_test_dir / "dicomdirtests/98892001/CT5N").iterdir()
    }
    assert series_digests == originals


def test_building_again_reuses_and_overwrite_rebuilds(tmp_path: Path) -> None:
    first = build_samples(tmp_path)
    ids = [p.id for p in first]
    assert [p.id for p in build_samples(tmp_path)] == ids
    rebuilt = build_samples(tmp_path, overwrite=True)
    assert [p.name for p in rebuilt] == list(SAMPLE_NAMES)
    assert all(a != b for a, b in zip(ids, (p.id for p in rebuilt), strict=True))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "staging folders left behind"


@pytest.mark.parametrize("worker_type", ["thread", "process"])
def test_real_volumes_stream_through_workers_slice_by_slice(sample_root: Path, worker_type: str) -> None:
    """Every axial slice that comes out equals that slice of the volume read independently."""
    project = _open(sample_root, "sample-volumes")
    resources = project.resources()
    pipeline = (
        Pipeline(num_items=len(resources), seed=3)
        .map(ReadResource(resources, project.annotations_by_resource()))
        .map(DecodeImage(project))
        .map(LoadMasks(project))
        .expand(SliceVolume("axial"))
        .batch(1)
        .collate(Collate())
    )
    context = {"multiprocessing_context": "spawn"} if worker_type == "process" else {}
    seen: Counter[str] = Counter()
    with pipeline.loader(num_workers=2, worker_type=worker_type, **context) as loader:  # type: ignore[arg-type]
        for batch in loader:
            resource = batch["resource"][0]
            k = int(batch["slice_index"][0])
            seen[resource.filename] += 1
            got = batch["image"][0].numpy()
            if resource.filename == "anatomical.nii":
                data = np.asarray(nib.load(project.local_path(resource.files[0])).get_fdata())  # type: ignore[attr-defined]
                # anatomical.nii is stored with axes (L->R?, ...): orient to L,P,S from its affine, then (Z,Y,X).
                codes = nib.aff2axcodes(nib.load(project.local_path(resource.files[0])).affine)  # type: ignore[attr-defined]
                for axis, (code, want) in enumerate(zip(codes, "LPS", strict=True)):
                    assert code in (want, {"L": "R", "P": "A", "S": "I"}[want])
                    if code != want:
                        data = np.flip(data, axis)
                np.testing.assert_array_equal(got[0], data[:, :, k].T)
            if resource.filename == "CT5N":
                files = [pydicom.dcmread(project.local_path(f)) for f in resource.files]
                z = sorted(files, key=lambda ds: float(ds.ImagePositionPatient[2]))
                expected = pydicom.pixels.apply_modality_lut(z[k].pixel_array, z[k])
                np.testing.assert_allclose(got[0], expected)
            masks = batch["masks"][0]
            for annotation in batch["annotations"][0]:
                if annotation.is_segmentation() and annotation.frame_index == k:
                    mask = np.asarray(Image.open(project.local_path(annotation.file)))
                    np.testing.assert_array_equal(masks[annotation.id], (mask != 0).astype(np.uint8))
    assert seen == {r.filename: r.metadata["frame_count"] for r in resources}


def test_cli_sample_and_info(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["sample", str(tmp_path)]) == 0
    assert "sample-images: 7 resources" in capsys.readouterr().out
    assert cli.main(["info", str(tmp_path / "sample-videos")]) == 0
    text = capsys.readouterr().out
    assert "resources: 2" in text and "alice@example.org" in text and "train" in text


def test_demo_runs_end_to_end_and_writes_a_preview(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["demo", "--out", str(tmp_path), "--samples", str(tmp_path / "s"), "--epochs", "1"]) == 0
    out = capsys.readouterr().out
    for stage in ("read", "decode", "masks", "slice", "resize"):
        assert f"\n{stage} " in out
    rows = [line.split() for line in out.splitlines() if line.startswith("sample-")]
    assert {row[0]: int(row[2]) for row in rows} == {"sample-images": 7, "sample-volumes": 61, "sample-videos": 60}
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == sorted(SAMPLE_NAMES)
    preview = Image.open(tmp_path / "preview.png")
    assert preview.format == "PNG" and preview.size[0] > 600 and preview.size[1] > 400
