"""The example notebook runs from top to bottom, as a user would run it in Jupyter; twice."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from skill_store.demo import SUPERSEDED

NOTEBOOK = Path(__file__).parents[2] / "examples" / "explore.ipynb"


def cell_text(cell: nbformat.NotebookNode) -> str:
    """What a cell showed, less what it wrote to stderr."""
    return "".join(
        output.get("text", "") + output.get("data", {}).get("text/plain", "")
        for output in cell.get("outputs", [])
        if output.get("name") != "stderr"
    )


def warnings(cell: nbformat.NotebookNode) -> list[str]:
    return [
        line
        for output in cell.get("outputs", [])
        if output.get("name") == "stderr"
        for line in output["text"].splitlines()
        if "EMBEDDING_API_KEY is not set" in line
    ]


def test_example_notebook_runs_twice(
    empty_database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second run, on the same database, finds what the first one wrote."""
    monkeypatch.setenv("DATABASE_URL", empty_database_url)
    for run in range(2):
        notebook = nbformat.read(NOTEBOOK, as_version=4)
        NotebookClient(
            notebook,
            timeout=180,
            kernel_name="python3",
            resources={"metadata": {"path": tmp_path}},
        ).execute()

        code = [cell for cell in notebook.cells if cell.cell_type == "code"]
        outputs = [cell_text(cell) for cell in code]
        # The offline embedder says so once, when it first embeds a text: the demo's on the
        # first run, the search's query on the second, which finds the demo built.
        warned = [0] * len(code)
        warned[0 if run == 0 else 5] = 1
        assert [len(warnings(cell)) for cell in code] == warned
        assert outputs[0].endswith("'demo'")
        assert "Demo" in outputs[1] and "small-talk" in outputs[1]
        kyra = next(line for line in outputs[2].splitlines() if "Kyra" in line)
        assert "reminders" in kyra and "friendly" in kyra
        assert "user_profile" in outputs[3] and "superseded" in outputs[3]
        assert outputs[4] == repr(SUPERSEDED)
        assert "switched from coffee to sencha" in outputs[5].splitlines()[1]  # the best hit
        assert "climbed" in outputs[6] and "relationship" in outputs[6]
        assert "created" in outputs[7] and "superseded" in outputs[7] and "kyra" in outputs[7]
