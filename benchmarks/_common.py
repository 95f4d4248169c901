"""What every benchmark shares: arguments, interleaved timing (medians of repetitions), a table, JSON results.

Machines here are small and noisy (shared/reference/performance.md): each measure runs side by side with its
baseline in one process, the candidates of one comparison alternate within every repetition, and the figures are
medians. A benchmark builds :class:`Comparison` rows (ours against one baseline, with the target ratio), prints
them with :func:`print_table` and saves them with :func:`write_results` to ``benchmarks/results/<name>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = ["Comparison", "arguments", "print_table", "rate", "time_interleaved", "write_results"]

RESULTS_DIR = Path(__file__).resolve().parent / "results"
CACHE_DIR = Path(tempfile.gettempdir()) / "datamint-pipes-benchmarks"


def arguments(description: str, argv: Sequence[str] | None = None, *, repeats: int = 3) -> argparse.Namespace:
    """The options every benchmark takes: ``--quick``, ``--repeats``, ``--seed``, ``--cache-dir``, ``--results-dir``.

    ``--repeats`` defaults to ``repeats`` (1 with ``--quick``); generated inputs are cached under ``--cache-dir``.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="small sizes, one repetition: a smoke test")
    parser.add_argument("--repeats", type=int, default=None, help=f"repetitions per measure ({repeats}; quick: 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated workload")
    parser.add_argument("--cache-dir", type=Path, default=CACHE_DIR, help="where generated inputs are kept")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR, help="where the JSON results go")
    args = parser.parse_args(argv)
    if args.repeats is None:
        args.repeats = 1 if args.quick else repeats
    if args.repeats < 1:
        parser.error(f"--repeats={args.repeats} must be a positive integer")
    return args


def time_interleaved(candidates: Mapping[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Seconds per call of each candidate, ``repeats`` times, alternating candidates within each repetition.

    Alternating spreads the machine's noise over all candidates instead of charging one of them with a bad minute.
    """
    seconds: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, run in candidates.items():
            start = time.perf_counter()
            run()
            seconds[name].append(time.perf_counter() - start)
    return seconds


def rate(amount: float, seconds: Sequence[float]) -> float:
    """``amount`` per second at the median of ``seconds``."""
    return amount / statistics.median(seconds)


@dataclass(frozen=True)
class Comparison:
    """One row: our figure against one baseline's, both "higher is better" rates measured in the same run.

    ``minimum_ratio`` is the target (``ours / baseline`` must reach it); ``None`` marks an informational row.
    A row whose figures could not be measured carries ``None`` values and says why in ``note``.
    """

    target: str
    measure: str
    unit: str
    ours: float | None
    baseline: str
    baseline_value: float | None
    minimum_ratio: float | None = None
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.ours is None or not self.baseline_value:
            return None
        return self.ours / self.baseline_value

    @property
    def passed(self) -> bool | None:
        ratio = self.ratio
        return None if ratio is None or self.minimum_ratio is None else ratio >= self.minimum_ratio

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": self.ratio, "passed": self.passed}


def print_table(title: str, rows: Sequence[Comparison]) -> None:
    """Print the rows as an aligned text table (ratio and target with a PASS/FAIL mark)."""
    header = ("target", "measure", "unit", "ours", "baseline", "baseline value", "ratio", "target ratio", "")
    lines = [header]
    for row in rows:
        mark = {True: "PASS", False: "FAIL", None: "-"}[row.passed]
        lines.append(
            (
                row.target,
                row.measure,
                row.unit,
                _number(row.ours),
                row.baseline,
                _number(row.baseline_value),
                f"{row.ratio:.2f}x" if row.ratio is not None else "-",
                f">= {row.minimum_ratio:g}x" if row.minimum_ratio is not None else "(info)",
                mark if not row.note else f"{mark}  {row.note}",
            )
        )
    widths = [max(len(line[column]) for line in lines) for column in range(len(header))]
    print(f"\n{title}")
    for index, line in enumerate(lines):
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())
        if index == 0:
            print("  ".join("-" * width for width in widths))


def write_results(
    name: str, args: argparse.Namespace, rows: Sequence[Comparison], measurements: Mapping[str, Any]
) -> Path:
    """Write ``<results_dir>/<name>.json``: run settings, machine, comparison rows, raw measurements; return it."""
    payload = {
        "benchmark": name,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "quick": bool(args.quick),
        "repeats": args.repeats,
        "seed": args.seed,
        "machine": {
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        },
        "comparisons": [row.as_json() for row in rows],
        "measurements": dict(measurements),
    }
    directory = Path(args.results_dir)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"
