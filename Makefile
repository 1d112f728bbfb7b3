# Modelplane task runner. `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PEERS := .venv-peers
NODE_CLIENT := clients/node
# Debian's Go, protoc plugins and Go protobuf/gRPC sources (the Go client builds offline on them).
GO_APT_PACKAGES := golang-go protobuf-compiler protoc-gen-go protoc-gen-go-grpc \
	golang-google-protobuf-dev golang-google-grpc-dev golang-github-golang-protobuf-1-5-dev
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.DEFAULT_GOAL := help

.PHONY: help
help: ## List the targets
	@grep -hE '^[a-z][a-zA-Z_-]*:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  \033[36m%-10s\033[0m %s\n", $$1, $$2}'

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed-all: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[all,demo]'
	@touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@ $(VENV)/.installed-all

.PHONY: install
install: $(VENV)/.installed-all ## Create .venv with the servers, SDK and CLI

.PHONY: install-dev
install-dev: $(VENV)/.installed-dev ## Create .venv with the dev tools too

$(NODE_CLIENT)/node_modules/.package-lock.json: $(NODE_CLIENT)/package-lock.json
	cd $(NODE_CLIENT) && npm ci --no-audit --no-fund

.PHONY: node-deps
node-deps: $(NODE_CLIENT)/node_modules/.package-lock.json ## Install the TypeScript client's locked npm packages

.PHONY: go-tools
go-tools: ## Install Debian's Go toolchain and Go protobuf/gRPC packages when any is missing
	@if [ "$$(dpkg-query -W -f='$${Status}\n' $(GO_APT_PACKAGES) 2>/dev/null | grep -c '^install ok installed$$')" \
		-ne $(words $(GO_APT_PACKAGES)) ] || ! command -v go >/dev/null; then \
		$(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(GO_APT_PACKAGES); \
	fi

.PHONY: demo
demo: $(VENV)/.installed-all ## Run the end-to-end lifecycle demo on the embedded SQLite default
	$(BIN)/python -m modelplane.demo

# Four pytest workers, on 2 cores too: most tests wait on servers, processes and timers. On a
# 2-core machine two workers kept the cores 132% busy (pytest 593 s), four 178% (447 s).
# Each module's tests stay on one worker (module fixtures such as the demo run once).
# `make test PYTEST_ARGS="-n 0 -x tests/sidecar"` runs serially.
PYTEST_ARGS ?= -n 4 --dist loadscope

.PHONY: test
test: $(VENV)/.installed-dev node-deps ## Run the whole test suite (PostgreSQL tests skip unless a server is reachable)
	@$(MAKE) --no-print-directory go-tools || echo "Go packages not installable here: the Go client tests skip"
	$(BIN)/python -m pytest $(PYTEST_ARGS)

.PHONY: gen
gen: $(VENV)/.installed-dev node-deps go-tools ## Regenerate the Python, TypeScript and Go stubs from protos/ (pinned tools)
	$(BIN)/python protos/generate.py

.PHONY: lint
lint: $(VENV)/.installed-dev node-deps go-tools ## Generated code fresh, buf lint, ruff, mypy, tsc, gofmt
	$(BIN)/python protos/generate.py --check
	cd protos && ../$(BIN)/buf lint
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy clients/python/modelplane controlplane sidecar
	cd $(NODE_CLIENT) && npx --no-install tsc -p tsconfig.json --noEmit
	@test -z "$$(gofmt -l clients/go)" || { gofmt -l clients/go; echo "run: gofmt -w clients/go"; exit 1; }

.PHONY: format
format: $(VENV)/.installed-dev ## Apply ruff fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

$(VENV)/.installed-bench: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	@touch $@ $(VENV)/.installed-dev $(VENV)/.installed-all

$(PEERS)/%/.installed: bench/peers/%.txt
	$(PYTHON) -m venv $(PEERS)/$*
	$(PEERS)/$*/bin/python -m pip install --quiet --upgrade pip
	$(PEERS)/$*/bin/python -m pip install --quiet -r $<
	@touch $@

PEER_ENVS := $(patsubst bench/peers/%.txt,$(PEERS)/%/.installed,$(wildcard bench/peers/*.txt))

# Each benchmark prints JSON lines; bench/README.md keeps the latest figures.
BENCHES ?= registry sidecar drift predlog governance rollout

.PHONY: bench
bench: $(VENV)/.installed-bench $(PEER_ENVS) ## Run the benchmarks (peers in their own environments under .venv-peers/)
	@for b in $(BENCHES); do echo "== bench/$$b.py"; $(BIN)/python bench/$$b.py || exit 1; done

.PHONY: clean
clean: ## Remove environments, caches and the demo's state
	rm -rf $(VENV) $(PEERS) .modelplane .mypy_cache .ruff_cache .pytest_cache \
		$(NODE_CLIENT)/node_modules $(NODE_CLIENT)/dist
