package seal_test

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/git-relay/git-relay/internal/keyring"
	"github.com/git-relay/git-relay/internal/seal"
	"github.com/git-relay/git-relay/internal/seal/sealtest"
)

var update = flag.Bool("update", false, "rewrite testdata/vectors.json")

func TestRoundTrip(t *testing.T) {
	key := keyring.FromSecret("01020304", bytes.Repeat([]byte{7}, 32))
	mh := [32]byte{1, 2, 3}
	payload := bytes.Repeat([]byte("git-relay "), 1000) // 10,000 bytes
	st, err := seal.New(key, keyring.LabelUpload, []byte("salt"), mh)
	require.NoError(t, err)
	count := seal.Chunks(int64(len(payload)), 4096)
	require.EqualValues(t, 3, count)
	var chunks [][]byte
	for i := range count {
		part := payload[i*4096 : min(len(payload), int(i+1)*4096)]
		chunks = append(chunks, st.Seal(nil, i, i == count-1, part))
	}
	var got []byte
	for i, c := range chunks {
		got, err = st.Open(got, uint32(i), uint32(i) == count-1, c)
		require.NoError(t, err)
	}
	require.Equal(t, payload, got)

	// Sealing in place gives the same bytes.
	buf := append(make([]byte, 0, 4096+seal.Overhead), payload[:4096]...)
	require.Equal(t, chunks[0], st.Seal(buf[:0], 0, false, buf))

	// The fetch direction derives another key: a push chunk does not open
	// as a fetch chunk.
	other, err := seal.New(key, keyring.LabelDownload, []byte("salt"), mh)
	require.NoError(t, err)
	_, err = other.Open(nil, 0, false, chunks[0])
	require.ErrorIs(t, err, seal.ErrAuth)
}

func TestEmptyPayloadHasOneFinalChunk(t *testing.T) {
	require.EqualValues(t, 1, seal.Chunks(0, 100))
	key := keyring.FromSecret("01020304", bytes.Repeat([]byte{9}, 32))
	st, err := seal.New(key, keyring.LabelUpload, nil, [32]byte{})
	require.NoError(t, err)
	c := st.Seal(nil, 0, true, nil)
	require.Len(t, c, seal.Overhead)
	_, err = st.Open(nil, 0, true, c)
	require.NoError(t, err)
}

// TestVectors checks the known-answer vectors that the server and the
// helper tests check too. Run with -update to regenerate them.
func TestVectors(t *testing.T) {
	if *update {
		writeVectors(t)
	}
	for _, v := range sealtest.Load(t) {
		t.Run(v.Name, func(t *testing.T) {
			st, err := seal.New(v.Key(), v.Label, v.SaltBytes(), v.ManifestHash())
			require.NoError(t, err)
			got, err := openAll(st, v.ChunkBytes(), v.Count)
			if v.Error == "" {
				require.NoError(t, err)
				require.Equal(t, v.Plaintext, hex.EncodeToString(got))
				return
			}
			require.ErrorContains(t, err, v.Error)
			require.Regexp(t, fmt.Sprintf(`\bchunk %d\b`, v.BadChunk), err.Error())
		})
	}
}

// openAll opens the chunks as a receiver does that was told the payload
// has count chunks: the last one must open as the final one, and a chunk
// missing or beyond it is an error naming it.
func openAll(st *seal.Stream, chunks [][]byte, count uint32) ([]byte, error) {
	var out []byte
	var err error
	for i, c := range chunks {
		if uint32(i) >= count {
			return nil, fmt.Errorf("chunk %d after the final chunk: %w", i, seal.ErrAuth)
		}
		if out, err = st.Open(out, uint32(i), uint32(i) == count-1, c); err != nil {
			return nil, err
		}
	}
	if n := uint32(len(chunks)); n < count {
		return nil, fmt.Errorf("chunk %d of %d: %w (missing)", n, count, seal.ErrAuth)
	}
	return out, nil
}

// rawSeal seals with an arbitrary final flag, to build the malformed
// streams that the API refuses to produce.
func rawSeal(t *testing.T, payloadKey []byte, mh [32]byte, index uint32, final bool, pt []byte) []byte {
	block, err := aes.NewCipher(payloadKey)
	require.NoError(t, err)
	aead, err := cipher.NewGCM(block)
	require.NoError(t, err)
	nonce := make([]byte, 12)
	binary.BigEndian.PutUint64(nonce[3:11], uint64(index))
	count := uint32(0)
	if final {
		nonce[11] = 1
		count = index + 1
	}
	aad := append([]byte("GR3-CHUNK"), mh[:]...)
	aad = binary.BigEndian.AppendUint32(aad, index)
	aad = binary.BigEndian.AppendUint32(aad, count)
	return aead.Seal(nil, nonce, pt, aad)
}

func writeVectors(t *testing.T) {
	secret := bytes.Repeat([]byte{0x42}, 32)
	key := keyring.FromSecret("a1b2c3d4", secret)
	salt := bytes.Repeat([]byte{0x5a}, 32)
	manifest := `{"v":3,"id":"0123456789abcdef0123456789abcdef","kind":"push","repo":"acme/widgets"}`
	other := `{"v":3,"id":"fedcba9876543210fedcba9876543210","kind":"push","repo":"acme/widgets"}`
	mh := sha(manifest)
	pk := key.Derive(keyring.LabelUpload, salt, mh[:])
	pt := [][]byte{[]byte("first chunk of the bundle "), []byte("second chunk of the bundle "), []byte("last")}
	good := [][]byte{
		rawSeal(t, pk, mh, 0, false, pt[0]),
		rawSeal(t, pk, mh, 1, false, pt[1]),
		rawSeal(t, pk, mh, 2, true, pt[2]),
	}
	flipped := append([]byte(nil), good[1]...)
	flipped[3] ^= 1
	omh := sha(other)
	opk := key.Derive(keyring.LabelUpload, salt, omh[:])
	mk := func(name string, chunks [][]byte, errMsg string, bad int) sealtest.Vector {
		v := sealtest.Vector{Name: name, KeyID: key.ID, Secret: hex.EncodeToString(secret), Label: keyring.LabelUpload,
			Salt: hex.EncodeToString(salt), Manifest: manifest, Count: 3, Error: errMsg, BadChunk: bad}
		for _, c := range chunks {
			v.Chunks = append(v.Chunks, hex.EncodeToString(c))
		}
		if errMsg == "" {
			v.Plaintext = hex.EncodeToString(bytes.Join(pt, nil))
		}
		return v
	}
	vs := []sealtest.Vector{
		mk("good", good, "", 0),
		mk("bad tag", [][]byte{good[0], flipped, good[2]}, "failed authentication", 1),
		mk("no final", [][]byte{good[0], good[1], rawSeal(t, pk, mh, 2, false, pt[2])}, "failed authentication", 2),
		mk("two finals", [][]byte{rawSeal(t, pk, mh, 0, true, pt[0]), good[1], good[2]}, "failed authentication", 0),
		mk("reordered", [][]byte{good[1], good[0], good[2]}, "failed authentication", 0),
		mk("wrong session", [][]byte{good[0], rawSeal(t, opk, omh, 1, false, pt[1]), good[2]}, "failed authentication", 1),
		mk("trailing bytes", [][]byte{good[0], good[1], append(append([]byte(nil), good[2]...), 0)}, "failed authentication", 2),
		mk("missing chunk", [][]byte{good[0], good[2]}, "failed authentication", 1),
		mk("extra chunk", [][]byte{good[0], good[1], good[2], good[2]}, "failed authentication", 3),
		mk("truncated", [][]byte{good[0], good[1]}, "failed authentication", 1),
	}
	// A receiver led to believe the payload ends at chunk 1 opens chunk 1
	// as the final one, and it does not open.
	vs[len(vs)-1].Count = 2
	b, err := json.MarshalIndent(vs, "", "  ")
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(sealtest.Path(), append(b, '\n'), 0o644))
}

func sha(s string) [32]byte {
	v := sealtest.Vector{Manifest: s}
	return v.ManifestHash()
}
