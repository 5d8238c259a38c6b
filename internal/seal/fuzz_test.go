package seal_test

import (
	"bytes"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/git-relay/git-relay/internal/fuzztest"
	"github.com/git-relay/git-relay/internal/keyring"
	"github.com/git-relay/git-relay/internal/seal"
	"github.com/git-relay/git-relay/internal/seal/sealtest"
)

var (
	fuzzKey = keyring.FromSecret("0a0b0c0d", bytes.Repeat([]byte{0x5a}, 32))
	fuzzMH  = [32]byte{0xfa, 0xce}
)

func fuzzStream(t testing.TB) *seal.Stream {
	st, err := seal.New(fuzzKey, keyring.LabelUpload, []byte("fuzz salt"), fuzzMH)
	require.NoError(t, err)
	return st
}

// FuzzOpen: an arbitrary ciphertext, at any index, as final or not, opens
// only if it is exactly what the sender seals there (the nonce is the
// chunk's position, so sealing is deterministic): never a forgery. Every
// refusal is ErrAuth and names the chunk.
func FuzzOpen(f *testing.F) {
	st := fuzzStream(f)
	for i, p := range [][]byte{nil, []byte("x"), bytes.Repeat([]byte("git-relay "), 500)} {
		f.Add(st.Seal(nil, uint32(i), i == 2, p), uint32(i), i == 2)
	}
	// The known-answer vectors' chunks, which another key sealed.
	for _, v := range sealtest.Load(f) {
		for i, c := range v.ChunkBytes() {
			f.Add(c, uint32(i), uint32(i) == v.Count-1)
		}
	}
	f.Fuzz(func(t *testing.T, ct []byte, index uint32, final bool) {
		defer fuzztest.Watchdog(t, 30*time.Second)()
		plain, err := st.Open(nil, index, final, ct)
		if err != nil {
			require.ErrorIs(t, err, seal.ErrAuth)
			require.Nil(t, plain)
			require.Contains(t, err.Error(), "chunk ")
			return
		}
		require.Equal(t, ct, st.Seal(nil, index, final, plain), "opened a ciphertext the sender would not have sealed")
		require.Len(t, ct, len(plain)+seal.Overhead)
	})
}

// FuzzSealOpen: any plaintext sealed at any index opens to itself there,
// in place as well; it does not open at another index, with the other
// final flag, under another payload's manifest hash or key, or with any
// byte changed, cut or added.
func FuzzSealOpen(f *testing.F) {
	f.Add([]byte(nil), uint32(0), true, uint32(1), uint16(0), byte(1))
	f.Add([]byte("chunk"), uint32(7), false, uint32(8), uint16(3), byte(0))
	f.Add(bytes.Repeat([]byte{0}, 4096), uint32(1<<31), true, uint32(0), uint16(4100), byte(0xff))
	st := fuzzStream(f)
	other, err := seal.New(fuzzKey, keyring.LabelUpload, []byte("fuzz salt"), [32]byte{0xfa, 0xcf})
	require.NoError(f, err)
	down, err := seal.New(fuzzKey, keyring.LabelDownload, []byte("fuzz salt"), fuzzMH)
	require.NoError(f, err)
	f.Fuzz(func(t *testing.T, plain []byte, index uint32, final bool, otherIndex uint32, pos uint16, b byte) {
		defer fuzztest.Watchdog(t, 30*time.Second)()
		ct := st.Seal(nil, index, final, plain)
		require.Len(t, ct, len(plain)+seal.Overhead)
		got, err := st.Open(nil, index, final, ct)
		require.NoError(t, err)
		require.Equal(t, string(plain), string(got))

		// In place, as the server opens an upload chunk in its body buffer.
		buf := append([]byte(nil), ct...)
		got, err = st.Open(buf[:0], index, final, buf)
		require.NoError(t, err)
		require.Equal(t, string(plain), string(got))

		refused := func(what string, s *seal.Stream, index uint32, final bool, ct []byte) {
			t.Helper()
			_, err := s.Open(nil, index, final, ct)
			require.ErrorIs(t, err, seal.ErrAuth, what)
		}
		if otherIndex != index {
			refused("another index", st, otherIndex, final, ct)
		}
		refused("the other final flag", st, index, !final, ct)
		refused("another manifest hash", other, index, final, ct)
		refused("the other direction's key", down, index, final, ct)
		if i := int(pos) % len(ct); ct[i] != b {
			bad := append([]byte(nil), ct...)
			bad[i] = b
			refused("a changed byte", st, index, final, bad)
		}
		refused("cut short", st, index, final, ct[:len(ct)-1])
		refused("extended", st, index, final, append(append([]byte(nil), ct...), b))
	})
}
