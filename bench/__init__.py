"""FlexBin's benchmarks, run from the repo root as `python -m bench.<name>` (the Makefile's
`bench-<name>` targets): tradeoff, claim, serve, jobs, reliability, pretrained, speed,
ceiling, distillation, train_speed, compose; and gpu_check, for a lent GPU machine
(`bench.training_loops` holds the training loops it and train_speed time: core and torch only).

Each writes `bench/results/<name>.{json,md}` (and plots) and renders its own section of
`bench/results/README.md` from that JSON (`readme_section`); `python -m bench.results_readme`
(`make bench-readme`) regenerates the file. Shared by all: `bench.report` (result files,
markdown tables, plots, the machine record: its docstring shows how a new bench uses them) and
`bench.stack` (the service stack on this machine and the HTTP load helpers). `bench.study` is
the claim study's design, statistics, analysis and report, `bench.baselines` the classic
detectors the benches compare against.
"""
