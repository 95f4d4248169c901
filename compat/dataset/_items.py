"""The stages the facades configure, and the function that chains them for one dataset configuration.

A facade item is produced by exactly these core stages, in this order (each emits the keys named)::

    ReadResource / ReadSlice          index -> resource, annotations (filtered), epoch [, slice_index, image]
    CachedDecode                      -> image (C,[N,]H,W), metainfo, spacing, affine
    CachedSegmentations               -> segmentations {author: uint8 (I,[N,]H,W)}, seg_labels {author: int32}
    SliceSample                       (sliced datasets) -> the slice of image and segmentations
    CompatImage                       -> image (and masks) in the contract's layout; image in its dtype
    Augment                           (alb_transform) -> same keys, transformed together
    SemanticSegmentations             (semantic) -> float32 channels, merged tensor without seg_labels
    ImageLabels                       -> image_labels, image_categories
    CompatOutput                      -> only the documented keys

:func:`item_stages` returns that list; ``DatamintBaseDataset.__getitem__`` applies it to one index and
``DatamintBaseDataset.pipeline()`` hands the same list to :class:`~datamint_pipes.pipeline.Pipeline`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from datamint_pipes.cache import ArrayCache
from datamint_pipes.decode import minmax_to_uint8
from datamint_pipes.model import Annotation, Resource, ResourceKind, Sample
from datamint_pipes.sources.base import Source
from datamint_pipes.stages.annotations import ImageLabels, LabelSchema, SemanticSegmentations
from datamint_pipes.stages.cached import CachedDecode, CachedSegmentations
from datamint_pipes.stages.expand import slice_axis_index, slice_view
from datamint_pipes.stages.load import ReadResource

from ._errors import DatamintDatasetException

Layout = Literal["2d", "volume"]

DOCUMENTED_KEYS = (
    "image",
    "metainfo",
    "segmentations",
    "seg_labels",
    "image_labels",
    "image_categories",
    "annotations",
    "resource",
)


class FacadeError(DatamintDatasetException, ValueError):
    """Raised by compat stages: the documented ``DatamintDatasetException`` (and a ``ValueError``), in
    ``__getitem__`` and in pipeline workers alike."""


@dataclass(frozen=True)
class CompatImage:
    """The contract's image layout and dtype.

    * ``layout='2d'``: (C,H,W); a single-slice (C,1,H,W) image is squeezed; several slices are an error.
    * ``layout='volume'``: (C,N,H,W); a 2D image becomes (C,1,H,W).
    * Instance masks already loaded (``segmentations = {author: (I,[N,]H,W)}``, loaded against the decoded
      shape) get the same squeeze or new axis, so they keep matching the image.
    * 16-bit PNG/JPEG: min-max scaled to uint8 per image (a constant image gives zeros); NIfTI: float32.
      DICOM keeps the decoder's dtype (float32 when rescaled, the stored integer type otherwise).
    """

    layout: Layout

    def __call__(self, sample: Sample) -> Sample:
        image = np.asarray(sample["image"])
        resource = sample["resource"]
        out: dict[str, Any] = dict(sample)
        if self.layout == "2d":
            if image.ndim == 4:
                if image.shape[1] != 1:
                    raise FacadeError(
                        f"resource {resource.id} ({resource.filename}) has {image.shape[1]} frames; ImageDataset "
                        "serves 2D images: use VolumeDataset(...).slice() or VideoDataset(...).frame_by_frame()"
                    )
                image = image[:, 0]
                _reshape_masks(out, lambda masks: masks[:, 0])
        elif image.ndim == 3:
            image = image[:, np.newaxis]
            _reshape_masks(out, lambda masks: masks[:, np.newaxis])
        kind = resource.kind
        if kind == ResourceKind.IMAGE and image.dtype == np.uint16:
            image = minmax_to_uint8(image)
        elif kind == ResourceKind.NIFTI and image.dtype != np.float32:
            image = image.astype(np.float32)
        out["image"] = image
        return out  # type: ignore[return-value]


def _reshape_masks(sample: dict[str, Any], reshape: Callable[[np.ndarray[Any, Any]], np.ndarray[Any, Any]]) -> None:
    """Apply the image's squeeze / new axis to every author's (I,[N,]H,W) masks, when they are loaded."""
    segmentations = sample.get("segmentations")
    if isinstance(segmentations, Mapping):
        sample["segmentations"] = {author: reshape(masks) for author, masks in segmentations.items()}


@dataclass(frozen=True)
class SliceSample:
    """Take slice ``sample['slice_index']`` along ``slice_axis`` of a (C,N,H,W) image and of every author's
    (I,N,H,W) instance masks; volumes become (C,H,W) items with (I,H,W) masks."""

    slice_axis: str | int

    def __call__(self, sample: Sample) -> Sample:
        axis = slice_axis_index(self.slice_axis)
        k = sample["slice_index"]
        out: dict[str, Any] = dict(sample)
        image = sample["image"]
        if image.ndim == 4:
            out["image"] = slice_view(image, k, axis + 1)
            segmentations = sample.get("segmentations")
            if isinstance(segmentations, Mapping):
                out["segmentations"] = {a: slice_view(m, k, axis + 1) for a, m in segmentations.items()}
        return out  # type: ignore[return-value]


@dataclass(frozen=True)
class ReadSliceOf:
    """``index -> Sample`` of slice ``k`` of resource ``r`` for a global slice index (a catalogue lookup)."""

    resources: Sequence[Resource]
    annotations: Mapping[str, Sequence[Annotation]]
    positions: Sequence[int]
    slice_numbers: Sequence[int]
    slice_axis: str | int
    epoch: int = 0

    def __call__(self, index: int) -> Sample:
        sample = ReadResource(self.resources, self.annotations)(self.positions[index])
        out: dict[str, Any] = {
            **sample,
            "index": int(index),
            "epoch": getattr(index, "epoch", self.epoch),
            "slice_index": self.slice_numbers[index],
            "slice_axis": str(self.slice_axis),
        }
        return out  # type: ignore[return-value]


@dataclass(frozen=True)
class CompatOutput:
    """Keep only the documented keys the configuration asks for."""

    return_metainfo: bool
    return_segmentations: bool

    def __call__(self, sample: Sample) -> dict[str, Any]:
        keys = set(DOCUMENTED_KEYS)
        if not self.return_metainfo:
            keys.discard("metainfo")
        if not self.return_segmentations:
            keys -= {"segmentations", "seg_labels"}
        return {k: v for k, v in sample.items() if k in keys}


@dataclass(frozen=True)
class ItemConfig:
    """Everything that decides what an item looks like (picklable)."""

    layout: Layout
    return_metainfo: bool = True
    return_segmentations: bool = True
    return_as_semantic_segmentation: bool = False
    semantic_seg_merge_strategy: str | None = None
    image_labels_merge_strategy: str | None = None
    image_categories_merge_strategy: str | None = None
    alb_transform: Any = None
    slice_axis: str | int | None = None  # set for sliced datasets
    seed: int = 0
    extra_stages: tuple[Callable[[Any], Any], ...] = field(default=())


def item_stages(
    config: ItemConfig,
    source: Source,
    cache: ArrayCache,
    schema: LabelSchema,
    first: Callable[[int], Sample],
) -> list[Callable[[Any], Any]]:
    """The facade's stages after ``first`` (the index -> sample reader), as listed in the module docstring."""
    decode_axis = config.slice_axis if config.slice_axis is not None else "axial"
    # A sliced item reads its slice alone from the cache (image and masks, cached slice-major), never the volume.
    sliced = config.slice_axis is not None
    stages: list[Callable[[Any], Any]] = [
        first,
        CachedDecode(source, cache, decode_axis, metainfo=config.return_metainfo, slice_only=sliced),
    ]
    if config.return_segmentations:
        # Masks load against the decoded shape (cached slice-major like the image); CompatImage then gives
        # image and masks the facade's layout.
        stages.append(CachedSegmentations(source, cache, schema.segmentation_codes, decode_axis, slice_only=sliced))
    if config.slice_axis is not None:
        # Slice first, so dtype conversions touch one slice, not the whole volume, per item.
        stages.append(SliceSample(config.slice_axis))
        stages.append(CompatImage("2d"))
    else:
        stages.append(CompatImage(config.layout))
    if config.alb_transform is not None:
        from datamint_pipes.stages.augment import Augment

        stages.append(Augment(config.alb_transform, seed=config.seed))
    if config.return_segmentations and config.return_as_semantic_segmentation:
        stages.append(
            SemanticSegmentations(schema.num_segmentation_labels, config.semantic_seg_merge_strategy)  # type: ignore[arg-type]
        )
    stages.append(
        ImageLabels(
            schema,
            labels_merge_strategy=config.image_labels_merge_strategy,  # type: ignore[arg-type]
            categories_merge_strategy=config.image_categories_merge_strategy,  # type: ignore[arg-type]
        )
    )
    stages.extend(config.extra_stages)
    stages.append(CompatOutput(config.return_metainfo, config.return_segmentations))
    return stages


def run_stages(stages: Sequence[Callable[[Any], Any]], index: int) -> Any:
    """Apply ``stages`` to one index (the map-style path of ``__getitem__``)."""
    value: Any = index
    for stage in stages:
        value = stage(value)
    return value
