#!/usr/bin/env bash
# make demo: a relay on loopback over a temporary folder of bare repositories
# standing in for GitHub, a real `git push relay::…` through it, a diverged
# push refused, a fetch back through the relay, and a sidecar sync.
# Needs only Go and git; the binaries are on PATH (the Makefile builds them).
set -euo pipefail

scripts=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/git-relay-demo.XXXXXX")
server_pid=
cleanup() {
  if [ -n "$server_pid" ]; then kill -TERM "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

# A hermetic git: nothing from the user's configuration leaks in.
export HOME="$work/home" GIT_CONFIG_NOSYSTEM=1 GIT_TERMINAL_PROMPT=0
mkdir -p "$HOME"
git config --global user.name "Demo User"
git config --global user.email demo@example.com
git config --global init.defaultBranch master
git config --global advice.detachedHead false

say "An upstream (a folder of bare repositories standing in for GitHub)"
mkdir -p "$work/upstream/acme"
git init -q --bare "$work/upstream/acme/widgets.git"
echo "upstream: $work/upstream/acme/widgets.git"

say "A relay server on loopback"
git-relay-server keygen -o "$work/relay.key" 2>/dev/null
git-relay-server serve --listen 127.0.0.1:0 --data-dir "$work/relay-data" \
  --key-file "$work/relay.key" --upstream "file://$work/upstream/{repo}.git" 2> "$work/server.log" &
server_pid=$!
for _ in $(seq 100); do
  addr=$(sed -n 's/.*listening on \(http:[^ ]*\).*/\1/p' "$work/server.log")
  [ -n "$addr" ] && break
  sleep 0.1
done
[ -n "$addr" ] || { cat "$work/server.log"; echo "server did not start" >&2; exit 1; }
echo "relay: $addr"
git config --global relay.url "$addr/api/gr"
git config --global relay.keyFile "$work/relay.key"

say "A developer's repository with three commits"
git init -q "$work/dev"
cd "$work/dev"
for i in 1 2 3; do
  echo "widget $i" > "widget-$i.txt"
  git add . && GIT_AUTHOR_DATE="2026-01-0${i}T12:00:00Z" git commit -qm "Add widget $i"
done
git log --format='%h %an %ad %s' --date=iso

say "git push relay::acme/widgets master"
git push relay::acme/widgets master

say "Upstream holds the identical commits (same SHAs, authors, dates)"
local_log=$(git log --format='%H %an %ad %s' master)
upstream_log=$(git --git-dir="$work/upstream/acme/widgets.git" log --format='%H %an %ad %s' master)
echo "$upstream_log"
[ "$local_log" = "$upstream_log" ] || { echo "MISMATCH between local and upstream history" >&2; exit 1; }
echo "identical: $(git rev-parse master)"

say "Someone pushes to upstream directly; a local commit now diverges"
git clone -q "$work/upstream/acme/widgets.git" "$work/other"
(cd "$work/other" && echo fix > fix.txt && git add . && git commit -qm "Upstream fix" && git push -q origin master)
echo "local change" > local.txt && git add . && git commit -qm "Local change"
if git push relay::acme/widgets master 2> "$work/push.err"; then
  echo "the diverged push was not refused" >&2; exit 1
fi
cat "$work/push.err"

say "git pull relay::acme/widgets master, then push again"
git pull -q --no-rebase --no-edit relay::acme/widgets master
git push relay::acme/widgets master
[ "$(git rev-parse master)" = "$(git --git-dir="$work/upstream/acme/widgets.git" rev-parse master)" ]
echo "upstream master = $(git rev-parse --short master), a merge of both"

if [ -f "$scripts/demo-sidecar.sh" ]; then
  say "Sidecar: a remote workspace kept identical to the work tree"
  bash "$scripts/demo-sidecar.sh"
fi

say "Demo finished: all checks passed"
