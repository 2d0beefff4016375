# Re:BEAM developer entry points. `make run` and `make test` do their own set-up.
PYTHON ?= $(shell python3 -c 'import sys; print(sys.executable)')
export PYO3_PYTHON := $(PYTHON)
NODE := target/release/rebeam-node
APP ?= examples/chat

.PHONY: setup build run test test-rust test-python test-chaos test-scale test-deploy chaos lint bench bench-scale clean image compose-env compose-tls fuzz fuzz-tools fuzz-build fuzz-corpus fuzz-run test-fuzz

setup:
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -e ./client-py -r tests/requirements.txt

build:
	cargo build --release --workspace

# The main job: a dev node (embedded single-machine default) running the example app.
run: setup build
	$(NODE) --dev --app $(APP)

test: setup build lint test-rust test-python test-fuzz test-chaos test-scale test-deploy

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
# cargo-fuzz (libFuzzer) targets in fuzz/, its own workspace: one per decoder of network
# input (docs/security.md, "Fuzzing"). `make fuzz` runs each FUZZ_SECONDS (default 60);
# `make test-fuzz` is the bounded run of `make test`: the regression inputs, then each target
# FUZZ_CI_SECONDS (default 10). New inputs go to fuzz/target/work/ (not the committed seed
# corpus fuzz/corpus/); a crash is written to fuzz/artifacts/<target>/: keep it under
# fuzz/regressions/<target>/ with its fix. Without sanitizers (safe Rust: the bugs sought are
# panics, overflows, hangs and blow-ups) and with debug assertions (overflow checks).
FUZZ_TARGETS := peer_frames client_wire gateway_requests manifest archive raft_payloads \
	controller_requests submit_app
FUZZ_SECONDS ?= 60
FUZZ_CI_SECONDS ?= 10
# The nightly build of node and controller for libFuzzer takes many minutes the first time:
# its target directory lives outside the checkout, so a fresh clone on the same machine (CI)
# builds only what changed.
FUZZ_TARGET_DIR ?= $(HOME)/.cache/rebeam/fuzz-target
FUZZ_FLAGS := --fuzz-dir fuzz --sanitizer none --debug-assertions --target-dir $(FUZZ_TARGET_DIR)
FUZZ_BIN = $(FUZZ_TARGET_DIR)/$(shell rustc -vV | sed -n 's/^host: //p')/release

fuzz-tools:
	@rustup toolchain list 2>/dev/null | grep -q '^nightly' || { \
	  echo "cargo fuzz needs a nightly Rust toolchain (libFuzzer's -Z flags) and none is installed:"; \
	  echo "  rustup toolchain install nightly   (needs network; the project itself builds on stable)"; \
	  exit 1; }
	@command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked

fuzz-build: fuzz-tools
	cargo +nightly fuzz build $(FUZZ_FLAGS)

# Rewrites the seed corpus from the project's own types (fuzz/src/seeds.rs).
fuzz-corpus: fuzz-build
	for t in $(FUZZ_TARGETS); do REBEAM_FUZZ_WRITE_CORPUS=fuzz/corpus $(FUZZ_BIN)/$$t || exit 1; done

fuzz: fuzz-build
	@$(MAKE) --no-print-directory fuzz-run FUZZ_RUN_SECONDS=$(FUZZ_SECONDS)

test-fuzz: fuzz-build
	@$(MAKE) --no-print-directory fuzz-run FUZZ_RUN_SECONDS=$(FUZZ_CI_SECONDS)

fuzz-run:
	@for t in $(FUZZ_TARGETS); do \
	  if [ -n "$$(ls fuzz/regressions/$$t 2>/dev/null)" ]; then \
	    $(FUZZ_BIN)/$$t fuzz/regressions/$$t/* || exit 1; \
	  fi; \
	  mkdir -p fuzz/target/work/$$t fuzz/artifacts/$$t; \
	  $(FUZZ_BIN)/$$t fuzz/target/work/$$t fuzz/corpus/$$t -max_total_time=$(FUZZ_RUN_SECONDS) \
	    -timeout=10 -rss_limit_mb=2048 -artifact_prefix=fuzz/artifacts/$$t/ -print_final_stats=1 \
	    2>fuzz/target/work/$$t.log || { tail -40 fuzz/target/work/$$t.log; \
	    echo "fuzz target $$t failed: the input is in fuzz/artifacts/$$t/"; exit 1; }; \
	  grep -E '^(stat::number_of_executed_units|stat::average_exec_per_sec|#[0-9]+.*DONE)' \
	    fuzz/target/work/$$t.log | tr '\n' ' ' | sed "s/^/$$t: /"; echo; \
	done

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

# The scale harness (bench/scale): simulated nodes against a real 3-member controller group.
# `make test-scale` (~25 s: 100 nodes, 10,000 names, the leader killed under write load) fails
# when a healthy node is declared dead or goes a fence without a renewal, or a change does not
# reach every node. In `make test` since the pre-vote (a starved follower no longer deposes a
# live leader): 21 of 21 runs passed at load average 4–18 on 2 cores; see docs/capacity.md.
# The long one writes bench/results/scale.json.
SCALE_NODES ?= 1000
SCALE_NAMES ?= 100000
test-scale:
	target/release/rebeam-scale-bench --nodes 100 --names 10000 --seconds 3 --probes 5 \
		--real-nodes 0 --check
bench-scale: build
	target/release/rebeam-scale-bench --nodes $(SCALE_NODES) --names $(SCALE_NAMES) \
		--out bench/results/scale.json

# The Helm chart rendered and validated, the image run as the chart's pods, the compose
# cluster broken on purpose (tests/deploy; needs Docker).
test-deploy: image
	$(PYTHON) -m pytest tests/deploy -q

# rebeam:dev from the release binaries built here, on a Debian base made locally
# (debootstrap, cached by a hash of its inputs): no registry needed.
IMAGE ?= rebeam:dev
PIP_QUIET := --quiet --disable-pip-version-check --root-user-action=ignore
image: build
	rm -rf deploy/docker/.build/bin deploy/docker/.build/site
	mkdir -p deploy/docker/.build/bin deploy/docker/.build/site
	strip --strip-debug -o deploy/docker/.build/bin/rebeam-node target/release/rebeam-node
	strip --strip-debug -o deploy/docker/.build/bin/rebeam-controller target/release/rebeam-controller
	# The package's dependencies (grpcio, protobuf) are fetched once per pyproject.toml.
	stamp=deploy/docker/.build/deps-$$(sha256sum client-py/pyproject.toml | cut -c1-12).stamp; \
	if [ ! -e $$stamp ]; then rm -rf deploy/docker/.build/deps deploy/docker/.build/deps-*.stamp && \
		$(PYTHON) -m pip install $(PIP_QUIET) --target deploy/docker/.build/deps ./client-py && \
		rm -rf deploy/docker/.build/deps/rebeam deploy/docker/.build/deps/rebeam-*.dist-info && \
		touch $$stamp; fi
	$(PYTHON) -m pip install $(PIP_QUIET) --no-deps --target deploy/docker/.build/site ./client-py
	cp -a deploy/docker/.build/deps/. deploy/docker/.build/site/
	base=$$(deploy/docker/base-image.sh) && docker build --quiet \
		-f deploy/docker/Dockerfile --build-arg BASE=$$base --build-arg BUILDER=$$base \
		--build-arg BINARIES=prebuilt -t $(IMAGE) .

# deploy/docker/.env: a fresh cluster secret, node secret and client token for docker compose
# (kept out of git; an existing one is kept), node.env (what nodes get) and client.env for the
# `rebeam` command (https, the CA; rewritten each time, so an older http one is replaced);
# deploy/docker/tls: the compose cluster's TLS certificates (compose-tls).
compose-env: compose-tls
	deploy/docker/gen-env.sh

# deploy/docker/tls: a private CA and a certificate per compose member (kept out of git), which
# docker-compose.yml mounts; an existing CA is never replaced.
compose-tls: deploy/docker/tls/ca/ca.crt
deploy/docker/tls/ca/ca.crt:
	deploy/docker/gen-tls.sh

lint:
	cargo fmt --all -- --check
	cargo fmt --manifest-path fuzz/Cargo.toml -- --check
	cargo clippy --release --workspace --all-targets -- -D warnings
	# A node built without the embedded controller (no `dev` feature) must stay buildable.
	cargo clippy --release -p rebeam-node --no-default-features --bins -- -D warnings
	$(PYTHON) -m ruff check client-py examples tests bench
	# The client's generated stubs must match proto/ (regenerate: python client-py/tools/gen_proto.py).
	$(PYTHON) client-py/tools/gen_proto.py --check
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
	# The integration, chaos and deploy tests, the benchmarks and the image's scripts, in one run:
	# they import the harness (and each other) by the paths they put on sys.path; bench/run and
	# the image's two scripts are Python without the .py.
	MYPYPATH=client-py:tests/integration:tests/chaos:bench/peers $(PYTHON) -m mypy \
	  --config-file client-py/pyproject.toml --scripts-are-modules \
	  tests/integration tests/chaos tests/deploy bench bench/run \
	  deploy/docker/rebeam-cli deploy/docker/rebeam-health

bench: setup build
	REBEAM_LOG=error $(NODE) --dev --run bench/peers/rebeam_peer.py --mode $${BENCH_MODE:-full} --out bench/results/rebeam.json
	$(PYTHON) bench/peers/rebeam_cluster.py --mode $${BENCH_MODE:-full} --out bench/results/rebeam.json
	bench/run $$([ "$${BENCH_MODE:-full}" = quick ] && echo --quick)

clean:
	cargo clean
