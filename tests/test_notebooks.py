"""Every notebook runs end to end at CI's small size, and the committed ones carry their outputs."""

import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).parents[1] / "notebooks").glob("*.ipynb"))
STORIES = {"getting_started", "privacy_models", "ef21_reproduction", "sign_methods", "dp_sgd_rs", "heterogeneity"}


def _images(notebook) -> list:
    return [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", []) if "image/png" in o.get("data", {})]


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, monkeypatch):
    monkeypatch.setenv("FL_DP_NOTEBOOK_QUICK", "1")
    monkeypatch.setenv("RAY_TMPDIR", "/tmp/fl-dp-ray")
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(notebook, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    assert _images(notebook), "the notebook drew no plot"


def test_there_are_notebooks_and_they_call_the_library_not_a_subprocess():
    assert {p.stem for p in NOTEBOOKS} >= STORIES
    for path in NOTEBOOKS:
        source = "\n".join(c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code")
        assert "subprocess" not in source, path.name


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_committed_notebooks_show_their_outputs_and_say_what_they_took(path):
    notebook = nbformat.read(path, as_version=4)
    assert _images(notebook), f"{path.name} is committed without its plots: run `python scripts/run_notebooks.py {path}`"
    assert re.search(r"\*Run time and machine: \d+ s at full size on ", notebook.cells[0].source), path.name


def test_a_notebook_without_its_data_says_what_to_install(monkeypatch):
    from fl_dp import data

    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", Path("/nonexistent"))
    data.load_dataset.cache_clear()  # a load cached by an earlier test would hide the missing files
    with pytest.raises(SystemExit, match="apt-get install dataset-fashion-mnist"):
        data.require_datasets("fashion-mnist")
