"""Validate segmentation masks against their image and encode them for storage.

2D and frame masks are stored as PNG (H,W) uint8; whole-volume masks as gzipped NIfTI. For NIfTI
resources a volume mask has the image file's stored shape and affine (as the Datamint server stores them).
For other volumes and videos (DICOM, MP4) a volume mask is given in decoded (N,H,W) order and stored with
voxel axes (W,H,N) and the affine ``diag(-1,-1,1,1)`` (axes L,P,S), which the NIfTI decoder normalises
straight back to (N,H,W).
"""

from __future__ import annotations

import gzip
import io
import os
from typing import TYPE_CHECKING, Any

import nibabel as nib
import numpy as np
from PIL import Image

from datamint_pipes.errors import ProjectError
from datamint_pipes.model import Resource

if TYPE_CHECKING:
    from datamint_pipes.sources.local import LocalProject

INDEX_AFFINE = np.diag([-1.0, -1.0, 1.0, 1.0])


def prepare_mask(
    project: LocalProject,
    resource: Resource,
    mask: str | os.PathLike[str] | np.ndarray[Any, Any],
    *,
    frame_scoped: bool,
    annotation_id: str,
) -> bytes:
    """The bytes to store for ``mask``; :class:`ProjectError` when it does not fit ``resource``."""

    def fail(message: str) -> ProjectError:
        return ProjectError(f"mask of annotation {annotation_id}: {message}", resource_id=resource.id)

    height, width = int(resource.metadata["height"]), int(resource.metadata["width"])
    if frame_scoped:
        array = _read_png(mask, fail) if not isinstance(mask, np.ndarray) else mask
        if array.shape != (height, width):
            raise fail(f"shape {array.shape} does not match the image's (H,W) = {(height, width)}")
        return _encode_png(_to_uint8(array, fail))

    if resource.metadata.get("format") == "nifti":
        image_path = project.local_path(resource.files[0])
        image: Any = nib.load(str(image_path))
        expected = tuple(image.shape[:3])
        affine = image.affine
    else:
        expected = (width, height, int(resource.metadata["frame_count"]))
        affine = INDEX_AFFINE
    if isinstance(mask, np.ndarray):
        if mask.ndim != 3:
            raise fail(f"a whole-volume mask must be 3D, got shape {mask.shape}")
        array = mask if resource.metadata.get("format") == "nifti" else np.asarray(mask).transpose(2, 1, 0)
        shown = mask.shape
    else:
        array, mask_affine = _read_nifti(mask, fail)
        shown = array.shape
        if array.shape == expected and not np.allclose(mask_affine, affine, atol=1e-3):
            raise fail("its affine differs from the image's: the mask would be misaligned")
    if array.shape != expected:
        order = "stored (X,Y,Z)" if resource.metadata.get("format") == "nifti" else "decoded (N,H,W)"
        wanted = expected if resource.metadata.get("format") == "nifti" else expected[::-1]
        raise fail(f"shape {shown} does not match the image's {order} shape {wanted}")
    out = nib.Nifti1Image(_to_uint8(array, fail), affine)
    return gzip.compress(out.to_bytes(), compresslevel=6)


def _to_uint8(array: np.ndarray[Any, Any], fail: Any) -> np.ndarray[Any, Any]:
    array = np.asarray(array)
    if array.dtype == bool:
        return array.astype(np.uint8)
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise fail(f"dtype {array.dtype} is not a mask dtype (bool, integer or float)")
    if np.issubdtype(array.dtype, np.floating) and np.isnan(array).any():
        raise fail("contains NaN")
    if array.size and (array.min() < 0 or array.max() > 255):
        raise fail("values must lie in 0..255 (nonzero = foreground)")
    if np.issubdtype(array.dtype, np.floating) and not np.array_equal(array, np.round(array)):
        # Fractions would truncate to 0 and erase foreground: store the binary mask instead.
        return (array != 0).astype(np.uint8)
    return array.astype(np.uint8)


def _read_png(path: str | os.PathLike[str], fail: Any) -> np.ndarray[Any, Any]:
    try:
        with Image.open(path) as image:
            if image.mode not in ("1", "L", "P", "I", "I;16"):
                raise fail(f"{os.fspath(path)} is a {image.mode} image; a mask has one channel")
            image.load()
            return np.asarray(image.convert("L") if image.mode == "1" else image)
    except (OSError, SyntaxError) as error:
        raise fail(f"{os.fspath(path)} cannot be read as an image: {error}") from error


def _read_nifti(path: str | os.PathLike[str], fail: Any) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    try:
        image: Any = nib.load(os.fspath(path))
        return np.asarray(image.dataobj), np.asarray(image.affine)
    except Exception as error:  # nibabel raises many types for a bad file
        raise fail(f"{os.fspath(path)} cannot be read as NIfTI: {error}") from error


def _encode_png(array: np.ndarray[Any, Any]) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()
