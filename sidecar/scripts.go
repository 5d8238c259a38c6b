package sidecar

import (
	"bufio"
	"fmt"
	"strings"

	"github.com/git-relay/git-relay/internal/sshx"
)

// The workspace side of the protocol is a handful of POSIX sh scripts.
// Every dynamic word in them is single-quoted by q (sshx.Quote), the
// workspace is entered with `cd -- '<path>'`, and git is never given -C,
// which gits older than 1.8.5 lack. Each script answers with lines of the
// form "<word> <value>" on stdout; errors go to stderr with exit status 3.

var q = sshx.Quote

// prelude clears what a git hook may have exported (the local transport
// inherits our environment) and makes sure nothing waits for a password.
const prelude = `unset GIT_DIR GIT_WORK_TREE GIT_INDEX_FILE GIT_OBJECT_DIRECTORY GIT_ALTERNATE_OBJECT_DIRECTORIES GIT_COMMON_DIR GIT_PREFIX GIT_CONFIG GIT_CONFIG_PARAMETERS GIT_CONFIG_COUNT GIT_NAMESPACE GIT_IMPLICIT_WORK_TREE GIT_GRAFT_FILE GIT_NO_REPLACE_OBJECTS GIT_REPLACE_REF_BASE GIT_SHALLOW_FILE GIT_QUARANTINE_PATH GIT_INTERNAL_SUPER_PREFIX
GIT_TERMINAL_PROMPT=0; export GIT_TERMINAL_PROMPT
die() { printf '%s\n' "$*" >&2; exit 3; }
`

// gitDirSnippet sets $gd to the workspace's git dir without a git process
// in the usual case.
const gitDirSnippet = `if [ -d .git ]; then gd=.git; else gd=$(git rev-parse --git-dir </dev/null) || die "the workspace is not a git repository"; fi
`

// prepareScript makes sure the workspace is a repository, points its
// origin at url and fetches, then reports which of the wanted commits it
// has and which commits it holds (for a bundle's prerequisites).
func prepareScript(d Dest, url string, want []string) string {
	var b strings.Builder
	b.WriteString(prelude)
	fmt.Fprintf(&b, "mkdir -p -- %s || die 'cannot create the workspace folder'\n", d.PathWord())
	fmt.Fprintf(&b, "cd -- %s || die 'cannot enter the workspace folder'\n", d.PathWord())
	b.WriteString(`if [ ! -e .git ]; then
  if [ -n "$(ls -A . 2>/dev/null)" ]; then die 'the workspace folder is not empty and is not a git repository; choose another path or empty it'; fi
  git init -q </dev/null >/dev/null || die 'git init failed in the workspace'
  echo created
fi
`)
	fmt.Fprintf(&b, "url=%s\n", q(url))
	b.WriteString(`if [ -n "$url" ]; then
  git config remote.origin.url "$url" </dev/null || die 'cannot set origin in the workspace'
  git config --get remote.origin.fetch >/dev/null 2>&1 </dev/null || git config remote.origin.fetch '+refs/heads/*:refs/remotes/origin/*' </dev/null
  if out=$(git fetch -q origin </dev/null 2>&1); then
    echo 'fetch ok'
  else
    printf 'fetch-failed %s\n' "$(printf '%s' "$out" | tr '\n\r\t' '   ' | cut -c1-300)"
  fi
fi
`)
	for _, w := range want {
		if w == "" {
			continue
		}
		fmt.Fprintf(&b, "if git cat-file -e %s 2>/dev/null </dev/null; then echo %s; fi\n", q(w+"^{commit}"), q("has "+w))
	}
	b.WriteString(`git for-each-ref --count=100 --format='tip %(objectname)' refs/sidecar refs/remotes/origin refs/heads </dev/null 2>/dev/null
h=$(git rev-parse -q --verify 'HEAD^{commit}' 2>/dev/null </dev/null) && echo "tip $h"
exit 0
`)
	return b.String()
}

// bundleScript stores the bundle on stdin in the workspace's object store
// and keeps head reachable under ref.
func bundleScript(d Dest, head, ref string) string {
	var b strings.Builder
	b.WriteString(prelude)
	fmt.Fprintf(&b, "cd -- %s || die 'cannot enter the workspace folder'\n", d.PathWord())
	b.WriteString(gitDirSnippet)
	b.WriteString(`f="$gd/sidecar-bundle.$$"
trap 'rm -f "$f" "$f.err"' EXIT
cat > "$f" || die 'cannot store the bundle in the workspace'
git bundle unbundle "$f" </dev/null >/dev/null 2>"$f.err" || die "git bundle unbundle: $(tr '\n' ' ' <"$f.err")"
`)
	fmt.Fprintf(&b, "git update-ref %s %s </dev/null || die 'cannot keep the bundled commit'\n", q(ref), q(head))
	b.WriteString("echo unbundled\n")
	return b.String()
}

// applyArgs are the words of applyScript.
type applyArgs struct {
	bootstrap bool
	base      string // commit to have as HEAD
	last      string // tree the workspace should hold now ("" if unknown)
	backupRef string
	token     string // starts the last line of stdin, proving the patch is whole
}

// applyScript is the sync itself. It first checks the workspace against
// what we left there (a full scan, which runs while we snapshot the work
// tree here), keeps any edits found under backupRef and moves to the
// base. Only then does it read stdin: a patch (possibly empty) followed by
// a line "<token> patch" or "<token> empty". It applies the patch and
// reports the resulting tree.
func applyScript(d Dest, a applyArgs) string {
	var b strings.Builder
	b.WriteString(prelude)
	mode := "incremental"
	if a.bootstrap {
		mode = "bootstrap"
	}
	last := a.last
	if last == "" {
		last = "0"
	}
	fmt.Fprintf(&b, "mode=%s base=%s last=%s backup=%s token=%s\n",
		q(mode), q(a.base), q(a.last), q(a.backupRef), q(a.token))
	fmt.Fprintf(&b, "if ! cd -- %s 2>/dev/null || [ ! -e .git ]; then echo 'need-bootstrap the workspace is missing'; exit 0; fi\n", d.PathWord())
	b.WriteString(gitDirSnippet)
	// One cat-file answers the three lookups; read and case are builtins.
	fmt.Fprintf(&b, "chk=$(printf '%%s\\n' %s %s 'HEAD^{commit}' | git cat-file --batch-check 2>/dev/null)\n",
		q(a.base+"^{commit}"), q(last+"^{tree}"))
	b.WriteString(applyBody)
	return b.String()
}

const applyBody = `{ read l1; read l2; read l3; } <<SIDECAR_CHECKS
$chk
SIDECAR_CHECKS
baseok=; lastok=; head=
case "$l1" in *" commit "*) baseok=1 ;; esac
case "$l2" in *" tree "*) lastok=1 ;; esac
case "$l3" in *" commit "*) head=${l3%% *} ;; esac
if [ "$mode" = incremental ] && { [ -z "$baseok" ] || [ -z "$lastok" ]; }; then
  echo 'need-bootstrap the workspace lacks the baseline'; exit 0
fi
[ -n "$baseok" ] || die 'the baseline commit is missing in the workspace'
git -c core.untrackedCache=true add -A </dev/null >/dev/null || die 'cannot scan the workspace (git add -A)'
cur=$(git write-tree </dev/null) || die 'cannot record the workspace (git write-tree)'
expect=$last
if [ -z "$expect" ]; then
  if [ -n "$head" ]; then expect=$(git rev-parse "$head^{tree}" </dev/null); else expect=$(git hash-object -t tree /dev/null </dev/null); fi
fi
drift=0
if [ "$cur" != "$expect" ]; then
  drift=1
  # The workspace's user may have no git identity.
  GIT_AUTHOR_NAME=git-sidecar GIT_AUTHOR_EMAIL=git-sidecar@localhost GIT_COMMITTER_NAME=git-sidecar GIT_COMMITTER_EMAIL=git-sidecar@localhost
  export GIT_AUTHOR_NAME GIT_AUTHOR_EMAIL GIT_COMMITTER_NAME GIT_COMMITTER_EMAIL
  if [ -n "$head" ]; then
    c=$(git commit-tree "$cur" -p "$head" -m 'git-sidecar: edits found in the workspace, kept before syncing' </dev/null) || die 'cannot keep the edits found in the workspace'
  else
    c=$(git commit-tree "$cur" -m 'git-sidecar: edits found in the workspace, kept before syncing' </dev/null) || die 'cannot keep the edits found in the workspace'
  fi
  git update-ref "$backup" "$c" </dev/null || die 'cannot keep the edits found in the workspace'
  n=$(git diff-tree -r --name-only "$expect" "$cur" </dev/null | wc -l)
  echo "backup $backup $n"
fi
if [ "$mode" = bootstrap ]; then
  git update-ref --no-deref HEAD "$base" </dev/null || die 'cannot move HEAD to the baseline'
  git read-tree --reset -u "$base" </dev/null || die 'cannot check out the baseline'
else
  if [ "$head" != "$base" ]; then git update-ref --no-deref HEAD "$base" </dev/null || die 'cannot move HEAD back to the baseline'; fi
  if [ $drift = 1 ]; then git read-tree --reset -u "$last" </dev/null || die 'cannot restore the last synced files'; fi
fi
# The patch stays in the git dir until the next sync, for inspection.
f="$gd/sidecar-patch"
cat > "$f" || die 'cannot store the patch in the workspace'
case "$(tail -n 1 "$f")" in
  "$token empty") ;;
  "$token patch") git apply --index --whitespace=nowarn "$f" </dev/null >/dev/null || die 'the patch did not apply' ;;
  *) die 'the patch arrived incomplete' ;;
esac
t=$(git write-tree </dev/null) || die 'cannot record the workspace after the sync'
echo "tree $t"
`

// checkScript reports the workspace's tree without changing anything: it
// scans into a throwaway copy of the index.
func checkScript(d Dest) string {
	var b strings.Builder
	b.WriteString(prelude)
	fmt.Fprintf(&b, "if ! cd -- %s 2>/dev/null || [ ! -e .git ]; then echo 'missing'; exit 0; fi\n", d.PathWord())
	b.WriteString(gitDirSnippet)
	b.WriteString(`i="$gd/sidecar-check-index.$$"
trap 'rm -f "$i"' EXIT
if [ -f "$gd/index" ]; then cp -p "$gd/index" "$i" || die 'cannot copy the index'; fi
GIT_INDEX_FILE=$i git add -A </dev/null >/dev/null || die 'cannot scan the workspace (git add -A)'
t=$(GIT_INDEX_FILE=$i git write-tree </dev/null) || die 'cannot record the workspace (git write-tree)'
echo "tree $t"
h=$(git rev-parse -q --verify 'HEAD^{commit}' 2>/dev/null </dev/null) && echo "head $h"
exit 0
`)
	return b.String()
}

// execScript runs argv in the workspace (in subdir when it exists there).
func execScript(d Dest, subdir string, argv []string) string {
	var b strings.Builder
	b.WriteString(prelude)
	fmt.Fprintf(&b, "cd -- %s || die 'cannot enter the workspace folder'\n", d.PathWord())
	if subdir != "" {
		fmt.Fprintf(&b, "if [ -d %s ]; then cd -- %s || die 'cannot enter the subfolder'; fi\n", q(subdir), q(subdir))
	}
	b.WriteString("exec")
	for _, a := range argv {
		b.WriteString(" " + q(a))
	}
	b.WriteString("\n")
	return b.String()
}

// reply is a parsed script answer.
type reply map[string][]string

func parseReply(out string) reply {
	r := reply{}
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		k, v, _ := strings.Cut(sc.Text(), " ")
		r[k] = append(r[k], v)
	}
	return r
}

func (r reply) first(k string) (string, bool) {
	if v := r[k]; len(v) > 0 {
		return v[0], true
	}
	return "", false
}
