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

// TestLookupStartedAhead: a lookup started before it knows its names
// answers for them as Exists does (an id or a ref it has, nothing for
// what it lacks), also for many names; one never used ends on Close.
func TestLookupStartedAhead(t *testing.T) {
	gittest.Setenv(t)
	dir := t.TempDir()
	gittest.Git(t, dir, "init", "-q", "-b", "main")
	gittest.Git(t, dir, "commit", "-q", "--allow-empty", "-m", "one")
	tip := gittest.Git(t, dir, "rev-parse", "HEAD")
	repo := gitx.Repo{Dir: dir}

	l, err := repo.StartLookup(t.Context())
	require.NoError(t, err)
	missing := strings.Repeat("ab", 20)
	names := []string{tip, "refs/heads/main", missing, "no-such-ref"}
	for i := range 20000 { // more than a pipe holds, either way
		names = append(names, fmt.Sprintf("%040x", i+1))
	}
	got, err := l.Exists(names)
	require.NoError(t, err)
	require.Equal(t, tip, got[tip])
	require.Equal(t, tip, got["refs/heads/main"])
	require.Empty(t, got[missing])
	require.Empty(t, got["no-such-ref"])
	require.Len(t, got, len(names))
	l.Close() // used: nothing more to end

	_, err = l.Exists(names[:1])
	require.Error(t, err, "one lookup, one Exists")

	unused, err := repo.StartLookup(t.Context())
	require.NoError(t, err)
	unused.Close()

	same, err := repo.Exists(t.Context(), names[:3])
	require.NoError(t, err)
	require.Equal(t, map[string]string{tip: tip, "refs/heads/main": tip, missing: ""}, same)
}
