package sidecar_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/git-relay/git-relay/internal/gittest"
	"github.com/stretchr/testify/require"
)

// remoteGit puts first on the workspace side's PATH a `git` that runs
// body (sh, with the real git as $real) when it runs inside the
// workspace, and is the real git elsewhere. A local workspace shares our
// PATH; over SSH the remote login shell's .bashrc puts it first.
func (w *world) remoteGit(name, body string) {
	w.t.Helper()
	real, err := exec.LookPath("git")
	require.NoError(w.t, err)
	bin := filepath.Join(w.root, name)
	require.NoError(w.t, os.MkdirAll(bin, 0o755))
	script := fmt.Sprintf("#!/bin/sh\nreal=%s\ncase \"$PWD\" in %s*) %s ;; esac\nexec \"$real\" \"$@\"\n",
		shellPattern(real), shellPattern(w.ws), body)
	gittest.Script(w.t, filepath.Join(bin, "git"), script)
	if w.sshd != nil {
		f, err := os.OpenFile(filepath.Join(w.sshd.RemoteHome, ".bashrc"), os.O_APPEND|os.O_WRONLY, 0)
		require.NoError(w.t, err)
		_, err = fmt.Fprintf(f, "PATH=%s:\"$PATH\"; export PATH\n", shellPattern(bin))
		require.NoError(w.t, err)
		require.NoError(w.t, f.Close())
		return
	}
	for i, kv := range w.env {
		if strings.HasPrefix(kv, "PATH=") {
			w.env[i] = "PATH=" + bin + ":" + strings.TrimPrefix(kv, "PATH=")
		}
	}
}

// stateNow is the status's state line, or "" when status fails; for use
// in polling loops, where a test must not fail from another goroutine.
func (w *world) stateNow(args ...string) string {
	out, _, err := w.sidecar(append([]string{"status"}, args...)...)
	if err != nil {
		return ""
	}
	for _, line := range strings.Split(out, "\n") {
		if s, ok := strings.CutPrefix(line, "state:"); ok {
			return strings.TrimSpace(s)
		}
	}
	return ""
}

// TestStatusDuringSync: while a sync runs, status says so, and never that
// the workspace was edited there; afterwards it says in sync.
func TestStatusDuringSync(t *testing.T) {
	forEachTransport(t, func(t *testing.T, w *world) {
		w.write("a.txt", "a\n")
		w.commitAll("a")
		w.git(w.repo, "push", "-q", "origin", "main")
		w.setupIdentical()
		// The sync's checkout in the workspace waits (a minute at most)
		// until the test lets it go on, so the sync is caught in the
		// middle: objects stored, files not yet changed.
		gate := filepath.Join(w.root, "gate")
		require.NoError(t, os.WriteFile(gate, nil, 0o644))
		w.remoteGit("gatedgit", fmt.Sprintf(`case " $* " in *" read-tree "*) i=0; while [ -e %s ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done ;; esac`, shellPattern(gate)))
		for i := 0; i < 20; i++ {
			w.write(fmt.Sprintf("new/%d.txt", i), "new\n")
		}
		w.write("a.txt", "a, edited\n")
		require.Equal(t, "behind: the work tree changed since the last sync; run `git sidecar sync`", w.state())

		ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
		defer cancel()
		sync := w.gitRepo(w.repo).Command(ctx, "sidecar", "sync")
		var syncErr bytes.Buffer
		sync.Stderr = &syncErr
		require.NoError(t, sync.Start())
		seen := map[string]bool{}
		require.Eventually(t, func() bool {
			s := w.stateNow()
			seen[s] = true
			return strings.HasPrefix(s, "sync running")
		}, time.Minute, 20*time.Millisecond)
		// Still running while the gate is closed.
		for i := 0; i < 3; i++ {
			s := w.stateNow()
			seen[s] = true
			require.True(t, strings.HasPrefix(s, "sync running"), s)
		}
		require.NoError(t, os.Remove(gate))
		require.NoError(t, sync.Wait(), syncErr.String())
		for s := range seen {
			require.NotContains(t, s, "edited there")
		}
		w.requireIdentical()
		require.Equal(t, "in sync", w.state())
	})
}

// constraint is how a test makes the workspace run out of room.
type constraint string

const (
	// viaTmpfs: the workspace is on a small tmpfs (a real full disk).
	viaTmpfs constraint = "tmpfs"
	// viaRlimit: where mounting is not allowed, the workspace's git runs
	// under `ulimit -f` (512 KiB): a write past it fails as on a full disk.
	viaRlimit constraint = "rlimit"
)

// constrain puts the workspace (not yet created) on a tmpfs mounted at
// mnt with the given options, or failing that (not root, no
// CAP_SYS_ADMIN) limits the size of the files its git may write.
func (w *world) constrain(mnt, tmpfsOptions string) constraint {
	w.t.Helper()
	require.NoError(w.t, os.MkdirAll(mnt, 0o755))
	// SIDECAR_TEST_RLIMIT=1 tries the fallback where mounting works.
	if os.Getenv("SIDECAR_TEST_RLIMIT") != "" {
		w.remoteGit("limitedgit", "ulimit -f 1024")
		return viaRlimit
	}
	if err := syscall.Mount("tmpfs", mnt, "tmpfs", 0, tmpfsOptions); err == nil {
		w.t.Cleanup(func() {
			if err := syscall.Unmount(mnt, 0); err != nil {
				w.t.Errorf("unmount %s: %v", mnt, err)
			}
		})
		return viaTmpfs
	} else {
		w.t.Logf("cannot mount a tmpfs (%v); limiting file sizes instead", err)
	}
	w.remoteGit("limitedgit", "ulimit -f 1024")
	return viaRlimit
}

// filler is n bytes that compress well (so they travel small) and are not
// zeros (which git's checkout would leave as a hole, taking no room).
func filler(n int) []byte {
	return bytes.Repeat([]byte("git sidecar fills the disk\n"), n/27+1)[:n]
}

// TestFullDiskSetupLeavesNothing: a setup that runs out of room in the
// workspace fails with a clear message and removes everything it made.
func TestFullDiskSetupLeavesNothing(t *testing.T) {
	forEachTransport(t, func(t *testing.T, w *world) {
		// The workspace is three folders down in the small disk: setup
		// creates all three.
		disk := filepath.Join(w.root, "disk")
		w.ws = filepath.Join(disk, "a", "b", nastyName)
		if w.sshd != nil {
			w.dest = "devbox:" + w.ws
		} else {
			w.dest = w.ws
		}
		how := w.constrain(disk, "size=1m")
		w.write("a.txt", "a\n")
		w.writeBytes("filler.txt", filler(3<<20), 0o644)
		w.commitAll("a")
		w.git(w.repo, "push", "-q", "origin", "main")
		w.mustSidecar("add", "dev", w.dest)
		_, errOut, err := w.sidecar("setup")
		require.Error(t, err, "setup into a full disk (%s) must fail", how)
		require.Equal(t, 1, strings.Count(strings.TrimSpace(errOut), "\n")+1, "one line: %q", errOut)
		require.Contains(t, errOut, "was removed")
		ents, err := os.ReadDir(disk)
		require.NoError(t, err)
		require.Empty(t, ents, "setup left files behind")
		require.Contains(t, w.mustSidecar("status"), "last error:")
	})
}

// TestFailedSyncLeavesWorkspace: a sync whose checkout fails part way
// puts back every file it changed: the workspace is as it was, and status
// says the work tree is ahead of it.
func TestFailedSyncLeavesWorkspace(t *testing.T) {
	forEachTransport(t, func(t *testing.T, w *world) {
		how := w.constrain(filepath.Dir(w.ws), "size=16m,nr_inodes=200")
		w.write("keep.txt", "keep\n")
		w.write("edit.txt", "before\n")
		w.write("gone.txt", "gone\n")
		w.commitAll("a")
		w.git(w.repo, "push", "-q", "origin", "main")
		w.setupIdentical()
		before := w.onDiskThere(nil)

		w.write("edit.txt", "after\n")
		require.NoError(t, os.Remove(filepath.Join(w.repo, "gone.txt")))
		w.write("0-new.txt", "new\n")
		switch how {
		case viaTmpfs:
			// More files than the tmpfs has inodes left: the pack is
			// kept as one file, the checkout runs out part way.
			for i := 0; i < 250; i++ {
				w.write(fmt.Sprintf("many/%03d.txt", i), "x\n")
			}
		case viaRlimit:
			// Stored small (compressed), written out at 900 KiB.
			w.writeBytes("filler.txt", filler(900<<10), 0o644)
		}
		_, errOut, err := w.sidecar("sync")
		require.Error(t, err)
		require.Contains(t, errOut, "they were left as they were", "(%s)", how)
		after := w.onDiskThere(nil)
		require.Equal(t, sortedKeys(before), sortedKeys(after))
		for p, f := range before {
			require.Equal(t, f, after[p], p)
		}
		require.Equal(t, "behind: the work tree changed since the last sync; run `git sidecar sync`", w.state())
	})
}

// TestDestGuard: setup refuses a DEST that holds a repository git sidecar
// did not create, in one line naming --force, and changes nothing there;
// with --force it takes it over, keeping what differed in a backup ref.
func TestDestGuard(t *testing.T) {
	forEachTransport(t, func(t *testing.T, w *world) {
		w.write("mine.txt", "mine\n")
		w.commitAll("mine")
		w.git(w.repo, "push", "-q", "origin", "main")

		// Someone else's repository where the workspace would go.
		w.git(w.root, "init", "-q", "-b", "trunk", w.ws)
		require.NoError(t, os.WriteFile(filepath.Join(w.ws, "theirs.txt"), []byte("theirs\n"), 0o644))
		w.git(w.ws, "add", "-A")
		w.git(w.ws, "commit", "-q", "-m", "theirs")
		w.git(w.ws, "remote", "add", "origin", "https://example.com/theirs.git")
		require.NoError(t, os.WriteFile(filepath.Join(w.ws, "wip.txt"), []byte("work in progress\n"), 0o644))
		head := w.git(w.ws, "rev-parse", "HEAD")
		everything := func() map[string]file {
			out := map[string]file{}
			require.NoError(t, filepath.Walk(w.ws, func(p string, fi os.FileInfo, err error) error {
				if err != nil || fi.IsDir() {
					return err
				}
				f, _, err := readFile(p)
				out[p] = f
				return err
			}))
			return out
		}
		before := everything()

		w.mustSidecar("add", "dev", w.dest)
		for _, cmd := range []string{"setup", "sync"} {
			_, errOut, err := w.sidecar(cmd)
			require.Error(t, err)
			require.Equal(t, 1, strings.Count(strings.TrimSpace(errOut), "\n")+1, "one line: %q", errOut)
			require.Contains(t, errOut, "did not create")
			require.Contains(t, errOut, "git sidecar setup --force dev")
			require.Equal(t, before, everything(), "%s changed the foreign repository", cmd)
		}
		require.Equal(t, "https://example.com/theirs.git", w.git(w.ws, "config", "remote.origin.url"))
		require.Equal(t, head, w.git(w.ws, "rev-parse", "HEAD"))
		require.Equal(t, "refs/heads/trunk", w.git(w.ws, "symbolic-ref", "HEAD"))

		out := w.mustSidecar("setup", "--force")
		require.Contains(t, out, "in sync")
		require.Contains(t, out, "kept them in refs/sidecar/backup/")
		w.requireIdentical()
		backups := strings.Fields(w.git(w.ws, "for-each-ref", "--format=%(refname)", "refs/sidecar/backup/"))
		require.Len(t, backups, 1)
		require.Equal(t, "work in progress", w.git(w.ws, "show", backups[0]+":wip.txt"))
		// Ours from now on: a plain setup works.
		w.write("mine.txt", "mine, edited\n")
		require.Contains(t, w.mustSidecar("setup"), "in sync")
		w.requireIdentical()
	})
}

// TestWorktrees: two worktrees of one repository share the sidecar. Each
// sync makes the workspace mirror the worktree it ran in, and none reports
// the other's files as edits made in the workspace.
func TestWorktrees(t *testing.T) {
	w := newWorld(t, local, "")
	w.write("a.txt", "a\n")
	w.commitAll("a")
	w.git(w.repo, "push", "-q", "origin", "main")
	w.setupIdentical()
	main := w.repo

	wt := filepath.Join(w.root, "wt2")
	w.git(main, "worktree", "add", "-q", "-b", "feature", wt)
	w.repo = wt
	w.write("feature.txt", "feature\n")
	require.Contains(t, w.state(), "the workspace holds the files of the worktree at "+main)
	out := w.mustSidecar("sync")
	require.Contains(t, out, "in sync")
	require.NotContains(t, out, "kept them")
	w.requireIdentical()
	require.Equal(t, "in sync", w.state())

	w.repo = main
	require.Contains(t, w.state(), "the workspace holds the files of the worktree at "+wt)
	out = w.mustSidecar("sync")
	require.NotContains(t, out, "kept them")
	w.requireIdentical()

	w.repo = wt
	w.write("feature.txt", "feature, edited\n")
	out = w.mustSidecar("sync")
	require.NotContains(t, out, "kept them")
	w.requireIdentical()
	require.Empty(t, w.git(w.ws, "for-each-ref", "refs/sidecar/backup/"), "no phantom workspace edits")
}

// TestStoreFailureIsRetried: when the workspace cannot store the objects
// sent (here its first unpack-objects fails, as on a stream cut short),
// nothing changed there, and the sync tries once more and succeeds.
func TestStoreFailureIsRetried(t *testing.T) {
	w := newWorld(t, local, "")
	w.write("a.txt", "a\n")
	w.commitAll("a")
	w.git(w.repo, "push", "-q", "origin", "main")
	w.setupIdentical()
	flag := filepath.Join(w.root, "fail-once")
	require.NoError(t, os.WriteFile(flag, nil, 0o644))
	w.remoteGit("flakygit", fmt.Sprintf(`case " $* " in *" unpack-objects "*|*" index-pack "*) if [ -e %s ]; then rm -f %s; echo 'fatal: early EOF' >&2; exit 128; fi ;; esac`,
		shellPattern(flag), shellPattern(flag)))
	w.write("a.txt", "a, edited\n")
	out := w.syncIdentical("-v")
	require.Contains(t, out, "trying once more")
	require.NoFileExists(t, flag)
}
