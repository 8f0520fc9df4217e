"""Speed and memory benchmarks, each against a peer measured in the same run (a ratio).

Every `benchmarks/bench_<name>.py` module has a `main()` that prints a table and writes
`artifacts/benchmarks/<name>.json`. Run all with `python -m benchmarks`, or some by name:
`python -m benchmarks data`.
"""
