"""The distribution: the wheel holds both import packages, installs, and imports outside the source tree."""

from __future__ import annotations

import os
import site
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q", "-w", str(out)],
        check=True,
        cwd=out,
    )
    (path,) = out.glob("datamint_pipes-*.whl")
    return path


def test_wheel_contains_both_packages(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for module in (
        "datamint_pipes/__init__.py",
        "datamint_pipes/py.typed",
        "datamint_pipes/sources/local.py",
        "datamint_pipes/decode/__init__.py",
        "datamint_compat/__init__.py",
        "datamint_compat/dataset/__init__.py",
        "datamint_compat/py.typed",
    ):
        assert module in names, f"{module} missing from {wheel.name}"
    assert not any(n.startswith(("compat/", "tests/")) for n in names)
    # Every module of the source tree ships (the package list in pyproject.toml is explicit).
    sources = {str(p.relative_to(ROOT)) for p in (ROOT / "datamint_pipes").rglob("*.py")}
    sources |= {"datamint_compat/" + str(p.relative_to(ROOT / "compat")) for p in (ROOT / "compat").rglob("*.py")}
    assert sources - names == set()
    metadata = next(n for n in names if n.endswith("METADATA"))
    text = zipfile.ZipFile(wheel).read(metadata).decode()
    assert "Requires-Dist: torch>=2.4" in text
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "datamint-pipes = datamint_pipes.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_wheel_installs_into_a_clean_venv_and_imports(wheel: Path, tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    # Install only our wheel; its dependencies come from this test environment through a .pth file, so the
    # check is about our packaging, not about downloading torch again.
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)],
        check=True,
    )
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    Path(purelib, "deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    result = subprocess.run(
        [
            str(python),
            "-c",
            "import datamint_pipes, datamint_compat, datamint_compat.dataset; print(datamint_pipes.__file__)",
        ],
        check=True,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    assert result.stdout.strip().startswith(purelib), "imported from the source tree, not the installed wheel"
