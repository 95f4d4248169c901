"""Annotation stages: label schema, filtering, segmentation loading, instance -> semantic, merges.

Modules: :mod:`.schema` (label schema from worklists, explicit lists or inferred), :mod:`.filters`
(annotation filtering), :mod:`.labels` (image labels and categories per author, merged),
:mod:`.segmentations` (masks aligned with the image, per author), :mod:`.merge` (semantic conversion and
merge strategies).
"""

from datamint_pipes.stages.annotations.filters import (
    AnnotationFilter,
    HasAnnotations,
    filter_annotations,
    filter_catalogue,
)
from datamint_pipes.stages.annotations.labels import (
    ImageLabels,
    image_categories_by_author,
    image_labels_by_author,
    merge_image_categories,
    merge_image_labels,
)
from datamint_pipes.stages.annotations.merge import (
    MERGE_STRATEGIES,
    MergeStrategy,
    SemanticSegmentations,
    background_only,
    instance_to_semantic,
    merge_semantic,
    validate_segmentation_options,
)
from datamint_pipes.stages.annotations.schema import (
    LabelSchema,
    build_schema,
    extend_with_external,
    infer_schema,
    schema_from_lists,
    schema_from_worklists,
)
from datamint_pipes.stages.annotations.segmentations import (
    Boxes,
    InstanceSegmentations,
    LoadMasks,
    LoadSegmentations,
    load_boxes,
    load_mask,
    load_segmentations,
)

__all__ = [
    "MERGE_STRATEGIES",
    "AnnotationFilter",
    "Boxes",
    "HasAnnotations",
    "ImageLabels",
    "InstanceSegmentations",
    "LabelSchema",
    "LoadMasks",
    "LoadSegmentations",
    "MergeStrategy",
    "SemanticSegmentations",
    "background_only",
    "build_schema",
    "extend_with_external",
    "filter_annotations",
    "filter_catalogue",
    "image_categories_by_author",
    "image_labels_by_author",
    "infer_schema",
    "instance_to_semantic",
    "load_boxes",
    "load_mask",
    "load_segmentations",
    "merge_image_categories",
    "merge_image_labels",
    "merge_semantic",
    "schema_from_lists",
    "schema_from_worklists",
    "validate_segmentation_options",
]
