package sidecar

import (
	"bytes"
	"context"
	"crypto/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/git-relay/git-relay/internal/gittest"
	"github.com/git-relay/git-relay/internal/gitx"
)

// packFixture is a repository with a sidecar snapshotter, and an empty
// repository standing in for the workspace.
type packFixture struct {
	t    *testing.T
	ctx  context.Context
	top  string
	ws   string
	snap *snapshotter
	wsg  gitx.Repo
}

func newPackFixture(t *testing.T) *packFixture {
	env := gittest.Env(t)
	root := t.TempDir()
	top, ws := filepath.Join(root, "repo"), filepath.Join(root, "ws")
	for _, d := range []string{top, ws} {
		gittest.Run(t, gitx.Repo{Dir: root, Env: env}, "init", "-q", d)
	}
	g := gitx.Repo{Dir: top, Env: env}
	r := &repo{top: top, gitDir: filepath.Join(top, ".git"), commonDir: filepath.Join(top, ".git"), git: g}
	snap, err := newSnapshotter(t.Context(), r, "dev", t.Logf)
	require.NoError(t, err)
	return &packFixture{t: t, ctx: t.Context(), top: top, ws: ws, snap: snap, wsg: gitx.Repo{Dir: ws, Env: env}}
}

func (f *packFixture) write(rel string, b []byte) {
	p := filepath.Join(f.top, rel)
	require.NoError(f.t, os.MkdirAll(filepath.Dir(p), 0o755))
	require.NoError(f.t, os.WriteFile(p, b, 0o644))
}

// send snapshots the work tree, packs what the workspace lacks given the
// trees it holds, and stores the pack there with the git command the
// plan names. It returns the snapshot and the pack's size.
func (f *packFixture) send(have []string, heldBig map[string]bool) (*snapshot, *outgoing, int) {
	sn, err := f.snap.take(f.ctx, true)
	require.NoError(f.t, err)
	o, err := f.snap.plan(f.ctx, sn, have, heldBig)
	require.NoError(f.t, err)
	var pack bytes.Buffer
	require.NoError(f.t, f.snap.writePack(f.ctx, &pack, o))
	args := map[string][]string{
		"unpack":  {"unpack-objects", "-q"},
		"unpack0": {"-c", "core.looseCompression=0", "unpack-objects", "-q"},
		"index":   {"index-pack", "--stdin", "--fix-thin"},
	}[o.how]
	if o.how != "none" {
		_, err = f.wsg.RunInput(f.ctx, bytes.NewReader(pack.Bytes()), args...)
		require.NoError(f.t, err, "%s of a %d-byte pack", o.how, pack.Len())
	}
	return sn, o, pack.Len()
}

// checkout makes the workspace hold tree and checks the files.
func (f *packFixture) checkout(tree string) {
	gittest.Run(f.t, f.wsg, "read-tree", "--reset", "-u", tree)
	for _, rel := range strings.Split(gittest.Run(f.t, f.wsg, "ls-files"), "\n") {
		want, err := os.ReadFile(filepath.Join(f.top, rel))
		require.NoError(f.t, err)
		got, err := os.ReadFile(filepath.Join(f.ws, rel))
		require.NoError(f.t, err)
		require.True(f.t, bytes.Equal(want, got), "%s differs", rel)
	}
}

func randomBytes(t *testing.T, n int) []byte {
	b := make([]byte, n)
	_, err := rand.Read(b)
	require.NoError(t, err)
	return b
}

// TestPackCarriesWhatChanged: real git stores the pack, and a big file's
// one-byte edit travels as a small delta against the blob the workspace
// holds.
func TestPackCarriesWhatChanged(t *testing.T) {
	f := newPackFixture(t)
	f.write("a.txt", []byte("a\r\n"))
	f.write("dir/b.txt", []byte("b\n"))
	big := randomBytes(t, 3<<20+123)
	f.write("big.bin", big)
	sn1, o, _ := f.send(nil, nil)
	require.Equal(t, "unpack0", o.how)
	require.Equal(t, 3, o.files)
	f.checkout(sn1.tree)

	// One byte of the big file, and a small file.
	big[1<<20+7] ^= 0xff
	f.write("big.bin", big)
	f.write("a.txt", []byte("a2\r\n"))
	held := map[string]bool{sn1.big["big.bin"].ID: true}
	sn2, o, size := f.send([]string{sn1.tree}, held)
	require.Equal(t, "unpack0", o.how)
	require.Equal(t, 2, o.files)
	require.Less(t, size, 64<<10, "a one-byte edit of a big file must travel as a delta")
	f.checkout(sn2.tree)

	// Deleting the big file sends only a tree.
	require.NoError(t, os.Remove(filepath.Join(f.top, "big.bin")))
	sn3, o, size := f.send([]string{sn2.tree}, map[string]bool{sn2.big["big.bin"].ID: true})
	require.Equal(t, []string{sn3.tree}, o.small)
	require.Empty(t, o.big)
	require.Less(t, size, 1024)
	f.checkout(sn3.tree)

	// Nothing changed: nothing to send.
	sn4, o, _ := f.send([]string{sn3.tree}, nil)
	require.Equal(t, sn3.tree, sn4.tree)
	require.Equal(t, "none", o.how)
}

// TestStoreCompaction: rebuilding the private store keeps what the next
// sync needs (the synced tree, to diff against) and drops older
// snapshots' objects.
func TestStoreCompaction(t *testing.T) {
	f := newPackFixture(t)
	f.write("a.txt", []byte("one\n"))
	f.write("dir/b.txt", []byte("b\n"))
	sn1, _, _ := f.send(nil, nil)
	f.write("a.txt", []byte("two\n"))
	sn2, _, _ := f.send([]string{sn1.tree}, nil)
	f.checkout(sn2.tree)

	defer func(v int) { storeGCThreshold = v }(storeGCThreshold)
	storeGCThreshold = 0
	require.NoError(t, f.snap.gcStore(f.ctx, sn2.tree))
	loose, err := filepath.Glob(filepath.Join(f.snap.shadow, "objects", "??", "*"))
	require.NoError(t, err)
	require.Empty(t, loose)
	g := f.snap.git(f.snap.indexPath())
	oldBlob := strings.TrimSpace(gittest.Run(t, f.wsg, "rev-parse", sn1.tree+":a.txt"))
	ok, err := g.Ok(f.ctx, "cat-file", "-e", oldBlob)
	require.NoError(t, err)
	require.False(t, ok, "an older snapshot's blob survived")

	// The next sync diffs against the synced tree and sends the change.
	f.write("a.txt", []byte("three\n"))
	sn3, o, _ := f.send([]string{sn2.tree}, nil)
	require.Equal(t, 1, o.files)
	f.checkout(sn3.tree)
}
