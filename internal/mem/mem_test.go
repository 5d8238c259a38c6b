package mem

import (
	"bytes"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestFresh(t *testing.T) {
	for _, n := range []int{0, 1, 4095, populateFrom - 1, populateFrom, 4<<20 + 12345} {
		b := Fresh(n)
		require.Equal(t, 0, len(b))
		require.Equal(t, n, cap(b))
		b = b[:n]
		require.Equal(t, n, bytes.Count(b, []byte{0}), "size %d: zeroed", n)
		for i := range b {
			b[i] = byte(i)
		}
	}
}
