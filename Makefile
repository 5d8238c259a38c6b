# git-relay: the two commands in the README are `make demo` and `make test`.
GO      ?= go
BIN     ?= $(CURDIR)/bin
PREFIX  ?= $(HOME)/.local

.PHONY: build test demo bench install vet fmt fuzz-short fuzz-long

VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo devel)
LDFLAGS := -X github.com/git-relay/git-relay/internal/cli.Version=$(VERSION)

# Static binaries (no cgo): nothing here needs libc, and git starts the
# helper for every push and fetch, so its start-up counts.
build:
	CGO_ENABLED=0 $(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/ ./cmd/...

# Unit, component and end-to-end tests (real git, real HTTP, real sshd),
# after a short run of every fuzz target.
test: vet fuzz-short
	$(GO) test -race -count=1 -timeout 40m ./...

# Fuzzing: every FuzzXxx target of the module (each parser of untrusted
# bytes), one at a time, through scripts/fuzz.sh. fuzz-short gives each 3 s
# (`make test` runs it); fuzz-long gives each FUZZTIME, e.g.
# `make fuzz-long FUZZTIME=1h`. FUZZ=regexp picks targets by name. A failing
# input lands in the package's testdata/fuzz/<target>/: keep it as a seed.
FUZZTIME ?= 10m
fuzz-short:
	FUZZTIME=3s bash scripts/fuzz.sh

fuzz-long:
	FUZZTIME=$(FUZZTIME) bash scripts/fuzz.sh

vet:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { echo "gofmt needed:"; gofmt -l $$(git ls-files '*.go'); exit 1; }
	$(GO) vet ./...
	$(GO) tool staticcheck ./...

fmt:
	gofmt -w $$(git ls-files '*.go')

# A relay over a folder of bare repositories, a real push through it, and a sidecar sync.
demo: build
	PATH="$(BIN):$$PATH" bash scripts/demo.sh

# Ratios against direct `git push` / `git clone` and `rsync`, measured side by side;
# then two instances on an S3 store (versitygw) against one on the local store,
# behind haproxy (bench/cluster needs versitygw and haproxy: see .ci/run).
bench: build
	PATH="$(BIN):$$PATH" $(GO) run ./bench/relay
	PATH="$(BIN):$$PATH" $(GO) run ./bench/sidecar
	PATH="$(BIN):$$PATH" $(GO) run ./bench/cluster

install:
	PREFIX="$(PREFIX)" ./install.sh
