"""Property tests: random edit sequences run against the store and against a plain in-memory model.

The model keeps resources and annotations as insertion-ordered dicts, and split changes as an event log per
resource (the split at time t is the last change dated at or before t). After every sequence the store's
``resources()``, ``annotations()`` and ``split_assignments(as_of=t)`` -- for every timestamp used, and the
instant before it -- must equal the model's. Edits the model calls invalid must raise ``ProjectError`` and
change nothing. Timestamps never decrease; each is written either with ``Z`` or as the same instant at +02:00.
"""

from __future__ import annotations

import datetime as dt
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _factories import catalogue_state, files_on_disk, read_png, write_png
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from datamint_pipes.errors import ProjectError
from datamint_pipes.sources.local import LocalProject

SIZE = 4
SPLITS = ("train", "val", "test")
BASE = dt.datetime(2024, 1, 1, 12, 0, tzinfo=dt.UTC)
PLUS_TWO = dt.timezone(dt.timedelta(hours=2))


_PNGS: list[Path] = []


def shared_pngs() -> tuple[Path, ...]:
    """Three distinct 4x4 gray PNGs, written once per module run (removed by the ``_cleanup_pngs`` fixture)."""
    if not _PNGS:
        folder = Path(tempfile.mkdtemp(prefix="store-props-"))
        _PNGS.extend(
            write_png(folder / f"img{i}.png", (np.arange(SIZE * SIZE).reshape(SIZE, SIZE) * (i + 1)) % 256)
            for i in range(3)
        )
    return tuple(_PNGS)


@pytest.fixture(scope="module", autouse=True)
def _cleanup_pngs() -> Iterator[None]:
    yield
    if _PNGS:
        shutil.rmtree(_PNGS[0].parent, ignore_errors=True)
        _PNGS.clear()


def _mask(number: int) -> np.ndarray[Any, Any]:
    """A distinct 0/1 (H,W) mask per annotation number."""
    bits = np.array([(number >> k) & 1 for k in range(SIZE * SIZE)], np.uint8)
    bits[number % (SIZE * SIZE)] = 1
    return bits.reshape(SIZE, SIZE)


def _stamp(when: dt.datetime, offset: bool) -> str:
    if offset:
        return when.astimezone(PLUS_TWO).isoformat(timespec="microseconds")
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class Model:
    """What the catalogue should hold, computed without the store's code."""

    resources: dict[str, dict[str, Any]] = field(default_factory=dict)
    annotations: dict[str, dict[str, Any]] = field(default_factory=dict)
    # (resource id, when, timestamp text, split name or None for "unassigned"), in the order applied
    split_events: list[tuple[str, dt.datetime, str, str | None]] = field(default_factory=list)
    times: list[dt.datetime] = field(default_factory=list)

    def live_resources(self) -> list[str]:
        return [rid for rid, r in self.resources.items() if r["deleted_at"] is None]

    def live_annotations(self) -> list[str]:
        return [aid for aid, a in self.annotations.items() if a["deleted_at"] is None]

    def splits_at(self, when: dt.datetime) -> list[tuple[str, str, str]]:
        """(resource id, split, created_at text) in force at ``when``, in the order the assignments were made."""
        latest: dict[str, tuple[int, str, str | None]] = {}
        for position, (rid, at, text, split) in enumerate(self.split_events):
            if at <= when:
                latest[rid] = (position, text, split)
        active = sorted((position, rid, split, text) for rid, (position, text, split) in latest.items() if split)
        return [(rid, split, text) for _, rid, split, text in active]


def _resource_rows(project: LocalProject, include_deleted: bool) -> list[tuple[Any, ...]]:
    return [
        (r.id, r.filename, r.created_at, r.tags, r.deleted, r.deleted_at, r.files)
        for r in project.resources(include_deleted=include_deleted)
    ]


def _model_resource_rows(model: Model, include_deleted: bool) -> list[tuple[Any, ...]]:
    return [
        (
            rid,
            r["filename"],
            r["created_at"],
            r["tags"],
            r["deleted_at"] is not None,
            r["deleted_at"],
            (f"resources/{rid}/{r['filename']}",),
        )
        for rid, r in model.resources.items()
        if include_deleted or r["deleted_at"] is None
    ]


def _annotation_rows(project: LocalProject, include_deleted: bool) -> list[tuple[Any, ...]]:
    return [
        (
            a.id,
            a.resource_id,
            a.identifier,
            a.annotation_type,
            a.text_value,
            a.created_by,
            a.created_at,
            a.deleted,
            a.deleted_at,
            a.file,
        )
        for a in project.annotations(include_deleted=include_deleted)
    ]


def _model_annotation_rows(model: Model, include_deleted: bool) -> list[tuple[Any, ...]]:
    return [
        (
            aid,
            a["resource_id"],
            a["identifier"],
            a["type"],
            a["text_value"],
            a["author"],
            a["created_at"],
            a["deleted_at"] is not None,
            a["deleted_at"],
            f"annotations/{a['resource_id']}/{aid}.png" if a["type"] == "segmentation" else None,
        )
        for aid, a in model.annotations.items()
        if include_deleted or a["deleted_at"] is None
    ]


def check_against_model(project: LocalProject, model: Model, *, full: bool) -> None:
    """The store equals the model: resources, annotations, current splits; with ``full``, every replay time."""
    for include_deleted in (False, True):
        assert _resource_rows(project, include_deleted) == _model_resource_rows(model, include_deleted)
        assert _annotation_rows(project, include_deleted) == _model_annotation_rows(model, include_deleted)
    far_future = dt.datetime(2999, 1, 1, tzinfo=dt.UTC)
    current = [(a.resource_id, a.split_name, a.created_at) for a in project.split_assignments()]
    assert current == model.splits_at(far_future)
    if not full:
        return
    probes = {BASE - dt.timedelta(days=1), far_future}
    for when in model.times:
        probes |= {when, when - dt.timedelta(microseconds=1), when + dt.timedelta(microseconds=1)}
    for when in sorted(probes):
        for offset in (False, True):
            got = [(a.resource_id, a.split_name, a.created_at) for a in project.split_assignments(_stamp(when, offset))]
            assert got == model.splits_at(when), f"as of {_stamp(when, offset)}"
    for aid, a in model.annotations.items():
        if a["type"] == "segmentation":
            stored = read_png(project.read_bytes(f"annotations/{a['resource_id']}/{aid}.png"))
            np.testing.assert_array_equal(stored, _mask(a["number"]))


class Driver:
    """Applies one operation to the store and the model alike; invalid ones must fail and change nothing."""

    def __init__(self, project: LocalProject, pngs: tuple[Path, ...]) -> None:
        self.project = project
        self.pngs = pngs
        self.model = Model()
        self.now = BASE
        self.counter = 0

    def tick(self, seconds: int, offset: bool) -> str:
        self.now += dt.timedelta(seconds=seconds)
        self.model.times.append(self.now)
        return _stamp(self.now, offset)

    def _pick(self, ids: list[str], index: int) -> str | None:
        return ids[index % len(ids)] if ids else None

    def refused(self, action: Any, needle: str) -> None:
        state, disk = catalogue_state(self.project), files_on_disk(self.project.root)
        with pytest.raises(ProjectError) as caught:
            action()
        assert needle in str(caught.value)
        assert catalogue_state(self.project) == state
        assert files_on_disk(self.project.root) == disk

    def add_resource(self, png: int, tags: tuple[str, ...], when: str) -> None:
        self.counter += 1
        rid = f"r{self.counter}"
        path = self.pngs[png % len(self.pngs)]
        self.project.add_resource(path, resource_id=rid, tags=tags, created_at=when)
        self.model.resources[rid] = {"filename": path.name, "created_at": when, "tags": tags, "deleted_at": None}

    def remove_resource(self, index: int, when: str) -> None:
        rid = self._pick(self.model.live_resources(), index)
        if rid is None:
            return self.refused(lambda: self.project.remove_resource("r0", at=when), "r0")
        self.project.remove_resource(rid, at=when)
        self.model.resources[rid]["deleted_at"] = when
        return None

    def add_annotation(self, index: int, kind: str, author: str, when: str) -> None:
        rid = self._pick(self.model.live_resources(), index)
        if rid is None:
            return self.refused(lambda: self.project.add_annotation("r0", "x", "label", created_at=when), "r0")
        self.counter += 1
        aid = f"a{self.counter}"
        identifier = {"label": "finding", "category": "view", "segmentation": "lesion"}[kind]
        text_value = "PA" if kind == "category" else None
        mask = _mask(self.counter) if kind == "segmentation" else None
        self.project.add_annotation(
            rid,
            identifier,
            kind,
            annotation_id=aid,
            created_by=author,
            created_at=when,
            text_value=text_value,
            mask=mask,
        )
        self.model.annotations[aid] = {
            "resource_id": rid,
            "identifier": identifier,
            "type": kind,
            "text_value": text_value,
            "author": author,
            "created_at": when,
            "deleted_at": None,
            "number": self.counter,
        }
        return None

    def delete_annotation(self, index: int, when: str) -> None:
        aid = self._pick(self.model.live_annotations(), index)
        if aid is None:
            return self.refused(lambda: self.project.delete_annotation("a0", at=when), "a0")
        self.project.delete_annotation(aid, at=when)
        self.model.annotations[aid]["deleted_at"] = when
        return None

    def assign(self, indices: list[int], split: str | None, when: str, at: dt.datetime) -> None:
        live = self.model.live_resources()
        if not live:
            return self.refused(lambda: self.project.assign_split(["r0"], split or "train", at=when), "r0")
        rids = list(dict.fromkeys(live[i % len(live)] for i in indices))
        if split is None:
            self.project.unassign_split(rids, at=when)
        else:
            self.project.assign_split(rids, split, at=when)
        self.model.split_events.extend((rid, at, when, split) for rid in rids)
        return None

    def bad(self, kind: str, when: str) -> None:
        live_r = self.model.live_resources()
        p = self.project
        if kind == "duplicate resource" and self.model.resources:
            rid = next(iter(self.model.resources))
            self.refused(lambda: p.add_resource(self.pngs[0], resource_id=rid, created_at=when), rid)
        elif kind == "duplicate annotation" and self.model.annotations and live_r:
            aid = next(iter(self.model.annotations))
            self.refused(lambda: p.add_annotation(live_r[0], "x", "label", annotation_id=aid, created_at=when), aid)
        elif kind == "mask mismatch" and live_r:
            wrong = np.ones((SIZE, SIZE + 1), np.uint8)
            self.refused(
                lambda: p.add_annotation(live_r[0], "x", "segmentation", mask=wrong, created_at=when), live_r[0]
            )
        elif kind == "split of a missing resource":
            self.refused(lambda: p.assign_split([*live_r, "ghost"], "train", at=when), "ghost")
        elif kind == "annotation of a missing resource":
            self.refused(lambda: p.add_annotation("ghost", "x", "label", created_at=when), "ghost")
        elif kind == "delete a missing annotation":
            self.refused(lambda: p.delete_annotation("ghost-annotation", at=when), "ghost-annotation")


OPERATIONS = st.one_of(
    st.tuples(st.just("add_resource"), st.integers(0, 2), st.sampled_from([(), ("a",), ("a", "b")])),
    st.tuples(st.just("remove_resource"), st.integers(0, 20)),
    st.tuples(
        st.just("add_annotation"),
        st.integers(0, 20),
        st.sampled_from(["label", "category", "segmentation"]),
        st.sampled_from(["ann1@x", "ann2@x"]),
    ),
    st.tuples(st.just("delete_annotation"), st.integers(0, 20)),
    st.tuples(
        st.just("assign"), st.lists(st.integers(0, 20), min_size=1, max_size=3), st.sampled_from([*SPLITS, None])
    ),
    st.tuples(
        st.just("bad"),
        st.sampled_from(
            [
                "duplicate resource",
                "duplicate annotation",
                "mask mismatch",
                "split of a missing resource",
                "annotation of a missing resource",
                "delete a missing annotation",
            ]
        ),
    ),
)
STEPS = st.lists(st.tuples(OPERATIONS, st.integers(0, 3), st.booleans()), max_size=25)


def _apply(driver: Driver, operation: tuple[Any, ...], when: str) -> None:
    name, *args = operation
    if name == "assign":
        driver.assign(args[0], args[1], when, driver.now)
    else:
        getattr(driver, name)(*args, when)


@settings(max_examples=30, deadline=None)
@given(steps=STEPS)
def test_random_edit_sequences_match_the_model(steps: list[Any]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        project = LocalProject.create(Path(folder) / "p", "props")
        driver = Driver(project, shared_pngs())
        for operation, seconds, offset in steps:
            _apply(driver, operation, driver.tick(seconds, offset))
        check_against_model(project, driver.model, full=True)
        reopened = LocalProject.open(project.root)
        check_against_model(reopened, driver.model, full=False)
        project.close()
        reopened.close()


class StoreMachine(RuleBasedStateMachine):
    """The same operations, one rule each, with the model compared after every step."""

    def __init__(self) -> None:
        super().__init__()
        self._folder = tempfile.TemporaryDirectory()
        self.driver = Driver(LocalProject.create(Path(self._folder.name) / "p"), shared_pngs())

    seconds = st.integers(0, 3)

    @initialize(png=st.integers(0, 2), seconds=seconds, offset=st.booleans())
    def first_resource(self, png: int, seconds: int, offset: bool) -> None:
        self.driver.add_resource(png, (), self.driver.tick(seconds, offset))

    @rule(png=st.integers(0, 2), tags=st.sampled_from([(), ("x",)]), seconds=seconds, offset=st.booleans())
    def add_resource(self, png: int, tags: tuple[str, ...], seconds: int, offset: bool) -> None:
        self.driver.add_resource(png, tags, self.driver.tick(seconds, offset))

    @rule(index=st.integers(0, 20), seconds=seconds, offset=st.booleans())
    def remove_resource(self, index: int, seconds: int, offset: bool) -> None:
        self.driver.remove_resource(index, self.driver.tick(seconds, offset))

    @rule(
        index=st.integers(0, 20),
        kind=st.sampled_from(["label", "category", "segmentation"]),
        author=st.sampled_from(["ann1@x", "ann2@x"]),
        seconds=seconds,
        offset=st.booleans(),
    )
    def add_annotation(self, index: int, kind: str, author: str, seconds: int, offset: bool) -> None:
        self.driver.add_annotation(index, kind, author, self.driver.tick(seconds, offset))

    @rule(index=st.integers(0, 20), seconds=seconds, offset=st.booleans())
    def delete_annotation(self, index: int, seconds: int, offset: bool) -> None:
        self.driver.delete_annotation(index, self.driver.tick(seconds, offset))

    @rule(
        indices=st.lists(st.integers(0, 20), min_size=1, max_size=3),
        split=st.sampled_from([*SPLITS, None]),
        seconds=seconds,
        offset=st.booleans(),
    )
    def assign(self, indices: list[int], split: str | None, seconds: int, offset: bool) -> None:
        when = self.driver.tick(seconds, offset)
        self.driver.assign(indices, split, when, self.driver.now)

    @rule(kind=st.sampled_from(["duplicate resource", "duplicate annotation", "split of a missing resource"]))
    def bad(self, kind: str) -> None:
        self.driver.bad(kind, self.driver.tick(0, False))

    @rule()
    def replay_every_timestamp(self) -> None:
        check_against_model(self.driver.project, self.driver.model, full=True)

    @invariant()
    def matches_the_model(self) -> None:
        check_against_model(self.driver.project, self.driver.model, full=False)

    def teardown(self) -> None:
        self.driver.project.close()
        self._folder.cleanup()


StoreMachine.TestCase.settings = settings(max_examples=20, stateful_step_count=15, deadline=None)
test_store_state_machine = StoreMachine.TestCase
