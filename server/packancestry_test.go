package server

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/git-relay/git-relay/internal/gittest"
	"github.com/git-relay/git-relay/internal/wire"
)

// thinPack is what a push of revs carries: `git pack-objects --thin`.
func thinPack(t *testing.T, dir string, revs ...string) []byte {
	t.Helper()
	var out bytes.Buffer
	c := gittest.Repo(t, filepath.Join(dir, ".git")).Command(t.Context(), "pack-objects", "--revs", "--thin", "--stdout", "-q")
	c.Stdin = strings.NewReader(strings.Join(revs, "\n") + "\n")
	c.Stdout = &out
	require.NoError(t, c.Run())
	return out.Bytes()
}

func TestPackAncestry(t *testing.T) {
	dir := t.TempDir()
	gittest.Git(t, dir, "init", "-q", "-b", "master")
	commit := func(name string) string {
		require.NoError(t, os.WriteFile(filepath.Join(dir, name), []byte(name+"\n"), 0o644))
		gittest.Git(t, dir, "add", ".")
		gittest.Git(t, dir, "commit", "-qm", name)
		return gittest.Git(t, dir, "rev-parse", "HEAD")
	}
	base := commit("base")
	one := commit("one")
	two := commit("two")
	gittest.Git(t, dir, "checkout", "-q", "-b", "side", base)
	side := commit("side")
	gittest.Git(t, dir, "checkout", "-q", "master")
	gittest.Git(t, dir, "merge", "-q", "--no-edit", "side")
	merge := gittest.Git(t, dir, "rev-parse", "HEAD")
	// A commit whose "parent" line comes after its author: git does not
	// read it as a parent, and neither may the check.
	tree := gittest.Git(t, dir, "rev-parse", "HEAD^{tree}")
	crafted := fmt.Sprintf("tree %s\nauthor A <a@example.com> 1 +0000\ncommitter A <a@example.com> 1 +0000\nparent %s\n\nnot a child\n", tree, two)
	out, err := gittest.Repo(t, filepath.Join(dir, ".git")).RunInput(t.Context(), strings.NewReader(crafted), "hash-object", "-t", "commit", "-w", "--stdin", "--literally")
	require.NoError(t, err)
	fake := strings.TrimSpace(out)

	for _, tc := range []struct {
		name    string
		revs    []string
		old     string
		new     string
		settled bool
	}{
		{"one commit", []string{one, "^" + base}, base, one, true},
		{"two commits", []string{two, "^" + base}, base, two, true},
		{"a merge, old on the side", []string{merge, "^" + two, "^" + base}, two, merge, true},
		{"a merge, old behind its second parent", []string{merge, "^" + two}, base, merge, true},
		{"old not in the history", []string{side, "^" + base}, one, side, false},
		{"old is the new id's parent's parent, outside the pack", []string{two, "^" + one}, base, two, false},
		{"a parent line git does not read", []string{fake, "^" + two}, two, fake, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u := wire.Update{Ref: "refs/heads/master", Old: tc.old, New: tc.new}
			left := packAncestry(thinPack(t, dir, tc.revs...), []wire.Update{u})
			if tc.settled {
				require.Empty(t, left)
			} else {
				require.Equal(t, []wire.Update{u}, left)
			}
		})
	}
	// Anything else is left to git.
	u := wire.Update{Ref: "refs/heads/master", Old: base, New: one}
	require.Equal(t, []wire.Update{u}, packAncestry([]byte("PACK not really"), []wire.Update{u}))
	require.Equal(t, []wire.Update{u}, packAncestry(nil, []wire.Update{u}))
}
