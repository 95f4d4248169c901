"""Smoke test of the pipeline benchmark: ``benchmarks/pipeline.py --quick`` runs in a subprocess (about 20 s, from an
empty workload cache) and writes its JSON with every target's rows. Timings are never asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ROW_KEYS = {
    "target",
    "measure",
    "unit",
    "ours",
    "baseline",
    "baseline_value",
    "minimum_ratio",
    "note",
    "ratio",
    "passed",
}
MEASUREMENT_KEYS = {
    "sizes",
    "first_epoch_seconds",
    "first_batch_seconds",
    "later_epoch_seconds",
    "cache",
    "w2_ms_per_slice",
    "video_seconds",
    "tiny_seconds",
    "memory",
    "total_seconds",
}


@pytest.mark.slow
def test_pipeline_benchmark_quick_writes_every_target(tmp_path: Path) -> None:
    results = tmp_path / "results"
    command = [sys.executable, str(ROOT / "benchmarks" / "pipeline.py"), "--quick"]
    command += ["--cache-dir", str(tmp_path / "cache"), "--results-dir", str(results)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]

    payload = json.loads((results / "pipeline.json").read_text())
    assert payload["benchmark"] == "pipeline"
    assert payload["quick"] is True
    assert payload["measurements"].keys() >= MEASUREMENT_KEYS
    rows = payload["comparisons"]
    assert {row["target"] for row in rows} >= {"P1", "P1b", "P2", "P3", "P4", "P6", "P7"}
    for row in rows:
        assert set(row) == ROW_KEYS
        assert row["ours"] is not None and row["ours"] > 0, row
        assert row["baseline_value"] is not None or "skipped" in row["note"], row
    # Both memory runs happened and served every slice of the cold and the warm epoch.
    memory = payload["measurements"]["memory"]
    sizes = payload["measurements"]["sizes"]
    assert sorted(memory) == [str(n) for n in sizes["memory_workers"]]
    for run in memory.values():
        assert run["slices"] == [sizes["volumes"] * sizes["slices"]] * 2
    assert not list((tmp_path / "cache").glob("pipeline-scratch-*")), "the scratch folder was not removed"
