"""``AnnotationProcessor``: the documented methods, as thin wrappers over datamint-pipes' annotation stages."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch

from datamint_pipes.errors import AnnotationError
from datamint_pipes.model import Annotation
from datamint_pipes.sources.base import Source
from datamint_pipes.stages.annotations import (
    LabelSchema,
    image_categories_by_author,
    image_labels_by_author,
    instance_to_semantic,
    load_segmentations,
    merge_image_categories,
    merge_image_labels,
    merge_semantic,
)
from datamint_pipes.stages.annotations.segmentations import load_mask

__all__ = ["AnnotationProcessor"]

MergeStrategy = Literal["union", "intersection", "mode"]
_Lists = dict[str, list[Any]]


class AnnotationProcessor:
    """Generic annotation processing (see the documented API).

    ``seglabel2code`` maps segmentation names to 1-based codes; ``image_labels_set`` lists image labels;
    ``image_lcodes`` maps ``{'categories': {f'{identifier}:{value}': code}}``-style category codes (any
    ``{name: code}`` dict of dicts is accepted; its values give the category order). ``source`` (an
    addition) is where mask files are read from; without it ``Annotation.file`` must be a local path.
    """

    def __init__(
        self,
        seglabel2code: dict[str, int],
        image_labels_set: list[str],
        image_lcodes: dict[str, dict[str, int]],
        allow_external_annotations: bool = False,
        *,
        source: Source | None = None,
    ) -> None:
        self.seglabel2code = dict(seglabel2code)
        self.image_labels_set = list(image_labels_set)
        self.image_lcodes = image_lcodes
        self.allow_external_annotations = allow_external_annotations
        self.source = source

    # -- helpers ------------------------------------------------------------------------------------------

    def _schema(self) -> LabelSchema:
        categories: list[tuple[str, str]] = []
        for mapping in self.image_lcodes.values():
            for key, _ in sorted(mapping.items(), key=lambda item: item[1]):
                identifier, _, value = key.partition(":")
                categories.append((identifier, value))
        codes = sorted(self.seglabel2code.items(), key=lambda item: item[1])
        labels = ["UNKNOWN"] * (max((c for _, c in codes), default=0))
        for name, code in codes:
            labels[code - 1] = name
        return LabelSchema(
            segmentation_labels=tuple(labels),
            image_labels=tuple(self.image_labels_set),
            image_categories=tuple(categories),
        )

    def _source(self) -> Any:
        if self.source is not None:
            return self.source
        return _LocalFiles()

    # -- documented methods -------------------------------------------------------------------------------

    @staticmethod
    def filter_annotations(
        annotations: Sequence[Annotation],
        type: Literal["label", "category", "segmentation", "all"] = "all",
        scope: Literal["frame", "image", "all"] = "all",
    ) -> list[Annotation]:
        return [
            a
            for a in annotations
            if (type == "all" or a.annotation_type == type) and (scope == "all" or a.scope == scope)
        ]

    @staticmethod
    def get_author(ann: Annotation) -> str:
        return ann.author

    def group_annotations(
        self, annotations: Iterable[Annotation], by_author: bool = False, by_identifier: bool = False
    ) -> dict[tuple[Any, ...], list[Annotation]]:
        groups: dict[tuple[Any, ...], list[Annotation]] = {}
        for annotation in annotations:
            key: tuple[Any, ...] = ()
            if by_author:
                key += (annotation.author,)
            if by_identifier:
                key += (annotation.identifier,)
            groups.setdefault(key, []).append(annotation)
        return dict(sorted(groups.items(), key=lambda item: tuple(map(str, item[0]))))

    def resolve_seg_code(self, identifier: str) -> int:
        if identifier in self.seglabel2code:
            return self.seglabel2code[identifier]
        if not self.allow_external_annotations:
            raise ValueError(f"unknown segmentation label {identifier!r} (allow_external_annotations is False)")
        code = max(self.seglabel2code.values(), default=0) + 1
        self.seglabel2code[identifier] = code
        return code

    def load_segmentation_data(self, ann: Annotation, auto_convert_gray: bool = True) -> np.ndarray[Any, Any]:
        """Binary mask (N,H,W) of one segmentation: N=1 for a 2D/frame mask, N=depth for a volume mask."""
        mask = load_mask(self._source(), ann, _mask_shape_hint(self._source(), ann))
        return mask[np.newaxis] if mask.ndim == 2 else mask

    def load_segmentations(
        self, annotations: Iterable[Annotation], image_shape: Sequence[int] | None = None
    ) -> tuple[dict[str, np.ndarray[Any, Any]], dict[str, np.ndarray[Any, Any]], dict[str, list[Annotation]]]:
        """Instance masks ``{author: (I,N,H,W)}``, codes ``{author: (I,)}`` and the annotations per author."""
        annotations = [a for a in annotations if a.is_segmentation()]
        if not annotations:
            return {}, {}, {}
        shape = tuple(image_shape) if image_shape is not None else _image_shape_of(self, annotations)
        resolve = self.resolve_seg_code if self.allow_external_annotations else None
        loaded = load_segmentations(self._source(), annotations, shape, self.seglabel2code, resolve=resolve)
        by_author: dict[str, list[Annotation]] = {}
        for annotation in annotations:
            by_author.setdefault(annotation.author, []).append(annotation)
        return loaded.segmentations, loaded.seg_labels, dict(sorted(by_author.items()))

    def load_image_segmentations(
        self, annotations: Iterable[Annotation]
    ) -> tuple[dict[str, list], dict[str, list], dict[str, list]]:
        image_scoped = [a for a in annotations if a.is_segmentation() and a.is_image_scoped()]
        masks, codes, anns = self.load_segmentations(image_scoped)
        return (
            {a: list(m) for a, m in masks.items()},
            {a: [int(c) for c in v] for a, v in codes.items()},
            anns,
        )

    def load_frame_segmentations(
        self, annotations: Iterable[Annotation]
    ) -> tuple[dict[str, list], dict[str, list], dict[str, list]]:
        frame_scoped = [a for a in annotations if a.is_segmentation() and a.is_frame_scoped()]
        masks, codes, _ = self.load_segmentations(frame_scoped)
        groups = self.group_annotations(frame_scoped, by_author=True, by_identifier=True)
        anns: dict[str, list[list[Annotation]]] = {}
        for (author, _), members in groups.items():
            anns.setdefault(author, []).append(members)
        return (
            {a: [m] for a, m in masks.items()},
            {a: [int(c) for c in v] for a, v in codes.items()},
            anns,
        )

    def collate_frame_segmentations(
        self, fr_anns: Sequence[Annotation], depth: int | None = None
    ) -> tuple[np.ndarray[Any, Any] | None, int]:
        """Stack frame masks of one (author, label) group into (depth, H, W); returns it and its code."""
        if not fr_anns:
            return None, 0
        first = self.load_segmentation_data(fr_anns[0])
        height, width = first.shape[-2:]
        frames = depth if depth is not None else max(int(a.frame_index or 0) for a in fr_anns) + 1
        stacked = np.zeros((frames, height, width), np.uint8)
        for annotation in fr_anns:
            stacked[int(annotation.frame_index or 0)] |= self.load_segmentation_data(annotation)[0]
        return stacked, self.resolve_seg_code(fr_anns[0].identifier)

    def instance_to_semantic_segmentation(self, segmentations: Any, seg_labels: Any, num_labels: int) -> Any:
        if segmentations is None:
            return None
        return instance_to_semantic(segmentations, seg_labels, num_labels)

    def apply_merge_strategy(self, segmentations: Mapping[str, Any], strategy: MergeStrategy | None) -> Any:
        if strategy is None:
            return dict(segmentations)
        merged = merge_semantic(segmentations, strategy)
        if segmentations and all(isinstance(v, np.ndarray) for v in segmentations.values()):
            return merged.numpy()
        return merged

    def convert_image_labels(self, annotations: Sequence[Annotation]) -> dict[str, torch.Tensor]:
        return image_labels_by_author(annotations, self._schema())

    def convert_image_categories(self, annotations: Sequence[Annotation]) -> dict[str, torch.Tensor]:
        return image_categories_by_author(annotations, self._schema())

    def merge_image_labels(self, labels_by_user: dict[str, torch.Tensor], strategy: MergeStrategy) -> torch.Tensor:
        return merge_image_labels(labels_by_user, strategy, num_labels=len(self.image_labels_set))

    @staticmethod
    def merge_image_categories(
        categories_by_user: dict[str, torch.Tensor], strategy: MergeStrategy, num_categories: int
    ) -> torch.Tensor:
        return merge_image_categories(categories_by_user, strategy, num_categories=num_categories)


class _LocalFiles:
    """A minimal source for annotations whose ``file`` is a local path."""

    def local_path(self, relpath: str) -> str:
        return relpath

    def open_file(self, relpath: str) -> Any:
        return open(relpath, "rb")


def _mask_shape_hint(source: Any, annotation: Annotation) -> tuple[int, ...]:
    """The spatial shape of the mask itself (read once), as an image shape (1, ...)."""
    from datamint_pipes import decode

    relpath = annotation.file or annotation.associated_file
    if relpath is None:
        raise AnnotationError(f"segmentation {annotation.id} has no mask file", resource_id=annotation.resource_id)
    path = source.local_path(relpath)
    probed = decode.probe(path, filename=relpath) if path is not None else None
    if probed is None:
        with source.open_file(relpath) as handle:
            probed = decode.probe(handle.read(), filename=relpath)
    spatial = probed.shape[1:]
    if annotation.frame_index is not None:
        return (1, annotation.frame_index + 1, *spatial[-2:])
    return (1, *spatial)


def _image_shape_of(processor: AnnotationProcessor, annotations: Sequence[Annotation]) -> tuple[int, ...]:
    shapes = [_mask_shape_hint(processor._source(), a) for a in annotations]
    height, width = shapes[0][-2:]
    depth = max((s[1] for s in shapes if len(s) == 4), default=None)
    return (1, depth, height, width) if depth is not None else (1, height, width)
