"""Round trips of every entity of the local project store, and every way an edit can be refused.

Expected values are worked out from the files the tests write (their stored shape and the documented
decoded layout), never read back from the store's own output.
"""

from __future__ import annotations

import contextlib
import uuid
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pytest
from _factories import (
    catalogue_state,
    files_on_disk,
    gradient,
    read_nifti,
    read_png,
    write_dicom_series,
    write_jpeg,
    write_nifti,
    write_png,
)

from datamint_pipes.errors import DatamintPipesError, ProjectError
from datamint_pipes.model import Annotation, LabelSpec, SplitAssignment, Worklist
from datamint_pipes.sources.local import CATALOGUE, LocalProject, open_project, store_root

# Sizes chosen all different, so a swapped axis shows up as a wrong shape.
PNG_H, PNG_W = 4, 6
NII_X, NII_Y, NII_Z = 6, 5, 3  # decoded (C,N,H,W) = (1, Z, Y, X)
DCM_N, DCM_ROWS, DCM_COLS = 3, 4, 7  # decoded (1, N, Rows, Columns)
NII_AFFINE = np.array([[0.8, 0.0, 0.0, -10.0], [0.0, 0.9, 0.0, 5.0], [0.0, 0.0, 2.5, 1.0], [0.0, 0.0, 0.0, 1.0]])
INDEX_AFFINE = np.diag([-1.0, -1.0, 1.0, 1.0])  # documented storage of non-NIfTI volume masks (_masks.py)

T0 = "2024-01-01T00:00:00Z"


@pytest.fixture
def inputs(tmp_path: Path) -> dict[str, Any]:
    """Source files outside any project: a gray PNG, an RGB PNG, a JPEG, a NIfTI volume, a DICOM series."""
    src = tmp_path / "inputs"
    series = write_dicom_series(src / "ct_series", gradient((DCM_N, DCM_ROWS, DCM_COLS), np.uint16) * 7)
    return {
        "png": write_png(src / "scan.png", gradient((PNG_H, PNG_W))),
        "rgb": write_png(src / "photo.png", gradient((PNG_H, PNG_W, 3))),
        "jpeg": write_jpeg(src / "photo.jpg", gradient((8, 16, 3))),
        "nifti": write_nifti(src / "brain.nii.gz", gradient((NII_X, NII_Y, NII_Z), np.int16), NII_AFFINE),
        "series": series,
    }


@pytest.fixture
def project(tmp_path: Path) -> LocalProject:
    return LocalProject.create(tmp_path / "proj", "demo", description="a test project", created_by="lead@x")


@pytest.fixture
def filled(project: LocalProject, inputs: dict[str, Any]) -> LocalProject:
    """A project with a PNG, a NIfTI volume and a DICOM series, one label, a worklist and a split."""
    project.add_resource(inputs["png"], resource_id="png")
    project.add_resource(inputs["nifti"], resource_id="nii")
    project.add_resource(inputs["series"], resource_id="dcm")
    project.add_annotation("png", "fracture", "label", annotation_id="lab1", created_by="ann@x")
    project.add_worklist("wl", [{"type": "segmentation", "identifier": "lesion"}], worklist_id="wl1")
    project.assign_split(["png"], "train", at=T0)
    return project


def _png_from_project(project: LocalProject, relpath: str) -> np.ndarray[Any, Any]:
    return read_png(project.read_bytes(relpath))


# -- projects ----------------------------------------------------------------------------------------------


def test_create_then_open_by_path_keeps_the_project_record(tmp_path: Path) -> None:
    created = LocalProject.create(tmp_path / "p", "Chest X-rays", description="d", created_by="me", project_id="pid")
    assert (tmp_path / "p" / CATALOGUE).is_file()
    reopened = LocalProject.open(tmp_path / "p")
    assert reopened.id == "pid"
    assert reopened.name == "Chest X-rays"
    assert reopened.project.description == "d"
    assert reopened.project.created_by == "me"
    assert reopened.project.resource_count == 0
    assert reopened.project.created_at == created.project.created_at is not None
    assert not reopened.read_only
    assert reopened.resources() == [] and reopened.annotations() == [] and reopened.worklists() == []


def test_create_names_the_project_after_its_folder_by_default(tmp_path: Path) -> None:
    assert LocalProject.create(tmp_path / "knee-mri").name == "knee-mri"


def test_create_refuses_a_folder_that_already_holds_a_project(project: LocalProject) -> None:
    before = files_on_disk(project.root)
    with pytest.raises(ProjectError, match="already exists"):
        LocalProject.create(project.root, "again")
    assert files_on_disk(project.root) == before


def test_create_refuses_a_url() -> None:
    with pytest.raises(ProjectError, match="local folder"):
        LocalProject.create("memory://somewhere")


def test_open_by_file_url(project: LocalProject) -> None:
    opened = LocalProject.open(Path(project.root).as_uri())
    assert opened.id == project.id
    assert open_project(Path(project.root).as_uri()).id == project.id


def test_open_by_file_url_with_percent_escapes(tmp_path: Path) -> None:
    # Path.as_uri() escapes a space as %20: the standard file URL of this folder must open it.
    created = LocalProject.create(tmp_path / "my project", "spaced")
    url = Path(created.root).as_uri()
    assert "%20" in url
    assert LocalProject.open(url).id == created.id


def test_open_by_name_inside_the_store_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("DATAMINT_PIPES_HOME", str(home))
    monkeypatch.chdir(tmp_path)  # no folder named "chest" here, so the name must resolve through the store root
    assert store_root() == home
    created = LocalProject.create(home / "chest", "chest")
    opened = open_project("chest")
    assert opened.id == created.id
    assert Path(opened.root) == (home / "chest").resolve()


def test_store_root_defaults_to_the_xdg_data_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATAMINT_PIPES_HOME", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert store_root() == tmp_path / "xdg" / "datamint-pipes"


def test_open_project_passes_a_project_through(project: LocalProject) -> None:
    assert open_project(project) is project


def test_open_a_folder_without_a_project_names_it(tmp_path: Path) -> None:
    with pytest.raises(ProjectError, match="nothing-here"):
        LocalProject.open(tmp_path / "nothing-here")


def test_open_unknown_name_names_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATAMINT_PIPES_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ProjectError, match="no-such-project"):
        open_project("no-such-project")


def test_project_error_is_a_value_error() -> None:
    assert issubclass(ProjectError, ValueError)
    assert issubclass(ProjectError, DatamintPipesError)


def test_project_behind_an_fsspec_url_opens_read_only(filled: LocalProject, inputs: dict[str, Any]) -> None:
    filled.add_annotation("png", "mass", "segmentation", mask=np.eye(PNG_H, PNG_W, dtype=np.uint8), annotation_id="s1")
    fs = fsspec.filesystem("memory")
    base = f"/proj-{uuid.uuid4().hex}"
    fs.put(filled.root, base, recursive=True)
    try:
        assert fs.exists(f"{base}/{CATALOGUE}")
        for remote in (LocalProject.open(f"memory://{base}"), open_project(f"memory://{base}")):
            assert remote.read_only
            assert remote.id == filled.id and remote.name == filled.name
            assert catalogue_state(remote) == catalogue_state(filled)
            png = remote.resource("png")
            assert remote.read_bytes(png.files[0]) == Path(inputs["png"]).read_bytes()
            assert remote.local_path(png.files[0]) is None
            seg = next(a for a in remote.annotations() if a.id == "s1")
            assert seg.file is not None
            np.testing.assert_array_equal(read_png(remote.read_bytes(seg.file)), np.eye(PNG_H, PNG_W))
            with pytest.raises(ProjectError, match="read-only"):
                remote.add_annotation("png", "other", "label")
            with pytest.raises(ProjectError, match="escapes"):
                remote.open_file("resources/../../x")
        with pytest.raises(ProjectError, match="read-only"):
            LocalProject.open(f"memory://{base}", read_only=False)
        assert catalogue_state(open_project(f"memory://{base}")) == catalogue_state(filled)
    finally:
        fs.rm(base, recursive=True)


def test_url_without_a_project_is_refused() -> None:
    with pytest.raises(ProjectError, match="not a datamint-pipes project"):
        LocalProject.open(f"memory://empty-{uuid.uuid4().hex}")


# -- resources ---------------------------------------------------------------------------------------------


def test_png_resource_round_trip(project: LocalProject, inputs: dict[str, Any]) -> None:
    path = Path(inputs["png"])
    resource = project.add_resource(
        path,
        tags=["chest", "frontal"],
        patient_id="P7",
        metadata={"site": "A"},
        created_at=T0,
        created_by="uploader@x",
    )
    assert resource.filename == "scan.png"
    assert resource.mimetype == "image/png"
    assert resource.size == path.stat().st_size
    assert resource.tags == ("chest", "frontal")
    assert resource.patient_id == "P7"
    assert resource.created_at == T0 and resource.created_by == "uploader@x"
    assert resource.files == (f"resources/{resource.id}/scan.png",)
    meta = resource.metadata
    assert meta["site"] == "A"
    assert meta["format"] == "png" and meta["kind"] == "image"
    assert list(meta["shape"]) == [1, PNG_H, PNG_W]
    assert (meta["height"], meta["width"], meta["frame_count"]) == (PNG_H, PNG_W, 1)
    assert list(meta["stored_shape"]) == [PNG_H, PNG_W]
    assert meta["dtype"] == "uint8"
    assert resource.frame_count == 1
    assert not resource.deleted and resource.deleted_at is None
    assert project.read_bytes(resource.files[0]) == path.read_bytes()
    assert Path(project.local_path(resource.files[0]) or "").read_bytes() == path.read_bytes()
    # The catalogue gives back exactly what was recorded, also after reopening.
    assert project.resources() == [resource]
    assert project.resource(resource.id) == resource
    assert LocalProject.open(project.root).resources() == [resource]
    assert project.project.resource_count == 1


def test_rgb_png_and_jpeg_record_three_channels(project: LocalProject, inputs: dict[str, Any]) -> None:
    rgb = project.add_resource(inputs["rgb"])
    jpeg = project.add_resource(inputs["jpeg"])
    assert list(rgb.metadata["shape"]) == [3, PNG_H, PNG_W]
    assert jpeg.mimetype == "image/jpeg"
    assert jpeg.metadata["format"] == "jpeg"
    assert list(jpeg.metadata["shape"]) == [3, 8, 16]


def test_nifti_resource_round_trip(project: LocalProject, inputs: dict[str, Any]) -> None:
    resource = project.add_resource(inputs["nifti"], resource_id="brain-1")
    assert resource.id == "brain-1"
    assert resource.filename == "brain.nii.gz"
    assert resource.mimetype == "application/nifti"
    assert resource.files == ("resources/brain-1/brain.nii.gz",)
    meta = resource.metadata
    assert meta["format"] == "nifti" and meta["kind"] == "volume"
    assert list(meta["shape"]) == [1, NII_Z, NII_Y, NII_X]
    assert list(meta["stored_shape"]) == [NII_X, NII_Y, NII_Z]
    assert resource.frame_count == NII_Z
    assert (meta["height"], meta["width"]) == (NII_Y, NII_X)
    assert project.read_bytes(resource.files[0]) == Path(inputs["nifti"]).read_bytes()
    assert project.resources() == [resource]


def test_dicom_series_becomes_one_resource(project: LocalProject, inputs: dict[str, Any]) -> None:
    paths = inputs["series"]
    resource = project.add_resource(paths, patient_id="P001", tags=["ct"])
    assert resource.filename == "ct_series"  # the series' folder
    assert resource.mimetype == "application/dicom"
    assert len(resource.files) == DCM_N
    assert all(f.startswith(f"resources/{resource.id}/") for f in resource.files)
    assert [project.read_bytes(f) for f in resource.files] == [Path(p).read_bytes() for p in paths]
    assert resource.size == sum(Path(p).stat().st_size for p in paths)
    meta = resource.metadata
    assert meta["format"] == "dicom" and meta["kind"] == "volume"
    assert list(meta["shape"]) == [1, DCM_N, DCM_ROWS, DCM_COLS]
    assert resource.frame_count == DCM_N
    assert (meta["height"], meta["width"]) == (DCM_ROWS, DCM_COLS)
    assert project.resources() == [resource]


def test_single_dicom_file_is_an_image(project: LocalProject, inputs: dict[str, Any]) -> None:
    resource = project.add_resource(inputs["series"][0])
    assert resource.mimetype == "application/dicom"
    assert list(resource.metadata["shape"]) == [1, DCM_ROWS, DCM_COLS]
    assert resource.frame_count == 1


def test_resources_keep_insertion_order_and_deleted_ones_are_hidden(
    project: LocalProject, inputs: dict[str, Any]
) -> None:
    ids = [project.add_resource(inputs[k], resource_id=k).id for k in ("nifti", "png", "rgb")]
    assert [r.id for r in project.resources()] == ids
    project.remove_resource("png", at="2024-03-01T00:00:00Z")
    assert [r.id for r in project.resources()] == ["nifti", "rgb"]
    everything = project.resources(include_deleted=True)
    assert [r.id for r in everything] == ids
    removed = everything[1]
    assert removed.deleted and removed.deleted_at == "2024-03-01T00:00:00Z"
    assert project.project.resource_count == 2
    # Files stay for history.
    assert project.read_bytes(removed.files[0]) == Path(inputs["png"]).read_bytes()


def test_a_foreign_filename_cannot_place_files_outside_the_resource_folder(
    project: LocalProject, inputs: dict[str, Any]
) -> None:
    resource = project.add_resource(inputs["png"], filename="../../evil name.png")
    assert resource.filename == "../../evil name.png"
    (relpath,) = resource.files
    assert relpath.startswith(f"resources/{resource.id}/") and ".." not in relpath
    assert all(p == CATALOGUE or p.startswith(f"resources/{resource.id}/") for p in files_on_disk(project.root))


@pytest.mark.parametrize(
    "resource_id",
    ["../annotations", "a/../../b", "x/y", ".."],
)
def test_a_resource_id_cannot_place_files_outside_resources(
    project: LocalProject, inputs: dict[str, Any], resource_id: str
) -> None:
    try:
        resource = project.add_resource(inputs["png"], resource_id=resource_id)
    except ProjectError:
        assert project.resources(include_deleted=True) == []
        assert set(files_on_disk(project.root)) == {CATALOGUE}
        return
    # Accepted: then its files must live in a folder of their own under resources/.
    root = Path(project.root).resolve()
    for relpath in resource.files:
        full = (root / relpath).resolve()
        assert full.is_relative_to(root / "resources") and full.parent != root / "resources", relpath


@pytest.mark.parametrize("annotation_id", ["../../x", "../other/x", "a/b"])
def test_an_annotation_id_cannot_place_a_mask_outside_its_resource_folder(
    filled: LocalProject, annotation_id: str
) -> None:
    mask = np.ones((PNG_H, PNG_W), np.uint8)
    before = files_on_disk(filled.root)
    try:
        seg = filled.add_annotation("png", "m", "segmentation", mask=mask, annotation_id=annotation_id)
    except ProjectError:
        assert files_on_disk(filled.root) == before
        return
    root = Path(filled.root).resolve()
    full = (root / (seg.file or "")).resolve()
    assert full.is_relative_to(root / "annotations" / "png"), seg.file


# -- annotations -------------------------------------------------------------------------------------------


def test_label_category_and_box_round_trip(filled: LocalProject) -> None:
    label = filled.add_annotation(
        "png", "pneumonia", "label", created_by="a@x", created_at=T0, worklist_id="wl1", annotation_id="L"
    )
    category = filled.add_annotation("png", "view", "category", text_value="PA", created_by="b@x", annotation_id="C")
    points = [[1.0, 1.0, 0], [4.0, 1.0, 0], [1.0, 3.0, 0], [4.0, 3.0, 0]]
    box = filled.add_annotation(
        "nii",
        "nodule",
        "square",
        frame_index=2,
        geometry={"points": points},
        created_by_model="det-v1",
        annotation_id="B",
    )
    assert (label.identifier, label.annotation_type, label.scope) == ("pneumonia", "label", "image")
    assert label.frame_index is None
    assert label.created_by == "a@x" and label.created_at == T0 and label.annotation_worklist_id == "wl1"
    assert label.resource_id == "png" and label.resource_filename == "scan.png"
    assert label.file is None and label.status == "published" and not label.deleted
    assert category.text_value == "PA" and category.value == "PA" and category.is_category()
    assert box.scope == "frame" and box.frame_index == 2 and box.geometry == {"points": points}
    assert box.author == "det-v1"
    stored = {a.id: a for a in LocalProject.open(filled.root).annotations()}
    assert stored["L"] == label and stored["C"] == category and stored["B"] == box
    assert [a.id for a in filled.annotations(["nii"])] == ["B"]
    assert [a.id for a in filled.annotations(["png"])] == ["lab1", "L", "C"]
    grouped = filled.annotations_by_resource()
    assert {k: [a.id for a in v] for k, v in grouped.items()} == {"png": ["lab1", "L", "C"], "nii": ["B"], "dcm": []}


def test_image_segmentation_from_a_png_file(filled: LocalProject, tmp_path: Path) -> None:
    mask = np.zeros((PNG_H, PNG_W), np.uint8)
    mask[1:3, 2:5] = 1
    mask_path = write_png(tmp_path / "m.png", mask)
    seg = filled.add_annotation("png", "lung", "segmentation", mask=mask_path, created_by="a@x", annotation_id="S")
    assert seg.scope == "image" and seg.is_segmentation()
    assert seg.file == "annotations/png/S.png" and seg.associated_file == seg.file
    np.testing.assert_array_equal(_png_from_project(filled, seg.file), mask)
    assert _png_from_project(filled, seg.file).dtype == np.uint8
    assert filled.annotations(["png"])[-1] == seg


def test_image_segmentation_from_an_array(filled: LocalProject) -> None:
    mask = np.zeros((PNG_H, PNG_W), bool)
    mask[0, :] = True
    mask[:, -1] = True
    seg = filled.add_annotation("png", "edge", "segmentation", mask=mask, annotation_id="S")
    stored = _png_from_project(filled, seg.file or "")
    assert stored.dtype == np.uint8
    np.testing.assert_array_equal(stored, mask.astype(np.uint8))


def test_label_valued_mask_keeps_its_values(filled: LocalProject) -> None:
    mask = (np.arange(PNG_H * PNG_W).reshape(PNG_H, PNG_W) % 3).astype(np.int64) * 100
    seg = filled.add_annotation("png", "classes", "segmentation", mask=mask)
    np.testing.assert_array_equal(_png_from_project(filled, seg.file or ""), mask)


def test_fractional_float_mask_keeps_its_foreground(filled: LocalProject) -> None:
    # "nonzero = foreground": a soft mask must either be refused or keep every nonzero pixel as foreground;
    # storing 0.5 as 0 would silently erase the annotation.
    mask = np.zeros((PNG_H, PNG_W), np.float32)
    mask[1:3, 1:3] = 0.5
    try:
        seg = filled.add_annotation("png", "soft", "segmentation", mask=mask)
    except ProjectError:
        return
    np.testing.assert_array_equal(_png_from_project(filled, seg.file or "") != 0, mask != 0)


def test_frame_segmentation_on_a_nifti_volume(filled: LocalProject, tmp_path: Path) -> None:
    mask = np.zeros((NII_Y, NII_X), np.uint8)  # one decoded slice is (H,W) = (Y,X)
    mask[2:4, 1:5] = 1
    from_array = filled.add_annotation("nii", "lesion", "segmentation", frame_index=NII_Z - 1, mask=mask)
    from_file = filled.add_annotation(
        "nii", "lesion", "segmentation", frame_index=0, mask=write_png(tmp_path / "f.png", mask * 255)
    )
    assert from_array.scope == "frame" and from_array.frame_index == NII_Z - 1
    assert from_array.file == f"annotations/nii/{from_array.id}.png"
    np.testing.assert_array_equal(_png_from_project(filled, from_array.file), mask)
    np.testing.assert_array_equal(_png_from_project(filled, from_file.file or ""), mask * 255)


def test_masks_of_a_nifti_stored_with_swapped_axes(project: LocalProject, tmp_path: Path) -> None:
    # Stored axis 0 runs along world y (A), axis 1 along world x (R): the decoded slice is (H,W) = (axis 0,
    # axis 1) = (5, 6) in L,P,S order (decode/nifti.py), so frame masks follow that and volume masks stay stored.
    swapped = np.array([[0.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    path = write_nifti(tmp_path / "swapped.nii.gz", gradient((5, 6, 3), np.int16), swapped)
    resource = project.add_resource(path, resource_id="sw")
    assert list(resource.metadata["shape"]) == [1, 3, 5, 6]
    frame_mask = np.zeros((5, 6), np.uint8)
    frame_mask[0, 5] = 1
    seg = project.add_annotation("sw", "m", "segmentation", frame_index=1, mask=frame_mask)
    np.testing.assert_array_equal(_png_from_project(project, seg.file or ""), frame_mask)
    with pytest.raises(ProjectError, match="sw"):
        project.add_annotation("sw", "m", "segmentation", frame_index=1, mask=frame_mask.T)
    volume_mask = np.zeros((5, 6, 3), np.uint8)
    volume_mask[4, 0, 2] = 1
    seg = project.add_annotation("sw", "m", "segmentation", mask=volume_mask)
    data, affine = read_nifti(project.read_bytes(seg.file or ""))
    np.testing.assert_array_equal(data, volume_mask)
    np.testing.assert_allclose(affine, swapped)


def test_frame_segmentation_on_a_dicom_series(filled: LocalProject) -> None:
    mask = np.zeros((DCM_ROWS, DCM_COLS), np.uint8)
    mask[0, 0] = mask[-1, -1] = 1
    seg = filled.add_annotation("dcm", "calcification", "segmentation", frame_index=1, mask=mask, annotation_id="F")
    assert seg.scope == "frame" and seg.index == 1
    np.testing.assert_array_equal(_png_from_project(filled, seg.file or ""), mask)


def test_volume_segmentation_of_a_nifti_from_file_and_array(filled: LocalProject, tmp_path: Path) -> None:
    mask = np.zeros((NII_X, NII_Y, NII_Z), np.uint8)  # the image file's stored voxel order
    mask[1:4, 2:4, 1] = 1
    mask[5, 0, 2] = 1
    from_file = filled.add_annotation(
        "nii", "tumour", "segmentation", mask=write_nifti(tmp_path / "m.nii.gz", mask, NII_AFFINE), annotation_id="V1"
    )
    from_array = filled.add_annotation("nii", "tumour", "segmentation", mask=mask.astype(bool), annotation_id="V2")
    for seg in (from_file, from_array):
        assert seg.scope == "image"
        assert seg.file == f"annotations/nii/{seg.id}.nii.gz"
        data, affine = read_nifti(filled.read_bytes(seg.file))
        np.testing.assert_array_equal(data, mask)
        assert data.dtype == np.uint8
        np.testing.assert_allclose(affine, NII_AFFINE, atol=1e-5)


def test_volume_segmentation_of_a_dicom_series(filled: LocalProject, tmp_path: Path) -> None:
    mask = np.zeros((DCM_N, DCM_ROWS, DCM_COLS), np.uint8)  # decoded (N,H,W) order
    mask[0, 1, 2] = mask[2, 3, 6] = 1
    seg = filled.add_annotation("dcm", "vessel", "segmentation", mask=mask, annotation_id="V")
    data, affine = read_nifti(filled.read_bytes(seg.file or ""))
    # Stored with voxel axes (W,H,N) and the L,P,S index affine, as _masks.py documents.
    np.testing.assert_array_equal(data.transpose(2, 1, 0), mask)
    np.testing.assert_allclose(affine, INDEX_AFFINE)
    # The same mask given as a NIfTI file in that storage layout is accepted unchanged.
    as_file = write_nifti(tmp_path / "v.nii.gz", mask.transpose(2, 1, 0), INDEX_AFFINE)
    seg2 = filled.add_annotation("dcm", "vessel", "segmentation", mask=as_file)
    np.testing.assert_array_equal(read_nifti(filled.read_bytes(seg2.file or ""))[0].transpose(2, 1, 0), mask)


def test_deleted_annotations_are_kept_for_history(filled: LocalProject) -> None:
    extra = filled.add_annotation("png", "effusion", "label", annotation_id="E")
    filled.delete_annotation("lab1", deleted_by="rev@x", at="2024-05-01T00:00:00Z")
    assert [a.id for a in filled.annotations()] == ["E"]
    everything = filled.annotations(include_deleted=True)
    assert [a.id for a in everything] == ["lab1", "E"]
    gone = everything[0]
    assert gone.deleted and gone.deleted_at == "2024-05-01T00:00:00Z" and gone.deleted_by == "rev@x"
    assert everything[1] == extra
    assert filled.annotations_by_resource()["png"] == [extra]
    assert [a.id for a in filled.annotations_by_resource(include_deleted=True)["png"]] == ["lab1", "E"]


def test_annotation_wire_names_round_trip(filled: LocalProject) -> None:
    filled.add_annotation("png", "view", "category", text_value="AP", created_by="a@x", annotation_id="C")
    filled.add_annotation(
        "dcm", "calc", "segmentation", frame_index=2, mask=np.ones((DCM_ROWS, DCM_COLS)), annotation_id="F"
    )
    filled.delete_annotation("lab1", deleted_by="rev@x", at=T0)
    for annotation in filled.annotations(include_deleted=True):
        wire = annotation.to_dict(wire=True)
        assert {"type", "name", "added_by", "index", "value"} <= set(wire)
        assert not {"annotation_type", "identifier", "created_by", "frame_index", "text_value"} & set(wire)
        assert wire["type"] == annotation.annotation_type and wire["name"] == annotation.identifier
        assert wire["added_by"] == annotation.created_by and wire["index"] == annotation.frame_index
        assert wire["value"] == annotation.text_value
        assert Annotation.from_dict(wire) == annotation
        assert Annotation.from_dict(annotation.to_dict()) == annotation


def test_annotation_from_server_json() -> None:
    server = {
        "id": "a1",
        "name": "nodule",
        "type": "segmentation",
        "resource_id": "r1",
        "added_by": "rad@x",
        "index": "4",
        "value": None,
        "file": "annotations/r1/a1.png",
        "created_at": T0,
        "deleted_at": None,
        "geometry": None,
    }
    annotation = Annotation.from_dict(server)
    assert (annotation.identifier, annotation.annotation_type) == ("nodule", "segmentation")
    assert annotation.created_by == "rad@x"
    assert annotation.frame_index == 4 and annotation.scope == "frame"
    assert annotation.geometry == [] and not annotation.deleted
    wire = annotation.to_dict(wire=True)
    assert (wire["name"], wire["type"], wire["added_by"], wire["index"]) == ("nodule", "segmentation", "rad@x", 4)
    deleted = Annotation.from_dict({**server, "index": None, "deleted_at": T0})
    assert deleted.deleted and deleted.scope == "image"


# -- worklists ---------------------------------------------------------------------------------------------


def test_worklist_round_trip_with_segmentation_codes(project: LocalProject) -> None:
    specs: list[Any] = [
        {"type": "label", "identifier": "pneumonia"},
        {"type": "label", "name": "artifact", "scope": "frame", "required": True},
        LabelSpec(type="category", identifier="view", values=("AP", "PA")),
        {"type": "segmentation", "identifier": "lung", "color": [255, 0, 0, 255]},
        {"type": "segmentation", "identifier": "heart"},
        {"type": "segmentation", "identifier": "tumour", "index": 7},
    ]
    worklist = project.add_worklist("chest", specs, annotators=["a@x", "b@x"], worklist_id="W")
    assert worklist.id == "W" and worklist.name == "chest" and worklist.annotators == ("a@x", "b@x")
    assert worklist.segmentation_codes() == {"lung": 1, "heart": 2, "tumour": 7}
    expected_specs = (
        LabelSpec("label", "pneumonia"),
        LabelSpec("label", "artifact", scope="frame", required=True),
        LabelSpec("category", "view", values=("AP", "PA")),
        LabelSpec("segmentation", "lung", color=(255, 0, 0, 255), index=1),
        LabelSpec("segmentation", "heart", index=2),
        LabelSpec("segmentation", "tumour", index=7),
    )
    assert worklist.specs == expected_specs
    assert LocalProject.open(project.root).worklists() == [Worklist("W", "chest", ("a@x", "b@x"), expected_specs)]
    assert project.segmentation_groups("W") == {
        "lung": {"index": 1, "color": [255, 0, 0, 255]},
        "heart": {"index": 2, "color": None},
        "tumour": {"index": 7, "color": None},
    }
    second = project.add_worklist("other", [{"type": "label", "identifier": "x"}])
    assert [w.id for w in project.worklists()] == ["W", second.id]
    assert project.segmentation_groups(second.id) == {}


@pytest.mark.parametrize(
    ("specs", "match"),
    [
        ([{"type": "label", "identifier": "a"}, {"type": "label", "identifier": "a"}], "repeat"),
        (
            [{"type": "segmentation", "identifier": "a", "index": 2}, {"type": "segmentation", "identifier": "b"}],
            "unique",
        ),
        ([{"type": "segmentation", "identifier": "a", "index": 0}], ">= 1"),
    ],
)
def test_bad_worklists_are_refused(filled: LocalProject, specs: list[dict[str, Any]], match: str) -> None:
    before = catalogue_state(filled)
    with pytest.raises(ProjectError, match=match):
        filled.add_worklist("bad", specs)
    assert catalogue_state(filled) == before


def test_duplicate_worklist_id_and_unknown_worklist(filled: LocalProject) -> None:
    before = catalogue_state(filled)
    with pytest.raises(ProjectError, match="wl1"):
        filled.add_worklist("again", [], worklist_id="wl1")
    with pytest.raises(ProjectError, match="nope"):
        filled.segmentation_groups("nope")
    assert catalogue_state(filled) == before


# -- splits ------------------------------------------------------------------------------------------------

T1, T2, T3 = "2024-02-01T10:00:00Z", "2024-02-02T10:00:00Z", "2024-02-03T10:00:00Z"


def _current(project: LocalProject, when: str) -> dict[str, str]:
    pairs = [(a.resource_id, a.split_name) for a in project.split_assignments(as_of=when)]
    assert len(pairs) == len({rid for rid, _ in pairs}), f"a resource is in two splits at {when}: {pairs}"
    return dict(pairs)


def test_split_history_replays_at_any_timestamp(filled: LocalProject) -> None:
    # filled: "png" is in train since T0.
    filled.assign_split(["nii", "dcm"], "train", at=T1, by="a@x")
    filled.assign_split(["nii"], "val", at=T2, by="b@x")
    filled.unassign_split(["dcm", "nii"], at=T3, by="c@x")
    expected = {
        "2023-12-31T00:00:00Z": {},
        T0: {"png": "train"},
        "2024-02-01T09:59:59.999999Z": {"png": "train"},
        T1: {"png": "train", "nii": "train", "dcm": "train"},
        "2024-02-01T23:00:00Z": {"png": "train", "nii": "train", "dcm": "train"},
        T2: {"png": "train", "nii": "val", "dcm": "train"},
        "2024-02-02T12:00:00+02:00": {"png": "train", "nii": "val", "dcm": "train"},  # = 10:00Z, still T2
        "2024-02-03T09:00:00Z": {"png": "train", "nii": "val", "dcm": "train"},
        T3: {"png": "train"},
        "2030-01-01T00:00:00Z": {"png": "train"},
    }
    for when, wanted in expected.items():
        assert _current(filled, when) == wanted, when
    assert _current(filled, "2024-02-02T10:00:00+00:00") == expected[T2]
    assert {a.resource_id for a in filled.split_assignments(as_of=T2, split_name="val")} == {"nii"}
    assert {(a.resource_id, a.split_name) for a in filled.split_assignments()} == {("png", "train")}

    history = [
        (a.resource_id, a.split_name, a.created_at, a.created_by, a.deleted_at, a.deleted_by)
        for a in filled.split_assignments(include_history=True)
    ]
    assert history == [
        ("png", "train", T0, None, None, None),
        ("nii", "train", T1, "a@x", T2, "b@x"),
        ("dcm", "train", T1, "a@x", T3, "c@x"),
        ("nii", "val", T2, "b@x", T3, "c@x"),
    ]
    assert all(a.project_id == filled.id for a in filled.split_assignments(include_history=True))
    reopened = LocalProject.open(filled.root)
    assert reopened.split_assignments(include_history=True) == filled.split_assignments(include_history=True)


def test_assign_split_returns_the_new_rows(filled: LocalProject) -> None:
    rows = filled.assign_split(["nii", "dcm", "nii"], "test", at=T1, by="me")
    assert [(r.resource_id, r.split_name, r.created_at, r.created_by) for r in rows] == [
        ("nii", "test", T1, "me"),
        ("dcm", "test", T1, "me"),
    ]
    assert all(isinstance(r, SplitAssignment) and r.deleted_at is None for r in rows)
    assert filled.split_assignments(as_of=T1, split_name="test") == rows


def test_reassigning_at_the_same_instant_leaves_one_split(filled: LocalProject) -> None:
    filled.assign_split(["nii"], "train", at=T1)
    filled.assign_split(["nii"], "val", at=T1)
    assert _current(filled, T1)["nii"] == "val"
    assert _current(filled, T2)["nii"] == "val"


def test_a_change_dated_before_the_current_assignment_is_refused(filled: LocalProject) -> None:
    filled.assign_split(["nii"], "train", at=T2)
    before = catalogue_state(filled)
    with pytest.raises(ProjectError, match="nii"):
        filled.assign_split(["nii"], "val", at=T1)
    with pytest.raises(ProjectError, match="nii"):
        filled.unassign_split(["nii"], at=T1)
    assert catalogue_state(filled) == before


def test_a_back_dated_assignment_never_puts_a_resource_in_two_splits(filled: LocalProject) -> None:
    # assign at T1, unassign at T3, then assign again at T2 < T3: either refused (like any change dated
    # before the resource's latest one), or the history stays consistent.
    filled.assign_split(["nii"], "train", at=T1)
    filled.unassign_split(["nii"], at=T3)
    try:
        filled.assign_split(["nii"], "val", at=T2)
    except ProjectError:
        return
    for when in (T1, T2, "2024-02-02T18:00:00Z", T3):
        _current(filled, when)


def test_bad_split_requests_leave_the_catalogue_unchanged(filled: LocalProject) -> None:
    before = catalogue_state(filled)
    with pytest.raises(ProjectError, match="ghost"):
        filled.assign_split(["nii", "ghost"], "train", at=T1)  # "nii" must not be assigned either
    with pytest.raises(ProjectError, match="ghost"):
        filled.unassign_split(["png", "ghost"], at=T1)
    with pytest.raises(ProjectError, match="non-empty"):
        filled.assign_split(["nii"], "", at=T1)
    with pytest.raises(ProjectError, match="yesterday"):
        filled.assign_split(["nii"], "train", at="yesterday")
    assert catalogue_state(filled) == before


# -- refused edits leave the catalogue and the files unchanged ---------------------------------------------


def _refused(project: LocalProject, action: Any, *names: str) -> ProjectError:
    """Run ``action``; it must raise ProjectError naming every one of ``names``, and change nothing."""
    state, disk = catalogue_state(project), files_on_disk(project.root)
    with pytest.raises(ProjectError) as caught:
        action()
    for name in names:
        assert name in str(caught.value), f"{name!r} not in {caught.value}"
    assert catalogue_state(project) == state
    assert files_on_disk(project.root) == disk
    assert catalogue_state(LocalProject.open(project.root)) == state
    return caught.value


def test_missing_file_is_refused(filled: LocalProject, tmp_path: Path) -> None:
    _refused(filled, lambda: filled.add_resource(tmp_path / "absent.png"), "absent.png")
    _refused(filled, lambda: filled.add_resource([tmp_path / "absent1.dcm", tmp_path / "absent2.dcm"]), "absent1.dcm")


def test_a_folder_is_not_a_file(filled: LocalProject, tmp_path: Path) -> None:
    (tmp_path / "folder.png").mkdir()
    _refused(filled, lambda: filled.add_resource(tmp_path / "folder.png"), "folder.png")


def test_unknown_or_unreadable_files_are_refused(filled: LocalProject, tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not an image\n")
    noise = tmp_path / "noise.png"
    noise.write_bytes(np.random.default_rng(0).integers(0, 256, 300, dtype=np.uint8).tobytes())
    nameless = tmp_path / "blob"
    nameless.write_bytes(b"\x00\x01garbage" * 20)
    empty = tmp_path / "empty.nii.gz"
    empty.write_bytes(b"")
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(Path(write_png(tmp_path / "whole.png", gradient((16, 16)))).read_bytes()[:20])
    for path in (text, noise, nameless, empty, truncated):
        _refused(filled, lambda p=path: filled.add_resource(p), path.name)


def test_bad_dicom_series_are_refused(filled: LocalProject, inputs: dict[str, Any], tmp_path: Path) -> None:
    odd = write_dicom_series(tmp_path / "odd", gradient((2, DCM_ROWS + 1, DCM_COLS), np.uint16))
    _refused(filled, lambda: filled.add_resource([*inputs["series"], *odd], filename="mixed"), "mixed")
    _refused(filled, lambda: filled.add_resource([inputs["series"][0], inputs["png"]], filename="with-png"), "with-png")


def test_duplicate_resource_id_is_refused(filled: LocalProject, inputs: dict[str, Any]) -> None:
    _refused(filled, lambda: filled.add_resource(inputs["rgb"], resource_id="png"), "png")
    # The existing resource's file is intact.
    assert filled.read_bytes(filled.resource("png").files[0]) == Path(inputs["png"]).read_bytes()


def test_duplicate_annotation_id_is_refused(filled: LocalProject) -> None:
    _refused(filled, lambda: filled.add_annotation("nii", "other", "label", annotation_id="lab1"), "lab1")
    seg = filled.add_annotation("png", "m", "segmentation", mask=np.ones((PNG_H, PNG_W)), annotation_id="seg1")
    _refused(
        filled,
        lambda: filled.add_annotation("png", "m", "segmentation", mask=np.zeros((PNG_H, PNG_W)), annotation_id="seg1"),
        "seg1",
    )
    np.testing.assert_array_equal(_png_from_project(filled, seg.file or ""), np.ones((PNG_H, PNG_W)))


def test_annotation_of_unknown_resource_is_refused(filled: LocalProject) -> None:
    _refused(filled, lambda: filled.add_annotation("ghost", "x", "label"), "ghost")


def test_mask_shape_mismatches_are_refused(filled: LocalProject, tmp_path: Path) -> None:
    wrong_2d = np.ones((PNG_W, PNG_H), np.uint8)  # transposed
    _refused(filled, lambda: filled.add_annotation("png", "m", "segmentation", mask=wrong_2d), "png")
    wrong_png = write_png(tmp_path / "wrong.png", np.ones((PNG_H + 1, PNG_W), np.uint8))
    _refused(filled, lambda: filled.add_annotation("png", "m", "segmentation", mask=wrong_png), "png")
    # Frame masks: (H,W) of one slice.
    _refused(
        filled,
        lambda: filled.add_annotation("nii", "m", "segmentation", frame_index=0, mask=np.ones((NII_X, NII_Y))),
        "nii",
    )
    _refused(
        filled,
        lambda: filled.add_annotation("dcm", "m", "segmentation", frame_index=0, mask=np.ones((DCM_COLS, DCM_ROWS))),
        "dcm",
    )
    # Volume masks.
    _refused(
        filled, lambda: filled.add_annotation("nii", "m", "segmentation", mask=np.ones((NII_Z, NII_Y, NII_X))), "nii"
    )
    _refused(
        filled,
        lambda: filled.add_annotation("dcm", "m", "segmentation", mask=np.ones((DCM_N, DCM_COLS, DCM_ROWS))),
        "dcm",
    )
    wrong_nii = write_nifti(tmp_path / "wrong.nii.gz", np.ones((NII_X, NII_Y, NII_Z + 1), np.uint8), NII_AFFINE)
    _refused(filled, lambda: filled.add_annotation("nii", "m", "segmentation", mask=wrong_nii), "nii")
    misaligned = write_nifti(tmp_path / "shifted.nii.gz", np.ones((NII_X, NII_Y, NII_Z), np.uint8), np.eye(4))
    error = _refused(filled, lambda: filled.add_annotation("nii", "m", "segmentation", mask=misaligned), "nii")
    assert "affine" in str(error)


@pytest.mark.parametrize(
    "shape", [(DCM_ROWS, DCM_COLS), (1, DCM_N, DCM_ROWS, DCM_COLS), (DCM_N * DCM_ROWS * DCM_COLS,)]
)
def test_volume_mask_of_the_wrong_rank_is_refused(filled: LocalProject, shape: tuple[int, ...]) -> None:
    # A volume mask of a DICOM series must be (N,H,W); any other rank is a ProjectError naming the resource.
    _refused(filled, lambda: filled.add_annotation("dcm", "m", "segmentation", mask=np.ones(shape)), "dcm")
    _refused(filled, lambda: filled.add_annotation("nii", "m", "segmentation", mask=np.ones(shape)), "nii")


def test_removing_twice_keeps_the_first_deletion(filled: LocalProject) -> None:
    # deleted_at is history (and part of a cached file's version): a second removal must not rewrite it.
    filled.remove_resource("nii", at=T1)
    filled.delete_annotation("lab1", deleted_by="a@x", at=T1)
    with contextlib.suppress(ProjectError):
        filled.remove_resource("nii", at=T2)
    with contextlib.suppress(ProjectError):
        filled.delete_annotation("lab1", deleted_by="b@x", at=T2)
    assert {r.id: r.deleted_at for r in filled.resources(include_deleted=True)}["nii"] == T1
    (gone,) = [a for a in filled.annotations(include_deleted=True) if a.id == "lab1"]
    assert (gone.deleted_at, gone.deleted_by) == (T1, "a@x")


def test_bad_mask_contents_are_refused(filled: LocalProject, tmp_path: Path) -> None:
    rgb = write_png(tmp_path / "rgb.png", np.ones((PNG_H, PNG_W, 3), np.uint8))
    _refused(filled, lambda: filled.add_annotation("png", "m", "segmentation", mask=rgb), "rgb.png")
    _refused(
        filled, lambda: filled.add_annotation("png", "m", "segmentation", mask=tmp_path / "nomask.png"), "nomask.png"
    )
    _refused(
        filled, lambda: filled.add_annotation("png", "m", "segmentation", mask=np.full((PNG_H, PNG_W), 300)), "png"
    )
    _refused(filled, lambda: filled.add_annotation("png", "m", "segmentation", mask=np.full((PNG_H, PNG_W), -1)), "png")
    _refused(
        filled,
        lambda: filled.add_annotation("nii", "m", "segmentation", mask=tmp_path / "nomask.nii.gz"),
        "nomask.nii.gz",
    )


@pytest.mark.parametrize("frame_index", [NII_Z, -1, 100])
def test_frame_index_out_of_range_is_refused(filled: LocalProject, frame_index: int) -> None:
    mask = np.ones((NII_Y, NII_X), np.uint8)
    _refused(
        filled,
        lambda: filled.add_annotation("nii", "m", "segmentation", frame_index=frame_index, mask=mask),
        "nii",
        str(frame_index),
    )


def test_frame_index_of_a_label_is_checked_too(filled: LocalProject) -> None:
    _refused(filled, lambda: filled.add_annotation("dcm", "late", "label", frame_index=DCM_N), "dcm", str(DCM_N))
    _refused(filled, lambda: filled.add_annotation("png", "late", "label", frame_index=1), "png")


def test_mask_on_a_non_segmentation_and_segmentation_without_mask(filled: LocalProject) -> None:
    mask = np.ones((PNG_H, PNG_W), np.uint8)
    _refused(filled, lambda: filled.add_annotation("png", "x", "label", mask=mask, annotation_id="A9"), "png", "A9")
    _refused(filled, lambda: filled.add_annotation("png", "x", "segmentation", annotation_id="A8"), "png", "A8")


def test_unknown_ids_and_bad_timestamps_are_refused(filled: LocalProject) -> None:
    _refused(filled, lambda: filled.remove_resource("ghost"), "ghost")
    _refused(filled, lambda: filled.delete_annotation("ghost-ann"), "ghost-ann")
    _refused(filled, lambda: filled.add_annotation("png", "x", "label", created_at="not-a-time"), "not-a-time")
    _refused(filled, lambda: filled.remove_resource("png", at="31/12/2024"), "31/12/2024")


def test_writes_to_a_read_only_project_are_refused(filled: LocalProject, inputs: dict[str, Any]) -> None:
    ro = LocalProject.open(filled.root, read_only=True)
    assert ro.read_only
    assert catalogue_state(ro) == catalogue_state(filled)
    edits = [
        lambda: ro.add_resource(inputs["rgb"]),
        lambda: ro.remove_resource("png"),
        lambda: ro.add_annotation("png", "x", "label"),
        lambda: ro.add_annotation("png", "x", "segmentation", mask=np.ones((PNG_H, PNG_W))),
        lambda: ro.delete_annotation("lab1"),
        lambda: ro.add_worklist("w", []),
        lambda: ro.assign_split(["nii"], "val"),
        lambda: ro.unassign_split(["png"]),
        lambda: ro.purge_resources(["png"]),
    ]
    for edit in edits:
        _refused(filled, edit, "read-only")


def test_path_traversal_in_open_file_is_refused(filled: LocalProject, tmp_path: Path) -> None:
    (tmp_path / "x").write_bytes(b"secret")
    for relpath in ("resources/../../x", "../x", "/etc/passwd", "annotations/../../../x", ""):
        with pytest.raises(ProjectError):
            filled.open_file(relpath)
    with pytest.raises(ProjectError, match="missing"):
        filled.open_file("resources/png/absent.png")


def test_a_read_only_folder_opens_read_only(filled: LocalProject) -> None:
    # Explicit read_only=True also turns every write down through the same check.
    ro = open_project(filled.root, read_only=True)
    with pytest.raises(ProjectError, match="read-only"):
        ro.assign_split(["nii"], "x")
    assert ro.resources() == filled.resources()
