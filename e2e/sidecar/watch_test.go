package sidecar_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// watcher is a running `git sidecar watch` and what it printed.
type watcher struct {
	w   *world
	cmd *exec.Cmd
	out *os.File
	// done is closed when the process has exited, with err from Wait.
	done chan struct{}
	err  error
}

// startWatch sets up sidecar dev and starts `git sidecar watch` on it,
// returning once its first sync is done.
func (w *world) startWatch(args ...string) *watcher {
	w.t.Helper()
	w.mustSidecar("add", "dev", w.dest)
	w.mustSidecar("setup")
	ctx, cancel := context.WithTimeout(w.t.Context(), 5*time.Minute)
	w.t.Cleanup(cancel)
	cmd, out := w.sidecarProc(ctx, append([]string{"watch"}, args...)...)
	require.NoError(w.t, cmd.Start())
	wt := &watcher{w: w, cmd: cmd, out: out, done: make(chan struct{})}
	go func() { wt.err = cmd.Wait(); close(wt.done) }()
	w.t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-wt.done
	})
	if !strings.Contains(strings.Join(args, " "), "-q") {
		wt.eventually(time.Minute, "the first sync", func() bool { return wt.syncs() >= 1 })
	}
	return wt
}

// eventually waits for cond, failing with what the watch printed (by
// then) if the time runs out or the watch exits first.
func (wt *watcher) eventually(timeout time.Duration, what string, cond func() bool) {
	t := wt.w.t
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		select {
		case <-wt.done:
			t.Fatalf("waiting for %s, the watch exited (%v):\n%s", what, wt.err, wt.output())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %s: not within %s; the watch printed:\n%s", what, timeout, wt.output())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (wt *watcher) output() string { return contents(wt.out) }

// syncs counts the sync lines printed so far.
func (wt *watcher) syncs() int { return strings.Count(wt.output(), ": in sync at ") }

// stop sends sig and requires the exit status 128+sig.
func (wt *watcher) stop(sig syscall.Signal) {
	t := wt.w.t
	t.Helper()
	require.NoError(t, wt.cmd.Process.Signal(sig))
	<-wt.done
	err := wt.err
	var exit *exec.ExitError
	require.True(t, errors.As(err, &exit), "watch ended with %v: %s", err, wt.output())
	require.Equal(t, 128+int(sig), exit.ExitCode(), wt.output())
}

// workspaceHas reports whether rel holds content in the workspace.
func (w *world) workspaceHas(rel, content string) bool {
	b, err := os.ReadFile(filepath.Join(w.ws, rel))
	return err == nil && string(b) == content
}

// TestWatchSyncsSavedFiles: with `git sidecar watch` running, a saved
// file, a new folder's file and a deletion reach the workspace on their
// own, and ignored files trigger nothing; Ctrl-C ends it with 130.
func TestWatchSyncsSavedFiles(t *testing.T) {
	for _, kind := range []transportKind{overSSH, local} {
		t.Run(string(kind), func(t *testing.T) {
			t.Parallel()
			w := newWorld(t, kind, "Welcome to devbox!")
			w.write(".gitignore", "build/\n*.log\n")
			w.write("a.txt", "a\n")
			w.write("gone.txt", "doomed\n")
			w.commitAll("initial")
			wt := w.startWatch("-v")

			w.write("a.txt", "saved once\n")
			wt.eventually(time.Minute, "a.txt saved", func() bool { return w.workspaceHas("a.txt", "saved once\n") })

			// A folder made after the watch started is watched too: a
			// file saved in it later arrives as well.
			w.write("new/dir/b.txt", "b\n")
			wt.eventually(time.Minute, "new/dir/b.txt, in a new folder", func() bool { return w.workspaceHas("new/dir/b.txt", "b\n") })
			n := wt.syncs()
			w.write("new/dir/b.txt", "b again\n")
			wt.eventually(time.Minute, "new/dir/b.txt saved again", func() bool { return w.workspaceHas("new/dir/b.txt", "b again\n") && wt.syncs() > n })

			require.NoError(t, os.Remove(filepath.Join(w.repo, "gone.txt")))
			wt.eventually(time.Minute, "gone.txt deleted", func() bool {
				_, err := os.Lstat(filepath.Join(w.ws, "gone.txt"))
				return errors.Is(err, os.ErrNotExist)
			})

			// Ignored paths trigger no sync (-v says when a batch of
			// changes had nothing to sync).
			skipped := strings.Count(wt.output(), "none to sync")
			w.write("debug.log", "ignored\n")
			w.write("build/out.o", "ignored\n")
			w.write("build/more/deep.o", "ignored\n")
			wt.eventually(time.Minute, "the ignored files looked at", func() bool { return strings.Count(wt.output(), "none to sync") > skipped })
			for _, line := range strings.Split(wt.output(), "\n") {
				if strings.Contains(line, "watch: syncing for") {
					require.NotContains(t, line, "debug.log", "an ignored file triggered a sync")
					require.NotContains(t, line, "build", "an ignored folder triggered a sync")
				}
			}
			w.write("a.txt", "after the ignored ones\n")
			wt.eventually(time.Minute, "a.txt after the ignored files", func() bool { return w.workspaceHas("a.txt", "after the ignored ones\n") })
			require.NoFileExists(t, filepath.Join(w.ws, "debug.log"))
			require.NoFileExists(t, filepath.Join(w.ws, "build/out.o"))

			// The index alone changing what is visible syncs too: an
			// ignored file added with -f, a tracked file dropped from
			// the index while ignored. A git status, which rewrites the
			// index with the same paths, does not.
			w.git(w.repo, "add", "-f", "debug.log")
			wt.eventually(time.Minute, "debug.log added with -f", func() bool { return w.workspaceHas("debug.log", "ignored\n") })
			w.git(w.repo, "rm", "-q", "--cached", "debug.log")
			wt.eventually(time.Minute, "debug.log dropped from the index", func() bool {
				_, err := os.Lstat(filepath.Join(w.ws, "debug.log"))
				return errors.Is(err, os.ErrNotExist)
			})

			// A commit (no file changed) syncs too, so that the state
			// follows HEAD.
			moved := strings.Count(wt.output(), "syncing: HEAD moved")
			w.commitAll("more")
			wt.eventually(time.Minute, "a sync after the commit", func() bool { return strings.Count(wt.output(), "syncing: HEAD moved") > moved })

			wt.stop(syscall.SIGINT)
			require.Contains(t, wt.output(), "interrupted by SIGINT")
			// Its syncs looked at the changed paths alone, and moved
			// the files before scanning the workspace.
			require.Contains(t, wt.output(), "changed path(s) looked at, from the watch")
			require.Contains(t, wt.output(), "files were moved before its scan")
			w.requireSame()
		})
	}
}

// TestWatchCoalescesBursts: 500 saves in a row make a few syncs, not
// 500, and the last version is what the workspace holds. SIGTERM ends
// the watch with 143.
func TestWatchCoalescesBursts(t *testing.T) {
	t.Parallel()
	w := newWorld(t, overSSH, "")
	w.write("a.txt", "a\n")
	w.commitAll("initial")
	wt := w.startWatch("-v")
	before := wt.syncs()
	const saves = 500
	for i := 1; i <= saves; i++ {
		w.write(fmt.Sprintf("burst/f%d.txt", i%50), fmt.Sprintf("save %d\n", i))
	}
	wt.eventually(2*time.Minute, "the last of the 500 saves", func() bool {
		for i := saves - 49; i <= saves; i++ {
			if !w.workspaceHas(fmt.Sprintf("burst/f%d.txt", i%50), fmt.Sprintf("save %d\n", i)) {
				return false
			}
		}
		// The line comes once the sync is over.
		return wt.syncs() > before
	})
	wt.stop(syscall.SIGTERM)
	// Stopped: no sync is changing the workspace any more.
	w.requireSame()
	n := wt.syncs() - before
	t.Logf("%d saves made %d syncs", saves, n)
	require.GreaterOrEqual(t, n, 1)
	require.LessOrEqual(t, n, 25, "the saves were not coalesced: %s", wt.output())
}

// TestWatchReconnects: when the SSH connection is cut (the server side
// killed), the watch says so once, connects again by itself, and the
// next save arrives.
func TestWatchReconnects(t *testing.T) {
	t.Parallel()
	w := newWorld(t, overSSH, "")
	w.write("a.txt", "a\n")
	w.commitAll("initial")
	wt := w.startWatch()
	w.write("a.txt", "before the cut\n")
	wt.eventually(time.Minute, "a.txt before the cut", func() bool { return w.workspaceHas("a.txt", "before the cut\n") && wt.syncs() >= 2 })

	require.Positive(t, w.sshd.DropConnections(), "no sshd connection to cut")
	sessions := w.sshd.Sessions()
	w.write("a.txt", "after the cut\n")
	wt.eventually(time.Minute, "a.txt after the cut (a reconnection)", func() bool { return w.workspaceHas("a.txt", "after the cut\n") })
	require.Greater(t, w.sshd.Sessions(), sessions)
	wt.stop(syscall.SIGINT)
	w.requireSame()
	require.Equal(t, 1, strings.Count(wt.output(), "the connection was lost"), "one line for the cut: %s", wt.output())
}

// TestWatchQuiet: -q prints nothing for syncs that succeed.
func TestWatchQuiet(t *testing.T) {
	t.Parallel()
	w := newWorld(t, local, "")
	w.write("a.txt", "a\n")
	w.commitAll("initial")
	wt := w.startWatch("-q")
	w.write("a.txt", "quiet\n")
	wt.eventually(time.Minute, "a.txt saved", func() bool { return w.workspaceHas("a.txt", "quiet\n") })
	wt.stop(syscall.SIGINT)
	require.NotContains(t, wt.output(), "in sync")
}

// TestWatchKeepsWorkspaceEdits: a watch's sync moves the files before it
// scans the workspace, yet an edit made there is never lost: one on a
// path the sync changes stops the early move (the usual scan, backup and
// move follow), one elsewhere is found by the scan afterwards; both end
// up in a backup ref, and the workspace ends up equal to the work tree.
func TestWatchKeepsWorkspaceEdits(t *testing.T) {
	for _, kind := range []transportKind{overSSH, local} {
		t.Run(string(kind), func(t *testing.T) {
			t.Parallel()
			w := newWorld(t, kind, "")
			w.write("a.txt", "a\n")
			w.write("b.txt", "b\n")
			w.commitAll("initial")
			wt := w.startWatch()
			backups := func() []string {
				return strings.Fields(w.git(w.ws, "for-each-ref", "--format=%(refname)", "refs/sidecar/backup/"))
			}

			// Edited there, and changed here.
			require.NoError(t, os.WriteFile(filepath.Join(w.ws, "a.txt"), []byte("edited in the workspace\n"), 0o644))
			w.write("a.txt", "edited here\n")
			wt.eventually(time.Minute, "a.txt, edited there too, kept and synced", func() bool { return w.workspaceHas("a.txt", "edited here\n") && len(backups()) == 1 })
			require.Equal(t, "edited in the workspace", w.git(w.ws, "show", backups()[0]+":a.txt"))

			// Edited there, while another file changes here. The edit
			// is kept, then put back to the work tree's version.
			require.NoError(t, os.WriteFile(filepath.Join(w.ws, "b.txt"), []byte("b edited in the workspace\n"), 0o644))
			w.write("a.txt", "edited here again\n")
			wt.eventually(time.Minute, "a.txt synced, b.txt edited there kept and put back", func() bool {
				return w.workspaceHas("a.txt", "edited here again\n") && len(backups()) == 2 && w.workspaceHas("b.txt", "b\n")
			})
			var kept []string
			for _, ref := range backups() {
				if out, err := w.gitRepo(w.ws).Run(t.Context(), "show", ref+":b.txt"); err == nil {
					kept = append(kept, out)
				}
			}
			require.Contains(t, kept, "b edited in the workspace")
			wt.stop(syscall.SIGINT)
			w.requireSame()
		})
	}
}

// TestWatchSharesItsConnection: while a watch runs, sync, status and
// exec run their scripts over its SSH connection (no new login), exec's
// output and exit status come back as they would directly, and once
// the watch has ended they log in on their own again.
func TestWatchSharesItsConnection(t *testing.T) {
	t.Parallel()
	w := newWorld(t, overSSH, "Welcome!")
	w.write("a.txt", "a\n")
	w.commitAll("initial")
	wt := w.startWatch()
	logins := func() int { return strings.Count(w.sshd.Log(), "Accepted publickey") }
	before := logins()

	w.write("b.txt", "synced by sync\n")
	out := w.sync()
	require.Contains(t, out, "in sync")
	require.True(t, w.workspaceHas("b.txt", "synced by sync\n"))
	stdout, stderr, err := w.sidecar("exec", "--no-sync", "--", "sh", "-c", "cat b.txt; echo to stderr >&2; exit 7")
	require.Equal(t, 7, exitCode(err), stderr)
	require.Equal(t, "synced by sync\n", stdout)
	require.Contains(t, stderr, "to stderr")
	// The watch syncs b.txt on its own too, and may be at it now.
	stdout, _, err = w.sidecar("status", "--wait")
	require.NoError(t, err)
	require.Contains(t, stdout, "state:     in sync")
	require.Equal(t, before, logins(), "a command logged in although the watch shares its connection")

	// Ctrl-C of an exec through the watch ends the remote command and
	// its child, and exits 130.
	pids := t.TempDir()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	cmd, output := w.sidecarProc(ctx, "exec", "--no-sync", "--", "sh", "-c", `sleep 300 & echo $! > "$1/child"; echo $$ > "$1/pid"; wait`, "sh", pids)
	require.NoError(t, cmd.Start())
	var pid, child int
	require.Eventually(t, func() bool {
		pid, child = readPID(filepath.Join(pids, "pid")), readPID(filepath.Join(pids, "child"))
		return pid > 0 && child > 0
	}, time.Minute, 20*time.Millisecond, "the command did not start")
	require.NoError(t, cmd.Process.Signal(syscall.SIGINT))
	err = cmd.Wait()
	require.Equal(t, 130, exitCode(err), contents(output))
	require.Eventually(t, func() bool { return !alive(pid) && !alive(child) }, 2*time.Second, 20*time.Millisecond,
		"the remote command (%d) or its child (%d) survived", pid, child)
	require.Equal(t, before, logins())

	wt.stop(syscall.SIGINT)
	require.NoFileExists(t, filepath.Join(w.repo, ".git", "sidecar", "dev", "watch.sock"))
	w.sync()
	require.Greater(t, logins(), before, "without the watch, sync logs in itself")
}
