"""The ``datamint-pipes`` project subcommands, run in-process through ``cli.main``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _factories import catalogue_state, gradient, read_png, write_dicom_series, write_nifti, write_png

from datamint_pipes.cli import main
from datamint_pipes.model import LabelSpec
from datamint_pipes.sources.local import LocalProject

T1, T2 = "2024-02-01T10:00:00Z", "2024-02-02T10:00:00Z"


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Any]:
    src = tmp_path / "src"
    mask = np.zeros((4, 6), np.uint8)
    mask[1:3, 2:5] = 1
    return {
        "png": write_png(src / "scan.png", gradient((4, 6))),
        "png2": write_png(src / "other.png", gradient((2, 3))),
        "nifti": write_nifti(src / "vol.nii.gz", gradient((6, 5, 3), np.int16)),
        "series": write_dicom_series(src / "series", gradient((3, 4, 7), np.uint16)),
        "mask": write_png(src / "mask.png", mask),
        "mask_array": mask,
    }


def _run(capsys: pytest.CaptureFixture[str], *argv: Any) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def proj(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    folder = tmp_path / "proj"
    code, out, err = _run(capsys, "create", folder, "--name", "cli-demo", "--description", "made by the CLI")
    assert (code, err) == (0, "")
    assert "cli-demo" in out
    return folder


def test_create(proj: Path) -> None:
    project = LocalProject.open(proj)
    assert project.name == "cli-demo"
    assert project.project.description == "made by the CLI"
    assert project.resources() == []


def test_create_twice_is_an_error(proj: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(capsys, "create", proj)
    assert code == 2 and out == ""
    assert "already exists" in err and str(proj) in err


def test_add_single_files_and_a_series(proj: Path, files: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(
        capsys, "add", proj, files["png"], "--id", "r1", "--tag", "chest", "--tag", "pa", "--patient-id", "P9"
    )
    assert (code, err) == (0, "")
    assert out.splitlines() == ["r1\tscan.png\t[1, 4, 6]"]

    code, out, _ = _run(capsys, "add", proj, *files["series"], "--series", "--id", "ct", "--filename", "chest-ct")
    assert code == 0 and out.splitlines() == ["ct\tchest-ct\t[1, 3, 4, 7]"]

    code, out, _ = _run(capsys, "add", proj, files["nifti"], files["png2"])
    assert code == 0
    lines = [line.split("\t") for line in out.splitlines()]
    assert [(name, shape) for _id, name, shape in lines] == [("vol.nii.gz", "[1, 3, 5, 6]"), ("other.png", "[1, 2, 3]")]

    resources = LocalProject.open(proj).resources()
    assert [r.filename for r in resources] == ["scan.png", "chest-ct", "vol.nii.gz", "other.png"]
    r1 = resources[0]
    assert (r1.id, r1.tags, r1.patient_id) == ("r1", ("chest", "pa"), "P9")
    assert resources[1].id == "ct" and len(resources[1].files) == 3 and resources[1].frame_count == 3
    assert [r.id for r in resources[2:]] == [line[0] for line in lines]


def test_add_errors_exit_2_and_change_nothing(
    proj: Path, files: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run(capsys, "add", proj, files["png"], "--id", "r1")[0] == 0
    before = catalogue_state(LocalProject.open(proj))
    (tmp_path / "notes.txt").write_text("text")
    cases = [
        ((files["png"], "--id", "r1"), "r1"),  # duplicate id
        ((tmp_path / "absent.png",), "absent.png"),
        ((tmp_path / "notes.txt",), "notes.txt"),
        ((files["png"], files["png2"], "--id", "x"), "--id"),
    ]
    for extra, needle in cases:
        code, _, err = _run(capsys, "add", proj, *extra)
        assert code == 2, extra
        assert err.startswith("datamint-pipes: error:") and needle in err, err
    code, _, err = _run(capsys, "add", tmp_path / "no-project", files["png"])
    assert code == 2 and "no-project" in err
    assert catalogue_state(LocalProject.open(proj)) == before


def test_annotate(proj: Path, files: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    _run(capsys, "add", proj, files["png"], "--id", "img")
    _run(capsys, "add", proj, files["nifti"], "--id", "vol")

    code, out, err = _run(capsys, "annotate", proj, "img", "pneumonia", "--author", "a@x")
    assert (code, err) == (0, "")
    label_id = out.strip()
    code, out, _ = _run(capsys, "annotate", proj, "img", "view", "--type", "category", "--value", "PA")
    category_id = out.strip()
    code, out, _ = _run(
        capsys, "annotate", proj, "img", "lung", "--type", "segmentation", "--mask", files["mask"], "--author", "b@x"
    )
    assert code == 0
    seg_id = out.strip()
    code, out, _ = _run(
        capsys, "annotate", proj, "vol", "nodule", "--type", "square", "--box", "1", "2", "4", "3", "--frame", "2"
    )
    assert code == 0
    box_id = out.strip()

    project = LocalProject.open(proj)
    by_id = {a.id: a for a in project.annotations()}
    assert list(by_id) == [label_id, category_id, seg_id, box_id]
    label = by_id[label_id]
    assert (label.identifier, label.annotation_type, label.scope) == ("pneumonia", "label", "image")
    assert label.created_by == "a@x"
    assert (by_id[category_id].annotation_type, by_id[category_id].text_value) == ("category", "PA")
    seg = by_id[seg_id]
    assert (seg.annotation_type, seg.created_by, seg.scope) == ("segmentation", "b@x", "image")
    np.testing.assert_array_equal(read_png(project.read_bytes(seg.file or "")), files["mask_array"])
    box = by_id[box_id]
    assert (box.annotation_type, box.scope, box.frame_index) == ("square", "frame", 2)
    assert box.geometry == {"points": [[1.0, 2.0, 2], [4.0, 2.0, 2], [1.0, 3.0, 2], [4.0, 3.0, 2]]}


def test_annotate_errors_exit_2(proj: Path, files: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    _run(capsys, "add", proj, files["png"], "--id", "img")
    before = catalogue_state(LocalProject.open(proj))
    bad_mask = write_png(files["png"].parent / "small.png", np.ones((2, 2), np.uint8))
    cases = [
        (("ghost", "x"), "ghost"),
        (("img", "x", "--mask", files["mask"]), "img"),  # a label with a mask
        (("img", "x", "--type", "segmentation"), "img"),  # a segmentation without one
        (("img", "x", "--type", "segmentation", "--mask", bad_mask), "img"),
        (("img", "x", "--frame", "5"), "frame"),
    ]
    for extra, needle in cases:
        code, out, err = _run(capsys, "annotate", proj, *extra)
        assert (code, out) == (2, ""), extra
        assert needle in err, err
    assert catalogue_state(LocalProject.open(proj)) == before


def test_worklist(proj: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    specs_file = tmp_path / "specs.json"
    specs_file.write_text(json.dumps([{"type": "segmentation", "identifier": "liver", "color": [0, 255, 0, 255]}]))
    code, out, err = _run(
        capsys,
        "worklist",
        proj,
        "abdomen",
        "--specs",
        specs_file,
        "--label",
        "normal",
        "--frame-label",
        "motion",
        "--category",
        "phase=arterial,venous",
        "--segmentation",
        "spleen",
        "--segmentation",
        "tumour=9",
        "--annotator",
        "a@x",
        "--annotator",
        "b@x",
    )
    assert (code, err) == (0, "")
    (worklist,) = LocalProject.open(proj).worklists()
    assert worklist.id == out.strip()
    assert worklist.name == "abdomen" and worklist.annotators == ("a@x", "b@x")
    assert worklist.specs == (
        LabelSpec("segmentation", "liver", color=(0, 255, 0, 255), index=1),
        LabelSpec("label", "normal"),
        LabelSpec("label", "motion", scope="frame"),
        LabelSpec("category", "phase", values=("arterial", "venous")),
        LabelSpec("segmentation", "spleen", index=2),
        LabelSpec("segmentation", "tumour", index=9),
    )
    code, _, err = _run(capsys, "worklist", proj, "bad", "--segmentation", "a=1", "--segmentation", "b=1")
    assert code == 2 and "unique" in err
    assert len(LocalProject.open(proj).worklists()) == 1


def test_split(proj: Path, files: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    _run(capsys, "add", proj, files["png"], "--id", "a")
    _run(capsys, "add", proj, files["png2"], "--id", "b")
    assert _run(capsys, "split", proj, "train", "a", "b", "--at", T1) == (0, "", "")
    assert _run(capsys, "split", proj, "-", "a", "--at", T2)[0] == 0
    project = LocalProject.open(proj)
    history = project.split_assignments(include_history=True)
    rows = [(s.resource_id, s.split_name, s.created_at, s.deleted_at) for s in history]
    assert rows == [("a", "train", T1, T2), ("b", "train", T1, None)]
    assert {s.resource_id for s in project.split_assignments(as_of=T1)} == {"a", "b"}
    assert {s.resource_id for s in project.split_assignments(as_of=T2)} == {"b"}

    before = catalogue_state(project)
    for argv, needle in [
        (("train", "ghost"), "ghost"),
        (("train", "a", "--at", "soon"), "soon"),
        (("val", "b", "--at", "2024-01-01T00:00:00Z"), "b"),
    ]:
        code, _, err = _run(capsys, "split", proj, *argv)
        assert code == 2 and needle in err, err
    assert catalogue_state(LocalProject.open(proj)) == before


def test_import_folder_and_info(
    proj: Path, files: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    incoming = tmp_path / "incoming"
    write_png(incoming / "imgs" / "x1.png", gradient((4, 4)))
    write_png(incoming / "imgs" / "x2.png", gradient((4, 4)))
    write_dicom_series(incoming / "ct", gradient((2, 4, 5), np.uint16))
    labels = tmp_path / "labels.csv"
    labels.write_text("filename,label\nimgs/x1.png,skip\nct,contrast\n")
    code, out, err = _run(capsys, "import-folder", proj, incoming, "--labels", labels)
    assert (code, err) == (0, "")
    assert out.strip() == "imported 3 resources into cli-demo"

    project = LocalProject.open(proj)
    ids = {r.filename: r.id for r in project.resources()}
    project.add_annotation(ids["imgs/x2.png"], "lesion", "segmentation", mask=np.ones((4, 4)), created_by="rad@x")
    project.assign_split([ids["imgs/x1.png"], ids["ct"]], "train", at=T1)
    project.assign_split([ids["imgs/x2.png"]], "test", at=T1)
    project.add_worklist("wl", [{"type": "label", "identifier": "skip"}])

    code, out, err = _run(capsys, "info", proj, "--json")
    assert (code, err) == (0, "")
    summary = json.loads(out)
    assert summary["project"] == "cli-demo" and summary["id"] == project.id
    assert summary["resources"] == 3 and summary["annotations"] == 3
    assert summary["by_format"] == {"png": 2, "dicom": 1}
    assert summary["by_kind"] == {"image": 2, "volume": 1}
    assert summary["by_annotator"] == {"importer@datamint-pipes": 2, "rad@x": 1}
    assert summary["by_label"] == {"label:skip": 1, "label:contrast": 1, "segmentation:lesion": 1}
    assert summary["by_split"] == {"train": 2, "test": 1}
    assert summary["worklists"] == ["wl"]

    code, out, err = _run(capsys, "info", proj)
    assert (code, err) == (0, "")
    assert "resources: 3" in out and "annotations: 3" in out
    assert "dicom: 1, png: 2" in out
    assert "test: 1, train: 2" in out
    assert "wl" in out


def test_info_on_an_empty_project_and_by_name(
    proj: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DATAMINT_PIPES_HOME", str(tmp_path))
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # "proj" must resolve through the store root, not the cwd
    code, out, _ = _run(capsys, "info", "proj", "--json")
    assert code == 0
    summary = json.loads(out)
    assert (summary["resources"], summary["annotations"], summary["by_split"]) == (0, 0, {})


def test_import_folder_error_exits_2(proj: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    incoming = tmp_path / "incoming"
    write_png(incoming / "ok.png", gradient((4, 4)))
    (incoming / "readme.txt").write_text("x")
    code, _, err = _run(capsys, "import-folder", proj, incoming)
    assert code == 2 and "readme.txt" in err
    assert LocalProject.open(proj).resources(include_deleted=True) == []


def test_info_of_a_missing_project_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(capsys, "info", tmp_path / "nowhere")
    assert code == 2 and out == "" and "nowhere" in err


def test_import_msd(proj: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    task = tmp_path / "Task09"
    labelmap = np.zeros((4, 5, 2), np.uint8)
    labelmap[1, 1, 0] = 1
    write_nifti(task / "imagesTr" / "c1.nii.gz", gradient((4, 5, 2), np.int16))
    write_nifti(task / "labelsTr" / "c1.nii.gz", labelmap)
    (task / "dataset.json").write_text(
        json.dumps(
            {
                "name": "Tiny",
                "labels": {"0": "background", "1": "organ"},
                "training": [{"image": "./imagesTr/c1.nii.gz", "label": "./labelsTr/c1.nii.gz"}],
                "test": [],
            }
        )
    )
    code, out, err = _run(capsys, "import-msd", proj, task)
    assert (code, err) == (0, "")
    assert out.strip() == "imported 1 resources into cli-demo"
    project = LocalProject.open(proj)
    assert [a.identifier for a in project.annotations()] == ["organ"]
    assert [w.name for w in project.worklists()] == ["Tiny"]
    code, _, err = _run(capsys, "import-msd", proj, tmp_path / "nothing")
    assert code == 2 and "dataset.json" in err
