package sidecar

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/git-relay/git-relay/internal/cli"
	"github.com/git-relay/git-relay/internal/gitx"
	"github.com/git-relay/git-relay/internal/sshx"
)

// open finds the repository and reads the sidecar configuration.
func (a *app) open() (*repo, sidecarConfig, error) {
	r, err := openRepo(a.ctx, a.dir)
	if err != nil {
		return nil, sidecarConfig{}, err
	}
	cfg, err := r.loadConfig(a.ctx)
	if err != nil {
		return nil, sidecarConfig{}, err
	}
	return r, cfg, nil
}

// newEngine prepares a sync of sidecar name; the caller holds the lock
// (or only reads) and closes the transport.
func (a *app) newEngine(r *repo, cfg sidecarConfig, name string, acceptNew bool) (*engine, error) {
	d, err := ParseDest(cfg.dests[name], r.top)
	if err != nil {
		return nil, fmt.Errorf("sidecar %q: %w", name, err)
	}
	st, err := r.loadState(name)
	if err != nil {
		return nil, err
	}
	snap, err := newSnapshotter(a.ctx, r, name, a.logf)
	if err != nil {
		return nil, err
	}
	e := &engine{r: r, name: name, dest: d, st: st, snap: snap, logf: a.logf}
	var ssh *sshTransport
	if d.Local {
		e.tr = localTransport{}
	} else {
		opts := sshx.Options{AcceptNew: acceptNew}
		if a.verbose {
			opts.Log = a.stderr
		}
		ssh = &sshTransport{dest: d, opts: opts}
		e.tr = ssh
	}
	if a.ownConnection {
		return e, nil
	}
	// A running watch or holder (see persist.go) shares its connection
	// and knows what changed in the work tree.
	if sh, ok := dialShare(r.stateDir(name)); ok {
		e.takeDirty = func(ctx context.Context) ([]string, bool, func()) { return sh.takeDirty(ctx, r.top) }
		if ssh != nil {
			a.logf("using the shared connection (of a running `git sidecar watch`, or kept for sidecar.persist)")
			sh.own = ssh
			e.tr = sh
		}
		return e, nil
	}
	persist, err := cfg.persistFor(name)
	if err != nil {
		return nil, err
	}
	if persist <= 0 {
		return e, nil
	}
	if ssh == nil {
		// No connection to keep, but a holder watches the work tree for
		// the next sync all the same.
		if err := startHolder(r, name); err != nil {
			a.logf("not watching the work tree for the next sync: %v", err)
		}
		return e, nil
	}
	// Having logged in, leave a connection behind for the next command.
	ssh.afterLogin = func() {
		if err := startHolder(r, name); err != nil {
			a.logf("not keeping the connection: %v", err)
		} else {
			a.logf("keeping a connection open for %s (sidecar.persist)", persist)
		}
	}
	return e, nil
}

type addCmd struct {
	Name string `arg:"" help:"Name of the sidecar (letters, digits, '.', '_', '-')."`
	Dest string `arg:"" help:"Workspace: ssh://[user@]host[:port]/path, [user@]host:path, or a local path."`
}

func (c *addCmd) Run(a *app) error {
	if err := checkName(c.Name); err != nil {
		return err
	}
	r, cfg, err := a.open()
	if err != nil {
		return err
	}
	d, err := ParseDest(c.Dest, a.dir)
	if err != nil {
		return err
	}
	if old, ok := cfg.dests[c.Name]; ok {
		return fmt.Errorf("sidecar %q already exists (%s); remove it first with `git sidecar remove %s`", c.Name, old, c.Name)
	}
	stored := c.Dest
	if d.Local {
		if inside(d.Path, r.top) {
			return fmt.Errorf("bad DEST %q: the workspace would be inside this repository (%s); choose a folder outside it", c.Dest, r.top)
		}
		stored = d.Path
	}
	if _, err := r.git.Run(a.ctx, "config", "--", "sidecar."+c.Name+".dest", stored); err != nil {
		return fmt.Errorf("save sidecar %q: %w", c.Name, err)
	}
	if cfg.active == "" || cfg.dests[cfg.active] == "" {
		if _, err := r.git.Run(a.ctx, "config", "sidecar.active", c.Name); err != nil {
			return fmt.Errorf("make %q the active sidecar: %w", c.Name, err)
		}
	}
	fmt.Fprintf(a.stderr, "added sidecar %q -> %s; run `git sidecar setup` to bootstrap it\n", c.Name, d.Display())
	return nil
}

// inside reports whether path is dir or below it (after resolving
// symlinks where the paths exist).
func inside(path, dir string) bool {
	resolve := func(p string) string {
		if r, err := filepath.EvalSymlinks(p); err == nil {
			return r
		}
		// The path may not exist yet: resolve its nearest existing parent.
		parent, base := filepath.Split(filepath.Clean(p))
		if parent != "" && parent != p {
			if r, err := filepath.EvalSymlinks(filepath.Clean(parent)); err == nil {
				return filepath.Join(r, base)
			}
		}
		return p
	}
	p, d := resolve(path), resolve(dir)
	rel, err := filepath.Rel(d, p)
	return err == nil && (rel == "." || (!strings.HasPrefix(rel, "../") && rel != ".."))
}

type useCmd struct {
	Name string `arg:"" help:"Sidecar to make active."`
}

func (c *useCmd) Run(a *app) error {
	r, cfg, err := a.open()
	if err != nil {
		return err
	}
	if _, err := cfg.pick(c.Name); err != nil {
		return err
	}
	if _, err := r.git.Run(a.ctx, "config", "sidecar.active", c.Name); err != nil {
		return fmt.Errorf("make %q the active sidecar: %w", c.Name, err)
	}
	fmt.Fprintf(a.stderr, "active sidecar: %q\n", c.Name)
	return nil
}

type listCmd struct{}

func (c *listCmd) Run(a *app) error {
	_, cfg, err := a.open()
	if err != nil {
		return err
	}
	names := cfg.names()
	if len(names) == 0 {
		fmt.Fprintln(a.stderr, "no sidecars; add one with `git sidecar add NAME DEST`")
		return nil
	}
	active, _ := cfg.pick("")
	for _, n := range names {
		mark := " "
		if n == active {
			mark = "*"
		}
		fmt.Fprintf(a.stdout, "%s %s\t%s\n", mark, n, cfg.dests[n])
	}
	return nil
}

type removeCmd struct {
	Name string `arg:"" help:"Sidecar to forget."`
}

func (c *removeCmd) Run(a *app) error {
	r, cfg, err := a.open()
	if err != nil {
		return err
	}
	if _, err := cfg.pick(c.Name); err != nil {
		return err
	}
	l, err := waitLock(a.ctx, r.stateDir(c.Name), a.stderr)
	if err != nil {
		return err
	}
	defer l.unlock()
	if _, err := r.git.Run(a.ctx, "config", "--remove-section", "sidecar."+c.Name); err != nil {
		return fmt.Errorf("remove sidecar %q: %w", c.Name, err)
	}
	if cfg.active == c.Name {
		_, _ = r.git.Run(a.ctx, "config", "--unset", "sidecar.active")
	}
	refs, _ := r.git.Run(a.ctx, "for-each-ref", "--format=%(refname)", "refs/sidecar/"+c.Name+"/")
	for _, ref := range strings.Fields(refs) {
		_, _ = r.git.Run(a.ctx, "update-ref", "-d", ref)
	}
	// The shared state, and each worktree's snapshot cache.
	dirs := []string{r.stateDir(c.Name), r.cacheDir(c.Name)}
	if wts, err := filepath.Glob(filepath.Join(r.commonDir, "worktrees", "*", "sidecar", c.Name)); err == nil {
		dirs = append(dirs, wts...)
	}
	for _, d := range dirs {
		if err := os.RemoveAll(d); err != nil {
			return fmt.Errorf("remove the state of sidecar %q: %w", c.Name, err)
		}
	}
	fmt.Fprintf(a.stderr, "removed sidecar %q; its workspace %s was left as it is\n", c.Name, cfg.dests[c.Name])
	return nil
}

type setupCmd struct {
	Name      string `arg:"" optional:"" help:"Sidecar to bootstrap (default: the active one)."`
	AcceptNew bool   `help:"Trust the SSH host key on first contact and record it in ~/.ssh/known_hosts."`
	Force     bool   `help:"Take over a DEST that holds a git repository git sidecar did not create: its files, HEAD and origin are replaced (what differed is kept under refs/sidecar/backup/ there)."`
}

func (c *setupCmd) Run(a *app) error {
	a.takeover = c.Force
	res, name, err := a.syncOnce(c.Name, true, c.AcceptNew)
	if err != nil {
		return err
	}
	fmt.Fprintln(a.stderr, res.summary(name))
	return nil
}

type syncCmd struct {
	Name       string `arg:"" optional:"" help:"Sidecar to sync (default: the active one)."`
	AcceptNew  bool   `help:"Trust the SSH host key on first contact and record it in ~/.ssh/known_hosts."`
	Background bool   `hidden:"" help:"Run as the hooks' background worker: coalesce pending syncs, log instead of printing."`
}

func (c *syncCmd) Run(a *app) error {
	if c.Background {
		return a.backgroundSync(c.Name)
	}
	res, name, err := a.syncOnce(c.Name, false, c.AcceptNew)
	if err != nil {
		return err
	}
	fmt.Fprintln(a.stderr, res.summary(name))
	return nil
}

// syncOnce takes the lock and syncs, recording the outcome in the state.
func (a *app) syncOnce(name string, force, acceptNew bool) (*syncResult, string, error) {
	e, err := a.prepare(name, acceptNew)
	if err != nil {
		return nil, "", err
	}
	defer e.tr.close()
	e.takeover = a.takeover
	res, err := a.lockedSync(e, force)
	return res, e.name, err
}

// prepare finds the repository and the sidecar and makes its engine. The
// caller closes e.tr.
func (a *app) prepare(name string, acceptNew bool) (*engine, error) {
	r, cfg, err := a.open()
	if err != nil {
		return nil, err
	}
	if name, err = cfg.pick(name); err != nil {
		return nil, err
	}
	return a.newEngine(r, cfg, name, acceptNew)
}

// lockedSync takes the lock, syncs and saves the outcome.
func (a *app) lockedSync(e *engine, force bool) (*syncResult, error) {
	dir := e.r.stateDir(e.name)
	l, err := waitLock(a.ctx, dir, a.stderr)
	if err != nil {
		return nil, err
	}
	// This sync covers whatever a hook asked for until now.
	_ = os.Remove(dirtyPath(dir))
	// Another sync may have run while we waited.
	if e.st, err = e.r.loadState(e.name); err != nil {
		l.unlock()
		return nil, err
	}
	res, err := a.syncAndRecord(e, force)
	l.unlock()
	// A hook that fired meanwhile found the lock taken and left its flag
	// to whoever held it: hand it to a background worker.
	if _, serr := os.Stat(dirtyPath(dir)); serr == nil {
		if werr := startWorker(e.r, e.name); werr != nil {
			a.logf("could not start the background sync: %v", werr)
		}
	}
	return res, err
}

// syncAndRecord runs one sync (lock held) and saves the outcome.
func (a *app) syncAndRecord(e *engine, force bool) (*syncResult, error) {
	name := e.name
	e.sent = 0
	res, err := e.sync(a.ctx, force)
	st := e.st
	now := time.Now()
	if res != nil && res.Backup != "" {
		fmt.Fprintf(a.stderr, "sidecar %q: the workspace had %d file(s) that differed from what was last synced; kept them in %s in the workspace repository before syncing (see them with `git show --stat %s` there)\n",
			name, res.BackupFiles, res.Backup, res.Backup)
	}
	if res != nil && res.FetchError != "" && res.Via == "bundle" {
		fmt.Fprintf(a.stderr, "sidecar %q: the workspace could not fetch origin (%s); sent the history as a bundle instead\n", name, res.FetchError)
	}
	if err != nil {
		st.LastError = gitx.Sanitize(err.Error())
		st.LastErrorAt = now
	} else {
		st.LastError = ""
		st.LastErrorAt = time.Time{}
	}
	if res != nil {
		st.LastSync = now
		st.LastMode = res.Mode
		st.LastDurationMS = res.Duration.Milliseconds()
		st.LastBytes = e.sent
		st.LastFiles = res.Files
	}
	if serr := e.r.saveState(name, st); serr != nil && err == nil {
		err = serr
	}
	return res, err
}

type statusCmd struct {
	Name      string `arg:"" optional:"" help:"Sidecar to show (default: the active one)."`
	Offline   bool   `help:"Do not contact the workspace; compare with what the last sync verified."`
	Wait      bool   `help:"First wait for a running or pending background sync (one a hook just asked for, too) to finish."`
	AcceptNew bool   `help:"Trust the SSH host key on first contact and record it in ~/.ssh/known_hosts."`
	ExitCode  bool   `help:"Exit with 0 when the workspace is in sync, 1 when it is not, 2 when that cannot be told (like git diff --exit-code)."`
}

// verdict is what status concluded.
type verdict int

const (
	inSync verdict = iota
	notInSync
	// unknown: the workspace could not be checked.
	unknown
)

// statusError is an error of status --exit-code, whose 1 means "not in
// sync".
type statusError struct{ error }

func (e statusError) Unwrap() error { return e.error }
func (e statusError) ExitCode() int { return 2 }

func (c *statusCmd) Run(a *app) error {
	v, err := c.show(a)
	if !c.ExitCode {
		return err
	}
	var ec cli.ExitCoder
	switch {
	case err != nil && errors.As(err, &ec):
		return err
	case err != nil:
		return statusError{err}
	case v == unknown:
		// The state line said why.
		return cli.Exit(2)
	case v == notInSync:
		return cli.Exit(1)
	}
	return nil
}

// show prints the status and returns its verdict on the workspace.
func (c *statusCmd) show(a *app) (verdict, error) {
	r, cfg, err := a.open()
	if err != nil {
		return unknown, err
	}
	name, err := cfg.pick(c.Name)
	if err != nil {
		return unknown, err
	}
	dir := r.stateDir(name)
	if c.Wait {
		var kicked time.Time
		for hookPending(r.gitDir) || busy(dir) {
			// A pending sync nobody runs (its worker died, say) is
			// started here rather than waited for forever.
			if _, err := os.Stat(dirtyPath(dir)); err == nil && time.Since(kicked) > 2*time.Second {
				if l, ok, _ := tryLock(dir); ok {
					l.unlock()
					kicked = time.Now()
					if err := startWorker(r, name); err != nil {
						return unknown, err
					}
				}
			}
			select {
			case <-a.ctx.Done():
				return unknown, a.ctx.Err()
			case <-time.After(50 * time.Millisecond):
			}
		}
	}
	e, err := a.newEngine(r, cfg, name, c.AcceptNew)
	if err != nil {
		return unknown, err
	}
	defer e.tr.close()
	st := e.st
	w := a.stdout
	fmt.Fprintf(w, "sidecar:   %s -> %s\n", name, e.dest.Display())
	if st.Baseline == "" {
		fmt.Fprintln(w, "baseline:  none (not set up; run `git sidecar setup`)")
	} else {
		br := strings.TrimPrefix(st.Branch, "refs/heads/")
		if br == "" {
			br = "a detached HEAD"
		}
		fmt.Fprintf(w, "baseline:  %s on %s (bootstrapped %s via %s)\n", short(st.Baseline), br, ago(st.BootstrappedAt), st.BootstrapVia)
	}
	if st.LastSync.IsZero() {
		fmt.Fprintln(w, "last sync: never")
	} else {
		fmt.Fprintf(w, "last sync: %s (%s, %s, %d bytes sent, %dms)\n", ago(st.LastSync), st.LastMode, filesText(st.LastFiles), st.LastBytes, st.LastDurationMS)
	}
	state, v := a.statusLine(r, e, c.Offline)
	if _, err := os.Stat(dirtyPath(dir)); err == nil && !strings.HasPrefix(state, "sync running") {
		state += " (a background sync is pending)"
	}
	fmt.Fprintf(w, "state:     %s\n", state)
	if st.LastError != "" {
		fmt.Fprintf(w, "last error: %s: %s\n", ago(st.LastErrorAt), st.LastError)
	} else {
		fmt.Fprintln(w, "last error: none")
	}
	if st.LastBackup != "" {
		fmt.Fprintf(w, "backup:    %s (workspace edits kept %s)\n", st.LastBackup, ago(st.LastBackupAt))
	}
	if ev, at := lastHook(dir); ev != "" {
		fmt.Fprintf(w, "last hook: %s %s\n", ev, ago(at))
	}
	return v, nil
}

// statusLine answers "is the workspace current?". It compares three tree
// ids: the work tree's raw snapshot, the workspace's own scan, and the
// tree the last sync verified there. A sync that holds the lock is
// changing the workspace, so nothing is compared then.
func (a *app) statusLine(r *repo, e *engine, offline bool) (string, verdict) {
	const running = "sync running (see the result with `git sidecar status --wait`)"
	dir := r.stateDir(e.name)
	if syncRunning(dir) {
		return running, notInSync
	}
	st := e.st
	if st.Applied == "" {
		if st.Mismatch != "" {
			return "NOT in sync: the last sync did not verify (" + st.Mismatch + "); the next sync rebuilds the workspace", notInSync
		}
		return "NOT in sync: never synced", notInSync
	}
	if st.Worktree != "" && st.Worktree != r.top {
		return fmt.Sprintf("NOT in sync: the workspace holds the files of the worktree at %s, which synced last; `git sidecar sync` here switches it to this one", st.Worktree), notInSync
	}
	sn, err := e.snap.take(a.ctx, false)
	if err != nil {
		return "unknown: " + err.Error(), unknown
	}
	remote := ""
	if !offline {
		var stdout, stderr strings.Builder
		if err := e.tr.run(a.ctx, checkScript(e.dest), nil, &stdout, &stderr); err != nil {
			return "unknown: cannot reach the workspace: " + remoteError("check the workspace", err, stderr.String()).Error(), unknown
		}
		out := parseReply(stdout.String())
		if _, ok := out.first("missing"); ok {
			return "NOT in sync: the workspace is missing; run `git sidecar setup`", notInSync
		}
		if _, ok := out.first("foreign"); ok {
			return "NOT in sync: DEST holds a git repository that git sidecar did not create", notInSync
		}
		remote, _ = out.first("tree")
	}
	// A sync may have started while we looked.
	if syncRunning(dir) {
		return running, notInSync
	}
	switch {
	case remote != "" && remote != st.Applied:
		return "NOT in sync: the workspace was edited there since the last sync; the next sync keeps those edits under refs/sidecar/backup/ and resets it", notInSync
	case sn.tree != st.Applied:
		return "behind: the work tree changed since the last sync; run `git sidecar sync`", notInSync
	case offline:
		return "in sync (as of the last sync; not checked now)", inSync
	default:
		return "in sync", inSync
	}
}

func ago(t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	d := time.Since(t)
	switch {
	case d < time.Second:
		return "just now"
	case d < time.Minute:
		return fmt.Sprintf("%ds ago", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm ago", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh ago", int(d.Hours()))
	}
	return t.Format("2006-01-02 15:04")
}

type hooksCmd struct {
	Install   hooksInstallCmd   `cmd:"" help:"Install post-commit, post-checkout, post-merge and post-rewrite hooks (existing hooks keep running)."`
	Uninstall hooksUninstallCmd `cmd:"" help:"Remove our hooks and put back the ones they chained to."`
}
