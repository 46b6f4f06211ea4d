"""Build hooks of the documentation site (`hooks:` in mkdocs.yml).

- The repository's own pages (ARCHITECTURE.md, SCALING.md, SECURITY.md, BENCHMARKS.md,
  CHANGELOG.md) join the site as they are, so the guides link to them and the links are
  checked.
- The command line's reference is made from the command itself when the site is built:
  `<!-- cli-reference -->` in a page becomes the `--help` of every command.
"""

import os
from pathlib import Path
from typing import Any

ROOT = Path(__file__).parents[2]
ROOT_PAGES = ("ARCHITECTURE.md", "SCALING.md", "SECURITY.md", "BENCHMARKS.md", "CHANGELOG.md")
CLI_MARKER = "<!-- cli-reference -->"
HELP_WIDTH = "88"


def commands() -> list[tuple[list[str], Any]]:
    """Every command of `skill-store` that runs something, by its words, in help's order."""
    import typer

    from skill_store.cli import app

    found: list[tuple[list[str], Any]] = []

    def walk(command: Any, words: list[str]) -> None:
        found.append((words, command))
        for name, sub in getattr(command, "commands", {}).items():
            if not sub.hidden:
                walk(sub, [*words, name])

    walk(typer.main.get_command(app), [])
    return found


def help_text(words: list[str]) -> str:
    """What `skill-store WORDS --help` prints, at a fixed width."""
    from typer.testing import CliRunner

    from skill_store.cli import app

    result = CliRunner().invoke(
        app, [*words, "--help"], prog_name="skill-store", env={"COLUMNS": HELP_WIDTH}
    )
    if result.exit_code != 0:
        raise RuntimeError(f"skill-store {' '.join(words)} --help: {result.output}")
    return result.output.rstrip()


def cli_reference() -> str:
    """The reference of every command: a section each, its help as the command prints it."""
    columns = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = HELP_WIDTH
    try:
        sections = []
        for words, _command in commands():
            title = " ".join(["skill-store", *words])
            level = "#" * min(2 + len(words), 4)
            sections.append(f"{level} `{title}`\n\n```text\n{help_text(words)}\n```\n")
        return "\n".join(sections)
    finally:
        if columns is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = columns


def on_files(files: Any, config: Any) -> Any:
    """Add the repository's own pages to the site."""
    from mkdocs.structure.files import File

    for name in ROOT_PAGES:
        path = ROOT / name
        if path.exists():
            files.append(File.generated(config, name, abs_src_path=str(path)))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """Put the command line's reference where a page asks for it.

    The repository's own pages link into `docs/`, which is the site's root.
    """
    if page.file.src_uri in ROOT_PAGES:
        markdown = markdown.replace("](docs/", "](")
    if CLI_MARKER in markdown:
        markdown = markdown.replace(CLI_MARKER, cli_reference())
    return markdown
