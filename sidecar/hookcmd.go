package sidecar

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/git-relay/git-relay/hooks"
	"github.com/git-relay/git-relay/internal/gitx"
)

// hooksDir is where git looks for hooks: `git rev-parse --git-path hooks`
// honours core.hooksPath.
func (r *repo) hooksDir(a *app) (string, error) {
	p, err := r.git.Run(a.ctx, "rev-parse", "--git-path", "hooks")
	if err != nil {
		return "", fmt.Errorf("find the hooks folder: %w", err)
	}
	if !filepath.IsAbs(p) {
		p = filepath.Join(r.top, p)
	}
	return p, nil
}

type hooksInstallCmd struct{}

func (c *hooksInstallCmd) Run(a *app) error {
	r, err := openRepo(a.ctx, a.dir)
	if err != nil {
		return err
	}
	dir, err := r.hooksDir(a)
	if err != nil {
		return err
	}
	if err := r.refuseTrackedHooksDir(a, dir); err != nil {
		return err
	}
	changes, err := hooks.Install(dir)
	for _, ch := range changes {
		switch ch.What {
		case "chained":
			fmt.Fprintf(a.stderr, "%s: installed; the existing hook was kept as %s%s and still runs first\n", ch.Name, ch.Name, hooks.Suffix)
		default:
			fmt.Fprintf(a.stderr, "%s: %s\n", ch.Name, ch.What)
		}
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(a.stderr, "hooks in %s now sync the active sidecar in the background; see `git sidecar status`\n", dir)
	return nil
}

// refuseTrackedHooksDir refuses a hooks folder that the repository
// tracks (husky's .husky as core.hooksPath, say): a hook written there
// would be committed by the next `git commit -a`. Such a project runs its
// own hooks, and can call ours from them.
func (r *repo) refuseTrackedHooksDir(a *app, dir string) error {
	rel, err := filepath.Rel(r.top, dir)
	if err != nil || rel == ".." || strings.HasPrefix(rel, "../") {
		return nil // outside the work tree
	}
	out, err := r.git.Run(a.ctx, "ls-files", "-z", "--", rel+"/")
	if err != nil {
		return fmt.Errorf("check the hooks folder %s: %w", rel, err)
	}
	if out == "" {
		return nil
	}
	return fmt.Errorf("the hooks folder %s (core.hooksPath) is tracked in this repository, so a hook written there would be committed with it; none was installed. Call git sidecar from your own hooks instead: add the line `git sidecar hook post-commit` to %s/post-commit (and likewise for post-checkout, post-merge and post-rewrite)", rel, rel)
}

type hooksUninstallCmd struct{}

func (c *hooksUninstallCmd) Run(a *app) error {
	r, err := openRepo(a.ctx, a.dir)
	if err != nil {
		return err
	}
	dir, err := r.hooksDir(a)
	if err != nil {
		return err
	}
	changes, err := hooks.Uninstall(dir)
	for _, ch := range changes {
		switch ch.What {
		case "restored":
			fmt.Fprintf(a.stderr, "%s: removed; the hook it chained to is back\n", ch.Name)
		case "foreign":
			fmt.Fprintf(a.stderr, "%s: not ours, left alone\n", ch.Name)
		case "absent":
		default:
			fmt.Fprintf(a.stderr, "%s: %s\n", ch.Name, ch.What)
		}
	}
	return err
}

// hookCmd is what the installed hooks run, in the background (the hook
// itself has returned by then), and what a project's own hooks may call.
// It must still return at once: it marks the sidecar dirty and starts a
// detached worker, which coalesces whatever piles up while it runs.
type hookCmd struct {
	Event string   `arg:"" help:"The hook that fired."`
	Args  []string `arg:"" optional:"" passthrough:"" help:"The hook's arguments."`
}

func (c *hookCmd) Run(a *app) error {
	r, cfg, err := a.open()
	if err != nil {
		return err
	}
	// During a rebase, post-commit (and post-checkout) fire for every
	// replayed commit on a detached HEAD; post-rewrite fires once at the
	// end, and that is when we sync. (The installed hook has checked
	// this already, while the hook ran; a project's own hook has not.)
	if c.Event != "post-rewrite" && r.rebasing() {
		return nil
	}
	var names []string
	if n, err := cfg.pick(""); err == nil {
		names = []string{n}
	} else {
		names = cfg.names()
	}
	for _, name := range names {
		st, err := r.loadState(name)
		if err != nil || st.Dest == "" {
			continue // never set up: a hook does not bootstrap on its own
		}
		if st.Worktree != "" && st.Worktree != r.top {
			// The workspace mirrors another worktree; a commit here
			// does not take it over (an explicit sync does).
			continue
		}
		dir := r.stateDir(name)
		_ = os.WriteFile(filepath.Join(dir, "last-hook"), []byte(c.Event+" "+strconv.FormatInt(time.Now().Unix(), 10)+"\n"), 0o644)
		if err := os.WriteFile(dirtyPath(dir), nil, 0o644); err != nil {
			return fmt.Errorf("mark sidecar %q for sync: %w", name, err)
		}
		if err := startWorker(r, name); err != nil {
			return err
		}
	}
	return nil
}

func (r *repo) rebasing() bool {
	for _, d := range []string{"rebase-merge", "rebase-apply"} {
		if _, err := os.Stat(filepath.Join(r.gitDir, d)); err == nil {
			return true
		}
	}
	return false
}

// startWorker starts `git-sidecar sync --background NAME`, its output
// going to the sidecar's sync log.
func startWorker(r *repo, name string) error {
	logPath := filepath.Join(r.stateDir(name), "sync.log")
	if st, err := os.Stat(logPath); err == nil && st.Size() > 1<<20 {
		_ = os.Rename(logPath, logPath+".old")
	}
	logf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return fmt.Errorf("open sync log: %w", err)
	}
	defer logf.Close()
	if err := startDetached(r, logf, "sync", "--background", name); err != nil {
		return fmt.Errorf("start background sync: %w", err)
	}
	return nil
}

// startDetached starts git-sidecar with args in the repository's top, in
// its own session, with out (or /dev/null) as its output, and does not
// wait for it.
func startDetached(r *repo, out *os.File, args ...string) error {
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find git-sidecar: %w", err)
	}
	cmd := exec.Command(exe, args...)
	// Named as on PATH, which is also how a test binary standing in for
	// git-sidecar knows what to run.
	cmd.Args[0] = "git-sidecar"
	cmd.Dir = r.top
	cmd.Env = gitx.CleanEnv(os.Environ())
	if out != nil {
		cmd.Stdout, cmd.Stderr = out, out
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return err
	}
	return cmd.Process.Release()
}

// backgroundSync is the worker: it syncs while the dirty flag is set and
// leaves when another worker holds the lock (that one will see the flag).
func (a *app) backgroundSync(name string) error {
	r, cfg, err := a.open()
	if err != nil {
		return err
	}
	if name, err = cfg.pick(name); err != nil {
		return err
	}
	dir := r.stateDir(name)
	dirty := func() bool {
		_, err := os.Stat(dirtyPath(dir))
		return err == nil
	}
	for {
		l, ok, err := tryLock(dir)
		if err != nil {
			return err
		}
		if !ok {
			return nil
		}
		for dirty() {
			_ = os.Remove(dirtyPath(dir))
			e, err := a.newEngine(r, cfg, name, false)
			if err != nil {
				l.unlock()
				return err
			}
			res, err := a.syncAndRecord(e, false)
			e.tr.close()
			stamp := time.Now().Format(time.RFC3339)
			if err != nil {
				fmt.Fprintf(a.stderr, "%s sync failed: %v\n", stamp, err)
			} else {
				fmt.Fprintf(a.stderr, "%s %s\n", stamp, res.summary(name))
			}
		}
		l.unlock()
		// A hook that fired just before the unlock found the lock taken
		// and left its flag for us.
		if !dirty() {
			return nil
		}
	}
}

// hookMarkerPrefix names the marker an installed hook leaves in the git
// dir of its work tree (suffixed with the hook's process id) until its
// background part has recorded the request (hooks/hook.sh).
const hookMarkerPrefix = "sidecar-hook."

// hookPending reports whether a hook fired in the work tree of gitDir has
// not yet recorded its request. A marker older than a minute is left over
// from a hook that was killed, and is ignored.
func hookPending(gitDir string) bool {
	marks, _ := filepath.Glob(filepath.Join(gitDir, hookMarkerPrefix+"*"))
	for _, m := range marks {
		if fi, err := os.Stat(m); err == nil && time.Since(fi.ModTime()) < time.Minute {
			return true
		}
	}
	return false
}

// lastHook reads the last hook event recorded for a sidecar.
func lastHook(dir string) (string, time.Time) {
	b, err := os.ReadFile(filepath.Join(dir, "last-hook"))
	if err != nil {
		return "", time.Time{}
	}
	ev, ts, _ := strings.Cut(strings.TrimSpace(string(b)), " ")
	n, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return ev, time.Time{}
	}
	return ev, time.Unix(n, 0)
}
