# FlexBin: `make run` (API + worker on embedded defaults) and `make test` (whole suite).
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
BENCHES := tradeoff jobs serve reliability pretrained speed ceiling distillation train_speed fused_binarizers claim

.PHONY: install run worker test lint typecheck bench $(addprefix bench-,$(BENCHES)) bench-readme compose-check clean

# Dependencies are declared once, in pyproject.toml: a change there reinstalls.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch/torchvision are pinned and come from this machine's disk (pip only).
	$(PY) -m pip install -q -e '.[test,bench]'
	touch $(STAMP)

install: $(STAMP)

run: install
	$(PY) -m api.run

worker: install
	$(PY) -m worker.main

lint: install
	$(PY) -m ruff check core service api worker bench tests testkit migrations tools
	$(VENV)/bin/lint-imports
	$(VENV)/bin/hadolint Dockerfile docker/local/*.Dockerfile

# mypy on core/ (strict), service/, api/ and worker/ (pyproject.toml [tool.mypy]); fails on any error.
typecheck: install
	$(PY) -m mypy

test: install lint typecheck
	$(PY) -m pytest -q tests

# `make bench-<name>` runs `python -m bench.<name>` (results in bench/results/); `make bench` runs
# them all but the claim study (~2 h on 2 idle cores; resumes: `make bench-claim`), then
# regenerates bench/results/README.md from the results (`make bench-readme`).
bench: $(addprefix bench-,$(filter-out claim,$(BENCHES)))
	$(PY) -m bench.results_readme

$(addprefix bench-,$(BENCHES)): bench-%: install
	$(PY) -m bench.$*

bench-readme: install
	$(PY) -m bench.results_readme

# docker-compose.yml built and run for real, with a backup/restore drill (root; installs Docker
# from Debian when missing; ~GBs of disk): bench/results/compose.{json,md}. Not part of `make test`.
compose-check: install
	PY=$(PY) tools/compose_check.sh

clean:
	rm -rf var .pytest_cache .mypy_cache
