package gitx_test

import (
	"bytes"
	"crypto/rand"
	"crypto/sha1"
	"encoding/hex"
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/git-relay/git-relay/internal/gittest"
	"github.com/git-relay/git-relay/internal/gitx"
)

// TestCmdCopiesStdinWhole: a Stdin larger than a pipe holds reaches git
// whole (git hash-object gives the id of what it read).
func TestCmdCopiesStdinWhole(t *testing.T) {
	gittest.Setenv(t)
	data := make([]byte, 3<<20+17)
	_, _ = rand.Read(data)
	sum := sha1.Sum(append([]byte(fmt.Sprintf("blob %d\x00", len(data))), data...))
	out, err := gitx.Repo{}.RunInput(t.Context(), bytes.NewReader(data), "hash-object", "--stdin")
	require.NoError(t, err)
	require.Equal(t, hex.EncodeToString(sum[:]), out)
}

// TestCmdThatStopsReading: git exiting without reading all its input
// ends the command, with git's own error, and a second Wait returns too.
func TestCmdThatStopsReading(t *testing.T) {
	gittest.Setenv(t)
	c := gitx.Repo{}.Command(t.Context(), "no-such-command-x")
	c.Stdin = io.MultiReader(strings.NewReader(strings.Repeat("x", 4<<20)), bytes.NewReader(nil))
	out, err := c.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, c.Start())
	_, _ = io.Copy(io.Discard, out)
	err = c.Wait()
	var gerr *gitx.Error
	require.ErrorAs(t, err, &gerr)
	require.Error(t, c.Wait(), "a second Wait")
}

// TestCmdStdinPipe: what is written to StdinPipe reaches git, and
// StdoutPipe brings its answer.
func TestCmdStdinPipe(t *testing.T) {
	gittest.Setenv(t)
	c := gitx.Repo{}.Command(t.Context(), "hash-object", "--stdin")
	in, err := c.StdinPipe()
	require.NoError(t, err)
	out, err := c.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, c.Start())
	_, err = in.Write([]byte("hello\n"))
	require.NoError(t, err)
	require.NoError(t, in.Close())
	b, err := io.ReadAll(out)
	require.NoError(t, err)
	require.NoError(t, c.Wait())
	require.Equal(t, "ce013625030ba8dba906f756967f9e9ca394464a\n", string(b))
}
