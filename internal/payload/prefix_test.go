package payload

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"testing"

	"github.com/stretchr/testify/require"
)

// sparseFile is a file being written at offsets.
type sparseFile struct{ b []byte }

func (f *sparseFile) ReadAt(p []byte, off int64) (int, error) { return copy(p, f.b[off:]), nil }

func TestPrefixHashesChunksThatLandOutOfOrder(t *testing.T) {
	content := make([]byte, 10*1000+123)
	_, _ = rand.Read(content)
	sum := sha256.Sum256(content)
	want := hex.EncodeToString(sum[:])
	chunk := func(i int) []byte { return content[i*1000 : min(len(content), (i+1)*1000)] }
	for _, order := range [][]int{
		{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10},
		{2, 1, 0, 5, 4, 3, 8, 7, 6, 10, 9},
		{10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0},
		{0, 0, 3, 1, 3, 2, 4, 5, 6, 7, 8, 9, 10}, // repeats, as retries do
	} {
		f := &sparseFile{b: make([]byte, len(content))}
		p := NewPrefix(f, 1000)
		for n, i := range order {
			copy(f.b[i*1000:], chunk(i))
			p.Add(uint32(i), chunk(i))
			if n < len(order)-1 {
				require.False(t, p.Matches(11, int64(len(content)), want), "not all there yet after %v", order[:n+1])
			}
		}
		require.True(t, p.Matches(11, int64(len(content)), want), "order %v", order)
		require.False(t, p.Matches(11, int64(len(content)), hex.EncodeToString(bytes.Repeat([]byte{0}, 32))))
		require.False(t, p.Matches(12, int64(len(content)), want))
	}
}

func TestSpoiledPrefixNeverMatches(t *testing.T) {
	f := &sparseFile{b: []byte("abc")}
	p := NewPrefix(f, 3)
	p.Add(0, f.b)
	sum := sha256.Sum256(f.b)
	require.True(t, p.Matches(1, 3, hex.EncodeToString(sum[:])))
	p.Spoil()
	require.False(t, p.Matches(1, 3, hex.EncodeToString(sum[:])))
}
