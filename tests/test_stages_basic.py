"""Slicing, resizing and collating stages on small synthetic arrays."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from datamint_pipes.stages.augment import Resize
from datamint_pipes.stages.collate import Collate
from datamint_pipes.stages.expand import SliceVolume


@settings(max_examples=60, deadline=None)
@given(
    shape=st.tuples(*(st.integers(1, 5) for _ in range(4))),
    axis=st.sampled_from(["axial", "coronal", "sagittal", 0, 1, 2]),
)
def test_slices_equal_the_index_of_the_full_volume(shape: tuple[int, int, int, int], axis: str | int) -> None:
    volume = np.arange(np.prod(shape), dtype=np.int16).reshape(shape)
    mask = (volume[0] % 3 == 0).astype(np.uint8)
    sample = {"resource_id": "r", "image": volume, "masks": {"a1": mask}}
    slices = SliceVolume(axis)(sample)  # type: ignore[arg-type]
    position = {"axial": 0, "coronal": 1, "sagittal": 2}.get(axis, axis)  # type: ignore[call-overload]
    assert len(slices) == shape[position + 1]
    for k, item in enumerate(slices):
        if position == 0:
            expected, expected_mask = volume[:, k], mask[k]
        elif position == 1:
            expected, expected_mask = volume[:, :, k], mask[:, k]
        else:
            expected, expected_mask = volume[:, :, :, k], mask[:, :, k]
        np.testing.assert_array_equal(item["image"], expected)
        np.testing.assert_array_equal(item["masks"]["a1"], expected_mask)
        assert item["slice_index"] == k
        assert item["resource_id"] == "r"
    assert sample["image"] is volume  # the input sample is not modified


def test_slice_axis_validation_and_2d_passthrough() -> None:
    with pytest.raises(ValueError, match="slice_axis"):
        SliceVolume("transverse")
    with pytest.raises(ValueError, match="slice_axis"):
        SliceVolume(3)
    image = np.zeros((1, 4, 5), np.uint8)
    assert SliceVolume()({"image": image})[0]["image"] is image  # type: ignore[typeddict-item]


def test_resize_keeps_masks_binary_and_aligned() -> None:
    image = np.zeros((1, 8, 8), np.float32)
    image[0, 2:6, 2:6] = 100.0
    mask = (image[0] > 0).astype(np.uint8)
    out = Resize(16, 16)({"image": image, "masks": {"m": mask}})  # type: ignore[typeddict-item]
    assert out["image"].shape == (1, 16, 16)
    assert out["masks"]["m"].shape == (16, 16)
    assert set(np.unique(out["masks"]["m"])) <= {0, 1}
    # Nearest-neighbour doubling: every 2x2 block repeats the source pixel.
    np.testing.assert_array_equal(out["masks"]["m"], np.kron(mask, np.ones((2, 2), np.uint8)))
    np.testing.assert_array_equal(out["masks"]["m"] > 0, out["image"][0] > 50)
    with pytest.raises(ValueError):
        Resize(0, 4)


def test_collate_stacks_lists_and_fills_missing_keys() -> None:
    samples = [
        {"image": np.full((1, 2, 2), i, np.uint8), "resource_id": f"r{i}", "slice_index": i, "seg": {"a": i}}
        for i in range(3)
    ]
    del samples[1]["seg"]
    batch = Collate()(samples)  # type: ignore[arg-type]
    assert isinstance(batch["image"], torch.Tensor)
    assert batch["image"].shape == (3, 1, 2, 2)
    assert batch["image"][:, 0, 0, 0].tolist() == [0, 1, 2]
    assert batch["resource_id"] == ["r0", "r1", "r2"]
    assert batch["slice_index"].tolist() == [0, 1, 2]
    assert batch["seg"] == [{"a": 0}, None, {"a": 2}]
    assert pickle.loads(pickle.dumps(Collate()))(samples)["image"].shape == (3, 1, 2, 2)


def test_collate_shape_mismatch_advises_a_resize() -> None:
    samples = [{"image": np.zeros((1, 2, 2))}, {"image": np.zeros((1, 3, 2))}]
    with pytest.raises(ValueError, match="resize"):
        Collate()(samples)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="empty"):
        Collate()([])


def test_collate_promotes_dtypes_like_np_stack_and_copies_read_only_maps(tmp_path: Path) -> None:
    stored = np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4)
    np.save(tmp_path / "v.npy", stored)
    mapped = np.load(tmp_path / "v.npy", mmap_mode="r")
    values = [mapped[0], np.ones((3, 4), np.uint8), np.full((3, 4), 2.5, np.float32)]
    batch = Collate()([{"x": value} for value in values])  # type: ignore[misc]
    expected = np.stack(values)
    assert batch["x"].dtype == torch.from_numpy(expected).dtype == torch.float32
    np.testing.assert_array_equal(batch["x"].numpy(), expected)
    batch["x"][0, 0, 0] = 99  # writable, and not the cache's memory
    assert mapped[0, 0, 0] == 0


def test_large_batches_held_at_once_never_share_memory() -> None:
    """Batches above the recycling threshold: each one held keeps its own contents while later ones are made."""
    frames = [np.full((3, 256, 256), value, np.uint8) for value in range(32)]
    held = []
    for step in range(4):
        batch = Collate()([{"image": frame + step} for frame in frames])  # type: ignore[misc]
        if step % 2 == 0:
            held.append((step, batch))  # kept; the odd steps' batches are dropped and their memory recycled
        del batch
    for step, batch in held:
        expected = np.stack([frame + step for frame in frames])
        np.testing.assert_array_equal(batch["image"].numpy(), expected)
