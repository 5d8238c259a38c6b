#!/bin/sh
# Builds the three git-relay programs and installs them into ${PREFIX:-$HOME/.local}/bin.
set -eu
prefix=${PREFIX:-$HOME/.local}
bindir=$prefix/bin
cd "$(dirname "$0")"
mkdir -p "$bindir"
version=$(git describe --tags --always --dirty 2>/dev/null || echo devel)
go build -ldflags "-X github.com/git-relay/git-relay/internal/cli.Version=$version" -o "$bindir/" ./cmd/git-remote-relay ./cmd/git-relay-server ./cmd/git-sidecar
echo "installed git-remote-relay, git-relay-server and git-sidecar into $bindir"
case ":$PATH:" in
*":$bindir:"*) ;;
*) echo "note: $bindir is not on your PATH; add it so that git finds git-remote-relay and git-sidecar:" >&2
   echo "  export PATH=\"$bindir:\$PATH\"" >&2 ;;
esac
