"""Image-level labels and categories as tensors, per author or merged (the compat contract's "Item keys").

* ``image_labels`` -- without a strategy ``{author: torch.int32 (num_image_labels,)}`` multi-hot, one entry
  per author with at least one image label (``{}`` when none); with a strategy one
  ``torch.int32 (num_image_labels,)``: ``'union'`` = any author, ``'intersection'`` = every author who
  labelled, ``'mode'`` = at least half of them (``2 * count >= authors``).
* ``image_categories`` -- without a strategy ``{author: torch.int64 0-D}``, the class code of that author's
  first category; ``'mode'`` -> ``torch.int64`` 0-D, the majority code (ties to the lowest code, ``-1`` when no
  author gave one); ``'union'`` / ``'intersection'`` -> ``torch.int32 (num_image_categories,)`` multi-hot of
  the authors' codes.

An author's "first" category is the earliest by ``created_at`` (annotations without one come after those
with one), ties broken by annotation ``id`` -- so the result does not depend on the order the catalogue
returns. Upstream takes the first one it happens to meet.

Codes come from the :class:`~.schema.LabelSchema`: a label's position in ``image_labels``, a category's
position in ``image_categories``. Author = ``created_by``, else ``created_by_model``, else ``'unknown'``;
dicts are ordered by author. Only image-scoped annotations count.

An image label or category the schema does not know raises :class:`~datamint_pipes.errors.AnnotationError`
naming the resource and the annotations. In a dataset this cannot happen: :class:`~.filters.AnnotationFilter`
with the same schema has already dropped them (``allow_external_annotations=False``) or the schema was
extended to include them (``True``). It signals a schema that does not match the annotations.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast, get_args

import numpy as np
import torch

from datamint_pipes.errors import AnnotationError
from datamint_pipes.model import Annotation, Sample, parse_timestamp
from datamint_pipes.stages.annotations.schema import LabelSchema, _is_frame_scoped

__all__ = [
    "ImageLabels",
    "image_categories_by_author",
    "image_labels_by_author",
    "merge_image_categories",
    "merge_image_labels",
]

MergeStrategy = Literal["union", "intersection", "mode"]
_STRATEGIES: tuple[str, ...] = get_args(MergeStrategy)
_NO_TIME = _dt.datetime.min.replace(tzinfo=_dt.UTC)


def _check_strategy(strategy: object, what: str) -> None:
    if strategy not in _STRATEGIES:
        raise ValueError(f"{what}={strategy!r} must be one of {list(_STRATEGIES)}")


def _image_scoped(annotations: Iterable[Annotation], annotation_type: str) -> list[Annotation]:
    return [a for a in annotations if a.annotation_type == annotation_type and not _is_frame_scoped(a)]


def _unknown_error(kind: str, unknown: Sequence[Annotation], known: Sequence[Any]) -> AnnotationError:
    labels = sorted({(a.identifier, a.text_value) if kind == "category" else a.identifier for a in unknown}, key=str)
    resources = sorted({a.resource_id for a in unknown})
    return AnnotationError(
        f"image {kind}s {labels!r} of annotations {[a.id for a in unknown]!r} are not in the label schema "
        f"{list(known)!r}; filter the annotations with the same schema (AnnotationFilter) or extend it "
        f"(allow_external_annotations=True)",
        resource_id=", ".join(resources),
    )


def image_labels_by_author(annotations: Iterable[Annotation], schema: LabelSchema) -> dict[str, torch.Tensor]:
    """``{author: torch.int32 (num_image_labels,)}`` multi-hot of each author's image labels; ``{}`` if none."""
    selected = _image_scoped(annotations, "label")
    if not selected:
        return {}
    columns: list[int] = []
    unknown: list[Annotation] = []
    for annotation in selected:
        try:
            columns.append(schema.image_label_index(annotation.identifier))
        except KeyError:
            unknown.append(annotation)
    if unknown:
        raise _unknown_error("label", unknown, schema.image_labels)
    authors = sorted({a.author for a in selected})
    row_of = {author: row for row, author in enumerate(authors)}
    rows = np.fromiter((row_of[a.author] for a in selected), dtype=np.intp, count=len(selected))
    matrix = np.zeros((len(authors), schema.num_image_labels), dtype=np.int32)
    matrix[rows, np.asarray(columns, dtype=np.intp)] = 1
    stacked = torch.from_numpy(matrix)
    # Each author gets its own storage, so one entry can be kept or pickled without the others.
    return {author: stacked[row].clone() for row, author in enumerate(authors)}


def _stack(tensors: Mapping[str, Any], shape: tuple[int, ...], what: str) -> torch.Tensor:
    values = [torch.as_tensor(v) for v in tensors.values()]
    wrong = {author: tuple(v.shape) for author, v in zip(tensors, values, strict=True) if tuple(v.shape) != shape}
    if wrong:
        raise ValueError(f"{what}: expected shape {shape}, got {wrong}")
    return torch.stack(values)


def merge_image_labels(
    labels_by_author: Mapping[str, Any], strategy: MergeStrategy, *, num_labels: int
) -> torch.Tensor:
    """Merge per-author multi-hot label vectors into one ``torch.int32 (num_labels,)``.

    ``'union'``: any author; ``'intersection'``: every author in the dict; ``'mode'``: at least half of them.
    An empty dict gives zeros. Merging a single author returns that author's vector.
    """
    _check_strategy(strategy, "strategy")
    if not labels_by_author:
        return torch.zeros(num_labels, dtype=torch.int32)
    present = _stack(labels_by_author, (num_labels,), "image labels") != 0  # (authors, labels) bool
    if strategy == "union":
        merged = present.any(dim=0)
    elif strategy == "intersection":
        merged = present.all(dim=0)
    else:
        merged = 2 * present.sum(dim=0) >= present.shape[0]
    return merged.to(torch.int32)


def _first_key(annotation: Annotation) -> tuple[bool, _dt.datetime, str]:
    if not annotation.created_at:
        return (True, _NO_TIME, annotation.id)
    try:
        created = parse_timestamp(annotation.created_at)
    except ValueError as error:
        raise AnnotationError(
            f"annotation {annotation.id} has an unreadable created_at: {error}", resource_id=annotation.resource_id
        ) from error
    return (False, created, annotation.id)


def image_categories_by_author(annotations: Iterable[Annotation], schema: LabelSchema) -> dict[str, torch.Tensor]:
    """``{author: torch.int64 0-D}``: the class code of each author's first image category (see the module
    docstring for "first"); ``{}`` if none."""
    selected = _image_scoped(annotations, "category")
    if not selected:
        return {}
    codes: list[int] = []
    unknown: list[Annotation] = []
    for annotation in selected:
        try:
            codes.append(schema.image_category_code(annotation.identifier, annotation.text_value or ""))
        except KeyError:
            unknown.append(annotation)
    if unknown:
        raise _unknown_error("category", unknown, schema.image_categories)
    order = sorted(range(len(selected)), key=lambda i: _first_key(selected[i]))
    first: dict[str, int] = {}
    for i in order:
        first.setdefault(selected[i].author, codes[i])
    return {author: torch.tensor(first[author], dtype=torch.int64) for author in sorted(first)}


def merge_image_categories(
    categories_by_author: Mapping[str, Any], strategy: MergeStrategy, *, num_categories: int
) -> torch.Tensor:
    """Merge per-author class codes.

    ``'mode'`` -> ``torch.int64`` 0-D: the code most authors gave, ties to the lowest, ``-1`` for an empty dict.
    ``'union'`` / ``'intersection'`` -> ``torch.int32 (num_categories,)``: 1 where any / every author's code is.
    """
    _check_strategy(strategy, "strategy")
    if not categories_by_author:
        if strategy == "mode":
            return torch.tensor(-1, dtype=torch.int64)
        return torch.zeros(num_categories, dtype=torch.int32)
    codes = _stack(categories_by_author, (), "image categories").to(torch.int64)  # (authors,)
    outside = {
        a: int(c) for a, c in zip(categories_by_author, codes.tolist(), strict=True) if not 0 <= c < num_categories
    }
    if outside:
        raise ValueError(f"image category codes {outside} are outside 0..{num_categories - 1}")
    if strategy == "mode":
        # argmax returns the first maximum: ties go to the lowest code.
        return torch.bincount(codes, minlength=num_categories).argmax().to(torch.int64)
    one_hot = torch.nn.functional.one_hot(codes, num_categories).bool()  # (authors, categories)
    merged = one_hot.any(dim=0) if strategy == "union" else one_hot.all(dim=0)
    return merged.to(torch.int32)


@dataclass(frozen=True)
class ImageLabels:
    """Stage adding ``image_labels`` and ``image_categories`` (shapes in the module docstring) computed from
    ``annotations``; ``None`` strategies keep the per-author dicts."""

    schema: LabelSchema
    labels_merge_strategy: MergeStrategy | None = None
    categories_merge_strategy: MergeStrategy | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.schema, LabelSchema):
            raise TypeError(f"schema must be a LabelSchema, got {type(self.schema).__name__}")
        if self.labels_merge_strategy is not None:
            _check_strategy(self.labels_merge_strategy, "labels_merge_strategy")
        if self.categories_merge_strategy is not None:
            _check_strategy(self.categories_merge_strategy, "categories_merge_strategy")

    def __call__(self, sample: Sample) -> Sample:
        annotations = sample.get("annotations", ())
        labels_by_author = image_labels_by_author(annotations, self.schema)
        categories_by_author = image_categories_by_author(annotations, self.schema)
        labels: dict[str, torch.Tensor] | torch.Tensor = labels_by_author
        categories: dict[str, torch.Tensor] | torch.Tensor = categories_by_author
        if self.labels_merge_strategy is not None:
            labels = merge_image_labels(
                labels_by_author, self.labels_merge_strategy, num_labels=self.schema.num_image_labels
            )
        if self.categories_merge_strategy is not None:
            categories = merge_image_categories(
                categories_by_author, self.categories_merge_strategy, num_categories=self.schema.num_image_categories
            )
        out: dict[str, Any] = dict(sample)
        out["image_labels"] = labels
        out["image_categories"] = categories
        return cast(Sample, out)
