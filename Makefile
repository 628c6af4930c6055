# talkingdata IPAM — see README.md.
GO        ?= go
BIN       := bin
PKGS      := ./...
FUZZTIME  ?= 10s
# `make run` flags, e.g. make run RUN_ARGS="--etcd-endpoints http://10.0.0.5:2379"
RUN_ARGS  ?=

.PHONY: all build run test test-deps vet fuzz bench clean compose-test plugin install

all: build

build:
	CGO_ENABLED=0 $(GO) build -o $(BIN)/talkingdata-ipam ./cmd/talkingdata-ipam
	CGO_ENABLED=0 $(GO) build -o $(BIN)/ipamctl ./cmd/ipamctl

# Builds and starts the plugin in the foreground. With no --etcd-endpoints it
# runs an embedded etcd under /var/lib/talkingdata-ipam.
run: build
	$(BIN)/talkingdata-ipam $(RUN_ARGS)

# The managed (v2) plugin, built offline and created on DOCKER_HOST's dockerd (default: the
# local one): docker network create --ipam-driver $(PLUGIN_NAME) …, after
# docker plugin set $(PLUGIN_NAME) IPAM_ETCD_ENDPOINTS=http://…:2379 and docker plugin enable.
# An existing plugin of that name is removed first (it must be disabled).
DOCKER      ?= docker
PLUGIN_NAME ?= talkingdata/ipam:latest
PLUGIN_DIR  ?= dist/plugin
plugin:
	GO=$(GO) scripts/plugin/build.sh $(PLUGIN_DIR)
	@if $(DOCKER) plugin inspect $(PLUGIN_NAME) >/dev/null 2>&1; then $(DOCKER) plugin rm $(PLUGIN_NAME); fi
	$(DOCKER) plugin create $(PLUGIN_NAME) $(PLUGIN_DIR)

# Binaries and systemd units. DESTDIR stages into a tree (packaging, tests) and then never
# touches systemd; without it, systemd reloads its units (enable them yourself).
PREFIX      ?= /usr/local
BINDIR      := $(PREFIX)/bin
UNITDIR     ?= /etc/systemd/system
install: build
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(UNITDIR) $(DESTDIR)/etc/default
	install -d -m 0700 $(DESTDIR)/etc/talkingdata-ipam
	install -m 0755 $(BIN)/talkingdata-ipam $(BIN)/ipamctl $(DESTDIR)$(BINDIR)/
	for u in talkingdata-ipam.service talkingdata-bridge.service; do \
		sed 's|@BINDIR@|$(BINDIR)|g' scripts/systemd/$$u > $(DESTDIR)$(UNITDIR)/$$u && chmod 0644 $(DESTDIR)$(UNITDIR)/$$u || exit 1; \
	done
	test -e $(DESTDIR)/etc/default/talkingdata-ipam || install -m 0600 scripts/systemd/talkingdata-ipam.default $(DESTDIR)/etc/default/talkingdata-ipam
	if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then systemctl daemon-reload; fi

# The Docker engines of the test matrix (20.10 is the system's docker.io; 26.1, 28.5 and 29 live
# here, put by scripts/install-engines.sh) and etcd 3.5. Tests find them through this variable;
# TALKINGDATA_ENGINES picks the matrix (default 20.10,28.5,29).
export TALKINGDATA_ENGINE_DIR ?= $(CURDIR)/.cache/engines
# etcd 3.5 is where its root's engine.env says. Expanded when a recipe runs, after test-deps wrote it.
ETCD35 = $(TALKINGDATA_ENGINE_DIR)/etcd-3.5/$(shell sed -n 's/^ETCD=//p' $(TALKINGDATA_ENGINE_DIR)/etcd-3.5/engine.env 2>/dev/null)

# Everything, with real etcd, real dockerd and real netlink: run as root.
# A test that needs a kernel option this kernel lacks (802.1Q, ipvlan) runs in
# a VM with Debian's kernel (internal/vm). The etcd tests run with Debian's
# etcd 3.4, then ./etcdstore again with etcd 3.5.
test: test-deps vet
	@status=0; CI=$${CI:-true} $(GO) test -race -count=1 -timeout 20m $(PKGS) || status=$$?; \
	echo "etcdstore against etcd 3.5 ($(ETCD35)):"; \
	CI=$${CI:-true} TALKINGDATA_ETCD=$(ETCD35) $(GO) test -race -count=1 -timeout 10m ./etcdstore || status=$$?; \
	exit $$status
	$(MAKE) fuzz

test-deps:
	GO=$(GO) scripts/install-test-deps.sh

# The tests that run on every engine of the matrix (the conformance suite, the managed plugin) on
# dockerd 26.1, which `make test` does not run.
.PHONY: test-26
test-26: test-deps
	CI=$${CI:-true} TALKINGDATA_ENGINES=26.1 $(GO) test -count=1 -timeout 20m -v -run '^(TestConformance|TestManagedPlugin)$$' ./e2e

# docker-compose.test.yml (etcd and the plugin as containers) and
# docker-compose.test-app.yml (test containers on a talkingdata network) on a
# private dockerd, addresses checked in etcd; also part of `make test`.
compose-test: test-deps
	CI=$${CI:-true} $(GO) test -count=1 -v -run '^TestCompose$$' ./e2e

vet:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt needed"; exit 1; }
	$(GO) vet $(PKGS)

# A short run of every fuzz target, on top of the seed corpora that
# `go test` always replays.
fuzz:
	$(GO) test ./pool -run '^$$' -fuzz '^FuzzParseRange$$' -fuzztime $(FUZZTIME)
	$(GO) test ./pool -run '^$$' -fuzz '^FuzzParseRanges$$' -fuzztime $(FUZZTIME)
	$(GO) test ./pool -run '^$$' -fuzz '^FuzzRules$$' -fuzztime $(FUZZTIME)
	$(GO) test ./pool -run '^$$' -fuzz '^FuzzFreeSet$$' -fuzztime $(FUZZTIME)
	$(GO) test ./ipam -run '^$$' -fuzz '^FuzzHandler$$' -fuzztime $(FUZZTIME)

# Benchmarks, each paired with its raw-etcd baseline (docs/PERFORMANCE.md).
# Not part of `make test` (its smoke run of ipambench is). ipambench runs the
# throughput sweep alone, the full sweep on a single-member etcd, then on a
# 3-member cluster, then fifty hosts behind LAN and stretched-cluster latency
# (and 1, 10 and 25 hosts; and one host's lone requests), then one daemon's
# memory with 20 pools of 64k, and writes CSV, SVG and a summary per run into
# BENCH_OUT. Extra flags: BENCH_ARGS="-v". Whether a run reproduced the
# published one: go run ./tools/ipambench -compare docs/perf -out BENCH_OUT.
BENCH_OUT  ?= docs/perf
BENCH_ARGS ?=
bench: test-deps build
	$(GO) run ./tools/ipambench -out $(BENCH_OUT) -name throughput -phases throughput $(BENCH_ARGS)
	$(GO) run ./tools/ipambench -out $(BENCH_OUT) $(BENCH_ARGS)
	$(GO) run ./tools/ipambench -out $(BENCH_OUT) -etcd-cluster 3 $(BENCH_ARGS)
	$(GO) run ./tools/ipambench -out $(BENCH_OUT) -name fifty-250us -phases fifty -latency 250us $(BENCH_ARGS)
	$(GO) run ./tools/ipambench -out $(BENCH_OUT) -name fifty-2ms -phases fifty -latency 2ms $(BENCH_ARGS)
	for n in 1 10 25; do $(GO) run ./tools/ipambench -out $(BENCH_OUT) -name fifty-250us-$$n-hosts -phases fifty -instances $$n -latency 250us $(BENCH_ARGS) || exit 1; done
	$(GO) run ./tools/ipambench -out $(BENCH_OUT) -name lone -phases fifty -instances 1 -burst 1000 -burst-concurrency 1 -latency 1us -idle 1s $(BENCH_ARGS)
	$(GO) run ./tools/ipambench -out $(BENCH_OUT) -name mempools -phases mempools -instances 1 $(BENCH_ARGS)
	$(call bench-to,pool-freeset,./pool -bench 'FreeSetTake' -count 3)
	$(call bench-to,etcdstore-hotpath,./etcdstore -bench 'Allocate|BaselineTxn|Cycle' -benchtime 3000x -count 3)
	$(call bench-to,etcdstore-seed,./etcdstore -bench '[Ss]eed16' -benchtime 5x -count 3)
	$(call bench-to,docker-run,./e2e -bench '^BenchmarkDockerRun$$' -benchtime 1x)
	$(call bench-to,docker-run-concurrent,./e2e -bench '^BenchmarkDockerRunConcurrent' -benchtime 1x -timeout 60m -v)

# bench-to,NAME,ARGS: go test -run '^$' ARGS, its output shown and kept in BENCH_OUT/NAME.txt.
bench-to = $(GO) test -run '^$$' $(2) > $(BENCH_OUT)/$(1).txt; s=$$?; cat $(BENCH_OUT)/$(1).txt; exit $$s

# The long chaos test (issues 4 and 15) on a fresh lab, 32 concurrent endpoints on three hosts'
# plugins, in phases: 4,000 operations through 3 etcd leader kills (0 failed, p99 <= 3s: issue
# 15's target); members frozen for 12s, longer than a request's 10s, and restarted (0 failed);
# 15 plugin kills (failures allowed).
# Prints the counts and each phase's p99, failed requests and faults; fails on any anomaly.
# Needs root. Its short form is e2e's TestChaos, part of `make test`. More flags:
# CHAOS_ARGS="-timeline", or -phase to run other phases (go run ./tools/chaos -h).
.PHONY: chaos
chaos: test-deps
	$(GO) run ./tools/chaos -concurrency 32 -freeze 12s $(CHAOS_ARGS)

clean:
	rm -rf $(BIN) dist
