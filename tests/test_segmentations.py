"""Segmentation loading: instance masks and codes per author, their order, boxes, and every bad-input path.

Expected arrays are written by hand from the masks the tests store, never read back from the loader itself;
the sample projects are cross-checked against the per-annotation :class:`LoadMasks`.
"""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
from _factories import gradient, write_nifti, write_png
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from datamint_pipes.errors import AnnotationError
from datamint_pipes.model import Annotation
from datamint_pipes.sources.local import LocalProject
from datamint_pipes.stages.annotations.segmentations import (
    LoadMasks,
    LoadSegmentations,
    load_boxes,
    load_mask,
    load_segmentations,
)
from datamint_pipes.stages.load import decode_resource

H, W, N = 6, 8, 5  # all different, so a swapped axis shows up as a wrong shape
LPS_AFFINE = np.diag([-1.0, -1.0, 1.0, 1.0])  # stored voxel axes (W,H,N) decode straight to (N,H,W)
T1, T2, T3 = "2024-01-01T00:00:00Z", "2024-01-02T00:00:00Z", "2024-01-03T00:00:00Z"
CODES = {"organ": 1, "lesion": 2, "aorta": 3, "cyst": 2}


def rect(y0: int, y1: int, x0: int, x1: int, shape: tuple[int, int] = (H, W)) -> np.ndarray[Any, Any]:
    """An (H,W) uint8 mask with ones on rows y0:y1, columns x0:x1."""
    mask = np.zeros(shape, np.uint8)
    mask[y0:y1, x0:x1] = 1
    return mask


def shell(n0: int, n1: int) -> np.ndarray[Any, Any]:
    """An (N,H,W) uint8 volume mask: an off-centre block on slices n0:n1."""
    volume = np.zeros((N, H, W), np.uint8)
    volume[n0:n1, 1:4, 2:7] = 1
    return volume


def image_2d(tmp_path: Path, name: str = "p2d") -> tuple[LocalProject, str]:
    project = LocalProject.create(tmp_path / name)
    project.add_resource(write_png(tmp_path / "in" / "img.png", gradient((H, W))), resource_id="img")
    return project, "img"


def image_volume(tmp_path: Path, name: str = "p3d") -> tuple[LocalProject, str]:
    project = LocalProject.create(tmp_path / name)
    data = gradient((W, H, N), np.int16)  # stored (X,Y,Z) = (W,H,N), decoded (1,N,H,W)
    project.add_resource(write_nifti(tmp_path / "in" / "vol.nii.gz", data, LPS_AFFINE), resource_id="vol")
    return project, "vol"


def shape_of(project: LocalProject, rid: str) -> tuple[int, ...]:
    resource = next(r for r in project.resources() if r.id == rid)
    return tuple(decode_resource(project, resource).array.shape)


# -- 2D images --------------------------------------------------------------------------------------------------


def test_2d_instances_per_author_sorted_and_ordered_by_creation(tmp_path: Path) -> None:
    project, rid = image_2d(tmp_path)
    masks = {
        "c2": rect(0, 2, 0, 3),
        "c1": rect(1, 4, 2, 6),
        "c0": rect(5, 6, 0, 8),
        "m1": rect(0, 6, 7, 8),
        "u1": rect(2, 3, 2, 3),
        "a2": rect(3, 5, 3, 5),
        "a1": rect(0, 1, 0, 1),
    }
    add = project.add_annotation
    add(rid, "lesion", "segmentation", created_by="carol", mask=masks["c2"], annotation_id="c2", created_at=T2)
    add(rid, "organ", "segmentation", created_by="carol", mask=masks["c1"], annotation_id="c1", created_at=T1)
    add(rid, "lesion", "segmentation", created_by="carol", mask=masks["c0"], annotation_id="c0")
    add(rid, "lesion", "segmentation", created_by_model="net-v1", mask=masks["m1"], annotation_id="m1", created_at=T1)
    add(rid, "organ", "segmentation", mask=masks["u1"], annotation_id="u1", created_at=T1)
    add(rid, "organ", "segmentation", created_by="alice", mask=masks["a2"], annotation_id="a2", created_at=T1)
    add(rid, "lesion", "segmentation", created_by="alice", mask=masks["a1"], annotation_id="a1", created_at=T1)
    add(rid, "good", "label", created_by="alice")  # not a segmentation: ignored
    # The store stamps every annotation; clear c0's to check that one without a created_at sorts last.
    annotations = [dataclasses.replace(a, created_at=None) if a.id == "c0" else a for a in project.annotations()]

    loaded = load_segmentations(project, annotations, (1, H, W), CODES)

    assert list(loaded.segmentations) == ["alice", "carol", "net-v1", "unknown"]
    assert list(loaded.seg_labels) == list(loaded.segmentations)
    expected = {
        "alice": (["a1", "a2"], [2, 1]),  # same created_at: by id
        "carol": (["c1", "c2", "c0"], [1, 2, 2]),  # by created_at, the one without last
        "net-v1": (["m1"], [2]),
        "unknown": (["u1"], [1]),
    }
    for author, (ids, codes) in expected.items():
        got = loaded.segmentations[author]
        assert got.dtype == np.uint8 and got.shape == (len(ids), H, W)
        np.testing.assert_array_equal(got, np.stack([masks[i] for i in ids]))
        assert loaded.seg_labels[author].dtype == np.int32
        assert loaded.seg_labels[author].tolist() == codes


def test_no_segmentation_gives_empty_dicts(tmp_path: Path) -> None:
    project, rid = image_2d(tmp_path)
    project.add_annotation(rid, "good", "label", created_by="alice")
    assert load_segmentations(project, project.annotations(), (1, H, W), CODES) == ({}, {})
    sample: dict[str, Any] = {"resource_id": rid, "image": np.zeros((1, H, W)), "annotations": project.annotations()}
    out = LoadSegmentations(project, CODES)(sample)  # type: ignore[arg-type]
    assert out["segmentations"] == {} and out["seg_labels"] == {}


def test_multichannel_mask_foreground_is_any_colour_channel(tmp_path: Path) -> None:
    project, rid = image_2d(tmp_path)
    ann = project.add_annotation(rid, "organ", "segmentation", created_by="a", mask=rect(0, 1, 0, 8))
    rgb = np.zeros((H, W, 4), np.uint8)
    rgb[..., 3] = 255  # alpha everywhere: not foreground
    rgb[2, 3, 1] = 200  # green only
    rgb[4, 5, 2] = 7  # blue only
    assert ann.file is not None
    from PIL import Image

    Image.fromarray(rgb, mode="RGBA").save(str(project.local_path(ann.file)), format="PNG")
    expected = np.zeros((H, W), np.uint8)
    expected[2, 3] = expected[4, 5] = 1
    np.testing.assert_array_equal(load_mask(project, ann, (3, H, W)), expected)


# -- volumes: image-scoped NIfTI masks and frame-scoped groups -------------------------------------------------


def test_volume_instances_and_frame_groups_spanning_frames_0_and_3(tmp_path: Path) -> None:
    project, rid = image_volume(tmp_path)
    volume_mask = shell(1, 4)
    f0, f3, f3b, f4, f2 = rect(0, 2, 0, 2), rect(3, 5, 4, 8), rect(0, 1, 7, 8), rect(2, 4, 1, 3), rect(5, 6, 5, 6)
    add = project.add_annotation
    # Listed in a scrambled order on purpose: the result does not depend on it.
    add(rid, "aorta", "segmentation", created_by="alice", frame_index=4, mask=f4, annotation_id="fa4")
    add(rid, "lesion", "segmentation", created_by="alice", frame_index=3, mask=f3, annotation_id="fl3")
    add(rid, "organ", "segmentation", created_by="bob", frame_index=2, mask=f2, annotation_id="fo2")
    add(rid, "lesion", "segmentation", created_by="alice", frame_index=0, mask=f0, annotation_id="fl0")
    add(rid, "cyst", "segmentation", created_by="alice", frame_index=3, mask=f3, annotation_id="fc3")
    add(rid, "lesion", "segmentation", created_by="alice", frame_index=3, mask=f3b, annotation_id="fl3b")
    # NIfTI resource: the whole-volume mask is given in the file's stored voxel order (W,H,N).
    add(rid, "organ", "segmentation", created_by="alice", mask=volume_mask.transpose(2, 1, 0), annotation_id="v1")

    loaded = load_segmentations(project, project.annotations(), (1, N, H, W), CODES)

    assert list(loaded.segmentations) == ["alice", "bob"]
    # image-scoped first; then groups by code, then name: cyst(2) < lesion(2) by name, aorta(3) last.
    assert loaded.seg_labels["alice"].tolist() == [1, 2, 2, 3]
    cyst = np.zeros((N, H, W), np.uint8)
    cyst[3] = f3
    lesion = np.zeros((N, H, W), np.uint8)
    lesion[0] = f0
    lesion[3] = f3 | f3b  # two masks of one frame are OR-ed
    aorta = np.zeros((N, H, W), np.uint8)
    aorta[4] = f4
    np.testing.assert_array_equal(loaded.segmentations["alice"], np.stack([volume_mask, cyst, lesion, aorta]))
    assert not loaded.segmentations["alice"][2][[1, 2, 4]].any()  # the gaps of the 0-and-3 group stay zero
    organ = np.zeros((1, N, H, W), np.uint8)
    organ[0, 2] = f2
    np.testing.assert_array_equal(loaded.segmentations["bob"], organ)
    assert loaded.seg_labels["bob"].tolist() == [1]


@pytest.mark.parametrize(
    "affine",
    [
        np.eye(4),
        np.array([[0, 0, -2.0, 5], [1.5, 0, 0, 0], [0, -1, 0, 3], [0, 0, 0, 1]]),  # oblique storage order
    ],
    ids=["ras", "permuted"],
)
def test_volume_mask_is_normalised_exactly_like_its_image(tmp_path: Path, affine: np.ndarray[Any, Any]) -> None:
    stored = (gradient((7, 4, 3)) % 5 == 0).astype(np.uint8)  # anisotropic, asymmetric
    project = LocalProject.create(tmp_path / "p")
    image_file = write_nifti(tmp_path / "in" / "v.nii", stored.astype(np.int16) * 100, affine)
    project.add_resource(image_file, resource_id="v")
    project.add_annotation("v", "organ", "segmentation", created_by="a", mask=stored)
    image = decode_resource(project, project.resources()[0]).array
    loaded = load_segmentations(project, project.annotations(), image.shape, CODES)
    np.testing.assert_array_equal(loaded.segmentations["a"][0], (image[0] > 0).astype(np.uint8))


# -- boxes ------------------------------------------------------------------------------------------------------


def test_boxes_per_author_with_frames(tmp_path: Path) -> None:
    project, rid = image_volume(tmp_path)
    corners = {"points": [[1, 2, 0], [5, 2, 0], [1, 4, 0], [5, 4, 0]]}
    add = project.add_annotation
    add(rid, "lesion", "square", created_by="b", frame_index=3, geometry=[[6, 1], [2, 5]], annotation_id="b3")
    add(rid, "organ", "square", created_by="b", frame_index=1, geometry=corners, annotation_id="b1")
    add(rid, "organ", "square", created_by="a", geometry=corners, annotation_id="a0", created_at=T3)
    add(rid, "lesion", "square", created_by="b", geometry=[[0, 0], [1, 1]], annotation_id="b0", created_at=T1)

    boxes = load_boxes(project.annotations(), (1, N, H, W), CODES)

    assert list(boxes.boxes) == ["a", "b"]
    np.testing.assert_array_equal(boxes.boxes["a"], np.array([[1, 2, 5, 4]], np.float32))
    np.testing.assert_array_equal(
        boxes.boxes["b"], np.array([[0, 0, 1, 1], [1, 2, 5, 4], [2, 1, 6, 5]], np.float32)
    )  # image-scoped first, then by frame
    assert boxes.boxes["b"].dtype == np.float32
    assert boxes.labels["b"].tolist() == [2, 1, 2] and boxes.labels["b"].dtype == np.int32
    assert boxes.frames["b"].tolist() == [-1, 1, 3] and boxes.frames["a"].tolist() == [-1]

    sample: dict[str, Any] = {"resource_id": rid, "image": np.zeros((1, N, H, W)), "annotations": project.annotations()}
    out = LoadSegmentations(project, CODES, return_boxes=True)(sample)  # type: ignore[arg-type]
    assert out["segmentations"] == {}
    assert out["box_frames"]["b"].tolist() == [-1, 1, 3]  # type: ignore[typeddict-item]
    assert "boxes" not in LoadSegmentations(project, CODES)(sample)  # type: ignore[arg-type]


@pytest.mark.parametrize("geometry", [[], [[1, 2]], {"points": "x"}, [[0, float("nan")], [1, 1]]])
def test_malformed_box_geometry_is_an_annotation_error(tmp_path: Path, geometry: Any) -> None:
    project, rid = image_2d(tmp_path)
    ann = project.add_annotation(rid, "organ", "square", created_by="a", geometry=[[0, 0], [1, 1]], annotation_id="q")
    with pytest.raises(AnnotationError, match="annotation q") as info:
        load_boxes([dataclasses.replace(ann, geometry=geometry)], (1, H, W), CODES)
    assert info.value.resource_id == rid


# -- order independence (property) ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mixed_volume(tmp_path_factory: pytest.TempPathFactory) -> tuple[LocalProject, list[Annotation]]:
    """A volume with image- and frame-scoped masks of three authors, several sharing a created_at."""
    project, rid = image_volume(tmp_path_factory.mktemp("mixed"))
    rng = np.random.default_rng(7)
    times = [T1, T1, T2, None]
    for i in range(14):
        author = ["alice", "bob", None][i % 3]
        label = ["organ", "lesion", "aorta", "cyst"][i % 4]
        if i % 2:
            mask = (rng.random((H, W)) < 0.3).astype(np.uint8)
            project.add_annotation(
                rid, label, "segmentation", created_by=author, frame_index=int(rng.integers(N)), mask=mask
            )
        else:
            volume = (rng.random((N, H, W)) < 0.2).astype(np.uint8)
            project.add_annotation(
                rid,
                label,
                "segmentation",
                created_by=author,
                created_by_model="model" if author is None else None,
                mask=volume.transpose(2, 1, 0),
                created_at=times[i % 4],
                annotation_id=f"img{13 - i:02d}",  # ids sort against insertion order
            )
    return project, project.annotations()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_result_does_not_depend_on_annotation_order(
    mixed_volume: tuple[LocalProject, list[Annotation]], data: st.DataObject
) -> None:
    project, annotations = mixed_volume
    reference = load_segmentations(project, annotations, (1, N, H, W), CODES)
    shuffled = data.draw(st.permutations(annotations))
    got = load_segmentations(project, shuffled, (1, N, H, W), CODES)
    assert list(got.segmentations) == list(reference.segmentations) == ["alice", "bob", "model", "unknown"]
    for author in reference.segmentations:
        np.testing.assert_array_equal(got.segmentations[author], reference.segmentations[author])
        np.testing.assert_array_equal(got.seg_labels[author], reference.seg_labels[author])


# -- bad input --------------------------------------------------------------------------------------------------


def _overwrite(project: LocalProject, annotation: Annotation, payload: bytes | np.ndarray[Any, Any]) -> None:
    assert annotation.file is not None
    path = Path(str(project.local_path(annotation.file)))
    if isinstance(payload, bytes):
        path.write_bytes(payload)
    elif payload.ndim == 2:
        write_png(path.with_suffix(".tmp.png"), payload).replace(path)
    else:
        nib.save(nib.Nifti1Image(payload, LPS_AFFINE), str(path))


def _bad_cases(tmp_path: Path, case: str) -> tuple[LocalProject, list[Annotation], tuple[int, ...], str]:
    """(project, annotations, image shape, id of the offending annotation) for one bad-input case."""
    volume_cases = {"frame_out_of_range", "frame_mask_shape", "volume_mask_shape", "negative_frame"}
    project, rid = image_volume(tmp_path) if case in volume_cases else image_2d(tmp_path)
    shape = (1, N, H, W) if case in volume_cases else (1, H, W)
    good = project.add_annotation(
        rid,
        "organ",
        "segmentation",
        created_by="a",
        mask=shell(0, 2).transpose(2, 1, 0) if len(shape) == 4 else rect(0, 1, 0, 1),
    )
    if case in ("frame_out_of_range", "negative_frame", "frame_mask_shape"):
        bad = project.add_annotation(
            rid, "lesion", "segmentation", created_by="b", frame_index=1, mask=rect(0, 2, 0, 2)
        )
        if case == "frame_mask_shape":
            _overwrite(project, bad, np.ones((H, W + 1), np.uint8))
        else:
            bad = dataclasses.replace(bad, frame_index=N if case == "frame_out_of_range" else -1)
    elif case == "volume_mask_shape":
        bad = project.add_annotation(rid, "lesion", "segmentation", created_by="b", mask=shell(0, 1).transpose(2, 1, 0))
        _overwrite(project, bad, np.ones((W, H, N + 1), np.uint8))
    else:
        bad = project.add_annotation(rid, "lesion", "segmentation", created_by="b", mask=rect(0, 2, 0, 2))
        if case == "mask_shape":
            _overwrite(project, bad, np.ones((H + 1, W), np.uint8))
        elif case == "garbage":
            _overwrite(project, bad, b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 3)
        elif case == "missing_file":
            assert bad.file is not None
            Path(str(project.local_path(bad.file))).unlink()
        elif case == "no_file":
            bad = dataclasses.replace(bad, file=None, associated_file=None)
        elif case == "unknown_label":
            bad = dataclasses.replace(bad, identifier="tumour")
        elif case == "frame_on_2d_image":
            bad = dataclasses.replace(bad, scope="frame", frame_index=0)
        elif case == "bad_created_at":
            bad = dataclasses.replace(bad, created_at="yesterday")
    return project, [good, bad], shape, bad.id


BAD_CASES = [
    "mask_shape",
    "garbage",
    "missing_file",
    "no_file",
    "unknown_label",
    "frame_on_2d_image",
    "bad_created_at",
    "frame_out_of_range",
    "negative_frame",
    "frame_mask_shape",
    "volume_mask_shape",
]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_raises_annotation_error_naming_resource_and_annotation(tmp_path: Path, case: str) -> None:
    project, annotations, shape, bad_id = _bad_cases(tmp_path, case)
    rid = annotations[0].resource_id
    with pytest.raises(AnnotationError) as info:
        load_segmentations(project, annotations, shape, CODES)
    assert info.value.resource_id == rid
    assert f"resource {rid}" in str(info.value) and bad_id in str(info.value)
    assert isinstance(info.value, ValueError)
    if case != "unknown_label" and case != "bad_created_at":
        with pytest.raises(AnnotationError, match=bad_id):  # the per-annotation path says the same
            LoadMasks(project)({"image": np.zeros(shape), "annotations": annotations})  # type: ignore[typeddict-item]


def test_unknown_label_lists_every_unknown_annotation_and_resolve_handles_them(tmp_path: Path) -> None:
    project, rid = image_2d(tmp_path)
    for aid, label in [("x1", "tumour"), ("x2", "edema"), ("x3", "tumour"), ("k1", "organ")]:
        project.add_annotation(rid, label, "segmentation", created_by="a", mask=rect(0, 1, 0, 1), annotation_id=aid)
    with pytest.raises(AnnotationError, match=r"'edema' \(annotations x2\); 'tumour' \(annotations x1, x3\)"):
        load_segmentations(project, project.annotations(), (1, H, W), CODES)
    external = {"edema": 4, "tumour": 5}
    loaded = load_segmentations(project, project.annotations(), (1, H, W), CODES, resolve=external.__getitem__)
    assert loaded.seg_labels["a"].tolist() == [5, 4, 5, 1]
    with pytest.raises(AnnotationError, match=r"'tumour' \(annotations x1, x3\)"):  # the resolver's KeyError
        load_segmentations(project, project.annotations(), (1, H, W), CODES, resolve={"edema": 4}.__getitem__)
    with pytest.raises(AnnotationError, match="1-based"):
        load_segmentations(project, project.annotations(), (1, H, W), {**CODES, "edema": 0, "tumour": 9})


def test_image_shape_must_be_2d_or_3d(tmp_path: Path) -> None:
    project, _ = image_2d(tmp_path)
    with pytest.raises(ValueError, match="image_shape"):
        load_segmentations(project, [], (H, W), CODES)


# -- stages and the sample projects -----------------------------------------------------------------------------


def test_stage_is_picklable_and_does_not_mutate_its_input(tmp_path: Path) -> None:
    project, rid = image_2d(tmp_path)
    project.add_annotation(rid, "organ", "segmentation", created_by="a", mask=rect(0, 3, 0, 3))
    stage = pickle.loads(pickle.dumps(LoadSegmentations(project, CODES, return_boxes=True)))
    image = np.zeros((1, H, W), np.uint8)
    sample: dict[str, Any] = {"resource_id": rid, "image": image, "annotations": project.annotations()}
    before = dict(sample)
    out = stage(sample)  # type: ignore[arg-type]
    assert sample == before and "segmentations" not in sample
    assert out["image"] is image
    np.testing.assert_array_equal(out["segmentations"]["a"], rect(0, 3, 0, 3)[None])


@pytest.mark.parametrize("name", ["sample-images", "sample-volumes", "sample-videos"])
def test_sample_projects_agree_with_per_annotation_masks(sample_root: Path, name: str) -> None:
    project = LocalProject.open(sample_root / name)
    codes = project.worklists()[0].segmentation_codes()
    by_resource = project.annotations_by_resource()
    for resource in project.resources():
        image = decode_resource(project, resource).array
        sample: dict[str, Any] = {"resource_id": resource.id, "image": image, "annotations": by_resource[resource.id]}
        out = LoadSegmentations(project, codes)(sample)  # type: ignore[arg-type]
        per_annotation = LoadMasks(project)(sample)["masks"]  # type: ignore[arg-type]
        segs = [a for a in by_resource[resource.id] if a.is_segmentation()]
        assert list(out["segmentations"]) == sorted({a.author for a in segs})
        for author, instances in out["segmentations"].items():
            assert instances.dtype == np.uint8 and instances.shape[1:] == image.shape[1:]
            assert set(np.unique(instances)) <= {0, 1}
            mine = [a for a in segs if a.author == author]
            singles = [a for a in mine if a.is_image_scoped()]
            groups = sorted({(codes[a.identifier], a.identifier) for a in mine if a.is_frame_scoped()})
            assert len(instances) == len(singles) + len(groups)
            singles.sort(key=lambda a: (a.created_at, a.id))  # uniform ISO strings: text order is time order
            expected = [per_annotation[a.id] for a in singles]
            for _code, label in groups:
                members = [per_annotation[a.id] for a in mine if a.is_frame_scoped() and a.identifier == label]
                expected.append(np.bitwise_or.reduce(np.stack(members)))
            np.testing.assert_array_equal(instances, np.stack(expected))
            expected_codes = [codes[a.identifier] for a in singles] + [code for code, _ in groups]
            assert out["seg_labels"][author].tolist() == expected_codes


def test_load_masks_keeps_its_api(tmp_path: Path) -> None:
    project, rid = image_volume(tmp_path)
    ann = project.add_annotation(rid, "lesion", "segmentation", created_by="b", frame_index=3, mask=rect(0, 2, 0, 2))
    out = LoadMasks(project)({"image": np.zeros((1, N, H, W)), "annotations": [ann]})  # type: ignore[typeddict-item]
    expected = np.zeros((N, H, W), np.uint8)
    expected[3] = rect(0, 2, 0, 2)
    np.testing.assert_array_equal(out["masks"][ann.id], expected)
    assert out["masks"][ann.id].dtype == np.uint8
