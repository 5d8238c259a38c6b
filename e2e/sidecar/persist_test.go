package sidecar_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// logins counts the SSH logins sshd accepted; closed counts the
// connections that ended.
func (w *world) logins() int { return strings.Count(w.sshd.Log(), "Accepted publickey") }
func (w *world) closed() int { return strings.Count(w.sshd.Log(), "Transferred: sent") }

// TestConnectionPersists: after a command logs in, the next ones reuse a
// connection kept in the background (as OpenSSH's ControlPersist does),
// until it has been idle for sidecar.persist, or the sidecar is removed.
// sidecar.persist=no keeps none, and a bad value is one clear line.
func TestConnectionPersists(t *testing.T) {
	for _, name := range []string{"dev", strings.Repeat("long-name-", 6)} {
		t.Run(map[bool]string{true: "long-path", false: "short-path"}[len(name) > 10], func(t *testing.T) {
			t.Parallel()
			w := newWorld(t, overSSH, "")
			w.write("a.txt", "a\n")
			w.commitAll("a")
			w.mustSidecar("add", name, w.dest)
			out := w.mustSidecar("setup", "-v")
			require.Contains(t, out, "keeping a connection open for 10m0s")
			// setup's own login, then the kept connection's.
			require.Eventually(t, func() bool { return w.logins() == 2 }, time.Minute, 20*time.Millisecond, w.sshd.Log())

			w.write("b.txt", "b\n")
			out = w.sync("-v")
			require.Contains(t, out, "using the shared connection")
			stdout, _, err := w.sidecar("exec", "--no-sync", "--", "cat", "b.txt")
			require.NoError(t, err)
			require.Equal(t, "b\n", stdout)
			stdout, _, err = w.sidecar("status")
			require.NoError(t, err)
			require.Contains(t, stdout, "state:     in sync")
			require.Equal(t, 2, w.logins(), "a command logged in although a connection is kept")

			// Removing the sidecar ends the kept connection.
			closed := w.closed()
			w.mustSidecar("remove", name)
			require.Eventually(t, func() bool { return w.closed() > closed }, 10*time.Second, 20*time.Millisecond,
				"the kept connection outlived its sidecar:\n%s", w.sshd.Log())
		})
	}
}

func TestConnectionPersistSetting(t *testing.T) {
	t.Parallel()
	w := newWorld(t, overSSH, "")
	w.write("a.txt", "a\n")
	w.commitAll("a")
	w.mustSidecar("add", "dev", w.dest)

	// no: every command logs in, and nothing is left behind.
	w.git(w.repo, "config", "sidecar.dev.persist", "no")
	out := w.mustSidecar("setup", "-v")
	require.NotContains(t, out, "keeping a connection")
	w.write("b.txt", "b\n")
	out = w.sync("-v")
	require.NotContains(t, out, "using the shared connection")
	require.Equal(t, 2, w.logins())

	// A number is seconds: the connection ends once idle that long.
	w.git(w.repo, "config", "sidecar.dev.persist", "1")
	closed := w.closed()
	w.write("c.txt", "c\n")
	out = w.sync("-v")
	require.Contains(t, out, "keeping a connection open for 1s")
	require.Eventually(t, func() bool { return w.logins() == 4 }, time.Minute, 20*time.Millisecond, w.sshd.Log())
	require.Eventually(t, func() bool { return w.closed() >= closed+2 }, 30*time.Second, 20*time.Millisecond,
		"the kept connection did not end once idle:\n%s", w.sshd.Log())

	// The per-sidecar setting wins over sidecar.persist; a bad value
	// stops the command with one line naming the key.
	w.git(w.repo, "config", "sidecar.persist", "yes")
	w.git(w.repo, "config", "sidecar.dev.persist", "for ever")
	_, errOut, err := w.sidecar("sync")
	require.Error(t, err)
	require.Equal(t, `git sidecar: bad sidecar.dev.persist "for ever": want no, yes, seconds or a duration such as 10m`, strings.TrimSpace(errOut))
}

// TestKeptConnectionWatchesTheTree: the holder of a kept connection
// watches the work tree, so that a sync right after a save looks at the
// changed paths alone, and falls back to listing everything whenever
// that is not enough (its first sync, a new folder, git's index moved).
// Every sync leaves the workspace identical, byte for byte.
func TestKeptConnectionWatchesTheTree(t *testing.T) {
	for _, kind := range []transportKind{overSSH, local} {
		t.Run(string(kind), func(t *testing.T) {
			t.Parallel()
			keptConnectionWatchesTheTree(t, kind)
		})
	}
}

func keptConnectionWatchesTheTree(t *testing.T, kind transportKind) {
	w := newWorld(t, kind, "")
	w.write("a.txt", "a\n")
	w.commitAll("a")
	w.mustSidecar("add", "dev", w.dest)
	w.mustSidecar("setup")
	if kind == overSSH {
		require.Eventually(t, func() bool { return w.logins() == 2 }, time.Minute, 20*time.Millisecond, w.sshd.Log())
	}
	fromWatch := "from the watch"

	// The first sync after the holder started lists everything: nothing
	// was watched before. (On a local path the holder starts with setup,
	// and may not be listening yet for setup's own sync.)
	n := 0
	require.Eventually(t, func() bool {
		n++
		w.write("a.txt", fmt.Sprintf("a%d\n", n))
		_, errOut, err := w.sidecar("sync", "-v")
		return err == nil && strings.Contains(errOut, fromWatch)
	}, time.Minute, 20*time.Millisecond)
	if kind == overSSH {
		require.Equal(t, 2, n, "the first sync after the holder started must list everything")
	}
	w.requireSame()
	for i, step := range []struct {
		change func()
		watch  bool
	}{
		{func() { w.write("b.txt", "b\n") }, true},
		{func() { w.write("a.txt", "a3\n") }, true},
		{func() { require.NoError(t, os.Remove(filepath.Join(w.repo, "b.txt"))) }, true},
		{func() { w.write("d/e/f.txt", "f\n") }, false},
		{func() { w.write("d/e/g.txt", "g\n") }, true},
		{func() { w.write(".gitignore", "*.log\n"); w.write("x.log", "ignored\n") }, false},
		{func() { w.git(w.repo, "add", "-A") }, false},
		{func() { w.write("a.txt", "a4\n") }, true},
	} {
		step.change()
		out := w.sync("-v")
		if step.watch {
			require.Contains(t, out, fromWatch, "step %d", i)
		} else {
			require.NotContains(t, out, fromWatch, "step %d", i)
		}
	}
	if kind == overSSH {
		require.Equal(t, 2, w.logins())
	}
}
