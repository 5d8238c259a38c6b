package bundle

import (
	"bufio"
	"bytes"
	"crypto/sha1"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/git-relay/git-relay/internal/gittest"
	"github.com/git-relay/git-relay/internal/gitx"
)

// newRepo makes a repository with n commits on master, each adding a file,
// plus a branch and an annotated tag.
func newRepo(t testing.TB, n int) gitx.Repo {
	t.Helper()
	dir := t.TempDir()
	r := gittest.Repo(t, dir)
	gittest.Run(t, r, "init", "-q", "-b", "master")
	for i := 0; i < n; i++ {
		require.NoError(t, os.WriteFile(filepath.Join(dir, fmt.Sprintf("f%d.txt", i)), []byte(strings.Repeat(fmt.Sprintf("line %d\n", i), 50)), 0o644))
		gittest.Run(t, r, "add", ".")
		gittest.Run(t, r, "commit", "-q", "-m", fmt.Sprintf("commit number %d", i))
	}
	gittest.Run(t, r, "branch", "side", "master~1")
	gittest.Run(t, r, "tag", "-a", "-m", "release", "v1", "master~2")
	return r
}

func TestFullBundleV2(t *testing.T) {
	r := newRepo(t, 5)
	path := filepath.Join(t.TempDir(), "full.bundle")
	gittest.Run(t, r, "bundle", "create", "-q", path, "master", "side", "v1")

	h, pack, err := OpenPack(path)
	require.NoError(t, err)
	defer pack.Close()
	require.Equal(t, 2, h.Version)
	require.Empty(t, h.Capabilities)
	require.Empty(t, h.Prereqs)
	require.Equal(t, []Ref{
		{OID: gittest.Run(t, r, "rev-parse", "master"), Name: "refs/heads/master"},
		{OID: gittest.Run(t, r, "rev-parse", "side"), Name: "refs/heads/side"},
		{OID: gittest.Run(t, r, "rev-parse", "v1"), Name: "refs/tags/v1"},
	}, h.Refs)

	// The pack is exactly the file's tail.
	raw, err := os.ReadFile(path)
	require.NoError(t, err)
	packBytes, err := io.ReadAll(pack)
	require.NoError(t, err)
	require.Equal(t, raw[h.Len:], packBytes)
	require.Equal(t, "PACK", string(packBytes[:4]))
}

func TestIndexPackOfFullBundle(t *testing.T) {
	r := newRepo(t, 5)
	path := filepath.Join(t.TempDir(), "full.bundle")
	gittest.Run(t, r, "bundle", "create", "-q", path, "master")
	_, pack, err := OpenPack(path)
	require.NoError(t, err)
	defer pack.Close()

	dst := gittest.Repo(t, t.TempDir())
	gittest.Run(t, dst, "init", "-q", "--bare")
	_, err = dst.RunInput(t.Context(), pack, "index-pack", "--stdin", "--strict")
	require.NoError(t, err)
	gittest.Run(t, dst, "update-ref", "refs/heads/master", gittest.Run(t, r, "rev-parse", "master"))
	gittest.Run(t, dst, "fsck", "--strict")
	require.Equal(t, gittest.Run(t, r, "rev-list", "master"), gittest.Run(t, dst, "rev-list", "master"))
}

func TestThinBundleWithPrerequisites(t *testing.T) {
	r := newRepo(t, 6)
	path := filepath.Join(t.TempDir(), "thin.bundle")
	gittest.Run(t, r, "bundle", "create", "-q", path, "master", "^master~3")

	h, pack, err := OpenPack(path)
	require.NoError(t, err)
	defer pack.Close()
	require.Equal(t, []Prereq{{OID: gittest.Run(t, r, "rev-parse", "master~3"), Comment: "commit number 2"}}, h.Prereqs)
	require.Equal(t, []Ref{{OID: gittest.Run(t, r, "rev-parse", "master"), Name: "refs/heads/master"}}, h.Refs)

	// A repository that has the prerequisite can complete the thin pack.
	dstDir := t.TempDir()
	dst := gittest.Repo(t, dstDir)
	gittest.Run(t, dst, "init", "-q", "--bare")
	gittest.Run(t, r, "push", "-q", dstDir, "master~3:refs/heads/master")
	_, err = dst.RunInput(t.Context(), pack, "index-pack", "--stdin", "--fix-thin", "--strict")
	require.NoError(t, err)
	gittest.Run(t, dst, "update-ref", "refs/heads/master", h.Refs[0].OID)
	gittest.Run(t, dst, "fsck", "--strict")
}

func TestV3Bundle(t *testing.T) {
	r := newRepo(t, 3)
	path := filepath.Join(t.TempDir(), "v3.bundle")
	gittest.Run(t, r, "bundle", "create", "-q", "--version=3", path, "master", "^master~1")

	h, pack, err := OpenPack(path)
	require.NoError(t, err)
	defer pack.Close()
	require.Equal(t, 3, h.Version)
	require.Equal(t, map[string]string{"object-format": "sha1"}, h.Capabilities)
	require.Len(t, h.Prereqs, 1)
	require.Len(t, h.Refs, 1)
}

// ReadHeader on a plain reader must stop exactly at the pack, and Split
// must hand the rest of a stream on.
func TestReadHeaderConsumesExactlyTheHeader(t *testing.T) {
	r := newRepo(t, 3)
	path := filepath.Join(t.TempDir(), "b.bundle")
	gittest.Run(t, r, "bundle", "create", "-q", path, "master", "^master~1")
	raw, err := os.ReadFile(path)
	require.NoError(t, err)

	plain := struct{ io.Reader }{bytes.NewReader(raw)}
	h, err := ReadHeader(plain)
	require.NoError(t, err)
	rest, err := io.ReadAll(plain)
	require.NoError(t, err)
	require.Equal(t, raw[h.Len:], rest)
	require.True(t, bytes.HasPrefix(rest, []byte("PACK")))

	br := bufio.NewReader(bytes.NewReader(raw))
	h2, err := ReadHeader(br)
	require.NoError(t, err)
	require.Equal(t, h, h2)
	rest, err = io.ReadAll(br)
	require.NoError(t, err)
	require.Equal(t, raw[h.Len:], rest)

	h3, packR, err := Split(struct{ io.Reader }{bytes.NewReader(raw)})
	require.NoError(t, err)
	require.Equal(t, h, h3)
	rest, err = io.ReadAll(packR)
	require.NoError(t, err)
	require.Equal(t, raw[h.Len:], rest)
}

func TestBadHeaders(t *testing.T) {
	oid := strings.Repeat("ab", 20)
	long := strings.Repeat("x", MaxLineLen)
	cases := []struct {
		name, header, want string
	}{
		{"not a bundle", "PACK\x00\x00\x00\x02", "not a v2 or v3 git bundle"},
		{"v4", "# v4 git bundle\n" + oid + " refs/heads/x\n\n", "not a v2 or v3 git bundle"},
		{"capability in v2", "# v2 git bundle\n@object-format=sha1\n" + oid + " refs/heads/x\n\n", "capability \"@object-format=sha1\" in a v2 bundle"},
		{"sha256", "# v3 git bundle\n@object-format=sha256\n" + oid + " refs/heads/x\n\n", "object format \"sha256\" is not supported"},
		{"filter", "# v3 git bundle\n@filter=blob:none\n" + oid + " refs/heads/x\n\n", "filtered (partial) bundles are not supported"},
		{"unknown capability", "# v3 git bundle\n@frobnicate\n" + oid + " refs/heads/x\n\n", "unknown capability \"frobnicate\""},
		{"capability after ref", "# v3 git bundle\n" + oid + " refs/heads/x\n@object-format=sha1\n\n", "after prerequisites or references"},
		{"short oid", "# v2 git bundle\n" + oid[:39] + " refs/heads/x\n\n", "not a 40-digit lowercase hex object id"},
		{"uppercase oid", "# v2 git bundle\n" + strings.ToUpper(oid) + " refs/heads/x\n\n", "not a 40-digit lowercase hex object id"},
		{"sha256-length oid", "# v2 git bundle\n" + oid + oid[:24] + " refs/heads/x\n\n", "not a 40-digit lowercase hex object id"},
		{"bad prerequisite", "# v2 git bundle\n-" + oid[:10] + " subject\n" + oid + " refs/heads/x\n\n", "prerequisite"},
		{"prerequisite after ref", "# v2 git bundle\n" + oid + " refs/heads/x\n-" + oid + " s\n\n", "prerequisite after references"},
		{"ref without name", "# v2 git bundle\n" + oid + "\n\n", "is not \"<object id> <refname>\""},
		{"bad ref name", "# v2 git bundle\n" + oid + " refs/heads/a..b\n\n", "not a valid reference name"},
		{"one-level ref", "# v2 git bundle\n" + oid + " master\n\n", "not a valid reference name"},
		{"ref with space", "# v2 git bundle\n" + oid + " refs/heads/a b\n\n", "not a valid reference name"},
		{"duplicate ref", "# v2 git bundle\n" + oid + " refs/heads/x\n" + oid + " refs/heads/x\n\n", "listed twice"},
		{"no refs", "# v2 git bundle\n-" + oid + " s\n\n", "lists no references"},
		{"carriage return", "# v2 git bundle\r\n" + oid + " refs/heads/x\n\n", "not a v2 or v3 git bundle"},
		{"cr in ref line", "# v2 git bundle\n" + oid + " refs/heads/x\r\n\n", "carriage return"},
		{"truncated", "# v2 git bundle\n" + oid + " refs/heads/x\n", "header ends before its blank line"},
		{"empty", "", "not a v2 or v3 git bundle"},
		{"long line", "# v2 git bundle\n" + oid + " refs/heads/" + long + "\n\n", "longer than"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := ReadHeader(strings.NewReader(c.header + "PACK"))
			require.Error(t, err)
			require.True(t, errors.Is(err, ErrInvalid), "%v", err)
			require.Contains(t, err.Error(), c.want)
		})
	}
}

func TestTooManyEntries(t *testing.T) {
	var b strings.Builder
	b.WriteString("# v2 git bundle\n")
	oid := strings.Repeat("0", hexLen)
	for i := 0; i <= MaxEntries; i++ {
		fmt.Fprintf(&b, "-%s\n", oid)
	}
	b.WriteString("\n")
	_, err := ReadHeader(bufio.NewReader(strings.NewReader(b.String())))
	require.ErrorIs(t, err, ErrInvalid)
	require.Contains(t, err.Error(), "more than")
}

func TestOpenPackRejectsMissingPack(t *testing.T) {
	oid := strings.Repeat("ab", 20)
	dir := t.TempDir()
	for name, content := range map[string]string{
		"nopack":   "# v2 git bundle\n" + oid + " refs/heads/x\n\n",
		"garbage":  "# v2 git bundle\n" + oid + " refs/heads/x\n\nNOTAPACKATALL",
		"short":    "# v2 git bundle\n" + oid + " refs/heads/x\n\nPACK\x00\x00\x00\x02\x00\x00\x00\x00",
		"version9": "# v2 git bundle\n" + oid + " refs/heads/x\n\nPACK\x00\x00\x00\x09\x00\x00\x00\x00" + strings.Repeat("\x00", 20),
	} {
		path := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(path, []byte(content), 0o600))
		_, _, err := OpenPack(path)
		require.ErrorIs(t, err, ErrInvalid, name)
	}
	_, _, err := OpenPack(filepath.Join(dir, "absent"))
	require.ErrorIs(t, err, os.ErrNotExist)
}

func TestEmptyPack(t *testing.T) {
	p := EmptyPack()
	require.Len(t, p, 32)
	sum := sha1.Sum(p[:12])
	require.Equal(t, sum[:], p[12:])
	p[0] = 'X' // callers get their own copy
	require.Equal(t, byte('P'), EmptyPack()[0])

	dst := gittest.Repo(t, t.TempDir())
	gittest.Run(t, dst, "init", "-q", "--bare")
	_, err := dst.RunInput(t.Context(), bytes.NewReader(EmptyPack()), "index-pack", "--stdin", "--strict")
	require.NoError(t, err)
}

// A header AppendV2 writes reads back as it was written, and the pack
// header after it tells its object count.
func TestAppendV2ReadsBack(t *testing.T) {
	a, b := strings.Repeat("a", 40), strings.Repeat("b", 40)
	refs := []Ref{{OID: b, Name: "refs/heads/topic"}, {OID: b, Name: "refs/tags/v1"}}
	raw := append(AppendV2(nil, []string{a}, refs), EmptyPack()...)
	h, rest, err := Split(bytes.NewReader(raw))
	require.NoError(t, err)
	require.Equal(t, 2, h.Version)
	require.Equal(t, []Prereq{{OID: a}}, h.Prereqs)
	require.Equal(t, refs, h.Refs)
	pack, err := io.ReadAll(rest)
	require.NoError(t, err)
	require.Equal(t, EmptyPack(), pack)
	n, err := PackObjects(pack)
	require.NoError(t, err)
	require.Zero(t, n)
	_, err = PackObjects([]byte("# v2 git bundle\n"))
	require.ErrorIs(t, err, ErrInvalid)
}
