# fastopt: `make test` and `make demo` set themselves up from nothing (a .venv, the package built
# editable with its Cython extension, the extras they need).  The setup is redone whenever
# pyproject.toml or a kernel source changes: the Cython extension is generated from the rules, so
# an edited rule is always rebuilt before the tests run (and the tests fail on a stale build).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.fastopt-installed
# what the compiled extension is generated and built from
KERNEL_SOURCES := setup.py fastopt/kernels/rules.py fastopt/kernels/_codegen.py \
                  fastopt/kernels/_codecs.py fastopt/kernels/_qmaps.py \
                  fastopt/kernels/_omp_shim.h
# torch 2.13.0 is a local CPU build on our machines (other versions download GBs).
TORCH_PIN ?= torch==2.13.0
# Build only the Cython ISA variants this CPU runs (setup.py; `all` for every one the compiler
# takes, as a wheel wants): each variant is minutes of gcc, and tests skip what the CPU can't run.
ISA_BUILDS ?= host
# The suite runs on every core (pytest-xdist): it is mostly Numba compiling its loops, one
# compile per core; `make test PYTEST_JOBS=0` runs it in one process.
PYTEST_JOBS ?= auto
PYTEST := $(PY) -m pytest -q $(if $(filter 0,$(PYTEST_JOBS)),,-n $(PYTEST_JOBS) --dist worksteal)

.PHONY: setup test test-gpu demo bench bench-extra info clean

# The build runs in the venv (--no-build-isolation), with the venv's Cython: one build, and the
# same toolchain a later rebuild uses.
$(STAMP): pyproject.toml $(KERNEL_SOURCES)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip "setuptools>=77" wheel "Cython>=3.0" "numpy>=1.24"
	$(PIP) install -q "$(TORCH_PIN)"
	FASTOPT_ISA_BUILDS=$(ISA_BUILDS) $(PIP) install -q --no-build-isolation -e ".[test,demo,torch,cuda]"
	touch $(STAMP)

setup: $(STAMP)

test: $(STAMP)
	$(PYTEST) tests
	NUMBA_ENABLE_CUDASIM=1 $(PYTEST) tests/cuda -p no:cacheprovider

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
	$(PY) -c "import torchao" 2>/dev/null || $(PIP) install -q "torchao>=0.12"
	$(BENCH) -k "not torch and not cython" --benchmark-json=bench/results/latest-numba.json
	$(BENCH) -k "cython" --benchmark-json=bench/results/latest-cython.json
	$(BENCH) -k "torch" --benchmark-json=bench/results/latest-torch.json
	$(PY) bench/report.py bench/results/latest-numba.json bench/results/latest-cython.json bench/results/latest-torch.json
	$(PY) bench/bench_formats.py --out bench/results
	$(PY) bench/bench_optimizers.py --out bench/results

# Separate, longer runs: Cython vs Numba at 2^24, the torch adapter on model-shaped sets.
bench-extra: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider bench/bench_cython.py --benchmark-only --benchmark-json=bench/results/latest-cython-vs-numba.json
	$(PY) -m pytest -q -p no:cacheprovider bench/bench_torch_adapter.py --benchmark-only --benchmark-json=bench/results/latest-torch-adapter.json

clean:
	rm -rf build *.egg-info .pytest_cache .benchmarks fastopt/kernels/_cython*.so
