"""``SlicedVolumeDataset``: one 2D item per slice of every volume, along a chosen axis."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any, Literal

from datamint_pipes.model import Annotation, Resource
from datamint_pipes.stages.expand import slice_axis_index

from ._items import ItemConfig, ReadSliceOf
from .base import DatamintBaseDataset

__all__ = ["SlicedVolumeDataset"]

SliceAxis = Literal["axial", "sagittal", "coronal"] | int


class SlicedVolumeDataset(DatamintBaseDataset):
    """2D dataset of slices: ``image`` (C,H,W) -- coronal slices (C,D,W), sagittal (C,D,H) -- and masks (I,H,W)
    or semantic (L+1,H,W). Slices are counted from catalogue headers; the transform applies whether or not
    segmentations are returned. Items are *slices*: ``len``, ``subset`` and ``split`` count slices."""

    def __init__(
        self, *, slice_axis: SliceAxis = "axial", parent_dataset: DatamintBaseDataset | None = None, **kwargs: Any
    ) -> None:
        slice_axis_index(slice_axis)
        if parent_dataset is not None:
            self.__dict__.update(copy.copy(parent_dataset.__dict__))
            self._stages = None
        else:
            super().__init__(**kwargs)
        self.slice_axis: SliceAxis = slice_axis
        self._slices: list[tuple[int, int]] | None = None

    @classmethod
    def from_dataset(cls, parent_dataset: DatamintBaseDataset, slice_axis: SliceAxis = "axial") -> SlicedVolumeDataset:
        """Slices of an already prepared dataset: configuration, schema, resources and split lineage are copied,
        nothing is fetched again."""
        parent_dataset._prepare()
        return cls(slice_axis=slice_axis, parent_dataset=parent_dataset)

    def _slice_table(self) -> list[tuple[int, int]]:
        self._prepare()
        if self._slices is None:
            axis = slice_axis_index(self.slice_axis)
            table: list[tuple[int, int]] = []
            for position, resource in enumerate(self._resources):
                shape = resource.metadata.get("shape")
                if shape is not None:
                    count = int(shape[axis + 1]) if len(shape) == 4 else 1
                elif axis == 0 and resource.frame_count is not None:
                    count = resource.frame_count
                else:
                    raise ValueError(f"resource {resource.id} has no shape in its catalogue entry to count slices")
                table.extend((position, k) for k in range(count))
            self._slices = table
        return self._slices

    def _item_config(self) -> ItemConfig:
        config = super()._item_config()
        return ItemConfig(**{**config.__dict__, "slice_axis": self.slice_axis, "layout": "2d"})

    def _reader(self) -> Callable[[int], Any]:
        table = self._slice_table()
        return ReadSliceOf(
            self._resources,
            self._annotations,
            [p for p, _ in table],
            [k for _, k in table],
            self.slice_axis,
            epoch=self.epoch,
        )

    def __len__(self) -> int:
        return len(self._slice_table())

    def get_resource(self, index: int) -> Resource:
        position, _ = self._slice_table()[index]
        return self._resources[position]

    def subset(self, indices: list[int]) -> DatamintBaseDataset:
        table = self._slice_table()
        other = copy.copy(self)
        other._slices = [table[i] for i in indices]
        other._stages = None
        return other

    def _adopt(self, resources: Sequence[Resource], annotations: dict[str, list[Annotation]]) -> Any:
        keep = {r.id for r in resources}
        table = self._slice_table()
        other = copy.copy(self)
        other._slices = [(p, k) for p, k in table if self._resources[p].id in keep]
        other._stages = None
        return other

    def apply_alb_transform(self, img: Any, segmentations: dict[str, Any]) -> dict[str, Any]:
        """2D transform of one slice: ``img`` (C,H,W) or (C,1,H,W), masks (I,H,W) or (I,1,H,W)."""
        if img.ndim == 4:
            img = img[:, 0]
            segmentations = {a: m[:, 0] for a, m in segmentations.items()}
        return super().apply_alb_transform(img, segmentations)
