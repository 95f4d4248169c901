"""Splits: the reference local partition, whole-patient splits, hash-stable splits, project history."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from datamint_pipes.model import Resource, SplitAssignment
from datamint_pipes.splits import hash_split, local_split, patient_split, project_split, validate_ratios

ratio_sets = st.lists(st.integers(1, 20), min_size=2, max_size=4).map(
    lambda weights: {f"part{i}": w / sum(weights) for i, w in enumerate(weights)}
)


@settings(max_examples=200, deadline=None)
@given(n=st.integers(0, 300), ratios=ratio_sets, seed=st.one_of(st.none(), st.integers(0, 2**32)))
def test_local_split_is_the_reference_partition(n: int, ratios: dict[str, float], seed: int | None) -> None:
    shuffled = list(range(n))
    random.Random(seed).shuffle(shuffled)
    expected, start = {}, 0
    names = list(ratios)
    for name in names[:-1]:
        expected[name] = shuffled[start : start + round(ratios[name] * n)]
        start += round(ratios[name] * n)
    expected[names[-1]] = shuffled[start:]
    if seed is not None:
        assert local_split(n, ratios, seed) == expected
    parts = local_split(n, ratios, seed)
    assert sorted(i for part in parts.values() for i in part) == list(range(n))
    assert list(parts) == names


def test_local_split_known_values() -> None:
    # random.Random(42).shuffle(list(range(10))) == [7, 3, 2, 8, 5, 6, 9, 4, 0, 1]
    assert local_split(10, {"train": 0.7, "val": 0.2, "test": 0.1}, seed=42) == {
        "train": [7, 3, 2, 8, 5, 6, 9],
        "val": [4, 0],
        "test": [1],
    }


@pytest.mark.parametrize(
    ("ratios", "message"),
    [({"train": 1.0}, "at least two"), ({"a": 0.5, "b": 0.6}, "sum to 1"), ({"a": 1.0, "b": 0.0}, "positive")],
)
def test_bad_ratios(ratios: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        validate_ratios(ratios)


def _resources(patients: list[str | None]) -> list[Resource]:
    return [Resource(id=f"r{i}", filename=f"f{i}.png", patient_id=p) for i, p in enumerate(patients)]


@settings(max_examples=100, deadline=None)
@given(patients=st.lists(st.sampled_from(["p1", "p2", "p3", "p4", "p5", None]), max_size=40), seed=st.integers(0, 99))
def test_patient_split_never_leaks_a_patient(patients: list[str | None], seed: int) -> None:
    resources = _resources(patients)
    parts = patient_split(resources, {"train": 0.6, "val": 0.2, "test": 0.2}, seed)
    assert sorted(i for part in parts.values() for i in part) == list(range(len(resources)))
    owner: dict[str, str] = {}
    for name, positions in parts.items():
        for position in positions:
            patient = resources[position].patient_id or f"resource:r{position}"
            assert owner.setdefault(patient, name) == name
    assert patient_split(resources, {"train": 0.6, "val": 0.2, "test": 0.2}, seed) == parts


def test_patient_split_uses_dicom_patient_id_from_metadata() -> None:
    resources = [Resource(id=f"r{i}", filename="x.dcm", metadata={"PatientID": f"P{i // 2}"}) for i in range(6)]
    parts = patient_split(resources, {"a": 0.5, "b": 0.5}, 1)
    for positions in parts.values():
        assert {resources[p].metadata["PatientID"] for p in positions}.isdisjoint(
            {resources[p].metadata["PatientID"] for q in parts.values() if q is not positions for p in q}
        )


def test_hash_split_is_stable_when_resources_are_added() -> None:
    resources = _resources([None] * 50)
    before = hash_split(resources, {"train": 0.8, "test": 0.2}, seed=3)
    grown = resources + _resources([None] * 80)[50:]
    after = hash_split(grown, {"train": 0.8, "test": 0.2}, seed=3)
    for name in before:
        assert set(before[name]) <= set(after[name])
    assert len(grown) == 80 and 6 <= len(after["test"]) <= 28  # about 20% of 80


def test_project_split_replays_history() -> None:
    resources = _resources([None] * 3)

    def assign(i: int, rid: str, name: str, created: str, deleted: str | None = None) -> SplitAssignment:
        return SplitAssignment(f"s{i}", "p", rid, name, created, deleted_at=deleted)

    history = [
        assign(0, "r0", "train", "2026-01-01T00:00:00Z", "2026-02-01T00:00:00Z"),
        assign(1, "r0", "val", "2026-02-01T00:00:00Z"),
        assign(2, "r1", "train", "2026-01-01T00:00:00Z"),
        assign(3, "r2", "test", "2026-03-01T00:00:00Z"),
    ]
    assert project_split(resources, history, "2025-12-31T00:00:00Z")[0] == {}
    assert project_split(resources, history, "2026-01-15T00:00:00Z")[0] == {"train": [0, 1]}
    assert project_split(resources, history, "2026-02-01T00:00:00Z")[0] == {"val": [0], "train": [1]}
    parts, when = project_split(resources, history)
    assert parts == {"val": [0], "train": [1], "test": [2]} and when.endswith("Z")
