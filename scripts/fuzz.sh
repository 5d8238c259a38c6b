#!/usr/bin/env bash
# Runs every Go fuzz target of the module (func FuzzXxx(f *testing.F) in a
# _test.go file), one at a time, for $FUZZTIME each (default 3s).
#
# The go tool fuzzes one target per package per run, and building the
# instrumented test binary takes longer than a short run, so each package's
# binary is built once (go test -c -fuzz) and run once per target, from the
# package's folder and with the corpus where `go test -fuzz` keeps it
# ($(go env GOCACHE)/fuzz/<import path>/<target>). As with go test, an input
# that fails is written to the package's testdata/fuzz/<target>/, and the run
# stops with the failure; commit that file as a regression seed once fixed.
#
#   FUZZTIME=3s          per target: a duration, or a count such as 1000x
#   FUZZPARALLEL=1       fuzzing processes per target (-parallel)
#   FUZZ='Reader|Route'  only the targets whose name matches (grep -E)
#   FUZZPKGS='./server'  only these packages (default ./...)
set -euo pipefail
cd "$(dirname "$0")/.."

fuzztime=${FUZZTIME:-3s}
parallel=${FUZZPARALLEL:-1}
only=${FUZZ:-.}
cache="$(go env GOCACHE)/fuzz"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# inputs counts the files in a target's testdata folder (0 when it has none).
inputs() { if [ -d "$1" ]; then find "$1" -type f | wc -l; else echo 0; fi; }

# shellcheck disable=SC2086 # FUZZPKGS is a list of package patterns
go list -f '{{.ImportPath}} {{.Dir}}' ${FUZZPKGS:-./...} | while read -r pkg dir; do
  targets=$(grep -hoE '^func Fuzz[A-Za-z0-9_]*\(f \*testing\.F\)' "$dir"/*_test.go 2>/dev/null |
    sed -E 's/^func (Fuzz[A-Za-z0-9_]*).*/\1/' | grep -E -- "$only" | sort || true)
  [ -n "$targets" ] || continue
  bin="$tmp/$(basename "$dir").test"
  go test -c -fuzz=. -o "$bin" "$pkg"
  for t in $targets; do
    start=$(date +%s)
    echo "fuzz $pkg $t ($fuzztime)"
    before=$(inputs "$dir/testdata/fuzz/$t")
    if ! (cd "$dir" && "$bin" -test.run='^$' -test.fuzz="^$t\$" -test.fuzztime="$fuzztime" \
      -test.parallel="$parallel" -test.fuzzcachedir="$cache/$pkg" >"$tmp/out" 2>&1); then
      after=$(inputs "$dir/testdata/fuzz/$t")
      # Go before 1.27 may end a run whose time is up with a bare "context
      # deadline exceeded" and no input (golang/go#75804): a race in the
      # fuzzing coordinator, not a finding. Anything else fails.
      if [ "$after" = "$before" ] && grep -q '^    context deadline exceeded$' "$tmp/out" &&
        ! grep -qE 'panic|Failing input|fuzz: minimizing' "$tmp/out"; then
        echo "  the run's time ran out in Go's fuzzing coordinator (golang/go#75804); no failing input"
      else
        cat "$tmp/out"
        echo "FAIL: $pkg $t (the failing input is under $dir/testdata/fuzz/$t)" >&2
        exit 1
      fi
    fi
    tail -n 2 "$tmp/out" | head -n 1
    echo "  took $(($(date +%s) - start))s, corpus $(find "$cache/$pkg/$t" -type f 2>/dev/null | wc -l) in the cache"
  done
done
