"""Every facade reads a project served over the REST API exactly as it reads the same project locally."""

from __future__ import annotations

import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from datamint_compat.dataset import ImageDataset, VideoDataset, VolumeDataset
from datamint_pipes.serve import BackgroundServer, create_app
from datamint_pipes.sources.local import LocalProject

KEY = "compat-" + secrets.token_hex(12)


@pytest.fixture(scope="module")
def served(sample_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """All three sample projects under one folder; one server per project would also do, but one is enough
    here: the server serves the project it is given, so start one per project lazily."""
    folder = tmp_path_factory.mktemp("served")
    for name in ("sample-images", "sample-volumes", "sample-videos"):
        shutil.copytree(sample_root / name, folder / name)
    yield "", folder


@pytest.fixture(autouse=True)
def _isolated_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATAMINT_PIPES_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("DATAMINT_API_URL", raising=False)


def _same(a: Any, b: Any, where: str) -> None:
    if isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), where
        for key in a:
            _same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (np.ndarray, torch.Tensor)):
        assert type(a) is type(b) and a.dtype == b.dtype and a.shape == b.shape, where
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=where)
    elif isinstance(a, list):
        assert [getattr(x, "id", x) for x in a] == [getattr(x, "id", x) for x in b], where
    elif hasattr(a, "id") and hasattr(a, "files"):
        assert a.id == b.id, where  # resources: same record, files addressed differently
    elif hasattr(a, "SOPInstanceUID"):
        assert a.SOPInstanceUID == b.SOPInstanceUID, where
    elif isinstance(a, dict | type(None)):
        assert a == b, where


CASES = [
    ("sample-images", ImageDataset, None, {}),
    (
        "sample-images",
        ImageDataset,
        None,
        {"return_as_semantic_segmentation": True, "semantic_seg_merge_strategy": "mode"},
    ),
    ("sample-volumes", VolumeDataset, None, {"image_labels_merge_strategy": "union"}),
    ("sample-volumes", VolumeDataset, "slice", {}),
    ("sample-videos", VideoDataset, None, {}),
    ("sample-videos", VideoDataset, "frame_by_frame", {"return_as_semantic_segmentation": True}),
]


@pytest.mark.parametrize(("name", "cls", "view", "options"), CASES)
def test_facade_over_the_server_equals_the_local_facade(
    served: tuple[str, Path], name: str, cls: type, view: str | None, options: dict[str, Any]
) -> None:
    folder = served[1] / name
    with BackgroundServer(create_app(LocalProject.open(folder, read_only=True), api_key=KEY)) as server:
        remote = cls(project=name, server_url=server.url, api_key=KEY, **options)
        local = cls(project=str(folder), **options)
        if view is not None:
            remote, local = getattr(remote, view)(), getattr(local, view)()
        assert len(remote) == len(local) > 0
        assert remote.segmentation_labels_set == local.segmentation_labels_set
        assert remote.image_categories_set == local.image_categories_set
        picks = sorted({0, len(local) // 2, len(local) - 1})
        for index in picks:
            a, b = remote[index], local[index]
            assert list(a) == list(b)
            for key in a:
                _same(a[key], b[key], f"{name}[{index}].{key}")
        split_remote = remote.split(as_of_timestamp="2026-07-01T00:00:00Z")
        split_local = local.split(as_of_timestamp="2026-07-01T00:00:00Z")
        assert {k: len(v) for k, v in split_remote.items()} == {k: len(v) for k, v in split_local.items()}
