# Quick start: `make train` and `make test` (see README.md).
PYTHON ?= python3
VENV   ?= .venv
VPY    := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: test install venv bench clean

venv: $(VPY)
$(VPY):
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip

# Installs the package (not editable) with the test extra.
install: $(VPY)
	$(VPY) -m pip install -q '.[test]'

# Runs the tests against the installed package: the `pytest` script (unlike
# `python -m pytest`) does not put the source tree on sys.path.
test: install
	HYPOTHESIS_PROFILE=$${HYPOTHESIS_PROFILE:-ci} $(VENV)/bin/pytest -q $(PYTEST_ARGS) tests

bench: install
	$(VPY) -m pip install -q matplotlib threadpoolctl 'torch==2.13.0' || true
	$(VPY) -m bench.gemm

clean:
	rm -rf build dist *.egg-info nnkernels/_core.c nnkernels/*.so .pytest_cache .hypothesis
