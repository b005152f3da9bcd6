# ToolScore Mesh. `make run` starts the mesh, `make test` runs the suite; both
# create or refresh .venv first, so they work on a fresh clone.
SHELL := /bin/bash
# Resolve the real interpreter once (never spawn through a pyenv shim).
PYTHON_BOOT ?= $(shell python3 -c 'import sys; print(sys.executable)')
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PROTOS := $(wildcard proto/toolscore/v1/*.proto)
GEN_STAMP := generated/.stamp

.PHONY: venv proto proto-lock run cluster test lint bench walk clean node-example task executor-env check-sandbox check-test-packages mutation

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON_BOOT) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e ".[dev]"
	echo "$(CURDIR)/generated" > "$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/toolscore_generated.pth"
	touch $(STAMP)

proto: $(GEN_STAMP)

$(GEN_STAMP): $(PROTOS) $(STAMP) Makefile
	rm -rf generated/toolscore generated/toolscore.binpb
	$(PY) -m grpc_tools.protoc -Iproto --python_out=generated --pyi_out=generated --grpc_python_out=generated \
		--include_source_info --descriptor_set_out=generated/toolscore.binpb $(PROTOS)
	touch $@

# Record the protos' wire contract in proto/toolscore/v1/contract.lock.json; `make test` fails when a
# change breaks it (docs/grpc.md). ALLOW_BREAKING=1 accepts a breaking change on purpose.
proto-lock: proto
	$(PY) -m tests.contract.lock --write $(if $(ALLOW_BREAKING),--allow-breaking)

run: proto check-sandbox
	$(PY) -m services.mesh

# Several nodes on one Redis behind HAProxy, on this machine (docs/cluster.md): redis-server on
# 127.0.0.1:6380, hubs on :50051 and :50061, an executor per hub, edges on :8082 and :8083, HAProxy on
# :8080. Needs Debian's redis-server and haproxy (it says how to install them when missing).
# CLUSTER_FLAGS: e.g. "--lb-port 9080" (python -m services.mesh --help).
cluster: proto check-sandbox
	$(PY) -m services.mesh --cluster $(CLUSTER_FLAGS)

# The Python executor and installed MCP servers are isolated with bubblewrap and a seccomp filter:
# as root with apt, install what is missing (saying so); otherwise print the command and stop
# (services/mesh/prerequisites.py; system python3, standard library only).
check-sandbox:
	@$(PYTHON_BOOT) -m services.mesh.prerequisites

# The same for the test suite, which also needs redis-server and chromium.
check-test-packages:
	@$(PYTHON_BOOT) -m services.mesh.prerequisites --test

# The executor's own environment (pandas, matplotlib, allowlisted packages) under data/executor-env,
# mounted read-only into every sandbox; never the mesh's venv. Idempotent; the executor also
# creates it in the background on first start.
executor-env: $(STAMP)
	$(PY) -m services.executor.envs

# make task TASK="..." : one task through the reasoning runtime against a running mesh (needs OPENAI_BASE_URL).
task: proto
	$(PY) -m services.runtime "$(TASK)"

test: proto check-test-packages node-example executor-env
	$(PY) -m pytest

node-example:
	@if [ -d examples/node-tool-server ] && command -v npm >/dev/null; then cd examples/node-tool-server && { [ -d node_modules ] || npm ci --no-audit --no-fund --loglevel=error; }; fi

# ruff, mypy, and the layers (import-linter contracts in pyproject.toml's [tool.importlinter]).
lint: proto
	$(PY) -m ruff check services edge tests bench mutation
	$(PY) -m ruff format --check services edge tests bench mutation
	$(PY) -m mypy services edge bench
	$(VENV)/bin/lint-imports --no-cache --no-logo

bench: proto
	$(PY) -m bench

# The files one REST execute and one MCP tools/call cross, edge to sandbox (docs/architecture.md).
walk: proto
	$(PY) -m bench.walk

# Mutation testing of the modules that carry the defences (docs/mutation.md); not part of `make test`.
# TARGETS="edge/origin.py ..." runs only those; writes mutation/REPORT.md; fails below the goal.
mutation: proto
	$(PY) -m mutation.run $(TARGETS)

clean:
	rm -rf generated/toolscore generated/toolscore.binpb $(GEN_STAMP) run
