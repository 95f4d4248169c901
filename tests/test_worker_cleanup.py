"""Process workers never outlive the process that owns the loader, whatever kills it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent

OWNER = """
import sys
sys.path.insert(0, {tests!r})
from _pipeline_stages import RecordPid
from datamint_pipes.pipeline import Pipeline

pipeline = Pipeline(num_items=1000).map(RecordPid({folder!r}))
loader = pipeline.loader(num_workers=2, worker_type="process", multiprocessing_context={context!r})
for item in loader:
    print("item", flush=True)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return not (status.exists() and "State:\tZ" in status.read_text())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and process groups as on Linux")
@pytest.mark.parametrize(
    ("context", "how"), [("fork", signal.SIGTERM), ("spawn", signal.SIGKILL), ("forkserver", signal.SIGKILL)]
)
def test_workers_exit_when_the_owner_is_killed(tmp_path: Path, context: str, how: int) -> None:
    folder = tmp_path / "pids"
    folder.mkdir()
    script = OWNER.format(tests=str(TESTS), folder=str(folder), context=context)
    owner = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while len(list(folder.iterdir())) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        workers = [int(p.name) for p in folder.iterdir()]
        assert len(workers) >= 2, "the workers never started"
        owner.send_signal(how)
        owner.wait(timeout=20)
        deadline = time.monotonic() + 10
        while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [pid for pid in workers if _alive(pid)], f"orphaned workers after {signal.Signals(how).name}"
    finally:
        if owner.poll() is None:
            owner.kill()
        for path in folder.iterdir():
            if _alive(int(path.name)):
                os.kill(int(path.name), signal.SIGKILL)
