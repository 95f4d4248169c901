"""Helpers for the store tests: write small synthetic PNG/JPEG/NIfTI/DICOM files, snapshot a project.

Every writer takes the pixel array in the layout the file stores, so a test states the expected decoded
layout itself (PNG/JPEG (H,W[,C]); NIfTI voxel axes (X,Y,Z); DICOM (Rows, Columns) per slice).
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from datamint_pipes.sources.local import CATALOGUE, LocalProject


def write_png(path: str | os.PathLike[str], array: np.ndarray[Any, Any]) -> Path:
    """Write an (H,W) gray or (H,W,3) RGB uint8 PNG."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path, format="PNG")
    return path


def write_jpeg(path: str | os.PathLike[str], array: np.ndarray[Any, Any]) -> Path:
    """Write an (H,W) gray or (H,W,3) RGB JPEG (lossy: compare shapes, not pixels)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path, format="JPEG", quality=95)
    return path


def write_nifti(
    path: str | os.PathLike[str], data: np.ndarray[Any, Any], affine: np.ndarray[Any, Any] | None = None
) -> Path:
    """Write ``data`` (voxel axes (X,Y,Z[,T])) as NIfTI-1; gzipped when the name ends in ``.gz``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = nib.Nifti1Image(np.asarray(data), np.eye(4) if affine is None else np.asarray(affine, dtype=float))
    nib.save(image, str(path))
    return path


def write_dicom(
    path: str | os.PathLike[str],
    pixels: np.ndarray[Any, Any],
    *,
    series_uid: str,
    instance_number: int = 1,
    z: float = 0.0,
    patient_id: str = "P001",
    study_uid: str | None = None,
) -> Path:
    """Write one single-frame uncompressed CT slice: ``pixels`` is (Rows, Columns) uint16."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.ascontiguousarray(pixels, dtype=np.uint16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid or "1.2.826.0.1.3680043.8.498.1"
    ds.SeriesInstanceUID = series_uid
    ds.PatientID = patient_id
    ds.PatientName = "Test^Patient"
    ds.Modality = "CT"
    ds.InstanceNumber = instance_number
    ds.ImagePositionPatient = [0.0, 0.0, float(z)]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelSpacing = [0.5, 0.5]
    ds.SliceThickness = 1.0
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def write_dicom_series(
    folder: str | os.PathLike[str],
    volume: np.ndarray[Any, Any],
    *,
    series_uid: str | None = None,
    prefix: str = "slice",
    patient_id: str = "P001",
) -> list[Path]:
    """Write ``volume`` (N, Rows, Columns) as N single-frame files, 1 mm apart along z; returns their paths."""
    uid = series_uid or generate_uid()
    return [
        write_dicom(
            Path(folder) / f"{prefix}{i:03d}.dcm",
            volume[i],
            series_uid=uid,
            instance_number=i + 1,
            z=float(i),
            patient_id=patient_id,
        )
        for i in range(volume.shape[0])
    ]


def read_png(data: bytes) -> np.ndarray[Any, Any]:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image)


def read_nifti(data: bytes) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """(voxel data as stored, affine) of NIfTI bytes (gzipped or not)."""
    image: Any = nib.Nifti1Image.from_bytes(_gunzip(data))
    return np.asarray(image.dataobj), np.asarray(image.affine)


def _gunzip(data: bytes) -> bytes:
    import gzip

    return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data


def catalogue_state(project: LocalProject) -> tuple[Any, ...]:
    """Everything the catalogue holds, for before/after comparisons."""
    return (
        project.resources(include_deleted=True),
        [a.to_dict() for a in project.annotations(include_deleted=True)],
        project.split_assignments(include_history=True),
        project.worklists(),
    )


def files_on_disk(root: str | os.PathLike[str]) -> dict[str, str]:
    """Relative path -> sha256 of every file under ``root``.

    The catalogue is listed but not hashed: SQLite may reorganise its pages when rows are added and removed
    again (an import undone), so compare its content through :func:`catalogue_state` instead.
    """
    out: dict[str, str] = {}
    for folder, _dirs, names in os.walk(root):
        for name in names:
            full = Path(folder) / name
            relpath = full.relative_to(root).as_posix()
            out[relpath] = "" if relpath == CATALOGUE else hashlib.sha256(full.read_bytes()).hexdigest()
    return out


def gradient(shape: Sequence[int], dtype: Any = np.uint8) -> np.ndarray[Any, Any]:
    """A deterministic, non-constant array of ``shape`` (so decoded content can be told apart)."""
    size = int(np.prod(shape))
    return (np.arange(size) % 251).astype(dtype).reshape(tuple(shape))
