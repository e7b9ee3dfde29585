# The two commands of the README: `make serve` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEV_CONFIG := .wsgate/dev.toml
HOST ?= 127.0.0.1
PORT ?= 8765
# Debian packages the tests use: real servers, the browser tests' chromium, and curl
# for the README's HTTP examples.
APT_PACKAGES := redis-server chromium curl

.PHONY: serve test lint install system-deps bench clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "wsgate needs Python 3.11 or newer")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	@touch $@

install: $(STAMP)

$(DEV_CONFIG):
	@mkdir -p $(dir $@)
	@$(BIN)/python -c 'import secrets; print("# Development configuration written by make serve. Not for production.\n[auth]\njwt_secret = \"%s\"" % secrets.token_urlsafe(48))' > $@
	@echo "wrote $@ with a fresh development secret"

serve: $(STAMP) $(DEV_CONFIG)
	@echo
	@echo "  Mint a development token (in another terminal):"
	@echo "    $(BIN)/wsgate token --config $(DEV_CONFIG) --user alice --sub 'chat.>' --pub 'chat.>'"
	@echo "  Connect with any WebSocket client, e.g.:"
	@echo "    $(BIN)/python -m websockets 'ws://$(HOST):$(PORT)/ws?token=TOKEN'"
	@echo "  and type: {\"op\":\"sub\",\"id\":1,\"topic\":\"chat.*\"}"
	@echo "  Or open the chat example in a browser: http://$(HOST):$(PORT)/examples/chat/?token=TOKEN"
	@echo
	$(BIN)/wsgate serve --config $(DEV_CONFIG) --host $(HOST) --port $(PORT)

# Installs the servers the integration tests start (as root or with sudo).
system-deps:
	@missing=""; for p in $(APT_PACKAGES); do command -v $${p} >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

lint: $(STAMP)
	$(BIN)/ruff check src tests scripts examples $(wildcard bench)
	$(BIN)/ruff format --check src tests scripts examples $(wildcard bench)
	$(BIN)/mypy

test: $(STAMP) system-deps lint
	$(BIN)/pytest

BENCH_STAMP := $(VENV)/.bench-installed
$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(BIN)/pip install --quiet -e '.[test,bench]'
	@touch $@

# Every workload against wsgate and its peers in one run; rewrites docs/benchmarks.md.
bench: $(BENCH_STAMP)
	@$(MAKE) --no-print-directory system-deps APT_PACKAGES="redis-server nats-server"
	$(BIN)/python bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
