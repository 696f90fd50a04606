# Two commands on a fresh machine (only python3 needed):
#   make repro   set up .venv from the pinned lock, fetch MovieLens-100K, run the DVC pipeline
#   make test    set up, then run the whole test suite
# Both are idempotent: the venv is rebuilt only when requirements.lock or pyproject.toml change.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
RAW    := data/raw/ml-100k/.verified

export DVC_NO_ANALYTICS := 1
# DVC stage commands say `python`: make it the project's interpreter
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export GX_ANALYTICS_ENABLED := False
export PYTHONDONTWRITEBYTECODE := 1
# OpenMP threads (faiss, torch) sleep instead of spinning while idle: spinning on a shared or oversubscribed
# machine made faiss searches several times slower (benchmarks/index.py)
export OMP_WAIT_POLICY := PASSIVE

.PHONY: setup data repro test pipeline clean help mutation

help:
	@echo "make repro  - set up and run the whole pipeline (dvc repro)"
	@echo "make test   - set up and run the test suite"

setup: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $@

data: $(RAW)

$(RAW): $(STAMP) components/ingest.py
	$(PY) -m components.ingest fetch --dest data/raw/ml-100k

repro: setup data
	$(VENV)/bin/dvc repro

test: setup data
	@$(PY) -m pytest; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; exit $$rc

# known bugs applied to a copy of the tree must make their tests fail (tools/mutation_check.py; not in make test)
mutation: setup
	$(PY) tools/mutation_check.py

pipeline: setup
	$(PY) -m pipelines.compile

clean:
	rm -rf $(VENV) .pytest_cache
