# RFSIS build and check targets. "make help" lists them.

GO       ?= go
FUZZTIME ?= 10s

.DEFAULT_GOAL := all
.PHONY: all help test fuzz vet bench clean

all: ## Build ./echoserver (the demo echo server) at the repository root
	$(GO) build -o echoserver ./cmd/echoserver

help: ## List the targets
	@awk 'BEGIN { FS = ":.*## " } /^[a-zA-Z_-]+:.*## / { printf "  %-15s %s\n", $$1, $$2 }' $(MAKEFILE_LIST)

# The failover acceptance tests (internal/takeover) run real processes
# with 10 ms heartbeats: they need a quiet machine, so they run alone,
# after the rest, and without the race detector (which slows their client
# workload several times over and starves the heartbeats on two cores;
# the processes under test are never race-built anyway).
test: ## Run all tests (race detector; the failover acceptance suite alone after), then a short fuzz pass (FUZZTIME=10s per target)
	$(GO) test -race -count=1 $$($(GO) list ./... | grep -v /internal/takeover)
	$(GO) test -count=1 -p 1 ./internal/takeover
	FUZZTIME=$(FUZZTIME) scripts/fuzz-short.sh

fuzz: ## Run every fuzz target for longer (FUZZTIME=2m each unless set)
	FUZZTIME=$(if $(filter command line environment,$(origin FUZZTIME)),$(FUZZTIME),2m) scripts/fuzz-short.sh

vet: ## go vet, gofmt check, and staticcheck when installed
	$(GO) vet ./...
	@unformatted=$$(gofmt -l .); \
	if [ -n "$$unformatted" ]; then echo "gofmt needed:"; echo "$$unformatted"; exit 1; fi
	@if command -v staticcheck >/dev/null 2>&1; then staticcheck ./...; \
	else echo "staticcheck not installed; skipped"; fi

bench: ## RFSIS vs kernel TCP, and the cost of replication, as root (~2 min; BENCHMARKS.md): go test -run '^$' -bench . -benchtime 1x -count 1 -timeout 20m ./internal/bench
	$(GO) test -run '^$$' -bench . -benchtime 1x -count 1 -timeout 20m ./internal/bench

# The failover comparison (internal/failbench, BENCHMARKS.md): RFSIS
# against keepalived moving a virtual IP between two kernel-TCP echo
# servers, TRIALS trials of each fault, plus the steady-state cost. It
# needs root and keepalived: when keepalived is missing and apt-get is
# there it installs the Debian package, saying so; otherwise it stops
# with the package's name. Results go to docs/bench/.
TRIALS ?= 20
.PHONY: bench-failover
bench-failover: ## RFSIS vs keepalived failover, as root (~8 min; TRIALS=20 per fault; BENCHMARKS.md): docs/bench/
	@[ "$$(id -u)" = 0 ] || { echo "bench-failover: run as root (it builds network namespaces and TAP devices)"; exit 1; }
	@command -v ip >/dev/null || { echo "bench-failover: ip not found; install the Debian package iproute2"; exit 1; }
	@if ! command -v keepalived >/dev/null; then \
		if command -v apt-get >/dev/null; then \
			echo "bench-failover: keepalived not found; installing the Debian package keepalived (apt-get install keepalived)"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq keepalived >/dev/null || exit 1; \
		else \
			echo "bench-failover: keepalived not found; install the package keepalived (2.2 or later)"; exit 1; \
		fi; \
	fi
	RFSIS_FAILBENCH=1 RFSIS_FAILBENCH_TRIALS=$(TRIALS) RFSIS_FAILBENCH_OUT=$(CURDIR)/docs/bench \
		$(GO) test -count=1 -v -timeout 60m -run '^TestFailoverBench$$' ./internal/failbench

clean: ## Remove built binaries and test caches
	rm -f echoserver rfsisctl
	$(GO) clean -testcache
