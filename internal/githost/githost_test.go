package githost

import (
	"context"
	"encoding/base64"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/git-relay/git-relay/internal/gittest"
	"github.com/git-relay/git-relay/internal/gitx"
	"github.com/git-relay/git-relay/internal/shape"
	"github.com/stretchr/testify/require"
)

const token = "ghp_TestToken+/=123"

// authEnv hands git an Authorization header through the environment, the
// way the relay server must: never in argv or a URL.
func authEnv(header string) []string {
	return []string{
		"GIT_CONFIG_COUNT=1",
		"GIT_CONFIG_KEY_0=http.extraHeader",
		"GIT_CONFIG_VALUE_0=Authorization: " + header,
	}
}

func basic(tok string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte("x-access-token:"+tok))
}

type fixture struct {
	host *Host
	root string
	bare gitx.Repo
	url  string
}

func setup(t *testing.T) fixture {
	root := t.TempDir()
	bare := filepath.Join(root, "owner", "repo.git")
	gittest.Run(t, gitx.Repo{Env: gittest.Env(t)}, "init", "--quiet", "--bare", "-b", "master", bare)
	h, err := Start(root, token)
	require.NoError(t, err)
	t.Cleanup(func() { _ = h.Close() })
	return fixture{host: h, root: root, bare: gitx.Repo{GitDir: bare, Env: gittest.Env(t)}, url: h.URL + "/owner/repo.git"}
}

func commit(t *testing.T, work gitx.Repo, name string, content []byte) string {
	require.NoError(t, os.WriteFile(filepath.Join(work.Dir, name), content, 0o644))
	gittest.Run(t, work, "add", name)
	gittest.Run(t, work, "commit", "--quiet", "-m", "add "+name)
	return gittest.Run(t, work, "rev-parse", "HEAD")
}

func TestPushAndCloneWithToken(t *testing.T) {
	f := setup(t)
	work := gitx.Repo{Dir: t.TempDir(), Env: gittest.Env(t, authEnv(basic(token))...)}
	gittest.Run(t, work, "init", "--quiet", "-b", "master")
	tip := commit(t, work, "a.txt", []byte("hello\n"))
	gittest.Run(t, work, "push", "--quiet", f.url, "master")
	require.Equal(t, tip, gittest.Run(t, f.bare, "rev-parse", "refs/heads/master"))

	// A push bigger than http.postBuffer goes out with a chunked body,
	// which net/http/cgi alone would refuse.
	big := make([]byte, 3<<20)
	r := rand.New(rand.NewPCG(1, 2))
	for i := range big {
		big[i] = byte(r.Uint32())
	}
	tip = commit(t, work, "big.bin", big)
	gittest.Run(t, work, "push", "--quiet", f.url, "master")
	require.Equal(t, tip, gittest.Run(t, f.bare, "rev-parse", "refs/heads/master"))

	// A bearer token works too, and protocol v2 is negotiated through the
	// Git-Protocol header.
	clone := filepath.Join(t.TempDir(), "clone")
	c := gitx.Repo{Env: gittest.Env(t, append(authEnv("Bearer "+token), "GIT_TRACE_PACKET=1")...)}
	cmd := c.Command(t.Context(), "-c", "protocol.version=2", "clone", "--quiet", f.url, clone)
	var trace strings.Builder
	cmd.Stderr = &trace
	require.NoError(t, cmd.Run())
	require.Contains(t, trace.String(), "version 2")
	require.Equal(t, tip, gittest.Run(t, gitx.Repo{Dir: clone, Env: gittest.Env(t)}, "rev-parse", "HEAD"))

	total, denied := f.host.Requests()
	require.Positive(t, total)
	require.Zero(t, denied)
	require.Empty(t, f.host.Leaks())
}

func TestWrongTokenRefused(t *testing.T) {
	f := setup(t)
	for name, header := range map[string]string{
		"wrong basic":  basic("ghp_wrong"),
		"wrong bearer": "Bearer ghp_wrong",
		"none":         "",
	} {
		t.Run(name, func(t *testing.T) {
			var extra []string
			if header != "" {
				extra = authEnv(header)
			}
			work := gitx.Repo{Dir: t.TempDir(), Env: gittest.Env(t, extra...)}
			gittest.Run(t, work, "init", "--quiet", "-b", "master")
			commit(t, work, "a.txt", []byte("hello\n"))
			_, err := work.Run(t.Context(), "push", f.url, "master")
			var gerr *gitx.Error
			require.ErrorAs(t, err, &gerr)
			require.Regexp(t, "Authentication failed|could not read Username", gerr.Stderr)
			_, err = f.bare.Run(t.Context(), "rev-parse", "--verify", "-q", "refs/heads/master")
			require.Error(t, err, "nothing was pushed")
		})
	}
	_, denied := f.host.Requests()
	require.GreaterOrEqual(t, denied, 3)
	require.Empty(t, f.host.Leaks())
}

func TestChallenge(t *testing.T) {
	f := setup(t)
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, f.url+"/info/refs?service=git-upload-pack", nil)
	require.NoError(t, err)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusUnauthorized, resp.StatusCode)
	require.Equal(t, `Basic realm="githost"`, resp.Header.Get("WWW-Authenticate"))
}

func TestLeakSeen(t *testing.T) {
	f := setup(t)
	for _, form := range []string{token, base64.StdEncoding.EncodeToString([]byte("x-access-token:" + token))} {
		// A process with the token on its command line, as a careless
		// relay would start `git push https://x-access-token:TOKEN@...`.
		ctx, cancel := context.WithCancel(t.Context())
		p := exec.CommandContext(ctx, "sh", "-c", "sleep 30", "sh", "--header="+form)
		require.NoError(t, p.Start())

		work := gitx.Repo{Env: gittest.Env(t, authEnv(basic(token))...)}
		gittest.Run(t, work, "ls-remote", f.url)
		cancel()
		_ = p.Wait()

		var mine []Leak
		for _, l := range f.host.Leaks() {
			if l.PID == p.Process.Pid {
				mine = append(mine, l)
			}
		}
		require.Len(t, mine, 1, form)
		require.NotContains(t, mine[0].Cmdline, token)
		require.NotContains(t, mine[0].String(), form)
		require.Contains(t, mine[0].Cmdline, "--header=<TOKEN>")
	}
	require.Eventually(t, func() bool { return len(ScanCmdlines(token, os.Getpid())) == 0 }, 5*time.Second, 50*time.Millisecond)
}

func TestStartChecks(t *testing.T) {
	_, err := Start(t.TempDir(), "")
	require.Error(t, err)
	_, err = Start(filepath.Join(t.TempDir(), "missing"), token)
	require.Error(t, err)
	require.Contains(t, TokenForms("a b"), "a+b")
	require.Contains(t, TokenForms("a b"), "a%20b")
}

// TestShapedHost: a host behind a shaped link serves git unchanged, and
// every exchange costs at least the link's round trip; a push takes at
// least its size over the rate.
func TestShapedHost(t *testing.T) {
	root := t.TempDir()
	bare := filepath.Join(root, "owner", "repo.git")
	gittest.Run(t, gitx.Repo{Env: gittest.Env(t)}, "init", "--quiet", "--bare", "-b", "master", bare)
	const latency = 80 * time.Millisecond
	const rate = 2 << 20
	h, err := StartWith(root, token, Options{
		ShapeIn:  shape.Link{Rate: rate, Latency: latency},
		ShapeOut: shape.Link{Rate: rate, Latency: latency},
	})
	require.NoError(t, err)
	t.Cleanup(func() { _ = h.Close() })
	url := h.URL + "/owner/repo.git"

	work := gitx.Repo{Dir: t.TempDir(), Env: gittest.Env(t, authEnv(basic(token))...)}
	gittest.Run(t, work, "init", "--quiet", "-b", "master")
	big := make([]byte, 1<<20)
	r := rand.New(rand.NewPCG(3, 4))
	for i := range big {
		big[i] = byte(r.Uint32())
	}
	tip := commit(t, work, "big.bin", big)
	start := time.Now()
	gittest.Run(t, work, "push", "--quiet", url, "master")
	// 1 MiB of incompressible content at 2 MiB/s, plus round trips.
	require.GreaterOrEqual(t, time.Since(start), 500*time.Millisecond)
	require.Equal(t, tip, gittest.Run(t, gitx.Repo{GitDir: bare, Env: gittest.Env(t)}, "rev-parse", "refs/heads/master"))

	start = time.Now()
	out := gittest.Run(t, work, "ls-remote", url)
	require.GreaterOrEqual(t, time.Since(start), 2*latency, "one request and its answer each wait the latency")
	require.Contains(t, out, tip)
}
