"""Tests of :class:`~datamint_pipes.stages.augment.Augment` (albumentations 2 over image, masks and boxes).

Alignment is checked with masks drawn from the image itself (``mask = image > threshold``): after a
geometric transform the mask must still be ``image' > threshold`` -- exactly when the image is resampled
with nearest-neighbour (or only flipped/transposed), and otherwise everywhere but within one pixel of a
mask edge (where an interpolated image and a nearest-neighbour mask may legitimately disagree).
"""

from __future__ import annotations

import copy
import pickle
import threading
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch

from datamint_pipes.pipeline import Pipeline
from datamint_pipes.stages.augment import Augment, augment_random_state

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # albumentations' version check / pydantic notices at import
    import albumentations as A
    from albumentations.pytorch import ToTensorV2

NEAREST = cv2.INTER_NEAREST
THRESHOLDS = (90, 140, 190)  # one instance mask per threshold
H, W = 48, 40


@pytest.fixture(autouse=True)
def _quiet_albumentations() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        yield


def smooth_image(seed: int, shape: tuple[int, ...], dtype: Any = np.uint8, sigma: float = 3) -> np.ndarray[Any, Any]:
    """Blobby random content in [0, 255] (uint8) or [0, 1] (float32), ``shape`` = (C,[N,]H,W)."""
    rng = np.random.default_rng(seed)
    noise = rng.random(shape).astype(np.float32)
    planes = noise.reshape(-1, *shape[-2:])
    blurred = np.stack([cv2.GaussianBlur(p, (0, 0), sigma) for p in planes]).reshape(shape)
    scaled = (blurred - blurred.min()) / (blurred.max() - blurred.min())
    return (scaled * 255).astype(np.uint8) if dtype == np.uint8 else scaled.astype(np.float32)


def threshold_masks(image: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """uint8 0/1 masks (I,[N,]H,W) of ``image[0] > t`` for every threshold (uint8 scale)."""
    plane = image[0] if image.dtype == np.uint8 else image[0] * 255
    return np.stack([(plane > t) for t in THRESHOLDS]).astype(np.uint8)


def make_sample(image: np.ndarray[Any, Any], **extra: Any) -> dict[str, Any]:
    """A sample whose masks are drawn from ``image``: two authors' instances and one per-annotation mask."""
    masks = threshold_masks(image)
    return {
        "resource_id": "res-1",
        "epoch": 0,
        "image": image,
        "segmentations": {"alice": masks[:2], "bob": masks[2:]},
        "seg_labels": {"alice": np.array([1, 2], np.int32), "bob": np.array([1], np.int32)},
        "masks": {"ann-1": masks[1]},
        **extra,
    }


def all_masks(sample: dict[str, Any]) -> np.ndarray[Any, Any]:
    """The sample's masks in ``make_sample`` order (I=3, [N,]H,W)."""
    return np.concatenate([*sample["segmentations"].values(), *(m[None] for m in sample["masks"].values())])


def expected_from_image(image: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """The masks ``make_sample`` would draw from the (augmented) image, in ``all_masks`` order."""
    masks = threshold_masks(image)
    return np.concatenate([masks[:2], masks[2:], masks[1:2]])


def iou(a: np.ndarray[Any, Any], b: np.ndarray[Any, Any]) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def assert_aligned_up_to_borders(got: np.ndarray[Any, Any], expected: np.ndarray[Any, Any]) -> None:
    """``got`` equals ``expected`` except within one pixel of either's edges, and IoU >= 0.85 (small blobs
    at the high threshold are mostly border): an interpolated image and a nearest-neighbour mask differ only
    where the image is close to the threshold."""
    assert got.shape == expected.shape
    kernel = np.ones((3, 3), np.uint8)
    for g, e in zip(got.reshape(-1, *got.shape[-2:]), expected.reshape(-1, *expected.shape[-2:]), strict=True):
        border = (cv2.dilate(e, kernel) != cv2.erode(e, kernel)) | (cv2.dilate(g, kernel) != cv2.erode(g, kernel))
        outside = (g != e) & ~border
        assert not outside.any(), f"{outside.sum()} mismatches away from the mask borders"
        assert iou(g, e) >= 0.85


def outputs_equal(a: dict[str, Any], b: dict[str, Any]) -> bool:
    keys = ("image", "segmentations", "masks", "boxes", "box_labels", "box_frames")
    for key in keys:
        if (key in a) != (key in b):
            return False
        if key not in a:
            continue
        x, y = a[key], b[key]
        if isinstance(x, dict):
            if x.keys() != y.keys() or not all(np.array_equal(x[k], y[k]) for k in x):
                return False
        elif not np.array_equal(np.asarray(x), np.asarray(y)):
            return False
    return True


# -- alignment ------------------------------------------------------------------------------------------------

EXACT_2D = [
    pytest.param(A.HorizontalFlip(p=1), id="HorizontalFlip"),
    pytest.param(A.VerticalFlip(p=1), id="VerticalFlip"),
    pytest.param(A.Transpose(p=1), id="Transpose"),
    pytest.param(A.Rotate(limit=(30, 30), interpolation=NEAREST, p=1), id="Rotate30-nearest"),
    pytest.param(A.Affine(scale=1.2, rotate=20, translate_px=3, interpolation=NEAREST, p=1), id="Affine-nearest"),
    pytest.param(A.RandomResizedCrop((32, 36), interpolation=NEAREST), id="RandomResizedCrop-nearest"),
    pytest.param(A.Resize(30, 56, interpolation=NEAREST), id="Resize-nearest"),
    pytest.param(A.ElasticTransform(alpha=30, sigma=5, interpolation=NEAREST, p=1), id="Elastic-nearest"),
    pytest.param(A.GridDistortion(interpolation=NEAREST, p=1), id="GridDistortion-nearest"),
]

INTERPOLATED_2D = [
    pytest.param(A.Rotate(limit=(30, 30), p=1), id="Rotate30"),
    pytest.param(A.Affine(scale=(0.8, 1.2), rotate=(-20, 20), translate_percent=0.05, p=1), id="Affine"),
    pytest.param(A.RandomResizedCrop((128, 144)), id="RandomResizedCrop"),
    pytest.param(A.Resize(120, 224), id="Resize-down-and-up"),
    pytest.param(A.Resize(120, 100, interpolation=cv2.INTER_AREA), id="Resize-area"),
    pytest.param(A.ElasticTransform(alpha=120, sigma=20, p=1), id="Elastic"),
]


@pytest.mark.parametrize("transform", EXACT_2D)
@pytest.mark.parametrize("channels", [1, 3])
def test_2d_masks_follow_the_image_exactly(transform: Any, channels: int) -> None:
    sample = make_sample(smooth_image(channels, (channels, H, W)))
    for epoch in range(3):
        out = Augment(A.Compose([transform]), seed=5)({**sample, "epoch": epoch})
        assert out["image"].shape[0] == channels
        assert all_masks(out).shape == (4, *out["image"].shape[1:])
        np.testing.assert_array_equal(all_masks(out), expected_from_image(out["image"]))


def test_the_alignment_check_catches_misaligned_masks() -> None:
    sample = make_sample(smooth_image(7, (3, 4 * H, 4 * W), sigma=8))
    augment = Augment(A.Compose([A.Affine(rotate=(-20, 20), translate_percent=0.05, p=1)]))
    image_epoch_1 = augment({**sample, "epoch": 1})["image"]
    with pytest.raises(AssertionError):
        assert_aligned_up_to_borders(all_masks(augment(sample)), expected_from_image(image_epoch_1))


@pytest.mark.parametrize("transform", INTERPOLATED_2D)
def test_2d_masks_follow_the_image_up_to_interpolation(transform: Any) -> None:
    # Larger, smoother blobs than elsewhere, so that the interpolation border is a small part of each mask.
    sample = make_sample(smooth_image(7, (3, 4 * H, 4 * W), sigma=8))
    for epoch in range(3):
        out = Augment(A.Compose([transform]), seed=1)({**sample, "epoch": epoch})
        assert_aligned_up_to_borders(all_masks(out), expected_from_image(out["image"]))


VOLUME_TRANSFORMS = [
    pytest.param(A.Resize(30, 56, interpolation=NEAREST), (30, 56), id="Resize-nearest"),
    pytest.param(A.RandomResizedCrop((32, 36), interpolation=NEAREST), (32, 36), id="RandomResizedCrop-nearest"),
    pytest.param(A.RandomCrop(20, 24), (20, 24), id="RandomCrop"),
    pytest.param(A.Rotate(limit=(-40, 40), interpolation=NEAREST, p=1), (H, W), id="Rotate-nearest"),
    pytest.param(A.ElasticTransform(alpha=30, sigma=5, interpolation=NEAREST, p=1), (H, W), id="Elastic-nearest"),
    pytest.param(A.Transpose(p=1), (W, H), id="Transpose"),
]


@pytest.mark.parametrize(("transform", "size"), VOLUME_TRANSFORMS)
def test_3d_volume_and_masks_share_parameters_slice_by_slice(transform: Any, size: tuple[int, int]) -> None:
    volume = smooth_image(3, (1, 5, H, W))
    sample = make_sample(volume)
    augment = Augment(A.Compose([transform]), seed=2)
    for epoch in range(3):
        out = augment({**sample, "epoch": epoch})
        assert out["image"].shape == (1, 5, *size)
        assert {k: v.shape for k, v in out["segmentations"].items()} == {"alice": (2, 5, *size), "bob": (1, 5, *size)}
        assert out["masks"]["ann-1"].shape == (5, *size)
        np.testing.assert_array_equal(all_masks(out), expected_from_image(out["image"]))

    # One parameter draw for the whole volume: identical slices stay identical, whatever the transform.
    same = np.repeat(volume[:, :1], 4, axis=1)
    out = augment(make_sample(same, epoch=1))
    assert all(np.array_equal(out["image"][:, 0], out["image"][:, k]) for k in range(4))


def test_3d_interpolated_resize_aligns_per_slice() -> None:
    sample = make_sample(smooth_image(4, (2, 4, 4 * H, 4 * W), sigma=8))
    out = Augment(A.Compose([A.Resize(96, 224)]))(sample)
    assert out["image"].shape == (2, 4, 96, 224)
    assert_aligned_up_to_borders(all_masks(out), expected_from_image(out["image"]))


def test_3d_transforms_of_albumentations_work_on_volumes() -> None:
    pipeline = A.Compose([A.RandomCrop3D((3, 20, 24)), A.Rotate(limit=30, interpolation=NEAREST, p=1)])
    out = Augment(pipeline)(make_sample(smooth_image(4, (1, 5, H, W))))
    assert out["image"].shape == (1, 3, 20, 24)
    np.testing.assert_array_equal(all_masks(out), expected_from_image(out["image"]))


def test_a_transform_the_volume_path_lacks_raises_naming_the_resource() -> None:
    # albumentations 2.0.8: RandomBrightnessContrast reads data["image"/"images"], absent on the volume path.
    pipeline = A.Compose([A.CenterCrop3D((3, 20, 24)), A.RandomBrightnessContrast(p=1)])
    with pytest.raises(ValueError, match="failed for resource res-1"):
        Augment(pipeline)(make_sample(smooth_image(4, (1, 5, H, W))))


# -- determinism ----------------------------------------------------------------------------------------------

RANDOM_PIPELINE = A.Compose(
    [
        A.RandomResizedCrop((32, 32)),
        A.HorizontalFlip(),
        A.Affine(rotate=(-30, 30), p=0.8),
        A.RandomBrightnessContrast(p=0.8),
        A.GaussNoise(p=0.5),
    ]
)


def test_same_key_gives_the_same_output_in_any_order_and_copy() -> None:
    augment = Augment(RANDOM_PIPELINE, seed=11)
    samples = [make_sample(smooth_image(i, (3, H, W)), resource_id=f"r{i}") for i in range(4)]
    first = [augment(s) for s in samples]
    again = [augment(s) for s in reversed(samples)][::-1]  # other call history in between
    fresh = pickle.loads(pickle.dumps(augment))
    copied = copy.deepcopy(augment)
    for i, sample in enumerate(samples):
        assert outputs_equal(first[i], again[i])
        assert outputs_equal(first[i], fresh(sample))
        assert outputs_equal(first[i], copied(sample))
        assert outputs_equal(first[i], Augment(copy.deepcopy(RANDOM_PIPELINE), seed=11)(sample))


def test_the_key_is_seed_epoch_resource_and_slice() -> None:
    sample = make_sample(smooth_image(1, (3, H, W)))
    base = Augment(RANDOM_PIPELINE, seed=0)(sample)["image"]
    variants = [
        Augment(RANDOM_PIPELINE, seed=1)(sample),
        Augment(RANDOM_PIPELINE, seed=0)({**sample, "epoch": 1}),
        Augment(RANDOM_PIPELINE, seed=0)({**sample, "resource_id": "res-2"}),
        Augment(RANDOM_PIPELINE, seed=0)({**sample, "slice_index": 0}),
    ]
    for out in variants:
        assert not np.array_equal(out["image"], base)
    # A missing epoch is epoch 0; the Compose's own seed does not matter.
    no_epoch = {k: v for k, v in sample.items() if k != "epoch"}
    assert np.array_equal(Augment(RANDOM_PIPELINE)(no_epoch)["image"], base)
    reseeded = A.Compose(list(RANDOM_PIPELINE.transforms), seed=1234)
    assert np.array_equal(Augment(reseeded)(sample)["image"], base)


def test_different_epochs_draw_different_parameters() -> None:
    sample = make_sample(smooth_image(1, (1, H, W)))
    augment = Augment(A.Compose([A.Affine(rotate=(-45, 45), translate_percent=(-0.2, 0.2), p=1)]))
    images = [augment({**sample, "epoch": epoch})["image"] for epoch in range(6)]
    assert len({image.tobytes() for image in images}) == 6


def test_random_state_is_a_pure_function_of_the_key() -> None:
    a_np, a_py = augment_random_state(3, 2, "res", 5)
    b_np, b_py = augment_random_state(3, 2, "res", 5)
    assert a_np.integers(1 << 62) == b_np.integers(1 << 62)
    assert a_py.random() == b_py.random()
    c_np, _ = augment_random_state(3, 2, "res", -1)
    assert augment_random_state(3, 2, "res", 5)[0].integers(1 << 62) != c_np.integers(1 << 62)


def test_threads_sharing_one_stage_match_sequential_calls() -> None:
    augment = Augment(RANDOM_PIPELINE, seed=3)
    samples = [make_sample(smooth_image(i % 5, (3, H, W)), resource_id=f"r{i}", epoch=i % 3) for i in range(48)]
    expected = [Augment(RANDOM_PIPELINE, seed=3)(s) for s in samples]
    barrier = threading.Barrier(8)

    def run(chunk: int) -> list[dict[str, Any]]:
        barrier.wait()
        return [augment(s) for s in samples[chunk::8]]

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(run, range(8)))
    for chunk, outs in enumerate(results):
        for sample_expected, out in zip(expected[chunk::8], outs, strict=True):
            assert outputs_equal(sample_expected, out)


@dataclass(frozen=True)
class VolumeOrImage:
    """Pipeline source stage: index -> a sample (2D images for even resources, volumes for odd ones)."""

    def __call__(self, index: int) -> dict[str, Any]:
        shape = (1, 3, H, W) if index % 2 else (3, H, W)
        return make_sample(
            smooth_image(int(index), shape), resource_id=f"res-{int(index)}", epoch=getattr(index, "epoch", 0)
        )


def _fingerprint(sample: dict[str, Any]) -> tuple[str, int, bytes, bytes]:
    return (sample["resource_id"], sample["epoch"], np.asarray(sample["image"]).tobytes(), all_masks(sample).tobytes())


@pytest.mark.parametrize(
    ("num_workers", "worker_type", "context"),
    [
        pytest.param(2, "thread", None, id="2-threads"),
        pytest.param(2, "process", "fork", id="2-processes-fork"),
    ],
)
def test_pipeline_workers_do_not_change_the_output(num_workers: int, worker_type: str, context: str | None) -> None:
    augment = Augment(A.Compose([A.RandomResizedCrop((24, 24)), A.Rotate(limit=30, p=0.7), A.HorizontalFlip()]))
    pipeline = Pipeline(num_items=6, seed=0).map(VolumeOrImage()).map(augment).map(_fingerprint)
    with pipeline.loader() as loader:
        reference = [sorted(loader) for _ in range(2)]
    assert reference[0] != reference[1]  # a new epoch draws new parameters
    with pipeline.loader(
        num_workers=num_workers,
        worker_type=worker_type,  # type: ignore[arg-type]
        multiprocessing_context=context,
    ) as loader:
        assert [sorted(loader) for _ in range(2)] == reference


# -- every transform: no mutation, picklable, dtypes ------------------------------------------------------------

EVERY_TRANSFORM = [
    A.HorizontalFlip(p=1),
    A.VerticalFlip(p=1),
    A.Transpose(p=1),
    A.RandomRotate90(p=1),
    A.Rotate(limit=30, p=1),
    A.Affine(scale=(0.9, 1.1), rotate=(-20, 20), shear=5, p=1),
    A.Perspective(p=1),
    A.ElasticTransform(p=1),
    A.GridDistortion(p=1),
    A.OpticalDistortion(p=1),
    A.RandomResizedCrop((24, 28)),
    A.Resize(24, 28),
    A.RandomCrop(24, 28),
    A.CenterCrop(24, 28),
    A.PadIfNeeded(64, 64),
    A.CoarseDropout(p=1),
    A.RandomBrightnessContrast(p=1),
    A.RandomGamma(p=1),
    A.GaussNoise(p=1),
    A.GaussianBlur(p=1),
    A.Sharpen(p=1),
    A.Downscale(p=1),
]


def _read_only(sample: dict[str, Any]) -> dict[str, Any]:
    def frozen(array: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        array = array.copy()
        array.flags.writeable = False
        return array

    return {
        **sample,
        "image": frozen(sample["image"]),
        "segmentations": {k: frozen(v) for k, v in sample["segmentations"].items()},
        "masks": {k: frozen(v) for k, v in sample["masks"].items()},
    }


@pytest.mark.parametrize("transform", EVERY_TRANSFORM, ids=lambda t: type(t).__name__)
def test_every_transform_keeps_inputs_dtypes_and_mask_values(transform: Any) -> None:
    augment = Augment(A.Compose([transform]), seed=9)
    clone = pickle.loads(pickle.dumps(augment))
    for shape in [(1, H, W), (3, H, W), (1, 3, H, W), (3, 2, H, W)]:
        for dtype in (np.uint8, np.float32):
            sample = _read_only(make_sample(smooth_image(len(shape), shape, dtype)))
            before = copy.deepcopy(sample)
            out = augment(sample)
            assert outputs_equal(sample, before), "the input sample was modified"
            assert out["image"].dtype == dtype
            assert out["image"].shape[0] == shape[0] and out["image"].ndim == len(shape)
            if len(shape) == 4:
                assert out["image"].shape[1] == shape[1]
            spatial = out["image"].shape[1:]
            for masks in (*out["segmentations"].values(), *(m[None] for m in out["masks"].values())):
                assert masks.dtype == np.uint8 and masks.shape[1:] == spatial
                assert set(np.unique(masks)) <= {0, 1}
            assert outputs_equal(out, clone(sample)), "an unpickled copy gave another result"


def test_memory_mapped_read_only_inputs(tmp_path: Path) -> None:
    path = tmp_path / "volume.npy"
    np.save(path, smooth_image(2, (1, 3, H, W)))
    mapped = np.load(path, mmap_mode="r")
    assert not mapped.flags.writeable
    out = Augment(A.Compose([A.Rotate(limit=20, p=1), A.RandomBrightnessContrast(p=1)]))(make_sample(mapped))
    assert out["image"].shape == (1, 3, H, W)
    np.testing.assert_array_equal(np.load(path), smooth_image(2, (1, 3, H, W)))


# -- boxes ----------------------------------------------------------------------------------------------------

BOX_PARAMS = A.BboxParams(format="pascal_voc", label_fields=["labels"], min_visibility=0.3)


def box_sample() -> dict[str, Any]:
    return make_sample(
        smooth_image(5, (3, H, W)),
        boxes={
            "alice": np.array([[1, 2, 10, 20]], np.float32),
            "bob": np.array([[30, 5, 40, 30], [0, 30, 12, 47]], np.float32),
        },
        box_labels={"alice": np.array([1], np.int32), "bob": np.array([2, 3], np.int32)},
        box_frames={"alice": np.array([-1], np.int32), "bob": np.array([-1, -1], np.int32)},
    )


def test_boxes_follow_a_horizontal_flip_exactly() -> None:
    sample = box_sample()
    out = Augment(A.Compose([A.HorizontalFlip(p=1)], bbox_params=BOX_PARAMS))(sample)
    for author, boxes in sample["boxes"].items():
        flipped = np.stack([W - boxes[:, 2], boxes[:, 1], W - boxes[:, 0], boxes[:, 3]], axis=1)
        assert out["boxes"][author].dtype == np.float32
        np.testing.assert_allclose(out["boxes"][author], flipped, atol=1e-4)
        np.testing.assert_array_equal(out["box_labels"][author], sample["box_labels"][author])
    np.testing.assert_array_equal(out["image"], sample["image"][:, :, ::-1])


def test_dropped_boxes_drop_their_labels_and_frames() -> None:
    sample = box_sample()
    out = Augment(A.Compose([A.Crop(0, 0, 24, 24)], bbox_params=BOX_PARAMS))(sample)
    np.testing.assert_allclose(out["boxes"]["alice"], [[1, 2, 10, 20]])
    assert out["boxes"]["bob"].shape == (0, 4)  # one box outside, one mostly outside (visibility < 0.3)
    assert list(out["box_labels"]["alice"]) == [1] and len(out["box_labels"]["bob"]) == 0
    assert len(out["box_frames"]["bob"]) == 0 and list(out["box_frames"]["alice"]) == [-1]
    keep_second = Augment(A.Compose([A.Crop(0, 24, 40, 48)], bbox_params=BOX_PARAMS))(sample)
    np.testing.assert_allclose(keep_second["boxes"]["bob"], [[0, 6, 12, 23]])
    assert list(keep_second["box_labels"]["bob"]) == [3] and list(keep_second["box_labels"]["alice"]) == []


def test_boxes_without_bbox_params() -> None:
    sample = box_sample()
    out = Augment(A.Compose([A.RandomBrightnessContrast(p=1)]))(sample)  # no pixel moves: boxes stay
    assert out["boxes"] is sample["boxes"]
    with pytest.raises(ValueError, match=r"res-1 has boxes .*bbox_params"):
        Augment(A.Compose([A.HorizontalFlip(p=1)]))(sample)
    with pytest.raises(ValueError, match="pascal_voc"):
        Augment(A.Compose([A.HorizontalFlip()], bbox_params=A.BboxParams(format="coco")))


def test_boxes_of_a_volume_follow_every_frame() -> None:
    sample = make_sample(
        smooth_image(5, (1, 3, H, W)),
        boxes={"alice": np.array([[1, 2, 10, 20], [5, 5, 8, 9]], np.float32)},
        box_labels={"alice": np.array([4, 5], np.int32)},
        box_frames={"alice": np.array([0, 2], np.int32)},
    )
    out = Augment(A.Compose([A.HorizontalFlip(p=1)], bbox_params=BOX_PARAMS))(sample)
    np.testing.assert_allclose(out["boxes"]["alice"], [[30, 2, 39, 20], [32, 5, 35, 9]], atol=1e-4)
    assert list(out["box_frames"]["alice"]) == [0, 2] and list(out["box_labels"]["alice"]) == [4, 5]
    np.testing.assert_array_equal(out["image"], sample["image"][..., ::-1])


# -- outputs, callables, errors -------------------------------------------------------------------------------


def test_to_tensor_keeps_the_tensor_and_masks_stay_numpy() -> None:
    out = Augment(A.Compose([A.Resize(24, 28), ToTensorV2()]))(make_sample(smooth_image(1, (3, H, W))))
    assert isinstance(out["image"], torch.Tensor) and tuple(out["image"].shape) == (3, 24, 28)
    assert all(
        isinstance(m, np.ndarray) and m.shape == (2 if k == "alice" else 1, 24, 28)
        for k, m in out["segmentations"].items()
    )
    volume = Augment(A.Compose([A.Resize(24, 28, interpolation=NEAREST), A.ToTensor3D()]))(
        make_sample(smooth_image(1, (1, 3, H, W)))
    )
    assert isinstance(volume["image"], torch.Tensor) and tuple(volume["image"].shape) == (1, 3, 24, 28)
    assert volume["segmentations"]["alice"].shape == (2, 3, 24, 28)
    np.testing.assert_array_equal(all_masks(volume), expected_from_image(volume["image"].numpy()))
    # ToTensorV2 on a volume (the slice-wise path) gives (N,C,H,W): returned as (C,N,H,W).
    slices = Augment(A.Compose([A.Resize(24, 28, interpolation=NEAREST), ToTensorV2()]))(
        make_sample(smooth_image(1, (3, 2, H, W)))
    )
    assert isinstance(slices["image"], torch.Tensor) and tuple(slices["image"].shape) == (3, 2, 24, 28)
    np.testing.assert_array_equal(all_masks(slices), expected_from_image(slices["image"].numpy()))


def flip_columns(**data: Any) -> dict[str, Any]:
    """A plain callable with the albumentations keyword interface: image (H,W,C) or images (N,H,W,C)."""
    key = "image" if "image" in data else "images"
    out = {key: data[key][..., ::-1, :]}
    if "masks" in data:
        out["masks"] = data["masks"][..., ::-1]
    return out


@pytest.mark.parametrize("shape", [(3, H, W), (1, 4, H, W)])
def test_a_plain_callable_is_accepted(shape: tuple[int, ...]) -> None:
    sample = make_sample(smooth_image(1, shape))
    out = Augment(flip_columns)(sample)
    np.testing.assert_array_equal(out["image"], sample["image"][..., ::-1])
    np.testing.assert_array_equal(all_masks(out), all_masks(sample)[..., ::-1])
    assert pickle.loads(pickle.dumps(Augment(flip_columns))).transform is flip_columns


def test_applied_without_any_masks() -> None:
    sample = {"resource_id": "slice-only", "slice_index": 4, "image": smooth_image(1, (1, H, W))}
    out = Augment(A.Compose([A.HorizontalFlip(p=1)]))(sample)
    np.testing.assert_array_equal(out["image"], sample["image"][..., ::-1])
    assert "segmentations" not in out and "masks" not in out


def test_authors_without_instances_get_the_new_shape() -> None:
    sample = {
        "resource_id": "r",
        "image": smooth_image(1, (1, 2, H, W)),
        "segmentations": {"alice": np.zeros((0, 2, H, W), np.uint8)},
    }
    out = Augment(A.Compose([A.Resize(20, 24)]))(sample)
    assert out["segmentations"]["alice"].shape == (0, 2, 20, 24)


def test_mask_dtypes_are_kept() -> None:
    image = smooth_image(1, (1, H, W))
    semantic = np.stack([threshold_masks(image)[0], 1 - threshold_masks(image)[0]]).astype(np.float32)
    sample = {
        "resource_id": "r",
        "image": image,
        "segmentations": {"alice": semantic},
        "masks": {"m": threshold_masks(image)[1].astype(bool)},
    }
    out = Augment(A.Compose([A.Rotate(limit=(30, 30), p=1)]))(sample)
    assert out["segmentations"]["alice"].dtype == np.float32 and out["masks"]["m"].dtype == np.bool_
    assert set(np.unique(out["segmentations"]["alice"])) <= {0.0, 1.0}


def test_other_image_dtypes_come_back_float32() -> None:
    sample = {"resource_id": "ct", "image": (smooth_image(1, (1, H, W)).astype(np.int16) - 100)}
    out = Augment(A.Compose([A.HorizontalFlip(p=1)]))(sample)
    assert out["image"].dtype == np.float32
    np.testing.assert_array_equal(out["image"], sample["image"][..., ::-1].astype(np.float32))


@pytest.mark.parametrize(
    ("sample", "match"),
    [
        pytest.param({"image": np.zeros((1, 8, 8), np.uint8)}, "resource_id", id="no-resource-id"),
        pytest.param({"resource_id": "r9", "image": np.zeros((8, 8), np.uint8)}, "r9", id="2d-array"),
        pytest.param({"resource_id": "r9"}, "r9", id="no-image"),
        pytest.param(
            {"resource_id": "r9", "image": np.zeros((1, 8, 8), np.uint8), "masks": {"m": np.zeros((8, 9), np.uint8)}},
            r"masks\['m'\] of resource r9 has shape \(8, 9\)",
            id="mask-shape",
        ),
        pytest.param(
            {"resource_id": "r9", "image": np.zeros((1, 8, 8), np.uint8), "segmentations": torch.zeros(2, 8, 8)},
            "r9",
            id="merged-tensor",
        ),
    ],
)
def test_bad_samples_raise_value_error(sample: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Augment(A.Compose([A.HorizontalFlip()]))(sample)


def test_a_transform_rejecting_the_input_names_the_resource() -> None:
    two_channels = {"resource_id": "rgb-only", "image": smooth_image(1, (2, H, W))}
    with pytest.raises(ValueError, match="rgb-only"):
        Augment(A.Compose([A.HueSaturationValue(p=1)]))(two_channels)


def test_constructor_checks() -> None:
    with pytest.raises(ValueError, match="seed"):
        Augment(A.HorizontalFlip(), seed=-1)
    with pytest.raises(TypeError, match="callable"):
        Augment("not a transform")  # type: ignore[arg-type]
    bare = A.HorizontalFlip(p=1)
    Augment(bare)(make_sample(smooth_image(1, (1, H, W))))  # a bare transform is wrapped in a private Compose
    assert not hasattr(bare, "processors") or bare.processors == {}


def test_map_style_facade_augmentation_changes_with_set_epoch(
    sample_root: Any, tmp_path: Any, monkeypatch: Any
) -> None:
    import albumentations as A

    from datamint_compat.dataset import ImageDataset

    monkeypatch.setenv("DATAMINT_PIPES_CACHE", str(tmp_path / "cache"))
    dataset = ImageDataset(
        project=str(sample_root / "sample-images"),
        alb_transform=A.Compose([A.Rotate(limit=60, p=1.0)]),
        return_segmentations=False,
    )
    first = np.array(dataset[1]["image"])
    np.testing.assert_array_equal(first, np.array(dataset[1]["image"]))  # reproducible within an epoch
    dataset.set_epoch(1)
    second = np.array(dataset[1]["image"])
    assert not np.array_equal(first, second)
    dataset.set_epoch(0)
    np.testing.assert_array_equal(first, np.array(dataset[1]["image"]))
