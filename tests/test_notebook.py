"""The analysis notebook runs top to bottom against a fixture results folder."""
from pathlib import Path

import pytest

nbclient = pytest.importorskip("nbclient")
nbformat = pytest.importorskip("nbformat")

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "notebooks" / "analysis.ipynb"


def test_notebook_is_committed_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None


def test_notebook_runs(results_folder, monkeypatch, tmp_path):
    monkeypatch.setenv("SPARSENET_RESULTS", str(results_folder))  # the kernel inherits the environment
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("TMPDIR", str(tmp_path))   # its scratch figures (0.9 MB a run) stay out of /tmp
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=120, kernel_name="python3",
                                     resources={"metadata": {"path": str(ROOT / "notebooks")}})
    client.execute()  # raises CellExecutionError on the first failing cell
    text, images = [], 0
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            assert out.get("output_type") != "error"
            text.append(out.get("text", ""))
            data = out.get("data", {})
            text.append(data.get("text/markdown", "") + data.get("text/plain", ""))
            images += "image/png" in data
    text = "\n".join(text)
    assert str(results_folder) in text
    assert "**Answer:" in text and "at equal sparsity" in text
    assert "most accurate model" in text
    assert images >= 7
    assert [p.name for p in tmp_path.glob("sparsenet-notebook-*/*.png")]   # where its figures went


@pytest.mark.slow
def test_notebook_runs_on_a_quick_study(quick_study_folder, monkeypatch, tmp_path):
    """The same notebook against a folder the real quick study produced."""
    test_notebook_runs(quick_study_folder, monkeypatch, tmp_path)
