"""Annotation stages: label schema, filtering, segmentation loading, instance -> semantic, merges.

Modules: :mod:`.schema` (label schema from worklists, explicit lists or inferred), :mod:`.filters`
(annotation filtering), :mod:`.labels` (image labels and categories per author, merged),
:mod:`.segmentations` (masks aligned with the image, per author), :mod:`.merge` (semantic conversion and
merge strategies).
"""

from datamint_pipes.stages.annotations.segmentations import LoadMasks, load_mask

__all__ = ["LoadMasks", "load_mask"]
