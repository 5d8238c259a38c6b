package sidecar

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/git-relay/git-relay/internal/gittest"
	"github.com/git-relay/git-relay/internal/gitx"
)

// TestReadIndex reads indexes that real git wrote: ids and modes as
// ls-files shows them, and stat data that tells unchanged files from
// changed ones.
func TestReadIndex(t *testing.T) {
	dir := t.TempDir()
	g := gitx.Repo{Dir: dir, Env: gittest.Env(t)}
	gittest.Run(t, g, "init", "-q")
	old := time.Now().Add(-time.Hour)
	for rel, mode := range map[string]os.FileMode{"a.txt": 0o644, "dir/run.sh": 0o755, "name with\nnewline": 0o644} {
		p := filepath.Join(dir, rel)
		require.NoError(t, os.MkdirAll(filepath.Dir(p), 0o755))
		require.NoError(t, os.WriteFile(p, []byte(rel), mode))
		require.NoError(t, os.Chtimes(p, old, old))
	}
	require.NoError(t, os.Symlink("a.txt", filepath.Join(dir, "link")))
	gittest.Run(t, g, "add", "-A")
	// An intent-to-add entry makes git write version 3 (extended flags).
	require.NoError(t, os.WriteFile(filepath.Join(dir, "later.txt"), []byte("x"), 0o644))
	gittest.Run(t, g, "add", "-N", "later.txt")

	entries, mtime, err := readIndex(filepath.Join(dir, ".git", "index"), 20)
	require.NoError(t, err)
	want := map[string]string{}
	for _, line := range strings.Split(gittest.Run(t, g, "ls-files", "-s", "-z"), "\x00") {
		if line == "" {
			continue
		}
		meta, path, _ := strings.Cut(line, "\t")
		f := strings.Fields(meta)
		want[path] = f[0] + " " + f[1]
	}
	got := map[string]string{}
	for p, e := range entries {
		got[p] = fmt.Sprintf("%o %s", e.mode, e.id())
	}
	require.Equal(t, want, got)

	fi, err := os.Lstat(filepath.Join(dir, "a.txt"))
	require.NoError(t, err)
	st, ok := statOf(fi)
	require.True(t, ok)
	require.True(t, entries["a.txt"].clean(st, mtime), "an untouched file is clean")
	require.NoError(t, os.WriteFile(filepath.Join(dir, "a.txt"), []byte("changed"), 0o644))
	fi, _ = os.Lstat(filepath.Join(dir, "a.txt"))
	st, _ = statOf(fi)
	require.False(t, entries["a.txt"].clean(st, mtime))
	// A file written after the index is never taken as clean.
	st2 := st
	st2.mtime = mtime
	require.False(t, (&indexEntry{mode: st.mode, size: uint32(st.size), mtimeS: st.mtimeS, mtimeNS: st.mtimeNS,
		ctimeS: st.ctimeS, ctimeNS: st.ctimeNS, ino: st.ino, uid: st.uid, gid: st.gid}).clean(st2, mtime))

	// Version 4 (prefix-compressed paths) reads the same.
	gittest.Run(t, g, "update-index", "--index-version", "4")
	v4, _, err := readIndex(filepath.Join(dir, ".git", "index"), 20)
	require.NoError(t, err)
	require.Equal(t, entries, v4)
	// Long shared prefixes and long dropped suffixes (varints of more
	// than one byte).
	long := strings.Repeat("d/", 100) + "x/" + strings.Repeat("z", 200)
	for _, rel := range []string{long, strings.Repeat("d/", 100) + "y", "e"} {
		p := filepath.Join(dir, rel)
		require.NoError(t, os.MkdirAll(filepath.Dir(p), 0o755))
		require.NoError(t, os.WriteFile(p, []byte(rel), 0o644))
	}
	gittest.Run(t, g, "add", "-A")
	v4, _, err = readIndex(filepath.Join(dir, ".git", "index"), 20)
	require.NoError(t, err)
	require.Len(t, v4, len(strings.Split(strings.TrimSuffix(gittest.Run(t, g, "ls-files", "-z"), "\x00"), "\x00")))
	require.Contains(t, v4, long)
	require.Contains(t, v4, strings.Repeat("d/", 100)+"y") // after dropping 202 bytes
	require.Contains(t, v4, "e")

	// An unknown version is an error; the caller then lets git look at
	// every path.
	idx := filepath.Join(dir, ".git", "index")
	b, err := os.ReadFile(idx)
	require.NoError(t, err)
	b[7] = 9
	require.NoError(t, os.WriteFile(idx, b, 0o644))
	_, _, err = readIndex(idx, 20)
	require.Error(t, err)
}
