"""The fast path: decode each resource once per machine, then serve it from the decoded-array cache.

* :class:`CachedDecode` -- like :class:`~datamint_pipes.stages.load.DecodeImage`, but the first call for a
  resource (in any worker thread or process) decodes it and stores the array slice-major in an
  :class:`~datamint_pipes.cache.ArrayCache`; every later call memory-maps it. ``image`` is then a read-only
  (C,N,H,W) view whose slices along ``slice_axis`` are contiguous (with ``compression="lz4"``: a writeable
  decompressed copy).
* :class:`SliceIndex` + :class:`ReadSlice` -- random access: a global index over every (resource, slice)
  built from catalogue headers (no decoding); reading one slice of a cached volume touches only that slice.

Cache keys are (content SHA-256 -- or, without one, the resource id and version --, decoder version, layout),
so an edited file or a new decoder never serves a stale array.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from datamint_pipes import __version__
from datamint_pipes.cache import ArrayCache, CachedArray, Compression, cache_key, from_slice_major, to_slice_major
from datamint_pipes.model import Annotation, Resource, Sample
from datamint_pipes.sources.base import Source
from datamint_pipes.stages.expand import slice_axis_index
from datamint_pipes.stages.load import decode_resource

__all__ = [
    "CachedDecode",
    "CachedMasks",
    "CachedSegmentations",
    "ReadSlice",
    "SliceIndex",
    "decoded_cache_key",
    "masks_cache_key",
    "read_metainfo",
    "segmentations_cache_key",
]


def decoded_cache_key(resource: Resource, slice_axis: int) -> str:
    """Key of a resource's decoded array stored with ``slice_axis`` first."""
    content = resource.metadata.get("sha256") or ["id", resource.id, *resource.cache_version]
    return cache_key("decoded", content, __version__, "slice-major", slice_axis)


def read_metainfo(source: Source, resource: Resource, meta: Mapping[str, Any]) -> Any:
    """``metainfo`` from headers alone (no pixels): the pydicom dataset of the first slice, or NIfTI's
    ``{'affine', 'header', 'shape'}``; ``None`` for other formats."""
    file_format = meta.get("format")
    # The cache key is the content, shared by every source of the same files: keep the file's position in
    # Resource.files (the same in every source), never a source-specific path.
    relpath = resource.files[int(meta.get("metainfo_file_index") or 0)]
    if file_format not in ("dicom", "nifti"):
        return None
    path = source.local_path(relpath)
    if file_format == "dicom":
        import pydicom

        if path is not None:
            return pydicom.dcmread(path, stop_before_pixels=True, force=True)
        with source.open_file(relpath) as handle:
            return pydicom.dcmread(handle, stop_before_pixels=True, force=True)
    if path is not None:
        with open(path, "rb") as handle:
            return _nifti_metainfo(handle)
    with source.open_file(relpath) as handle:
        return _nifti_metainfo(handle)


def _nifti_metainfo(handle: Any) -> dict[str, Any]:
    """``{'affine', 'header', 'shape'}`` of a NIfTI-1/2 file, gzipped or not, from its header bytes only
    (whatever the file is named: cached downloads have no ``.nii`` suffix)."""
    import gzip
    import io

    import nibabel as nib

    head = handle.read(2)
    handle.seek(0)
    reader: Any = gzip.GzipFile(fileobj=handle, mode="rb") if head == b"\x1f\x8b" else handle
    raw = reader.read(544)
    image_class: Any = (
        nib.Nifti2Image
        if int.from_bytes(raw[:4], "little") == 540 or raw[:4] == b"\x00\x00\x02\x1c"
        else nib.Nifti1Image
    )
    header = image_class.header_class.from_fileobj(io.BytesIO(raw))
    offset = min(int(header.get_data_offset()), 1 << 20)
    raw += reader.read(max(0, offset - len(raw)))
    image = image_class.from_file_map(image_class.make_file_map({"image": io.BytesIO(raw[:offset])}))
    return {"affine": image.affine, "header": image.header, "shape": image.shape}


def _decode_for_cache(source: Source, resource: Resource, axis: int) -> tuple[np.ndarray[Any, Any], dict[str, Any]]:
    decoded = decode_resource(source, resource)
    array = decoded.array
    stored = to_slice_major(array, axis) if array.ndim == 4 else array
    meta: dict[str, Any] = {
        "format": resource.metadata.get("format"),
        "layout": "slice-major" if array.ndim == 4 else "chw",
        "slice_axis": axis,
        "spacing": list(decoded.spacing) if decoded.spacing is not None else None,
        "affine": decoded.affine.tolist() if decoded.affine is not None else None,
    }
    if len(resource.files) > 1:
        meta["metainfo_file_index"] = _file_of_dataset(source, resource, decoded.metainfo)
    return stored, meta  # a view: ArrayCache.put writes it slice by slice, with no whole-volume copy


def _file_of_dataset(source: Source, resource: Resource, dataset: Any) -> int:
    """Position in ``resource.files`` of the series file the decoded metainfo came from (by SOPInstanceUID)."""
    import pydicom

    wanted = getattr(dataset, "SOPInstanceUID", None)
    for position, relpath in enumerate(resource.files):
        with source.open_file(relpath) as handle:
            header = pydicom.dcmread(handle, stop_before_pixels=True, specific_tags=["SOPInstanceUID"], force=True)
        if wanted is not None and getattr(header, "SOPInstanceUID", None) == wanted:
            return position
    return 0


def _entry(source: Source, cache: ArrayCache, resource: Resource, axis: int) -> CachedArray:
    key = decoded_cache_key(resource, axis)
    return cache.get_or_create(key, lambda: _decode_for_cache(source, resource, axis))


def _geometry(meta: Mapping[str, Any]) -> tuple[tuple[float, ...] | None, np.ndarray[Any, Any] | None]:
    spacing = tuple(meta["spacing"]) if meta.get("spacing") is not None else None
    affine = np.asarray(meta["affine"], dtype=np.float64) if meta.get("affine") is not None else None
    return spacing, affine


def _volume_shape(entry: CachedArray, axis: int) -> tuple[int, ...]:
    """(C,N,H,W) of a slice-major entry (stored with ``axis`` first)."""
    first, *rest = (int(n) for n in entry.meta["shape"])
    rest.insert(axis + 1, first)  # the inverse of to_slice_major's move of axis + 1 to the front
    return tuple(rest)


@dataclass(frozen=True)
class CachedDecode:
    """Adds ``image`` (read-only memory-mapped view, (C,H,W) or (C,N,H,W)), ``spacing``, ``affine`` and, when
    ``metainfo`` is true, ``metainfo`` (from headers) -- the same values as ``DecodeImage``.

    With ``slice_only`` and a sample that has ``slice_index`` (random access to one slice), a volume's ``image``
    is only that slice along ``slice_axis`` -- ``image[:, k]``, ``image[:, :, k]`` or ``image[..., k]`` of the
    volume -- read from the cache alone (one slice decompressed for an ``lz4`` cache, not the volume), and
    ``volume_shape`` gives the volume's (C,N,H,W).
    """

    source: Source
    cache: ArrayCache
    slice_axis: str | int = "axial"
    metainfo: bool = True
    slice_only: bool = False

    def __post_init__(self) -> None:
        slice_axis_index(self.slice_axis)

    def __call__(self, sample: Sample) -> Sample:
        resource = sample["resource"]
        axis = slice_axis_index(self.slice_axis)
        entry = _entry(self.source, self.cache, resource, axis)
        out: dict[str, Any] = dict(sample)
        if entry.meta["layout"] != "slice-major":
            out["image"] = entry.whole()
        elif self.slice_only and sample.get("slice_index") is not None:
            out["image"] = entry.slice(int(sample["slice_index"]))
            out["volume_shape"] = _volume_shape(entry, axis)
        else:
            out["image"] = from_slice_major(entry.whole(), axis)
        spacing, affine = _geometry(entry.meta)
        out.update(spacing=spacing, affine=affine)
        out["metainfo"] = read_metainfo(self.source, resource, entry.meta) if self.metainfo else None
        return out  # type: ignore[return-value]


@dataclass(frozen=True)
class SliceIndex:
    """Every (resource position, slice number) along ``slice_axis``, from the catalogue's ``shape`` headers.

    A 2D resource counts as one slice. ``len(index)`` is the number of slices; ``index[i]`` the pair.
    """

    resource_positions: tuple[int, ...]
    slice_numbers: tuple[int, ...]

    @classmethod
    def from_resources(cls, resources: Sequence[Resource], slice_axis: str | int = "axial") -> SliceIndex:
        axis = slice_axis_index(slice_axis)
        positions: list[int] = []
        numbers: list[int] = []
        for position, resource in enumerate(resources):
            shape = resource.metadata.get("shape")
            if shape is None:
                raise ValueError(f"resource {resource.id} has no 'shape' in its metadata; probe it first")
            count = int(shape[axis + 1]) if len(shape) == 4 else 1
            positions.extend([position] * count)
            numbers.extend(range(count))
        return cls(tuple(positions), tuple(numbers))

    def __len__(self) -> int:
        return len(self.resource_positions)

    def __getitem__(self, index: int) -> tuple[int, int]:
        return self.resource_positions[index], self.slice_numbers[index]


@dataclass(frozen=True)
class ReadSlice:
    """``index -> Sample`` for random access: one slice of one resource, read from the decoded cache.

    The sample has ``index`` (the global slice index), ``resource_id``, ``resource``, ``annotations``,
    ``slice_index``, ``slice_axis``, ``image`` ((C,H,W) for volumes sliced along the axis; the image itself
    for 2D resources), ``spacing`` and ``affine`` of the volume. The first read of a resource decodes it
    whole and caches it; later reads touch only their slice.
    """

    source: Source
    cache: ArrayCache
    resources: Sequence[Resource]
    index: SliceIndex
    annotations: Mapping[str, Sequence[Annotation]] = field(default_factory=dict)
    slice_axis: str | int = "axial"

    def __call__(self, index: int) -> Sample:
        position, number = self.index[index]
        resource = self.resources[position]
        axis = slice_axis_index(self.slice_axis)
        entry = _entry(self.source, self.cache, resource, axis)
        image = entry.slice(number) if entry.meta["layout"] == "slice-major" else entry.whole()
        spacing, affine = _geometry(entry.meta)
        return {
            "index": int(index),
            "epoch": getattr(index, "epoch", 0),
            "resource_id": resource.id,
            "resource": resource,
            "annotations": list(self.annotations.get(resource.id, ())),
            "slice_index": number,
            "slice_axis": str(self.slice_axis),
            "image": image,
            "spacing": spacing,
            "affine": affine,
        }


# Masks are stored LZ4-compressed whatever the cache's default: mostly zeros, a W1 liver mask (26 MB as uint8)
# takes 0.15 MB, so the first epoch writes almost nothing for it, and decompressing it (~5 GB/s) costs less than
# faulting in 26 MB of a fresh memory map.
MASK_COMPRESSION: Compression = "lz4"


def _segmentation_versions(annotations: Sequence[Annotation]) -> list[tuple[Any, ...]]:
    return sorted(
        (a.id, a.identifier, a.created_at, a.deleted_at, a.file, a.frame_index, a.author)
        for a in annotations
        if a.is_segmentation()
    )


def masks_cache_key(resource: Resource, annotations: Sequence[Annotation], slice_axis: int) -> str:
    """Key of a resource's per-annotation masks: its content and every segmentation's identity and version."""
    content = resource.metadata.get("sha256") or ["id", resource.id, *resource.cache_version]
    versions = _segmentation_versions(annotations)
    return cache_key("masks", content, versions, __version__, "slice-major", slice_axis)


@dataclass(frozen=True)
class CachedMasks:
    """:class:`~datamint_pipes.stages.annotations.LoadMasks` through the decoded cache: every segmentation's mask
    is read once per machine and stored slice-major beside the image, so later epochs map it instead of
    inflating the mask files again.

    Adds ``masks = {annotation_id: uint8 ([N,]H,W)}`` (read-only views), the same keys, order and values as
    ``LoadMasks``. Place it after :class:`CachedDecode` (it needs ``image``'s shape) with the same ``slice_axis``.
    """

    source: Source
    cache: ArrayCache
    slice_axis: str | int = "axial"

    def __call__(self, sample: Sample) -> Sample:
        from datamint_pipes.stages.annotations import load_mask

        annotations = [a for a in sample.get("annotations", ()) if a.is_segmentation()]
        out: dict[str, Any] = dict(sample)
        if not annotations:
            out["masks"] = {}
            return out  # type: ignore[return-value]
        shape = tuple(sample["image"].shape)
        axis = slice_axis_index(self.slice_axis)
        volume = len(shape) == 4
        ordered = sorted(annotations, key=lambda a: a.id)

        def create() -> tuple[np.ndarray[Any, Any], dict[str, Any]]:
            stacked = np.stack([load_mask(self.source, a, shape) for a in ordered])  # (M,[N,]H,W)
            stored = np.moveaxis(stacked, axis + 1, 0) if volume else stacked
            return stored, {"ids": [a.id for a in ordered]}

        key = masks_cache_key(sample["resource"], annotations, axis)
        entry = self.cache.get_or_create(key, create, compression=MASK_COMPRESSION)
        stacked = np.moveaxis(entry.whole(), 0, axis + 1) if volume else entry.whole()
        position = {identifier: i for i, identifier in enumerate(entry.meta["ids"])}
        out["masks"] = {a.id: stacked[position[a.id]] for a in annotations}
        return out  # type: ignore[return-value]


def segmentations_cache_key(
    resource: Resource, annotations: Sequence[Annotation], seg_codes: Mapping[str, int], slice_axis: int
) -> str:
    """Key of a resource's instance masks: its content, every segmentation's identity and version, the codes."""
    content = resource.metadata.get("sha256") or ["id", resource.id, *resource.cache_version]
    versions = _segmentation_versions(annotations)
    codes = sorted(seg_codes.items())
    return cache_key("segmentations", content, versions, codes, __version__, "slice-major", slice_axis)


@dataclass(frozen=True)
class CachedSegmentations:
    """``LoadSegmentations`` through the decoded cache: a resource's instance masks (every author, in the same
    order and values as :class:`~datamint_pipes.stages.annotations.LoadSegmentations`) are loaded once per
    machine and stored slice-major, so a slice item reads only its slice of every mask.

    Adds ``segmentations = {author: uint8 (I,[N,]H,W)}`` (read-only views) and ``seg_labels``. After a
    ``CachedDecode(slice_only=True)`` that read one slice (the sample has ``volume_shape``), with ``slice_only``
    each author's masks are that slice too: (I,H,W) for axial slices.
    """

    source: Source
    cache: ArrayCache
    seg_codes: Mapping[str, int]
    slice_axis: str | int = "axial"
    slice_only: bool = False

    def __call__(self, sample: Sample) -> Sample:
        from datamint_pipes.stages.annotations import load_segmentations

        annotations = [a for a in sample.get("annotations", ()) if a.is_segmentation()]
        out: dict[str, Any] = dict(sample)
        if not annotations:
            out.update(segmentations={}, seg_labels={})
            return out  # type: ignore[return-value]
        sliced = self.slice_only and sample.get("volume_shape") is not None and sample.get("slice_index") is not None
        shape = tuple(sample["volume_shape"]) if sliced else tuple(sample["image"].shape)
        axis = slice_axis_index(self.slice_axis)
        volume = len(shape) == 4

        def create() -> tuple[np.ndarray[Any, Any], dict[str, Any]]:
            loaded = load_segmentations(self.source, annotations, shape, self.seg_codes)
            authors = list(loaded.segmentations)
            stacked = np.concatenate([loaded.segmentations[a] for a in authors], axis=0)  # (I_total,[N,]H,W)
            stored = np.moveaxis(stacked, axis + 1, 0) if volume else stacked
            meta = {
                "authors": authors,
                "counts": [int(loaded.segmentations[a].shape[0]) for a in authors],
                "codes": {a: [int(c) for c in loaded.seg_labels[a]] for a in authors},
            }
            return stored, meta

        key = segmentations_cache_key(sample["resource"], annotations, self.seg_codes, axis)
        entry = self.cache.get_or_create(key, create, compression=MASK_COMPRESSION)
        if volume and sliced:
            masks = entry.slice(int(sample["slice_index"]))  # (I_total, ...) of that slice only
        else:
            masks = np.moveaxis(entry.whole(), 0, axis + 1) if volume else entry.whole()
        segmentations: dict[str, np.ndarray[Any, Any]] = {}
        seg_labels: dict[str, np.ndarray[Any, Any]] = {}
        start = 0
        for author, count in zip(entry.meta["authors"], entry.meta["counts"], strict=True):
            segmentations[author] = masks[start : start + count]
            seg_labels[author] = np.asarray(entry.meta["codes"][author], dtype=np.int32)
            start += count
        out.update(segmentations=segmentations, seg_labels=seg_labels)
        return out  # type: ignore[return-value]
