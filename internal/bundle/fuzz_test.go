package bundle

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/git-relay/git-relay/internal/fuzztest"
	"github.com/git-relay/git-relay/internal/gittest"
	"github.com/git-relay/git-relay/internal/gitx"
)

// realBundles returns bundles that git writes: full and thin, v2 and v3,
// with branches, an annotated tag and HEAD.
func realBundles(t testing.TB) [][]byte {
	r := newRepo(t, 4)
	var out [][]byte
	for i, args := range [][]string{
		{"master", "side", "v1"},
		{"master", "^master~2"},
		{"--version=3", "master", "^master~1"},
		{"--version=3", "--all"},
		{"HEAD", "side", "^side~1"},
	} {
		path := filepath.Join(t.TempDir(), fmt.Sprintf("b%d.bundle", i))
		opts := []string{"bundle", "create", "-q"}
		if args[0] == "--version=3" {
			opts, args = append(opts, args[0]), args[1:]
		}
		gittest.Run(t, r, append(append(opts, path), args...)...)
		b, err := os.ReadFile(path)
		require.NoError(t, err)
		out = append(out, b)
	}
	return out
}

// encode writes h back as header text.
func encode(h *Header) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "# v%d git bundle\n", h.Version)
	for k, v := range h.Capabilities {
		fmt.Fprintf(&b, "@%s=%s\n", k, v)
	}
	for _, p := range h.Prereqs {
		fmt.Fprintf(&b, "-%s %s\n", p.OID, p.Comment)
	}
	for _, r := range h.Refs {
		fmt.Fprintf(&b, "%s %s\n", r.OID, r.Name)
	}
	b.WriteByte('\n')
	return b.Bytes()
}

// oneByte reads one byte per call and is no io.ByteReader, so ReadHeader
// takes its byte-at-a-time path.
type oneByte struct{ r *bytes.Reader }

func (o *oneByte) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	return o.r.Read(p[:1])
}

// FuzzReadHeader: on any bytes, ReadHeader (through a ByteReader or not)
// and Split agree; a header they accept is git's format within our
// bounds (valid ids and names, no duplicate, sections in order), reads
// back the same once written out again, and is exactly the first Len
// bytes: what follows it, the pack, is handed over untouched. Memory
// grows with the input, never with what it claims.
func FuzzReadHeader(f *testing.F) {
	for _, b := range realBundles(f) {
		f.Add(b)
	}
	oid := strings.Repeat("0123456789", 4)
	for _, s := range []string{
		"# v2 git bundle\n" + oid + " refs/heads/master\n\nPACK",
		"# v3 git bundle\n@object-format=sha1\n-" + oid + "\n-" + oid + " subject line\n" + oid + " HEAD\n\n",
		"# v3 git bundle\n@filter=blob:none\n" + oid + " refs/heads/x\n\n",
		"# v2 git bundle\n" + oid + " refs/heads/x\n" + oid + " refs/heads/x\n\n",
		"# v2 git bundle\n" + oid + " refs/heads/x\n-" + oid + "\n\n",
		"# v2 git bundle\r\n",
		"# v2 git bundle\n" + strings.Repeat("a", MaxLineLen+1) + "\n\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		defer fuzztest.Watchdog(t, 30*time.Second)()
		var h1 *Header
		var err1 error
		fuzztest.Bounded(t, len(data), 1<<20, 64, func() {
			h1, err1 = ReadHeader(bytes.NewReader(data))
		})
		slow := &oneByte{bytes.NewReader(data)}
		h2, err2 := ReadHeader(slow)
		h3, pack, err3 := Split(bytes.NewReader(data))
		require.Equal(t, err1 == nil, err2 == nil)
		require.Equal(t, err1 == nil, err3 == nil)
		if err1 != nil {
			require.ErrorIs(t, err1, ErrInvalid)
			return
		}
		require.Equal(t, h1, h2)
		require.Equal(t, h1, h3)
		h := h1

		require.Contains(t, []int{2, 3}, h.Version)
		require.NotEmpty(t, h.Refs)
		require.LessOrEqual(t, len(h.Refs)+len(h.Prereqs), MaxEntries)
		require.LessOrEqual(t, h.Len, int64(len(data)))
		require.True(t, bytes.HasSuffix(data[:h.Len], []byte("\n\n")))
		if h.Version == 2 {
			require.Empty(t, h.Capabilities)
		}
		for k, v := range h.Capabilities {
			require.Equal(t, "object-format", k)
			require.Equal(t, "sha1", v)
		}
		for _, p := range h.Prereqs {
			require.True(t, gitx.ValidOID(p.OID), p.OID)
			require.NotContains(t, p.Comment, "\n")
		}
		seen := map[string]bool{}
		for _, r := range h.Refs {
			require.True(t, gitx.ValidOID(r.OID), r.OID)
			require.True(t, r.Name == "HEAD" || gitx.ValidRefName(r.Name), "%q", r.Name)
			require.False(t, seen[r.Name], "%q twice", r.Name)
			seen[r.Name] = true
		}

		again := encode(h)
		h4, err := ReadHeader(bytes.NewReader(again))
		require.NoError(t, err)
		h4.Len = h.Len
		require.Equal(t, h, h4)

		// What follows the header is the pack, byte for byte.
		rest, err := io.ReadAll(slow.r)
		require.NoError(t, err)
		require.Equal(t, data[h.Len:], rest, "ReadHeader consumed more than the header")
		got, err := io.ReadAll(pack)
		require.NoError(t, err)
		require.Equal(t, data[h.Len:], got)
	})
}

// FuzzValidRefName: the bundle's own reference name rule is gitx's (the
// server checks a push's names with gitx), plus HEAD, which git bundle
// writes when asked to.
func FuzzValidRefName(f *testing.F) {
	for _, s := range []string{"HEAD", "refs/heads/master", "refs/heads/-x", "refs/heads/@", "@", "a/b", "refs/heads/a.lock", "refs/heads/a..b", "refs/heads/é", "refs/heads/a\x7f"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		require.Equal(t, name == "HEAD" || gitx.ValidRefName(name), validRefName(name), "%q", name)
		// A name that passes keeps a header line whole.
		if validRefName(name) {
			require.NotContains(t, name, "\n")
			require.NotContains(t, name, "\x00")
		}
	})
}
