"""Dataset splits: local random (reproducing the reference client), by patient, hash-stable, project-scoped.

All functions return ``{split_name: [positions]}`` -- positions into the resource list they were given -- in
the order of the requested names, each list in ascending or shuffled order as documented per function.

* :func:`local_split` -- the reference partition: ``list(range(n))`` shuffled by ``random.Random(seed)``,
  each split but the last takes ``round(ratio * n)`` (Python rounding), the last takes the rest.
* :func:`patient_split` -- whole patients go to one split (no patient leaks across splits).
* :func:`hash_split` -- a resource's split depends only on its id and the seed, so adding resources never
  moves existing ones.
* :func:`project_split` -- assignments in force at a timestamp (unassigned resources are left out).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping, Sequence

from datamint_pipes.model import Resource, SplitAssignment, parse_timestamp, utc_now_iso

__all__ = ["hash_split", "local_split", "patient_id_of", "patient_split", "project_split", "validate_ratios"]


def validate_ratios(ratios: Mapping[str, float]) -> None:
    """Ratios must be > 0, at least two, and sum to 1 within 0.01 (``ValueError`` otherwise)."""
    if len(ratios) < 2:
        raise ValueError(f"split needs at least two named ratios, got {dict(ratios)}")
    bad = {name: value for name, value in ratios.items() if not isinstance(value, (int, float)) or value <= 0}
    if bad:
        raise ValueError(f"split ratios must be positive numbers, got {bad}")
    total = sum(ratios.values())
    if abs(total - 1.0) > 0.01:
        raise ValueError(f"split ratios must sum to 1.0 (±0.01), got {total:g} from {dict(ratios)}")


def local_split(n: int, ratios: Mapping[str, float], seed: int | None = None) -> dict[str, list[int]]:
    """The reference client's partition of ``range(n)`` (see the module docstring); same seed, same parts."""
    validate_ratios(ratios)
    indices = list(range(n))
    random.Random(seed).shuffle(indices)
    parts: dict[str, list[int]] = {}
    start = 0
    names = list(ratios)
    for name in names[:-1]:
        count = round(ratios[name] * n)
        parts[name] = indices[start : start + count]
        start += count
    parts[names[-1]] = indices[start:]
    return parts


def patient_id_of(resource: Resource) -> str:
    """The resource's patient: ``patient_id``, else ``metadata['PatientID']``, else the resource itself."""
    return str(resource.patient_id or resource.metadata.get("PatientID") or f"resource:{resource.id}")


def patient_split(
    resources: Sequence[Resource], ratios: Mapping[str, float], seed: int | None = None
) -> dict[str, list[int]]:
    """Split whole patients: patients (sorted) are shuffled by ``random.Random(seed)`` and dealt to the splits
    in order; a split takes patients until its resource count reaches ``round(ratio * n)``, the last split
    takes the remaining patients. Positions within a split follow the shuffled patient order."""
    validate_ratios(ratios)
    by_patient: dict[str, list[int]] = {}
    for position, resource in enumerate(resources):
        by_patient.setdefault(patient_id_of(resource), []).append(position)
    patients = sorted(by_patient)
    random.Random(seed).shuffle(patients)
    names = list(ratios)
    parts: dict[str, list[int]] = {name: [] for name in names}
    n = len(resources)
    cursor = 0
    for name in names[:-1]:
        target = round(ratios[name] * n)
        while cursor < len(patients) and len(parts[name]) < target:
            parts[name].extend(by_patient[patients[cursor]])
            cursor += 1
    for patient in patients[cursor:]:
        parts[names[-1]].extend(by_patient[patient])
    return parts


def hash_split(
    resources: Sequence[Resource], ratios: Mapping[str, float], seed: int | None = None
) -> dict[str, list[int]]:
    """Each resource goes to the split whose cumulative ratio bracket holds sha256(seed, id) mapped to [0, 1)."""
    validate_ratios(ratios)
    total = sum(ratios.values())
    bounds: list[tuple[float, str]] = []
    acc = 0.0
    for name, ratio in ratios.items():
        acc += ratio / total
        bounds.append((acc, name))
    parts: dict[str, list[int]] = {name: [] for name in ratios}
    for position, resource in enumerate(resources):
        digest = hashlib.sha256(f"{seed}:{resource.id}".encode()).digest()
        u = int.from_bytes(digest[:8], "big") / 2**64
        name = next((n for bound, n in bounds if u < bound), bounds[-1][1])
        parts[name].append(position)
    return parts


def project_split(
    resources: Sequence[Resource], assignments: Sequence[SplitAssignment], as_of: str | None = None
) -> tuple[dict[str, list[int]], str]:
    """Positions per split name of the assignments in force at ``as_of`` (default: now, captured as UTC ISO
    with ``Z``); returns ``(parts, as_of)``. Split names are in order of first appearance among the resources."""
    timestamp = as_of or utc_now_iso()
    when = parse_timestamp(timestamp)
    current: dict[str, str] = {}
    for assignment in assignments:
        if assignment.active_at(when):
            current[assignment.resource_id] = assignment.split_name
    parts: dict[str, list[int]] = {}
    for position, resource in enumerate(resources):
        name = current.get(resource.id)
        if name is not None:
            parts.setdefault(name, []).append(position)
    return parts, timestamp
