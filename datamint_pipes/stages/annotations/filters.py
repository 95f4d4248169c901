"""Annotation filtering: which annotations of a resource a dataset keeps.

:class:`AnnotationFilter` is the stage (``sample -> sample``, replacing ``annotations`` by the kept ones);
:func:`filter_annotations` is the same rule as a function over a list. An annotation is kept when it passes
every test below (the compat contract's order; each test looks at the annotation alone, so the order does
not change the result):

1. not deleted (unless ``include_deleted``); from one of ``worklist_ids`` and ``trusted_sources`` when those
   are given;
2. annotator: ``created_by`` in ``include_annotators`` / not in ``exclude_annotators``; an annotation with no
   ``created_by`` (a model's, say) passes;
3. segmentations, image labels, frame labels: the name must be in the schema unless
   ``allow_external_annotations``, then pass its kind's include/exclude list; categories: the
   ``(identifier, value)`` pair must be in the schema unless ``allow_external_annotations`` (upstream checks
   the identifier only; a value outside the worklist's list is as unknown as an unknown label);
4. other annotation types (boxes, lines, points, text, numbers) are kept.

The schema is built beforehand from *all* annotations (:func:`~.schema.build_schema`), so filtering one
resource never changes another's codes. ``include_unannotated=False`` is :class:`HasAnnotations` in a
pipeline, or :func:`filter_catalogue` on the catalogue before indexing.

Giving an include and an exclude list of the same kind raises ``ValueError`` at construction.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, cast

from datamint_pipes.model import Annotation, Resource, Sample
from datamint_pipes.stages.annotations.schema import LabelSchema, _is_frame_scoped

__all__ = ["AnnotationFilter", "HasAnnotations", "filter_annotations", "filter_catalogue"]

_KINDS = ("annotators", "segmentation_names", "image_label_names", "frame_label_names")
_NAME_LISTS = {
    "segmentation_names": "segmentation_labels",
    "image_label_names": "image_labels",
    "frame_label_names": "frame_labels",
}


def _optional_names(value: Collection[str] | None, what: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        raise TypeError(f"{what} must be a list of names, not the string {value!r}")
    names = tuple(dict.fromkeys(value))
    bad = [n for n in names if not isinstance(n, str)]
    if bad:
        raise TypeError(f"{what} must hold strings, got {bad!r}")
    return names


@dataclass(frozen=True)
class AnnotationFilter:
    """Keep the annotations that pass the module's rules; a picklable ``sample -> sample`` stage.

    ``None`` means "no such filter"; an empty include list keeps nothing of that kind. Lists are stored as
    tuples (duplicates dropped), so the stage is hashable and compares by value.
    """

    schema: LabelSchema
    include_annotators: Collection[str] | None = None
    exclude_annotators: Collection[str] | None = None
    include_segmentation_names: Collection[str] | None = None
    exclude_segmentation_names: Collection[str] | None = None
    include_image_label_names: Collection[str] | None = None
    exclude_image_label_names: Collection[str] | None = None
    include_frame_label_names: Collection[str] | None = None
    exclude_frame_label_names: Collection[str] | None = None
    allow_external_annotations: bool = False
    include_deleted: bool = False
    trusted_sources: Collection[str] | None = None
    worklist_ids: Collection[str] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.schema, LabelSchema):
            raise TypeError(f"schema must be a LabelSchema, got {type(self.schema).__name__}")
        for f in fields(self):
            if f.name not in ("schema", "allow_external_annotations", "include_deleted"):
                object.__setattr__(self, f.name, _optional_names(getattr(self, f.name), f.name))
        for kind in _KINDS:
            include, exclude = getattr(self, f"include_{kind}"), getattr(self, f"exclude_{kind}")
            if include is not None and exclude is not None:
                raise ValueError(
                    f"include_{kind}={list(include)!r} and exclude_{kind}={list(exclude)!r} were both given; "
                    "use one of them"
                )
        if not self.allow_external_annotations:
            for kind, schema_list in _NAME_LISTS.items():
                include = getattr(self, f"include_{kind}")
                if include is None:
                    continue
                known = set(getattr(self.schema, schema_list))
                unknown = [name for name in include if name not in known]
                if unknown:
                    warnings.warn(
                        f"include_{kind} names {unknown!r}, which are not in the label schema {sorted(known)!r} "
                        "and so match nothing (allow_external_annotations is False)",
                        UserWarning,
                        stacklevel=3,
                    )

    @functools.cached_property
    def _sets(self) -> dict[str, frozenset[str] | None]:
        names = [
            f.name for f in fields(self) if f.name.startswith(("include_", "exclude_")) and f.name != "include_deleted"
        ]
        names += ["trusted_sources", "worklist_ids"]
        return {name: (frozenset(v) if (v := getattr(self, name)) is not None else None) for name in names}

    def _passes(self, kind: str, name: str | None) -> bool:
        include, exclude = self._sets[f"include_{kind}"], self._sets[f"exclude_{kind}"]
        if include is not None:
            return name in include
        if exclude is not None:
            return name not in exclude
        return True

    def keeps(self, annotation: Annotation) -> bool:
        """Whether ``annotation`` passes the filter."""
        sets = self._sets
        if annotation.deleted and not self.include_deleted:
            return False
        worklist_ids, sources = sets["worklist_ids"], sets["trusted_sources"]
        if worklist_ids is not None and annotation.annotation_worklist_id not in worklist_ids:
            return False
        if sources is not None and annotation.source not in sources:
            return False
        if annotation.created_by is not None and not self._passes("annotators", annotation.created_by):
            return False
        kind = annotation.annotation_type
        if kind not in ("segmentation", "label", "category"):
            return True
        if not self.allow_external_annotations and not self.schema.covers(annotation):
            return False
        if kind == "segmentation":
            return self._passes("segmentation_names", annotation.identifier)
        if kind == "label":
            scope = "frame_label_names" if _is_frame_scoped(annotation) else "image_label_names"
            return self._passes(scope, annotation.identifier)
        return True

    def apply(self, annotations: Iterable[Annotation]) -> list[Annotation]:
        """The kept annotations, in their original order."""
        return [a for a in annotations if self.keeps(a)]

    def __call__(self, sample: Sample) -> Sample:
        """``sample`` with ``annotations`` replaced by the kept ones (a new dict; the input is not changed)."""
        out: dict[str, Any] = dict(sample)
        out["annotations"] = self.apply(sample.get("annotations", ()))
        return cast(Sample, out)


def filter_annotations(annotations: Iterable[Annotation], schema: LabelSchema, **options: Any) -> list[Annotation]:
    """The annotations that pass an :class:`AnnotationFilter` built from ``schema`` and ``options`` (its fields:
    ``include_annotators``, ``exclude_segmentation_names``, ``allow_external_annotations``, ...)."""
    return AnnotationFilter(schema, **options).apply(annotations)


@dataclass(frozen=True)
class HasAnnotations:
    """Predicate for ``Pipeline.filter``: the sample still has at least one annotation
    (``include_unannotated=False``). Put it after :class:`AnnotationFilter`."""

    def __call__(self, sample: Sample) -> bool:
        return len(sample.get("annotations", ())) > 0


def filter_catalogue(
    resources: Sequence[Resource],
    annotations_by_resource: Mapping[str, Sequence[Annotation]],
    annotation_filter: AnnotationFilter | None = None,
    *,
    include_unannotated: bool = True,
) -> tuple[list[Resource], dict[str, list[Annotation]]]:
    """Filter every resource's annotations and, with ``include_unannotated=False``, drop the resources left with
    none -- before indexing, so a sampler never draws a resource that would be dropped.

    Returns the kept resources (input order) and ``{resource_id: kept annotations}`` for each of them.
    """
    kept_resources: list[Resource] = []
    kept_annotations: dict[str, list[Annotation]] = {}
    for resource in resources:
        annotations = annotations_by_resource.get(resource.id, ())
        kept = annotation_filter.apply(annotations) if annotation_filter is not None else list(annotations)
        if kept or include_unannotated:
            kept_resources.append(resource)
            kept_annotations[resource.id] = kept
    return kept_resources, kept_annotations
