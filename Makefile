# connquota developer entry points. `make demo` runs the main job, `make test` runs the tests.
# Both create the virtualenv and install everything they need on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: venv demo test lint unit controlplane crds clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

venv: $(BIN)/.installed

demo: venv
	$(BIN)/connquota demo

controlplane:
	bash hack/build-control-plane.sh

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check connquota tests bench
	$(BIN)/lint-imports

unit: venv
	$(BIN)/pytest tests/unit

test: venv controlplane lint
	$(BIN)/pytest

crds: venv
	$(BIN)/connquota crd --out crds/
	cp crds/*.yaml charts/connquota/crds/

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
