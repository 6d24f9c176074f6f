# bnn-bench: `make run` runs the default job, `make test` runs the test suite (both set up first).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
FMNIST := /usr/share/datasets/fashion-mnist

.PHONY: setup run test test-fast lint format bench clean data

setup: $(STAMP) data

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

# FashionMNIST ships as a Debian package; install it when apt-get is there and it is missing.
data:
	@if [ ! -d $(FMNIST) ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing dataset-fashion-mnist (Debian) ..."; \
		(apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null) \
			|| echo "could not install dataset-fashion-mnist; FashionMNIST runs need dataset.root"; \
	fi

run: setup
	$(BIN)/bnn-bench $(ARGS)

test: setup
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

# Particle-example gradient throughput (docs/performance.md); ARGS="--models lenet5 --particles 16"
bench: setup
	$(BIN)/python scripts/bench_throughput.py --json outputs/bench_throughput.json $(ARGS)

lint: setup
	$(BIN)/ruff check bnn_bench tests scripts
	$(BIN)/ruff format --check bnn_bench tests scripts

format: setup
	$(BIN)/ruff format bnn_bench tests scripts
	$(BIN)/ruff check --fix bnn_bench tests scripts

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache
