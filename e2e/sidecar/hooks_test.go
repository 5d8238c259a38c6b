package sidecar_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/git-relay/git-relay/internal/gittest"
	"github.com/stretchr/testify/require"
)

// slowWorkspaceGit puts first on PATH a git that sleeps before every
// `git add` run inside the workspace (one per sync), so that a sync takes
// a while when local git stays fast. It returns a function that changes
// the delay.
func (w *world) slowWorkspaceGit(delay string) func(string) {
	w.t.Helper()
	real, err := exec.LookPath("git")
	require.NoError(w.t, err)
	bin := filepath.Join(w.root, "slowgit")
	require.NoError(w.t, os.MkdirAll(bin, 0o755))
	delayFile := filepath.Join(bin, "delay")
	setDelay := func(d string) { require.NoError(w.t, os.WriteFile(delayFile, []byte(d), 0o644)) }
	setDelay(delay)
	script := fmt.Sprintf("#!/bin/sh\ncase \"$PWD\" in %s*) case \" $* \" in *\" add \"*) sleep \"$(cat '%s')\" ;; esac ;; esac\nexec '%s' \"$@\"\n",
		shellPattern(w.ws), delayFile, real)
	gittest.Script(w.t, filepath.Join(bin, "git"), script)
	for i, kv := range w.env {
		if strings.HasPrefix(kv, "PATH=") {
			w.env[i] = "PATH=" + bin + ":" + strings.TrimPrefix(kv, "PATH=")
		}
	}
	return setDelay
}

// shellPattern quotes s for a case pattern.
func shellPattern(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

func (w *world) syncLog() string {
	b, _ := os.ReadFile(filepath.Join(w.repo, ".git", "sidecar", "dev", "sync.log"))
	return string(b)
}

func (w *world) waitIdle() string {
	w.t.Helper()
	return w.mustSidecar("status", "--wait")
}

// TestHooks: the hooks chain to an existing hook, never delay git, coalesce
// syncs that pile up, stay quiet during a rebase, and keep failures for
// status.
func TestHooks(t *testing.T) {
	w := newWorld(t, local, "")
	w.write("a.txt", "a\n")
	w.commitAll("a")
	w.git(w.repo, "push", "-q", "origin", "main")
	w.mustSidecar("add", "dev", w.dest)
	w.mustSidecar("setup")

	hooksDir := filepath.Join(w.repo, ".git", "hooks")
	marker := filepath.Join(w.root, "existing-hook-ran")
	existing := "#!/bin/sh\necho \"existing post-commit ran\" >> '" + marker + "'\n"
	gittest.Script(t, filepath.Join(hooksDir, "post-commit"), existing)
	out := w.mustSidecar("hooks", "install")
	require.Contains(t, out, "post-commit: installed; the existing hook was kept as post-commit.pre-sidecar and still runs first")

	// A sync now takes over three seconds; the commit must not wait for it.
	setDelay := w.slowWorkspaceGit("3")
	w.write("b.txt", "b\n")
	start := time.Now()
	w.commitAll("b")
	took := time.Since(start)
	require.Less(t, took, 2*time.Second, "the hook made the commit wait")
	ran, err := os.ReadFile(marker)
	require.NoError(t, err)
	require.Equal(t, "existing post-commit ran\n", string(ran))
	st := w.waitIdle()
	require.GreaterOrEqual(t, time.Since(start), 3*time.Second, "the sync should have been slow")
	require.Contains(t, st, "state:     in sync")
	require.Contains(t, st, "last hook: post-commit")
	w.requireSame()

	// Five commits while a slow sync holds the lock coalesce into one
	// more sync, started when that sync ends.
	setDelay("3")
	before := strings.Count(w.syncLog(), "in sync")
	fg := w.gitRepo(w.repo).Command(t.Context(), "sidecar", "sync")
	var fgErr strings.Builder
	fg.Stderr = &fgErr
	require.NoError(t, fg.Start())
	// The commits must find the lock taken: wait until it observably is.
	// (Offline: a status that scans the workspace would itself take the
	// slow git's three seconds, and could miss the whole sync.)
	require.Eventually(t, func() bool { return strings.HasPrefix(w.stateNow("--offline"), "sync running") },
		time.Minute, 20*time.Millisecond, "the foreground sync never took the lock")
	for i := range 5 {
		w.write(fmt.Sprintf("quick%d.txt", i), "q\n")
		w.commitAll(fmt.Sprintf("quick %d", i))
	}
	require.NoError(t, fg.Wait(), fgErr.String())
	setDelay("0")
	// The foreground sync hands the pending flag to a worker by itself.
	require.Eventually(t, func() bool { return strings.Count(w.syncLog(), "in sync") > before }, 20*time.Second, 50*time.Millisecond)
	w.waitIdle()
	syncs := strings.Count(w.syncLog(), "in sync") - before
	require.Equal(t, 1, syncs, "5 commits during a sync caused %d more:\n%s", syncs, w.syncLog())
	w.requireSame()

	// A rebase replaying 8 commits syncs once, after it ends.
	w.git(w.repo, "switch", "-q", "-c", "topic", "main~6")
	for i := range 8 {
		w.write(fmt.Sprintf("topic%d.txt", i), "t\n")
		w.commitAll(fmt.Sprintf("topic %d", i))
	}
	w.waitIdle()
	before = strings.Count(w.syncLog(), "in sync")
	w.git(w.repo, "rebase", "-q", "main")
	w.waitIdle()
	syncs = strings.Count(w.syncLog(), "in sync") - before
	require.Equal(t, 1, syncs, "a rebase of 8 commits caused %d syncs:\n%s", syncs, w.syncLog())
	require.Contains(t, w.mustSidecar("status"), "last hook: post-rewrite")
	w.requireSame()

	// A failing background sync is kept for status.
	require.NoError(t, os.RemoveAll(filepath.Join(w.ws, ".git")))
	w.write("c.txt", "c\n")
	w.commitAll("c")
	st = w.waitIdle()
	require.Contains(t, st, "last error:")
	require.Contains(t, st, "not empty and is not a git repository")

	// Uninstall puts the original hook back, byte for byte.
	out = w.mustSidecar("hooks", "uninstall")
	require.Contains(t, out, "post-commit: removed; the hook it chained to is back")
	b, err := os.ReadFile(filepath.Join(hooksDir, "post-commit"))
	require.NoError(t, err)
	require.Equal(t, existing, string(b))
	for _, n := range []string{"post-checkout", "post-merge", "post-rewrite"} {
		require.NoFileExists(t, filepath.Join(hooksDir, n))
	}
	require.NoFileExists(t, filepath.Join(hooksDir, "post-commit.pre-sidecar"))
}
