"""Instance -> semantic conversion, merge strategies, the semantic stage and the option checks.

Exact arrays on small hand-made cases, Hypothesis properties over random ones, and the benchmark's
``--quick`` run (keys only, no timing).
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from datamint_pipes.errors import AnnotationError
from datamint_pipes.stages.annotations.merge import (
    MERGE_STRATEGIES,
    SemanticSegmentations,
    background_only,
    instance_to_semantic,
    merge_semantic,
    validate_segmentation_options,
)

REPO = Path(__file__).resolve().parents[1]


def grid(rows: list[str]) -> np.ndarray[Any, Any]:
    """A 0/1 uint8 (H,W) mask from rows like ``"1100"``."""
    return np.array([[int(c) for c in row] for row in rows], dtype=np.uint8)


# -- instance -> semantic -------------------------------------------------------------------------------------


def test_instance_to_semantic_ors_instances_of_a_label_and_background_is_the_rest() -> None:
    masks = np.stack([grid(["1100", "0000"]), grid(["0110", "0000"]), grid(["0000", "0001"])])
    codes = np.array([2, 1, 2], np.int32)
    semantic = instance_to_semantic(masks, codes, 3)
    assert semantic.dtype == np.float32 and semantic.shape == (4, 2, 4)
    expected = np.stack(
        [
            grid(["0001", "1110"]),  # background: no label
            grid(["0110", "0000"]),  # label 1
            grid(["1100", "0001"]),  # label 2: OR of its two instances
            grid(["0000", "0000"]),  # label 3: absent
        ]
    ).astype(np.float32)
    np.testing.assert_array_equal(semantic, expected)
    assert masks.sum() == 5  # input untouched


def test_instance_to_semantic_on_volumes_nonbinary_and_empty_inputs() -> None:
    masks = np.zeros((2, 3, 2, 2), np.uint8)
    masks[0, 0, 0, 0] = 255  # nonzero counts as foreground, whatever its value
    masks[1, 2, 1, 1] = 1
    semantic = instance_to_semantic(masks, [1, 1], 1)
    assert semantic.shape == (2, 3, 2, 2)
    assert semantic[1].sum() == 2 and semantic[1, 0, 0, 0] == 1 and semantic[1, 2, 1, 1] == 1
    np.testing.assert_array_equal(semantic[0], 1 - semantic[1])
    empty = instance_to_semantic(np.zeros((0, 3, 2, 2), np.uint8), np.zeros(0, np.int32), 2)
    np.testing.assert_array_equal(empty, np.concatenate([np.ones((1, 3, 2, 2)), np.zeros((2, 3, 2, 2))]))
    floats = instance_to_semantic(np.array([[[0.0, 0.4]], [[0.7, 0.0]]]), [1, 1], 1, dtype=bool)
    assert floats.dtype == bool and floats.tolist() == [[[False, False]], [[True, True]]]


def test_instance_to_semantic_accepts_tensors() -> None:
    masks = torch.tensor([[[1, 0], [0, 0]], [[0, 0], [0, 1]]], dtype=torch.uint8)
    semantic = instance_to_semantic(masks, torch.tensor([1, 2]), 2)
    assert isinstance(semantic, torch.Tensor) and semantic.dtype == torch.float32
    assert semantic.tolist() == [[[0, 1], [1, 0]], [[1, 0], [0, 0]], [[0, 0], [0, 1]]]


@pytest.mark.parametrize(
    ("codes", "num_labels", "match"),
    [([0, 1], 2, r"outside 1\.\.2"), ([1, 3], 2, r"\[3\] outside"), ([1], 2, "2 instance masks but 1 codes")],
)
def test_instance_to_semantic_rejects_bad_codes(codes: list[int], num_labels: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        instance_to_semantic(np.zeros((2, 2, 2), np.uint8), np.array(codes), num_labels)


# -- merging --------------------------------------------------------------------------------------------------

# Three annotators, one label, a 1x6 strip. Channel 0 is each one's background.
A = np.stack([grid(["001100"]), grid(["110011"])]).astype(np.float32)  # label on pixels 0,1,4,5
B = np.stack([grid(["000110"]), grid(["111001"])]).astype(np.float32)  # label on 0,1,2,5
C = np.stack([grid(["011111"]), grid(["100000"])]).astype(np.float32)  # label on 0


@pytest.mark.parametrize(
    ("strategy", "background", "label"),
    [
        ("union", "011111", "111011"),
        ("intersection", "000100", "100000"),
        ("mode", "001110", "110001"),  # at least 2 of 3
    ],
)
def test_three_annotator_merges(strategy: str, background: str, label: str) -> None:
    merged = merge_semantic({"a": A, "b": B, "c": C}, strategy)  # type: ignore[arg-type]
    assert isinstance(merged, torch.Tensor) and merged.dtype == torch.float32
    np.testing.assert_array_equal(merged.numpy(), np.stack([grid([background]), grid([label])]))


def test_two_annotators_mode_equals_union_and_order_does_not_matter() -> None:
    union = merge_semantic({"a": A, "b": B}, "union")
    assert torch.equal(merge_semantic({"b": B, "a": A}, "mode"), union)
    assert torch.equal(merge_semantic({"a": torch.from_numpy(A), "b": B}, "intersection"), torch.from_numpy(A * B))


def test_merging_nothing_is_background_only_and_needs_a_shape() -> None:
    merged = merge_semantic({}, "union", num_labels=2, spatial_shape=(3, 2, 2))
    assert merged.shape == (3, 3, 2, 2) and merged.dtype == torch.float32
    assert torch.equal(merged, background_only(2, (3, 2, 2)))
    assert merged[0].eq(1).all() and merged[1:].eq(0).all()
    with pytest.raises(ValueError, match="num_labels and spatial_shape"):
        merge_semantic({}, "mode")


def test_merge_rejects_unknown_strategy_and_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="strategy='majority' must be one of"):
        merge_semantic({"a": A}, "majority")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="shapes"):
        merge_semantic({"a": A, "b": A[:, :, :3]}, "union")


# -- the stage ------------------------------------------------------------------------------------------------


def _instance_sample() -> dict[str, Any]:
    """Two frames of 1x3: alice has two label-1 instances and one label-2, bob one label-2, carol nothing."""
    alice = np.zeros((3, 2, 1, 3), np.uint8)
    alice[0, 0, 0, 0] = alice[1, 1, 0, 0] = 1
    alice[2, 0, 0, :2] = 1
    bob = np.zeros((1, 2, 1, 3), np.uint8)
    bob[0, 0, 0, 1:] = 1
    return {
        "resource_id": "r1",
        "image": np.zeros((1, 2, 1, 3), np.uint8),
        "segmentations": {"alice": alice, "bob": bob, "carol": np.zeros((0, 2, 1, 3), np.uint8)},
        "seg_labels": {
            "alice": np.array([1, 1, 2], np.int32),
            "bob": np.array([2], np.int32),
            "carol": np.zeros(0, np.int32),
        },
    }


def test_stage_without_merge_keeps_authors_and_seg_labels() -> None:
    sample = _instance_sample()
    out = SemanticSegmentations(num_labels=2)(sample)  # type: ignore[arg-type]
    assert out["seg_labels"] is sample["seg_labels"]
    assert list(out["segmentations"]) == ["alice", "bob", "carol"]
    alice = out["segmentations"]["alice"]
    assert isinstance(alice, np.ndarray) and alice.dtype == np.float32 and alice.shape == (3, 2, 1, 3)
    np.testing.assert_array_equal(alice[:, 0, 0], [[0, 0, 1], [1, 0, 0], [1, 1, 0]])  # frame 0: bg, l1, l2
    np.testing.assert_array_equal(alice[:, 1, 0], [[0, 1, 1], [1, 0, 0], [0, 0, 0]])
    np.testing.assert_array_equal(out["segmentations"]["carol"][0], np.ones((2, 1, 3)))  # empty author: background
    assert sample["segmentations"]["alice"].dtype == np.uint8  # input untouched


@pytest.mark.parametrize(
    ("strategy", "frame0"),
    [
        # frame 0 per author (bg, l1, l2): alice [[0,0,1],[1,0,0],[1,1,0]], bob [[1,0,0],[0,0,0],[0,1,1]],
        # carol all background [[1,1,1],[0,0,0],[0,0,0]].
        ("union", [[1, 1, 1], [1, 0, 0], [1, 1, 1]]),
        ("intersection", [[0, 0, 0], [0, 0, 0], [0, 0, 0]]),
        ("mode", [[1, 0, 1], [0, 0, 0], [0, 1, 0]]),  # at least 2 of 3
    ],
)
def test_stage_with_merge_gives_one_tensor_and_no_seg_labels(strategy: str, frame0: list[list[int]]) -> None:
    out = SemanticSegmentations(num_labels=2, merge_strategy=strategy)(_instance_sample())  # type: ignore[arg-type]
    assert "seg_labels" not in out
    merged = out["segmentations"]
    assert isinstance(merged, torch.Tensor) and merged.dtype == torch.float32 and merged.shape == (3, 2, 1, 3)
    assert merged[:, 0, 0].tolist() == frame0
    per_author = SemanticSegmentations(num_labels=2)(_instance_sample())["segmentations"]  # type: ignore[arg-type]
    assert torch.equal(merged, merge_semantic(per_author, strategy))  # type: ignore[arg-type]


def test_stage_with_merge_and_no_segmentation_is_background_only() -> None:
    sample = {"resource_id": "r", "image": np.zeros((3, 4, 5, 6)), "segmentations": {}, "seg_labels": {}}
    out = SemanticSegmentations(num_labels=3, merge_strategy="mode")(sample)  # type: ignore[arg-type]
    assert torch.equal(out["segmentations"], background_only(3, (4, 5, 6)))
    assert "seg_labels" not in out
    bare = SemanticSegmentations(num_labels=1, merge_strategy="union")({"image": np.zeros((1, 2, 2))})  # type: ignore[typeddict-item]
    assert bare["segmentations"].shape == (2, 2, 2)
    assert SemanticSegmentations(num_labels=1)({"image": np.zeros((1, 2, 2))})["segmentations"] == {}  # type: ignore[typeddict-item]


def test_stage_errors_name_the_resource_and_stage_pickles() -> None:
    sample = _instance_sample()
    with pytest.raises(AnnotationError, match=r"outside 1\.\.1.*resource r1"):
        SemanticSegmentations(num_labels=1)(sample)  # type: ignore[arg-type]
    with pytest.raises(AnnotationError, match="different authors"):
        SemanticSegmentations(num_labels=2)({**sample, "seg_labels": {"alice": sample["seg_labels"]["alice"]}})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="num_labels=-1"):
        SemanticSegmentations(num_labels=-1)
    with pytest.raises(ValueError, match="must be one of"):
        SemanticSegmentations(num_labels=1, merge_strategy="vote")  # type: ignore[arg-type]
    stage = pickle.loads(pickle.dumps(SemanticSegmentations(num_labels=2, merge_strategy="mode")))
    assert stage == SemanticSegmentations(num_labels=2, merge_strategy="mode")


@pytest.mark.parametrize(
    ("segmentations", "semantic", "strategy", "match"),
    [
        (False, True, None, "needs return_segmentations=True"),
        (True, False, "union", "needs return_as_semantic_segmentation=True"),
        (False, False, "mode", "needs return_as_semantic_segmentation=True"),
        (True, True, "majority", "must be one of"),
    ],
)
def test_option_validation(segmentations: bool, semantic: bool, strategy: str | None, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        validate_segmentation_options(
            return_segmentations=segmentations,
            return_as_semantic_segmentation=semantic,
            semantic_seg_merge_strategy=strategy,
        )


@pytest.mark.parametrize("strategy", [None, *MERGE_STRATEGIES])
def test_valid_options_pass(strategy: str | None) -> None:
    validate_segmentation_options(
        return_segmentations=True, return_as_semantic_segmentation=True, semantic_seg_merge_strategy=strategy
    )
    validate_segmentation_options(
        return_segmentations=False, return_as_semantic_segmentation=False, semantic_seg_merge_strategy=None
    )


# -- properties -----------------------------------------------------------------------------------------------


@st.composite
def instances(draw: st.DrawFn) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any], int]:
    """(masks uint8 (I,[N,]H,W) 0/1, codes int32 (I,), L)."""
    num_labels = draw(st.integers(1, 4))
    count = draw(st.integers(0, 6))
    spatial = draw(st.sampled_from([(3, 4), (2, 3, 4)]))
    masks = draw(hnp.arrays(np.uint8, (count, *spatial), elements=st.integers(0, 1)))
    codes = draw(hnp.arrays(np.int32, (count,), elements=st.integers(1, num_labels)))
    return masks, codes, num_labels


@settings(max_examples=100, deadline=None)
@given(instances())
def test_semantic_channel_k_is_or_of_label_k_and_background_is_not_any(
    case: tuple[np.ndarray[Any, Any], np.ndarray[Any, Any], int],
) -> None:
    masks, codes, num_labels = case
    semantic = instance_to_semantic(masks, codes, num_labels)
    assert semantic.shape == (num_labels + 1, *masks.shape[1:]) and semantic.dtype == np.float32
    for k in range(1, num_labels + 1):
        expected = masks[codes == k].any(axis=0) if (codes == k).any() else np.zeros(masks.shape[1:], bool)
        np.testing.assert_array_equal(semantic[k], expected)
    np.testing.assert_array_equal(semantic[0], ~semantic[1:].astype(bool).any(axis=0))
    order = np.random.default_rng(len(codes)).permutation(len(codes))
    np.testing.assert_array_equal(instance_to_semantic(masks[order], codes[order], num_labels), semantic)


@st.composite
def author_semantics(draw: st.DrawFn) -> dict[str, np.ndarray[Any, Any]]:
    """1..5 authors' float32 0/1 semantic arrays of one shape."""
    shape = draw(st.sampled_from([(2, 3, 4), (3, 2, 2, 3)]))
    authors = draw(st.integers(1, 5))
    return {f"a{i}": draw(hnp.arrays(np.float32, shape, elements=st.sampled_from([0.0, 1.0]))) for i in range(authors)}


@settings(max_examples=100, deadline=None)
@given(author_semantics())
def test_union_contains_mode_contains_intersection(semantic: dict[str, np.ndarray[Any, Any]]) -> None:
    union, mode, intersection = (merge_semantic(semantic, s).numpy() for s in ("union", "mode", "intersection"))
    assert (union >= mode).all() and (mode >= intersection).all()
    stacked = np.stack(list(semantic.values()))
    np.testing.assert_array_equal(union, stacked.max(axis=0))
    np.testing.assert_array_equal(intersection, stacked.min(axis=0))
    np.testing.assert_array_equal(mode, (2 * stacked.sum(axis=0) >= len(semantic)).astype(np.float32))
    reversed_order = dict(reversed(list(semantic.items())))
    assert np.array_equal(merge_semantic(reversed_order, "mode").numpy(), mode)


@settings(max_examples=50, deadline=None)
@given(author_semantics(), st.sampled_from(MERGE_STRATEGIES))
def test_merging_one_author_is_the_identity(semantic: dict[str, np.ndarray[Any, Any]], strategy: str) -> None:
    only = next(iter(semantic.values()))
    np.testing.assert_array_equal(merge_semantic({"x": only}, strategy).numpy(), only)  # type: ignore[arg-type]


# -- benchmark smoke test -------------------------------------------------------------------------------------


def test_benchmark_quick_run_writes_its_json(tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "annotations.py"), "--quick", "--results-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert completed.returncode == 0, completed.stderr
    result = json.loads((tmp_path / "annotations.json").read_text())
    assert {"benchmark", "quick", "repeats", "seed", "machine", "comparisons", "measurements"} <= result.keys()
    assert result["benchmark"] == "annotations" and result["quick"] is True
    measured = {"instance_to_semantic", "merge_union", "merge_intersection", "merge_mode", "stage_semantic_merge_mode"}
    measurements = result["measurements"]
    assert set(measurements["ms_per_sample"]) == measured
    assert measurements["matches_reference"] == dict.fromkeys(measured, True)
    assert measurements["all_match_reference"] is True
    assert {"ours", "naive loop", "logical_or.at", "one-hot matmul"} <= measurements["ms_per_sample"][
        "instance_to_semantic"
    ].keys()
    assert {row["measure"] for row in result["comparisons"]} == measured
    for row in result["comparisons"]:
        assert {"measure", "unit", "ours", "baseline", "baseline_value", "ratio"} <= row.keys()
    assert "instance_to_semantic" in completed.stdout
