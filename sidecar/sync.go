package sidecar

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/git-relay/git-relay/internal/gitx"
	"github.com/git-relay/git-relay/internal/sshx"
)

// engine syncs one sidecar. It owns the sidecar's state while the sync
// lock is held.
type engine struct {
	r    *repo
	name string
	dest Dest
	st   *State
	tr   transport
	logf func(format string, args ...any)
	// sent counts every byte handed to the transport (scripts and stdin).
	sent int64
}

// syncResult is what one sync did.
type syncResult struct {
	Mode        string // "bootstrap" or "incremental"
	Reason      string // why a bootstrap happened
	Via         string // how a bootstrap got its commits: "origin" or "bundle"
	Files       int
	Bytes       int64
	Duration    time.Duration
	Tree        string
	Backup      string
	BackupFiles int
	FetchError  string
}

// errNotInSync is a sync whose verification failed.
type errNotInSync struct {
	name, local, remote string
}

func (e *errNotInSync) Error() string {
	return fmt.Sprintf("workspace of %q does NOT match the work tree after the sync (workspace tree %s, local tree %s); the next sync rebuilds it",
		e.name, short(e.remote), short(e.local))
}

func short(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	if id == "" {
		return "(none)"
	}
	return id
}

// head is the local HEAD commit and branch ("" when detached).
func (r *repo) head(ctx context.Context) (commit, branch string, err error) {
	out, err := r.git.Run(ctx, "rev-parse", "HEAD^{commit}", "--symbolic-full-name", "HEAD", "--")
	if err != nil {
		return "", "", errors.New("the repository has no commits yet; commit something, then run git sidecar again")
	}
	lines := strings.Split(out, "\n")
	commit = lines[0]
	if len(lines) > 1 && strings.HasPrefix(lines[1], "refs/heads/") {
		branch = lines[1]
	}
	return commit, branch, nil
}

// snapshot records the work tree as git sees it (tracked files plus
// untracked files that are not ignored) as a tree, through an index of our
// own so that the user's index is left alone.
//
// With keep, the index persists between syncs: it is refreshed from the
// user's index only when that one changed, and otherwise keeps its stat
// information and cached trees from the last sync, so that a sync reads
// only the files that changed and rebuilds only their trees.
func (r *repo) snapshot(ctx context.Context, indexFile string, keep bool) (string, error) {
	userIndex := filepath.Join(r.gitDir, "index")
	stamp := ""
	if fi, err := os.Stat(userIndex); err == nil {
		stamp = fmt.Sprintf("%d %d", fi.Size(), fi.ModTime().UnixNano())
		if sys, ok := fi.Sys().(*syscall.Stat_t); ok {
			stamp += fmt.Sprintf(" %d", sys.Ino)
		}
	}
	stampFile := indexFile + ".source"
	reuse := false
	if keep && stamp != "" {
		if b, err := os.ReadFile(stampFile); err == nil && string(b) == stamp {
			if _, err := os.Stat(indexFile); err == nil {
				reuse = true
			}
		}
	}
	if !reuse {
		if err := copyIndex(userIndex, indexFile); err != nil {
			return "", fmt.Errorf("snapshot the work tree: %w", err)
		}
		if keep {
			if err := os.WriteFile(stampFile, []byte(stamp), 0o644); err != nil {
				return "", fmt.Errorf("snapshot the work tree: %w", err)
			}
		}
	}
	g := r.git
	g.Env = append(append([]string(nil), g.Env...), "GIT_INDEX_FILE="+indexFile)
	if _, err := g.Run(ctx, "-c", "advice.addEmbeddedRepo=false", "-c", "core.untrackedCache=true", "add", "-A"); err != nil {
		return "", fmt.Errorf("snapshot the work tree: %w", err)
	}
	tree, err := g.Run(ctx, "write-tree")
	if err != nil {
		return "", fmt.Errorf("snapshot the work tree: %w", err)
	}
	return tree, nil
}

// copyIndex copies the index with its modification time, which git's
// check for racily clean entries compares file times against.
func copyIndex(from, to string) error {
	if err := os.MkdirAll(filepath.Dir(to), 0o755); err != nil {
		return err
	}
	src, err := os.Open(from)
	if errors.Is(err, os.ErrNotExist) {
		err := os.Remove(to)
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return err
	}
	if err != nil {
		return err
	}
	defer src.Close()
	st, err := src.Stat()
	if err != nil {
		return err
	}
	tmp := to + ".tmp"
	dst, err := os.Create(tmp)
	if err != nil {
		return err
	}
	if _, err := io.Copy(dst, src); err != nil {
		dst.Close()
		return err
	}
	if err := dst.Close(); err != nil {
		return err
	}
	if err := os.Chtimes(tmp, st.ModTime(), st.ModTime()); err != nil {
		return err
	}
	return os.Rename(tmp, to)
}

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

// staleReason says why the sidecar must bootstrap, or "" when an
// incremental sync will do.
func (e *engine) staleReason(ctx context.Context, head, branch string) (string, error) {
	st := e.st
	switch {
	case st.Baseline == "" || st.Applied == "":
		if st.Mismatch != "" {
			return "the last sync did not verify", nil
		}
		return "no baseline yet", nil
	case st.Dest != e.dest.Raw:
		return "DEST changed", nil
	case st.Branch != branch:
		from, to := strings.TrimPrefix(st.Branch, "refs/heads/"), strings.TrimPrefix(branch, "refs/heads/")
		if from == "" {
			from = "a detached HEAD"
		}
		if to == "" {
			to = "a detached HEAD"
		}
		return fmt.Sprintf("branch changed from %s to %s", from, to), nil
	case st.Baseline == head || st.LastHead == head:
		// The last sync already checked that this HEAD descends from
		// the baseline.
		return "", nil
	}
	ok, err := e.r.git.Ok(ctx, "merge-base", "--is-ancestor", st.Baseline, head)
	if err != nil {
		// A baseline that no longer exists locally cannot be built on.
		return "the baseline is gone", nil
	}
	if !ok {
		return "history was rewritten (the baseline is no longer an ancestor of HEAD)", nil
	}
	return "", nil
}

// sync brings the workspace in line with the work tree. force bootstraps
// whatever the state.
func (e *engine) sync(ctx context.Context, force bool) (*syncResult, error) {
	start := time.Now()
	head, branch, err := e.r.head(ctx)
	if err != nil {
		return nil, err
	}
	reason := "setup"
	if !force {
		if reason, err = e.staleReason(ctx, head, branch); err != nil {
			return nil, err
		}
	}
	var res *syncResult
	tree := ""
	if reason == "" {
		res, tree, reason, err = e.incremental(ctx)
		if err != nil {
			return nil, err
		}
		if reason != "" {
			e.logf("incremental sync not possible: %s", reason)
		}
	}
	if reason != "" {
		if tree == "" {
			if tree, err = e.snapshot(ctx); err != nil {
				return nil, err
			}
		}
		if res, err = e.bootstrap(ctx, head, branch, tree, reason); err != nil {
			return res, err
		}
	}
	e.st.LastHead = head
	res.Duration = time.Since(start)
	res.Bytes = e.sent
	return res, nil
}

func (e *engine) snapshot(ctx context.Context) (string, error) {
	tree, err := e.r.snapshot(ctx, filepath.Join(e.r.stateDir(e.name), "index"), true)
	if err == nil {
		e.logf("work tree snapshot %s", short(tree))
	}
	return tree, err
}

// errWorkspaceDone tells a patch writer that the workspace stopped
// reading.
var errWorkspaceDone = errors.New("the workspace stopped reading")

// incremental sends the difference between the tree left in the
// workspace and a new snapshot, in one remote command. The command starts
// first: the workspace scans itself for drift while the work tree is
// snapshotted here, and the patch follows on its stdin. It returns a
// reason to bootstrap instead when the workspace cannot take the patch.
func (e *engine) incremental(ctx context.Context) (res *syncResult, tree, reason string, err error) {
	a := applyArgs{
		base:      e.st.Baseline,
		last:      e.st.Applied,
		backupRef: backupRef(),
		token:     "git-sidecar-patch-end-" + randomHex(12),
	}
	out, files, err := e.runApply(ctx, a, a.last, func() (string, error) {
		t, err := e.snapshot(ctx)
		tree = t
		return t, err
	})
	if err != nil {
		return nil, tree, "", err
	}
	if why, ok := out.first("need-bootstrap"); ok {
		return nil, tree, why, nil
	}
	res = &syncResult{Mode: "incremental", Tree: tree, Files: files}
	if err := e.finish(ctx, res, out, tree); err != nil {
		return res, tree, "", err
	}
	return res, tree, "", nil
}

// runApply starts applyScript, then computes the new tree with newTree
// while the workspace scans itself, and streams the patch from..tree to
// it.
func (e *engine) runApply(ctx context.Context, a applyArgs, from string, newTree func() (string, error)) (reply, int, error) {
	script := applyScript(e.dest, a)
	pr, pw := io.Pipe()
	cr := &countingReader{r: pr}
	var stdout, stderr bytes.Buffer
	done := make(chan error, 1)
	go func() {
		err := e.tr.run(ctx, script, cr, &stdout, &stderr)
		pr.CloseWithError(errWorkspaceDone)
		done <- err
	}()
	tree, terr := newTree()
	files, werr := 0, error(nil)
	if terr != nil {
		// Without the token line the workspace applies nothing.
		pw.CloseWithError(terr)
	} else {
		files, werr = e.writePatch(ctx, pw, from, tree, a.token)
		pw.Close()
	}
	rerr := <-done
	e.sent += int64(len(script)) + cr.n.Load()
	if terr != nil {
		return nil, 0, terr
	}
	if rerr != nil {
		return nil, 0, remoteError("sync the workspace", rerr, stderr.String())
	}
	out := parseReply(stdout.String())
	if _, ok := out.first("need-bootstrap"); ok {
		return out, 0, nil
	}
	if werr != nil {
		return nil, 0, werr
	}
	return out, files, nil
}

func backupRef() string {
	return "refs/sidecar/backup/" + time.Now().UTC().Format("20060102T150405Z") + "-" + randomHex(3)
}

// writePatch writes the patch from..to (nothing when they are equal) and
// the closing token line to w, and returns how many files the patch
// touches.
func (e *engine) writePatch(ctx context.Context, w io.Writer, from, to, token string) (int, error) {
	files, sent := 0, int64(0)
	if from != to {
		pctx, cancel := context.WithCancel(ctx)
		defer cancel()
		// git writes into an OS pipe we read from, so that when the
		// workspace stops reading we can stop git rather than block it.
		pr, pw, err := os.Pipe()
		if err != nil {
			return 0, err
		}
		cmd := e.r.git.Command(pctx, "diff-tree", "-r", "-p", "--binary", "--full-index", "-M",
			"--no-ext-diff", "--no-color", "--no-textconv", "--src-prefix=a/", "--dst-prefix=b/", from, to)
		cmd.Stdout = pw
		if err := cmd.Start(); err != nil {
			pr.Close()
			pw.Close()
			return 0, fmt.Errorf("make the patch: %w", err)
		}
		pw.Close()
		counter := &patchCounter{r: pr}
		n, cerr := io.Copy(w, counter)
		sent = n
		if cerr != nil {
			cancel()
		}
		pr.Close()
		werr := cmd.Wait()
		if cerr != nil {
			return 0, fmt.Errorf("send the patch: %w", cerr)
		}
		if werr != nil {
			return 0, fmt.Errorf("make the patch: %w", werr)
		}
		files = counter.files
	}
	// from may be a commit whose tree is to: then git printed nothing.
	last := token + " empty\n"
	if sent > 0 {
		last = token + " patch\n"
	}
	if _, err := io.WriteString(w, last); err != nil {
		return 0, fmt.Errorf("send the patch: %w", err)
	}
	return files, nil
}

// finish checks the tree the workspace reports against the snapshot and
// records the outcome.
func (e *engine) finish(ctx context.Context, res *syncResult, out reply, tree string) error {
	if b, ok := out.first("backup"); ok {
		ref, n, _ := strings.Cut(b, " ")
		res.Backup = ref
		res.BackupFiles, _ = strconv.Atoi(strings.TrimSpace(n))
		e.st.LastBackup = ref
		e.st.LastBackupAt = time.Now()
	}
	got, _ := out.first("tree")
	e.st.Seen = got
	if got != tree {
		e.st.Applied = ""
		e.st.InSync = false
		e.st.Mismatch = fmt.Sprintf("workspace tree %s, local tree %s", short(got), short(tree))
		return &errNotInSync{name: e.name, local: tree, remote: got}
	}
	// Keep the applied tree reachable so that gc cannot take it while the
	// next sync still needs to diff against it. A ref may name a tree.
	if tree != e.st.Applied {
		if _, err := e.r.git.Run(ctx, "update-ref", "refs/sidecar/"+e.name+"/synced", tree); err != nil {
			return fmt.Errorf("record the synced tree: %w", err)
		}
	}
	e.st.Applied = tree
	e.st.InSync = true
	e.st.Mismatch = ""
	return nil
}

// bootstrap (re)builds the workspace: fetch origin there (or send a
// bundle), check out the baseline and apply every local change on top.
func (e *engine) bootstrap(ctx context.Context, head, branch, tree, reason string) (*syncResult, error) {
	res := &syncResult{Mode: "bootstrap", Reason: reason, Tree: tree}
	e.logf("bootstrapping: %s", reason)
	url, err := e.originURL(ctx)
	if err != nil {
		return nil, err
	}
	mb := ""
	if url != "" {
		mb = e.mergeBaseWithOrigin(ctx, head)
	}
	want := []string{head}
	if mb != "" && mb != head {
		want = append(want, mb)
	}
	script := prepareScript(e.dest, url, want)
	var stdout, stderr bytes.Buffer
	e.sent += int64(len(script))
	if err := e.tr.run(ctx, script, nil, &stdout, &stderr); err != nil {
		return nil, remoteError("prepare the workspace", err, stderr.String())
	}
	out := parseReply(stdout.String())
	if msg, ok := out.first("fetch-failed"); ok {
		res.FetchError = msg
		e.logf("the workspace could not fetch origin: %s", msg)
	}
	has := map[string]bool{}
	for _, h := range out["has"] {
		has[h] = true
	}
	// The workspace may hold the commits from an earlier fetch or bundle
	// even when origin cannot be reached now.
	via := "origin"
	if v, _ := out.first("fetch"); v != "ok" {
		via = "workspace"
	}
	var base string
	switch {
	case has[head]:
		base, res.Via = head, via
	case mb != "" && has[mb]:
		base, res.Via = mb, via
	default:
		if err := e.sendBundle(ctx, head, out["tip"]); err != nil {
			return nil, err
		}
		base, res.Via = head, "bundle"
	}
	e.logf("baseline %s (via %s)", short(base), res.Via)
	a := applyArgs{
		bootstrap: true,
		base:      base,
		backupRef: backupRef(),
		token:     "git-sidecar-patch-end-" + randomHex(12),
	}
	if e.st.Dest == e.dest.Raw {
		// Edits made in the workspace are whatever differs from the
		// tree we last saw there.
		a.last = e.st.Applied
		if a.last == "" {
			a.last = e.st.Seen
		}
	}
	reply, files, err := e.runApply(ctx, a, base, func() (string, error) { return tree, nil })
	if err != nil {
		return nil, err
	}
	if why, ok := reply.first("need-bootstrap"); ok {
		return nil, fmt.Errorf("bootstrap the workspace: %s", why)
	}
	res.Files = files
	e.st.Dest = e.dest.Raw
	e.st.Baseline = base
	e.st.Branch = branch
	e.st.BootstrappedAt = time.Now()
	e.st.BootstrapVia = res.Via
	if err := e.finish(ctx, res, reply, tree); err != nil {
		return res, err
	}
	return res, nil
}

// originURL is where the workspace fetches from: the local origin URL
// with insteadOf rewrites applied, a local path made absolute.
func (e *engine) originURL(ctx context.Context) (string, error) {
	if ok, _ := e.r.git.Ok(ctx, "config", "--get", "remote.origin.url"); !ok {
		return "", nil
	}
	url, err := e.r.git.Run(ctx, "ls-remote", "--get-url", "origin")
	if err != nil {
		return "", fmt.Errorf("read the origin URL: %w", err)
	}
	if strings.HasPrefix(url, "-") {
		return "", fmt.Errorf("origin URL %q starts with '-'; refusing to pass it to git", url)
	}
	if !strings.Contains(url, "://") && !isSCPLike(url) && !filepath.IsAbs(url) {
		url = filepath.Join(e.r.top, url)
	}
	return url, nil
}

// mergeBaseWithOrigin is `git merge-base HEAD origin/HEAD` (the common
// ancestor, not origin's tip), trying main and master when origin/HEAD is
// not set.
func (e *engine) mergeBaseWithOrigin(ctx context.Context, head string) string {
	for _, ref := range []string{"refs/remotes/origin/HEAD", "refs/remotes/origin/main", "refs/remotes/origin/master"} {
		if mb, err := e.r.git.Run(ctx, "merge-base", head, ref); err == nil && mb != "" {
			return mb
		}
	}
	return ""
}

// sendBundle sends head and its history, minus what the workspace already
// has, over the connection.
func (e *engine) sendBundle(ctx context.Context, head string, tips []string) error {
	tmpRef := "refs/sidecar/" + e.name + "/bundle"
	if _, err := e.r.git.Run(ctx, "update-ref", tmpRef, head); err != nil {
		return fmt.Errorf("prepare the bundle: %w", err)
	}
	defer func() { _, _ = e.r.git.Run(context.WithoutCancel(ctx), "update-ref", "-d", tmpRef) }()
	args := []string{"bundle", "create", "-q", "-", tmpRef}
	if len(tips) > 0 {
		// Only commits we have can serve as prerequisites.
		var in strings.Builder
		for _, t := range tips {
			in.WriteString(t + "\n")
		}
		out, err := e.r.git.RunInput(ctx, strings.NewReader(in.String()), "cat-file", "--batch-check=%(objectname) %(objecttype)")
		if err == nil {
			for _, line := range strings.Split(out, "\n") {
				if id, typ, _ := strings.Cut(line, " "); typ == "commit" {
					args = append(args, "^"+id)
				}
			}
		}
	}
	e.logf("sending a bundle of %s", short(head))
	pr, pw, err := os.Pipe()
	if err != nil {
		return err
	}
	bctx, cancel := context.WithCancel(ctx)
	defer cancel()
	cmd := e.r.git.Command(bctx, args...)
	cmd.Stdout = pw
	if err := cmd.Start(); err != nil {
		pr.Close()
		pw.Close()
		return fmt.Errorf("bundle the history: %w", err)
	}
	pw.Close()
	script := bundleScript(e.dest, head, "refs/sidecar/head")
	var stdout, stderr bytes.Buffer
	cr := &countingReader{r: pr}
	e.sent += int64(len(script))
	rerr := e.tr.run(ctx, script, cr, &stdout, &stderr)
	e.sent += cr.n.Load()
	if rerr != nil {
		cancel()
	}
	pr.Close()
	werr := cmd.Wait()
	if rerr != nil {
		return remoteError("send the history as a bundle", rerr, stderr.String())
	}
	if werr != nil {
		return fmt.Errorf("bundle the history: %w", werr)
	}
	return nil
}

// remoteError turns a failed script into one line: the script's own
// message when it gave one.
func remoteError(doing string, err error, stderr string) error {
	var exit *sshx.ExitError
	if errors.As(err, &exit) {
		if msg := lastLines(gitx.Sanitize(stderr)); msg != "" {
			return fmt.Errorf("%s: %s", doing, msg)
		}
		return fmt.Errorf("%s: %w", doing, err)
	}
	return fmt.Errorf("%s: %w", doing, err)
}

// lastLines keeps the end of a long message, where the cause usually is.
func lastLines(s string) string {
	const max = 600
	if len(s) > max {
		return "…" + s[len(s)-max:]
	}
	return s
}

// countingReader counts what passes; the count is read while a
// transport's copier may still be reading.
type countingReader struct {
	r io.Reader
	n atomic.Int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	return n, err
}

// patchCounter counts the files in a patch stream as it passes.
type patchCounter struct {
	r     io.Reader
	files int
	carry []byte
}

var diffHeader = []byte("\ndiff --git ")

func (p *patchCounter) Read(b []byte) (int, error) {
	n, err := p.r.Read(b)
	if n > 0 {
		if p.carry == nil {
			p.carry = []byte("\n")
		}
		buf := append(p.carry, b[:n]...)
		p.files += bytes.Count(buf, diffHeader)
		keep := len(diffHeader) - 1
		if len(buf) < keep {
			keep = len(buf)
		}
		p.carry = append([]byte(nil), buf[len(buf)-keep:]...)
	}
	return n, err
}

func filesText(n int) string {
	switch n {
	case 0:
		return "no changes"
	case 1:
		return "1 file"
	}
	return fmt.Sprintf("%d files", n)
}

// summary is the one line a sync prints.
func (res *syncResult) summary(name string) string {
	files := filesText(res.Files)
	mode := res.Mode
	if res.Mode == "bootstrap" {
		mode = "bootstrap via " + res.Via + ", " + res.Reason
	}
	return fmt.Sprintf("sidecar %q: in sync at %s (%s; %s, %d bytes sent, %s)",
		name, short(res.Tree), mode, files, res.Bytes, res.Duration.Round(time.Millisecond))
}
