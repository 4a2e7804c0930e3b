# egnn-jax: every target bootstraps the virtual environment it needs.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.DEFAULT_GOAL := help
.PHONY: help install test test-slow train bench lint clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP) ## Create .venv and install egnn-jax with dev extras (idempotent)

# A worker that crashes fails the run at once: pytest-xdist's replacement worker can wait
# forever for the crashed worker's files under --dist loadfile. The slowest tests are listed at
# the end: the suite must stay within CI's ~10 minutes.
test: $(STAMP) ## Fast test suite (CPU; 10 min on the 2-core VM on 2026-12-04, budget ~10: see README, Tests)
	$(PY) -m pytest -m "not slow" -q -n 2 --dist loadfile --max-worker-restart 0 --durations 15

test-slow: $(STAMP) ## Slow tests only (full-size checks)
	$(PY) -m pytest -m slow -q

train: $(STAMP) ## The seed experiment: simulate three-body data, train and compare four models (replaces experiments/results/three_body)
	$(PY) -m egnn_jax.experiments.three_body --overwrite

bench: $(STAMP) ## Benchmarks; JSON lands in benchmarks/results/
	$(PY) benchmarks/bench_train_step.py
	$(PY) benchmarks/bench_sim.py
	$(PY) benchmarks/bench_rollout.py
	$(PY) benchmarks/bench_hegnn.py
	$(PY) benchmarks/bench_eghn.py
	$(PY) benchmarks/bench_fastegnn.py
	$(PY) benchmarks/bench_remat_memory.py --bodies 50 100
	$(PY) benchmarks/bench_scale.py  # add --reference egnn_clean.py (and torch) for the authors' column
	$(PY) benchmarks/bench_edge_chunks.py
	$(PY) benchmarks/bench_sharded_graph.py
	$(PY) benchmarks/bench_init.py

lint: $(STAMP) ## ruff check + format check
	$(PY) -m ruff check src tests benchmarks examples scripts
	$(PY) -m ruff format --check src tests benchmarks examples scripts

clean: ## Remove caches (keeps .venv and results)
	rm -rf .pytest_cache .ruff_cache build dist src/*.egg-info
