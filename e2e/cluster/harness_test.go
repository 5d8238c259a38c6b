package cluster

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/git-relay/git-relay/internal/clustertest"
	"github.com/git-relay/git-relay/internal/edgeproxy"
	"github.com/git-relay/git-relay/internal/githost"
	"github.com/git-relay/git-relay/internal/gittest"
	"github.com/git-relay/git-relay/internal/gitx"
	"github.com/git-relay/git-relay/internal/keyring"
	"github.com/git-relay/git-relay/internal/s3test"
	"github.com/git-relay/git-relay/internal/store"
)

// cluster is one test's relay cluster: versitygw, instances i0, i1, ...
// sharing it as their session store, haproxy in front of them, the edge
// proxy in front of haproxy, and a token-guarded git http-backend as
// upstream. git talks to the edge proxy through relay.url.
type cluster struct {
	t        *testing.T
	work     string
	env      []string // hermetic git: HOME and identities
	s3       *s3test.Server
	store    store.Store // the instances' store, read behind their backs
	host     *githost.Host
	upstream string // the host's folder of bare repositories
	inst     []*clustertest.Instance
	lb       *clustertest.Balancer
	proxy    *edgeproxy.Proxy
	relayURL string // relay.url: the edge proxy's /api/game
}

type options struct {
	instances int
	// maxBody is every body cap: the servers' --max-body and the
	// clients' relay.maxBody (the edge proxy keeps its 4.5 MB).
	maxBody int64
}

func newCluster(t *testing.T, o options) *cluster {
	t.Helper()
	gittest.NeedGit(t)
	clustertest.NeedHAProxy(t)
	server, err := exec.LookPath("git-relay-server")
	require.NoError(t, err, "TestMain puts git-relay-server on PATH")
	c := &cluster{t: t, work: t.TempDir()}
	c.env = gittest.Vars(gittest.Home(t))
	c.s3 = s3test.Start(t)
	storeURL := c.s3.URL("relay")
	cfg, err := store.S3ConfigFromEnv(storeURL, envLookup(c.s3.Env()))
	require.NoError(t, err)
	c.store, err = store.NewS3(t.Context(), cfg)
	require.NoError(t, err)

	c.upstream = filepath.Join(c.work, "upstream")
	require.NoError(t, os.MkdirAll(c.upstream, 0o755))
	token := randomToken()
	c.host, err = githost.Start(c.upstream, token)
	require.NoError(t, err)
	t.Cleanup(func() {
		c.host.Close()
		for _, l := range c.host.Leaks() {
			t.Errorf("the upstream token leaked onto a command line: %s", l)
		}
	})
	tokenFile := filepath.Join(c.work, "token")
	require.NoError(t, os.WriteFile(tokenFile, []byte(token+"\n"), 0o600))
	key, err := keyring.Generate()
	require.NoError(t, err)
	keyFile := filepath.Join(c.work, "relay.key")
	require.NoError(t, keyring.WriteFile(keyFile, key))

	// Every instance: its own data folder (its mirror of upstream), the
	// shared store, the same key, upstream and token.
	serverEnv := append(append(os.Environ(), c.env...), c.s3.Env()...)
	var backends []clustertest.Backend
	t.Cleanup(c.stop) // registered before anything it stops starts
	for i := range o.instances {
		name := "i" + strconv.Itoa(i)
		args := []string{
			"--data-dir", filepath.Join(c.work, name),
			"--store", storeURL,
			"--key-file", keyFile,
			"--upstream", c.host.URL + "/{repo}.git",
			"--token-file", tokenFile,
		}
		if o.maxBody > 0 {
			args = append(args, "--max-body", strconv.FormatInt(o.maxBody, 10))
		}
		in, err := clustertest.Start(clustertest.Spec{Bin: server, Name: name, Args: args, Env: serverEnv, LogPath: filepath.Join(c.work, name+".log")})
		require.NoError(t, err)
		c.inst = append(c.inst, in)
		backends = append(backends, clustertest.Backend{Name: name, Addr: in.Addr})
	}
	c.lb, err = clustertest.StartHAProxy(filepath.Join(c.work, "lb"), backends)
	require.NoError(t, err)
	plog, err := os.Create(filepath.Join(c.work, "proxy.log"))
	require.NoError(t, err)
	t.Cleanup(func() { plog.Close() })
	var mu sync.Mutex
	c.proxy, err = edgeproxy.Start(c.lb.URL, edgeproxy.Options{
		Secrets: githost.TokenForms(token),
		Logf: func(format string, args ...any) {
			mu.Lock()
			defer mu.Unlock()
			fmt.Fprintf(plog, time.Now().Format("15:04:05.000 ")+format+"\n", args...)
		},
	})
	require.NoError(t, err)
	c.relayURL = c.proxy.URL + edgeproxy.ClientPrefix
	c.relayURL = strings.TrimSuffix(c.relayURL, "/")
	c.config("relay.url", c.relayURL)
	c.config("relay.keyFile", keyFile)
	if o.maxBody > 0 {
		c.config("relay.maxBody", strconv.FormatInt(o.maxBody, 10))
	}
	t.Logf("%d instances behind haproxy %s behind the edge proxy %s; store %s on %s; upstream %s",
		len(c.inst), c.lb.URL, c.proxy.URL, storeURL, c.s3.Endpoint, c.host.URL)
	return c
}

// stop ends everything newCluster started, and fails the test on an edge
// proxy violation (plaintext or the token on the wire), an instance that
// does not exit 0 on SIGTERM, or a data race or panic in any instance's
// log.
func (c *cluster) stop() {
	t := c.t
	if c.proxy != nil {
		c.proxy.Close()
		for _, v := range c.proxy.Violations() {
			t.Errorf("the edge proxy saw %s", v)
		}
	}
	for _, in := range c.inst {
		if err := in.Stop(); err != nil {
			t.Error(err)
		}
		b, _ := os.ReadFile(in.LogPath)
		for _, bad := range []string{"DATA RACE", "panic:", "goroutine "} {
			if bytes.Contains(b, []byte(bad)) {
				t.Errorf("instance %s logged %q", in.Name, bad)
			}
		}
	}
	if c.lb != nil {
		c.lb.Stop()
	}
	if t.Failed() {
		for _, in := range c.inst {
			t.Logf("%s (last 40 lines):\n%s", in.LogPath, clustertest.Tail(in.LogPath, 40))
		}
		if c.lb != nil {
			t.Logf("haproxy log (last 30 lines):\n%s", clustertest.Tail(c.lb.LogPath, 30))
		}
	}
}

func envLookup(env []string) func(string) string {
	return func(name string) string {
		for _, kv := range env {
			if k, v, ok := strings.Cut(kv, "="); ok && k == name {
				return v
			}
		}
		return ""
	}
}

func randomToken() string {
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
	b := make([]byte, 36)
	_, _ = rand.Read(b)
	for i := range b {
		b[i] = alphabet[int(b[i])%len(alphabet)]
	}
	return "ghp_" + string(b)
}

// repo is git in dir with the cluster's hermetic environment.
func (c *cluster) repo(dir string) gitx.Repo { return gitx.Repo{Dir: dir, Env: c.env} }

// git runs git in dir and fails the test on an error.
func (c *cluster) git(dir string, args ...string) string {
	c.t.Helper()
	return gittest.Run(c.t, c.repo(dir), args...)
}

// tryGit runs git in dir and returns its stdout and stderr.
func (c *cluster) tryGit(dir string, args ...string) (string, string, error) {
	out, err := c.repo(dir).Run(context.Background(), args...)
	var gerr *gitx.Error
	if errors.As(err, &gerr) {
		return out, gerr.Stderr, err
	}
	return out, "", err
}

func (c *cluster) config(key, value string) {
	c.t.Helper()
	c.git("", "config", "--global", key, value)
}

// upstreamInit creates owner/repo upstream, with a reflog for every ref
// so that a test can count how often a ref moved.
func (c *cluster) upstreamInit(name string) {
	c.t.Helper()
	dir := c.upstreamDir(name)
	c.git("", "init", "-q", "--bare", "-b", "master", dir)
	c.git("", "--git-dir", dir, "config", "core.logAllRefUpdates", "always")
}

func (c *cluster) upstreamDir(name string) string {
	return filepath.Join(c.upstream, filepath.FromSlash(name)+".git")
}

// upstreamRev is ref's id upstream, or "" when it has none.
func (c *cluster) upstreamRev(name, ref string) string {
	out, _, err := c.tryGit("", "--git-dir", c.upstreamDir(name), "rev-parse", "--verify", "--quiet", ref)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(out)
}

// moves counts the entries of ref's reflog upstream: how many times it
// moved.
func (c *cluster) moves(name, ref string) int {
	c.t.Helper()
	out := c.git("", "--git-dir", c.upstreamDir(name), "reflog", "show", "--format=%H", ref)
	return len(strings.Fields(out))
}

// newRepo makes an empty repository at work/name.
func (c *cluster) newRepo(name string) string {
	c.t.Helper()
	dir := filepath.Join(c.work, name)
	c.git("", "init", "-q", "-b", "master", dir)
	return dir
}

// commitRandom writes size deterministic pseudo-random bytes (they do not
// compress, like a pack) to file in dir, commits it, and returns the
// commit's id.
func (c *cluster) commitRandom(dir, file string, size int, seed uint64) string {
	c.t.Helper()
	require.NoError(c.t, os.WriteFile(filepath.Join(dir, file), randomBytes(size, seed), 0o644))
	c.git(dir, "add", file)
	c.git(dir, "commit", "-q", "-m", fmt.Sprintf("%s: %d random bytes (seed %d)", file, size, seed))
	return c.git(dir, "rev-parse", "HEAD")
}

func randomBytes(size int, seed uint64) []byte {
	r := mrand.New(mrand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	buf := make([]byte, size)
	for i := 0; i < len(buf); i += 8 {
		v := r.Uint64()
		for j := 0; j < 8 && i+j < len(buf); j++ {
			buf[i+j] = byte(v >> (8 * j))
		}
	}
	return buf
}

func (c *cluster) instance(name string) *clustertest.Instance {
	for _, in := range c.inst {
		if in.Name == name {
			return in
		}
	}
	c.t.Errorf("no instance %q", name)
	return nil
}

// exchState is what a test reads of an exchange's state in the store: the
// server's own JSON (server/exchange.go), of which only these fields.
type exchState struct {
	Kind  string    `json:"kind"`
	Phase string    `json:"phase"`
	Owner string    `json:"owner"`
	Lease time.Time `json:"lease"`
}

// state reads exchange id's state from the shared store.
func (c *cluster) state(ctx context.Context, id string) (exchState, error) {
	b, _, err := c.store.Get(ctx, "st/"+id, nil)
	if err != nil {
		return exchState{}, err
	}
	var st exchState
	return st, json.Unmarshal(b, &st)
}

// pushing returns the id and state of the one push exchange in phase
// "pushing" (being applied upstream).
func (c *cluster) pushing(ctx context.Context) (string, exchState, error) {
	var ids []string
	if err := c.store.List(ctx, "st/", func(i store.Info) error {
		ids = append(ids, strings.TrimPrefix(i.Key, "st/"))
		return nil
	}); err != nil {
		return "", exchState{}, err
	}
	for _, id := range ids {
		st, err := c.state(ctx, id)
		if err == nil && st.Kind == "push" && st.Phase == "pushing" {
			return id, st, nil
		}
	}
	return "", exchState{}, fmt.Errorf("no push is being applied among %d exchanges", len(ids))
}

// servers maps each exchange id to the instances that answered requests
// of it on route (such as "x/up"), from haproxy's log.
func (c *cluster) servers(route string) map[string]map[string]int {
	c.t.Helper()
	reqs, err := c.lb.Requests()
	require.NoError(c.t, err)
	out := map[string]map[string]int{}
	for _, r := range reqs {
		if r.Path != edgeproxy.ServerPrefix+route || r.Query.Get("id") == "" {
			continue
		}
		id := r.Query.Get("id")
		if out[id] == nil {
			out[id] = map[string]int{}
		}
		out[id][r.Server]++
	}
	return out
}

// metrics scrapes every live instance, by name.
func (c *cluster) metrics() map[string]clustertest.Metrics {
	c.t.Helper()
	out := map[string]clustertest.Metrics{}
	for _, in := range c.inst {
		if in.Exited() {
			continue
		}
		m, err := in.Metrics(c.t.Context())
		require.NoError(c.t, err, "instance %s", in.Name)
		out[in.Name] = m
	}
	return out
}

// sum adds a metric up over the instances.
func sum(ms map[string]clustertest.Metrics, name string, labels ...string) float64 {
	var s float64
	for _, m := range ms {
		s += m.Value(name, labels...)
	}
	return s
}

// logged counts the lines of instance in's log that match re.
func logged(in *clustertest.Instance, re string) int {
	b, _ := os.ReadFile(in.LogPath)
	return len(regexp.MustCompile(re).FindAll(b, -1))
}
