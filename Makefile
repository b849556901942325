# FlexBin: `make run` (API + worker on embedded defaults) and `make test` (whole suite).
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install run worker test lint typecheck bench bench-tradeoff bench-jobs bench-serve bench-reliability bench-pretrained bench-speed bench-claim compose-check clean

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

bench: bench-tradeoff bench-jobs bench-serve bench-reliability bench-pretrained bench-speed

bench-tradeoff: install
	$(PY) bench/tradeoff.py

bench-jobs: install
	$(PY) bench/jobs.py

bench-serve: install
	$(PY) bench/serve.py

bench-reliability: install
	$(PY) bench/reliability.py

bench-speed: install
	$(PY) bench/speed.py

bench-pretrained: install
	$(PY) bench/pretrained.py

# The pre-registered layer-priority vs all-at-once study (~2 h on 2 idle cores; resumes).
bench-claim: install
	$(PY) bench/claim.py

# docker-compose.yml built and run for real, with a backup/restore drill (root; installs Docker
# from Debian when missing; ~GBs of disk): bench/results/compose.{json,md}. Not part of `make test`.
compose-check: install
	PY=$(PY) tools/compose_check.sh

clean:
	rm -rf var .pytest_cache .mypy_cache
