"""Fetch throughput from ``datamint-pipes serve`` on loopback: prefetch with 1, 4, 16 concurrent downloads against
serial download in ``__getitem__`` (the reference client's pattern), in the same run.

    .venv/bin/python benchmarks/fetch.py [--quick] [--repeats N] [--seed S] [--cache-dir DIR] [--results-dir DIR]

Workload (generated from the seed, cached under ``--cache-dir``): a local project of 40 uncompressed NIfTI
volumes of 2 MB (int16 noise, 64x128x128), served by ``datamint-pipes serve`` in its own process. Two links:
plain loopback, and loopback with 20 ms added to every request (``serve --latency``, a stand-in for a WAN
round trip). Candidates, alternating within each repetition, each into an empty cache:

* serial ``__getitem__``: one ``requests.get`` per resource, one after another, each written to a file -- what a
  map-style dataset that downloads on a cache miss does;
* ``ServerSource.prefetch(max_concurrency=k)`` for k = 1, 4, 16: streamed into the byte cache (size-checked,
  atomic), k at a time.

Rows are MB/s of file bytes, informational (no target in the performance reference). ``--quick``: 8 files of
256 KB, one repetition.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import nibabel as nib
import numpy as np
import requests
from _common import Comparison, arguments, print_table, rate, time_interleaved, write_results

from datamint_pipes.cache import ByteCache
from datamint_pipes.sources.local import LocalProject
from datamint_pipes.sources.server import ServerSource


class Workload(NamedTuple):
    files: int
    shape: tuple[int, int, int]  # (N,H,W) of int16 voxels


FULL = Workload(files=40, shape=(64, 128, 128))  # 2 MiB per file
QUICK = Workload(files=8, shape=(16, 64, 128))  # 256 KiB per file
LINKS = {"loopback": 0.0, "loopback + 20 ms": 0.02}
CONCURRENCY = (1, 4, 16)
WORKLOAD_VERSION = 1


def make_project(folder: Path, files: int, shape: tuple[int, ...], seed: int) -> LocalProject:
    """A project of ``files`` uncompressed NIfTI volumes of int16 noise (reused when already built)."""
    if (folder / "project.sqlite").is_file():
        return LocalProject.open(folder, read_only=True)
    staging = Path(tempfile.mkdtemp(prefix=".fetch-", dir=folder.parent))
    try:
        project = LocalProject.create(staging / "project", "fetch-benchmark")
        rng = np.random.default_rng(seed)
        with tempfile.TemporaryDirectory() as work:
            for index in range(files):
                path = Path(work) / f"volume_{index:03d}.nii"
                volume = rng.integers(-1000, 3000, size=shape[::-1], dtype=np.int16)
                nib.save(nib.Nifti1Image(volume, np.eye(4)), path)
                project.add_resource(path)
        project.close()
        os.replace(staging / "project", folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return LocalProject.open(folder, read_only=True)


class Server:
    """``datamint-pipes serve`` in a subprocess (its own interpreter: the server does not share our GIL)."""

    def __init__(self, project: Path, key: str, latency: float) -> None:
        command = [sys.executable, "-m", "datamint_pipes.cli", "serve", str(project), "--port", "0"]
        if latency:
            command += ["--latency", str(latency)]
        env = {**os.environ, "DATAMINT_API_KEY": key}
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if " at " not in line:
            self.stop()
            raise RuntimeError(f"datamint-pipes serve did not start: {line!r}")
        self.url = line.split(" at ", 1)[1].split()[0]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()


def serial_getitem(url: str, key: str, resource_ids: Sequence[str], folder: Path) -> int:
    """The baseline: download each resource's file when it is first indexed, one at a time."""
    total = 0
    for rid in resource_ids:
        response = requests.get(f"{url}/resources/{rid}/file", headers={"apikey": key}, timeout=60)
        response.raise_for_status()
        target = folder / f"{rid}.bin"
        target.write_bytes(response.content)
        total += len(response.content)
    return total


def run_fresh(work: Path, make: Callable[[Path], object]) -> Callable[[], object]:
    """A candidate that runs ``make(empty folder)`` and removes the folder afterwards (every run starts cold)."""

    def run() -> object:
        folder = Path(tempfile.mkdtemp(dir=work))
        try:
            return make(folder)
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    return run


def main(argv: Sequence[str] | None = None) -> int:
    args = arguments(__doc__.splitlines()[0], argv)
    files, shape = QUICK if args.quick else FULL
    name = f"fetch-v{WORKLOAD_VERSION}-{files}x{'x'.join(map(str, shape))}-seed{args.seed}"
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    project = make_project(args.cache_dir / name, files, shape, args.seed)
    resources = project.resources()
    total_bytes = sum(r.size or 0 for r in resources)
    megabytes = total_bytes / 1e6
    key = secrets.token_hex(16)
    rows: list[Comparison] = []
    measurements: dict[str, Any] = {"files": files, "bytes": total_bytes, "links": {}}
    with tempfile.TemporaryDirectory(prefix="fetch-bench-") as scratch:
        work = Path(scratch)
        for link, latency in LINKS.items():
            server = Server(Path(project.root), key, latency)
            try:
                ids = [r.id for r in resources]

                def getitem(folder: Path, url: str = server.url, ids: list[str] = ids) -> int:
                    return serial_getitem(url, key, ids, folder)

                candidates: dict[str, Callable[[], object]] = {"serial __getitem__": run_fresh(work, getitem)}
                for concurrency in CONCURRENCY:

                    def prefetch(folder: Path, k: int = concurrency, url: str = server.url) -> int:
                        source = ServerSource(project.name, url=url, api_key=key, cache=ByteCache(folder))
                        return source.prefetch(max_concurrency=k, progress=False)

                    candidates[f"prefetch x{concurrency}"] = run_fresh(work, prefetch)
                seconds = time_interleaved(candidates, args.repeats)
            finally:
                server.stop()
            measurements["links"][link] = {"latency_s": latency, "seconds": seconds}
            baseline = rate(megabytes, seconds["serial __getitem__"])
            for concurrency in CONCURRENCY:
                rows.append(
                    Comparison(
                        target="fetch",
                        measure=f"prefetch x{concurrency}, {link}",
                        unit="MB/s",
                        ours=rate(megabytes, seconds[f"prefetch x{concurrency}"]),
                        baseline="serial __getitem__",
                        baseline_value=baseline,
                    )
                )
    print_table(f"Fetch from datamint-pipes serve: {files} files, {megabytes:.1f} MB, {args.repeats} repeat(s)", rows)
    path = write_results("fetch", args, rows, measurements)
    print(f"\nresults: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
