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

// workspaceMarker is the file in the workspace's git dir that says git
// sidecar made the repository (and configured it; its content changes
// when the configuration does). A repository without it is not ours to
// take over.
const workspaceMarker = "sidecar-workspace"

const markerContent = "git-sidecar workspace 4"

// workspaceAttributes makes the workspace's git take every file's bytes as
// they are, whatever .gitattributes, config or the remote's ~/.gitconfig
// say: info/attributes wins over all of them.
const workspaceAttributes = "* -text -eol -filter -ident -working-tree-encoding"

// prepareArgs are the words of prepareScript.
type prepareArgs struct {
	format string // object format of a repository to create ("" for git's default)
	url    string
	want   []string // commits wanted as the baseline
	trees  []string // trees the workspace may still hold from earlier syncs
	force  bool     // take over a repository that is not ours
}

// prepareScript makes sure the workspace is a repository of ours (made
// here if the folder is missing or empty, refused if it is someone
// else's), configured so that its git converts nothing; points its origin
// at url and fetches; then reports which wanted commits and trees it has
// and which commits it holds (for a bundle's prerequisites).
//
// When it creates the folder it says how many path components it created
// ("created N"; 0 when it initialized an empty folder that was there), so
// that a setup that fails later can remove exactly that.
func prepareScript(d Dest, a prepareArgs) string {
	var b strings.Builder
	b.WriteString(prelude)
	force := "0"
	if a.force {
		force = "1"
	}
	fmt.Fprintf(&b, "ws=%s force=%s url=%s\n", d.PathWord(), force, q(a.url))
	initArgs := "-q"
	if a.format != "" && a.format != "sha1" {
		initArgs += " " + q("--object-format="+a.format)
	}
	fmt.Fprintf(&b, "marker=%s content=%s attrs=%s\n", q(workspaceMarker), q(markerContent), q(workspaceAttributes))
	b.WriteString(`k=0
if [ ! -e "$ws" ] && [ ! -L "$ws" ]; then
  p=$ws
  while [ ! -e "$p" ] && [ ! -L "$p" ]; do
    k=$((k+1)); up=$(dirname -- "$p"); [ "$up" = "$p" ] && break; p=$up
  done
  mkdir -p -- "$ws" || die 'cannot create the workspace folder'
fi
cd -- "$ws" || die 'cannot enter the workspace folder'
if [ -e .git ]; then
` + indent(gitDirSnippet) + `  if [ -f "$gd/$marker" ] || [ -f "$gd/sidecar-patch" ]; then
    : # ours (sidecar-patch: made by an earlier version)
  elif [ "$force" = 1 ]; then
    echo taken-over
  else
    echo foreign; exit 0
  fi
else
  if [ -n "$(ls -A . 2>/dev/null)" ]; then die 'the workspace folder is not empty and is not a git repository; choose another path or empty it'; fi
  git init ` + initArgs + ` </dev/null >/dev/null || die 'git init failed in the workspace'
  gd=.git
  echo "created $k"
fi
rm -f "$gd/sidecar-patch"
m=; [ -f "$gd/$marker" ] && read -r m < "$gd/$marker"
if [ "$m" != "$content" ]; then
  for kv in core.autocrlf=false core.safecrlf=false core.fsmonitor=false core.sparseCheckout=false \
            index.sparse=false core.splitIndex=false core.untrackedCache=true index.version=4; do
    git config "${kv%%=*}" "${kv#*=}" </dev/null || die 'cannot configure the workspace repository'
  done
  # Version 4 makes the index smaller to read, write and checksum
  # (paths share prefixes); index.version only applies to new files.
  if [ -f "$gd/index" ]; then git update-index --index-version 4 </dev/null >/dev/null 2>&1; fi
  mkdir -p "$gd/info" && printf '%s\n' "$attrs" > "$gd/info/attributes" || die 'cannot configure the workspace repository'
  printf '%s\n' "$content" > "$gd/$marker" || die 'cannot mark the workspace as ours'
fi
if [ -n "$url" ]; then
  git config remote.origin.url "$url" </dev/null || die 'cannot set origin in the workspace'
  git config --get remote.origin.fetch >/dev/null 2>&1 </dev/null || git config remote.origin.fetch '+refs/heads/*:refs/remotes/origin/*' </dev/null
  if out=$(git fetch -q origin </dev/null 2>&1); then
    echo 'fetch ok'
  else
    printf 'fetch-failed %s\n' "$(printf '%s' "$out" | tr '\n\r\t' '   ' | cut -c1-300)"
  fi
fi
`)
	for _, w := range a.want {
		if w == "" {
			continue
		}
		fmt.Fprintf(&b, "if git cat-file -e %s 2>/dev/null </dev/null; then echo %s; fi\n", q(w+"^{commit}"), q("has "+w))
	}
	for _, t := range a.trees {
		if t == "" {
			continue
		}
		fmt.Fprintf(&b, "if git cat-file -e %s 2>/dev/null </dev/null; then echo %s; fi\n", q(t+"^{tree}"), q("has-tree "+t))
	}
	b.WriteString(`git for-each-ref --count=100 --format='tip %(objectname)' refs/sidecar refs/remotes/origin refs/heads </dev/null 2>/dev/null
h=$(git rev-parse -q --verify 'HEAD^{commit}' 2>/dev/null </dev/null) && echo "tip $h"
exit 0
`)
	return b.String()
}

func indent(s string) string {
	return "  " + strings.ReplaceAll(strings.TrimSuffix(s, "\n"), "\n", "\n  ") + "\n"
}

// cleanupScript removes what a failed setup made: the first `created`
// path components of the workspace path (the folders prepareScript
// created), or, when it initialized a folder that was there and empty,
// everything now in it.
func cleanupScript(d Dest, created int) string {
	var b strings.Builder
	b.WriteString(prelude)
	fmt.Fprintf(&b, "ws=%s k=%d\n", d.PathWord(), created)
	b.WriteString(`if [ "$k" -gt 0 ]; then
  p=$ws; i=1
  while [ "$i" -lt "$k" ]; do p=$(dirname -- "$p"); i=$((i+1)); done
  rm -rf -- "$p" || die 'cannot remove the folder setup made'
else
  cd -- "$ws" || exit 0
  find . ! -name . -prune -exec rm -rf -- {} + || die 'cannot empty the folder setup initialized'
fi
echo cleaned
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
	token     string // starts the header line of stdin, proving it is ours
	// applyFirst (incremental syncs of a watch) moves the files before
	// scanning the workspace; see applyScript.
	applyFirst bool
}

// applyScript is the sync itself. It scans the workspace (while the work
// tree is snapshotted here, and while it reads stdin) and keeps anything
// that differs from what we left there under backupRef. On stdin come a
// header line "<token> <tree> <how> <KiB>" and then a pack of the objects
// of <tree> that it lacks, which it stores as <how> says. Once both are
// done, it moves its files from what it holds to <tree> with one two-tree
// read-tree, which changes only the paths that differ and leaves ignored
// files (build output) alone. If that fails part way (a full disk), it
// puts back what it changed: a failed sync leaves the workspace as it was.
//
// With applyFirst, an incremental sync reads stdin and moves the files
// first, trusting the workspace's index to hold the last synced tree, and
// scans afterwards, so that a saved file lands without waiting for a scan
// of the whole workspace. That read-tree refuses to touch a path whose
// file differs from the index, or an untracked file in the way, so no
// edit made in the workspace is overwritten: when it refuses, the sync
// goes on as without applyFirst. The scan afterwards finds edits made
// elsewhere in the workspace, keeps them under backupRef like the scan
// before would have, and puts those paths back to <tree>.
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
	first := "0"
	if a.applyFirst && !a.bootstrap && a.last != "" {
		first = "1"
	}
	fmt.Fprintf(&b, "mode=%s base=%s last=%s backup=%s token=%s marker=%s first=%s\n",
		q(mode), q(a.base), q(a.last), q(a.backupRef), q(a.token), q(workspaceMarker), first)
	fmt.Fprintf(&b, "if ! cd -- %s 2>/dev/null || [ ! -e .git ]; then echo 'need-bootstrap the workspace is missing'; exit 0; fi\n", d.PathWord())
	b.WriteString(gitDirSnippet)
	// One cat-file answers the three lookups; read and case are builtins.
	fmt.Fprintf(&b, "chk=$(printf '%%s\\n' %s %s 'HEAD^{commit}' | git cat-file --batch-check 2>/dev/null)\n",
		q(a.base+"^{commit}"), q(last+"^{tree}"))
	b.WriteString(applyBody)
	return b.String()
}

const applyBody = `if [ ! -f "$gd/$marker" ]; then
  [ "$mode" = incremental ] && { echo 'need-bootstrap the workspace is not marked as made by git sidecar'; exit 0; }
  die 'the workspace is not marked as made by git sidecar'
fi
{ read l1; read l2; read l3; } <<SIDECAR_CHECKS
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
# Objects over 1 MiB are stored and checked out streaming (git reads
# smaller ones whole); the scan keeps git's default, under which hashing
# a file does not also compress it.
big='-c core.bigFileThreshold=1m'
# A checkout compares the files it replaces with the index; one written in
# the same second as the index (most of what the last sync wrote) is
# compared by content, and over bigFileThreshold git hashes it by
# deflating it into a pack it then throws away: 1.4 s for 40 MiB at the
# default level, against 0.2 s for the hash alone at level 0.
co="$big -c pack.compression=0"
# receive reads the header line and stores the objects that follow.
receive() {
  IFS= read -r hdr || die 'the sync was cut short before anything was sent'
  set -f; set -- $hdr; set +f
  [ "$#" = 4 ] && [ "$1" = "$token" ] || die 'the sync was cut short before anything was sent'
  new=$2 how=$3 need=$4
  case "$new" in ''|*[!0-9a-f]*) die 'the sync sent a bad tree id' ;; esac
  case "$need" in ''|*[!0-9]*) need=0 ;; esac
  if [ "$need" -gt 0 ]; then
    avail=$(df -Pk . 2>/dev/null | awk 'NR==2 {print $4}')
    case "$avail" in
      ''|*[!0-9]*) ;;
      *) [ "$avail" -ge "$need" ] || die "not enough space in the workspace: the sync needs $((need/1024+1)) MiB, $((avail/1024)) MiB are free; nothing was changed" ;;
    esac
  fi
  # "store-failed" tells the other side that nothing changed here and that
  # it may simply try again (a connection cut, a pack cut short).
  case "$how" in
    none) ;;
    unpack) git $big unpack-objects -q >/dev/null || { echo store-failed; die 'cannot store the objects sent (git unpack-objects); nothing was changed'; } ;;
    unpack0) git $big -c core.looseCompression=0 unpack-objects -q >/dev/null || { echo store-failed; die 'cannot store the objects sent (git unpack-objects); nothing was changed'; } ;;
    index) git $big index-pack --stdin --fix-thin >/dev/null || { echo store-failed; die 'cannot store the objects sent (git index-pack); nothing was changed'; } ;;
    *) die "unknown pack kind $how" ;;
  esac
  got=1
}
got= applied=
if [ "$first" = 1 ]; then
  receive
  idx=$(git write-tree </dev/null 2>/dev/null)
  if [ "$idx" = "$last" ] && git $co read-tree -m -u --exclude-per-directory=.gitignore "$last" "$new" </dev/null >/dev/null 2>&1; then
    applied=1; echo early
  fi
fi
cur=
if [ -n "$got" ]; then
  git add -A </dev/null >/dev/null || die 'cannot scan the workspace (git add -A)'
else
  # The scan runs while the objects arrive and are stored: they touch
  # neither each other's files nor the index. Whatever happens, the script
  # ends only after the scan, so that its index.lock is gone.
  sc="$gd/sidecar-scan.$$"
  { git add -A </dev/null >/dev/null && git write-tree </dev/null >"$sc"; } & scan=$!
  trap 'wait; rm -f "$sc"' EXIT
  receive
  wait "$scan" || die 'cannot scan the workspace (git add -A, git write-tree)'
  read -r cur <"$sc" && [ -n "$cur" ] || die 'cannot record the workspace (git write-tree)'
  rm -f "$sc"
  trap - EXIT
fi
[ -n "$cur" ] || cur=$(git write-tree </dev/null) || die 'cannot record the workspace (git write-tree)'
expect=$last
[ -n "$applied" ] && expect=$new
if [ -z "$expect" ]; then
  if [ -n "$head" ]; then expect=$(git rev-parse "$head^{tree}" </dev/null); else expect=$(git hash-object -t tree /dev/null </dev/null); fi
fi
if [ "$cur" != "$expect" ]; then
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
if [ "$cur" != "$new" ]; then
  e="$gd/sidecar-error.$$"; rb="$gd/sidecar-rollback-index.$$"
  trap 'rm -f "$e" "$rb"' EXIT
  if ! git $co read-tree -m -u --exclude-per-directory=.gitignore "$cur" "$new" </dev/null >/dev/null 2>"$e"; then
    why=$(tr '\n\r\t' '   ' <"$e" | cut -c1-300)
    # Put back what the checkout changed. First remove the files it
    # added, to get back the room they took (a name git quotes is left
    # for the reset below); then an index of the new tree with the stat
    # data of the files it did not touch, and a reset to what was there,
    # which rewrites only what differs.
    git -c core.quotePath=false diff-tree -r --name-only --diff-filter=A "$cur" "$new" </dev/null 2>/dev/null |
      while IFS= read -r p; do case $p in \"*) ;; *) rm -f -- "$p" ;; esac; done
    if cp -p "$gd/index" "$rb" &&
       GIT_INDEX_FILE=$rb git read-tree -i -m "$cur" "$new" </dev/null >/dev/null 2>&1 &&
       GIT_INDEX_FILE=$rb git $co read-tree --reset -u "$cur" </dev/null >/dev/null 2>&1 &&
       mv -f "$rb" "$gd/index"; then
      die "cannot update the workspace files ($why); they were left as they were"
    fi
    echo 'rollback-failed'
    die "cannot update the workspace files ($why), and could not put them all back; the next sync rebuilds the workspace"
  fi
fi
if [ "$head" != "$base" ]; then git update-ref --no-deref HEAD "$base" </dev/null || die 'cannot move HEAD to the baseline'; fi
if [ "$new" != "$last" ]; then git update-ref refs/sidecar/synced "$new" </dev/null || die 'cannot record the synced tree'; fi
t=$(git write-tree </dev/null) || die 'cannot record the workspace after the sync'
echo "tree $t"
if [ "$how" != none ]; then git gc --auto --quiet </dev/null >/dev/null 2>&1; fi
exit 0
`

// checkScript reports the workspace's tree without changing anything: it
// scans into a throwaway copy of the index.
func checkScript(d Dest) string {
	var b strings.Builder
	b.WriteString(prelude)
	fmt.Fprintf(&b, "if ! cd -- %s 2>/dev/null || [ ! -e .git ]; then echo 'missing'; exit 0; fi\n", d.PathWord())
	b.WriteString(gitDirSnippet)
	fmt.Fprintf(&b, "[ -f \"$gd\"/%s ] || [ -f \"$gd/sidecar-patch\" ] || { echo foreign; exit 0; }\n", q(workspaceMarker))
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
