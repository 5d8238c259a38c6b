package payload

import (
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestOrderedReadsChunksInOrderAsTheyLand(t *testing.T) {
	content := make([]byte, 5*1000+77)
	_, _ = rand.Read(content)
	for _, order := range [][]int{{0, 1, 2, 3, 4, 5}, {5, 3, 4, 1, 2, 0}, {1, 0, 0, 3, 2, 5, 4}} {
		f := &sparseFile{b: make([]byte, len(content))}
		o := NewOrdered(f, 1000)
		got := make(chan []byte)
		go func() {
			b, err := io.ReadAll(o)
			require.NoError(t, err)
			got <- b
		}()
		for _, i := range order {
			n := copy(f.b[i*1000:], content[i*1000:min(len(content), (i+1)*1000)])
			o.Add(uint32(i), n, i == 5)
		}
		require.True(t, bytes.Equal(content, <-got), "order %v", order)
	}
}

func TestOrderedAbortEndsTheReader(t *testing.T) {
	f := &sparseFile{b: make([]byte, 3000)}
	o := NewOrdered(f, 1000)
	o.Add(0, 1000, false)
	done := make(chan error)
	go func() {
		_, err := io.ReadAll(o)
		done <- err
	}()
	boom := errors.New("download failed")
	o.Abort(boom)
	require.ErrorIs(t, <-done, boom)
}

// sparseFile is a file being written at offsets.
type sparseFile struct{ b []byte }

func (f *sparseFile) ReadAt(p []byte, off int64) (int, error) { return copy(p, f.b[off:]), nil }
