# Developer entry points for drainer. `make help` lists the targets.
#
# Targets that need PostgreSQL and Redis (run, test) get a throwaway cluster
# from scripts/with-postgres.sh and a throwaway redis-server from
# scripts/with-redis.sh, unless DATABASE_URL / REDIS_URL are already set (then
# those are used).

CARGO ?= cargo
ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help run test check doc bench rolling-restart hot-restart lint-deploy fmt clippy build clean

# Fail early, with one line, when a cargo-based target is asked for without Rust.
ifneq ($(filter run test check doc bench rolling-restart hot-restart fmt clippy build clean,$(MAKECMDGOALS)),)
  ifeq ($(shell command -v $(CARGO) 2>/dev/null),)
    $(error $(CARGO) not found: install Rust with rustup, see https://rustup.rs)
  endif
endif

help: ## list the targets
	@echo "usage: make <target>"
	@awk -F ":.*## " '/^[a-z-]+:.*## /{ printf "  %-16s %s\n", $$1, $$2 }' $(MAKEFILE_LIST)

run: ## run the server (release build), admin listener on a free port; extra server args via ARGS="..."
	@admin=$${ADMIN_PORT:-$$(scripts/free-port.sh)}; \
	echo "make run: admin listener (metrics, prestop) on http://127.0.0.1:$$admin (ADMIN_PORT=$$admin)"; \
	ADMIN_PORT=$$admin scripts/with-redis.sh scripts/with-postgres.sh $(CARGO) run --release --bin drainer $(if $(strip $(ARGS)),-- $(ARGS))

test: ## fmt check, clippy, docs, then all tests against one throwaway PostgreSQL and Redis
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --no-deps --workspace
	scripts/with-redis.sh scripts/with-postgres.sh $(CARGO) test --workspace

check: ## the fast loop, no PostgreSQL: fmt check, clippy, docs, the engine's tests and the unit tests
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --no-deps --workspace
	$(CARGO) test -p drainer-engine
	$(CARGO) test -p drainer --lib

doc: ## build the API documentation (target/doc), warnings are errors
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --no-deps --workspace

bench: ## run the benchmarks (bench/run.sh)
	bash bench/run.sh

rolling-restart: ## the rolling-restart proof: 3 instances behind HAProxy and nginx, restarted under load (bench/rolling-restart.sh)
	bash bench/rolling-restart.sh

hot-restart: ## the hot-restart proof: 10 upgrades by socket handoff on one port under load (bench/hot-restart.sh)
	bash bench/hot-restart.sh

lint-deploy: ## check deploy/ with its own tools (kubernetes-validate, hadolint, systemd-analyze, haproxy -c, nginx -t)
	bash scripts/lint-deploy.sh

fmt: ## format all code
	$(CARGO) fmt --all

clippy: ## lint everything, warnings are errors
	$(CARGO) clippy --workspace --all-targets -- -D warnings

build: ## build the workspace (debug)
	$(CARGO) build --workspace

clean: ## remove build output (cargo clean)
	$(CARGO) clean
