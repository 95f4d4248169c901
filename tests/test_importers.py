"""import_folder and import_msd on folders generated in the test; failed imports leave the project unchanged."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _factories import (
    catalogue_state,
    files_on_disk,
    gradient,
    read_nifti,
    write_dicom,
    write_dicom_series,
    write_jpeg,
    write_nifti,
    write_png,
)

from datamint_pipes.errors import ProjectError
from datamint_pipes.model import LabelSpec
from datamint_pipes.sources.importers import import_folder, import_msd
from datamint_pipes.sources.local import LocalProject

IMPORTER = "importer@datamint-pipes"
MSD_ANNOTATOR = "msd@datamint-pipes"


@pytest.fixture
def project(tmp_path: Path) -> LocalProject:
    return LocalProject.create(tmp_path / "proj", "imports")


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A mixed folder: PNG, JPEG, NIfTI, a PNG in a subfolder, a 3-file DICOM series in ct/, and mixed/ with
    four DICOM files from two interleaved series (A: 4x7 slices, B: 3x5 slices)."""
    root = tmp_path / "incoming"
    write_png(root / "a.png", gradient((4, 6)))
    write_jpeg(root / "b.jpg", gradient((8, 10, 3)))
    write_nifti(root / "vol.nii.gz", gradient((6, 5, 3), np.int16))
    write_png(root / "scans" / "c.png", gradient((3, 3)))
    write_dicom_series(root / "ct", gradient((3, 4, 5), np.uint16), series_uid="1.2.3.100")
    for i, (uid, shape) in enumerate([("1.2.3.1", (4, 7)), ("1.2.3.2", (3, 5))] * 2):
        write_dicom(
            root / "mixed" / f"img{i}.dcm", gradient(shape, np.uint16), series_uid=uid, instance_number=i, z=float(i)
        )
    return root


def _labels(project: LocalProject) -> dict[str, list[str]]:
    """filename -> sorted label identifiers of its label annotations."""
    names = {r.id: r.filename for r in project.resources()}
    out: dict[str, list[str]] = {}
    for annotation in project.annotations():
        assert annotation.annotation_type == "label" and annotation.scope == "image"
        assert annotation.created_by == IMPORTER and annotation.source == "imported"
        out.setdefault(names[annotation.resource_id], []).append(annotation.identifier)
    return {k: sorted(v) for k, v in out.items()}


def _refused(project: LocalProject, action: Any, *names: str) -> None:
    state, disk = catalogue_state(project), files_on_disk(project.root)
    with pytest.raises(ProjectError) as caught:
        action()
    for name in names:
        assert name in str(caught.value), f"{name!r} not in {caught.value}"
    assert catalogue_state(project) == state
    assert files_on_disk(project.root) == disk


# -- import_folder -----------------------------------------------------------------------------------------


def test_import_folder_groups_series_and_reads_every_format(project: LocalProject, folder: Path) -> None:
    added = import_folder(project, folder)
    summary = [(r.filename, r.metadata["format"], list(r.metadata["shape"]), len(r.files)) for r in added]
    # Sorted by path; DICOM grouped per (folder, SeriesInstanceUID), the group's name is its folder.
    assert summary == [
        ("a.png", "png", [1, 4, 6], 1),
        ("b.jpg", "jpeg", [3, 8, 10], 1),
        ("ct", "dicom", [1, 3, 4, 5], 3),
        ("mixed", "dicom", [1, 2, 4, 7], 2),
        ("mixed", "dicom", [1, 2, 3, 5], 2),
        ("scans/c.png", "png", [1, 3, 3], 1),
        ("vol.nii.gz", "nifti", [1, 3, 5, 6], 1),
    ]
    assert project.resources() == added
    by_name = {(r.filename, r.metadata["height"]): r for r in added}
    # Each series resource holds exactly the bytes of its own files, in their sorted order.
    series_a = by_name[("mixed", 4)]
    assert [project.read_bytes(f) for f in series_a.files] == [
        (folder / "mixed" / name).read_bytes() for name in ("img0.dcm", "img2.dcm")
    ]
    series_b = by_name[("mixed", 3)]
    assert [project.read_bytes(f) for f in series_b.files] == [
        (folder / "mixed" / name).read_bytes() for name in ("img1.dcm", "img3.dcm")
    ]
    ct = by_name[("ct", 4)]
    assert [project.read_bytes(f) for f in ct.files] == [
        (folder / "ct" / f"slice{i:03d}.dcm").read_bytes() for i in range(3)
    ]
    assert project.annotations() == []


def test_import_folder_without_grouping_adds_each_dicom_file(project: LocalProject, folder: Path) -> None:
    added = import_folder(project, folder, group_dicom_series=False)
    assert len(added) == 4 + 3 + 4
    assert all(len(r.files) == 1 for r in added)


def test_import_folder_labels_csv(project: LocalProject, folder: Path) -> None:
    labels = folder / "labels.csv"  # inside the folder: it must not be imported as a file
    labels.write_text("filename,label_1,label_2\nscans/c.png,rare,\nct,contrast,axial\nmixed,,dicom\n")
    added = import_folder(project, folder, labels_csv=labels)
    assert "labels.csv" not in {r.filename for r in added}
    assert _labels(project) == {
        "scans/c.png": ["rare"],
        "ct": ["axial", "contrast"],
        "mixed": ["dicom", "dicom"],  # both series of mixed/ are that folder
    }


def test_import_folder_labels_csv_top_level_file_gets_each_label_once(
    project: LocalProject, folder: Path, tmp_path: Path
) -> None:
    labels = tmp_path / "outside.csv"
    labels.write_text("filename,l1,l2\na.png,cat,dog\nvol.nii.gz,brain,\nb.jpg,,colour\n")
    import_folder(project, folder, labels_csv=labels)
    assert _labels(project) == {"a.png": ["cat", "dog"], "vol.nii.gz": ["brain"], "b.jpg": ["colour"]}


def test_import_folder_labels_csv_without_header(project: LocalProject, folder: Path, tmp_path: Path) -> None:
    labels = tmp_path / "plain.csv"
    labels.write_text("scans/c.png,first,second,third\n\nct,x\n")
    import_folder(project, folder, labels_csv=labels, annotator=IMPORTER)
    assert _labels(project) == {"scans/c.png": ["first", "second", "third"], "ct": ["x"]}


def test_import_folder_into_a_project_that_has_data(project: LocalProject, folder: Path, tmp_path: Path) -> None:
    first = project.add_resource(write_png(tmp_path / "old.png", gradient((2, 2))))
    project.assign_split([first.id], "train", at="2024-01-01T00:00:00Z")
    added = import_folder(project, folder / "scans")
    assert [r.id for r in project.resources()] == [first.id, *(r.id for r in added)]
    assert [a.resource_id for a in project.split_assignments()] == [first.id]


def test_import_folder_labels_naming_a_missing_file(project: LocalProject, folder: Path, tmp_path: Path) -> None:
    project.add_resource(write_png(tmp_path / "old.png", gradient((2, 2))))
    labels = tmp_path / "labels.csv"
    labels.write_text("filename,label\na.png,ok\nghost.png,lost\n")
    _refused(project, lambda: import_folder(project, folder, labels_csv=labels), "ghost.png", "labels.csv")


def test_import_folder_unknown_file_type(project: LocalProject, folder: Path) -> None:
    (folder / "scans" / "notes.txt").write_text("hello")
    _refused(project, lambda: import_folder(project, folder), "notes.txt")


def test_import_folder_unreadable_file_undoes_everything(project: LocalProject, folder: Path, tmp_path: Path) -> None:
    # zz.png sorts last, so everything else is added (with its labels) before it fails.
    (folder / "zz.png").write_bytes(b"not a png at all" * 10)
    labels = tmp_path / "labels.csv"
    labels.write_text("scans/c.png,cat\nct,contrast\n")
    project.add_resource(write_png(tmp_path / "old.png", gradient((2, 2))), resource_id="old")
    project.add_annotation("old", "keep", "label", annotation_id="keep")
    _refused(project, lambda: import_folder(project, folder, labels_csv=labels), "zz.png")
    assert [r.id for r in project.resources(include_deleted=True)] == ["old"]
    assert {p.split("/")[0] for p in files_on_disk(project.root)} == {"project.sqlite", "resources"}


def test_import_folder_missing_folder(project: LocalProject, tmp_path: Path) -> None:
    _refused(project, lambda: import_folder(project, tmp_path / "absent"), "absent")


# -- import_msd --------------------------------------------------------------------------------------------

MSD_SHAPE = (6, 5, 3)  # stored (X,Y,Z)
MSD_AFFINE = np.diag([1.5, 1.5, 3.0, 1.0])


def _label_maps() -> dict[str, np.ndarray[Any, Any]]:
    first = np.zeros(MSD_SHAPE, np.uint8)
    first[1:3, 1:4, 0] = 1
    first[3:5, 2:4, 1:3] = 2
    first[0, 0, 2] = 1
    second = np.zeros(MSD_SHAPE, np.uint8)  # no edema in this case
    second[4, 4, 0] = 2
    return {"case_001": first, "case_002": second}


def _write_msd(root: Path, *, channels: int = 2) -> dict[str, np.ndarray[Any, Any]]:
    maps = _label_maps()
    image_shape = (*MSD_SHAPE, channels) if channels > 1 else MSD_SHAPE
    for case, labelmap in maps.items():
        write_nifti(root / "imagesTr" / f"{case}.nii.gz", gradient(image_shape, np.int16), MSD_AFFINE)
        write_nifti(root / "labelsTr" / f"{case}.nii.gz", labelmap, MSD_AFFINE)
    write_nifti(root / "imagesTs" / "case_003.nii.gz", gradient(image_shape, np.int16), MSD_AFFINE)
    manifest = {
        "name": "Task01_Tiny",
        "modality": {"0": "FLAIR", "1": "T1w"},
        "labels": {"0": "background", "1": "edema", "2": "tumour"},
        "numTraining": 2,
        "numTest": 1,
        "training": [{"image": f"./imagesTr/{case}.nii.gz", "label": f"./labelsTr/{case}.nii.gz"} for case in maps],
        "test": ["./imagesTs/case_003.nii.gz"],
    }
    (root / "dataset.json").write_text(json.dumps(manifest))
    return maps


@pytest.mark.parametrize("channels", [1, 2])
def test_import_msd(project: LocalProject, tmp_path: Path, channels: int) -> None:
    maps = _write_msd(tmp_path / "Task01", channels=channels)
    added = import_msd(project, tmp_path / "Task01")
    assert [r.filename for r in added] == ["case_001.nii.gz", "case_002.nii.gz", "case_003.nii.gz"]
    assert all(list(r.metadata["shape"]) == [channels, 3, 5, 6] for r in added)
    ids = {r.filename.split(".")[0]: r.id for r in added}

    (worklist,) = project.worklists()
    assert worklist.name == "Task01_Tiny"
    assert worklist.annotators == (MSD_ANNOTATOR,)
    assert worklist.specs == (
        LabelSpec(type="segmentation", identifier="edema", index=1),
        LabelSpec(type="segmentation", identifier="tumour", index=2),
    )
    assert project.segmentation_groups(worklist.id) == {
        "edema": {"index": 1, "color": None},
        "tumour": {"index": 2, "color": None},
    }

    codes = {"edema": 1, "tumour": 2}
    found: dict[tuple[str, str], np.ndarray[Any, Any]] = {}
    for annotation in project.annotations():
        assert annotation.annotation_type == "segmentation" and annotation.scope == "image"
        assert annotation.created_by == MSD_ANNOTATOR and annotation.annotation_worklist_id == worklist.id
        data, affine = read_nifti(project.read_bytes(annotation.file or ""))
        np.testing.assert_allclose(affine, MSD_AFFINE)
        found[(annotation.resource_id, annotation.identifier)] = data
    # One segmentation per label present in the case's map, none for an absent label or the background.
    assert set(found) == {(ids["case_001"], "edema"), (ids["case_001"], "tumour"), (ids["case_002"], "tumour")}
    for (rid, label), data in found.items():
        case = next(c for c, i in ids.items() if i == rid)
        np.testing.assert_array_equal(data, (maps[case] == codes[label]).astype(np.uint8))

    now = {(a.resource_id, a.split_name) for a in project.split_assignments()}
    assert now == {(ids["case_001"], "train"), (ids["case_002"], "train"), (ids["case_003"], "test")}


def test_import_msd_manifest_listing_a_missing_file(project: LocalProject, tmp_path: Path) -> None:
    root = tmp_path / "Task02"
    _write_msd(root)
    (root / "labelsTr" / "case_002.nii.gz").unlink()
    project.add_resource(write_png(tmp_path / "old.png", gradient((2, 2))))
    _refused(project, lambda: import_msd(project, root), "case_002.nii.gz")


def test_import_msd_label_map_of_the_wrong_shape_undoes_everything(project: LocalProject, tmp_path: Path) -> None:
    # The worklist is added before the cases: a case that fails must take it away again.
    root = tmp_path / "Task03"
    _write_msd(root)
    write_nifti(root / "labelsTr" / "case_002.nii.gz", np.ones((6, 5, 4), np.uint8), MSD_AFFINE)
    _refused(project, lambda: import_msd(project, root), "shape")


def test_import_msd_error_names_the_failing_case_file(project: LocalProject, tmp_path: Path) -> None:
    # The resource id in the message belongs to a resource that the failed import has just erased, so the
    # error must name the case's file for the user to find the culprit.
    root = tmp_path / "Task03"
    _write_msd(root)
    write_nifti(root / "labelsTr" / "case_002.nii.gz", np.ones((6, 5, 4), np.uint8), MSD_AFFINE)
    with pytest.raises(ProjectError, match="case_002"):
        import_msd(project, root)


def test_import_msd_corrupt_label_map_undoes_everything(project: LocalProject, tmp_path: Path) -> None:
    root = tmp_path / "Task04"
    _write_msd(root)
    (root / "labelsTr" / "case_002.nii.gz").write_bytes(b"\x1f\x8b broken gzip")
    _refused(project, lambda: import_msd(project, root), "case_002.nii.gz")


@pytest.mark.parametrize(
    ("manifest", "match"),
    [
        (None, "dataset.json"),
        ("{not json", "malformed"),
        ('{"training": []}', "malformed"),
        ('{"labels": {"x": "bad code"}}', "malformed"),
    ],
)
def test_import_msd_bad_manifest(project: LocalProject, tmp_path: Path, manifest: str | None, match: str) -> None:
    root = tmp_path / "Task05"
    root.mkdir()
    if manifest is not None:
        (root / "dataset.json").write_text(manifest)
    _refused(project, lambda: import_msd(project, root), match)
