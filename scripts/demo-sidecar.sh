#!/usr/bin/env bash
# The sidecar part of `make demo`: a repository with an origin, a sidecar
# workspace on a local path, setup, an edit, a sync, and a check that the
# workspace holds exactly the work tree's files. Needs git-sidecar on PATH.
set -euo pipefail

command -v git-sidecar >/dev/null || { echo "demo-sidecar: git-sidecar is not on PATH (run make demo)" >&2; exit 1; }

tmp=$(mktemp -d "${TMPDIR:-/tmp}/sidecar-demo.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

# A hermetic git: no user or system config, fixed names.
export HOME="$tmp/home" GIT_CONFIG_NOSYSTEM=1 GIT_TERMINAL_PROMPT=0
export GIT_AUTHOR_NAME="Demo" GIT_AUTHOR_EMAIL="demo@example.com"
export GIT_COMMITTER_NAME="Demo" GIT_COMMITTER_EMAIL="demo@example.com"
mkdir -p "$HOME"

say() { printf '\n== %s\n' "$*"; }
# Show each command as it could be typed, then run it (its messages go to
# stderr, merged here so they read in order).
run() { printf '$'; printf ' %q' "$@"; printf '\n'; "$@" 2>&1; }

say "A repository with an origin"
git init -q --bare -b main "$tmp/origin.git"
git clone -q "$tmp/origin.git" "$tmp/app" 2>/dev/null
cd "$tmp/app"
printf 'build/\n' > .gitignore
printf '#!/bin/sh\necho "hello from $(pwd)"\n' > hello.sh
chmod +x hello.sh
printf 'int main(void) { return 0; }\n' > main.c
git add -A && git commit -q -m "first commit" && git push -q origin main
echo "app: $(git log --oneline | head -1)"

# The workspace is a plain folder here; over SSH it would be
# ssh://host/path or host:path, with the same commands.
ws="$tmp/workspace (sidecar)"

say "Add the sidecar and bootstrap it"
run git sidecar add dev "$ws"
run git sidecar setup

say "Edit locally: change a file, add an untracked one, delete one"
printf 'int main(void) { return 42; }\n' > main.c
printf 'notes\n' > NOTES.md
git rm -q --cached hello.sh && rm hello.sh
mkdir -p "$ws/build" && printf 'object\n' > "$ws/build/main.o"
run git sidecar sync

say "Status"
run git sidecar status

say "Run a command there"
run git sidecar exec -- sh -c 'ls -A | grep -v "^.git$"; cat main.c'

say "Check: the workspace matches the work tree"
list() { (cd "$1" && git ls-files -co --exclude-standard | LC_ALL=C sort); }
if ! diff <(list "$tmp/app") <(list "$ws") >/dev/null; then
  echo "MISMATCH in the file lists:"; diff <(list "$tmp/app") <(list "$ws") || true; exit 1
fi
while IFS= read -r f; do
  cmp -s "$tmp/app/$f" "$ws/$f" || { echo "MISMATCH: $f differs"; exit 1; }
done < <(list "$tmp/app")
[ -f "$ws/build/main.o" ] || { echo "MISMATCH: the ignored build output was removed"; exit 1; }
echo "the workspace holds the same $(list "$tmp/app" | wc -l) files as the work tree; its ignored build/ survived"
