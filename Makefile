# Two commands on a fresh machine (only python3 needed):
#   make repro   set up .venv from the pinned lock, run the DVC pipeline (its first stage fetches MovieLens-100K)
#   make test    set up, then run the whole test suite
# Day two (README "Day two"): make compare, make promote, make rollback, make registry, make push / make pull
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

.PHONY: setup data repro test pipeline clean help mutation image image-test compare promote rollback registry push pull

help:
	@echo "make repro  - set up and run the whole pipeline (dvc repro)"
	@echo "make test   - set up and run the test suite"
	@echo "make image  - build the component image (infra/Dockerfile) with docker or podman"
	@echo "make image-test - build it, then run the pipeline in it (tests/infra/test_image.py)"

setup: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $@

data: $(RAW)

$(RAW): $(STAMP) components/ingest.py
	$(PY) -m components.ingest fetch --dest data/raw/ml-100k

repro: setup
	$(VENV)/bin/dvc repro

# compare the workspace with the last commit and with the experiments: only the params and metrics that differ
compare: setup
	@$(VENV)/bin/dvc params diff
	@$(VENV)/bin/dvc metrics diff --precision 4
	@$(VENV)/bin/dvc exp show --only-changed --precision 4 --drop 'Created|State|Executor'

# register the committed, gate-approved bundle and make it prod; roll prod back to the previous version
promote: setup
	$(PY) -m components.registry promote
rollback: setup
	$(PY) -m components.registry rollback
registry: setup
	@$(PY) -m components.registry show

# share artifacts and the registry: DVC remote (.dvc/config, default ../mir-dvc-remote) and git tags
push: setup
	$(VENV)/bin/dvc push
pull: setup
	$(VENV)/bin/dvc pull

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

# The component image. ENGINE: docker when its daemon answers, else podman. IMAGE_BUILD_FLAGS: extra flags for
# the build (a machine's pip mirrors, --build-arg PYTHON_IMAGE=...; docs/RUNNING.md).
IMAGE             ?= localhost/multi-interest-retrieval:dev
ENGINE            ?= $(shell if docker info >/dev/null 2>&1; then echo docker; elif command -v podman >/dev/null 2>&1; then echo podman; fi)
IMAGE_BUILD_FLAGS ?=

image:
	@test -n "$(ENGINE)" || { echo "make image: no container engine (a running docker daemon or podman) found" >&2; exit 1; }
	nice -n 10 $(ENGINE) build -f infra/Dockerfile -t $(IMAGE) $(IMAGE_BUILD_FLAGS) .

# MIR_IMAGE_TEST=require turns the test's skip (no engine) into a failure; BUILD_IMAGE=0 takes IMAGE as it is.
image-test: setup $(if $(filter 0,$(BUILD_IMAGE)),,image)
	@test -n "$(ENGINE)" || { echo "make image-test: no container engine (a running docker daemon or podman) found" >&2; exit 1; }
	MIR_IMAGE=$(IMAGE) MIR_IMAGE_TEST=require MIR_CONTAINER_ENGINE=$(ENGINE) nice -n 10 $(PY) -m pytest -q -rs tests/infra/test_image.py
