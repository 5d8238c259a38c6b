package sidecar

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/git-relay/git-relay/internal/gittest"
	"github.com/git-relay/git-relay/internal/gitx"
	"github.com/git-relay/git-relay/internal/sshtest"
)

func runIn(t *testing.T, dir string, args ...string) (string, string, int) {
	t.Helper()
	var out, errb bytes.Buffer
	code := Run(t.Context(), dir, args, strings.NewReader(""), &out, &errb)
	return out.String(), errb.String(), code
}

// TestInProcessSSH runs setup and syncs through the in-process SSH
// server, whose login shell is noisy: an incremental sync is one command,
// and the noise never reaches the protocol.
func TestInProcessSSH(t *testing.T) {
	home := gittest.Setenv(t)
	s := sshtest.StartInProcess(t, sshtest.Options{Noise: "tree 0000 need-bootstrap backup x"})
	require.NoError(t, os.MkdirAll(filepath.Join(home, ".ssh"), 0o700))
	key, err := os.ReadFile(s.ClientKeyFile)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(home, ".ssh", "id_ed25519"), key, 0o600))

	root := t.TempDir()
	repo := filepath.Join(root, "repo")
	g := gitx.Repo{Dir: root}
	_, err = g.Run(t.Context(), "init", "-q", "-b", "main", repo)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(repo, "a.txt"), []byte("a\n"), 0o644))
	gr := gitx.Repo{Dir: repo}
	_, err = gr.Run(t.Context(), "add", "-A")
	require.NoError(t, err)
	_, err = gr.Run(t.Context(), "commit", "-q", "-m", "a")
	require.NoError(t, err)

	ws := filepath.Join(root, "ws it's $(x)")
	dest := fmt.Sprintf("ssh://tester@%s/%s", s.Addr(), strings.TrimPrefix(ws, "/"))
	_, errOut, code := runIn(t, repo, "add", "dev", dest)
	require.Equal(t, 0, code, errOut)

	_, errOut, code = runIn(t, repo, "setup")
	require.Equal(t, 1, code)
	require.Contains(t, errOut, "--accept-new")
	require.Equal(t, 0, s.Execs())

	_, errOut, code = runIn(t, repo, "setup", "--accept-new")
	require.Equal(t, 0, code, errOut)
	require.Contains(t, errOut, "bootstrap via bundle")

	require.NoError(t, os.WriteFile(filepath.Join(repo, "a.txt"), []byte("a2\n"), 0o644))
	before := s.Execs()
	_, errOut, code = runIn(t, repo, "sync")
	require.Equal(t, 0, code, errOut)
	require.Contains(t, errOut, "incremental; 1 file")
	require.Equal(t, before+1, s.Execs(), "an incremental sync is one remote command")
	b, err := os.ReadFile(filepath.Join(ws, "a.txt"))
	require.NoError(t, err)
	require.Equal(t, "a2\n", string(b))

	out, errOut, code := runIn(t, repo, "status")
	require.Equal(t, 0, code, errOut)
	require.Contains(t, out, "state:     in sync")

	out, errOut, code = runIn(t, repo, "exec", "--", "sh", "-c", "cat a.txt; exit 5")
	require.Equal(t, 5, code, errOut)
	require.Equal(t, "a2\n", out)
}
