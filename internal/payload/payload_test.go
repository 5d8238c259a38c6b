package payload

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/git-relay/git-relay/internal/keyring"
	"github.com/git-relay/git-relay/internal/seal"
	"github.com/git-relay/git-relay/internal/seal/sealtest"
	"github.com/git-relay/git-relay/internal/wire"
)

// splitAndSeal cuts content into sealed chunks as the helper does while
// git writes a bundle.
func splitAndSeal(t *testing.T, content []byte, st *seal.Stream, chunkSize int) ([][]byte, *wire.Totals) {
	free := make(chan []byte, 1)
	free <- make([]byte, 0, chunkSize+seal.Overhead)
	var chunks [][]byte
	var finals []bool
	tot, err := Split(bytes.NewReader(content), chunkSize, free, nil, func(i uint32, final bool, c []byte) error {
		require.EqualValues(t, len(chunks), i)
		chunks = append(chunks, st.Seal(nil, i, final, c))
		finals = append(finals, final)
		free <- c
		return nil
	})
	require.NoError(t, err)
	require.EqualValues(t, len(chunks), tot.Chunks)
	for i, f := range finals {
		require.Equal(t, i == len(finals)-1, f, "only the last chunk is final")
	}
	return chunks, tot
}

func TestSplitCompressesOnlyWhenItPays(t *testing.T) {
	key := keyring.FromSecret("01020304", bytes.Repeat([]byte{1}, 32))
	random := make([]byte, 300_000)
	_, _ = rand.Read(random)
	exact := make([]byte, 3*(64<<10))
	_, _ = rand.Read(exact)
	for _, tc := range []struct {
		name    string
		content []byte
		want    string
	}{
		{"text compresses", bytes.Repeat([]byte("a line of source code\n"), 200_000), wire.CompressZstd},
		{"random does not", random, wire.CompressNone},
		{"a whole number of chunks", exact, wire.CompressNone},
		{"empty", nil, wire.CompressNone},
	} {
		t.Run(tc.name, func(t *testing.T) {
			chunkSize := 64 << 10
			st, err := seal.New(key, keyring.LabelPushPayload, []byte("salt"), [32]byte{9})
			require.NoError(t, err)
			chunks, tot := splitAndSeal(t, tc.content, st, chunkSize)
			require.Equal(t, tc.want, tot.Compression)
			require.EqualValues(t, len(tc.content), tot.BundleSize)
			require.Equal(t, seal.Chunks(tot.PayloadSize, chunkSize), tot.Chunks)
			var out bytes.Buffer
			get := func(i uint32) ([]byte, error) { return chunks[i], nil }
			require.NoError(t, Assemble(st, get, tot.Chunks, tot.Compression, tot.BundleSize, tot.BundleHash, &out))
			require.Equal(t, len(tc.content), out.Len())
			require.True(t, bytes.Equal(tc.content, out.Bytes()))

			// Finish gives the same bundle from the opened chunks written
			// to a file, as the server and the helper keep them.
			dir := t.TempDir()
			var opened []byte
			for i, c := range chunks {
				opened, err = st.Open(opened, uint32(i), uint32(i) == tot.Chunks-1, c)
				require.NoError(t, err)
			}
			require.NoError(t, os.WriteFile(dir+"/payload", opened, 0o600))
			got, err := Finish(dir+"/payload", tot.Compression, tot.PayloadSize, tot.BundleSize, tot.BundleHash, dir+"/bundle")
			require.NoError(t, err)
			b, err := os.ReadFile(got)
			require.NoError(t, err)
			require.True(t, bytes.Equal(tc.content, b))
			_, err = Finish(dir+"/payload", tot.Compression, tot.PayloadSize, tot.BundleSize, strings.Repeat("0", 64), dir+"/bundle")
			require.ErrorContains(t, err, "hash")

			// A wrong size or hash is caught.
			out.Reset()
			require.Error(t, Assemble(st, get, tot.Chunks, tot.Compression, tot.BundleSize-1, tot.BundleHash, &out))
			out.Reset()
			require.ErrorContains(t, Assemble(st, get, tot.Chunks, tot.Compression, tot.BundleSize, "00", &out), "hash")
			if tot.Chunks > 1 {
				// Cut short, the payload's last chunk is not a final one.
				out.Reset()
				require.ErrorIs(t, Assemble(st, get, tot.Chunks-1, tot.Compression, tot.BundleSize, tot.BundleHash, &out), seal.ErrAuth)
			}
		})
	}
}

// TestVectors runs the shared known-answer vectors through Assemble, the
// code both the server (push) and the helper (fetch) open payloads with.
func TestVectors(t *testing.T) {
	for _, v := range sealtest.Load(t) {
		t.Run(v.Name, func(t *testing.T) {
			st, err := seal.New(v.Key(), v.Label, v.SaltBytes(), v.ManifestHash())
			require.NoError(t, err)
			chunks := v.ChunkBytes()
			get := func(i uint32) ([]byte, error) {
				if int(i) >= len(chunks) {
					return nil, os.ErrNotExist
				}
				return chunks[i], nil
			}
			var out bytes.Buffer
			size := int64(len(v.Plaintext) / 2)
			if v.Error != "" {
				size = 57 // the good payload's size; irrelevant when a chunk fails
			}
			err = Assemble(st, get, v.Count, wire.CompressNone, size, hashOfHex(v.Plaintext), &out)
			if v.Error == "" {
				require.NoError(t, err)
				return
			}
			require.Error(t, err)
		})
	}
}

func hashOfHex(h string) string {
	b, _ := hex.DecodeString(h)
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}
