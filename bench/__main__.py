"""`python -m bench`: run the benchmark suite (see BENCHMARKS.md)."""

from bench.run import main

main()
