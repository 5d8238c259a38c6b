package gitx_test

import (
	"bytes"
	"crypto/rand"
	"io"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/git-relay/git-relay/internal/gitx"
)

// TestInputPipeIsASocket: on Linux a child's input is a Unix socket, one
// way, that carries what is written whole to a reader that takes 4 KiB at
// a time (as index-pack does), and ends when our end closes.
func TestInputPipeIsASocket(t *testing.T) {
	child, ours, err := gitx.InputPipe()
	require.NoError(t, err)
	defer child.Close()
	var st unix.Stat_t
	require.NoError(t, unix.Fstat(int(child.Fd()), &st))
	require.Equal(t, uint32(unix.S_IFSOCK), st.Mode&unix.S_IFMT, "the child's end is a socket")
	_, err = child.Write([]byte("x"))
	require.Error(t, err, "the child's end only reads")

	data := make([]byte, 5<<20+3)
	_, _ = rand.Read(data)
	go func() {
		_, _ = ours.Write(data)
		ours.Close()
	}()
	var got bytes.Buffer
	buf := make([]byte, 4096)
	for {
		n, err := child.Read(buf)
		got.Write(buf[:n])
		if err == io.EOF {
			break
		}
		require.NoError(t, err)
	}
	require.True(t, bytes.Equal(data, got.Bytes()), "the bytes came through whole")
}
