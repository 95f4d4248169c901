"""The data model: resources, annotations, label specs, worklists, split assignments and the sample schema.

Field names follow the documented Datamint API. ``from_dict`` accepts both the documented names and the
server's wire names (``type``, ``name``, ``added_by``, ``index``, ``value``); ``to_dict`` writes the
documented names, ``to_dict(wire=True)`` the wire names.

This module imports nothing else of the library but :mod:`datamint_pipes.errors`.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import enum
import mimetypes
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypedDict

import numpy as np

__all__ = [
    "Annotation",
    "LabelSpec",
    "Project",
    "Resource",
    "ResourceKind",
    "Sample",
    "SplitAssignment",
    "Worklist",
    "parse_timestamp",
    "resource_kind",
    "utc_now_iso",
]


class ResourceKind(enum.StrEnum):
    """What a resource decodes to. Values are the server's ``storage`` names."""

    DICOM = "DicomResource"
    NIFTI = "NiftiResource"
    VIDEO = "VideoResource"
    IMAGE = "ImageResource"
    VOLUME = "VolumeResource"


_SUFFIX_KIND = {
    ".dcm": ResourceKind.DICOM,
    ".dicom": ResourceKind.DICOM,
    ".nii": ResourceKind.NIFTI,
    ".nii.gz": ResourceKind.NIFTI,
    ".mp4": ResourceKind.VIDEO,
    ".avi": ResourceKind.VIDEO,
    ".mov": ResourceKind.VIDEO,
    ".png": ResourceKind.IMAGE,
    ".jpg": ResourceKind.IMAGE,
    ".jpeg": ResourceKind.IMAGE,
}

_MIMETYPE_BY_SUFFIX = {
    ".dcm": "application/dicom",
    ".dicom": "application/dicom",
    ".nii": "application/nifti",
    ".nii.gz": "application/nifti",
    ".mp4": "video/mp4",
    ".avi": "video/x-msvideo",
    ".mov": "video/quicktime",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
}


def file_suffix(filename: str) -> str:
    """Lower-case suffix of ``filename``, treating ``.nii.gz`` as one suffix (``''`` if none)."""
    name = filename.lower().rsplit("/", 1)[-1]
    if name.endswith(".nii.gz"):
        return ".nii.gz"
    dot = name.rfind(".")
    return name[dot:] if dot > 0 else ""


def guess_mimetype(filename: str) -> str | None:
    """The mimetype the catalogue records for ``filename``, or ``None`` when it is not a known format."""
    suffix = file_suffix(filename)
    if suffix in _MIMETYPE_BY_SUFFIX:
        return _MIMETYPE_BY_SUFFIX[suffix]
    guessed, _ = mimetypes.guess_type(filename)
    return guessed


def resource_kind(storage: str | None, mimetype: str | None, filename: str | None) -> ResourceKind | None:
    """Kind of a resource: from ``storage`` when it names one, else the mimetype, else the suffix."""
    if storage:
        try:
            return ResourceKind(storage)
        except ValueError:
            pass
    if mimetype:
        mt = mimetype.lower()
        if mt in ("application/dicom", "application/dicom+json"):
            return ResourceKind.DICOM
        if mt in ("application/nifti", "application/x-nifti", "application/gzip+nifti"):
            return ResourceKind.NIFTI
        if mt.startswith("video/"):
            return ResourceKind.VIDEO
        if mt.startswith("image/"):
            return ResourceKind.IMAGE
    if filename:
        return _SUFFIX_KIND.get(file_suffix(filename))
    return None


def utc_now_iso() -> str:
    """The current UTC time as ISO 8601 with a ``Z`` suffix and microseconds."""
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_timestamp(value: str | _dt.datetime) -> _dt.datetime:
    """Parse an ISO 8601 timestamp (``Z`` or offset; naive means UTC) to an aware UTC datetime."""
    if isinstance(value, _dt.datetime):
        parsed = value
    else:
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            parsed = _dt.datetime.fromisoformat(text)
        except ValueError as error:
            raise ValueError(f"{value!r} is not an ISO 8601 timestamp") from error
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=_dt.UTC)
    return parsed.astimezone(_dt.UTC)


@dataclass(frozen=True)
class Project:
    """A project: a named set of resources with worklists and split assignments."""

    id: str
    name: str
    created_at: str | None = None
    created_by: str | None = None
    description: str | None = None
    archived: bool = False
    resource_count: int = 0
    dataset_id: str | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Project:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Resource:
    """One image, volume or video: a single file, or a DICOM series of several files.

    ``files`` are the paths of the resource's files relative to its source (one entry for a single file;
    the slices of a series, in stored order). ``metadata`` holds header facts such as ``frame_count``.
    """

    id: str
    filename: str
    mimetype: str | None = None
    size: int | None = None
    storage: str | None = None
    created_at: str | None = None
    created_by: str | None = None
    deleted: bool = False
    deleted_at: str | None = None
    tags: tuple[str, ...] = ()
    patient_id: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    files: tuple[str, ...] = ()
    status: str | None = "published"
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def kind(self) -> ResourceKind | None:
        """Format family of this resource (``None`` when not recognised)."""
        return resource_kind(self.storage, self.mimetype, self.filename)

    @property
    def frame_count(self) -> int | None:
        """Frames (video, multi-frame DICOM) or slices (volumes), when the catalogue knows them."""
        value = self.metadata.get("frame_count")
        return int(value) if value is not None else None

    @property
    def cache_version(self) -> tuple[str | None, str | None, int | None]:
        """What a cached copy's validity depends on: (``created_at``, ``deleted_at``, ``size``)."""
        return (self.created_at, self.deleted_at, self.size)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Resource:
        """Build from the documented names or a server ``Resource`` JSON object."""
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        kwargs: dict[str, Any] = {k: data[k] for k in known if k in data}
        kwargs["tags"] = tuple(data.get("tags") or ())
        kwargs["files"] = tuple(data.get("files") or ())
        kwargs["metadata"] = dict(data.get("metadata") or {})
        kwargs["deleted"] = bool(data.get("deleted", False))
        if "id" not in kwargs or "filename" not in kwargs:
            raise ValueError(f"a resource needs 'id' and 'filename', got keys {sorted(data)}")
        kwargs["extra"] = {k: v for k, v in data.items() if k not in known and k != "extra" and not k.startswith("_")}
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """The resource as JSON-ready data (the server's field names, plus ``files``). ``extra`` keys starting
        with ``_`` are process-local notes (such as the folder a local project was read from) and are left out."""
        data: dict[str, Any] = {k: v for k, v in self.extra.items() if not k.startswith("_")}
        for f in dataclasses.fields(self):
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            if isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, Mapping):
                value = dict(value)
            data[f.name] = value
        return data


# Server wire name -> documented field name.
_ANNOTATION_WIRE_NAMES = {
    "type": "annotation_type",
    "name": "identifier",
    "added_by": "created_by",
    "index": "frame_index",
    "value": "text_value",
}


@dataclass
class Annotation:
    """An annotation of a resource, with every field of the documented ``Annotation``.

    ``scope`` is ``'image'`` or ``'frame'`` (then ``frame_index`` is set); ``annotation_type`` is
    ``'segmentation'``, ``'label'``, ``'category'``, ``'square'`` (a box in ``geometry``), ... A segmentation
    names its mask in ``file`` (a path relative to the project's ``annotations/`` folder locally).
    """

    id: str
    identifier: str
    scope: str
    annotation_type: str
    resource_id: str
    created_by: str | None
    annotation_worklist_id: str | None = None
    status: str | None = None
    frame_index: int | None = None
    text_value: str | None = None
    numeric_value: float | None = None
    units: str | None = None
    geometry: Any = field(default_factory=list)
    created_at: str | None = None
    approved_at: str | None = None
    approved_by: str | None = None
    associated_file: str | None = None
    file: str | None = None
    deleted: bool = False
    deleted_at: str | None = None
    deleted_by: str | None = None
    created_by_model: str | None = None
    old_geometry: Any | None = None
    set_name: str | None = None
    resource_filename: str | None = None
    resource_modality: str | None = None
    annotation_worklist_name: str | None = None
    user_info: dict[str, str] | None = None
    values: Any | None = None
    source: str | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Annotation:
        """Build from documented names or the server's wire names (``type``, ``name``, ``added_by``, ...).

        ``scope`` defaults to ``'frame'`` when a frame index is given, else ``'image'``.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            target = _ANNOTATION_WIRE_NAMES.get(key, key)
            if target in names and (target not in kwargs or key == target):
                kwargs[target] = value
        missing = [n for n in ("id", "identifier", "annotation_type", "resource_id") if n not in kwargs]
        if missing:
            raise ValueError(f"annotation data lacks {missing}: keys {sorted(data)}")
        kwargs.setdefault("created_by", None)
        if kwargs.get("frame_index") is not None:
            kwargs["frame_index"] = int(kwargs["frame_index"])
        kwargs.setdefault("scope", "frame" if kwargs.get("frame_index") is not None else "image")
        if kwargs.get("geometry") is None:
            kwargs["geometry"] = []
        kwargs["deleted"] = bool(kwargs.get("deleted") or kwargs.get("deleted_at"))
        return cls(**kwargs)

    def to_dict(self, *, wire: bool = False) -> dict[str, Any]:
        """The annotation as a dict of documented names, or of the server's wire names with ``wire=True``."""
        data = dataclasses.asdict(self)
        if wire:
            for wire_name, name in _ANNOTATION_WIRE_NAMES.items():
                data[wire_name] = data.pop(name)
        return data

    # Documented aliases and predicates.
    @property
    def added_by(self) -> str | None:
        return self.created_by

    @property
    def index(self) -> int | None:
        return self.frame_index

    @property
    def name(self) -> str:
        return self.identifier

    @property
    def type(self) -> str:
        return self.annotation_type

    @property
    def value(self) -> str | None:
        return self.text_value

    @property
    def author(self) -> str:
        """Who made it: ``created_by``, else ``created_by_model``, else ``'unknown'``."""
        return self.created_by or self.created_by_model or "unknown"

    def get_created_datetime(self) -> _dt.datetime | None:
        return parse_timestamp(self.created_at) if self.created_at else None

    def is_category(self) -> bool:
        return self.annotation_type == "category"

    def is_label(self) -> bool:
        return self.annotation_type == "label"

    def is_segmentation(self) -> bool:
        return self.annotation_type == "segmentation"

    def is_frame_scoped(self) -> bool:
        return self.scope == "frame"

    def is_image_scoped(self) -> bool:
        return self.scope == "image"


LabelType = Literal["label", "category", "segmentation", "square", "line", "point", "text", "numeric"]


@dataclass(frozen=True)
class LabelSpec:
    """One entry of a worklist's label schema.

    ``values`` lists the allowed values of a category; ``index`` is a segmentation's 1-based code.
    """

    type: str
    identifier: str
    scope: str = "image"
    required: bool = False
    color: tuple[int, ...] | None = None
    values: tuple[str, ...] = ()
    index: int | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LabelSpec:
        identifier = data.get("identifier", data.get("name"))
        if not identifier or not data.get("type"):
            raise ValueError(f"a label spec needs 'type' and 'identifier', got {dict(data)!r}")
        color = data.get("color")
        return cls(
            type=str(data["type"]),
            identifier=str(identifier),
            scope=str(data.get("scope") or "image"),
            required=bool(data.get("required", False)),
            color=tuple(int(c) for c in color) if color is not None else None,
            values=tuple(str(v) for v in data.get("values") or ()),
            index=int(data["index"]) if data.get("index") is not None else None,
        )

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "type": self.type,
            "identifier": self.identifier,
            "scope": self.scope,
            "required": self.required,
        }
        if self.color is not None:
            data["color"] = list(self.color)
        if self.values:
            data["values"] = list(self.values)
        if self.index is not None:
            data["index"] = self.index
        return data


@dataclass(frozen=True)
class Worklist:
    """An annotation worklist: its annotators and the label schema they annotate with."""

    id: str
    name: str
    annotators: tuple[str, ...] = ()
    specs: tuple[LabelSpec, ...] = ()

    def segmentation_codes(self) -> dict[str, int]:
        """Segmentation label -> 1-based code (the spec's ``index``, else its position among segmentations)."""
        codes: dict[str, int] = {}
        position = 0
        for spec in self.specs:
            if spec.type == "segmentation":
                position += 1
                codes[spec.identifier] = spec.index if spec.index is not None else position
        return codes


@dataclass(frozen=True)
class SplitAssignment:
    """A resource assigned to a named split at ``created_at``; removed at ``deleted_at`` (if ever)."""

    id: str
    project_id: str
    resource_id: str
    split_name: str
    created_at: str
    created_by: str | None = None
    deleted_at: str | None = None
    deleted_by: str | None = None

    def active_at(self, when: _dt.datetime) -> bool:
        """Whether the assignment held at ``when`` (created at or before it, not yet removed)."""
        if parse_timestamp(self.created_at) > when:
            return False
        return self.deleted_at is None or parse_timestamp(self.deleted_at) > when

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SplitAssignment:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Sample(TypedDict, total=False):
    """One item flowing through a pipeline. Stages add keys; none mutates arrays in place.

    Documented keys (the compat contract):

    * ``image`` -- ``np.ndarray`` (C,H,W) for a 2D image or slice, (C,N,H,W) for a volume or video;
      uint8 for PNG/JPEG/video, float32 for rescaled DICOM and NIfTI, the stored integer dtype otherwise.
    * ``metainfo`` -- pydicom dataset without pixels (DICOM), ``{'affine','header','shape'}`` (NIfTI), else None.
    * ``segmentations`` -- ``{author: uint8 (num_instances,[N,]H,W)}``, or float32 semantic channels.
    * ``seg_labels`` -- ``{author: int32 (num_instances,)}`` with 1-based codes.
    * ``image_labels``, ``image_categories`` -- per-author or merged tensors (see the compat contract).
    * ``annotations`` -- the resource's filtered :class:`Annotation` list; ``resource`` -- its :class:`Resource`.

    Pipeline keys:

    * ``resource_id`` -- id of the resource the sample comes from (every sample has it).
    * ``index`` -- position of the resource (or slice) in the pipeline's list; ``epoch`` -- the epoch it was drawn
      in (0 for map-style access), the input of per-epoch randomness.
    * ``slice_index`` / ``slice_axis`` -- set on samples expanded from a volume or video.
    * ``spacing`` -- voxel spacing along the array's (N,)H,W axes, when known; ``affine`` -- 4x4 voxel-to-patient
      transform of those axes, when known.
    * ``masks`` -- ``{annotation_id: uint8 array}`` of loaded segmentation masks before merging.
    * ``volume_shape`` -- (C,N,H,W) of the volume when ``image`` is one slice read alone from the decoded cache.
    """

    image: np.ndarray[Any, Any]
    metainfo: Any
    segmentations: Any
    seg_labels: Any
    image_labels: Any
    image_categories: Any
    annotations: Sequence[Annotation]
    resource: Resource
    resource_id: str
    index: int
    epoch: int
    slice_index: int
    slice_axis: str
    spacing: tuple[float, ...] | None
    affine: np.ndarray[Any, Any] | None
    masks: dict[str, np.ndarray[Any, Any]]
    volume_shape: tuple[int, ...]
