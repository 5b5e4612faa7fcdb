# Two commands do everything on a fresh machine:
#   make train   # installs into .venv on first use, then trains RealNVP on two moons
#   make test    # installs into .venv (with test tools) on first use, then runs the tests
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | cksum | cut -d' ' -f1)

.PHONY: train test lint bench-speed bench-quality clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[test]"
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

train: $(STAMP)
	$(BIN)/realnvp train --force $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -q
	$(BIN)/ruff check src tests benchmarks examples

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks examples

bench-speed: $(STAMP)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[test,bench]"
	$(BIN)/python benchmarks/speed.py $(ARGS)

bench-quality: $(STAMP)
	$(BIN)/python benchmarks/quality.py $(ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache
