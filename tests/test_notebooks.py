"""The notebooks in ``notebooks/`` run top to bottom on CPU, without an error, and each draws a figure.

Each notebook is executed with nbclient in a kernel of the Python running the tests (the native ``python3``
kernelspec of the installed ipykernel, whose command is ``sys.executable``), with all the data it writes under
a temporary folder (``$DATAMINT_PIPES_NOTEBOOK_DIR``, shared by the notebooks so the sample projects are built
once; ``$DATAMINT_PIPES_CACHE`` points there too). Committed notebooks carry no outputs.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

NOTEBOOKS_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = (
    "01_custom_pipeline.ipynb",
    "02_migrating_from_datamint.ipynb",
    "03_multiworker_streaming.ipynb",
    "04_dicom_series_geometry.ipynb",
)
CELL_TIMEOUT_S = 120  # per cell; a whole notebook takes seconds on an idle machine
STARTUP_TIMEOUT_S = 120


@pytest.fixture(scope="module")
def notebook_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("notebooks")


def _kernel_manager() -> AsyncKernelManager:
    """A manager for the native ``python3`` kernel of this interpreter, ignoring user and system kernelspecs
    (a ``python3`` spec elsewhere on the machine may start another Python)."""
    specs = KernelSpecManager(kernel_dirs=[])  # only ipykernel's own spec, built for sys.executable
    manager = AsyncKernelManager(kernel_name="python3", kernel_spec_manager=specs)
    command = manager.kernel_spec.argv  # type: ignore[union-attr]
    assert os.path.realpath(command[0]) == os.path.realpath(sys.executable), command
    return manager


def _outputs(notebook: Any) -> list[Any]:
    return [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.get("outputs", [])]


def test_every_notebook_is_tested_and_indexed() -> None:
    found = sorted(path.name for path in NOTEBOOKS_DIR.glob("*.ipynb"))
    assert found == sorted(NOTEBOOKS)
    index = (NOTEBOOKS_DIR / "README.md").read_text()
    assert all(name in index for name in NOTEBOOKS)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_committed_without_outputs(name: str) -> None:
    notebook = nbformat.read(NOTEBOOKS_DIR / name, as_version=4)
    nbformat.validate(notebook)
    assert notebook.metadata.kernelspec.name == "python3"
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{name}: clear the outputs before committing"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs(name: str, notebook_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The kernel inherits this environment: data under the temporary folder, no server, inline figures.
    monkeypatch.setenv("DATAMINT_PIPES_NOTEBOOK_DIR", str(notebook_dir))
    monkeypatch.setenv("DATAMINT_PIPES_CACHE", str(notebook_dir / "cache"))
    monkeypatch.setenv("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    for variable in ("DATAMINT_API_URL", "DATAMINT_API_KEY", "MPLBACKEND"):
        monkeypatch.delenv(variable, raising=False)
    notebook = nbformat.read(NOTEBOOKS_DIR / name, as_version=4)
    client = NotebookClient(
        notebook,
        km=_kernel_manager(),
        timeout=CELL_TIMEOUT_S,
        startup_timeout=STARTUP_TIMEOUT_S,
        resources={"metadata": {"path": str(notebook_dir)}},
    )
    start = time.perf_counter()
    try:
        client.execute(cleanup_kc=True)  # shuts the kernel down at the end, also after an error
    except CellExecutionError as error:
        pytest.fail(f"{name} failed:\n{error}")
    seconds = time.perf_counter() - start
    print(f"{name}: {seconds:.1f} s")

    outputs = _outputs(notebook)
    errors = [f"{o.ename}: {o.evalue}" for o in outputs if o.output_type == "error"]
    assert not errors, f"{name}: {errors}"
    figures = [o for o in outputs if o.output_type in ("display_data", "execute_result") and "image/png" in o.data]
    assert figures, f"{name} drew no figure (no image/png output)"
