package keyring

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestGenerateParseRoundTrip(t *testing.T) {
	k, err := Generate()
	require.NoError(t, err)
	s := k.String()
	require.True(t, strings.HasPrefix(s, "grk1."))
	back, err := Parse(s + "\n")
	require.NoError(t, err)
	require.Equal(t, k.ID, back.ID)
	require.Equal(t, k.Derive(LabelRequestMAC, nil, nil), back.Derive(LabelRequestMAC, nil, nil))
	// Labels separate the derived keys.
	require.NotEqual(t, k.Derive(LabelRequestMAC, nil, nil), k.Derive(LabelResponseMAC, nil, nil))
	require.NotEqual(t, k.Derive(LabelUpload, []byte("s"), []byte("m1")), k.Derive(LabelUpload, []byte("s"), []byte("m2")))
}

func TestParseRefusesGarbage(t *testing.T) {
	for _, bad := range []string{"", "hello", "grk1.zz.abc", "grk2.01020304.AAAA", "grk1.01020304.too-short"} {
		_, err := Parse(bad)
		require.Error(t, err, bad)
	}
}

func TestReadFile(t *testing.T) {
	a, _ := Generate()
	b, _ := Generate()
	dir := t.TempDir()
	path := filepath.Join(dir, "relay.key")
	require.NoError(t, os.WriteFile(path, []byte("# rotation: new key first\n"+a.String()+"\n\n"+b.String()+"\n"), 0o600))
	r, err := ReadFile(path)
	require.NoError(t, err)
	require.Equal(t, 2, r.Len())
	require.Equal(t, a.ID, r.Primary().ID)
	_, ok := r.Lookup(b.ID)
	require.True(t, ok)

	empty := filepath.Join(dir, "empty.key")
	require.NoError(t, os.WriteFile(empty, []byte("# nothing\n"), 0o600))
	_, err = ReadFile(empty)
	require.ErrorContains(t, err, "keygen")

	bad := filepath.Join(dir, "bad.key")
	require.NoError(t, os.WriteFile(bad, []byte("not a key\n"), 0o600))
	_, err = ReadFile(bad)
	require.ErrorContains(t, err, "line 1")
}
