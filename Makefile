# fastopt: `make test` and `make demo` set themselves up from nothing (a .venv, the package built
# editable with its Cython extension, the extras they need).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.fastopt-installed
# torch 2.13.0 is a local CPU build on our machines (other versions download GBs).
TORCH_PIN ?= torch==2.13.0

.PHONY: setup test test-gpu demo bench info clean

$(STAMP): pyproject.toml setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip "setuptools>=64" wheel
	$(PIP) install -q "$(TORCH_PIN)"
	$(PIP) install -q -e ".[test,demo,torch,cuda]"
	touch $(STAMP)

setup: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q tests
	NUMBA_ENABLE_CUDASIM=1 $(PY) -m pytest -q tests/cuda -p no:cacheprovider

test-gpu: $(STAMP)
	$(PY) -m pytest -q tests/cuda -m "gpu or not gpu"

demo: $(STAMP)
	$(PY) -m fastopt demo

info: $(STAMP)
	$(PY) -m fastopt info

bench: $(STAMP)
	$(PY) -m pytest -q bench --benchmark-only --benchmark-json=bench/results/latest.json

clean:
	rm -rf build *.egg-info .pytest_cache .benchmarks
