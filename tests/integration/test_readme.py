"""Every Python example of README.md and of the guides in docs/, then each script of
examples/ (but the web service), runs as written, in order, on one empty database; and all of
them run again.

Each block runs as a script of its own (a new namespace, `__name__ == "__main__"`), as a
reader who pastes it into a file would run it: a name it does not define or import fails.
Line numbers in a traceback are those of its page. Shell blocks (```bash) are not run, nor
are blocks that name a file of an application (```python myapp/models.py): those are files of
a scratch application in `test_own_tables.py`.
"""

import re
import runpy
from pathlib import Path

import pytest

from skill_store.settings import get_settings

ROOT = Path(__file__).parents[2]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("**/*.md"))]
SCRIPTS = sorted(
    path
    for path in (Path(__file__).parents[2] / "examples").glob("*.py")
    if path.name != "web.py"  # a service, which runs until stopped: see test_web.py
)
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def python_blocks(markdown: str) -> list[tuple[int, str]]:
    """Each ```python block's source, after as many newlines as README lines precede it."""
    return [
        (line := markdown.count("\n", 0, block.start(1)), "\n" * line + block.group(1))
        for block in PYTHON_BLOCK.finditer(markdown)
    ]


def test_python_blocks_are_found() -> None:
    blocks = python_blocks("text\n```python\nx = 1\n```\n```bash\nls\n```\n```python\ny\n```\n")

    assert [(line, source.strip()) for line, source in blocks] == [(2, "x = 1"), (8, "y")]


def test_readme_python_examples_and_example_scripts_run_twice(
    empty_database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A reader runs them again: what one run writes must not make the next one fail."""
    monkeypatch.setenv("DATABASE_URL", empty_database_url)
    get_settings.cache_clear()
    blocks = [
        (page, source)
        for page in PAGES
        for _line, source in python_blocks(page.read_text(encoding="utf-8"))
    ]
    assert len(python_blocks(README.read_text(encoding="utf-8"))) >= 2
    assert len(blocks) >= 7
    assert SCRIPTS

    try:
        for _run in range(2):
            for page, source in blocks:
                exec(compile(source, str(page), "exec"), {"__name__": "__main__"})
            for script in SCRIPTS:
                runpy.run_path(str(script), run_name="__main__")

            printed = capsys.readouterr().out
            assert "Ada went climbing in Fontainebleau" in printed
            assert "You are Kyra.\n- Ada went climbing" in printed
            assert "tokens\nYou are Kyra." in printed  # examples/retrieval.py's context
    finally:
        get_settings.cache_clear()
