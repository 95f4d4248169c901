"""The README's custom-pipeline example runs as written."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_block(heading: str) -> str:
    text = README.read_text()
    section = text.split(f"## {heading}", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, f"no python block under {heading!r}"
    return match.group(1)


def test_custom_pipeline_example_runs(
    sample_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.copytree(sample_root / "sample-volumes", tmp_path / "samples" / "sample-volumes")
    monkeypatch.chdir(tmp_path)
    exec(compile(_python_block("A custom pipeline"), "README.md", "exec"), {})
    lines = capsys.readouterr().out.splitlines()
    # 61 axial slices of the sample volumes in batches of 8.
    assert len(lines) == 8
    assert lines[:7] == ["torch.Size([8, 1, 128, 128])" + line.split("])", 1)[1] for line in lines[:7]]
    assert lines[7].startswith("torch.Size([5, 1, 128, 128])")


def test_migration_example_runs(
    sample_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("sample-images", "sample-volumes"):
        shutil.copytree(sample_root / name, tmp_path / "samples" / name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DATAMINT_PIPES_CACHE", str(tmp_path / "cache"))
    exec(compile(_python_block("Existing code: migrating from `datamint.dataset`"), "README.md", "exec"), {})
    first, second = capsys.readouterr().out.splitlines()
    image_shape, mask_shape = first.split(") ")
    assert image_shape.startswith("(") and mask_shape.startswith("(3, ")  # background + 2 labels, semantic
    assert second.startswith("61 ") and "'train': 3" in second and "'test': 1" in second
