"""`python -m bench.startup`: the time to import skill_store and to print `skill-store --help`.

Each case is a fresh interpreter, timed from start to exit, beside its baseline, which
imports the dependencies alone: the five packages skill_store is built on (with the modules
of them it uses), and for the command the same plus typer printing a command's help. Cases
run in turns, after warm-up runs that also write the bytecode caches an installed package
has; the figures are the medians (and 90th percentiles) of the runs. No database is used.
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

DEPENDENCIES = "import sqlmodel, asyncpg, pgvector, pydantic_settings, numpy"
"""The five packages `import skill_store` needs, by their top-level modules."""

DEPENDENCIES_AS_USED = (
    f"{DEPENDENCIES}, sqlmodel.ext.asyncio.session, pgvector.sqlalchemy, pgvector.asyncpg"
)
"""The same, with the modules of them that skill_store imports: the async session, the
vector column type and asyncpg's vector codec."""

TYPER_HELP = f"""
{DEPENDENCIES_AS_USED}
import typer

app = typer.Typer(add_completion=False)


@app.command()
def command() -> None:
    '''A command.'''


app(["--help"])
"""


@dataclass
class Case:
    """A command to time, its runs' wall times in seconds, and the baseline it is held to."""

    name: str
    command: list[str]
    baseline: str | None = None
    times: list[float] = field(default_factory=list)

    def run(self) -> float:
        """Run the command once in a fresh interpreter; return its wall time."""
        environment = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        start = time.perf_counter()
        subprocess.run(self.command, env=environment, capture_output=True, check=True)
        return time.perf_counter() - start

    def percentile(self, share: float) -> float:
        """The wall time that `share` of the runs did not exceed, in milliseconds."""
        return (
            statistics.quantiles(self.times, n=100, method="inclusive")[round(share * 100) - 1]
            * 1000
        )


def cases() -> list[Case]:
    """The cases, each baseline before the cases held to it."""
    python = sys.executable
    script = shutil.which("skill-store", path=os.path.dirname(python))
    if script is None:
        raise SystemExit("skill-store is not installed beside this interpreter")
    return [
        Case("interpreter alone", [python, "-c", "pass"]),
        Case("dependencies", [python, "-c", DEPENDENCIES]),
        Case("dependencies as used", [python, "-c", DEPENDENCIES_AS_USED]),
        Case("import skill_store", [python, "-c", "import skill_store"], "dependencies as used"),
        Case("dependencies + typer --help", [python, "-c", TYPER_HELP]),
        Case("skill-store --help", [script, "--help"], "dependencies + typer --help"),
    ]


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the command line, run the cases in turns and print a table."""
    parser = argparse.ArgumentParser(prog="python -m bench.startup", description=__doc__)
    parser.add_argument("--runs", type=int, default=30, help="timed runs of each case")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs of each case first")
    args = parser.parse_args(argv)

    timed = cases()
    before = os.getloadavg()
    for _ in range(args.warmup):
        for case in timed:
            case.run()
    for _ in range(args.runs):
        for case in timed:
            case.times.append(case.run())
    after = os.getloadavg()

    by_name = {case.name: case for case in timed}
    print(f"{args.runs} runs of each case, in turns; Python {sys.version.split()[0]}")
    print()
    print("| case | p50 | p90 | p50 / baseline's p50 |")
    print("|---|---|---|---|")
    for case in timed:
        ratio = ""
        if case.baseline is not None:
            baseline = by_name[case.baseline]
            ratio = f"{case.percentile(0.5) / baseline.percentile(0.5):.2f}x {baseline.name}"
        p50, p90 = case.percentile(0.5), case.percentile(0.9)
        print(f"| {case.name} | {p50:.0f} ms | {p90:.0f} ms | {ratio} |")
    ours = by_name["import skill_store"].percentile(0.5)
    print()
    print(
        f"import skill_store / dependencies (top-level modules only):"
        f" {ours / by_name['dependencies'].percentile(0.5):.2f}x"
    )
    print(
        f"load average {before[0]:.2f} before, {after[0]:.2f} after (1 min); {os.cpu_count()} CPUs"
    )


if __name__ == "__main__":
    main()
