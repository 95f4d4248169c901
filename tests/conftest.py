"""Shared fixtures. Keep this file to fixtures that locate real test data shipped inside installed packages
(see shared/reference/test-data.md); test-specific fixtures live in their test modules."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest


def _package_dir(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent


def _data_dir(package: str, *parts: str) -> Path:
    root = _package_dir(package)
    if root is None or not root.joinpath(*parts).is_dir():
        pytest.skip(f"{package} with its bundled data is not installed")
    return root.joinpath(*parts)


@pytest.fixture(scope="session")
def dicom_file() -> Callable[[str], Path]:
    """``dicom_file(name)``: path of a pydicom test file, from pydicom's own data or pydicom-data."""
    from pydicom.data import get_testdata_file

    def locate(name: str) -> Path:
        found = get_testdata_file(name)
        if not isinstance(found, str):
            pytest.skip(f"DICOM test file {name} not installed (pydicom-data?)")
        return Path(found)

    return locate


@pytest.fixture(scope="session")
def dicom_test_dir() -> Path:
    """pydicom's ``data/test_files`` folder (holds the ``dicomdirtests`` series)."""
    return _data_dir("pydicom", "data", "test_files")


@pytest.fixture(scope="session")
def nibabel_data_dir() -> Path:
    """nibabel's ``tests/data`` folder (``anatomical.nii``, ``example4d.nii.gz``, ...)."""
    return _data_dir("nibabel", "tests", "data")


@pytest.fixture(scope="session")
def skimage_data_dir() -> Path:
    """scikit-image's ``data`` folder (``retina.jpg``, ``microaneurysms.png``, ...)."""
    return _data_dir("skimage", "data")


@pytest.fixture(scope="session")
def sample_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The three sample projects, built once per test session (read-only use: copy before editing)."""
    from datamint_pipes.samples import build_samples

    root = tmp_path_factory.mktemp("samples")
    build_samples(root)
    return root


@pytest.fixture(scope="session", autouse=True)
def _isolated_default_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Keep the machine-wide caches of code under test out of the user's home folder (tests that need their
    own cache folder set ``DATAMINT_PIPES_CACHE`` with monkeypatch)."""
    import os

    previous = os.environ.get("DATAMINT_PIPES_CACHE")
    os.environ["DATAMINT_PIPES_CACHE"] = str(tmp_path_factory.mktemp("default-cache"))
    yield
    if previous is None:
        os.environ.pop("DATAMINT_PIPES_CACHE", None)
    else:
        os.environ["DATAMINT_PIPES_CACHE"] = previous
