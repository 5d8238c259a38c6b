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
	st, err := seal.New(key, keyring.LabelPushPayload, []byte("salt"), mh, seal.Chunks(int64(len(payload)), 4096))
	require.NoError(t, err)
	require.EqualValues(t, 3, st.Count())
	var chunks [][]byte
	require.NoError(t, st.SealAll(bytes.NewReader(payload), 4096, func(i uint32, c []byte) error {
		require.EqualValues(t, len(chunks), i)
		chunks = append(chunks, append([]byte(nil), c...))
		return nil
	}))
	var got []byte
	for i, c := range chunks {
		got, err = st.Open(got, uint32(i), c)
		require.NoError(t, err)
	}
	require.Equal(t, payload, got)

	// A payload longer than the declared count is refused while sealing.
	short, err := seal.New(key, keyring.LabelPushPayload, []byte("salt"), mh, 2)
	require.NoError(t, err)
	err = short.SealAll(bytes.NewReader(payload), 4096, func(uint32, []byte) error { return nil })
	require.ErrorContains(t, err, "longer than 2 chunks")

	// The fetch direction derives another key: a push chunk does not open
	// as a fetch chunk.
	other, err := seal.New(key, keyring.LabelFetchPayload, []byte("salt"), mh, 3)
	require.NoError(t, err)
	_, err = other.Open(nil, 0, chunks[0])
	require.ErrorIs(t, err, seal.ErrAuth)
}

func TestEmptyPayloadHasOneFinalChunk(t *testing.T) {
	require.EqualValues(t, 1, seal.Chunks(0, 100))
	key := keyring.FromSecret("01020304", bytes.Repeat([]byte{9}, 32))
	st, err := seal.New(key, keyring.LabelPushPayload, nil, [32]byte{}, 1)
	require.NoError(t, err)
	n := 0
	require.NoError(t, st.SealAll(bytes.NewReader(nil), 100, func(i uint32, c []byte) error {
		n++
		require.Len(t, c, seal.Overhead)
		return nil
	}))
	require.Equal(t, 1, n)
}

// TestVectors checks the known-answer vectors that the server and the
// helper tests check too. Run with -update to regenerate them.
func TestVectors(t *testing.T) {
	if *update {
		writeVectors(t)
	}
	for _, v := range sealtest.Load(t) {
		t.Run(v.Name, func(t *testing.T) {
			st, err := seal.New(v.Key(), v.Label, v.SaltBytes(), v.ManifestHash(), v.Count)
			require.NoError(t, err)
			got, err := openAll(st, v.ChunkBytes())
			if v.Error == "" {
				require.NoError(t, err)
				require.Equal(t, v.Plaintext, hex.EncodeToString(got))
				return
			}
			require.ErrorContains(t, err, v.Error)
			require.ErrorContains(t, err, fmt.Sprintf("chunk %d ", v.BadChunk))
		})
	}
}

func openAll(st *seal.Stream, chunks [][]byte) ([]byte, error) {
	var out []byte
	var err error
	for i, c := range chunks {
		if out, err = st.Open(out, uint32(i), c); err != nil {
			return nil, err
		}
	}
	if n := uint32(len(chunks)); n < st.Count() {
		return nil, fmt.Errorf("chunk %d of %d: %w (missing)", n, st.Count(), seal.ErrAuth)
	}
	return out, nil
}

// rawSeal seals with an arbitrary final flag and AAD, to build the
// malformed streams that the API refuses to produce.
func rawSeal(t *testing.T, payloadKey []byte, mh [32]byte, index, count uint32, final bool, pt []byte) []byte {
	block, err := aes.NewCipher(payloadKey)
	require.NoError(t, err)
	aead, err := cipher.NewGCM(block)
	require.NoError(t, err)
	nonce := make([]byte, 12)
	binary.BigEndian.PutUint64(nonce[3:11], uint64(index))
	if final {
		nonce[11] = 1
	}
	aad := append([]byte("GR1-CHUNK"), mh[:]...)
	aad = binary.BigEndian.AppendUint32(aad, index)
	aad = binary.BigEndian.AppendUint32(aad, count)
	return aead.Seal(nil, nonce, pt, aad)
}

func writeVectors(t *testing.T) {
	secret := bytes.Repeat([]byte{0x42}, 32)
	key := keyring.FromSecret("a1b2c3d4", secret)
	salt := bytes.Repeat([]byte{0x5a}, 32)
	manifest := `{"v":1,"repo":"acme/widgets","chunks":3}`
	other := `{"v":1,"repo":"acme/widgets","chunks":3,"nonce":"another push"}`
	mh := sha(manifest)
	pk := key.Derive(keyring.LabelPushPayload, salt, mh[:])
	pt := [][]byte{[]byte("first chunk of the bundle "), []byte("second chunk of the bundle "), []byte("last")}
	good := [][]byte{
		rawSeal(t, pk, mh, 0, 3, false, pt[0]),
		rawSeal(t, pk, mh, 1, 3, false, pt[1]),
		rawSeal(t, pk, mh, 2, 3, true, pt[2]),
	}
	flipped := append([]byte(nil), good[1]...)
	flipped[3] ^= 1
	omh := sha(other)
	opk := key.Derive(keyring.LabelPushPayload, salt, omh[:])
	mk := func(name string, chunks [][]byte, errMsg string, bad int) sealtest.Vector {
		v := sealtest.Vector{Name: name, KeyID: key.ID, Secret: hex.EncodeToString(secret), Label: keyring.LabelPushPayload,
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
		mk("no final", [][]byte{good[0], good[1], rawSeal(t, pk, mh, 2, 3, false, pt[2])}, "failed authentication", 2),
		mk("two finals", [][]byte{rawSeal(t, pk, mh, 0, 3, true, pt[0]), good[1], good[2]}, "failed authentication", 0),
		mk("reordered", [][]byte{good[1], good[0], good[2]}, "failed authentication", 0),
		mk("wrong session", [][]byte{good[0], rawSeal(t, opk, omh, 1, 3, false, pt[1]), good[2]}, "failed authentication", 1),
		mk("trailing bytes", [][]byte{good[0], good[1], append(append([]byte(nil), good[2]...), 0)}, "failed authentication", 2),
		mk("missing chunk", [][]byte{good[0], good[2]}, "failed authentication", 1),
		mk("extra chunk", [][]byte{good[0], good[1], good[2], good[2]}, "failed authentication", 3),
	}
	b, err := json.MarshalIndent(vs, "", "  ")
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(sealtest.Path(), append(b, '\n'), 0o644))
}

func sha(s string) [32]byte {
	v := sealtest.Vector{Manifest: s}
	return v.ManifestHash()
}
