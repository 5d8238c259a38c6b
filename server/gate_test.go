package server

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"testing"
	"testing/iotest"

	"github.com/stretchr/testify/require"
)

// newTestGate is a gate with no checks to run, over src.
func newTestGate(src io.Reader) *gate {
	done := make(chan error, 1)
	done <- nil
	return &gate{e: &exch{}, p: &pushPlan{}, src: src, later: true, idxDone: done}
}

func randomPack(size int) []byte {
	r := rand.New(rand.NewPCG(1, uint64(size)))
	b := make([]byte, size)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// TestGatePassesThePackWhole: whatever sizes the payload comes in, the
// gate passes every byte on, in order.
func TestGatePassesThePackWhole(t *testing.T) {
	for _, size := range []int{0, 1, holdBack - 1, holdBack, holdBack + 1, gateRead, gateRead + holdBack + 7, 3*gateRead + 12345} {
		pack := randomPack(size)
		for name, src := range map[string]io.Reader{
			"whole": bytes.NewReader(pack),
			"half":  iotest.HalfReader(bytes.NewReader(pack)),
			"byte":  iotest.OneByteReader(bytes.NewReader(pack)),
		} {
			got, err := io.ReadAll(newTestGate(src))
			require.NoError(t, err)
			require.True(t, bytes.Equal(pack, got), "size %d, %s reads: got %d bytes", size, name, len(got))
		}
	}
}

// TestGateHoldsBackTheEndOfAPayloadThatFails: a payload that fails
// (a chunk that does not authenticate, say) ends the stream with its
// error, and the pack's last holdBack bytes never go.
func TestGateHoldsBackTheEndOfAPayloadThatFails(t *testing.T) {
	bad := errors.New("chunk 7 does not authenticate")
	for _, size := range []int{holdBack, gateRead + 5, 2*gateRead + holdBack} {
		pack := randomPack(size)
		g := newTestGate(io.MultiReader(iotest.HalfReader(bytes.NewReader(pack)), iotest.ErrReader(bad)))
		got, err := io.ReadAll(g)
		require.ErrorIs(t, err, bad)
		require.LessOrEqual(t, len(got), size-holdBack, "size %d", size)
		require.True(t, bytes.Equal(pack[:len(got)], got))
	}
}
