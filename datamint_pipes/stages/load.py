"""The first stages of every pipeline: read a resource's catalogue entry, then decode its pixels.

* :class:`ReadResource` -- ``index -> Sample`` with ``index``, ``resource_id``, ``resource``, ``annotations``.
* :class:`DecodeImage` -- adds ``image`` ((C,H,W) or (C,N,H,W)), ``metainfo``, ``spacing``, ``affine``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, overload

from datamint_pipes import decode
from datamint_pipes.decode.series import OnIrregular
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


def decode_resource(source: Source, resource: Resource, *, on_irregular: OnIrregular = "error") -> decode.Decoded:
    """Decode a resource: one file, or a DICOM series stacked into (C,N,H,W) by :func:`decode.decode_series`.

    ``on_irregular`` applies to a series only: ``"error"`` refuses slices that are not evenly spaced or not
    parallel; ``"warn"`` decodes them with a :class:`decode.SeriesGeometryWarning` and ``spacing=None``.
    """
    if not resource.files:
        raise DecodeError("the resource lists no files", resource_id=resource.id, filename=resource.filename)
    if len(resource.files) == 1:
        return decode_file(source, resource, resource.files[0])
    return decode.decode_series(
        _SeriesFiles(source, resource.files),
        resource_id=resource.id,
        filenames=resource.files,
        on_irregular=on_irregular,
    )


class _SeriesFiles(Sequence[str | bytes]):
    """The files of a series: local paths, or bytes read only when the decoder gets to that file."""

    def __init__(self, source: Source, relpaths: Sequence[str]) -> None:
        self._source = source
        self._relpaths = relpaths

    def __len__(self) -> int:
        return len(self._relpaths)

    @overload
    def __getitem__(self, index: int) -> str | bytes: ...

    @overload
    def __getitem__(self, index: slice) -> list[str | bytes]: ...

    def __getitem__(self, index: int | slice) -> str | bytes | list[str | bytes]:
        if isinstance(index, slice):
            return [self[i] for i in range(len(self))[index]]
        relpath = self._relpaths[index]
        path = self._source.local_path(relpath)
        if path is not None:
            return path
        with self._source.open_file(relpath) as handle:
            return handle.read()


@dataclass(frozen=True)
class ReadResource:
    """``index -> Sample``: look up the resource and its annotations (a catalogue snapshot, no I/O).

    ``epoch`` comes from the index when the pipeline's sampler drew it (an ``EpochIndex``), else from the
    ``epoch`` field (map-style access: set it per epoch to vary augmentation)."""

    resources: Sequence[Resource]
    annotations: Mapping[str, Sequence[Annotation]] = field(default_factory=dict)
    epoch: int = 0

    def __call__(self, index: int) -> Sample:
        resource = self.resources[index]
        return {
            "index": int(index),
            "epoch": getattr(index, "epoch", self.epoch),
            "resource_id": resource.id,
            "resource": resource,
            "annotations": list(self.annotations.get(resource.id, ())),
        }


@dataclass(frozen=True)
class DecodeImage:
    """Decode the sample's resource: adds ``image``, ``metainfo``, ``spacing`` and ``affine``.

    ``image`` is (C,H,W) for 2D images and (C,N,H,W) for volumes, videos and multi-frame DICOM, in the
    dtypes of :mod:`datamint_pipes.decode`. ``on_irregular`` as :func:`decode_resource`.
    """

    source: Source
    on_irregular: OnIrregular = "error"

    def __call__(self, sample: Sample) -> Sample:
        decoded = decode_resource(self.source, sample["resource"], on_irregular=self.on_irregular)
        out: dict[str, Any] = dict(sample)
        out.update(image=decoded.array, metainfo=decoded.metainfo, spacing=decoded.spacing, affine=decoded.affine)
        return out  # type: ignore[return-value]
