# fastopt: `make test` and `make demo` set themselves up from nothing (a .venv, the package built
# editable with its Cython extension, the extras they need).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.fastopt-installed
# torch 2.13.0 is a local CPU build on our machines (other versions download GBs).
TORCH_PIN ?= torch==2.13.0

.PHONY: setup test test-gpu demo bench bench-extra info clean

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

# One pytest process per implementation group: torch's OpenMP pool and Numba's slow each other
# down when both run in one process on a small machine (bench/README.md).
BENCH := $(PY) -m pytest -q -p no:cacheprovider bench/bench_kernels.py bench/bench_models.py --benchmark-only
bench: $(STAMP)
	$(BENCH) -k "not torch and not cython" --benchmark-json=bench/results/latest-numba.json
	$(BENCH) -k "cython" --benchmark-json=bench/results/latest-cython.json
	$(BENCH) -k "torch" --benchmark-json=bench/results/latest-torch.json
	$(PY) bench/report.py bench/results/latest-numba.json bench/results/latest-cython.json bench/results/latest-torch.json

# Separate, longer runs: Cython vs Numba at 2^24, the torch adapter on model-shaped sets.
bench-extra: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider bench/bench_cython.py --benchmark-only --benchmark-json=bench/results/latest-cython-vs-numba.json
	$(PY) -m pytest -q -p no:cacheprovider bench/bench_torch_adapter.py --benchmark-only --benchmark-json=bench/results/latest-torch-adapter.json

clean:
	rm -rf build *.egg-info .pytest_cache .benchmarks
