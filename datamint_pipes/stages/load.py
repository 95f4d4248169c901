"""The first stages of every pipeline: read a resource's catalogue entry, then decode its pixels.

* :class:`ReadResource` -- ``index -> Sample`` with ``index``, ``resource_id``, ``resource``, ``annotations``.
* :class:`DecodeImage` -- adds ``image`` ((C,H,W) or (C,N,H,W)), ``metainfo``, ``spacing``, ``affine``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from datamint_pipes import decode
from datamint_pipes.errors import DecodeError
from datamint_pipes.model import Annotation, Resource, Sample
from datamint_pipes.sources.base import Source

__all__ = ["DecodeImage", "ReadResource", "decode_file", "decode_resource"]


def decode_file(source: Source, resource: Resource, relpath: str) -> decode.Decoded:
    """Decode one file of ``source``, straight from disk when it is local, else from its bytes."""
    path = source.local_path(relpath)
    name = resource.filename if len(resource.files) == 1 else relpath
    if path is not None:
        return decode.decode(path, filename=name, mimetype=resource.mimetype, resource_id=resource.id)
    with source.open_file(relpath) as handle:
        data = handle.read()
    return decode.decode(data, filename=name, mimetype=resource.mimetype, resource_id=resource.id)


def decode_resource(source: Source, resource: Resource) -> decode.Decoded:
    """Decode a resource: one file, or a DICOM series stacked into (C,N,H,W)."""
    if not resource.files:
        raise DecodeError("the resource lists no files", resource_id=resource.id, filename=resource.filename)
    if len(resource.files) == 1:
        return decode_file(source, resource, resource.files[0])
    return _decode_series(source, resource)


def _decode_series(source: Source, resource: Resource) -> decode.Decoded:
    """Stack single-frame DICOM slices ordered along the slice normal (ImagePositionPatient projected on
    the normal of ImageOrientationPatient); spacing is reported only when the slices are evenly spaced."""
    slices = [decode_file(source, resource, relpath) for relpath in resource.files]
    found = [_slice_position(s.metainfo) for s in slices]
    positions = [p for p in found if p is not None]
    located = len(positions) == len(slices)
    order = sorted(range(len(slices)), key=lambda i: positions[i]) if located else list(range(len(slices)))
    arrays = [slices[i].array for i in order]
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise DecodeError(f"the series mixes slice shapes {sorted(shapes)}", resource_id=resource.id)
    stacked = np.stack(arrays, axis=1)
    spacing = None
    if located and slices[0].spacing is not None:
        gaps = np.diff([positions[i] for i in order])
        if len(gaps) and np.allclose(gaps, gaps[0], rtol=0.01, atol=1e-3) and gaps[0] > 0:
            spacing = (float(gaps[0]), *slices[0].spacing[-2:])
    return decode.Decoded(array=stacked, metainfo=slices[order[0]].metainfo, spacing=spacing, affine=None)


def _slice_position(metainfo: Any) -> float | None:
    position = getattr(metainfo, "ImagePositionPatient", None)
    orientation = getattr(metainfo, "ImageOrientationPatient", None)
    if position is None or orientation is None or len(orientation) != 6:
        return None
    row, col = np.asarray(orientation[:3], float), np.asarray(orientation[3:], float)
    return float(np.dot(np.cross(row, col), np.asarray(position, float)))


@dataclass(frozen=True)
class ReadResource:
    """``index -> Sample``: look up the resource and its annotations (a catalogue snapshot, no I/O)."""

    resources: Sequence[Resource]
    annotations: Mapping[str, Sequence[Annotation]] = field(default_factory=dict)

    def __call__(self, index: int) -> Sample:
        resource = self.resources[index]
        return {
            "index": index,
            "resource_id": resource.id,
            "resource": resource,
            "annotations": list(self.annotations.get(resource.id, ())),
        }


@dataclass(frozen=True)
class DecodeImage:
    """Decode the sample's resource: adds ``image``, ``metainfo``, ``spacing`` and ``affine``.

    ``image`` is (C,H,W) for 2D images and (C,N,H,W) for volumes, videos and multi-frame DICOM, in the
    dtypes of :mod:`datamint_pipes.decode`.
    """

    source: Source

    def __call__(self, sample: Sample) -> Sample:
        decoded = decode_resource(self.source, sample["resource"])
        out: dict[str, Any] = dict(sample)
        out.update(image=decoded.array, metainfo=decoded.metainfo, spacing=decoded.spacing, affine=decoded.affine)
        return out  # type: ignore[return-value]
