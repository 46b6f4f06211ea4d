"""The example notebook runs from top to bottom, as a user would run it in Jupyter."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).parents[2] / "examples" / "explore.ipynb"


def cell_text(cell: nbformat.NotebookNode) -> str:
    return "".join(
        output.get("text", "") + output.get("data", {}).get("text/plain", "")
        for output in cell.get("outputs", [])
    )


def test_example_notebook_runs(
    empty_database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", empty_database_url)
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        notebook, timeout=180, kernel_name="python3", resources={"metadata": {"path": tmp_path}}
    ).execute()

    outputs = [cell_text(cell) for cell in notebook.cells if cell.cell_type == "code"]
    assert "'Kyra'" in outputs[2] and "'friendly'" in outputs[2]
    assert "effective_skills" not in outputs[3] and "reminders" in outputs[3]
    assert "superseded" in outputs[4]
    assert "tea" in outputs[5]
    assert "created" in outputs[7] and "superseded" in outputs[7]
