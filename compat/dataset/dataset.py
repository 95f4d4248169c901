"""The legacy ``DatamintDataset`` (deprecated): the old all-in-one class, with segmentations."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from datamint_pipes.stages.annotations import merge_semantic

from .base_dataset import DatamintBaseDataset

__all__ = ["DatamintDataset"]


class DatamintDataset(DatamintBaseDataset):
    """Deprecated: use ``ImageDataset``, ``VolumeDataset`` or ``VideoDataset``. ``image_transform`` and
    ``mask_transform`` are applied to the image and to each segmentation tensor after everything else."""

    def __init__(
        self,
        project_name: str,
        root: str | None = None,
        auto_update: bool = True,
        api_key: str | None = None,
        server_url: str | None = None,
        return_dicom: bool = False,
        return_metainfo: bool = True,
        return_frame_by_frame: bool = False,
        return_annotations: bool = True,
        return_segmentations: bool = True,
        return_as_semantic_segmentation: bool = False,
        image_transform: Callable[[torch.Tensor], Any] | None = None,
        mask_transform: Callable[[torch.Tensor], Any] | None = None,
        alb_transform: Any = None,
        semantic_seg_merge_strategy: str | None = None,
        include_unannotated: bool = True,
        include_annotators: list[str] | None = None,
        exclude_annotators: list[str] | None = None,
        include_segmentation_names: list[str] | None = None,
        exclude_segmentation_names: list[str] | None = None,
        include_image_label_names: list[str] | None = None,
        exclude_image_label_names: list[str] | None = None,
        include_frame_label_names: list[str] | None = None,
        exclude_frame_label_names: list[str] | None = None,
        all_annotations: bool = False,
    ) -> None:
        super().__init__(
            project_name,
            root=root,
            auto_update=auto_update,
            api_key=api_key,
            server_url=server_url,
            return_dicom=return_dicom,
            return_metainfo=return_metainfo,
            return_annotations=return_annotations,
            return_frame_by_frame=return_frame_by_frame,
            include_unannotated=include_unannotated,
            all_annotations=all_annotations,
            include_annotators=include_annotators,
            exclude_annotators=exclude_annotators,
            include_segmentation_names=include_segmentation_names,
            exclude_segmentation_names=exclude_segmentation_names,
            include_image_label_names=include_image_label_names,
            exclude_image_label_names=exclude_image_label_names,
            include_frame_label_names=include_frame_label_names,
            exclude_frame_label_names=exclude_frame_label_names,
            return_segmentations=return_segmentations,
            return_as_semantic_segmentation=return_as_semantic_segmentation,
            semantic_seg_merge_strategy=semantic_seg_merge_strategy,
            alb_transform=alb_transform,
        )
        self.image_transform = image_transform
        self.mask_transform = mask_transform

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = super().__getitem__(index)
        if self.image_transform is not None:
            item["image"] = self.image_transform(torch.as_tensor(item["image"]))
        if self.mask_transform is not None and isinstance(item.get("segmentations"), dict):
            item["segmentations"] = {
                a: self.mask_transform(torch.as_tensor(m)) for a, m in item["segmentations"].items()
            }
        return item

    def apply_semantic_seg_merge_strategy(
        self, segmentations: dict[str, torch.Tensor], nframes: int, h: int, w: int
    ) -> torch.Tensor | dict[str, torch.Tensor]:
        if self.semantic_seg_merge_strategy is None:
            return segmentations
        return merge_semantic(segmentations, self.semantic_seg_merge_strategy)
