"""Run every benchmark script, then combine their results: one table, ``summary.md``, ``summary.json``, ``summary.png``.

    .venv/bin/python benchmarks/run_all.py [--quick] [--repeats N] [--seed S] [--cache-dir DIR] [--results-dir DIR]
                                           [--only NAME ...] [--no-run]

Each ``benchmarks/*.py`` except ``_common.py`` and this file runs in its own process, one after another (never two
at once: they would time each other), with the options passed through (``--repeats`` only when given, so each
script keeps its own default). A script that fails is reported and the others still run. Then every
``<results-dir>/<name>.json`` is read and combined into:

* ``summary.json`` -- every comparison row with its benchmark, plus each script's exit status and wall time;
* ``summary.md`` -- the combined table (Markdown), with the command and the machine;
* ``summary.png`` -- one bar per row that has a target: measured ratio divided by the target ratio, on a log axis
  (right of the line at 1 passes).

The summary combines every script's JSON found there, also those not run this time (``--only``); each file's
creation time is kept in ``summary.json``. ``--no-run`` only combines the JSON files already there. Exit status:
1 if a script failed, else 0.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from _common import CACHE_DIR, RESULTS_DIR, Comparison, print_table

HERE = Path(__file__).resolve().parent
SKIP = {"_common.py", "run_all.py"}


def scripts() -> list[str]:
    """The benchmark names, in a fixed order (file names without ``.py``)."""
    return sorted(path.stem for path in HERE.glob("*.py") if path.name not in SKIP)


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, one repetition: a smoke run")
    parser.add_argument("--repeats", type=int, default=None, help="repetitions per measure (default: each script's)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated workloads")
    parser.add_argument("--cache-dir", type=Path, default=CACHE_DIR, help="where generated inputs are kept")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR, help="where the JSON results go")
    parser.add_argument("--only", nargs="+", choices=scripts(), metavar="NAME", help=f"run only these: {scripts()}")
    parser.add_argument("--no-run", action="store_true", help="only combine the JSON results already written")
    args = parser.parse_args(argv)
    if args.repeats is not None and args.repeats < 1:
        parser.error(f"--repeats={args.repeats} must be a positive integer")
    return args


def run_script(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Run ``benchmarks/<name>.py`` with the shared options; its output goes straight to this terminal."""
    command = [sys.executable, str(HERE / f"{name}.py"), "--seed", str(args.seed)]
    command += ["--cache-dir", str(args.cache_dir), "--results-dir", str(args.results_dir)]
    if args.quick:
        command.append("--quick")
    if args.repeats is not None:
        command += ["--repeats", str(args.repeats)]
    print(f"\n=== {name}: {' '.join(command)}", flush=True)
    start = time.perf_counter()
    returncode = subprocess.run(command, check=False, cwd=HERE.parent).returncode
    seconds = time.perf_counter() - start
    print(f"=== {name}: exit {returncode} after {seconds:.0f} s", flush=True)
    return {"returncode": returncode, "seconds": seconds}


def load_rows(results_dir: Path, names: Sequence[str]) -> tuple[list[tuple[str, Comparison]], dict[str, Any]]:
    """(benchmark name, row) for every comparison in the results files, and each file's run settings."""
    known = {field.name for field in fields(Comparison)}
    rows: list[tuple[str, Comparison]] = []
    settings: dict[str, Any] = {}
    for name in names:
        path = results_dir / f"{name}.json"
        if not path.exists():
            continue
        payload = json.loads(path.read_text())
        settings[name] = {key: payload.get(key) for key in ("created", "quick", "repeats", "seed", "machine")}
        for row in payload.get("comparisons", []):
            rows.append((name, Comparison(**{key: value for key, value in row.items() if key in known})))
    return rows, settings


def _cell(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def markdown(rows: Sequence[tuple[str, Comparison]], header: str) -> str:
    """The combined table as Markdown (``|`` in notes escaped)."""
    lines = [
        header,
        "",
        "| benchmark | target | measure | unit | ours | baseline | baseline value | ratio | target ratio | result "
        "| note |",
        "|---|---|---|---|---:|---|---:|---:|---:|---|---|",
    ]
    for name, row in rows:
        ratio = f"{row.ratio:.2f}x" if row.ratio is not None else "-"
        target = f">= {row.minimum_ratio:.3g}x" if row.minimum_ratio is not None else "(info)"
        result = {True: "PASS", False: "**FAIL**", None: "-"}[row.passed]
        cells = [name, row.target, row.measure, row.unit, _cell(row.ours), row.baseline, _cell(row.baseline_value)]
        cells += [ratio, target, result, row.note]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: Sequence[tuple[str, Comparison]], path: Path, title: str) -> bool:
    """A log-scale bar per row with a target: measured ratio / target ratio. Returns False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)", file=sys.stderr)
        return False
    targeted = [(name, row) for name, row in rows if row.minimum_ratio is not None and row.ratio is not None]
    if not targeted:
        return False
    labels = [f"{row.target} {row.measure}\nvs {row.baseline}" for _, row in targeted]
    scores = [row.ratio / row.minimum_ratio for _, row in targeted]  # type: ignore[operator]
    colours = ["tab:green" if row.passed else "tab:red" for _, row in targeted]
    figure, axes = plt.subplots(figsize=(10, 0.48 * len(targeted) + 1.4))
    positions = range(len(targeted))
    axes.barh(positions, scores, color=colours, left=0)
    axes.set_xscale("log")
    axes.axvline(1.0, color="black", linewidth=1)
    axes.set_yticks(list(positions), labels, fontsize=7)
    axes.invert_yaxis()
    for position, (_, row), score in zip(positions, targeted, scores, strict=True):
        text = f" {row.ratio:.3g}x (target {row.minimum_ratio:.3g}x)"
        axes.text(score, position, text, va="center", fontsize=7)
    axes.set_xlabel("measured ratio / target ratio (log scale; >= 1 passes)")
    axes.set_title(title, fontsize=9)
    low, high = min(scores), max(scores)
    axes.set_xlim(min(low, 1.0) / 2, max(high, 1.0) * 8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return True


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    names = args.only or scripts()
    runs: dict[str, dict[str, Any]] = {}
    if not args.no_run:
        for name in names:
            runs[name] = run_script(name, args)
    rows, settings = load_rows(args.results_dir, scripts())  # every result there, run now or before
    command = "benchmarks/run_all.py " + " ".join(argv if argv is not None else sys.argv[1:])
    created = datetime.now(UTC).isoformat(timespec="seconds")
    cpus = len(os.sched_getaffinity(0))
    title = f"datamint-pipes benchmarks, {created}, {cpus} cores, Python {platform.python_version()}"
    print_table(title, [row for _, row in rows])
    header = f"Combined benchmark results ({created}; `{command.strip()}`; {cpus} cores; {platform.platform()})"
    directory = Path(args.results_dir)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "summary.md").write_text(markdown(rows, header))
    summary = {
        "created": created,
        "command": command.strip(),
        "runs": runs,
        "settings": settings,
        "comparisons": [{"benchmark": name, **row.as_json()} for name, row in rows],
    }
    (directory / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    plotted = plot(rows, directory / "summary.png", title)
    print(f"\nsummary: {directory / 'summary.md'}, {directory / 'summary.json'}" + (", summary.png" if plotted else ""))
    failed = [name for name, run in runs.items() if run["returncode"] != 0]
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
