"""prefetch() fills the caches once (idempotent) from local and served projects; mlflow lineage is optional."""

from __future__ import annotations

import importlib.util
import secrets
import shutil
from pathlib import Path

import numpy as np
import pytest

from datamint_compat.dataset import VolumeDataset
from datamint_pipes.serve import BackgroundServer, create_app
from datamint_pipes.sources.local import LocalProject
from datamint_pipes.stages import cached


def test_prefetch_decodes_every_resource_once(
    sample_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATAMINT_PIPES_CACHE", str(tmp_path / "cache"))
    dataset = VolumeDataset(project=str(sample_root / "sample-volumes"))
    dataset.prefetch()
    arrays = sorted((tmp_path / "cache" / "arrays").glob("*/*.npy"))
    assert len(arrays) == len(dataset.resources)

    def no_decoding(*args: object) -> None:
        raise AssertionError("prefetch() already decoded every resource")

    monkeypatch.setattr(cached, "_decode_for_cache", no_decoding)
    dataset.prefetch()  # idempotent: nothing decoded again
    assert sorted((tmp_path / "cache" / "arrays").glob("*/*.npy")) == arrays
    item = dataset[0]  # served from the cache
    assert item["image"].ndim == 4


def test_prefetch_over_the_server_downloads_then_items_need_no_network(
    sample_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATAMINT_PIPES_CACHE", str(tmp_path / "cache"))
    key = secrets.token_hex(16)
    folder = tmp_path / "sample-images"
    shutil.copytree(sample_root / "sample-images", folder)
    local = VolumeDataset(project=str(folder), return_segmentations=False)
    with BackgroundServer(create_app(LocalProject.open(folder, read_only=True), api_key=key)) as server:
        remote = VolumeDataset(project="sample-images", server_url=server.url, api_key=key, return_segmentations=False)
        remote.prefetch(include_annotations=True)
        downloaded = sorted((tmp_path / "cache" / "bytes").glob("*/*.bin"))
        assert len(downloaded) >= len(remote.resources)
    # The server is gone: items come from the caches alone.
    for index in range(len(local)):
        np.testing.assert_array_equal(remote[index]["image"], local[index]["image"])


@pytest.mark.skipif(importlib.util.find_spec("mlflow") is not None, reason="mlflow is installed")
def test_build_mlflow_dataset_names_the_extra_when_mlflow_is_missing(sample_root: Path) -> None:
    dataset = VolumeDataset(project=str(sample_root / "sample-volumes"))
    with pytest.raises(ImportError, match=r"datamint-pipes\[mlflow\]"):
        dataset.build_mlflow_dataset()
