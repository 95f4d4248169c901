"""``DatamintBaseDataset``: the documented base class, configuring datamint-pipes stages.

Construction stores the configuration and makes no I/O. The first access that needs data prepares the
dataset (:meth:`DatamintBaseDataset._prepare`): open the source, read the catalogue, build the label schema
and filter the annotations. Items are produced by the stage list of :func:`._items.item_stages`; the same
list runs map-style in ``__getitem__`` and streaming in :meth:`DatamintBaseDataset.pipeline`.
"""

from __future__ import annotations

import copy
import fnmatch
import warnings
from abc import ABC
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal

from torch.utils.data import ConcatDataset, DataLoader, Dataset

from datamint_pipes.cache import ArrayCache
from datamint_pipes.errors import DatamintPipesError
from datamint_pipes.model import Annotation, Project, Resource
from datamint_pipes.pipeline import Pipeline
from datamint_pipes.sources.base import Source
from datamint_pipes.splits import local_split, patient_split, project_split, validate_ratios
from datamint_pipes.stages.annotations import (
    AnnotationFilter,
    LabelSchema,
    build_schema,
    filter_catalogue,
    validate_segmentation_options,
)
from datamint_pipes.stages.collate import Collate
from datamint_pipes.stages.load import ReadResource

from ._errors import DatamintDatasetException, DatamintException
from ._items import ItemConfig, Layout, item_stages, run_stages
from ._sources import open_source, source_of_resources

__all__ = ["DatamintBaseDataset", "DatamintDatasetException", "DatamintException"]

MergeStrategy = Literal["union", "intersection", "mode"]


class DatamintBaseDataset(ABC, Dataset[dict[str, Any]]):
    """Abstract base class for Datamint datasets (see the documented API and the compat contract).

    ``project`` is a local project folder, fsspec URL or name in the local store root, a
    :class:`~datamint_pipes.model.Project`, or a source object; with ``server_url`` (or
    ``$DATAMINT_API_URL``) a project name or id on that server. ``resources`` (mutually exclusive) are
    :class:`Resource` objects read from a local project.
    """

    _layout: Layout = "volume"  # "2d" for ImageDataset

    def __init__(
        self,
        project: str | Project | None = None,
        resources: Sequence[Resource] | None = None,
        auto_update: bool = True,
        api_key: str | None = None,
        server_url: str | None = None,
        return_metainfo: bool = True,
        return_segmentations: bool = True,
        return_as_semantic_segmentation: bool = False,
        semantic_seg_merge_strategy: MergeStrategy | None = None,
        alb_transform: Callable[..., Any] | None = None,
        include_unannotated: bool = True,
        include_annotators: list[str] | None = None,
        exclude_annotators: list[str] | None = None,
        include_segmentation_names: list[str] | None = None,
        exclude_segmentation_names: list[str] | None = None,
        include_image_label_names: list[str] | None = None,
        exclude_image_label_names: list[str] | None = None,
        include_frame_label_names: list[str] | None = None,
        exclude_frame_label_names: list[str] | None = None,
        allow_external_annotations: bool = False,
        image_labels_merge_strategy: MergeStrategy | None = None,
        image_categories_merge_strategy: MergeStrategy | None = None,
        worklists: Sequence[Any] | Literal["all"] | None = "all",
    ) -> None:
        if (project is None) == (resources is None):
            raise DatamintDatasetException("pass exactly one of project= and resources=")
        try:
            validate_segmentation_options(
                return_segmentations=return_segmentations,
                return_as_semantic_segmentation=return_as_semantic_segmentation,
                semantic_seg_merge_strategy=semantic_seg_merge_strategy,
            )
        except ValueError as error:
            raise ValueError(str(error)) from None
        for kind in ("annotators", "segmentation_names", "image_label_names", "frame_label_names"):
            if locals()[f"include_{kind}"] is not None and locals()[f"exclude_{kind}"] is not None:
                raise DatamintDatasetException(f"include_{kind} and exclude_{kind} cannot be used together")
        self._project_ref = project
        self._resources_arg = list(resources) if resources is not None else None
        self.auto_update = auto_update
        self.api_key = api_key
        self.server_url = server_url
        self.return_metainfo = return_metainfo
        self.return_segmentations = return_segmentations
        self.return_as_semantic_segmentation = return_as_semantic_segmentation
        self.semantic_seg_merge_strategy = semantic_seg_merge_strategy
        self.alb_transform = alb_transform
        self.include_unannotated = include_unannotated
        self.include_annotators = include_annotators
        self.exclude_annotators = exclude_annotators
        self.include_segmentation_names = include_segmentation_names
        self.exclude_segmentation_names = exclude_segmentation_names
        self.include_image_label_names = include_image_label_names
        self.exclude_image_label_names = exclude_image_label_names
        self.include_frame_label_names = include_frame_label_names
        self.exclude_frame_label_names = exclude_frame_label_names
        self.allow_external_annotations = allow_external_annotations
        self.image_labels_merge_strategy = image_labels_merge_strategy
        self.image_categories_merge_strategy = image_categories_merge_strategy
        self.worklists = worklists
        self.project: Project | None = project if isinstance(project, Project) else None
        self.split_name: str | None = None
        self.split_source: str | None = None
        self.split_as_of_timestamp: str | None = None
        self.seed = 0
        self.epoch = 0
        self._prepared = False
        self._source: Source | None = None
        self._schema: LabelSchema | None = None
        self._resources: list[Resource] = []
        self._annotations: dict[str, list[Annotation]] = {}
        self._cache: ArrayCache | None = None
        self._stages: list[Callable[[Any], Any]] | None = None

    # -- preparation ---------------------------------------------------------------------------------------

    def _prepare(self) -> None:
        if self._prepared:
            return
        try:
            if self._resources_arg is not None:
                source, resources = source_of_resources(
                    self._resources_arg, server_url=self.server_url, api_key=self.api_key
                )
                worklists: Any = None
            else:
                source = open_source(self._project_ref, server_url=self.server_url, api_key=self.api_key)
                resources = source.resources()
                worklists = self.worklists
                self.project = source.project
            annotations = source.annotations_by_resource()
            every = [a for r in resources for a in annotations.get(r.id, [])]
            schema = build_schema(
                source if self._resources_arg is None else None,
                every,
                worklists=worklists,
                allow_external_annotations=self.allow_external_annotations,
            )
            annotation_filter = AnnotationFilter(
                schema,
                include_annotators=self.include_annotators,
                exclude_annotators=self.exclude_annotators,
                include_segmentation_names=self.include_segmentation_names,
                exclude_segmentation_names=self.exclude_segmentation_names,
                include_image_label_names=self.include_image_label_names,
                exclude_image_label_names=self.exclude_image_label_names,
                include_frame_label_names=self.include_frame_label_names,
                exclude_frame_label_names=self.exclude_frame_label_names,
                allow_external_annotations=self.allow_external_annotations,
            )
            kept, filtered = filter_catalogue(
                resources,
                {r.id: annotations.get(r.id, []) for r in resources},
                annotation_filter,
                include_unannotated=self.include_unannotated,
            )
        except DatamintPipesError:
            raise
        except ValueError as error:
            raise DatamintDatasetException(str(error)) from error
        self._source = source
        self._schema = schema
        self._resources = kept
        self._annotations = filtered
        self._prepared = True

    def _adopt(self, resources: Sequence[Resource], annotations: dict[str, list[Annotation]]) -> Any:
        """A copy of this dataset (same class, configuration, source and schema) over other resources."""
        self._prepare()
        other = copy.copy(self)
        other._resources = list(resources)
        other._annotations = {r.id: annotations.get(r.id, []) for r in resources}
        other._stages = None
        return other

    @property
    def source(self) -> Source:
        self._prepare()
        assert self._source is not None
        return self._source

    @property
    def schema(self) -> LabelSchema:
        self._prepare()
        assert self._schema is not None
        return self._schema

    @property
    def cache(self) -> ArrayCache:
        if self._cache is None:
            self._cache = ArrayCache()
        return self._cache

    # -- documented attributes ------------------------------------------------------------------------------

    @property
    def resources(self) -> Sequence[Resource]:
        self._prepare()
        return self._resources

    @property
    def resource_annotations(self) -> list[Sequence[Annotation]]:
        self._prepare()
        return [self._annotations[r.id] for r in self._resources]

    @property
    def segmentation_labels_set(self) -> list[str]:
        return list(self.schema.segmentation_labels)

    @property
    def image_labels_set(self) -> list[str]:
        return list(self.schema.image_labels)

    @property
    def frame_labels_set(self) -> list[str]:
        return list(self.schema.frame_labels)

    @property
    def image_categories_set(self) -> list[tuple[str, str]]:
        return list(self.schema.image_categories)

    def get_resource(self, index: int) -> Resource:
        return self.resources[index]

    # -- items --------------------------------------------------------------------------------------------

    def _item_config(self) -> ItemConfig:
        return ItemConfig(
            layout=self._layout,
            return_metainfo=self.return_metainfo,
            return_segmentations=self.return_segmentations,
            return_as_semantic_segmentation=self.return_as_semantic_segmentation,
            semantic_seg_merge_strategy=self.semantic_seg_merge_strategy,
            image_labels_merge_strategy=self.image_labels_merge_strategy,
            image_categories_merge_strategy=self.image_categories_merge_strategy,
            alb_transform=self.alb_transform,
            seed=self.seed,
        )

    def _reader(self) -> Callable[[int], Any]:
        return ReadResource(self._resources, self._annotations, epoch=self.epoch)

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch that seeds augmentation in map-style access (``dataset[i]``, ``get_dataloader``): call it
        at the start of every epoch, as with ``DistributedSampler``. ``pipeline().loader()`` advances its own
        epochs. Augmentation is reproducible per (seed, epoch, item), whatever the workers."""
        if not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"{epoch=} must be a non-negative integer")
        self.epoch = epoch
        self._stages = None

    def item_stages(self) -> list[Callable[[Any], Any]]:
        """The stages that make an item from an index (the first reads the catalogue entry)."""
        self._prepare()
        if self._stages is None:
            self._stages = item_stages(self._item_config(), self.source, self.cache, self.schema, self._reader())
        return self._stages

    def __len__(self) -> int:
        return len(self.resources)

    def __getitem__(self, index: int) -> dict[str, Any]:
        length = len(self)
        if not isinstance(index, int):
            raise TypeError(f"index must be an int, got {type(index).__name__}")
        if index < 0:
            index += length
        if not 0 <= index < length:
            raise IndexError(f"index {index} out of range for a dataset of {length} items")
        item: dict[str, Any] = run_stages(self.item_stages(), index)
        return item

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for index in range(len(self)):
            yield self[index]

    def __add__(self, other: Dataset[dict[str, Any]]) -> ConcatDataset[dict[str, Any]]:
        return _Concat([self, other])

    def __repr__(self) -> str:
        state = f"{len(self._resources)} resources" if self._prepared else "not prepared"
        where = self._project_ref if self._project_ref is not None else "resources="
        return f"{type(self).__name__}({where!s}, {state})"

    def pipeline(self, *, shuffle: bool = False, seed: int | None = None) -> Pipeline:
        """The same stages as ``__getitem__`` as a :class:`~datamint_pipes.pipeline.Pipeline` (streaming,
        multi-worker, resumable)."""
        stages = self.item_stages()
        pipeline = Pipeline(num_items=len(self), seed=self.seed if seed is None else seed, shuffle=shuffle)
        for stage in stages:
            pipeline = pipeline.map(stage)
        return pipeline

    def get_collate_fn(self) -> Callable[[Any], dict[str, Any]]:
        """A picklable collate: equal-shaped arrays/tensors stacked, dicts and objects as lists."""
        return Collate()

    def get_dataloader(self, *args: Any, **kwargs: Any) -> DataLoader[dict[str, Any]]:
        kwargs.setdefault("collate_fn", self.get_collate_fn())
        self._prepare()
        return DataLoader(self, *args, **kwargs)

    # -- transforms -----------------------------------------------------------------------------------------

    def set_transform(self, alb_transform: Any = None) -> None:
        self.alb_transform = alb_transform
        self._stages = None

    def add_transform(self, alb_transform: Any) -> None:
        if self.alb_transform is None:
            self.set_transform(alb_transform)
            return
        import albumentations as A

        self.set_transform(A.Compose([self.alb_transform, alb_transform]))

    def apply_alb_transform(self, img: Any, segmentations: dict[str, Any]) -> dict[str, Any]:
        """Apply the configured transform to ``img`` (C,[N,]H,W) and ``segmentations`` ({author: (I,[N,]H,W)})
        together (see ``Augment``). Like upstream, each call draws new random parameters: the call is keyed by
        a fresh random token, as items are keyed by (seed, epoch, resource, slice)."""
        import secrets

        from datamint_pipes.stages.augment import Augment

        if self.alb_transform is None:
            return {"image": img, "segmentations": segmentations}
        sample = {"image": img, "segmentations": segmentations, "resource_id": f"call-{secrets.token_hex(8)}"}
        out = Augment(self.alb_transform, seed=self.seed)(sample)  # type: ignore[arg-type]
        return {"image": out["image"], "segmentations": out.get("segmentations", {})}

    # -- subsets ------------------------------------------------------------------------------------------

    def subset(self, indices: list[int]) -> DatamintBaseDataset:
        resources = self.resources
        picked = [resources[i] for i in indices]
        return self._adopt(picked, self._annotations)

    def filter(
        self,
        *,
        tags: list[str] | None = None,
        filename_pattern: str | None = None,
        has_annotations: bool | None = None,
        annotation_names: list[str] | None = None,
        custom_fn: Callable[[Resource, Sequence[Annotation]], bool] | None = None,
    ) -> DatamintBaseDataset:
        criteria = (tags, filename_pattern, has_annotations, annotation_names, custom_fn)
        if all(criterion is None for criterion in criteria):
            raise ValueError("filter() needs at least one criterion")
        kept = []
        for resource, resource_annotations in zip(self.resources, self.resource_annotations, strict=True):
            if tags is not None and not set(tags) & set(resource.tags):
                continue
            if filename_pattern is not None and not fnmatch.fnmatch(resource.filename, filename_pattern):
                continue
            if has_annotations is not None and bool(resource_annotations) != has_annotations:
                continue
            names = {a.identifier for a in resource_annotations}
            if annotation_names is not None and not names & set(annotation_names):
                continue
            if custom_fn is not None and not custom_fn(resource, resource_annotations):
                continue
            kept.append(resource)
        return self._adopt(kept, self._annotations)

    def split(
        self,
        *,
        seed: int | None = None,
        use_server_splits: bool | None = None,
        use_project_splits: bool | None = None,
        as_of_timestamp: str | None = None,
        by_patient: bool = False,
        **splits: float,
    ) -> dict[str, DatamintBaseDataset]:
        """Split into named datasets: local ratios, project-scoped assignments, or legacy ``split:*`` tags."""
        if use_server_splits and use_project_splits:
            raise ValueError("use_server_splits and use_project_splits cannot both be True")
        if (use_server_splits or use_project_splits) and splits:
            raise ValueError("ratio kwargs cannot be combined with use_project_splits/use_server_splits")
        self._prepare()
        items = [self.get_resource(i) for i in range(len(self))]  # the resource of every item (slice)
        if splits:
            validate_ratios(splits)
            if by_patient:
                parts, mode = patient_split(items, splits, seed), "local_by_patient"
            else:
                parts, mode = local_split(len(items), splits, seed), "local"
            return self._parts(parts, mode, None)
        project_mode = use_project_splits or (use_project_splits is None and not use_server_splits)
        if project_mode and self._resources_arg is None:
            assignments = self.source.split_assignments(include_history=True)
            parts, when = project_split(items, assignments, as_of_timestamp)
            return self._parts(parts, "project_api", when)
        if use_project_splits:
            raise ValueError("use_project_splits=True needs a dataset loaded from a project")
        warnings.warn(
            "splitting by 'split:*' resource tags is deprecated; use project splits or ratios",
            DeprecationWarning,
            stacklevel=2,
        )
        tagged: dict[str, list[int]] = {}
        for position, resource in enumerate(items):
            for tag in resource.tags:
                if tag.startswith("split:"):
                    tagged.setdefault(tag[len("split:") :], []).append(position)
        return self._parts(tagged, "server_tags", None)

    def _parts(self, parts: dict[str, list[int]], mode: str, when: str | None) -> dict[str, DatamintBaseDataset]:
        out = {}
        for name, positions in parts.items():
            part = self.subset(positions)
            part.split_name = name
            part.split_source = mode
            part.split_as_of_timestamp = when
            out[name] = part
        return out

    # -- caching and lineage --------------------------------------------------------------------------------

    def prefetch(self, *, include_annotations: bool = False) -> None:
        """Fetch every file (and with ``include_annotations`` every mask) and fill the decoded-array cache, in
        parallel with a progress bar. Idempotent: a second call finds everything cached."""
        from datamint_pipes.stages.cached import CachedDecode
        from datamint_pipes.stages.prefetch import prefetch_decoded

        self._prepare()
        source_prefetch = getattr(self.source, "prefetch", None)
        if callable(source_prefetch):
            source_prefetch([r.id for r in self._resources], include_annotations=include_annotations)
        axis = getattr(self, "slice_axis", None) or "axial"
        prefetch_decoded(self._resources, CachedDecode(self.source, self.cache, axis, metainfo=False))

    def build_mlflow_dataset(self) -> Any:
        """An MLflow dataset with source, digest and split lineage (needs the ``mlflow`` extra)."""
        try:
            import mlflow.data  # noqa: F401
        except ImportError as error:
            raise ImportError("build_mlflow_dataset() needs MLflow: pip install 'datamint-pipes[mlflow]'") from error
        from ._mlflow import build_dataset

        return build_dataset(self)


class _Concat(ConcatDataset[dict[str, Any]]):
    """``a + b``: a concatenation that still offers the collate function."""

    def get_collate_fn(self) -> Callable[[Any], dict[str, Any]]:
        return Collate()

    def get_dataloader(self, *args: Any, **kwargs: Any) -> DataLoader[dict[str, Any]]:
        kwargs.setdefault("collate_fn", self.get_collate_fn())
        return DataLoader(self, *args, **kwargs)

    def __add__(self, other: Dataset[dict[str, Any]]) -> _Concat:
        return _Concat([*self.datasets, other])
