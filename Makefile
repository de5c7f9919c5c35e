# connquota developer entry points. `make demo` runs the main job, `make test` runs the tests.
# Both create the virtualenv and install everything they need on a fresh machine.
# The test tiers (what each covers, how long it takes) are in docs/testing.md:
#   make check   lint + unit + component tests, in parallel: the inner loop (< 2 min)
#   make test    lint + every test but the opt-in tiers, with the real API server (CI)
#   make soak    the long runs: the 10-minute pod-harness soak and the demo (CI, own step)
#   make chaos   fault-injection runs (opt-in)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# pytest-xdist workers for the tests without a control plane. They mostly wait on (scaled)
# exchange windows rather than compute, so more workers than the 2 cores still pay off.
# worksteal: an idle worker takes queued tests from a busy one, so the 10-16 s gateway
# recovery tests (adjacent in collection order) do not pile up on one worker.
WORKERS ?= 6
XDIST = -n $(WORKERS) --dist worksteal
TIER := PYTEST=$(BIN)/pytest bash hack/pytest-tier.sh
# Every test is in exactly one of these selections (tests/conftest.py marks tests/cluster/**
# as `cluster`); soak and chaos are the opt-in tiers.
OPT_IN := not soak and not chaos
PARALLEL := not cluster and not serial and $(OPT_IN)
# The inner loop leaves out the real exchange client libraries and the relay fleets (heavy
# imports, several gateway processes each): `make test` runs them.
CHECK_PARALLEL := $(PARALLEL) and not slow
SERIAL_FAST := serial and not cluster and $(OPT_IN)
CLUSTER := cluster and $(OPT_IN)

.PHONY: venv demo test check lint typecheck unit soak chaos controlplane proxies wheelhouse crds clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

venv: $(BIN)/.installed

demo: venv
	$(BIN)/connquota demo

# Real forward proxies (tinyproxy, squid, microsocks) for the proxy-egress tests, cached
# outside the repository from pinned Debian packages (no root, no system change).
proxies:
	bash hack/install-proxies.sh >/dev/null

controlplane:
	bash hack/build-control-plane.sh

wheelhouse: venv
	bash hack/image-wheelhouse.sh >/dev/null
	bash hack/build-kstatus.sh
	bash hack/build-promtool.sh
	bash hack/prometheus-operator-crds.sh

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check connquota tests bench
	$(BIN)/lint-imports
	$(MAKE) --no-print-directory typecheck

# The whole package is held free of mypy errors (strict on api and planner: pyproject.toml).
typecheck: venv
	$(BIN)/mypy connquota

unit: venv
	$(TIER) unit empty-fails $(XDIST) -m "$(PARALLEL)" tests/unit

check: lint proxies
	$(TIER) check-parallel empty-fails $(XDIST) -m "$(CHECK_PARALLEL)" tests
	$(TIER) check-serial empty-ok -m "$(SERIAL_FAST)" tests

test: venv controlplane proxies wheelhouse lint
	$(TIER) test-parallel empty-fails $(XDIST) -m "$(PARALLEL)" tests
	$(TIER) test-serial empty-ok -m "$(SERIAL_FAST)" tests
	$(TIER) test-cluster empty-fails -m "$(CLUSTER)" tests

soak: venv controlplane
	$(TIER) soak empty-fails -m "soak" tests

chaos: venv controlplane
	rm -f .chaos-results.jsonl
	$(TIER) chaos empty-fails -m "chaos" tests
	$(BIN)/python hack/chaos-table.py

crds: venv
	$(BIN)/connquota crd --out crds/
	cp crds/*.yaml charts/connquota/crds/

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
