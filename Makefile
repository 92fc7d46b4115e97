# mcpd — make run (a dev node) and make test are the two commands to know.

GO       ?= go
BIN      := bin/mcpd
CLUSTER  := mcpd-cluster
HOSTS    := 127.0.0.1 127.0.0.2 127.0.0.3
PEERS    := n1=127.0.0.1:4438,n2=127.0.0.2:4438,n3=127.0.0.3:4438
BENCH_SERVER ?= wss://127.0.0.1:4433/v1
BENCH_CA     ?= mcpd-data/tls/ca.pem

.PHONY: all build run test test-race vet deps cluster cluster-stop bench clean fuzz chaos

all: build

build:
	$(GO) build -o $(BIN) ./cmd/mcpd

run: build
	./$(BIN) serve --dev --data-dir mcpd-data

test: vet deps
	$(GO) test -count=1 -timeout 20m ./...
	$(GO) test -count=1 -race -timeout 20m ./queue/ ./fsm/ ./cluster/ ./transport/ ./client/ ./webui/

# The fault suite in systemtest/ (docs/reliability.md) runs nodes in network
# namespaces and on FUSE disks: it needs root, /dev/fuse and the ip tool.
# The Redis differential test in systemtest/ compares mcpd's replies with a
# real redis-server that it starts on a loopback port.
# The browser tests in systemtest/ drive Debian's chromium headless over
# the DevTools protocol (docs/ops/ui.md); screenshots land in
# test-artifacts/browser/.
# deps installs iproute2, redis-server and chromium where they are missing
# (Debian).
deps:
	@command -v ip >/dev/null 2>&1 || { echo "installing iproute2 for the fault suite"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iproute2 >/dev/null; }
	@command -v redis-server >/dev/null 2>&1 || { echo "installing redis-server for the Redis differential test"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; }
	@command -v chromium >/dev/null 2>&1 || { echo "installing chromium for the browser tests of the web UI"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

# The whole fault matrix: more rounds of every scenario and the combined
# faults on five nodes. Each scenario appends its checker figures to
# CHAOS_REPORT as a JSON line; MCPD_FAULT_SEED=N replays a random schedule.
CHAOS_REPORT ?= chaos-report.jsonl
chaos: deps
	rm -f $(CHAOS_REPORT)
	MCPD_CHAOS=1 MCPD_FAULT_REPORT=$(abspath $(CHAOS_REPORT)) \
	  $(GO) test -count=1 -timeout 120m -run 'Test_Fault_' -v ./systemtest/
	@echo "figures: $(CHAOS_REPORT)"

# Every fuzz target, FUZZTIME each, one after another (docs/fuzzing.md).
# A crasher is saved under the package's testdata/fuzz/ and replays with
# make test from then on.
FUZZTIME  ?= 30s
FUZZ_PKGS := ./transport/ ./kv/ ./client/ ./auth/ ./fsm/ ./cluster/ ./pki/ ./internal/mpack/

fuzz:
	@set -e; for p in $(FUZZ_PKGS); do \
	  for t in $$($(GO) test -list '^Fuzz' $$p | grep '^Fuzz'); do \
	    echo "== $$p $$t ($(FUZZTIME))"; \
	    $(GO) test -run '^$$' -fuzz "^$$t\$$" -fuzztime $(FUZZTIME) $$p; \
	  done; \
	done

vet:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	  if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

# A local three-node cluster on 127.0.0.1, .2 and .3 (Linux routes all of
# 127.0.0.0/8 to loopback). Data and logs go under ./mcpd-cluster/. One CA
# and a certificate per node (nK.pem): Raft between the nodes is mutual TLS.
cluster: build
	@mkdir -p $(CLUSTER)
	@i=1; for h in $(HOSTS); do \
	  ./$(BIN) tls init --dir $(CLUSTER)/tls --node n$$i --host $$h >/dev/null || exit 1; i=$$((i+1)); done
	@i=1; for h in $(HOSTS); do \
	  ./$(BIN) serve --node-id n$$i --data-dir $(CLUSTER)/n$$i --bind $$h --peers $(PEERS) \
	    --tls-dir $(CLUSTER)/tls --insecure-auth-none >$(CLUSTER)/n$$i.log 2>&1 & \
	  echo $$! >$(CLUSTER)/n$$i.pid; i=$$((i+1)); done
	@echo "cluster starting: wss://127.0.0.1:4433/v1 wss://127.0.0.2:4433/v1 wss://127.0.0.3:4433/v1 (CA $(CLUSTER)/tls/ca.pem)"
	@echo "logs in $(CLUSTER)/n*.log; stop with make cluster-stop"

cluster-stop:
	@for p in $(CLUSTER)/n*.pid; do [ -f $$p ] && kill $$(cat $$p) 2>/dev/null; rm -f $$p; done; true

bench: build
	./$(BIN) bench --server $(BENCH_SERVER) --ca $(BENCH_CA) --clients 16 --messages 50000 --size 256 --window 1
	./$(BIN) bench --server $(BENCH_SERVER) --ca $(BENCH_CA) --clients 64 --messages 100000 --size 256 --window 1
	./$(BIN) bench --server $(BENCH_SERVER) --ca $(BENCH_CA) --clients 16 --messages 200000 --size 256 --window 64

clean:
	rm -rf bin
