package helper

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/git-relay/git-relay/internal/gittest"
	"github.com/git-relay/git-relay/internal/wire"
)

// TestUnpackQuarantinesUntilAdmitted: a fetched bundle's objects stay out
// of the repository while git index-pack works on them, and come in only
// with admitPack; a bundle that builds on objects the repository lacks is
// refused, and nothing of it comes in.
func TestUnpackQuarantinesUntilAdmitted(t *testing.T) {
	work, _ := setup(t)
	ctx := context.Background()
	// Another history, with a commit on top of one the work repo has not.
	other := filepath.Join(t.TempDir(), "other")
	gittest.Git(t, work, "clone", "-q", work, other)
	require.NoError(t, os.WriteFile(filepath.Join(other, "b.txt"), []byte("b\n"), 0o644))
	gittest.Git(t, other, "add", ".")
	gittest.Git(t, other, "commit", "-qm", "second")
	base := gittest.Git(t, other, "rev-parse", "HEAD")
	require.NoError(t, os.WriteFile(filepath.Join(other, "c.txt"), []byte("c\n"), 0o644))
	gittest.Git(t, other, "add", ".")
	gittest.Git(t, other, "commit", "-qm", "third")
	tip := gittest.Git(t, other, "rev-parse", "HEAD")

	h, err := newHelper(ctx, "relay::acme/widgets", "acme/widgets", &bytes.Buffer{})
	require.NoError(t, err)
	bundleOf := func(revs ...string) []byte {
		cmd := exec.Command("git", append([]string{"bundle", "create", "-q", "-"}, revs...)...)
		cmd.Dir = other
		cmd.Env = append(os.Environ(), "GIT_DIR="+filepath.Join(other, ".git"))
		out, err := cmd.Output()
		require.NoError(t, err)
		return out
	}
	visible := func(id string) bool {
		return exec.Command("git", "--git-dir", filepath.Join(work, ".git"), "cat-file", "-e", id).Run() == nil
	}

	// Built on "second", which the work repository does not have.
	dir := t.TempDir()
	res, err := h.startUnpack(ctx, dir, bytes.NewReader(bundleOf("master", "^"+base)), wire.CompressNone)
	require.NoError(t, err)
	u := <-res
	require.ErrorContains(t, u.err, "the bundle needs "+base+", which this repository lacks")
	require.False(t, visible(tip))

	// The whole history: unpacked aside, then let in.
	dir = t.TempDir()
	res, err = h.startUnpack(ctx, dir, bytes.NewReader(bundleOf("master")), wire.CompressNone)
	require.NoError(t, err)
	u = <-res
	require.NoError(t, u.err)
	require.False(t, visible(tip), "nothing is visible before the whole payload checks out")
	require.NoError(t, h.admitPack(ctx, u.quarantine))
	require.True(t, visible(tip))
	require.True(t, visible(base))
}
