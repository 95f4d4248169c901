"""Annotation stages. For now: loading segmentation masks aligned with the decoded image.

:class:`LoadMasks` adds ``masks``: ``{annotation_id: uint8 array}`` with the image's spatial shape --
(H,W) for a 2D image, (N,H,W) for a volume or video (a frame-scoped mask fills its frame, zeros elsewhere).
Nonzero = foreground. Masks are decoded by the same decoders as images, so a volume mask goes through
the same orientation normalisation as its volume.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from datamint_pipes import decode
from datamint_pipes.errors import AnnotationError, DecodeError
from datamint_pipes.model import Annotation, Sample
from datamint_pipes.sources.base import Source

__all__ = ["LoadMasks", "load_mask"]


def load_mask(source: Source, annotation: Annotation, image_shape: tuple[int, ...]) -> np.ndarray[Any, Any]:
    """The mask of a segmentation annotation as uint8 with spatial shape ``image_shape[1:]``."""
    spatial = tuple(image_shape[1:])
    relpath = annotation.file or annotation.associated_file
    if relpath is None:
        raise AnnotationError(f"segmentation {annotation.id} has no mask file", resource_id=annotation.resource_id)
    try:
        path = source.local_path(relpath)
        if path is not None:
            decoded = decode.decode(path, filename=relpath, resource_id=annotation.resource_id)
        else:
            with source.open_file(relpath) as handle:
                decoded = decode.decode(handle.read(), filename=relpath, resource_id=annotation.resource_id)
    except (DecodeError, OSError) as error:
        raise AnnotationError(
            f"mask of annotation {annotation.id} cannot be read: {error}", resource_id=annotation.resource_id
        ) from error
    mask = (decoded.array[0] != 0).astype(np.uint8)
    if annotation.frame_index is not None and len(spatial) == 3:
        if mask.shape != spatial[1:]:
            raise AnnotationError(
                f"frame mask of annotation {annotation.id} has shape {mask.shape}, the frames are {spatial[1:]}",
                resource_id=annotation.resource_id,
            )
        if not 0 <= annotation.frame_index < spatial[0]:
            raise AnnotationError(
                f"annotation {annotation.id}: frame {annotation.frame_index} outside 0..{spatial[0] - 1}",
                resource_id=annotation.resource_id,
            )
        full = np.zeros(spatial, np.uint8)
        full[annotation.frame_index] = mask
        return full
    if mask.shape != spatial:
        raise AnnotationError(
            f"mask of annotation {annotation.id} has shape {mask.shape}, its image {spatial}",
            resource_id=annotation.resource_id,
        )
    return mask


@dataclass(frozen=True)
class LoadMasks:
    """Add ``masks`` (see the module docstring) for every segmentation among ``annotations``."""

    source: Source

    def __call__(self, sample: Sample) -> Sample:
        shape = tuple(sample["image"].shape)
        masks = {a.id: load_mask(self.source, a, shape) for a in sample.get("annotations", ()) if a.is_segmentation()}
        out: dict[str, Any] = {**sample, "masks": masks}
        return out  # type: ignore[return-value]
