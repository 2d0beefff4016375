# Re:BEAM developer entry points. `make run` and `make test` do their own set-up.
PYTHON ?= $(shell python3 -c 'import sys; print(sys.executable)')
export PYO3_PYTHON := $(PYTHON)
NODE := target/release/rebeam-node
APP ?= examples/chat

.PHONY: setup build run test test-rust test-python test-deploy lint bench clean image compose-env

setup:
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -e ./client-py -r tests/requirements.txt

build:
	cargo build --release --workspace

# The main job: a dev node (embedded single-machine default) running the example app.
run: setup build
	$(NODE) --dev --app $(APP)

test: setup build lint test-rust test-python test-deploy

# One test at a time: the controller tests run 3-member groups of real processes with
# sub-second timings, and running them side by side on 2 cores starves their elections.
test-rust:
	cargo test --release --workspace -- --test-threads=1

test-python:
	REBEAM_NODE=$(CURDIR)/$(NODE) $(PYTHON) -m pytest tests/integration -q
	$(NODE) --dev -m pytest tests/conformance -q

# The Helm chart rendered and validated, the image run as the chart's pods, the compose
# cluster broken on purpose (tests/deploy; needs Docker).
test-deploy: image
	$(PYTHON) -m pytest tests/deploy -q

# rebeam:dev from the release binaries built here, on a Debian base made locally
# (debootstrap, cached by a hash of its inputs): no registry needed.
IMAGE ?= rebeam:dev
PIP_QUIET := --quiet --disable-pip-version-check --root-user-action=ignore --no-build-isolation
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

# deploy/docker/.env: a fresh cluster secret and client token for docker compose (kept out
# of git), and client.env for the `rebeam` command on the host.
compose-env: deploy/docker/.env
deploy/docker/.env:
	deploy/docker/gen-env.sh

lint:
	cargo fmt --all -- --check
	cargo clippy --release --workspace --all-targets -- -D warnings
	$(PYTHON) -m ruff check client-py examples tests bench

bench: setup build
	REBEAM_LOG=error $(NODE) --dev --run bench/peers/rebeam_peer.py --mode $${BENCH_MODE:-full} --out bench/results/rebeam.json
	$(PYTHON) bench/peers/rebeam_cluster.py --mode $${BENCH_MODE:-full} --out bench/results/rebeam.json
	bench/run $$([ "$${BENCH_MODE:-full}" = quick ] && echo --quick)

clean:
	cargo clean
