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

// gatedWorkspaceGit puts first on PATH a git that, before every `git add`
// run inside the workspace (one per sync), waits while a gate is closed,
// so that a sync holds its lock for as long as the test wants while local
// git stays fast. It returns the functions that close and open the gate.
func (w *world) gatedWorkspaceGit() (closeGate, openGate func()) {
	w.t.Helper()
	real, err := exec.LookPath("git")
	require.NoError(w.t, err)
	bin := filepath.Join(w.root, "gatedgit")
	require.NoError(w.t, os.MkdirAll(bin, 0o755))
	gate := filepath.Join(bin, "closed")
	script := fmt.Sprintf("#!/bin/sh\ncase \"$PWD\" in %s*) case \" $* \" in *\" add \"*) while [ -e %s ]; do sleep 0.02; done ;; esac ;; esac\nexec '%s' \"$@\"\n",
		shellPattern(w.ws), shellPattern(gate), real)
	gittest.Script(w.t, filepath.Join(bin, "git"), script)
	for i, kv := range w.env {
		if strings.HasPrefix(kv, "PATH=") {
			w.env[i] = "PATH=" + bin + ":" + strings.TrimPrefix(kv, "PATH=")
		}
	}
	openGate = func() { require.NoError(w.t, os.RemoveAll(gate)) }
	w.t.Cleanup(func() { _ = os.RemoveAll(gate) })
	return func() { require.NoError(w.t, os.WriteFile(gate, nil, 0o644)) }, openGate
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

	// A sync now waits at a closed gate; the commit must not wait for
	// it, and the sync it asked for is running once it returns.
	closeGate, openGate := w.gatedWorkspaceGit()
	closeGate()
	w.write("b.txt", "b\n")
	committed := make(chan struct{})
	go func() {
		defer close(committed)
		w.commitAll("b")
	}()
	select {
	case <-committed:
	case <-time.After(time.Minute):
		openGate()
		t.Fatal("the commit waited for the sync")
	}
	ran, err := os.ReadFile(marker)
	require.NoError(t, err)
	require.Equal(t, "existing post-commit ran\n", string(ran))
	require.Eventually(t, func() bool { return strings.HasPrefix(w.stateNow("--offline"), "sync running") },
		time.Minute, 20*time.Millisecond, "the hook started no sync")
	openGate()
	st := w.waitIdle()
	require.Contains(t, st, "state:     in sync")
	require.Contains(t, st, "last hook: post-commit")
	w.requireSame()

	// Five commits while a sync holds the lock coalesce into one more
	// sync, started when that sync ends.
	closeGate()
	before := strings.Count(w.syncLog(), "in sync")
	fg := w.gitRepo(w.repo).Command(t.Context(), "sidecar", "sync")
	var fgErr strings.Builder
	fg.Stderr = &fgErr
	require.NoError(t, fg.Start())
	// The commits must find the lock taken: wait until it observably is.
	// (Offline: a status that scans the workspace would itself wait at
	// the gate.)
	require.Eventually(t, func() bool { return strings.HasPrefix(w.stateNow("--offline"), "sync running") },
		time.Minute, 20*time.Millisecond, "the foreground sync never took the lock")
	for i := range 5 {
		w.write(fmt.Sprintf("quick%d.txt", i), "q\n")
		w.commitAll(fmt.Sprintf("quick %d", i))
	}
	// The hooks' background parts have recorded their requests once
	// their markers are gone.
	require.Eventually(t, func() bool {
		m, _ := filepath.Glob(filepath.Join(w.repo, ".git", "sidecar-hook.*"))
		return len(m) == 0
	}, time.Minute, 20*time.Millisecond, "the hooks never recorded their requests")
	openGate()
	require.NoError(t, fg.Wait(), fgErr.String())
	// The foreground sync hands the pending flag to a worker by itself.
	require.Eventually(t, func() bool { return strings.Count(w.syncLog(), "in sync") > before }, time.Minute, 50*time.Millisecond)
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
