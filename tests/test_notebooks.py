"""The notebooks: every .py/.ipynb pair agrees, and every notebook runs end to end.

`notebooks/NAME.py` (jupytext py:percent) is the source of truth and
`notebooks/NAME.ipynb` its paired copy, committed without outputs; after editing
either, run `jupytext --sync notebooks/NAME.py`. Each notebook is then executed
top to bottom in a fresh kernel with QUICK_RUN=1 on the `shapes` data, as a
reader would run it in Jupyter (started in `notebooks/`), with its training
runs and temporary files in the test's `tmp_path` (NOTEBOOK_OUTPUT_DIR, TMPDIR),
not the system's temporary folder, and the kernel shut down at the end.
05_compare runs on a tiny CamVid folder instead: the same cells, plus its
CamVid branch (--image-scale, scores at full size), and one notebook run fewer.
"""

from __future__ import annotations

import glob
import json
import os
import sys

import jupytext
import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

NOTEBOOK_DIR = os.path.join(os.path.dirname(os.path.dirname(__file__)), "notebooks")
NAMES = sorted(
    os.path.splitext(os.path.basename(path))[0]
    for path in glob.glob(os.path.join(NOTEBOOK_DIR, "*.py"))
)
# 05_compare's quick run is on CamVid (test_comparison_runs_on_camvid).
ON_SHAPES = [name for name in NAMES if name != "05_compare"]
# Seconds per cell; a quick-mode notebook takes well under a minute on 2 CPU cores.
CELL_TIMEOUT = 300


def test_every_notebook_has_both_files():
    ipynb = sorted(
        os.path.splitext(os.path.basename(path))[0]
        for path in glob.glob(os.path.join(NOTEBOOK_DIR, "*.ipynb"))
    )
    assert NAMES, "no notebooks/*.py found"
    assert ipynb == NAMES, "run `jupytext --sync notebooks/*.py`"


@pytest.mark.parametrize("name", NAMES)
def test_pair_in_sync_and_ipynb_without_outputs(name):
    source = jupytext.read(os.path.join(NOTEBOOK_DIR, f"{name}.py"))
    notebook = nbformat.read(os.path.join(NOTEBOOK_DIR, f"{name}.ipynb"), as_version=4)
    nbformat.validate(notebook)
    assert [(cell.cell_type, cell.source) for cell in notebook.cells] == [
        (cell.cell_type, cell.source) for cell in source.cells
    ], f"notebooks/{name}.ipynb differs from its .py: run `jupytext --sync`"
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, (
                f"notebooks/{name}.ipynb has outputs: clear them before committing"
            )


@pytest.fixture(scope="module")
def kernel_specs(tmp_path_factory) -> KernelSpecManager:
    """A `python3` kernel that runs in this interpreter (this venv), whatever
    other `python3` kernels the machine has registered."""
    kernel_dir = tmp_path_factory.mktemp("kernels") / "python3"
    kernel_dir.mkdir()
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (tests)",
        "language": "python",
    }
    (kernel_dir / "kernel.json").write_text(json.dumps(spec))
    return KernelSpecManager(kernel_dirs=[str(kernel_dir.parent)])


def run_quick(name, kernel_specs, tmp_path, monkeypatch, dataset="shapes"):
    """Execute notebook `name` top to bottom with QUICK_RUN=1; return its cells."""
    monkeypatch.setenv("QUICK_RUN", "1")
    monkeypatch.setenv("NOTEBOOK_DATASET", dataset)
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    monkeypatch.setenv("NOTEBOOK_OUTPUT_DIR", str(tmp_path / "outputs"))
    # The kernel's own temporary files (TensorFlow's autograph sources, deleted
    # only when the kernel exits cleanly) go under tmp_path too.
    (tmp_path / "tmp").mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    notebook = jupytext.read(os.path.join(NOTEBOOK_DIR, f"{name}.py"))
    client = NotebookClient(
        notebook,
        km=KernelManager(kernel_name="python3", kernel_spec_manager=kernel_specs),
        timeout=CELL_TIMEOUT,
        resources={"metadata": {"path": NOTEBOOK_DIR}},
    )
    # nbclient leaves a kernel it did not start (km=) running unless told to
    # shut it down, and a kernel left running never deletes its connection file.
    client.execute(cleanup_kc=True)  # Raises CellExecutionError on any error.
    return notebook


def code_outputs(notebook) -> list[dict]:
    return [
        output
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
    ]


def shows_a_figure(notebook) -> bool:
    return any("image/png" in out.get("data", {}) for out in code_outputs(notebook))


@pytest.mark.parametrize("name", ON_SHAPES)
def test_notebook_runs_in_quick_mode(name, kernel_specs, tmp_path, monkeypatch):
    notebook = run_quick(name, kernel_specs, tmp_path, monkeypatch)
    assert shows_a_figure(notebook), f"{name} showed no figure"


def test_comparison_runs_on_camvid(camvid_dir, kernel_specs, tmp_path, monkeypatch):
    """05_compare's CamVid branch: --image-scale 0.5, scores on the full labels."""
    monkeypatch.setenv("NOTEBOOK_DATA_DIR", camvid_dir)
    notebook = run_quick("05_compare", kernel_specs, tmp_path, monkeypatch, "camvid")
    assert shows_a_figure(notebook), "05_compare showed no figure"
    printed = "".join(output.get("text", "") for output in code_outputs(notebook))
    assert "--image-scale 0.5" in printed
    for name in ("FCN-8s", "U-Net", "SegNet-Basic", "DeepLab v3+"):
        with open(tmp_path / "outputs" / name / "eval.json") as f:
            evaluation = json.load(f)
        assert evaluation["scales"] == [0.5] and evaluation["dataset"] == "camvid"
        # Every non-void pixel of the 4 val images at 45 x 61, 3 void rows each.
        assert sum(map(sum, evaluation["confusion_matrix"])) == 4 * 42 * 61
