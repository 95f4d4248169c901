"""Geometric and intensity stages. For now: a deterministic resize of image and masks.

:class:`Resize` resizes a (C,H,W) or (C,N,H,W) ``image`` to (height, width) per frame with area/linear
interpolation, and every mask in ``masks`` with nearest-neighbour, so masks stay binary and aligned.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from datamint_pipes.model import Sample

__all__ = ["Resize"]


def _resize_2d(plane: np.ndarray[Any, Any], size: tuple[int, int], nearest: bool) -> np.ndarray[Any, Any]:
    height, width = size
    if plane.shape[-2:] == size:
        return plane
    shrinking = plane.shape[-2] >= height and plane.shape[-1] >= width
    interpolation = cv2.INTER_NEAREST if nearest else (cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    if plane.dtype == np.float64 or plane.dtype == np.int32 or plane.dtype.itemsize > 4:
        plane = plane.astype(np.float32)
    return np.asarray(cv2.resize(plane, (width, height), interpolation=interpolation))


def _resize(array: np.ndarray[Any, Any], size: tuple[int, int], nearest: bool) -> np.ndarray[Any, Any]:
    lead = array.shape[:-2]
    flat = array.reshape(-1, *array.shape[-2:])
    planes = [_resize_2d(p, size, nearest) for p in flat]
    return np.stack(planes).reshape(*lead, *size)


@dataclass(frozen=True)
class Resize:
    """Resize ``image`` and ``masks`` to (``height``, ``width``); no randomness."""

    height: int
    width: int

    def __post_init__(self) -> None:
        if self.height <= 0 or self.width <= 0:
            raise ValueError(f"{self.height=} and {self.width=} must be positive")

    def __call__(self, sample: Sample) -> Sample:
        size = (self.height, self.width)
        out: dict[str, Any] = dict(sample)
        out["image"] = _resize(sample["image"], size, nearest=False)
        if "masks" in sample:
            out["masks"] = {k: _resize(m, size, nearest=True) for k, m in sample["masks"].items()}
        return out  # type: ignore[return-value]
