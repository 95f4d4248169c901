"""The legacy ``DatamintBaseDataset(project_name, ...)`` (deprecated): kept for old code, built on the new one."""

from __future__ import annotations

import warnings
from collections import Counter
from typing import Any, Literal

from datamint_pipes import decode
from datamint_pipes.model import Annotation

from .base import DatamintBaseDataset as _Base
from .base import DatamintDatasetException

__all__ = ["DatamintBaseDataset", "DatamintDatasetException"]


class DatamintBaseDataset(_Base):
    """Deprecated: use ``ImageDataset``, ``VolumeDataset`` or ``VideoDataset``.

    ``project_name`` is the project; ``root`` a local projects folder it is looked up in (else the store
    root); ``return_frame_by_frame`` yields one item per frame; ``all_annotations``/``return_dicom`` are
    accepted for compatibility.
    """

    DATAMINT_DATASETS_DIR = "datasets"

    def __init__(
        self,
        project_name: str,
        root: str | None = None,
        auto_update: bool = True,
        api_key: str | None = None,
        server_url: str | None = None,
        return_dicom: bool = False,
        return_metainfo: bool = True,
        return_annotations: bool = True,
        return_frame_by_frame: bool = False,
        include_unannotated: bool = True,
        all_annotations: bool = False,
        include_annotators: list[str] | None = None,
        exclude_annotators: list[str] | None = None,
        include_segmentation_names: list[str] | None = None,
        exclude_segmentation_names: list[str] | None = None,
        include_image_label_names: list[str] | None = None,
        exclude_image_label_names: list[str] | None = None,
        include_frame_label_names: list[str] | None = None,
        exclude_frame_label_names: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        warnings.warn(
            f"{type(self).__name__}(project_name, ...) is deprecated; use ImageDataset, VolumeDataset or "
            "VideoDataset from datamint_compat.dataset",
            DeprecationWarning,
            stacklevel=2,
        )
        import os

        project: Any = os.path.join(root, project_name) if root is not None else project_name
        kwargs.setdefault("return_segmentations", False)
        super().__init__(
            project=project,
            auto_update=auto_update,
            api_key=api_key,
            server_url=server_url,
            return_metainfo=return_metainfo,
            include_unannotated=include_unannotated,
            include_annotators=include_annotators,
            exclude_annotators=exclude_annotators,
            include_segmentation_names=include_segmentation_names,
            exclude_segmentation_names=exclude_segmentation_names,
            include_image_label_names=include_image_label_names,
            exclude_image_label_names=exclude_image_label_names,
            include_frame_label_names=include_frame_label_names,
            exclude_frame_label_names=exclude_frame_label_names,
            **kwargs,
        )
        self.project_name = project_name
        self.root = root
        self.return_dicom = return_dicom
        self.return_annotations = return_annotations
        self.return_frame_by_frame = return_frame_by_frame
        self.all_annotations = all_annotations
        self._frames: Any = None

    def _frame_view(self) -> Any:
        if self._frames is None:
            from .sliced_dataset import SlicedVolumeDataset

            self._frames = SlicedVolumeDataset.from_dataset(self, slice_axis="axial")
        return self._frames

    def __len__(self) -> int:
        return len(self._frame_view()) if self.return_frame_by_frame else super().__len__()

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self._frame_view()[index] if self.return_frame_by_frame else super().__getitem__(index)
        if not self.return_annotations:
            item.pop("annotations", None)
        return item

    @property
    def frame_categories_set(self) -> list[tuple[str, str]]:
        return list(self.schema.frame_categories)

    def get_annotations(
        self,
        index: int,
        type: Literal["label", "category", "segmentation", "all"] = "all",
        scope: Literal["frame", "image", "all"] = "all",
    ) -> list[Annotation]:
        return [
            a
            for a in self.resource_annotations[index]
            if (type == "all" or a.annotation_type == type) and (scope == "all" or a.scope == scope)
        ]

    def _distribution(self, annotation_type: str, scope: str | None, normalize: bool) -> dict[str, float]:
        counts: Counter[str] = Counter()
        for resource_annotations in self.resource_annotations:
            for a in resource_annotations:
                if a.annotation_type == annotation_type and (scope is None or a.scope == scope):
                    counts[a.identifier] += 1
        total = sum(counts.values())
        if normalize and total:
            return {k: v / total for k, v in counts.items()}
        return {k: float(v) for k, v in counts.items()}

    def get_framelabel_distribution(self, normalize: bool = False) -> dict[str, float]:
        return self._distribution("label", "frame", normalize)

    def get_segmentationlabel_distribution(self, normalize: bool = False) -> dict[str, float]:
        return self._distribution("segmentation", None, normalize)

    def get_info(self) -> dict[str, Any]:
        project = self.source.project
        return project.to_dict()

    def get_resources_ids(self) -> list[str]:
        return [r.id for r in self.resources]

    @staticmethod
    def read_number_of_frames(filepath: str) -> int:
        """Frames (or slices) of a file, from its headers."""
        try:
            return decode.probe(filepath, filename=filepath).frame_count
        except ValueError as error:
            raise DatamintDatasetException(f"cannot read the number of frames of {filepath}: {error}") from error
