"""Importers that fill a local project from files laid out by other tools.

* :func:`import_folder` -- a folder of images, volumes, videos and DICOM files, with an optional labels CSV
  (``filename,label[,label...]``: every non-empty label cell becomes an image label of that file).
  DICOM files of one folder that share a ``SeriesInstanceUID`` and are single-frame become one series resource.
* :func:`import_msd` -- the Medical Segmentation Decathlon layout (``dataset.json``, ``imagesTr/``,
  ``labelsTr/``, ``imagesTs/``): one resource per image, one image-scoped segmentation per label present in
  its label map, a worklist with the dataset's labels, and ``train``/``test`` split assignments.
"""

from __future__ import annotations

import csv
import json
import os
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from datamint_pipes.errors import ProjectError
from datamint_pipes.model import LabelSpec, Resource, file_suffix
from datamint_pipes.sources.local import LocalProject

__all__ = ["import_folder", "import_msd"]

_KNOWN_SUFFIXES = {".dcm", ".dicom", ".nii", ".nii.gz", ".png", ".jpg", ".jpeg", ".mp4", ".avi", ".mov"}


def _is_dicom(path: Path) -> bool:
    with open(path, "rb") as handle:
        head = handle.read(132)
    return len(head) == 132 and head[128:132] == b"DICM"


def _dicom_series_key(path: Path) -> tuple[str, int] | None:
    """(SeriesInstanceUID, NumberOfFrames) of a DICOM file, or None when it has no series UID."""
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SeriesInstanceUID", "NumberOfFrames"])
    except Exception as error:  # pydicom raises many types on a broken header
        raise ProjectError(f"{path}: not a readable DICOM file: {error}") from error
    uid = getattr(ds, "SeriesInstanceUID", None)
    return (str(uid), int(getattr(ds, "NumberOfFrames", 1) or 1)) if uid else None


def import_folder(
    project: LocalProject,
    folder: str | os.PathLike[str],
    *,
    labels_csv: str | os.PathLike[str] | None = None,
    annotator: str = "importer@datamint-pipes",
    group_dicom_series: bool = True,
) -> list[Resource]:
    """Add every image, volume and video file under ``folder`` (recursively, sorted by path).

    Returns the resources added, in order. Files of unknown type are rejected before anything is
    added, so a failed import leaves the project unchanged.
    """
    root = Path(folder)
    if not root.is_dir():
        raise ProjectError(f"{root}: no such folder")
    files = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
    if labels_csv is not None:
        files = [p for p in files if p.resolve() != Path(labels_csv).resolve()]
    unknown = [p for p in files if file_suffix(p.name) not in _KNOWN_SUFFIXES and not _is_dicom(p)]
    if unknown:
        raise ProjectError(f"{root}: files of unknown type: {[str(p.relative_to(root)) for p in unknown[:5]]}")
    labels = _read_labels_csv(labels_csv, root) if labels_csv is not None else {}
    known_names = {str(p.relative_to(root)) for p in files} | {p.name for p in files}
    known_names |= {str(p.parent.relative_to(root)) for p in files}
    missing = sorted(set(labels) - known_names)
    if missing:
        raise ProjectError(f"{labels_csv}: rows name files not in {root}: {missing[:5]}")

    groups: dict[tuple[str, str], list[Path]] = defaultdict(list)
    units: list[list[Path]] = []
    for path in files:
        key = _dicom_series_key(path) if group_dicom_series and _is_dicom(path) else None
        if key is not None and key[1] == 1:
            group = groups[(str(path.parent), key[0])]
            if not group:
                units.append(group)
            group.append(path)
        else:
            units.append([path])

    added: list[Resource] = []
    try:
        for unit in units:
            relname = str(unit[0].relative_to(root)) if len(unit) == 1 else str(unit[0].parent.relative_to(root))
            if len(unit) == 1:
                resource = project.add_resource(unit[0], filename=relname)
            else:
                resource = project.add_resource(unit, filename=relname if relname != "." else root.name)
            added.append(resource)
            for label_key in dict.fromkeys((relname, unit[0].name)):
                for label in labels.get(label_key, []):
                    project.add_annotation(resource.id, label, "label", created_by=annotator, source="imported")
    except BaseException:
        project.purge_resources(r.id for r in added)
        raise
    return added


def _read_labels_csv(path: str | os.PathLike[str], root: Path) -> dict[str, list[str]]:
    labels: dict[str, list[str]] = {}
    with open(path, newline="") as handle:
        for line_number, row in enumerate(csv.reader(handle), start=1):
            if not row or (line_number == 1 and row[0].strip().lower() == "filename"):
                continue
            name, *cells = (cell.strip() for cell in row)
            if not name:
                raise ProjectError(f"{path}:{line_number}: empty filename")
            labels.setdefault(name, []).extend(cell for cell in cells if cell)
    return labels


def import_msd(
    project: LocalProject, folder: str | os.PathLike[str], *, annotator: str = "msd@datamint-pipes"
) -> list[Resource]:
    """Import a Medical Segmentation Decathlon task folder (see the module docstring)."""
    root = Path(folder)
    manifest_path = root / "dataset.json"
    if not manifest_path.is_file():
        raise ProjectError(f"{root}: no dataset.json; not a Medical Segmentation Decathlon folder")
    try:
        manifest: dict[str, Any] = json.loads(manifest_path.read_text())
        label_names = {int(code): str(name) for code, name in manifest["labels"].items()}
        training = [(root / entry["image"], root / entry["label"]) for entry in manifest.get("training", [])]
        testing = [root / (entry if isinstance(entry, str) else entry["image"]) for entry in manifest.get("test", [])]
    except (KeyError, ValueError, TypeError) as error:
        raise ProjectError(f"{manifest_path}: malformed manifest: {error}") from error
    for path in [p for pair in training for p in pair] + testing:
        if not path.is_file():
            raise ProjectError(f"{manifest_path}: listed file {path} does not exist")
    codes = sorted(code for code in label_names if code != 0)
    worklist_id = str(uuid.uuid4())
    added: list[Resource] = []
    try:
        _add_msd_cases(project, training, testing, label_names, codes, annotator, worklist_id, added)
        project.add_worklist(
            str(manifest.get("name") or root.name),
            [LabelSpec(type="segmentation", identifier=label_names[code], index=code) for code in codes],
            annotators=[annotator],
            worklist_id=worklist_id,
        )
    except BaseException:
        project.purge_resources(r.id for r in added)
        raise
    return added


def _add_msd_cases(
    project: LocalProject,
    training: list[tuple[Path, Path]],
    testing: list[Path],
    label_names: dict[int, str],
    codes: list[int],
    annotator: str,
    worklist_id: str,
    added: list[Resource],
) -> None:
    train_ids, test_ids = [], []
    for image_path, label_path in training:
        try:
            label_image: Any = nib.load(label_path)
            label_map = np.asarray(label_image.dataobj)
        except Exception as error:  # nibabel raises several types for a corrupt file
            raise ProjectError(f"{label_path}: the label map cannot be read: {error}") from error
        resource = project.add_resource(image_path, filename=image_path.name)
        added.append(resource)
        train_ids.append(resource.id)
        for code in codes:
            binary = label_map == code
            if not binary.any():
                continue
            try:
                project.add_annotation(
                    resource.id,
                    label_names[code],
                    "segmentation",
                    created_by=annotator,
                    mask=binary.astype(np.uint8),
                    worklist_id=worklist_id,
                    source="imported",
                )
            except ProjectError as error:
                raise ProjectError(
                    f"{label_path}: label {label_names[code]!r} does not fit {image_path.name}: {error}"
                ) from error
    for image_path in testing:
        resource = project.add_resource(image_path, filename=image_path.name)
        added.append(resource)
        test_ids.append(resource.id)
    if train_ids:
        project.assign_split(train_ids, "train")
    if test_ids:
        project.assign_split(test_ids, "test")
