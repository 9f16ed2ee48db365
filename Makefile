# The study's two commands:  `make repro` (set up, materialize data, run the whole study)
#                            `make test`  (set up, run the test suite)
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
KERNEL := attention-rope-study
STAMP  := $(VENV)/.installed
# dvc.yaml's commands call `python`: make it the venv's for everything make runs
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: setup profile data check-params repro test test-fast lab clean-venv

setup: $(STAMP)

# The virtual environment: exact pins from requirements.lock, this repo in editable mode, and the
# Jupyter kernel that papermill runs the notebooks with. Every installed module is byte-compiled here, once: where
# PYTHONDONTWRITEBYTECODE is set (as on the study's machine), a module left uncompiled is compiled again by every
# process (left uncompiled, each stage ran ~10 s slower). compileall on every CPU, not pip's one-by-one compile:
# 85 + 26 s instead of 133 s on 2 cores. It fails on files written for a newer Python (torch ships a 3.12-only
# test helper), which pip skips silently, hence `|| true`.
$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-compile -r requirements.lock
	$(BIN)/python -m compileall -q -j 0 $(VENV)/lib >/dev/null || true
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	$(BIN)/python -m ipykernel install --sys-prefix --name $(KERNEL) --display-name "Python ($(KERNEL))" >/dev/null
	touch $(STAMP)

# `make profile PROFILE=paper` (or `make repro PROFILE=paper`): write profiles/paper.yaml's values into params.yaml;
# PROFILE=default puts the committed values back; without PROFILE, the profile that `profile:` names.
profile: setup
	$(BIN)/python -m lib.config.profiles $(PROFILE)

# data/ from the data sets shipped inside packages; must match the bytes data.dvc pins. User-provided data
# sets that params.yaml trains on (CIFAR, ImageNet-style folders) must be in place under data/.
data: setup
	$(BIN)/python -m lib.data.pin --dvc-file data.dvc --params params.yaml
	$(BIN)/dvc commit --force --quiet data.dvc

check-params: setup profile
	$(BIN)/python -m lib.config params.yaml

# Independent stages side by side (params.yaml `parallel_stages`, lib/run/lanes.py), then `dvc repro` for the rest
repro: check-params data
	$(BIN)/python -P lib/run/lanes.py
	$(BIN)/dvc repro

test: setup
	$(BIN)/python -m pytest

test-fast: setup
	$(BIN)/python -m pytest -m "not slow"

lab: setup
	$(BIN)/jupyter lab

clean-venv:
	rm -rf $(VENV)
