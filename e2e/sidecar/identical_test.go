package sidecar_test

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/stretchr/testify/require"
)

// file is what a user sees of one file: its kind, and its bytes or its
// link target.
type file struct {
	kind string // "file", "exec" or "link"
	data []byte
}

func (f file) String() string {
	if len(f.data) > 64 {
		return fmt.Sprintf("%s, %d bytes, starting %q", f.kind, len(f.data), f.data[:64])
	}
	return fmt.Sprintf("%s %q", f.kind, f.data)
}

// readFile reads one path from disk: ok is false when nothing (or a
// folder) is there.
func readFile(p string) (file, bool, error) {
	fi, err := os.Lstat(p)
	if errors.Is(err, fs.ErrNotExist) {
		return file{}, false, nil
	}
	if err != nil {
		return file{}, false, err
	}
	switch {
	case fi.Mode()&fs.ModeSymlink != 0:
		target, err := os.Readlink(p)
		return file{"link", []byte(target)}, true, err
	case fi.Mode().IsRegular():
		b, err := os.ReadFile(p)
		kind := "file"
		if fi.Mode()&0o100 != 0 {
			kind = "exec"
		}
		return file{kind, b}, true, err
	}
	return file{}, false, nil
}

// seenLocally lists what the user sees in the local work tree, as git
// defines it (tracked files and untracked files that are not ignored),
// read from disk, and walks into every submodule and nested repository
// there the same way. It uses nothing of git sidecar's.
func (w *world) seenLocally() map[string]file {
	w.t.Helper()
	out := map[string]file{}
	var walk func(dir, prefix string)
	walk = func(dir, prefix string) {
		ls := w.git(dir, "ls-files", "-z", "--cached", "--others", "--exclude-standard")
		for _, rel := range strings.Split(ls, "\x00") {
			if rel == "" {
				continue
			}
			p := filepath.Join(dir, rel)
			if fi, err := os.Lstat(p); err == nil && fi.IsDir() {
				if _, err := os.Lstat(filepath.Join(p, ".git")); err == nil {
					walk(p, prefix+strings.TrimSuffix(rel, "/")+"/")
				}
				continue
			}
			f, ok, err := readFile(p)
			require.NoError(w.t, err)
			if ok {
				out[prefix+rel] = f
			}
		}
	}
	walk(w.repo, "")
	return out
}

// onDiskThere lists every file and symlink under the workspace, except
// its .git and what extra says to leave out.
func (w *world) onDiskThere(extra func(rel string) bool) map[string]file {
	w.t.Helper()
	out := map[string]file{}
	require.NoError(w.t, filepath.WalkDir(w.ws, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(w.ws, p)
		if rel == ".git" {
			return filepath.SkipDir
		}
		if d.IsDir() || (extra != nil && extra(rel)) {
			return nil
		}
		f, ok, err := readFile(p)
		if err != nil {
			return err
		}
		if ok {
			out[rel] = f
		}
		return nil
	}))
	return out
}

// requireIdentical checks, byte by byte, that the workspace holds exactly
// what the user sees locally, inside submodules and nested repositories
// too: the same paths, bytes, exec bits and symlink targets, and nothing
// else but its .git. It trusts nothing git sidecar says.
func (w *world) requireIdentical() {
	w.t.Helper()
	want, got := w.seenLocally(), w.onDiskThere(nil)
	require.Equal(w.t, sortedKeys(want), sortedKeys(got), "the workspace holds other paths than the user sees")
	for p, f := range want {
		g := got[p]
		if f.kind != g.kind || !bytes.Equal(f.data, g.data) {
			require.Failf(w.t, "the workspace differs", "%s: local %v, workspace %v", p, f, g)
		}
	}
}

func sortedKeys(m map[string]file) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
