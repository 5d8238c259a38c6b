# git-relay: the two commands in the README are `make demo` and `make test`.
GO      ?= go
BIN     ?= $(CURDIR)/bin
PREFIX  ?= $(HOME)/.local

.PHONY: build test demo bench install vet fmt

VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo devel)
LDFLAGS := -X github.com/git-relay/git-relay/internal/cli.Version=$(VERSION)

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/ ./cmd/...

# Unit, component and end-to-end tests (real git, real HTTP, real sshd).
test: vet
	$(GO) test -race -count=1 -timeout 40m ./...

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
