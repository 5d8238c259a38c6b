package helper

import (
	"bufio"
	"bytes"
	"context"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/git-relay/git-relay/internal/gittest"
	"github.com/git-relay/git-relay/internal/keyring"
	"github.com/git-relay/git-relay/server"
)

// setup makes an upstream with one commit, a relay server in front of it,
// and a local clone configured for the relay; it returns the clone's dir.
func setup(t *testing.T) (work, upstream string) {
	t.Helper()
	gittest.Setenv(t)
	t.Setenv("GIT_RELAY_URL", "")
	t.Setenv("GIT_RELAY_KEY_FILE", "")
	root := t.TempDir()
	upstream = filepath.Join(root, "up", "acme", "widgets.git")
	gittest.Git(t, root, "init", "-q", "--bare", "-b", "master", upstream)
	work = filepath.Join(root, "work")
	gittest.Git(t, root, "init", "-q", "-b", "master", work)
	require.NoError(t, os.WriteFile(filepath.Join(work, "a.txt"), []byte("a\n"), 0o644))
	gittest.Git(t, work, "add", ".")
	gittest.Git(t, work, "commit", "-qm", "first")
	gittest.Git(t, work, "push", "-q", upstream, "master")

	key, err := keyring.Generate()
	require.NoError(t, err)
	keyFile := filepath.Join(root, "relay.key")
	require.NoError(t, os.WriteFile(keyFile, []byte(key.String()+"\n"), 0o600))
	s, err := server.New(server.Config{DataDir: filepath.Join(root, "data"), Ring: keyring.NewRing(key),
		Upstream: "file://" + filepath.Join(root, "up") + "/{repo}.git"})
	require.NoError(t, err)
	t.Cleanup(s.Close) // after hs.Close: the server's background work ends before the folder goes
	hs := httptest.NewServer(s.Handler())
	t.Cleanup(hs.Close)
	gittest.Git(t, work, "config", "relay.url", hs.URL+"/api/gr")
	gittest.Git(t, work, "config", "relay.keyFile", keyFile)
	t.Setenv("GIT_DIR", filepath.Join(work, ".git"))
	return work, upstream
}

func talk(t *testing.T, addr, input string) (string, string, error) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	h, err := newHelper(context.Background(), addr, addr, &stderr)
	if err != nil {
		return "", err.Error(), err
	}
	err = h.serve(context.Background(), strings.NewReader(input), &stdout)
	if err != nil {
		return stdout.String(), stderr.String() + err.Error(), err
	}
	return stdout.String(), stderr.String(), err
}

func TestProtocolCapabilitiesOptionsAndList(t *testing.T) {
	work, _ := setup(t)
	head := gittest.Git(t, work, "rev-parse", "master")
	out, _, err := talk(t, "acme/widgets", "capabilities\noption verbosity 1\noption progress false\noption depth 1\nlist for-push\n\n")
	require.NoError(t, err)
	// A list for a push has no HEAD, as receive-pack advertises none.
	require.Equal(t, "stateless-connect\npush\nfetch\noption\n\nok\nok\nunsupported\n"+head+" refs/heads/master\n\n", out)
	out, _, err = talk(t, "acme/widgets", "list\n\n")
	require.NoError(t, err)
	require.Equal(t, head+" refs/heads/master\n@refs/heads/master HEAD\n\n", out)
}

func TestPushUpToDateSendsNothing(t *testing.T) {
	_, _ = setup(t)
	out, _, err := talk(t, "acme/widgets", "list for-push\npush refs/heads/master:refs/heads/master\n\n")
	require.NoError(t, err)
	require.Contains(t, out, "ok refs/heads/master up to date\n\n")
}

func TestPushDivergedIsRefusedBeforeUpload(t *testing.T) {
	work, upstream := setup(t)
	// Upstream moves ahead with a commit this clone never saw.
	other := t.TempDir()
	gittest.Git(t, other, "clone", "-q", upstream, "o")
	require.NoError(t, os.WriteFile(filepath.Join(other, "o", "b.txt"), []byte("b\n"), 0o644))
	gittest.Git(t, filepath.Join(other, "o"), "add", ".")
	gittest.Git(t, filepath.Join(other, "o"), "commit", "-qm", "upstream")
	gittest.Git(t, filepath.Join(other, "o"), "push", "-q", "origin", "master")
	before := gittest.Git(t, work, "--git-dir", upstream, "rev-parse", "master")

	require.NoError(t, os.WriteFile(filepath.Join(work, "c.txt"), []byte("c\n"), 0o644))
	gittest.Git(t, work, "add", ".")
	gittest.Git(t, work, "commit", "-qm", "local")
	out, stderr, err := talk(t, "acme/widgets", "list for-push\npush refs/heads/master:refs/heads/master\n\n")
	require.NoError(t, err)
	require.Contains(t, out, "error refs/heads/master fetch first\n")
	require.Contains(t, stderr, "ERR_OUT_OF_SYNC")
	require.Contains(t, stderr, "git pull relay::acme/widgets master")
	require.Equal(t, before, gittest.Git(t, work, "--git-dir", upstream, "rev-parse", "master"))
}

func TestBadAddressAndMissingConfig(t *testing.T) {
	_, _ = setup(t)
	_, msg, err := talk(t, "not-a-repo", "capabilities\n")
	require.Error(t, err)
	require.Contains(t, msg, "expected owner/repo")

	t.Setenv("GIT_RELAY_URL", "http://127.0.0.1:1/api/gr")
	_, msg, err = talk(t, "acme/widgets", "list for-push\n")
	require.Error(t, err)
	require.Contains(t, msg, "cannot reach the relay")

	// An explicit URL names the server itself: its last two segments are
	// owner/repo.
	h, err := newHelper(context.Background(), "x", "https://edge.example/api/game/acme/widgets", &bytes.Buffer{})
	require.NoError(t, err)
	require.Equal(t, "acme/widgets", h.repo)
	require.Equal(t, "https://edge.example/api/game", h.client.Base)
}

// TestReadBatch: a batch ends with a blank line; one that ends without it
// (git killed mid-batch) is refused whole rather than pushed in part.
func TestReadBatch(t *testing.T) {
	read := func(in string) ([]string, error) {
		return readBatch(bufio.NewReader(strings.NewReader(in)), "push", "a:a")
	}
	args, err := read("push b:b\npush +c:d\n\nlist\n")
	require.NoError(t, err)
	require.Equal(t, []string{"a:a", "b:b", "+c:d"}, args)
	args, err = read("\n")
	require.NoError(t, err)
	require.Equal(t, []string{"a:a"}, args)
	for _, in := range []string{"", "push b:b\n", "push b:b", "push b:b\npush c:c"} {
		_, err := read(in)
		require.ErrorContains(t, err, "without its blank line", "%q", in)
	}
	_, err = read("fetch x y\n\n")
	require.ErrorContains(t, err, "unexpected")
}

// TestPushBatchCutShortPushesNothing: git killed in the middle of a push
// batch (stdin ends before the blank line) pushes nothing.
func TestPushBatchCutShortPushesNothing(t *testing.T) {
	work, upstream := setup(t)
	before := gittest.Git(t, work, "--git-dir", upstream, "rev-parse", "master")
	require.NoError(t, os.WriteFile(filepath.Join(work, "c.txt"), []byte("c\n"), 0o644))
	gittest.Git(t, work, "add", ".")
	gittest.Git(t, work, "commit", "-qm", "local")
	_, stderr, err := talk(t, "acme/widgets", "list for-push\npush refs/heads/master:refs/heads/master\n")
	require.Error(t, err)
	require.Contains(t, stderr, "without its blank line")
	require.Equal(t, before, gittest.Git(t, work, "--git-dir", upstream, "rev-parse", "master"))
}
