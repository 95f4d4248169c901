"""The label schema: which segmentation labels, image/frame labels and categories a dataset knows, and their codes.

A :class:`LabelSchema` fixes the meaning of every label tensor a pipeline emits:

* ``segmentation_labels[i]`` has the 1-based code ``i + 1`` (code 0 is background). Codes come from the
  server's segmentation groups, so a gap in those codes is kept as a placeholder named ``'UNKNOWN'``.
* ``image_labels[i]`` / ``frame_labels[i]`` is position ``i`` of a multi-hot label vector.
* ``image_categories[i]`` / ``frame_categories[i]`` is an ``(identifier, value)`` pair; ``i`` is its class code.

Builders (see the compat contract, "Label schema and filtering"):

* :func:`schema_from_worklists` -- labels and categories in the worklists' spec order, segmentation codes
  from the server's groups or the specs' ``index``; categories defined by a worklist are kept even when
  nobody used them.
* :func:`schema_from_lists` -- explicit.
* :func:`infer_schema` -- from the annotations themselves, each list sorted, segmentation codes ``1..n``.
* :func:`extend_with_external` -- ``allow_external_annotations=True``: labels present in the data but not
  in the schema are appended after the schema's, sorted.
* :func:`build_schema` -- the dataset's selection: ``worklists='all'``, a list, or ``None`` (inferred).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

from datamint_pipes.model import Annotation, Worklist

__all__ = [
    "UNKNOWN_SEGMENTATION",
    "LabelSchema",
    "build_schema",
    "extend_with_external",
    "infer_schema",
    "schema_from_lists",
    "schema_from_worklists",
]

UNKNOWN_SEGMENTATION = "UNKNOWN"
"""Name of a segmentation code that the server's groups skip (a gap in the 1-based codes)."""

Category: TypeAlias = tuple[str, str]
SegmentationGroups: TypeAlias = Mapping[str, Any]
"""``{label: {'index': 1-based code, 'color': [r,g,b,a]}}``: one worklist's segmentation groups."""


def _is_frame_scoped(annotation: Annotation) -> bool:
    # A frame index implies frame scope even when ``scope`` was left at its default.
    return annotation.scope == "frame" or annotation.frame_index is not None


def _names(value: Iterable[str], what: str) -> tuple[str, ...]:
    if isinstance(value, str):
        raise TypeError(f"{what} must be a sequence of names, not the string {value!r}")
    names = tuple(value)
    bad = [n for n in names if not isinstance(n, str) or not n]
    if bad:
        raise TypeError(f"{what} must hold non-empty strings, got {bad!r}")
    return names


def _categories(value: Iterable[Sequence[str]] | Mapping[str, Sequence[str]], what: str) -> tuple[Category, ...]:
    if isinstance(value, Mapping):
        pairs = [(identifier, v) for identifier, values in value.items() for v in _names(values, what)]
    else:
        if isinstance(value, str):
            raise TypeError(f"{what} must be (identifier, value) pairs, not the string {value!r}")
        pairs = []
        for item in value:
            if isinstance(item, str) or len(item) != 2:
                raise TypeError(f"{what} must be (identifier, value) pairs, got {item!r}")
            pairs.append((item[0], item[1]))
    bad = [p for p in pairs if not all(isinstance(x, str) and x for x in p)]
    if bad:
        raise TypeError(f"{what} must hold pairs of non-empty strings, got {bad!r}")
    return tuple(pairs)


def _check_unique(values: Sequence[Any], what: str, *, ignore: object = None) -> None:
    seen: set[Any] = set()
    repeated = []
    for value in values:
        if value in seen and value != ignore:
            repeated.append(value)
        seen.add(value)
    if repeated:
        raise ValueError(f"{what} repeat {sorted(set(repeated))!r}")


@dataclass(frozen=True)
class LabelSchema:
    """Label names and their codes (see the module docstring). Immutable, hashable, picklable.

    Lists given to the constructor are stored as tuples. A name may appear only once per list, except the
    ``'UNKNOWN'`` placeholders of segmentation-code gaps.
    """

    segmentation_labels: tuple[str, ...] = ()
    image_labels: tuple[str, ...] = ()
    frame_labels: tuple[str, ...] = ()
    image_categories: tuple[Category, ...] = ()
    frame_categories: tuple[Category, ...] = ()

    def __post_init__(self) -> None:
        for name in ("segmentation_labels", "image_labels", "frame_labels"):
            object.__setattr__(self, name, _names(getattr(self, name), name))
        for name in ("image_categories", "frame_categories"):
            object.__setattr__(self, name, _categories(getattr(self, name), name))
        _check_unique(self.segmentation_labels, "segmentation_labels", ignore=UNKNOWN_SEGMENTATION)
        _check_unique(self.image_labels, "image_labels")
        _check_unique(self.frame_labels, "frame_labels")
        _check_unique(self.image_categories, "image_categories")
        _check_unique(self.frame_categories, "frame_categories")

    # -- sizes --------------------------------------------------------------------------------------------

    @property
    def num_segmentation_labels(self) -> int:
        """``L``: the highest segmentation code (semantic masks have ``L + 1`` channels, 0 = background)."""
        return len(self.segmentation_labels)

    @property
    def num_image_labels(self) -> int:
        return len(self.image_labels)

    @property
    def num_frame_labels(self) -> int:
        return len(self.frame_labels)

    @property
    def num_image_categories(self) -> int:
        return len(self.image_categories)

    @property
    def num_frame_categories(self) -> int:
        return len(self.frame_categories)

    # -- codes --------------------------------------------------------------------------------------------
    # The lookup tables are derived, so they are cached on the instance (cached_property writes to the
    # instance dict directly, which a frozen dataclass allows) and excluded from equality.

    @functools.cached_property
    def segmentation_codes(self) -> dict[str, int]:
        """Segmentation label -> 1-based code (``'UNKNOWN'``, if present, -> the first such code)."""
        codes: dict[str, int] = {}
        for position, name in enumerate(self.segmentation_labels):
            codes.setdefault(name, position + 1)
        return codes

    @functools.cached_property
    def _image_label_index(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.image_labels)}

    @functools.cached_property
    def _frame_label_index(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.frame_labels)}

    @functools.cached_property
    def _image_category_index(self) -> dict[Category, int]:
        return {pair: i for i, pair in enumerate(self.image_categories)}

    @functools.cached_property
    def _frame_category_index(self) -> dict[Category, int]:
        return {pair: i for i, pair in enumerate(self.frame_categories)}

    def segmentation_code(self, name: str) -> int:
        """The 1-based code of segmentation label ``name``; ``KeyError`` naming the known labels if absent."""
        try:
            return self.segmentation_codes[name]
        except KeyError:
            raise KeyError(
                f"segmentation label {name!r} is not in the schema {list(self.segmentation_codes)}"
            ) from None

    def image_label_index(self, name: str) -> int:
        """Position of image label ``name`` in ``image_labels``; ``KeyError`` if absent."""
        try:
            return self._image_label_index[name]
        except KeyError:
            raise KeyError(f"image label {name!r} is not in the schema {list(self.image_labels)}") from None

    def frame_label_index(self, name: str) -> int:
        """Position of frame label ``name`` in ``frame_labels``; ``KeyError`` if absent."""
        try:
            return self._frame_label_index[name]
        except KeyError:
            raise KeyError(f"frame label {name!r} is not in the schema {list(self.frame_labels)}") from None

    def image_category_code(self, identifier: str, value: str) -> int:
        """Class code (0-based position in ``image_categories``) of ``(identifier, value)``; ``KeyError`` if absent."""
        try:
            return self._image_category_index[(identifier, value)]
        except KeyError:
            raise KeyError(
                f"image category {(identifier, value)!r} is not in the schema {list(self.image_categories)}"
            ) from None

    def frame_category_code(self, identifier: str, value: str) -> int:
        """Class code (0-based position in ``frame_categories``) of ``(identifier, value)``; ``KeyError`` if absent."""
        try:
            return self._frame_category_index[(identifier, value)]
        except KeyError:
            raise KeyError(
                f"frame category {(identifier, value)!r} is not in the schema {list(self.frame_categories)}"
            ) from None

    def covers(self, annotation: Annotation) -> bool:
        """Whether the schema knows ``annotation``'s label: a segmentation's name, a label's name in its scope,
        a category's ``(identifier, value)`` in its scope. Other annotation types (boxes, lines, ...) carry no
        schema label and are always covered."""
        kind = annotation.annotation_type
        frame = _is_frame_scoped(annotation)
        if kind == "segmentation":
            return annotation.identifier in self.segmentation_codes
        if kind == "label":
            return annotation.identifier in (self._frame_label_index if frame else self._image_label_index)
        if kind == "category":
            pair = (annotation.identifier, annotation.text_value)
            return pair in (self._frame_category_index if frame else self._image_category_index)
        return True


# -- builders -----------------------------------------------------------------------------------------------


def _codes_to_labels(codes: Mapping[str, int], what: str) -> tuple[str, ...]:
    """Labels by 1-based code, gaps filled with ``'UNKNOWN'``."""
    if not codes:
        return ()
    bad = {name: code for name, code in codes.items() if not isinstance(code, int) or code < 1}
    if bad:
        raise ValueError(f"{what}: segmentation codes must be integers >= 1, got {bad}")
    by_code: dict[int, str] = {}
    for name, code in codes.items():
        if code in by_code and by_code[code] != name:
            raise ValueError(f"{what}: segmentation code {code} is given to both {by_code[code]!r} and {name!r}")
        by_code[code] = name
    labels = [UNKNOWN_SEGMENTATION] * max(by_code)
    for code, name in by_code.items():
        labels[code - 1] = name
    return tuple(labels)


def schema_from_lists(
    *,
    segmentation_labels: Sequence[str] | Mapping[str, int] = (),
    image_labels: Sequence[str] = (),
    frame_labels: Sequence[str] = (),
    image_categories: Sequence[Sequence[str]] | Mapping[str, Sequence[str]] = (),
    frame_categories: Sequence[Sequence[str]] | Mapping[str, Sequence[str]] = (),
) -> LabelSchema:
    """An explicit schema. ``segmentation_labels`` is either a sequence (codes ``1..n`` in order) or a mapping
    ``{label: 1-based code}`` (gaps become ``'UNKNOWN'``). Categories are ``(identifier, value)`` pairs, or a
    mapping ``{identifier: values}`` flattened in order."""
    if isinstance(segmentation_labels, Mapping):
        segmentations = _codes_to_labels(segmentation_labels, "segmentation_labels")
    else:
        segmentations = _names(segmentation_labels, "segmentation_labels")
    return LabelSchema(
        segmentation_labels=segmentations,
        image_labels=_names(image_labels, "image_labels"),
        frame_labels=_names(frame_labels, "frame_labels"),
        image_categories=_categories(image_categories, "image_categories"),
        frame_categories=_categories(frame_categories, "frame_categories"),
    )


def _group_codes(groups: Mapping[str, Any], worklist: Worklist) -> dict[str, int]:
    if "groups" in groups and isinstance(groups["groups"], Mapping):
        groups = groups["groups"]  # the REST response itself
    codes: dict[str, int] = {}
    for name, group in groups.items():
        index = group.get("index") if isinstance(group, Mapping) else group
        if index is None:
            raise ValueError(f"worklist {worklist.name!r} ({worklist.id}): segmentation group {name!r} has no index")
        codes[str(name)] = int(index)
    return codes


def schema_from_worklists(
    worklists: Iterable[Worklist],
    *,
    segmentation_groups: Mapping[str, SegmentationGroups] | Callable[[str], SegmentationGroups] | None = None,
) -> LabelSchema:
    """The schema of one or more worklists.

    Image/frame labels and categories follow the specs' order (worklist after worklist, first occurrence
    kept); a category spec contributes one ``(identifier, value)`` pair per allowed value, whether or not any
    annotation uses it. Segmentation codes are the server's 1-based group indices: ``segmentation_groups``
    maps a worklist id to ``{label: {'index': code, ...}}`` (or is a function of the worklist id, such as
    ``LocalProject.segmentation_groups``); without it, each spec's ``index`` (else its position among the
    worklist's segmentations). Gaps in the codes are named ``'UNKNOWN'``.

    Raises ``ValueError`` when two worklists give one label two codes, or one code to two labels (pass the
    worklist you mean instead of all of them).
    """
    codes: dict[str, int] = {}
    code_owner: dict[int, tuple[str, str]] = {}  # code -> (label, worklist name), for the error message
    image_labels: dict[str, None] = {}
    frame_labels: dict[str, None] = {}
    image_categories: dict[Category, None] = {}
    frame_categories: dict[Category, None] = {}
    for worklist in worklists:
        groups: SegmentationGroups | None = None
        if callable(segmentation_groups):
            groups = segmentation_groups(worklist.id)
        elif segmentation_groups is not None:
            groups = segmentation_groups.get(worklist.id)
        worklist_codes = _group_codes(groups, worklist) if groups is not None else worklist.segmentation_codes()
        for name, code in worklist_codes.items():
            if name in codes and codes[name] != code:
                raise ValueError(
                    f"segmentation label {name!r} has code {codes[name]} in worklist {code_owner[codes[name]][1]!r} "
                    f"and {code} in worklist {worklist.name!r}; choose one worklist"
                )
            if code in code_owner and code_owner[code][0] != name:
                raise ValueError(
                    f"segmentation code {code} is {code_owner[code][0]!r} in worklist {code_owner[code][1]!r} "
                    f"and {name!r} in worklist {worklist.name!r}; choose one worklist"
                )
            codes[name] = code
            code_owner[code] = (name, worklist.name)
        for spec in worklist.specs:
            frame = spec.scope == "frame"
            if spec.type == "label":
                (frame_labels if frame else image_labels).setdefault(spec.identifier, None)
            elif spec.type == "category":
                target = frame_categories if frame else image_categories
                for value in spec.values:
                    target.setdefault((spec.identifier, value), None)
    return LabelSchema(
        segmentation_labels=_codes_to_labels(codes, "worklists"),
        image_labels=tuple(image_labels),
        frame_labels=tuple(frame_labels),
        image_categories=tuple(image_categories),
        frame_categories=tuple(frame_categories),
    )


def _found_labels(
    annotations: Iterable[Annotation], include_deleted: bool
) -> tuple[set[str], set[str], set[str], set[Category], set[Category]]:
    segmentations: set[str] = set()
    image_labels: set[str] = set()
    frame_labels: set[str] = set()
    image_categories: set[Category] = set()
    frame_categories: set[Category] = set()
    for annotation in annotations:
        if (annotation.deleted and not include_deleted) or not annotation.identifier:
            continue
        frame = _is_frame_scoped(annotation)
        if annotation.annotation_type == "segmentation":
            segmentations.add(annotation.identifier)
        elif annotation.annotation_type == "label":
            (frame_labels if frame else image_labels).add(annotation.identifier)
        elif annotation.annotation_type == "category" and annotation.text_value:
            # A category without a value names no class: it cannot enter the schema.
            (frame_categories if frame else image_categories).add((annotation.identifier, annotation.text_value))
    return segmentations, image_labels, frame_labels, image_categories, frame_categories


def infer_schema(annotations: Iterable[Annotation], *, include_deleted: bool = False) -> LabelSchema:
    """The schema of the labels the annotations use: every list sorted, segmentation codes ``1..n``.

    The result does not depend on the annotations' order. Deleted annotations are ignored unless
    ``include_deleted``; categories without a value are ignored (they name no class).
    """
    segmentations, image_labels, frame_labels, image_categories, frame_categories = _found_labels(
        annotations, include_deleted
    )
    return LabelSchema(
        segmentation_labels=tuple(sorted(segmentations)),
        image_labels=tuple(sorted(image_labels)),
        frame_labels=tuple(sorted(frame_labels)),
        image_categories=tuple(sorted(image_categories)),
        frame_categories=tuple(sorted(frame_categories)),
    )


def extend_with_external(
    schema: LabelSchema, annotations: Iterable[Annotation], *, include_deleted: bool = False
) -> LabelSchema:
    """``schema`` plus the labels the annotations use that it lacks (``allow_external_annotations=True``).

    Each list keeps the schema's entries and codes and gets the new ones appended, sorted; new segmentation
    labels take the codes after the schema's last one.
    """
    segmentations, image_labels, frame_labels, image_categories, frame_categories = _found_labels(
        annotations, include_deleted
    )

    def extended(existing: tuple[Any, ...], found: set[Any]) -> tuple[Any, ...]:
        known = set(existing)
        return existing + tuple(sorted(x for x in found if x not in known))

    return LabelSchema(
        segmentation_labels=extended(schema.segmentation_labels, segmentations),
        image_labels=extended(schema.image_labels, image_labels),
        frame_labels=extended(schema.frame_labels, frame_labels),
        image_categories=extended(schema.image_categories, image_categories),
        frame_categories=extended(schema.frame_categories, frame_categories),
    )


def _resolve_worklists(available: Sequence[Worklist], wanted: Sequence[Worklist | str]) -> list[Worklist]:
    by_key: dict[str, Worklist] = {}
    for worklist in available:
        by_key.setdefault(worklist.name, worklist)
    for worklist in available:
        by_key[worklist.id] = worklist  # ids win over names
    resolved: list[Worklist] = []
    missing: list[str] = []
    for item in wanted:
        if isinstance(item, Worklist):
            resolved.append(item)
        elif item in by_key:
            resolved.append(by_key[item])
        else:
            missing.append(item)
    if missing:
        raise ValueError(f"worklists {missing!r} are not in the project (it has {[w.name for w in available]!r})")
    return resolved


def build_schema(
    source_or_worklists: Any,
    annotations: Iterable[Annotation],
    *,
    worklists: Literal["all"] | Sequence[Worklist | str] | None = "all",
    allow_external_annotations: bool = False,
    include_deleted: bool = False,
) -> LabelSchema:
    """The schema a dataset uses, selected as the compat contract says.

    ``source_or_worklists`` is a source (anything with ``worklists()``, optionally
    ``segmentation_groups(worklist_id)``), a sequence of :class:`Worklist`, or ``None`` (no project: a
    dataset built from ``resources=``). ``annotations`` are *all* the dataset's annotations, before filtering.

    * ``worklists='all'`` -- the source's worklists (or the given sequence);
    * a sequence -- those worklists, as :class:`Worklist` objects or ids/names resolved against the source;
    * ``None``, or no worklist at all -- inferred from ``annotations`` (:func:`infer_schema`).

    ``allow_external_annotations=True`` appends the labels found in ``annotations`` but not in the schema
    (:func:`extend_with_external`).
    """
    annotations = list(annotations)
    available: list[Worklist]
    groups: Mapping[str, SegmentationGroups] | Callable[[str], SegmentationGroups] | None = None
    if source_or_worklists is None:
        available = []
    elif hasattr(source_or_worklists, "worklists") and callable(source_or_worklists.worklists):
        available = list(source_or_worklists.worklists())
        method = getattr(source_or_worklists, "segmentation_groups", None)
        groups = method if callable(method) else None
    else:
        available = list(source_or_worklists)
        bad = [w for w in available if not isinstance(w, Worklist)]
        if bad:
            raise TypeError(f"expected a source or a sequence of Worklist, got items {bad!r}")

    if worklists is None:
        selected: list[Worklist] = []
    elif isinstance(worklists, str):
        if worklists != "all":
            raise ValueError(f"{worklists=} must be 'all', a sequence of worklists, or None")
        selected = available
    else:
        selected = _resolve_worklists(available, list(worklists))

    if not selected:
        return infer_schema(annotations, include_deleted=include_deleted)
    schema = schema_from_worklists(selected, segmentation_groups=groups)
    if allow_external_annotations:
        schema = extend_with_external(schema, annotations, include_deleted=include_deleted)
    return schema
