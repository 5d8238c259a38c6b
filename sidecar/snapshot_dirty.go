package sidecar

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"strings"
	"time"
)

// maxDirtyPaths is how many changed paths a watched sync looks at one by
// one; beyond that, listing the whole tree costs about the same.
const maxDirtyPaths = 2000

// takeDirty is take for a sync that knows, from a file-system watch
// running since before the last snapshot, every path that may have
// changed since: it looks at those paths and nothing else, so that its
// cost follows the change, not the tree. paths are relative to the top,
// with '/', and not ignored by git (tracked or visible).
//
// It declines (ok false, and the caller takes a full snapshot) whenever
// the paths could change more than themselves: a folder (created,
// removed or renamed with everything in it), a .gitignore or
// .gitmodules, a path in a nested repository or beyond a symlink, a big
// file (read with its own machinery), or a previous snapshot it cannot
// trust.
func (s *snapshotter) takeDirty(ctx context.Context, paths []string) (sn *snapshot, ok bool, err error) {
	if len(paths) == 0 || len(paths) > maxDirtyPaths {
		return nil, false, nil
	}
	start := time.Now()
	index := s.indexPath()
	treeFile := index + ".tree"
	if cachedTree(index, treeFile) == "" {
		return nil, false, nil // the index is not the one our last snapshot wrote
	}
	big := s.loadBig()
	for _, p := range paths {
		if _, ok := big[p]; ok {
			// A big file's table entry must follow it; take knows how.
			return nil, false, nil
		}
	}
	plainDir := map[string]bool{"": true}
	var isPlainDir func(dir string) bool
	isPlainDir = func(dir string) bool {
		if v, ok := plainDir[dir]; ok {
			return v
		}
		v := isPlainDir(parentDir(dir))
		if v {
			fi, err := os.Lstat(s.r.top + "/" + dir)
			v = err == nil && fi.IsDir()
			if v {
				_, gerr := os.Lstat(s.r.top + "/" + dir + "/.git")
				v = errors.Is(gerr, fs.ErrNotExist)
			}
		}
		plainDir[dir] = v
		return v
	}
	var deleted []string
	for _, p := range paths {
		if p == "" || strings.HasPrefix(p, "/") || strings.Contains(p, "\x00") {
			return nil, false, nil
		}
		switch path.Base(p) {
		case ".gitignore", ".gitmodules", ".git":
			return nil, false, nil
		}
		if !isPlainDir(parentDir(p)) {
			return nil, false, nil
		}
		fi, err := os.Lstat(s.r.top + "/" + p)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			deleted = append(deleted, p)
		case err != nil:
			return nil, false, nil
		case fi.IsDir():
			return nil, false, nil
		default:
			st, ok := statOf(fi)
			if !ok || (st.mode != 0o120000 && st.size >= bigFileSize) {
				return nil, false, nil
			}
		}
	}
	if len(deleted) > 0 {
		// A deleted path may have been a folder: its files are in the
		// index under it, and only a full snapshot drops them.
		entries, _, err := readIndex(index, s.format.hashLen)
		if err != nil {
			return nil, false, nil
		}
		for _, d := range deleted {
			prefix := d + "/"
			for p := range entries {
				if strings.HasPrefix(p, prefix) {
					return nil, false, nil
				}
			}
		}
	}
	g := s.git(index)
	in := strings.Join(paths, "\x00") + "\x00"
	// The entries go first and come back read from the files: update-index
	// keeps an entry whose file has the same size and times, and a save
	// within the same clock tick as the one the last snapshot read keeps
	// them (500 quick saves of 50 files once left the workspace behind).
	if _, err := g.RunInput(ctx, strings.NewReader(in), "update-index", "-z", "--force-remove", "--stdin"); err != nil {
		return nil, false, fmt.Errorf("snapshot the changed paths: %w", err)
	}
	if _, err := g.RunInput(ctx, strings.NewReader(in), "update-index", "-z", "--add", "--remove", "--replace", "--stdin"); err != nil {
		return nil, false, fmt.Errorf("snapshot the changed paths: %w", err)
	}
	tree, err := g.Run(ctx, "write-tree", "--missing-ok")
	if err != nil {
		return nil, false, fmt.Errorf("snapshot the changed paths: %w", err)
	}
	saveCachedTree(index, treeFile, tree)
	sn = &snapshot{tree: tree, big: big, plans: map[string]*deltaPlan{}, touched: len(paths)}
	s.logf("snapshot: %d changed path(s) looked at, from the watch, in %s", len(paths), time.Since(start).Round(time.Millisecond))
	return sn, true, nil
}

// parentDir is the folder of a slash path, "" at the top.
func parentDir(p string) string {
	if i := strings.LastIndexByte(p, '/'); i >= 0 {
		return p[:i]
	}
	return ""
}
