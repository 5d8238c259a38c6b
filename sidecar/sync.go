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
	snap *snapshotter
	logf func(format string, args ...any)
	// takeover lets a bootstrap take over a DEST that holds a repository
	// git sidecar did not make (setup --force).
	takeover bool
	// sent counts every byte handed to the transport (scripts and stdin).
	sent int64
	// sn is the snapshot this sync took, once taken.
	sn *snapshot
	// dirty, when dirtyKnown, are all the paths that may have changed
	// in the work tree since the last snapshot (a watch knows them): the
	// snapshot looks at those alone when it can.
	dirty      []string
	dirtyKnown bool
	// takeDirty, when set (a kept connection whose holder watches the
	// work tree), gives dirty before a sync; ack, after it succeeded.
	takeDirty func(ctx context.Context) (paths []string, known bool, ack func())
	// applyFirst moves the workspace's files before scanning it (see
	// applyScript): a watch's syncs land sooner.
	applyFirst bool
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
// whatever the state. A sync whose objects the workspace could not store
// changed nothing there, and is tried once more.
func (e *engine) sync(ctx context.Context, force bool) (*syncResult, error) {
	ack := func() {}
	if e.takeDirty != nil && !force {
		// What the kept connection's holder saw change since the last
		// sync: the snapshot looks at those paths alone.
		e.dirty, e.dirtyKnown, ack = e.takeDirty(ctx)
	}
	res, err := e.syncOnce(ctx, force)
	var sf *errStoreFailed
	if errors.As(err, &sf) && ctx.Err() == nil {
		e.logf("the workspace could not store what was sent (%v); trying once more", err)
		res, err = e.syncOnce(ctx, force)
	}
	if err == nil {
		ack()
	}
	return res, err
}

func (e *engine) syncOnce(ctx context.Context, force bool) (*syncResult, error) {
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
	if reason == "" {
		res, reason, err = e.incremental(ctx)
		if err != nil {
			return nil, err
		}
		if reason != "" {
			e.logf("incremental sync not possible: %s", reason)
		}
	}
	if reason != "" {
		if res, err = e.bootstrap(ctx, head, branch, reason); err != nil {
			return res, err
		}
	}
	e.st.LastHead = head
	res.Duration = time.Since(start)
	res.Bytes = e.sent
	return res, nil
}

// snapshot takes this sync's snapshot of the work tree, once.
func (e *engine) snapshot(ctx context.Context) (*snapshot, error) {
	if e.sn != nil {
		return e.sn, nil
	}
	if e.dirtyKnown {
		sn, ok, err := e.snap.takeDirty(ctx, e.dirty)
		if err != nil {
			return nil, err
		}
		if ok {
			e.logf("work tree snapshot %s (%d changed paths looked at)", short(sn.tree), sn.touched)
			e.sn = sn
			return sn, nil
		}
	}
	sn, err := e.snap.take(ctx, true)
	if err != nil {
		return nil, err
	}
	e.logf("work tree snapshot %s (%d paths looked at again)", short(sn.tree), sn.touched)
	e.sn = sn
	return sn, nil
}

// errWorkspaceDone tells a pack writer that the workspace stopped
// reading.
var errWorkspaceDone = errors.New("the workspace stopped reading")

// incremental sends the objects of a new snapshot that the workspace
// lacks, in one remote command. The command starts first: the workspace
// scans itself for edits while the work tree is snapshotted here, and the
// pack follows on its stdin. It returns a reason to bootstrap instead when
// the workspace cannot take it.
func (e *engine) incremental(ctx context.Context) (res *syncResult, reason string, err error) {
	a := applyArgs{
		base:       e.st.Baseline,
		last:       e.st.Applied,
		backupRef:  backupRef(),
		token:      "git-sidecar-" + randomHex(12),
		applyFirst: e.applyFirst,
	}
	out, o, err := e.runApply(ctx, a, func() (*outgoing, error) {
		sn, err := e.snapshot(ctx)
		if err != nil {
			return nil, err
		}
		return e.snap.plan(ctx, sn, []string{e.st.Applied}, e.heldBig(e.st.Applied))
	})
	if err != nil {
		return nil, "", err
	}
	if why, ok := out.first("need-bootstrap"); ok {
		return nil, why, nil
	}
	if _, ok := out.first("early"); ok {
		e.logf("the workspace's files were moved before its scan")
	}
	res = &syncResult{Mode: "incremental", Tree: e.sn.tree, Files: o.files}
	if err := e.finish(ctx, res, out); err != nil {
		return res, "", err
	}
	return res, "", nil
}

// heldBig is the set of big blobs the workspace holds when it holds tree
// (as far as this worktree knows: the big files of the tree it last
// synced).
func (e *engine) heldBig(tree string) map[string]bool {
	m := map[string]bool{}
	if rec := e.snap.loadApplied(); rec.Tree == tree && tree != "" {
		for _, id := range rec.Big {
			m[id] = true
		}
	}
	return m
}

// runApply starts applyScript, then calls prepare (which snapshots the
// work tree and plans the pack) while the workspace scans itself, and
// streams the header and the pack to it.
func (e *engine) runApply(ctx context.Context, a applyArgs, prepare func() (*outgoing, error)) (reply, *outgoing, error) {
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
	o, perr := prepare()
	var werr error
	if perr != nil {
		// Without the header line the workspace changes nothing.
		pw.CloseWithError(perr)
	} else {
		_, werr = fmt.Fprintf(pw, "%s %s %s %d\n", a.token, e.sn.tree, o.how, o.needKiB)
		if werr == nil && o.how != "none" {
			werr = e.snap.writePack(ctx, pw, o)
		}
		// A pack cut short is refused by the workspace's git, so a
		// failure here leaves the workspace's files as they were.
		pw.CloseWithError(werr)
	}
	rerr := <-done
	e.sent += int64(len(script)) + cr.n.Load()
	if perr != nil {
		return nil, nil, perr
	}
	out := parseReply(stdout.String())
	if _, ok := out.first("rollback-failed"); ok {
		e.st.Applied = ""
		e.st.Mismatch = "the last sync stopped part way through the workspace's files"
	}
	if errors.Is(werr, errFileChanged) {
		return nil, nil, errors.New("a big file changed while it was being sent; the workspace was left as it was; run `git sidecar sync` again")
	}
	if _, ok := out.first("need-bootstrap"); ok && rerr == nil {
		return out, o, nil
	}
	// The workspace stopping early shows as a write error here; our own
	// failure shows there as a pack cut short. Report the cause.
	if werr != nil && !errors.Is(werr, errWorkspaceDone) && !errors.Is(werr, io.ErrClosedPipe) {
		return nil, nil, fmt.Errorf("send the changes: %w", werr)
	}
	if rerr != nil {
		err := remoteError("sync the workspace", rerr, stderr.String())
		if _, ok := out.first("store-failed"); ok {
			return nil, nil, &errStoreFailed{err}
		}
		return nil, nil, err
	}
	if werr != nil {
		return nil, nil, fmt.Errorf("send the changes: %w", werr)
	}
	return out, o, nil
}

// errStoreFailed is a sync whose objects the workspace could not store
// (the stream was cut short, say): nothing changed there, and trying
// again is safe.
type errStoreFailed struct{ err error }

func (e *errStoreFailed) Error() string { return e.err.Error() }
func (e *errStoreFailed) Unwrap() error { return e.err }

func backupRef() string {
	return "refs/sidecar/backup/" + time.Now().UTC().Format("20060102T150405Z") + "-" + randomHex(3)
}

// finish checks the tree the workspace reports against the snapshot and
// records the outcome.
func (e *engine) finish(ctx context.Context, res *syncResult, out reply) error {
	tree := e.sn.tree
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
	e.st.Applied = tree
	e.st.InSync = true
	e.st.Mismatch = ""
	e.st.Worktree = e.r.top
	keep := map[string]bool{}
	for _, b := range e.sn.big {
		keep[b.ID] = true
	}
	if err := e.snap.saveApplied(tree, keep); err != nil {
		return err
	}
	e.snap.pruneSigs(keep)
	if err := e.snap.gcStore(ctx, tree); err != nil {
		e.logf("%v", err)
	}
	return nil
}

// errForeign is a DEST that holds a repository git sidecar did not make.
type errForeign struct {
	name, dest string
}

func (e *errForeign) Error() string {
	return fmt.Sprintf("DEST %s holds a git repository that git sidecar did not create, so it was left untouched; choose another DEST, or take it over with `git sidecar setup --force %s` (its files, HEAD and origin are then replaced, its edits kept under refs/sidecar/backup/)", e.dest, e.name)
}

// bootstrap (re)builds the workspace: make sure it is ours, fetch origin
// there (or send a bundle), then move it to the snapshot with the
// baseline as HEAD. A bootstrap that created the workspace and then fails
// removes it again.
func (e *engine) bootstrap(ctx context.Context, head, branch, reason string) (res *syncResult, err error) {
	res = &syncResult{Mode: "bootstrap", Reason: reason}
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
	// Trees the workspace may hold from our earlier syncs: what it needs
	// not be sent again.
	var trees []string
	if e.st.Dest == e.dest.Raw {
		trees = append(trees, e.st.Applied)
		if e.st.Seen != e.st.Applied {
			trees = append(trees, e.st.Seen)
		}
	}
	script := prepareScript(e.dest, prepareArgs{format: e.snap.format.name, url: url, want: want, trees: trees, force: e.takeover})
	var stdout, stderr bytes.Buffer
	e.sent += int64(len(script))
	rerr := e.tr.run(ctx, script, nil, &stdout, &stderr)
	out := parseReply(stdout.String())
	if c, ok := out.first("created"); ok {
		// Whatever fails from here on, the folder we made goes.
		created, _ := strconv.Atoi(c)
		defer func() {
			if err != nil {
				err = e.cleanup(ctx, created, err)
			}
		}()
	}
	if rerr != nil {
		return nil, remoteError("prepare the workspace", rerr, stderr.String())
	}
	if _, ok := out.first("foreign"); ok {
		return nil, &errForeign{name: e.name, dest: e.dest.Display()}
	}
	if _, ok := out.first("taken-over"); ok {
		e.logf("took over the repository at %s (--force)", e.dest.Display())
	}
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
	baseTree, err := e.r.git.Run(ctx, "rev-parse", base+"^{tree}")
	if err != nil {
		return nil, fmt.Errorf("read the baseline tree: %w", err)
	}
	a := applyArgs{
		bootstrap: true,
		base:      base,
		backupRef: backupRef(),
		token:     "git-sidecar-" + randomHex(12),
	}
	if e.st.Dest == e.dest.Raw {
		// Edits made in the workspace are whatever differs from the
		// tree we last saw there.
		a.last = e.st.Applied
		if a.last == "" {
			a.last = e.st.Seen
		}
	}
	have := []string{baseTree}
	heldBig := e.snap.bigBlobsIn(ctx, baseTree)
	for _, t := range out["has-tree"] {
		have = append(have, t)
		for id := range e.heldBig(t) {
			heldBig[id] = true
		}
	}
	reply, o, err := e.runApply(ctx, a, func() (*outgoing, error) {
		sn, err := e.snapshot(ctx)
		if err != nil {
			return nil, err
		}
		return e.snap.plan(ctx, sn, have, heldBig)
	})
	if err != nil {
		return nil, err
	}
	if why, ok := reply.first("need-bootstrap"); ok {
		return nil, fmt.Errorf("bootstrap the workspace: %s", why)
	}
	res.Tree = e.sn.tree
	res.Files = o.files
	e.st.Dest = e.dest.Raw
	e.st.Baseline = base
	e.st.Branch = branch
	e.st.BootstrappedAt = time.Now()
	e.st.BootstrapVia = res.Via
	if err := e.finish(ctx, res, reply); err != nil {
		return res, err
	}
	return res, nil
}

// cleanup removes what a failed bootstrap created in the workspace and
// says so with the error.
func (e *engine) cleanup(ctx context.Context, created int, cause error) error {
	var stderr bytes.Buffer
	script := cleanupScript(e.dest, created)
	// The sync's own context may be what ended it.
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
	defer cancel()
	if err := e.tr.run(cctx, script, nil, io.Discard, &stderr); err != nil {
		return fmt.Errorf("%w; removing what setup had made in the workspace failed too: %v", cause, remoteError("clean up", err, stderr.String()))
	}
	e.logf("removed what this setup had made at %s", e.dest.Display())
	return fmt.Errorf("%w; what setup had made at %s was removed", cause, e.dest.Display())
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
