# FlexBin: `make run` (API + worker on embedded defaults) and `make test` (whole suite).
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install run worker test lint bench bench-tradeoff bench-jobs bench-serve bench-reliability bench-speed clean

$(STAMP): requirements.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch/torchvision are pinned and come from this machine's disk (pip only).
	$(PY) -m pip install -q -r requirements.txt
	touch $(STAMP)

install: $(STAMP)

run: install
	$(PY) -m api.run

worker: install
	$(PY) -m worker.main

lint: install
	$(PY) -m ruff check core api worker bench tests migrations

test: install lint
	$(PY) -m pytest -q tests

bench: bench-tradeoff bench-jobs bench-serve bench-reliability bench-speed

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

clean:
	rm -rf var .pytest_cache
