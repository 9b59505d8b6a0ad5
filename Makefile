# Two commands: `make run` (the demo workflow and its report) and `make test` (the test suite).
# Both set everything up first, incrementally: a second call reinstalls nothing.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CORES ?= all
FMNIST_DEB := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
# Installed-state markers: re-run an install step only when what it installs changed.
TORCH_STAMP := $(VENV)/.torch-installed
DEPS_STAMP := $(VENV)/.deps-installed

.PHONY: setup run report test test-fast test-python test-slurm lint bench clean

setup: $(DEPS_STAMP) fashion-mnist

$(TORCH_STAMP):
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.14.1 torchvision==0.29.1
	touch $@

$(DEPS_STAMP): $(TORCH_STAMP) requirements.txt pyproject.toml
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

# The Debian package of Fashion-MNIST, where apt-get can install it and the data is missing.
.PHONY: fashion-mnist
fashion-mnist:
	@if [ -e $(FMNIST_DEB) ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "Installing Fashion-MNIST (Debian package dataset-fashion-mnist)"; \
		(apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || \
		 (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null)); \
	else \
		echo "Fashion-MNIST not found at $(FMNIST_DEB); the workflow will download it."; \
	fi

run: setup
	$(BIN)/snakemake --cores $(CORES)
	$(MAKE) --no-print-directory report

report: setup
	$(BIN)/snakemake --cores 1 --report results/report.html

test: setup lint test-python test-slurm

# The edit-test loop: the unit tests, without the end-to-end workflow, Slurm and slow tests.
test-fast: setup
	$(BIN)/python -m pytest -m "not workflow and not slurm and not slow"

test-python: setup
	$(BIN)/python -m pytest

# Python (ruff), the rule files' formatting (snakefmt) and Snakemake's own best practices.
lint: setup
	$(BIN)/ruff check .
	$(BIN)/snakefmt --check Snakefile workflow/rules
	$(BIN)/snakemake --lint

test-slurm: setup
	timeout -k 30 3600 bash tests/slurm/run-slurm-test.sh

bench: setup
	$(BIN)/python -m benchmarks.run $(if $(DEVICE),--device $(DEVICE),)

clean:
	rm -rf results .snakemake
