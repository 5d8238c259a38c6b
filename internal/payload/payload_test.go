package payload

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/git-relay/git-relay/internal/keyring"
	"github.com/git-relay/git-relay/internal/seal"
	"github.com/git-relay/git-relay/internal/seal/sealtest"
	"github.com/git-relay/git-relay/internal/wire"
)

func sealFile(t *testing.T, p *Payload, st *seal.Stream, chunkSize int) [][]byte {
	f, err := os.Open(p.Path)
	require.NoError(t, err)
	defer f.Close()
	var chunks [][]byte
	require.NoError(t, st.SealAll(f, chunkSize, func(i uint32, c []byte) error {
		chunks = append(chunks, append([]byte(nil), c...))
		return nil
	}))
	return chunks
}

func TestRoundTripCompressesOnlyWhenItPays(t *testing.T) {
	dir := t.TempDir()
	key := keyring.FromSecret("01020304", bytes.Repeat([]byte{1}, 32))
	random := make([]byte, 300_000)
	_, _ = rand.Read(random)
	for _, tc := range []struct {
		name    string
		content []byte
		want    string
	}{
		{"text compresses", bytes.Repeat([]byte("a line of source code\n"), 20_000), wire.CompressZstd},
		{"random does not", random, wire.CompressNone},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := Spool(bytes.NewReader(tc.content), filepath.Join(dir, tc.name+".bundle"), dir)
			require.NoError(t, err)
			defer p.Close()
			require.Equal(t, tc.want, p.Compression)
			require.EqualValues(t, len(tc.content), p.BundleSize)
			chunkSize := 64 << 10
			st, err := seal.New(key, keyring.LabelPushPayload, []byte("salt"), [32]byte{9}, seal.Chunks(p.PayloadSize, chunkSize))
			require.NoError(t, err)
			chunks := sealFile(t, p, st, chunkSize)
			var out bytes.Buffer
			get := func(i uint32) ([]byte, error) { return chunks[i], nil }
			require.NoError(t, Assemble(st, get, p.Compression, p.BundleSize, p.BundleHash, &out))
			require.Equal(t, tc.content, out.Bytes())

			// A wrong size or hash in the manifest is caught.
			out.Reset()
			require.Error(t, Assemble(st, get, p.Compression, p.BundleSize-1, p.BundleHash, &out))
			out.Reset()
			require.ErrorContains(t, Assemble(st, get, p.Compression, p.BundleSize, "00", &out), "hash")
		})
	}
}

// TestVectors runs the shared known-answer vectors through Assemble, the
// code both the server (push) and the helper (fetch) open payloads with.
func TestVectors(t *testing.T) {
	for _, v := range sealtest.Load(t) {
		t.Run(v.Name, func(t *testing.T) {
			st, err := seal.New(v.Key(), v.Label, v.SaltBytes(), v.ManifestHash(), v.Count)
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
			err = Assemble(st, get, wire.CompressNone, size, hashOfHex(v.Plaintext), &out)
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
