"""FlexBin's benchmarks, run as `python -m bench.<name>` (the Makefile's `bench-*` targets).

Each writes `bench/results/<name>.{json,md}` (and plots); `bench.report` holds the shared
table, plot and machine-record helpers, and `bench/results/README.md` is generated from the
JSON files. `bench.study` is the claim study's design and statistics, `bench.baselines` the
classic detectors the benches compare against.
"""
