# Re:BEAM developer entry points. `make run` and `make test` do their own set-up.
PYTHON ?= $(shell python3 -c 'import sys; print(sys.executable)')
export PYO3_PYTHON := $(PYTHON)
NODE := target/release/rebeam-node
APP ?= examples/chat

.PHONY: setup build run test test-rust test-python test-chaos chaos lint bench clean

setup:
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -e ./client-py -r tests/requirements.txt

build:
	cargo build --release --workspace

# The main job: a dev node (embedded single-machine default) running the example app.
run: setup build
	$(NODE) --dev --app $(APP)

test: setup build lint test-rust test-python test-chaos

# One test at a time: the controller tests run 3-member groups of real processes with
# sub-second timings, and running them side by side on 2 cores starves their elections.
test-rust:
	cargo test --release --workspace -- --test-threads=1

test-python:
	REBEAM_NODE=$(CURDIR)/$(NODE) $(PYTHON) -m pytest tests/integration -q
	$(NODE) --dev -m pytest tests/conformance -q
	for app in jobqueue sessions; do \
	  $(NODE) --dev -m pytest -p rebeam.testing examples/$$app/tests -q || exit 1; \
	done

# A short fixed-seed chaos run (tests/chaos): faults injected into a real cluster, checked.
test-chaos:
	REBEAM_NODE=$(CURDIR)/$(NODE) REBEAM_CONTROLLER=$(CURDIR)/target/release/rebeam-controller \
		$(PYTHON) -m pytest tests/chaos -q

# The long chaos run: `make chaos TRIALS=100 SEED=7 CONTROLLERS=3,5`; a failing seed reruns alike.
TRIALS ?= 10
SEED ?=
CONTROLLERS ?= 3,5
chaos: setup build
	REBEAM_NODE=$(CURDIR)/$(NODE) REBEAM_CONTROLLER=$(CURDIR)/target/release/rebeam-controller \
		$(PYTHON) tests/chaos/chaos.py --trials $(TRIALS) $(if $(SEED),--seed $(SEED)) \
		--controllers $(CONTROLLERS) --out bench/results/chaos.json

lint:
	cargo fmt --all -- --check
	cargo clippy --release --workspace --all-targets -- -D warnings
	$(PYTHON) -m ruff check client-py examples tests bench
	$(PYTHON) -m mypy --config-file client-py/pyproject.toml client-py/rebeam examples/chat/chat
	for app in jobqueue sessions; do \
	  MYPYPATH=examples/$$app $(PYTHON) -m mypy --config-file client-py/pyproject.toml examples/$$app || exit 1; \
	done
	# The conformance tests pass wrong types on purpose and index optional results directly:
	# checked for the rest (untyped bodies too), without strict optional or full annotations.
	MYPYPATH=client-py:tests/conformance $(PYTHON) -m mypy --config-file client-py/pyproject.toml \
	  --check-untyped-defs --allow-untyped-defs --allow-incomplete-defs --allow-untyped-calls \
	  --allow-any-generics --no-strict-optional --no-warn-return-any --no-warn-unused-ignores \
	  tests/conformance

bench: setup build
	REBEAM_LOG=error $(NODE) --dev --run bench/peers/rebeam_peer.py --mode $${BENCH_MODE:-full} --out bench/results/rebeam.json
	$(PYTHON) bench/peers/rebeam_cluster.py --mode $${BENCH_MODE:-full} --out bench/results/rebeam.json
	bench/run $$([ "$${BENCH_MODE:-full}" = quick ] && echo --quick)

clean:
	cargo clean
