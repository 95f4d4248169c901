"""Semantic conversion and annotator merges: ours against naive implementations, side by side in one run.

Workload (generated from ``--seed``): 3 annotators x 8 labels on a 100x512x512 volume; each annotator has one
instance per label plus two extra instances of random labels (10 instance masks, uint8 (10,100,512,512)), drawn
as boxes jittered around a shared "true" box so that the annotators overlap but disagree at the edges.
``--quick``: an 8x64x64 volume, one repetition.

Measures, in ms per sample (all three annotators), each against a reference written here:

* ``instance_to_semantic`` -- ours (one pass per label) vs a per-instance Python loop; also, for information, the
  two fully vectorised forms that were considered (``np.logical_or.at``, a one-hot matmul);
* ``merge_union`` / ``merge_intersection`` / ``merge_mode`` -- :func:`merge_semantic` on the per-author float32
  channels vs ``torch.stack`` of all authors + a sum;
* ``stage_semantic_merge_mode`` -- the :class:`SemanticSegmentations` stage from instance masks straight to the
  merged tensor vs the two references chained.

Run: ``.venv/bin/python benchmarks/annotations.py [--quick]``; prints a table, writes
``benchmarks/results/annotations.json``. Every candidate's output is checked equal to its reference's.
"""

from __future__ import annotations

import functools
import statistics
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import Comparison, arguments, print_table, time_interleaved, write_results

from datamint_pipes.stages.annotations.merge import (
    SemanticSegmentations,
    instance_to_semantic,
    merge_semantic,
)

ANNOTATORS = ("annotator-a", "annotator-b", "annotator-c")
NUM_LABELS = 8
EXTRA_INSTANCES = 2
STRATEGIES = ("union", "intersection", "mode")

Instances = dict[str, tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]]


# -- workload -------------------------------------------------------------------------------------------------


def make_instances(shape: tuple[int, int, int], seed: int) -> Instances:
    """``{author: (uint8 (I,N,H,W) 0/1 masks, int32 (I,) codes)}`` of jittered boxes, reproducible from ``seed``."""
    rng = np.random.default_rng(seed)
    codes = np.concatenate([np.arange(1, NUM_LABELS + 1), rng.integers(1, NUM_LABELS + 1, EXTRA_INSTANCES)])
    truth = []
    for _ in codes:
        low = [int(rng.integers(0, n // 2)) for n in shape]
        high = [lo + int(rng.integers(max(1, n // 8), n // 2 + 1)) for lo, n in zip(low, shape, strict=True)]
        truth.append((low, high))
    out: Instances = {}
    for author in ANNOTATORS:
        masks = np.zeros((len(codes), *shape), np.uint8)
        for index, (low, high) in enumerate(truth):
            jitter = [max(1, n // 32) for n in shape]
            lo = [max(0, v + int(rng.integers(-j, j + 1))) for v, j in zip(low, jitter, strict=True)]
            hi = [min(n, v + int(rng.integers(-j, j + 1))) for v, j, n in zip(high, jitter, shape, strict=True)]
            masks[index, lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = 1
        order = rng.permutation(len(codes))  # instances of one label are not adjacent
        out[author] = (masks[order], codes[order].astype(np.int32))
    return out


# -- references -----------------------------------------------------------------------------------------------


def naive_instance_to_semantic(
    masks: np.ndarray[Any, Any], codes: np.ndarray[Any, Any], num_labels: int
) -> np.ndarray[Any, Any]:
    """Per-instance Python loop: OR each instance into its label's float32 channel, then background = none."""
    out = np.zeros((num_labels + 1, *masks.shape[1:]), np.float32)
    for index in range(len(codes)):
        code = int(codes[index])
        out[code] = np.logical_or(out[code], masks[index])
    out[0] = np.logical_not(out[1:].any(axis=0))
    return out


def naive_merge(semantic: Mapping[str, np.ndarray[Any, Any]], strategy: str) -> torch.Tensor:
    """Stack every author's channels into one tensor and sum over authors."""
    stacked = torch.stack([torch.from_numpy(array) for array in semantic.values()])
    votes = stacked.sum(dim=0)
    count = len(semantic)
    if strategy == "union":
        return (votes > 0).float()
    if strategy == "intersection":
        return (votes == count).float()
    return (votes >= count / 2).float()


def ufunc_at_instance_to_semantic(
    masks: np.ndarray[Any, Any], codes: np.ndarray[Any, Any], num_labels: int
) -> np.ndarray[Any, Any]:
    """Fully vectorised alternative: ``np.logical_or.at`` over the codes."""
    on = np.zeros((num_labels + 1, *masks.shape[1:]), bool)
    np.logical_or.at(on, codes, masks.astype(bool))
    on[0] = ~on[1:].any(axis=0)
    return on.astype(np.float32)


def matmul_instance_to_semantic(
    masks: np.ndarray[Any, Any], codes: np.ndarray[Any, Any], num_labels: int
) -> np.ndarray[Any, Any]:
    """Fully vectorised alternative: a one-hot (L+1, I) matrix times the flattened masks."""
    one_hot = np.zeros((num_labels + 1, len(codes)), np.float32)
    one_hot[codes, np.arange(len(codes))] = 1
    votes = one_hot @ masks.reshape(len(codes), -1).astype(np.float32)
    on = (votes > 0).reshape(num_labels + 1, *masks.shape[1:])
    on[0] = ~on[1:].any(axis=0)
    return on.astype(np.float32)


# -- measuring ------------------------------------------------------------------------------------------------


def per_author(
    convert: Callable[[np.ndarray[Any, Any], np.ndarray[Any, Any], int], Any], instances: Instances
) -> Callable[[], dict[str, Any]]:
    return lambda: {author: convert(masks, codes, NUM_LABELS) for author, (masks, codes) in instances.items()}


def median_ms(seconds: list[float]) -> float:
    return 1000 * statistics.median(seconds)


def same(left: Mapping[str, Any] | Any, right: Mapping[str, Any] | Any) -> bool:
    if isinstance(left, Mapping):
        return left.keys() == right.keys() and all(same(left[k], right[k]) for k in left)
    return bool(np.array_equal(np.asarray(left), np.asarray(right)))


def compare(
    name: str, candidates: Mapping[str, Callable[[], Any]], reference: str, repeats: int
) -> tuple[dict[str, float], bool]:
    """ms per sample of every candidate (medians), and whether all outputs equal the reference's."""
    outputs = {label: run() for label, run in candidates.items()}  # warm-up, and the outputs to check
    matches = all(same(output, outputs[reference]) for output in outputs.values())
    del outputs
    seconds = time_interleaved(candidates, repeats)
    ms = {label: median_ms(values) for label, values in seconds.items()}
    print(f"  {name}: " + ", ".join(f"{label} {value:.1f} ms" for label, value in ms.items()), flush=True)
    return ms, matches


def main(argv: list[str] | None = None) -> int:
    args = arguments("Semantic conversion and annotator merges against naive implementations", argv)
    shape = (8, 64, 64) if args.quick else (100, 512, 512)
    instances = make_instances(shape, args.seed)
    instance_count = len(next(iter(instances.values()))[1])
    print(f"workload: {len(ANNOTATORS)} annotators x {instance_count} instances ({NUM_LABELS} labels) x {shape}")

    measurements: dict[str, Any] = {
        "workload": {
            "annotators": len(ANNOTATORS),
            "labels": NUM_LABELS,
            "instances_per_annotator": instance_count,
            "volume_shape": list(shape),
        },
        "ms_per_sample": {},
        "matches_reference": {},
    }
    rows: list[Comparison] = []

    def record(measure: str, ms: Mapping[str, float], matches: bool, baseline: str, baseline_label: str) -> None:
        measurements["ms_per_sample"][measure] = dict(ms)
        measurements["matches_reference"][measure] = matches
        ours, theirs = ms["ours"], ms[baseline_label]
        rows.append(
            Comparison(
                target="-",
                measure=measure,
                unit="samples/s",
                ours=1000 / ours,
                baseline=baseline,
                baseline_value=1000 / theirs,
                note=f"{ours:,.1f} vs {theirs:,.1f} ms/sample",
            )
        )

    # instance -> semantic, with the vectorised alternatives for information.
    ms, matches = compare(
        "instance_to_semantic",
        {
            "ours": per_author(instance_to_semantic, instances),
            "naive loop": per_author(naive_instance_to_semantic, instances),
            "logical_or.at": per_author(ufunc_at_instance_to_semantic, instances),
            "one-hot matmul": per_author(matmul_instance_to_semantic, instances),
        },
        "naive loop",
        args.repeats,
    )
    record("instance_to_semantic", ms, matches, "per-instance Python loop", "naive loop")
    for alternative in ("logical_or.at", "one-hot matmul"):
        rows.append(
            Comparison(
                target="-",
                measure="instance_to_semantic",
                unit="samples/s",
                ours=1000 / ms["ours"],
                baseline=alternative,
                baseline_value=1000 / ms[alternative],
                note=f"{ms['ours']:,.1f} vs {ms[alternative]:,.1f} ms/sample",
            )
        )

    # merges of the per-author float32 channels.
    semantic = per_author(instance_to_semantic, instances)()
    for strategy in STRATEGIES:
        ms, matches = compare(
            f"merge_{strategy}",
            {
                "ours": functools.partial(merge_semantic, semantic, strategy),
                "stack+sum": functools.partial(naive_merge, semantic, strategy),
            },
            "stack+sum",
            args.repeats,
        )
        record(f"merge_{strategy}", ms, matches, "torch.stack + sum", "stack+sum")
    del semantic

    # the stage, instance masks -> merged tensor, against the two references chained.
    sample: Any = {
        "resource_id": "benchmark",
        "image": np.zeros((1, *shape), np.uint8),
        "segmentations": {author: masks for author, (masks, _) in instances.items()},
        "seg_labels": {author: codes for author, (_, codes) in instances.items()},
    }
    stage = SemanticSegmentations(NUM_LABELS, merge_strategy="mode")
    ms, matches = compare(
        "stage_semantic_merge_mode",
        {
            "ours": lambda: stage(sample)["segmentations"],
            "naive chain": lambda: naive_merge(per_author(naive_instance_to_semantic, instances)(), "mode"),
        },
        "naive chain",
        args.repeats,
    )
    record("stage_semantic_merge_mode", ms, matches, "naive loop + stack + sum", "naive chain")

    measurements["all_match_reference"] = all(measurements["matches_reference"].values())
    print_table("Annotations: instance -> semantic and merges (ratio = speed-up over the baseline)", rows)
    path = write_results("annotations", args, rows, measurements)
    print(f"\nwrote {path}")
    if not measurements["all_match_reference"]:
        print("ERROR: an output differs from its reference", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
