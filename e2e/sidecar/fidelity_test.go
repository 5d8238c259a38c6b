package sidecar_test

import (
	"crypto/rand"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// remoteHome is the HOME of the workspace's git: the sshd's, or ours for
// a local workspace.
func (w *world) remoteHome() string {
	if w.sshd != nil {
		return w.sshd.RemoteHome
	}
	return w.home
}

// remoteConfig sets a key in the workspace side's ~/.gitconfig.
func (w *world) remoteConfig(key, value string) {
	w.t.Helper()
	w.git(w.root, "config", "--file", filepath.Join(w.remoteHome(), ".gitconfig"), key, value)
}

// state is the status's "state:" line.
func (w *world) state() string {
	w.t.Helper()
	out := w.mustSidecar("status")
	m := regexp.MustCompile(`(?m)^state:\s+(.*)$`).FindStringSubmatch(out)
	require.NotNil(w.t, m, out)
	return m[1]
}

// syncIdentical syncs, checks the workspace byte by byte, and checks
// that status then says so; before the sync, status must say the
// workspace is behind (there must be something to sync).
func (w *world) syncIdentical(args ...string) string {
	w.t.Helper()
	require.Contains(w.t, w.state(), "behind", "status before the sync")
	out := w.mustSidecar(append([]string{"sync"}, args...)...)
	require.Contains(w.t, out, "in sync")
	w.requireIdentical()
	require.Equal(w.t, "in sync", w.state())
	return out
}

// setupIdentical adds the sidecar, sets it up and checks the workspace.
func (w *world) setupIdentical() {
	w.t.Helper()
	w.mustSidecar("add", "dev", w.dest)
	require.Contains(w.t, w.mustSidecar("setup"), "in sync")
	w.requireIdentical()
	require.Equal(w.t, "in sync", w.state())
}

func (w *world) writeBytes(rel string, b []byte, mode os.FileMode) {
	w.t.Helper()
	p := filepath.Join(w.repo, rel)
	require.NoError(w.t, os.MkdirAll(filepath.Dir(p), 0o755))
	require.NoError(w.t, os.WriteFile(p, b, mode))
	require.NoError(w.t, os.Chmod(p, mode))
}

// checkoutAgain removes the files and checks them out again, so that
// the work tree holds what git's own conversions write.
func (w *world) checkoutAgain(paths ...string) {
	w.t.Helper()
	for _, p := range paths {
		require.NoError(w.t, os.Remove(filepath.Join(w.repo, p)))
	}
	w.git(w.repo, append([]string{"checkout", "--"}, paths...)...)
}

func forEachTransport(t *testing.T, fn func(t *testing.T, w *world)) {
	for _, kind := range []transportKind{local, overSSH} {
		t.Run(string(kind), func(t *testing.T) {
			t.Parallel()
			fn(t, newWorld(t, kind, ""))
		})
	}
}

// TestLineEndings: text=auto eol=crlf attributes, and core.autocrlf set
// locally and in the workspace side's ~/.gitconfig: the workspace holds
// the work tree's bytes, CRLF, LF, lone CR and mixed alike.
func TestLineEndings(t *testing.T) {
	forEachTransport(t, func(t *testing.T, w *world) {
		// Every attribute that makes git rewrite bytes on the way in or
		// out: eol, ident, working-tree-encoding.
		w.write(".gitattributes", "* text=auto eol=crlf\n*.bin binary\n*.id ident\n*.utf16 text working-tree-encoding=UTF-16LE eol=lf\n")
		w.write("a.txt", "one\ntwo\n")
		w.write("dir/b.md", "b\r\nmixed\nlines\r\n")
		w.writeBytes("data.bin", []byte("x\r\ny\n\x00"), 0o644)
		w.write("version.id", "$Id$\n")
		w.writeBytes("wide.utf16", []byte("h\x00i\x00\n\x00"), 0o644)
		w.commitAll("eol")
		w.git(w.repo, "push", "-q", "origin", "main")
		// What git checks out under these attributes: CRLF, an
		// expanded $Id$, UTF-16 (the blobs hold LF, $Id$, UTF-8).
		w.checkoutAgain("a.txt", "dir/b.md", "version.id", "wide.utf16")
		b, err := os.ReadFile(filepath.Join(w.repo, "a.txt"))
		require.NoError(t, err)
		require.Equal(t, "one\r\ntwo\r\n", string(b))
		b, err = os.ReadFile(filepath.Join(w.repo, "version.id"))
		require.NoError(t, err)
		require.Contains(t, string(b), "$Id: ")
		require.Equal(t, "hi\n", w.git(w.repo, "cat-file", "blob", "HEAD:wide.utf16")+"\n")
		w.write("untracked lf.txt", "lf only\n")
		w.write("lone-cr.txt", "a\rb\r\n")
		w.setupIdentical()

		// core.autocrlf locally.
		w.git(w.repo, "config", "core.autocrlf", "true")
		w.write("a.txt", "one\r\ntwo\nthree\r\n")
		w.write("new crlf.txt", "n\r\n")
		w.syncIdentical()

		// core.autocrlf in the workspace side's ~/.gitconfig, and a
		// bootstrap that checks everything out there again.
		w.remoteConfig("core.autocrlf", "true")
		w.write("dir/b.md", "b\nedited\r\n")
		w.syncIdentical()
		require.Contains(t, w.mustSidecar("setup"), "in sync")
		w.requireIdentical()
		w.remoteConfig("core.autocrlf", "input")
		w.write("lone-cr.txt", "c\r")
		w.syncIdentical()
	})
}

// TestLocalOnlyFilter: a clean/smudge filter defined only locally (tr
// standing in for git-lfs), while the workspace side defines the same
// filter as one that fails and is required (an LFS server without the
// object): the workspace gets the work tree's bytes and runs no filter.
func TestLocalOnlyFilter(t *testing.T) {
	forEachTransport(t, func(t *testing.T, w *world) {
		w.git(w.repo, "config", "filter.rot13.clean", "tr A-Za-z N-ZA-Mn-za-m")
		w.git(w.repo, "config", "filter.rot13.smudge", "tr A-Za-z N-ZA-Mn-za-m")
		w.git(w.repo, "config", "filter.rot13.required", "true")
		w.remoteConfig("filter.rot13.smudge", "false")
		w.remoteConfig("filter.rot13.clean", "false")
		w.remoteConfig("filter.rot13.required", "true")
		w.write(".gitattributes", "*.secret filter=rot13\n")
		w.write("plain.secret", "Hello, World\n")
		w.commitAll("filtered")
		w.git(w.repo, "push", "-q", "origin", "main")
		// The blob holds the cleaned text; the work tree the smudged.
		require.Equal(t, "Uryyb, Jbeyq", w.git(w.repo, "cat-file", "blob", "HEAD:plain.secret"))
		w.checkoutAgain("plain.secret")
		w.write("new.secret", "Not Yet Committed\n")
		w.setupIdentical()

		w.write("plain.secret", "Hello again\n")
		w.write("new.secret", "Changed\n")
		w.syncIdentical()
	})
}

// TestIndexFlags: edits to files marked assume-unchanged or
// skip-worktree reach the workspace.
func TestIndexFlags(t *testing.T) {
	forEachTransport(t, func(t *testing.T, w *world) {
		w.write("assumed.txt", "a\n")
		w.write("skipped.txt", "s\n")
		w.write("plain.txt", "p\n")
		w.commitAll("flags")
		w.git(w.repo, "push", "-q", "origin", "main")
		w.git(w.repo, "update-index", "--assume-unchanged", "assumed.txt")
		w.git(w.repo, "update-index", "--skip-worktree", "skipped.txt")
		w.write("assumed.txt", "a, edited\n")
		w.write("skipped.txt", "s, edited\n")
		// git itself does not see them.
		require.Empty(t, w.git(w.repo, "status", "--porcelain"))
		w.setupIdentical()

		w.write("assumed.txt", "a, edited again\n")
		w.syncIdentical()
		w.write("skipped.txt", "s, edited again\n")
		w.syncIdentical()
	})
}

// TestSparseCheckout: the workspace holds what the sparse work tree
// holds, a stray untracked file outside the sparse set included.
func TestSparseCheckout(t *testing.T) {
	forEachTransport(t, func(t *testing.T, w *world) {
		w.write("top.txt", "top\n")
		w.write("in/a.txt", "in\n")
		w.write("out/b.txt", "out\n")
		w.write("out/deep/c.txt", "deep\n")
		w.commitAll("tree")
		w.git(w.repo, "push", "-q", "origin", "main")
		w.git(w.repo, "sparse-checkout", "set", "--cone", "in")
		w.git(w.repo, "config", "index.sparse", "true")
		w.git(w.repo, "sparse-checkout", "reapply")
		require.NoFileExists(t, filepath.Join(w.repo, "out/b.txt"))
		w.write("out/deep/stray.txt", "stray\n")
		w.write("in/a.txt", "in, edited\n")
		w.setupIdentical()
		require.NoFileExists(t, filepath.Join(w.ws, "out/b.txt"))
		require.FileExists(t, filepath.Join(w.ws, "out/deep/stray.txt"))

		w.write("out/stray2.txt", "another\n")
		w.write("in/new.txt", "new\n")
		w.syncIdentical()
		// Widening the sparse set brings the files in.
		w.git(w.repo, "sparse-checkout", "add", "out")
		w.syncIdentical()
		require.FileExists(t, filepath.Join(w.ws, "out/b.txt"))
	})
}

// TestSubmodule: a submodule with local edits (tracked, untracked,
// deleted, ignored) reaches the workspace byte for byte.
func TestSubmodule(t *testing.T) {
	forEachTransport(t, func(t *testing.T, w *world) {
		lib := filepath.Join(w.root, "lib.git")
		src := filepath.Join(w.root, "libsrc")
		w.git(w.root, "init", "-q", "-b", "main", src)
		for rel, content := range map[string]string{"lib.c": "lib\n", "gone.c": "gone\n", ".gitignore": "*.o\n", "inner/x.h": "x\n"} {
			p := filepath.Join(src, rel)
			require.NoError(t, os.MkdirAll(filepath.Dir(p), 0o755))
			require.NoError(t, os.WriteFile(p, []byte(content), 0o644))
		}
		w.git(src, "add", "-A")
		w.git(src, "commit", "-q", "-m", "lib")
		w.git(w.root, "clone", "-q", "--bare", src, lib)
		w.write("main.c", "main\n")
		w.git(w.repo, "-c", "protocol.file.allow=always", "submodule", "add", "-q", lib, "vendor/lib")
		w.commitAll("with a submodule")
		w.git(w.repo, "push", "-q", "origin", "main")

		sub := filepath.Join(w.repo, "vendor", "lib")
		require.NoError(t, os.WriteFile(filepath.Join(sub, "lib.c"), []byte("lib, edited here\n"), 0o644))
		require.NoError(t, os.WriteFile(filepath.Join(sub, "untracked.c"), []byte("new\n"), 0o755))
		require.NoError(t, os.WriteFile(filepath.Join(sub, "build.o"), []byte("ignored in the submodule\n"), 0o644))
		require.NoError(t, os.Remove(filepath.Join(sub, "gone.c")))
		w.setupIdentical()
		require.NoFileExists(t, filepath.Join(w.ws, "vendor/lib/build.o"))
		require.FileExists(t, filepath.Join(w.ws, "vendor/lib/untracked.c"))

		require.NoError(t, os.WriteFile(filepath.Join(sub, "inner", "x.h"), []byte("x, edited\n"), 0o644))
		require.NoError(t, os.Symlink("lib.c", filepath.Join(sub, "link")))
		w.syncIdentical()
	})
}

// TestNestedRepositories: a repository inside the work tree that is not a
// submodule (with commits, and one without), with its own ignore rules.
func TestNestedRepositories(t *testing.T) {
	forEachTransport(t, func(t *testing.T, w *world) {
		w.write("top.txt", "top\n")
		w.commitAll("top")
		w.git(w.repo, "push", "-q", "origin", "main")
		nested := filepath.Join(w.repo, "tools", "nested")
		w.git(w.root, "init", "-q", "-b", "main", nested)
		w.write("tools/nested/tracked.txt", "tracked\n")
		w.write("tools/nested/.gitignore", "*.tmp\n")
		w.git(nested, "add", "-A")
		w.git(nested, "commit", "-q", "-m", "nested")
		w.write("tools/nested/tracked.txt", "tracked, edited\n")
		w.write("tools/nested/untracked.txt", "untracked\n")
		w.write("tools/nested/scratch.tmp", "ignored there\n")
		fresh := filepath.Join(w.repo, "fresh")
		w.git(w.root, "init", "-q", fresh)
		w.write("fresh/only.txt", "a repository without commits\n")
		w.setupIdentical()
		require.NoFileExists(t, filepath.Join(w.ws, "tools/nested/scratch.tmp"))

		w.write("tools/nested/tracked.txt", "tracked, edited twice\n")
		require.NoError(t, os.Remove(filepath.Join(w.repo, "fresh/only.txt")))
		w.write("fresh/other.txt", "other\n")
		w.syncIdentical()
	})
}

// TestBigBinary: a 40 MiB binary added, changed by one byte, and deleted.
// The change travels as a delta and the deletion sends no content.
func TestBigBinary(t *testing.T) {
	forEachTransport(t, func(t *testing.T, w *world) {
		w.write("a.txt", "a\n")
		w.commitAll("a")
		w.git(w.repo, "push", "-q", "origin", "main")
		w.setupIdentical()

		big := make([]byte, 40<<20)
		_, err := rand.Read(big)
		require.NoError(t, err)
		w.writeBytes("assets/big.bin", big, 0o755)
		out := w.syncIdentical()
		require.Greater(t, bytesSent(t, out), 40<<20)

		big[20<<20+1] ^= 1
		w.writeBytes("assets/big.bin", big, 0o755)
		out = w.syncIdentical()
		require.Less(t, bytesSent(t, out), 256<<10, "a one-byte change must travel as a delta")

		require.NoError(t, os.Remove(filepath.Join(w.repo, "assets/big.bin")))
		out = w.syncIdentical()
		require.Less(t, bytesSent(t, out), 64<<10, "a deletion must send no content")
		require.NoDirExists(t, filepath.Join(w.ws, "assets"))

		// Nothing changed: nothing sent but the script.
		out = w.mustSidecar("sync")
		require.Contains(t, out, "no changes")
		require.Less(t, bytesSent(t, out), 16<<10)
		require.True(t, strings.Contains(out, "incremental"), out)
	})
}

// TestIgnoreRules: what the user sees follows every source of ignore
// rules (.gitignore, info/exclude, core.excludesFile), a tracked file is
// seen even when a rule matches it, and it goes once it is untracked.
func TestIgnoreRules(t *testing.T) {
	w := newWorld(t, local, "")
	w.write(".gitignore", "*.log\n")
	w.write("kept.log", "tracked although ignored\n")
	w.git(w.repo, "add", "-f", "kept.log")
	w.write("a.txt", "a\n")
	w.commitAll("a")
	w.git(w.repo, "push", "-q", "origin", "main")
	require.NoError(t, os.WriteFile(filepath.Join(w.repo, ".git", "info", "exclude"), []byte("secret.env\n"), 0o644))
	excludes := filepath.Join(w.home, "global-ignore")
	require.NoError(t, os.WriteFile(excludes, []byte("*.swp\n"), 0o644))
	w.git(w.repo, "config", "core.excludesFile", excludes)
	w.write("secret.env", "TOKEN=1\n")
	w.write(".a.txt.swp", "editor\n")
	w.write("debug.log", "ignored\n")
	w.write("seen.txt", "untracked, not ignored\n")
	w.setupIdentical()
	for _, p := range []string{"secret.env", ".a.txt.swp", "debug.log"} {
		require.NoFileExists(t, filepath.Join(w.ws, p))
	}
	require.FileExists(t, filepath.Join(w.ws, "kept.log"))

	// Untracked now, and ignored: no longer seen.
	w.git(w.repo, "rm", "-q", "--cached", "kept.log")
	w.syncIdentical()
	require.NoFileExists(t, filepath.Join(w.ws, "kept.log"))
	// A rule that stops matching brings the file back.
	require.NoError(t, os.WriteFile(filepath.Join(w.repo, ".git", "info", "exclude"), nil, 0o644))
	w.syncIdentical()
	require.FileExists(t, filepath.Join(w.ws, "secret.env"))
}

// TestSHA256Repository: a repository in the SHA-256 object format gets a
// workspace in that format.
func TestSHA256Repository(t *testing.T) {
	w := newWorld(t, local, "")
	require.NoError(t, os.RemoveAll(w.repo))
	require.NoError(t, os.RemoveAll(w.origin))
	w.git(w.root, "init", "-q", "--bare", "--object-format=sha256", "-b", "main", w.origin)
	w.git(w.root, "init", "-q", "--object-format=sha256", "-b", "main", w.repo)
	w.git(w.repo, "remote", "add", "origin", w.origin)
	w.write("a.txt", "a\n")
	w.commitAll("a")
	w.git(w.repo, "push", "-q", "origin", "main")
	w.write("b.txt", "b\n")
	w.writeBytes("big.bin", filler(2<<20), 0o644)
	w.setupIdentical()
	require.Equal(t, "sha256", w.git(w.ws, "rev-parse", "--show-object-format"))
	w.writeBytes("big.bin", append(filler(2<<20), 'x'), 0o644)
	w.syncIdentical()
}
