# tokenwarden — the two commands a fresh machine needs are `make run` and `make test`.
GO       ?= go
BIN      := bin/tokenwarden
UPSTREAM ?= http://127.0.0.1:18000
CONFIG   ?=
PKGS     := ./...

.PHONY: build run test test-short bench lint fuzz clean

build:
	$(GO) build -o $(BIN) .

# run: the mock provider, the processor and a front for it — a real Envoy with
# envoy/envoy-local.yaml when `envoy` is on PATH, else the built-in gateway.
# UPSTREAM=https://api.anthropic.com points the gateway at a real provider.
run: build
	@set -e; \
	pids=""; trap 'kill $$pids 2>/dev/null; wait 2>/dev/null' EXIT INT TERM; \
	if [ "$(UPSTREAM)" = "http://127.0.0.1:18000" ]; then \
		$(BIN) mock-provider --listen 127.0.0.1:18000 & pids="$$pids $$!"; \
	fi; \
	$(BIN) serve $(if $(CONFIG),--config $(CONFIG)) --grpc-addr 127.0.0.1:50051 --admin-addr 127.0.0.1:9090 & pids="$$pids $$!"; \
	if command -v envoy >/dev/null 2>&1 && [ "$(UPSTREAM)" = "http://127.0.0.1:18000" ]; then \
		echo "using envoy $$(envoy --version | head -1) with envoy/envoy-local.yaml"; \
		envoy -c envoy/envoy-local.yaml --log-level warn & pids="$$pids $$!"; \
	else \
		$(BIN) gateway --listen 127.0.0.1:10000 --upstream $(UPSTREAM) --processor 127.0.0.1:50051 & pids="$$pids $$!"; \
	fi; \
	echo "tokenwarden: gateway http://127.0.0.1:10000  metrics http://127.0.0.1:9090/metrics  (Ctrl-C stops)"; \
	wait

# test: everything CI runs, under the race detector — vet, the unit, fuzz-seed, end-to-end and
# fault tests (they start their own redis-server processes), and the
# config/manifest validations.
test: lint
	$(GO) test -race -count=1 -timeout 20m $(PKGS)

test-short:
	$(GO) test -short -count=1 $(PKGS)

lint:
	@unformatted=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$unformatted" ]; then echo "gofmt needed:"; echo "$$unformatted"; exit 1; fi
	$(GO) vet $(PKGS)

# bench: Go micro-benchmarks for the hot path, then the load harness against
# the no-op ext_proc floor (see README "Performance").
# Everything lands in $(BENCH_DIR): go-bench.txt, results.md and results.json (Redis store),
# results-memory.md and results-memory.json (memory store), results-leased.md and
# results-leased.json (Redis store, the policy's admission leased: BENCH_LEASES; the warmup is
# a lease's age, so the 800 caller chains' block sizes have settled before measuring).
# BENCH_ARGS passes flags to the harness (go run ./test/load/cmd/twload -h).
BENCH_DIR  ?= bin/bench
BENCH_ARGS ?=
BENCH_LEASES ?= {max_age: 5s, max_requests: 64}
bench:
	@mkdir -p $(BENCH_DIR)
	@echo "== Go benchmarks (all packages) -> $(BENCH_DIR)/go-bench.txt"
	@{ $(GO) test -run '^$$' -bench . -benchmem -count 1 -timeout 6m ./... 2>&1; echo $$? > $(BENCH_DIR)/go-bench.status; } \
		| tee $(BENCH_DIR)/go-bench.txt; exit $$(cat $(BENCH_DIR)/go-bench.status)
	$(GO) build -o $(BENCH_DIR)/tokenwarden .
	$(GO) build -o $(BENCH_DIR)/twload ./test/load/cmd/twload
	@echo "== load harness: tokenwarden on Redis vs the no-op ext_proc floor (own redis-server, bounded to 6 minutes)"
	$(BENCH_DIR)/twload -tokenwarden $(BENCH_DIR)/tokenwarden -timeout 6m \
		-bench-results $(BENCH_DIR)/go-bench.txt -out $(BENCH_DIR)/results.md -json $(BENCH_DIR)/results.json $(BENCH_ARGS)
	@echo "== load harness: tokenwarden on its memory store vs the no-op ext_proc floor (bounded to 4 minutes)"
	$(BENCH_DIR)/twload -tokenwarden $(BENCH_DIR)/tokenwarden -timeout 4m -memory-store -rates 400 \
		-scenarios open-loop,saturation,small-json-openai,small-json-anthropic \
		-out $(BENCH_DIR)/results-memory.md -json $(BENCH_DIR)/results-memory.json $(BENCH_ARGS)
	@echo "== load harness: tokenwarden on Redis with leased admission (policy leases: $(BENCH_LEASES)) vs the floor (bounded to 4 minutes)"
	$(BENCH_DIR)/twload -tokenwarden $(BENCH_DIR)/tokenwarden -timeout 4m -rates 400 -warmup 6s -leases '$(BENCH_LEASES)' \
		-scenarios open-loop,saturation,small-json-openai,small-json-anthropic \
		-out $(BENCH_DIR)/results-leased.md -json $(BENCH_DIR)/results-leased.json $(BENCH_ARGS)

# fuzz: a longer fuzzing pass over every parser (make test runs their seeds).
FUZZTIME ?= 30s
fuzz:
	@for pkg in $$($(GO) list ./... ); do \
		for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz'); do \
			echo "== $$pkg $$f"; $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg || exit 1; \
		done; \
	done

clean:
	rm -rf bin
