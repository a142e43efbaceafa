# Entry points for a fresh machine (see README): `make demo` and `make test` (what CI runs: ruff + every test not
# marked `slow`); `make test-slow` runs only the long integration tier (tests marked `slow`, each covered in
# `make test` by a faster test of the same code path: CONTRIBUTING.md, "Test tiers").
# Both create/reuse .venv and install the pinned requirements (requirements.lock as pip constraints).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DIR ?= runs/demo

export TF_CPP_MIN_LOG_LEVEL := 2
export HF_HUB_OFFLINE := 1

.PHONY: demo test test-slow lint venv clean-venv

venv: $(STAMP)

$(STAMP): setup.py requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c requirements.lock -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) scripts/demo.py --out $(DEMO_DIR)

# The tests share a persistent JAX compilation cache (~/.cache/latent-vla/jax-tests; LATENT_VLA_TEST_JAX_CACHE
# moves it, an empty value switches it off): the first run compiles, later runs mostly read it back.
# `make test` runs on TEST_WORKERS pytest-xdist processes (tracing and XLA compiling a program are single-threaded, so
# one process keeps ~1 of 2 cores busy); whole files go to one worker (--dist loadfile) so module-scoped fixtures are
# built once. Each worker takes up to ~6 GB of memory; TEST_WORKERS=0 runs in a single process.
TEST_WORKERS ?= 2

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -q tests -m "not slow" -n $(TEST_WORKERS) --dist loadfile

test-slow: $(STAMP)
	$(PY) -m pytest -q tests -m slow

lint: $(STAMP)
	$(PY) -m ruff check .

clean-venv:
	rm -rf $(VENV)
