"""Segmentation (and box) annotations loaded as arrays aligned with the decoded image.

Stages:

* :class:`LoadSegmentations` adds the documented instance-mode keys (the compat contract, "Item keys"):
  ``segmentations = {author: uint8 (num_instances, [N,] H, W)}`` (0/1) and
  ``seg_labels = {author: int32 (num_instances,)}`` (1-based codes); with ``return_boxes`` also
  ``boxes = {author: float32 (num_boxes, 4)}`` ([x1, y1, x2, y2] in pixels), ``box_labels =
  {author: int32 (num_boxes,)}`` and ``box_frames = {author: int32 (num_boxes,)}`` (the frame index of a
  frame-scoped box, -1 for an image-scoped one).
* :class:`LoadMasks` adds ``masks = {annotation_id: uint8 ([N,]H,W)}``: one mask per segmentation, before any
  grouping (a frame-scoped mask fills its frame, zeros elsewhere).

Rules (shared by both, see :func:`load_segmentations`):

* The author is ``created_by``, else ``created_by_model``, else ``"unknown"``; author dicts are sorted by author.
* Within an author, image-scoped instances come first, ordered by ``created_at`` (annotations without one
  last) then ``id``; then one instance per frame-scoped (author, label) group: its masks stacked into an
  (N,H,W) volume, zeros on frames without a mask, masks of the same frame OR-ed; groups ordered by label
  code, then label name. The result therefore does not depend on the order annotations are listed in.
* Masks are decoded by the image decoders (PNG (H,W) for 2D images and frames; NIfTI for whole volumes,
  normalised exactly like the image), so a volume mask goes through the same orientation normalisation as
  its volume. Foreground = nonzero in any colour channel (an RGBA PNG's alpha channel is ignored).
* Image-scoped masks must have the image's spatial shape ((H,W) or (N,H,W)); frame masks the frame's (H,W).
  A frame-scoped mask on a 2D image, a frame index out of range, a shape mismatch, a missing or unreadable
  mask file and an unknown label all raise :class:`~datamint_pipes.errors.AnnotationError` naming the
  resource id and the annotation id(s).
"""

from __future__ import annotations

import datetime as _dt
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from datamint_pipes import decode
from datamint_pipes.errors import AnnotationError, DatamintPipesError
from datamint_pipes.model import Annotation, Sample, parse_timestamp
from datamint_pipes.sources.base import Source

__all__ = [
    "Boxes",
    "InstanceSegmentations",
    "LoadMasks",
    "LoadSegmentations",
    "load_boxes",
    "load_mask",
    "load_segmentations",
]

#: Resolves a label name missing from the code mapping to a 1-based code; ``None``, ``LookupError`` or
#: ``ValueError`` mean it is unknown too.
CodeResolver = Callable[[str], int | None]

_NO_TIME = _dt.datetime.max.replace(tzinfo=_dt.UTC)


class InstanceSegmentations(NamedTuple):
    """Instance masks per author, as the contract's ``segmentations`` / ``seg_labels`` keys.

    Attributes:
        segmentations: ``{author: uint8 (num_instances, [N,] H, W)}``, values 0/1, sorted by author.
        seg_labels: ``{author: int32 (num_instances,)}``, 1-based label codes, same authors and order.
    """

    segmentations: dict[str, np.ndarray[Any, Any]]
    seg_labels: dict[str, np.ndarray[Any, Any]]


class Boxes(NamedTuple):
    """Boxes per author (authors sorted).

    Attributes:
        boxes: ``{author: float32 (num_boxes, 4)}`` as [x1, y1, x2, y2] (x along W, y along H, x1 <= x2, y1 <= y2).
        labels: ``{author: int32 (num_boxes,)}``, 1-based codes.
        frames: ``{author: int32 (num_boxes,)}``, frame index of a frame-scoped box, -1 for an image-scoped one.
    """

    boxes: dict[str, np.ndarray[Any, Any]]
    labels: dict[str, np.ndarray[Any, Any]]
    frames: dict[str, np.ndarray[Any, Any]]


# -- shared helpers -------------------------------------------------------------------------------------------


def _fail(annotation: Annotation, message: str) -> AnnotationError:
    return AnnotationError(f"annotation {annotation.id}: {message}", resource_id=annotation.resource_id)


def _spatial_shape(image_shape: Sequence[int]) -> tuple[int, ...]:
    spatial = tuple(int(n) for n in image_shape[1:])
    if len(spatial) not in (2, 3):
        raise ValueError(f"{tuple(image_shape)=} must be (C,H,W) or (C,N,H,W)")
    return spatial


def _created_key(annotation: Annotation) -> tuple[_dt.datetime, str]:
    """Sort key of image-scoped instances: ``created_at`` (missing ones last), then ``id``."""
    if not annotation.created_at:
        return (_NO_TIME, annotation.id)
    try:
        return (parse_timestamp(annotation.created_at), annotation.id)
    except ValueError as error:
        raise _fail(annotation, f"created_at {annotation.created_at!r} is not a timestamp") from error


def _check_frame(annotation: Annotation, spatial: tuple[int, ...]) -> int:
    """The frame index of a frame-scoped annotation, checked against the image's frames."""
    if len(spatial) == 2:
        raise _fail(annotation, f"is frame-scoped (frame {annotation.frame_index}) but its image is 2D {spatial}")
    if annotation.frame_index is None:
        raise _fail(annotation, "is frame-scoped but has no frame index")
    if not 0 <= annotation.frame_index < spatial[0]:
        raise _fail(annotation, f"frame {annotation.frame_index} is outside the image's frames 0..{spatial[0] - 1}")
    return annotation.frame_index


def _resolve_codes(
    annotations: Sequence[Annotation], codes: Mapping[str, int], resolve: CodeResolver | None
) -> list[int]:
    """The 1-based code of every annotation's label; one error naming every unknown label and its annotations."""
    out: list[int] = []
    unknown: dict[str, list[str]] = defaultdict(list)
    for annotation in annotations:
        code = codes.get(annotation.identifier)
        if code is None and resolve is not None:
            try:
                code = resolve(annotation.identifier)
            except (LookupError, ValueError):  # the resolver does not know it either
                code = None
        if code is None:
            unknown[annotation.identifier].append(annotation.id)
            out.append(0)
            continue
        if int(code) < 1:
            raise _fail(annotation, f"label {annotation.identifier!r} has code {code}; codes are 1-based")
        out.append(int(code))
    if unknown:
        listed = "; ".join(f"{name!r} (annotations {', '.join(ids)})" for name, ids in sorted(unknown.items()))
        raise AnnotationError(
            f"unknown segmentation label(s) {listed}; known: {sorted(codes)}",
            resource_id=annotations[0].resource_id,
        )
    return out


def _read_foreground(source: Source, annotation: Annotation) -> np.ndarray[Any, np.dtype[np.bool_]]:
    """The decoded mask of ``annotation`` as bool: (H,W) for a PNG, (N,H,W) for a volume file."""
    relpath = annotation.file or annotation.associated_file
    if relpath is None:
        raise _fail(annotation, "is a segmentation without a mask file")
    try:
        path = source.local_path(relpath)
        if path is not None:
            decoded = decode.decode(path, filename=relpath, resource_id=annotation.resource_id)
        else:
            with source.open_file(relpath) as handle:
                decoded = decode.decode(handle.read(), filename=relpath, resource_id=annotation.resource_id)
    except (DatamintPipesError, OSError) as error:  # DecodeError, a source's FetchError or ProjectError, ...
        raise AnnotationError(
            f"mask of annotation {annotation.id} cannot be read: {error}",
            resource_id=annotation.resource_id,
            filename=relpath,
        ) from error
    array = decoded.array  # (C,H,W) or (C,N,H,W)
    if array.ndim == 3 and array.shape[0] == 4:
        array = array[:3]  # RGBA: the alpha channel is not a label
    if array.shape[0] == 1:
        return np.not_equal(array[0], 0)
    return np.any(array != 0, axis=0)


def _fit(
    annotation: Annotation, mask: np.ndarray[Any, Any], expected: tuple[int, ...], what: str
) -> np.ndarray[Any, Any]:
    """``mask`` with shape ``expected`` (a single-slice volume file counts as 2D); AnnotationError otherwise."""
    if mask.shape != expected and mask.ndim == len(expected) + 1 and mask.shape[0] == 1:
        mask = mask[0]
    if mask.shape != expected:
        raise _fail(annotation, f"mask shape {mask.shape} does not match the {what} {expected}")
    return mask


def _image_mask(source: Source, annotation: Annotation, spatial: tuple[int, ...]) -> np.ndarray[Any, Any]:
    """Bool mask of an image-scoped segmentation with the image's spatial shape."""
    return _fit(annotation, _read_foreground(source, annotation), spatial, "image's spatial shape")


def _frame_mask(source: Source, annotation: Annotation, spatial: tuple[int, ...]) -> tuple[int, np.ndarray[Any, Any]]:
    """(frame index, bool (H,W) mask) of a frame-scoped segmentation."""
    frame = _check_frame(annotation, spatial)
    return frame, _fit(annotation, _read_foreground(source, annotation), spatial[1:], "frame shape (H,W)")


# -- public functions -----------------------------------------------------------------------------------------


def load_mask(source: Source, annotation: Annotation, image_shape: tuple[int, ...]) -> np.ndarray[Any, Any]:
    """The mask of one segmentation annotation as uint8 0/1 with spatial shape ``image_shape[1:]``.

    ``image_shape`` is the decoded image's (C,H,W) or (C,N,H,W). A frame-scoped mask of a volume or video is
    placed on its frame of an (N,H,W) array of zeros. Raises :class:`AnnotationError` as the module says.
    """
    spatial = _spatial_shape(image_shape)
    if annotation.is_frame_scoped():
        frame, mask = _frame_mask(source, annotation, spatial)
        full = np.zeros(spatial, np.uint8)
        full[frame] = mask
        return full
    return _image_mask(source, annotation, spatial).astype(np.uint8)


def load_segmentations(
    source: Source,
    annotations: Iterable[Annotation],
    image_shape: Sequence[int],
    seg_codes: Mapping[str, int],
    *,
    resolve: CodeResolver | None = None,
) -> InstanceSegmentations:
    """Instance masks and label codes per author for the segmentations among ``annotations``.

    Args:
        source: where the mask files are read from.
        annotations: the sample's (already filtered) annotations; those that are not segmentations are ignored.
        image_shape: the decoded image's shape, (C,H,W) or (C,N,H,W).
        seg_codes: segmentation label name -> 1-based code.
        resolve: called for a label missing from ``seg_codes`` (e.g. external annotations allowed); without it
            an unknown label raises :class:`AnnotationError`.

    Returns:
        ``segmentations = {author: uint8 (num_instances, *image_shape[1:])}`` and
        ``seg_labels = {author: int32 (num_instances,)}``, ordered as the module docstring says. Authors with no
        segmentation are absent; no segmentation at all gives two empty dicts.
    """
    spatial = _spatial_shape(image_shape)
    segmentations = [a for a in annotations if a.is_segmentation()]
    if not segmentations:
        return InstanceSegmentations({}, {})
    codes = dict(zip((a.id for a in segmentations), _resolve_codes(segmentations, seg_codes, resolve), strict=True))
    image_scoped: dict[str, list[Annotation]] = defaultdict(list)
    frame_groups: dict[str, dict[tuple[int, str], list[Annotation]]] = defaultdict(lambda: defaultdict(list))
    for annotation in segmentations:
        if annotation.is_frame_scoped():
            _check_frame(annotation, spatial)  # before decoding anything
            frame_groups[annotation.author][(codes[annotation.id], annotation.identifier)].append(annotation)
        else:
            image_scoped[annotation.author].append(annotation)

    masks_by_author: dict[str, np.ndarray[Any, Any]] = {}
    codes_by_author: dict[str, np.ndarray[Any, Any]] = {}
    for author in sorted(image_scoped.keys() | frame_groups.keys()):
        singles = sorted(image_scoped.get(author, ()), key=_created_key)
        groups = sorted(frame_groups.get(author, {}).items())
        # Filled in place, one instance at a time, so peak memory is the result plus one decoded mask.
        out = np.zeros((len(singles) + len(groups), *spatial), np.uint8)
        for position, annotation in enumerate(singles):
            np.copyto(out[position], _image_mask(source, annotation, spatial))
        for position, (_key, members) in enumerate(groups, start=len(singles)):
            instance = out[position]
            for annotation in members:
                frame, mask = _frame_mask(source, annotation, spatial)
                np.bitwise_or(instance[frame], mask, out=instance[frame], casting="unsafe")
        masks_by_author[author] = out
        codes_by_author[author] = np.array(
            [codes[a.id] for a in singles] + [code for (code, _name), _members in groups], dtype=np.int32
        )
    return InstanceSegmentations(masks_by_author, codes_by_author)


def _box_corners(annotation: Annotation) -> tuple[float, float, float, float]:
    geometry = annotation.geometry
    points = geometry.get("points") if isinstance(geometry, Mapping) else geometry
    try:
        array = np.asarray(points, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise _fail(annotation, f"box geometry {geometry!r} is not a list of points") from error
    if array.ndim != 2 or array.shape[0] < 2 or array.shape[1] < 2 or not np.isfinite(array[:, :2]).all():
        raise _fail(annotation, f"box geometry {geometry!r} needs at least two finite [x, y] points")
    x1, y1 = array[:, :2].min(axis=0)
    x2, y2 = array[:, :2].max(axis=0)
    return float(x1), float(y1), float(x2), float(y2)


def load_boxes(
    annotations: Iterable[Annotation],
    image_shape: Sequence[int],
    box_codes: Mapping[str, int],
    *,
    resolve: CodeResolver | None = None,
) -> Boxes:
    """Boxes (``annotation_type == 'square'``) per author, from the corner points of their ``geometry``.

    ``geometry`` is ``{'points': [[x, y(, z)], ...]}`` or the bare list of points; the box is their bounding
    rectangle. Within an author: image-scoped boxes by (``created_at``, ``id``), then frame-scoped ones by
    (frame, ``created_at``, ``id``). Frame indices are checked against ``image_shape`` like masks; a malformed
    geometry or an unknown label raises :class:`AnnotationError`. Returns :class:`Boxes` (authors without a
    box are absent).
    """
    spatial = _spatial_shape(image_shape)
    squares = [a for a in annotations if a.annotation_type == "square"]
    if not squares:
        return Boxes({}, {}, {})
    codes = dict(zip((a.id for a in squares), _resolve_codes(squares, box_codes, resolve), strict=True))
    by_author: dict[str, list[tuple[int, tuple[_dt.datetime, str], Annotation]]] = defaultdict(list)
    for annotation in squares:
        frame = _check_frame(annotation, spatial) if annotation.is_frame_scoped() else -1
        by_author[annotation.author].append((frame, _created_key(annotation), annotation))
    boxes: dict[str, np.ndarray[Any, Any]] = {}
    labels: dict[str, np.ndarray[Any, Any]] = {}
    frames: dict[str, np.ndarray[Any, Any]] = {}
    for author in sorted(by_author):
        entries = sorted(by_author[author], key=lambda entry: entry[:2])
        boxes[author] = np.array([_box_corners(a) for _f, _k, a in entries], dtype=np.float32).reshape(-1, 4)
        labels[author] = np.array([codes[a.id] for _f, _k, a in entries], dtype=np.int32)
        frames[author] = np.array([f for f, _k, _a in entries], dtype=np.int32)
    return Boxes(boxes, labels, frames)


# -- stages ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadSegmentations:
    """Add ``segmentations`` and ``seg_labels`` (instance mode), and optionally the box keys.

    Needs ``image`` ((C,H,W) or (C,N,H,W), decoded) and ``annotations`` (filtered). ``seg_codes`` maps
    segmentation label names to 1-based codes (a label schema's ``segmentation_labels`` give position + 1);
    ``resolve`` (a picklable callable) handles names missing from it. With ``return_boxes``, ``boxes``,
    ``box_labels`` and ``box_frames`` are added too, coded by ``box_codes`` (default ``seg_codes``).
    See :func:`load_segmentations` and :func:`load_boxes`.
    """

    source: Source
    seg_codes: Mapping[str, int]
    resolve: CodeResolver | None = None
    return_boxes: bool = False
    box_codes: Mapping[str, int] | None = None

    def __call__(self, sample: Sample) -> Sample:
        shape = tuple(sample["image"].shape)
        annotations = sample.get("annotations", ())
        loaded = load_segmentations(self.source, annotations, shape, self.seg_codes, resolve=self.resolve)
        out: dict[str, Any] = {**sample, "segmentations": loaded.segmentations, "seg_labels": loaded.seg_labels}
        if self.return_boxes:
            codes = self.seg_codes if self.box_codes is None else self.box_codes
            boxes = load_boxes(annotations, shape, codes, resolve=self.resolve)
            out.update(boxes=boxes.boxes, box_labels=boxes.labels, box_frames=boxes.frames)
        return out  # type: ignore[return-value]


@dataclass(frozen=True)
class LoadMasks:
    """Add ``masks = {annotation_id: uint8 ([N,]H,W)}`` for every segmentation among ``annotations``."""

    source: Source

    def __call__(self, sample: Sample) -> Sample:
        shape = tuple(sample["image"].shape)
        masks = {a.id: load_mask(self.source, a, shape) for a in sample.get("annotations", ()) if a.is_segmentation()}
        out: dict[str, Any] = {**sample, "masks": masks}
        return out  # type: ignore[return-value]
