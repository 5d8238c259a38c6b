package sidecar

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestTakeDirty: a snapshot of the changed paths alone gives the tree a
// full snapshot gives, and declines what only a full one can see.
func TestTakeDirty(t *testing.T) {
	f := newPackFixture(t)
	f.write(".gitignore", []byte("*.log\n"))
	f.write("a.txt", []byte("a\n"))
	f.write("dir/b.txt", []byte("b\n"))
	f.write("dir/sub/c.txt", []byte("c\n"))
	_, err := f.snap.take(f.ctx, true)
	require.NoError(t, err)

	// full returns the tree of a full snapshot (on a copy of the
	// index) without changing what takeDirty starts from.
	full := func() string {
		sn, err := f.snap.take(f.ctx, false)
		require.NoError(t, err)
		return sn.tree
	}
	dirty := func(paths ...string) (string, bool) {
		sn, ok, err := f.snap.takeDirty(f.ctx, paths)
		require.NoError(t, err)
		if !ok {
			return "", false
		}
		return sn.tree, true
	}

	// An edit, a new file in a known folder, a deletion, an exec bit,
	// a symlink.
	f.write("a.txt", []byte("a edited\n"))
	f.write("dir/new.txt", []byte("new\n"))
	require.NoError(t, os.Remove(filepath.Join(f.top, "dir/b.txt")))
	require.NoError(t, os.Chmod(filepath.Join(f.top, "dir/sub/c.txt"), 0o755))
	require.NoError(t, os.Symlink("a.txt", filepath.Join(f.top, "link")))
	want := full()
	got, ok := dirty("a.txt", "dir/new.txt", "dir/b.txt", "dir/sub/c.txt", "link")
	require.True(t, ok)
	require.Equal(t, want, got)
	require.Equal(t, want, full(), "the index takeDirty left is the full snapshot's")

	// What it must leave to a full snapshot.
	require.NoError(t, os.MkdirAll(filepath.Join(f.top, "made"), 0o755))
	f.write("made/x.txt", []byte("x\n"))
	_, ok = dirty("made")
	require.False(t, ok, "a folder")
	_, ok = dirty(".gitignore")
	require.False(t, ok, ".gitignore")
	require.NoError(t, os.RemoveAll(filepath.Join(f.top, "dir/sub")))
	_, ok = dirty("dir/sub")
	require.False(t, ok, "a removed folder")
	f.write("big.bin", []byte(strings.Repeat("x", bigFileSize)))
	_, ok = dirty("big.bin")
	require.False(t, ok, "a big file")
	require.NoError(t, os.MkdirAll(filepath.Join(f.top, "nested/.git"), 0o755))
	f.write("nested/y.txt", []byte("y\n"))
	_, ok = dirty("nested/y.txt")
	require.False(t, ok, "a nested repository")

	// An index that another snapshot changed behind the cached tree's
	// back is not trusted.
	require.NoError(t, os.WriteFile(f.snap.indexPath()+".tree", []byte("stale\n"), 0o644))
	f.write("a.txt", []byte("again\n"))
	_, ok = dirty("a.txt")
	require.False(t, ok, "an index without its cached tree")
}
