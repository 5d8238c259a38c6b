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
	"regexp"
	"strconv"
	"strings"
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
// untracked files that are not ignored) as a tree, through a throwaway
// copy of the index so that the user's index is left alone. The copy keeps
// the user's stat information, so only files that changed are read.
func (r *repo) snapshot(ctx context.Context, indexFile string) (string, error) {
	if err := copyIndex(filepath.Join(r.gitDir, "index"), indexFile); err != nil {
		return "", fmt.Errorf("snapshot the work tree: %w", err)
	}
	g := r.git
	g.Env = append(append([]string(nil), g.Env...), "GIT_INDEX_FILE="+indexFile)
	if _, err := g.Run(ctx, "-c", "advice.addEmbeddedRepo=false", "add", "-A"); err != nil {
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
	case st.Baseline == head:
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
	tree, err := e.r.snapshot(ctx, filepath.Join(e.r.stateDir(e.name), "index"))
	if err != nil {
		return nil, err
	}
	e.logf("work tree snapshot %s (HEAD %s)", short(tree), short(head))
	var res *syncResult
	if reason == "" {
		res, reason, err = e.incremental(ctx, tree)
		if err != nil {
			return nil, err
		}
		if reason != "" {
			e.logf("incremental sync not possible: %s", reason)
		}
	}
	if reason != "" {
		if res, err = e.bootstrap(ctx, head, branch, tree, reason); err != nil {
			return nil, err
		}
	}
	res.Duration = time.Since(start)
	res.Bytes = e.sent
	return res, nil
}

// incremental sends the difference between the tree left in the
// workspace and the new snapshot, in one remote command. It returns a
// reason to bootstrap instead when the workspace cannot take it.
func (e *engine) incremental(ctx context.Context, tree string) (*syncResult, string, error) {
	res := &syncResult{Mode: "incremental", Tree: tree}
	a := applyArgs{
		base:      e.st.Baseline,
		last:      e.st.Applied,
		backupRef: backupRef(),
		token:     "git-sidecar-patch-end-" + randomHex(12),
		hasPatch:  tree != e.st.Applied,
	}
	out, files, err := e.runApply(ctx, a, e.st.Applied, tree)
	if err != nil {
		return nil, "", err
	}
	if why, ok := out.first("need-bootstrap"); ok {
		return nil, why, nil
	}
	res.Files = files
	if err := e.finish(ctx, res, out, tree); err != nil {
		return res, "", err
	}
	return res, "", nil
}

func backupRef() string {
	return "refs/sidecar/backup/" + time.Now().UTC().Format("20060102T150405Z") + "-" + randomHex(3)
}

// runApply streams the patch from..to (when there is one) into
// applyScript.
func (e *engine) runApply(ctx context.Context, a applyArgs, from, to string) (reply, int, error) {
	script := applyScript(e.dest, a)
	var stdin io.Reader
	var counter *patchCounter
	var wait func() error
	var cancel context.CancelFunc = func() {}
	if a.hasPatch {
		pctx, c := context.WithCancel(ctx)
		cancel = c
		pr, pw, err := os.Pipe()
		if err != nil {
			cancel()
			return nil, 0, err
		}
		cmd := e.r.git.Command(pctx, "diff-tree", "-r", "-p", "--binary", "--full-index", "-M",
			"--no-ext-diff", "--no-color", "--no-textconv", "--src-prefix=a/", "--dst-prefix=b/", from, to)
		cmd.Stdout = pw
		if err := cmd.Start(); err != nil {
			pr.Close()
			pw.Close()
			cancel()
			return nil, 0, err
		}
		pw.Close()
		wait = func() error {
			pr.Close()
			return cmd.Wait()
		}
		counter = &patchCounter{r: pr}
		stdin = io.MultiReader(counter, strings.NewReader(a.token+"\n"))
	} else {
		stdin = strings.NewReader(a.token + "\n")
	}
	defer cancel()
	var stdout, stderr bytes.Buffer
	cr := &countingReader{r: stdin}
	e.sent += int64(len(script))
	err := e.tr.run(ctx, script, cr, &stdout, &stderr)
	e.sent += cr.n
	var diffErr error
	if wait != nil {
		if err != nil || !strings.Contains(stdout.String(), "tree ") {
			// The workspace did not take the whole patch; stop git.
			cancel()
		}
		diffErr = wait()
	}
	if err != nil {
		return nil, 0, remoteError("sync the workspace", err, stderr.String())
	}
	out := parseReply(stdout.String())
	if _, ok := out.first("need-bootstrap"); ok {
		return out, 0, nil
	}
	if diffErr != nil {
		return nil, 0, fmt.Errorf("make the patch: %w", diffErr)
	}
	files := 0
	if counter != nil {
		files = counter.files
	}
	return out, files, nil
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
	if got != tree {
		e.st.Applied = ""
		e.st.InSync = false
		e.st.Mismatch = fmt.Sprintf("workspace tree %s, local tree %s", short(got), short(tree))
		return &errNotInSync{name: e.name, local: tree, remote: got}
	}
	e.st.Applied = tree
	e.st.InSync = true
	e.st.Mismatch = ""
	// Keep the applied tree reachable so that gc cannot take it while the
	// next sync still needs to diff against it.
	if err := e.keepTree(ctx, tree); err != nil {
		return err
	}
	return nil
}

func (e *engine) keepTree(ctx context.Context, tree string) error {
	g := e.r.git
	g.Env = append(append([]string(nil), g.Env...), identityEnv...)
	args := []string{"commit-tree", tree, "-m", "git-sidecar: tree synced to " + e.name}
	if e.st.Baseline != "" {
		args = append(args, "-p", e.st.Baseline)
	}
	c, err := g.Run(ctx, args...)
	if err != nil {
		return fmt.Errorf("record the synced tree: %w", err)
	}
	if _, err := e.r.git.Run(ctx, "update-ref", "refs/sidecar/"+e.name+"/synced", c); err != nil {
		return fmt.Errorf("record the synced tree: %w", err)
	}
	return nil
}

// identityEnv names the author of our bookkeeping commits, so that they
// work in repositories without user.name.
var identityEnv = []string{
	"GIT_AUTHOR_NAME=git-sidecar", "GIT_AUTHOR_EMAIL=git-sidecar@localhost",
	"GIT_COMMITTER_NAME=git-sidecar", "GIT_COMMITTER_EMAIL=git-sidecar@localhost",
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
		a.last = e.st.Applied
	}
	baseTree, err := e.r.git.Run(ctx, "rev-parse", base+"^{tree}")
	if err != nil {
		return nil, fmt.Errorf("read the baseline: %w", err)
	}
	a.hasPatch = baseTree != tree
	reply, files, err := e.runApply(ctx, a, base, tree)
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
	e.sent += cr.n
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

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
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

var bytesRE = regexp.MustCompile(`(\d+) bytes sent`)

// summary is the one line a sync prints.
func (res *syncResult) summary(name string) string {
	files := "no changes"
	switch res.Files {
	case 0:
	case 1:
		files = "1 file"
	default:
		files = fmt.Sprintf("%d files", res.Files)
	}
	mode := res.Mode
	if res.Mode == "bootstrap" {
		mode = "bootstrap via " + res.Via + ", " + res.Reason
	}
	return fmt.Sprintf("sidecar %q: in sync at %s (%s; %s, %d bytes sent, %s)",
		name, short(res.Tree), mode, files, res.Bytes, res.Duration.Round(time.Millisecond))
}
