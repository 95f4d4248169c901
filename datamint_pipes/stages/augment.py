"""Geometric and intensity stages: a deterministic resize, and albumentations augmentation of image and masks.

* :class:`Resize` resizes a (C,H,W) or (C,N,H,W) ``image`` to (height, width) per frame with area/linear
  interpolation, and every mask in ``masks`` with nearest-neighbour, so masks stay binary and aligned.
* :class:`Augment` applies an albumentations transform (albumentations >= 2.0) to the image and *all* its
  masks in one call, so every mask follows the image; see its docstring for the layouts.

Randomness of :class:`Augment` comes only from an RNG seeded by a pure function of (``seed``, ``epoch``,
``resource_id``, ``slice_index``) -- see :func:`augment_random_state` -- never from the transform's own or any
global state, so a sample gets the same parameters in any worker (thread or process, any number) and new
ones every epoch.
"""

from __future__ import annotations

import copy
import hashlib
import random
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import cv2
import numpy as np

from datamint_pipes.model import Sample

__all__ = ["Augment", "Resize", "augment_random_state"]


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


# -- Augment --------------------------------------------------------------------------------------------------

# albumentations 2 handles these image dtypes; others are passed (and returned) as float32.
_IMAGE_DTYPES = (np.dtype(np.uint8), np.dtype(np.float32))
_CV2_MAX_CHANNELS = 512  # OpenCV's CV_CN_MAX

_Layout = Literal["image", "images", "volume"]

# The keyword arguments of each layout: (image key, masks key).
_KEYS: dict[_Layout, tuple[str, str]] = {
    "image": ("image", "masks"),  # 2D: (H,W,C), (K,H,W)
    "images": ("images", "masks"),  # 3D, slice-wise: (N,H,W,C), (K*N,H,W)
    "volume": ("volume", "mask3d"),  # 3D with 3D transforms: (N,H,W,C), (N,H,W,K)
}


def augment_random_state(
    seed: int, epoch: int, resource_id: object, slice_index: int = -1
) -> tuple[np.random.Generator, random.Random]:
    """The numpy and Python RNGs :class:`Augment` draws a sample's parameters from.

    A pure function of its arguments: a 128-bit BLAKE2b digest of ``"seed|epoch|slice_index|resource_id"``
    (unambiguous: only the last field is free text) seeds both generators, so the result is the same in every
    process (no salted ``hash()``) and for every worker layout. ``resource_id`` is used as ``str(resource_id)``;
    ``slice_index`` is -1 for a sample that is not a slice or frame.
    """
    key = f"{int(seed)}|{int(epoch)}|{int(slice_index)}|{resource_id}"
    entropy = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=16).digest(), "little")
    return np.random.default_rng(entropy), random.Random(entropy)


def _is_tensor(value: object) -> bool:
    # A tensor can only exist once torch is imported: no import (and no hard dependency) needed to ask.
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


def _is_albumentations(transform: object) -> bool:
    albumentations = sys.modules.get("albumentations")
    return albumentations is not None and isinstance(
        transform, (albumentations.BasicTransform, albumentations.BaseCompose)
    )


def _leaves(transform: Any) -> list[Any]:
    """The basic transforms inside an albumentations transform or composition (nested ones included)."""
    import albumentations as A

    if not isinstance(transform, A.BaseCompose):
        return [transform]
    return [leaf for t in transform.transforms for leaf in _leaves(t)]


def _needs_volume(transform: Any) -> bool:
    """Whether the pipeline holds a 3D-only transform (``RandomCrop3D``, ``ToTensor3D``, ...)."""
    return any("volume" in t.targets and "image" not in t.targets for t in _leaves(transform))


def _moves_pixels(transform: Any) -> bool:
    """Whether an albumentations transform (or any transform inside a composition) may move pixels."""
    import albumentations as A

    return any(isinstance(t, A.DualTransform) for t in _leaves(transform))


def _compile(transform: Any) -> Any:
    """A private deep copy of ``transform``, wrapped in ``A.Compose`` unless it is one (bboxes, mask lists)."""
    import albumentations as A

    clone = copy.deepcopy(transform)
    return clone if isinstance(clone, A.Compose) else A.Compose([clone])


@dataclass(frozen=True)
class _MaskEntry:
    """Where one array of ``segmentations`` / ``masks`` sits among the stacked masks: masks ``start:stop``."""

    field: str  # "segmentations" or "masks"
    key: str
    start: int
    stop: int
    dtype: np.dtype[Any]
    instance_axis: bool  # (I,[N,]H,W) arrays (segmentations) vs one ([N,]H,W) mask (masks)


@dataclass(frozen=True)
class Augment:
    """Augment ``image`` with ``transform``, moving every mask and box with it. Picklable; thread safe.

    ``transform`` is an albumentations transform or ``Compose`` (albumentations >= 2.0), or any callable with
    the same keyword interface (below) returning a dict. The K masks are every author's instances of
    ``segmentations`` (``{author: (I,[N,]H,W)}``) followed by every entry of ``masks``
    (``{annotation_id: ([N,]H,W)}``); the masks keyword is left out when K is 0. One call per sample:

    * **2D** sample, ``image`` (C,H,W): ``transform(image=(H,W,C), masks=(K,H,W))``.
    * **3D** sample, ``image`` (C,N,H,W) (a volume or video): ``transform(images=(N,H,W,C), masks=(K*N,H,W))``
      (mask k's slices at ``k*N : (k+1)*N``). albumentations draws the parameters once per call and applies
      them to every slice and mask, so a crop, rotation or resize (H and W may change) is the same across the
      volume. When the pipeline holds a 3D-only transform (``RandomCrop3D``, ``CenterCrop3D``,
      ``ToTensor3D``, ...) the call is ``transform(volume=(N,H,W,C), mask3d=(N,H,W,K))`` instead
      (albumentations 2.0.8's volume path: a few pixel transforms, e.g. ``RandomBrightnessContrast``, fail
      there, which raises ``ValueError``). A plain callable always gets the ``images`` form.
    * **Boxes** (``boxes = {author: float32 (B,4)}`` in pixels, x1,y1,x2,y2, with ``box_labels`` and
      ``box_frames``) are passed as ``bboxes`` only when the ``Compose`` was built with
      ``bbox_params=A.BboxParams(format="pascal_voc", ...)`` (every ``label_fields`` entry receives the box
      labels); a box albumentations drops is dropped from ``boxes``, ``box_labels`` and ``box_frames`` alike.
      Boxes with a transform that may move pixels but has no ``bbox_params`` (or with a plain callable) raise
      ``ValueError``: they would silently stop matching the image.

    The result is the sample with ``image`` back in (C,H',W') / (C,N',H',W') layout -- a channel-first numpy
    view of albumentations' output (not copied again: collate's stack copies once anyway), or the tensor a
    final ``ToTensorV2`` / ``ToTensor3D`` returns, permuted to that layout -- and ``segmentations`` /
    ``masks`` / boxes split back into their dicts, masks as numpy arrays of their original dtype (uint8 0/1
    stays 0/1: albumentations resamples masks with nearest-neighbour by default). Images of dtypes other than
    uint8 and float32 (albumentations 2 supports only those) are passed, and come back, as float32. The input
    sample and its arrays are never modified (read-only memory maps work).

    Randomness: before each call the transform's RNGs are replaced by
    ``augment_random_state(seed, sample["epoch"], sample["resource_id"], sample.get("slice_index", -1))``
    (``epoch`` defaults to 0), so a ``Compose(seed=...)`` of its own is ignored. Each thread works on its own
    deep copy of the transform, made on its first call (a copy per call would cost ~0.3-3 ms). A plain
    callable receives no RNG: it is responsible for its own determinism and thread safety.

    Errors: a sample without ``resource_id``, a malformed image or mask, or a transform that rejects the input
    (e.g. an RGB-only transform on a 2-channel image) raise ``ValueError`` naming the resource.
    """

    transform: Callable[..., Any]
    seed: int = field(default=0, kw_only=True)
    _local: threading.local = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        if not callable(self.transform):
            raise TypeError(f"Augment needs a callable transform, got {type(self.transform).__name__}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise ValueError(f"{self.seed=} must be a non-negative integer")
        if _is_albumentations(self.transform):
            if not hasattr(self.transform, "set_random_state"):
                raise ValueError("Augment needs albumentations >= 2.0 (transforms with set_random_state)")
            processor = getattr(self.transform, "processors", {}).get("bboxes")
            if processor is not None and processor.params.format != "pascal_voc":
                raise ValueError(
                    f"bbox_params format {processor.params.format!r} is not supported: boxes are pixel "
                    "[x1, y1, x2, y2], use A.BboxParams(format='pascal_voc')"
                )
        object.__setattr__(self, "_local", threading.local())

    # A threading.local neither pickles nor deep-copies: a copy starts with no per-thread clones.
    def __getstate__(self) -> dict[str, Any]:
        return {"transform": self.transform, "seed": self.seed}

    def __setstate__(self, state: Mapping[str, Any]) -> None:
        object.__setattr__(self, "transform", state["transform"])
        object.__setattr__(self, "seed", state["seed"])
        object.__setattr__(self, "_local", threading.local())

    def _thread_transform(self) -> tuple[Any, bool]:
        """This thread's private copy of the transform, and whether it needs albumentations' volume targets."""
        cached: tuple[Any, bool] | None = getattr(self._local, "compiled", None)
        if cached is None:
            clone = _compile(self.transform)
            cached = (clone, _needs_volume(clone))
            self._local.compiled = cached
        return cached

    def __call__(self, sample: Sample) -> Sample:
        if "resource_id" not in sample:
            raise ValueError("Augment needs sample['resource_id'] (with 'epoch' and 'slice_index', the RNG key)")
        resource_id = sample["resource_id"]
        image = sample.get("image")
        if not isinstance(image, np.ndarray) or image.ndim not in (3, 4) or image.shape[0] < 1:
            described = image.shape if isinstance(image, np.ndarray) else type(image).__name__
            raise ValueError(f"Augment needs image (C,H,W) or (C,N,H,W) for resource {resource_id}, got {described}")
        albumentations = _is_albumentations(self.transform)
        transform: Any = self.transform
        layout: _Layout = "image" if image.ndim == 3 else "images"
        if albumentations:
            transform, needs_volume = self._thread_transform()
            if needs_volume and layout == "images":
                layout = "volume"
        image_key, masks_key = _KEYS[layout]
        spatial = tuple(image.shape[1:])
        entries, stacked = _stack_masks(sample, spatial, layout, resource_id)

        image_dtype = image.dtype if image.dtype in _IMAGE_DTYPES else np.dtype(np.float32)
        # A channel-last copy: albumentations' layout, and the input can never be written through it.
        channel_last = _channel_last(list(image.astype(image_dtype, copy=False)))
        data: dict[str, Any] = {image_key: channel_last}
        if stacked is not None:
            data[masks_key] = stacked
        boxes = _BoxPack.from_sample(sample, transform if albumentations else None, resource_id)
        if boxes is not None:
            data.update(boxes.data)
        if albumentations:
            epoch = sample.get("epoch", 0)
            transform.set_random_state(*augment_random_state(self.seed, epoch, resource_id, _slice_index(sample)))
        name = type(self.transform).__name__
        try:
            result = transform(**data)
        except (ValueError, TypeError, KeyError, IndexError, NotImplementedError, cv2.error) as error:
            raise ValueError(
                f"{name} failed for resource {resource_id} ({image_key}={channel_last.shape} {image_dtype}, "
                f"{masks_key}={None if stacked is None else stacked.shape}): {type(error).__name__}: {error}"
            ) from error
        if not isinstance(result, Mapping):
            raise ValueError(f"{name} returned {type(result).__name__}, not a dict, for resource {resource_id}")

        out: dict[str, Any] = dict(sample)
        out["image"], spatial_out = _image_out(result, layout, name, resource_id)
        if stacked is not None:
            out.update(_split_masks(result, entries, layout, spatial_out, name, resource_id, sample))
        else:
            out.update(_empty_masks(entries, sample, spatial_out))
        if boxes is not None:
            out.update(boxes.unpack(result, spatial, spatial_out, resource_id))
        return out  # type: ignore[return-value]


def _slice_index(sample: Sample) -> int:
    value = sample.get("slice_index", -1)
    return -1 if value is None else int(value)


def _stack_masks(
    sample: Sample, spatial: tuple[int, ...], layout: _Layout, resource_id: object
) -> tuple[list[_MaskEntry], np.ndarray[Any, Any] | None]:
    """Every mask of the sample in one new array of the layout's shape (``None`` when there is none)."""
    arrays: list[tuple[_MaskEntry, np.ndarray[Any, Any]]] = []
    start = 0
    for field_name, instance_axis in (("segmentations", True), ("masks", False)):
        group = sample.get(field_name)
        if group is None:
            continue
        if not isinstance(group, Mapping):
            raise ValueError(
                f"Augment needs {field_name} as a dict of numpy arrays for resource {resource_id}, got "
                f"{type(group).__name__} (augment before merging authors into one tensor)"
            )
        expected = ("(I," + ("N," if len(spatial) == 3 else "") + "H,W)") if instance_axis else str(spatial)
        for key, array in group.items():
            if not isinstance(array, np.ndarray):
                raise ValueError(
                    f"{field_name}[{key!r}] of resource {resource_id} is {type(array).__name__}, not a numpy array"
                )
            shape = array.shape[1:] if instance_axis else array.shape
            if array.ndim != len(spatial) + instance_axis or tuple(shape) != spatial:
                raise ValueError(
                    f"{field_name}[{key!r}] of resource {resource_id} has shape {array.shape}, expected "
                    f"{expected} matching image spatial shape {spatial}"
                )
            count = array.shape[0] if instance_axis else 1
            entry = _MaskEntry(field_name, key, start, start + count, array.dtype, instance_axis)
            arrays.append((entry, array if instance_axis else array[np.newaxis]))
            start += count
    entries = [entry for entry, _ in arrays]
    if start == 0:
        return entries, None
    dtypes = {array.dtype for _, array in arrays}
    # uint8 for binary masks; float32 when any is not (semantic channels), cast back per entry afterwards.
    common = np.dtype(np.uint8) if dtypes <= {np.dtype(np.uint8), np.dtype(np.bool_)} else np.dtype(np.float32)
    if layout == "volume":
        return entries, _channel_last([plane for _, array in arrays for plane in array.astype(common, copy=False)])
    stacked = np.empty((start, *spatial), dtype=common)
    for entry, array in arrays:
        stacked[entry.start : entry.stop] = array
    return entries, stacked.reshape(-1, *spatial[-2:])  # (K,N,H,W) -> (K*N,H,W) for "images"


def _channel_last(planes: Sequence[np.ndarray[Any, Any]]) -> np.ndarray[Any, Any]:
    """``C`` equal-shaped arrays -> one new C-contiguous (..., C) array (cv2.merge: ~40x numpy's transposed copy)."""
    shape = planes[0].shape
    if len(planes) == 1:
        return np.array(planes[0], order="C")[..., np.newaxis]
    if len(planes) <= _CV2_MAX_CHANNELS:
        merged = cv2.merge([np.ascontiguousarray(p).reshape(-1, shape[-1]) for p in planes])
        return np.asarray(merged).reshape(*shape, len(planes))
    return np.stack(planes, axis=-1)


def _image_out(
    result: Mapping[str, Any], layout: _Layout, name: str, resource_id: object
) -> tuple[Any, tuple[int, ...]]:
    """The transformed image, channel-first ((C,H,W) or (C,N,H,W)), and its spatial shape."""
    key = _KEYS[layout][0]
    image: Any = result.get(key)
    ndim = 3 if layout == "image" else 4
    if _is_tensor(image):
        # ToTensorV2 gives (C,H,W) for an image, (N,C,H,W) for images; ToTensor3D (C,N,H,W) for a volume.
        if image.ndim != ndim:
            raise ValueError(f"{name} returned a {key} tensor of shape {tuple(image.shape)} for resource {resource_id}")
        if layout == "images":
            image = image.permute(1, 0, 2, 3)
        return image, tuple(image.shape[1:])
    if not isinstance(image, np.ndarray) or image.ndim not in (ndim - 1, ndim):
        described = image.shape if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"{name} returned {key} {described} for resource {resource_id}")
    if image.ndim == ndim - 1:  # a single channel squeezed away
        image = image[..., np.newaxis]
    # A channel-first view, no copy: whoever needs it contiguous (collate's stack) copies once anyway.
    return np.moveaxis(image, -1, 0), tuple(image.shape[:-1])


def _split_masks(
    result: Mapping[str, Any],
    entries: Sequence[_MaskEntry],
    layout: _Layout,
    spatial_out: tuple[int, ...],
    name: str,
    resource_id: object,
    sample: Sample,
) -> dict[str, Any]:
    """The transformed masks, split back into ``segmentations`` / ``masks`` dicts (channel-first numpy)."""
    key = _KEYS[layout][1]
    raw = result.get(key)
    if raw is None:
        raise ValueError(f"{name} returned no {key!r} for resource {resource_id}")
    count = entries[-1].stop
    masks = _to_numpy(raw)
    if layout == "volume" and not _is_tensor(raw):  # (N,H,W,K); ToTensor3D gives (K,N,H,W)
        masks = np.moveaxis(masks if masks.ndim == 4 else masks[..., np.newaxis], -1, 0)
    elif layout == "images" and masks.ndim == 3 and masks.shape[0] == count * spatial_out[0]:
        masks = masks.reshape(count, *spatial_out)
    if masks.shape != (count, *spatial_out):
        raise ValueError(
            f"{name} returned {key} of shape {masks.shape} for resource {resource_id}, expected {count} masks "
            f"of the image's shape {spatial_out}: the transform must move masks with the image"
        )
    out: dict[str, dict[str, np.ndarray[Any, Any]]] = {
        field_name: {} for field_name in ("segmentations", "masks") if sample.get(field_name) is not None
    }
    for entry in entries:
        part = masks[entry.start : entry.stop] if entry.instance_axis else masks[entry.start]
        out[entry.field][entry.key] = part.astype(entry.dtype, copy=False)
    return out


def _to_numpy(value: Any) -> np.ndarray[Any, Any]:
    if _is_tensor(value):
        return np.asarray(value.detach().cpu().numpy())
    if isinstance(value, (list, tuple)):
        return np.stack([_to_numpy(v) for v in value]) if value else np.empty((0,), np.uint8)
    return np.asarray(value)


def _empty_masks(entries: Sequence[_MaskEntry], sample: Sample, spatial_out: tuple[int, ...]) -> dict[str, Any]:
    """No mask pixels to move: the (I=0) author arrays with the new spatial shape; ``masks`` is then empty."""
    out: dict[str, dict[str, np.ndarray[Any, Any]]] = {
        field_name: {} for field_name in ("segmentations", "masks") if sample.get(field_name) is not None
    }
    for entry in entries:
        out[entry.field][entry.key] = np.zeros((0, *spatial_out), dtype=entry.dtype)
    return out


# Per-box arrays that travel with ``boxes`` ({author: (B,)}), dropped with their box.
_BOX_COMPANIONS = ("box_labels", "box_frames")


@dataclass(frozen=True)
class _BoxPack:
    """All authors' boxes as one ``bboxes`` array, a last column holding each box's row, to split them back."""

    authors: tuple[str, ...]
    counts: tuple[int, ...]
    companions: dict[str, np.ndarray[Any, Any]]  # "box_labels" / "box_frames" (those present): int32 (B,)
    data: dict[str, Any]  # the keyword arguments for the transform

    @classmethod
    def from_sample(cls, sample: Sample, transform: Any | None, resource_id: object) -> _BoxPack | None:
        """The pack for ``transform`` (``None`` for a plain callable), or ``None`` when boxes need not move."""
        fields: Mapping[str, Any] = sample  # the box keys are not (yet) part of the Sample schema
        boxes = fields.get("boxes")
        if not boxes:
            return None
        arrays = {author: np.asarray(b, dtype=np.float64).reshape(-1, 4) for author, b in boxes.items()}
        if not any(len(a) for a in arrays.values()):
            return None
        processor = getattr(transform, "processors", {}).get("bboxes") if transform is not None else None
        if processor is None:
            if transform is not None and not _moves_pixels(transform):
                return None  # intensity-only: boxes stay valid as they are
            raise ValueError(
                f"resource {resource_id} has boxes but the transform cannot move them: build it as "
                "A.Compose([...], bbox_params=A.BboxParams(format='pascal_voc')) or drop the boxes"
            )
        authors = tuple(arrays)
        counts = tuple(len(arrays[a]) for a in authors)
        companions: dict[str, np.ndarray[Any, Any]] = {}
        for key in _BOX_COMPANIONS:
            by_author = fields.get(key)
            if by_author is None:
                continue
            try:
                companions[key] = np.concatenate(
                    [np.asarray(by_author[a], dtype=np.int32).reshape(n) for a, n in zip(authors, counts, strict=True)]
                )
            except (KeyError, ValueError) as error:
                raise ValueError(f"{key} of resource {resource_id} does not match its boxes: {error}") from error
        coordinates = np.concatenate([arrays[a] for a in authors])
        rows = np.arange(len(coordinates), dtype=np.float64)[:, np.newaxis]
        data: dict[str, Any] = {"bboxes": np.concatenate([coordinates, rows], axis=1)}
        labels = companions.get("box_labels", np.zeros(len(coordinates), dtype=np.int32))
        for label_field in processor.params.label_fields or ():
            data[label_field] = labels.tolist()
        return cls(authors, counts, companions, data)

    def unpack(
        self, result: Mapping[str, Any], spatial_in: tuple[int, ...], spatial_out: tuple[int, ...], resource_id: object
    ) -> dict[str, Any]:
        """``boxes`` (and ``box_labels``, ``box_frames``) of the boxes albumentations kept, in input order."""
        if "box_frames" in self.companions and len(spatial_in) == 3 and spatial_in[0] != spatial_out[0]:
            raise ValueError(
                f"resource {resource_id}: boxes on frames cannot follow a transform that changes the number of "
                f"frames ({spatial_in[0]} -> {spatial_out[0]})"
            )
        kept = np.asarray(result["bboxes"], dtype=np.float64).reshape(-1, 5)
        kept = kept[np.argsort(kept[:, 4], kind="stable")]
        rows = np.rint(kept[:, 4]).astype(np.int64)
        out: dict[str, dict[str, np.ndarray[Any, Any]]] = {"boxes": {}, **{key: {} for key in self.companions}}
        start = 0
        for author, count in zip(self.authors, self.counts, strict=True):
            mine = (rows >= start) & (rows < start + count)
            out["boxes"][author] = kept[mine, :4].astype(np.float32).reshape(-1, 4)
            for key, values in self.companions.items():
                out[key][author] = values[rows[mine]]
            start += count
        return out
