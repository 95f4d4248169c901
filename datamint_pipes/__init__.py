"""datamint-pipes: composable torchdata pipelines for annotated medical imaging.

Stateless stages -- fetch resources, filter annotations, decode, slice or frame-expand, augment,
collate -- chained as ``torchdata.nodes``. See the README for a tour.
"""

from datamint_pipes.errors import (
    AnnotationError,
    CacheError,
    DatamintPipesError,
    DecodeError,
    FetchError,
    PipelineError,
    ProjectError,
)
from datamint_pipes.model import Annotation, LabelSpec, Project, Resource, ResourceKind, Sample, Worklist

__version__ = "0.1.0"

__all__ = [
    "Annotation",
    "AnnotationError",
    "CacheError",
    "DatamintPipesError",
    "DecodeError",
    "FetchError",
    "LabelSpec",
    "PipelineError",
    "Project",
    "ProjectError",
    "Resource",
    "ResourceKind",
    "Sample",
    "Worklist",
    "__version__",
]
