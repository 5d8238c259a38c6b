package cluster

import (
	"bytes"
	"context"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/git-relay/git-relay/internal/edgeproxy"
	"github.com/git-relay/git-relay/internal/gittest"
)

// chunkBody is relay.maxBody and --max-body in these tests: a push of a
// few megabytes travels in a dozen chunks, which the balancer spreads
// over the instances.
const chunkBody = 262144

// TestPushCloneThroughBalancer pushes a few megabytes through the
// balancer in a dozen chunks, which land on different instances, and
// clones them back, the answer's chunks again read through several
// instances: what one instance writes, another serves from the store.
func TestPushCloneThroughBalancer(t *testing.T) {
	t.Parallel()
	c := newCluster(t, options{instances: 3, maxBody: chunkBody})
	c.upstreamInit("owner/repo")
	src := c.newRepo("src")
	head := c.commitRandom(src, "blob.bin", 3<<20, 1)

	c.git(src, "push", "relay::owner/repo", "master")
	require.Equal(t, head, c.upstreamRev("owner/repo", "refs/heads/master"))
	require.Equal(t, 1, c.moves("owner/repo", "refs/heads/master"))
	c.git("", "--git-dir", c.upstreamDir("owner/repo"), "fsck", "--strict")

	ups := c.servers("x/up")
	require.Len(t, ups, 1, "one push exchange uploaded chunks: %v", ups)
	for id, by := range ups {
		t.Logf("push %s: upload chunks answered by %v", id, by)
		assert.GreaterOrEqual(t, len(by), 2, "the upload chunks of one exchange went to more than one instance")
	}
	// Each instance's own count agrees: more than one stored chunks.
	storing := 0
	for name, m := range c.metrics() {
		if n := m.Value("relay_upload_chunks_total"); n > 0 {
			t.Logf("%s stored %.0f upload chunks", name, n)
			storing++
		}
	}
	assert.GreaterOrEqual(t, storing, 2, "instances that stored upload chunks")

	clone := filepath.Join(c.work, "clone")
	c.git("", "clone", "-q", "relay::owner/repo", clone)
	require.Equal(t, head, c.git(clone, "rev-parse", "HEAD"))
	got, err := os.ReadFile(filepath.Join(clone, "blob.bin"))
	require.NoError(t, err)
	require.True(t, bytes.Equal(randomBytes(3<<20, 1), got), "the cloned blob.bin has the pushed bytes")
	c.git(clone, "fsck", "--strict")
	spread := 0
	for id, by := range c.servers("x/down") {
		t.Logf("fetch %s: download chunks answered by %v", id, by)
		if len(by) >= 2 {
			spread++
		}
	}
	assert.GreaterOrEqual(t, spread, 1, "the download chunks of one answer went to more than one instance")

	// And on from the clone: a second push, fetched into the source.
	next := c.commitRandom(clone, "more.bin", 300<<10, 2)
	c.git(clone, "push", "origin", "master")
	require.Equal(t, next, c.upstreamRev("owner/repo", "refs/heads/master"))
	c.git(src, "pull", "-q", "relay::owner/repo", "master")
	require.Equal(t, next, c.git(src, "rev-parse", "HEAD"))
	require.Equal(t, 2, c.moves("owner/repo", "refs/heads/master"))
}

// TestMirrorsSeededFromThePush pushes through one instance and clones
// through both: the instance that did not run the push takes the pushed
// pack from the store into its mirror, and no instance fetches those
// objects from upstream again. A second push, which builds on the first,
// is seeded the same way.
func TestMirrorsSeededFromThePush(t *testing.T) {
	t.Parallel()
	c := newCluster(t, options{instances: 2, maxBody: chunkBody})
	c.upstreamInit("owner/repo")
	src := c.newRepo("src")
	heads := []string{c.commitRandom(src, "blob.bin", 1<<20, 1)}
	c.git(src, "push", "relay::owner/repo", "master")
	heads = append(heads, c.commitRandom(src, "more.bin", 1<<20, 2))
	c.git(src, "push", "relay::owner/repo", "master")
	require.Equal(t, heads[1], c.upstreamRev("owner/repo", "refs/heads/master"))

	// The instance that did not run a push learns of it from the chunks
	// it took, and takes its pack into its mirror before anyone asks: each
	// push's pack goes into the other mirror (the second push's listing
	// alone would bring only the first's).
	for deadline := time.Now().Add(30 * time.Second); sum(c.metrics(), "relay_mirror_updates_total", "from", "push") < 2; {
		require.True(t, time.Now().Before(deadline), "the mirrors did not take both pushes' packs within 30 s")
		time.Sleep(50 * time.Millisecond)
	}

	// Each clone's requests (capabilities, listing, fetch) alternate
	// between the two instances, so both mirrors serve.
	for i := range 2 {
		clone := filepath.Join(c.work, "clone"+strconv.Itoa(i))
		c.git("", "clone", "-q", "relay::owner/repo", clone)
		require.Equal(t, heads[1], c.git(clone, "rev-parse", "HEAD"))
		got, err := os.ReadFile(filepath.Join(clone, "more.bin"))
		require.NoError(t, err)
		require.True(t, bytes.Equal(randomBytes(1<<20, 2), got), "the cloned more.bin has the pushed bytes")
		c.git(clone, "fsck", "--strict")
	}
	ms := c.metrics()
	assert.GreaterOrEqual(t, sum(ms, "relay_mirror_updates_total", "from", "push"), 1.0, "packs seeded from pushes")
	assert.Zero(t, sum(ms, "relay_mirror_updates_total", "from", "upstream"), "mirror fetches that brought objects from upstream")
}

// TestKillInstanceMidUpload kills (SIGKILL) the instance running a push
// while its chunks are being uploaded: it holds the exchange's lease and
// is already streaming the first chunks into upstream's receive-pack.
// The chunks in flight to it are sent again by the client (haproxy
// answers 502, or sends a request that cannot connect elsewhere); once
// the lease runs out, the instance answering the client's long-poll takes
// the work over from the chunks in the store. The same `git push`
// succeeds: the client never has to run it again, and the push lands
// once.
func TestKillInstanceMidUpload(t *testing.T) {
	t.Parallel()
	c := newCluster(t, options{instances: 3, maxBody: chunkBody})
	c.upstreamInit("owner/repo")
	src := c.newRepo("src")
	base := c.commitRandom(src, "base.txt", 1000, 1)
	c.git(src, "push", "relay::owner/repo", "master")
	require.Equal(t, base, c.upstreamRev("owner/repo", "refs/heads/master"))
	head := c.commitRandom(src, "blob.bin", 3<<20, 2)

	var (
		ups    atomic.Int32
		killed atomic.Pointer[string]
		pushID atomic.Pointer[string]
	)
	c.proxy.SetTamper(&edgeproxy.Tamper{Name: "kill-owner", OnRequest: func(req *edgeproxy.Request) {
		if !strings.HasSuffix(req.Path, "/x/up") || ups.Add(1) != 4 {
			return
		}
		id := queryID(req.Query)
		st, err := c.state(context.Background(), id)
		if err != nil || st.Owner == "" {
			t.Errorf("exchange %s: no owner in the store at the 4th chunk (%v)", id, err)
			return
		}
		if in := c.instance(st.Owner); in != nil {
			in.Kill()
			killed.Store(&st.Owner)
			pushID.Store(&id)
			t.Logf("killed %s, the owner of push %s, at its 4th upload chunk", st.Owner, id)
		}
	}})
	start := time.Now()
	c.git(src, "push", "relay::owner/repo", "master")
	t.Logf("the push went through in one run, %s", time.Since(start).Round(time.Millisecond))
	require.NotNil(t, killed.Load(), "an instance was killed mid-upload")
	c.checkLandedOnce("owner/repo", head, 2, *killed.Load(), *pushID.Load())
}

// TestKillInstanceMidPush kills (SIGKILL) the instance applying a push
// the moment upstream's receive-pack is asked for it (the git host's
// hook runs before it serves the request): upstream gets a cut pack and
// moves nothing. Another instance takes the push over when the lease
// runs out and applies it; the same `git push` succeeds, once.
func TestKillInstanceMidPush(t *testing.T) {
	t.Parallel()
	c := newCluster(t, options{instances: 3, maxBody: chunkBody})
	c.upstreamInit("owner/repo")
	src := c.newRepo("src")
	base := c.commitRandom(src, "base.txt", 1000, 1)
	c.git(src, "push", "relay::owner/repo", "master")
	require.Equal(t, base, c.upstreamRev("owner/repo", "refs/heads/master"))
	head := c.commitRandom(src, "blob.bin", 2<<20, 3)

	var (
		once   sync.Once
		killed atomic.Pointer[string]
		pushID atomic.Pointer[string]
	)
	c.host.SetHook(func(r *http.Request) {
		if r.Method != http.MethodPost || !strings.HasSuffix(r.URL.Path, "/git-receive-pack") {
			return
		}
		once.Do(func() {
			id, st, err := c.pushing(context.Background())
			if err != nil {
				t.Errorf("receive-pack was asked for, but: %v", err)
				return
			}
			if in := c.instance(st.Owner); in != nil {
				in.Kill()
				killed.Store(&st.Owner)
				pushID.Store(&id)
				t.Logf("killed %s as it opened upstream's receive-pack for push %s", st.Owner, id)
			}
		})
	})
	c.git(src, "push", "relay::owner/repo", "master")
	require.NotNil(t, killed.Load(), "an instance was killed as it pushed upstream")
	c.checkLandedOnce("owner/repo", head, 2, *killed.Load(), *pushID.Load())
}

// TestKillInstanceAfterUpstreamMoved kills (SIGKILL) the instance
// applying a push after upstream has moved the ref but before the
// instance heard back (upstream's post-receive hook holds receive-pack
// until the instance is dead). The instance that takes the push over
// finds upstream already where the push was going, and reports success
// without pushing again: the ref moved once.
func TestKillInstanceAfterUpstreamMoved(t *testing.T) {
	t.Parallel()
	c := newCluster(t, options{instances: 3, maxBody: chunkBody})
	c.upstreamInit("owner/repo")
	src := c.newRepo("src")
	base := c.commitRandom(src, "base.txt", 1000, 1)
	c.git(src, "push", "relay::owner/repo", "master")
	require.Equal(t, base, c.upstreamRev("owner/repo", "refs/heads/master"))
	head := c.commitRandom(src, "blob.bin", 1<<20, 4)

	// The hook tells it has run by a file, then waits for the test's go.
	flags := filepath.Join(c.work, "hook")
	require.NoError(t, os.MkdirAll(flags, 0o755))
	landed, goOn := filepath.Join(flags, "landed"), filepath.Join(flags, "go")
	hook := "#!/bin/sh\ncat >/dev/null\n[ -e '" + landed + "' ] && exit 0\n: >'" + landed + "'\n" +
		"i=0\nwhile [ ! -e '" + goOn + "' ] && [ $i -lt 1200 ]; do sleep 0.1; i=$((i+1)); done\n"
	gittest.Script(t, filepath.Join(c.upstreamDir("owner/repo"), "hooks", "post-receive"), hook)

	pushed := make(chan error, 1)
	go func() {
		_, stderr, err := c.tryGit(src, "push", "relay::owner/repo", "master")
		if err != nil {
			t.Logf("git push: %s", stderr)
		}
		pushed <- err
	}()
	require.Eventually(t, func() bool { _, err := os.Stat(landed); return err == nil }, 2*time.Minute, 20*time.Millisecond, "upstream's post-receive hook ran")
	require.Equal(t, head, c.upstreamRev("owner/repo", "refs/heads/master"), "upstream moved before its hook ran")
	id, st, err := c.pushing(t.Context())
	require.NoError(t, err)
	c.instance(st.Owner).Kill()
	t.Logf("killed %s after upstream applied push %s", st.Owner, id)
	require.NoError(t, os.WriteFile(goOn, nil, 0o644))
	require.NoError(t, <-pushed, "the same git push succeeds")
	c.checkLandedOnce("owner/repo", head, 2, st.Owner, id)
}

// checkLandedOnce checks that upstream's master is head, that it moved
// moves times in all (the last of which is push id), that upstream is
// sound, and that exactly one surviving instance, not the killed one,
// finished push id.
func (c *cluster) checkLandedOnce(repo, head string, moves int, killed, id string) {
	t := c.t
	t.Helper()
	require.Equal(t, head, c.upstreamRev(repo, "refs/heads/master"))
	require.Equal(t, moves, c.moves(repo, "refs/heads/master"), "upstream's master moved once per push")
	c.git("", "--git-dir", c.upstreamDir(repo), "fsck", "--strict")
	require.True(t, c.instance(killed).Exited())
	done := regexp.QuoteMeta("msg=\"push done\" id="+id) + `\b`
	finishers := map[string]int{}
	for _, in := range c.inst {
		if n := logged(in, done); n > 0 {
			finishers[in.Name] = n
		}
	}
	require.Len(t, finishers, 1, "instances that finished push %s: %v", id, finishers)
	for name, n := range finishers {
		assert.NotEqual(t, killed, name)
		assert.Equal(t, 1, n, "%s finished push %s %d times", name, id, n)
		t.Logf("%s finished push %s", name, id)
	}
	ms := c.metrics()
	assert.NotContains(t, ms, killed, "the killed instance answers no scrape")
	assert.GreaterOrEqual(t, sum(ms, "relay_exchanges_finished_total", "kind", "push", "outcome", "done"), 1.0, "pushes the survivors counted as done")
}

func queryID(raw string) string {
	for _, kv := range strings.Split(raw, "&") {
		if v, ok := strings.CutPrefix(kv, "id="); ok {
			return v
		}
	}
	return ""
}

// TestRacingPushes races two pushes from the same base, each pinned to
// its own instance (relay.url straight at i0 and at i1, so that two
// instances apply them for sure): exactly one lands, and the other is
// told, in git's words, to fetch first. Both compare-and-swap on the
// same old id upstream, which only one can win.
func TestRacingPushes(t *testing.T) {
	t.Parallel()
	c := newCluster(t, options{instances: 2, maxBody: chunkBody})
	c.upstreamInit("owner/repo")
	src := c.newRepo("src")
	base := c.commitRandom(src, "base.txt", 1000, 1)
	c.git(src, "push", "relay::owner/repo", "master")
	require.Equal(t, base, c.upstreamRev("owner/repo", "refs/heads/master"))

	heads := map[string]string{}
	for i, name := range []string{"a", "b"} {
		dir := filepath.Join(c.work, name)
		c.git("", "clone", "-q", "relay::owner/repo", dir)
		c.git(dir, "config", "relay.url", c.inst[i].URL+edgeproxy.ServerPrefix[:len(edgeproxy.ServerPrefix)-1])
		heads[name] = c.commitRandom(dir, name+".bin", 1<<20, uint64(10+i))
	}

	type result struct {
		name, stderr string
		err          error
	}
	results := make(chan result, 2)
	startLine := make(chan struct{})
	for _, name := range []string{"a", "b"} {
		go func() {
			<-startLine
			_, stderr, err := c.tryGit(filepath.Join(c.work, name), "push", "origin", "master")
			results <- result{name, stderr, err}
		}()
	}
	close(startLine)
	var won, lost []result
	for range 2 {
		r := <-results
		if r.err == nil {
			won = append(won, r)
		} else {
			lost = append(lost, r)
		}
	}
	require.Len(t, won, 1, "pushes that landed")
	require.Len(t, lost, 1, "pushes refused")
	t.Logf("%s landed; %s was refused:\n%s", won[0].name, lost[0].name, lost[0].stderr)
	assert.Regexp(t, `\[(remote )?rejected\]`, lost[0].stderr)
	assert.Regexp(t, `fetch first|ERR_OUT_OF_SYNC`, lost[0].stderr)
	require.Equal(t, heads[won[0].name], c.upstreamRev("owner/repo", "refs/heads/master"))
	require.Equal(t, 2, c.moves("owner/repo", "refs/heads/master"), "the base, then one of the racing pushes")
	c.git("", "--git-dir", c.upstreamDir("owner/repo"), "fsck", "--strict")
	for name, m := range c.metrics() {
		t.Logf("%s: push exchanges opened %.0f, finished %.0f", name, m.Value("relay_exchanges_opened_total", "kind", "push"), m.Value("relay_exchanges_finished_total", "kind", "push"))
	}
}

// TestMetrics scrapes each instance's /metrics as Prometheus would and
// checks that, summed over the instances, they count what happened: one
// push and its phase, the fetches of a clone, a push to a repository
// upstream lacks (an upstream error, a failed exchange), and three
// requests without the key (refused, by reason).
func TestMetrics(t *testing.T) {
	t.Parallel()
	c := newCluster(t, options{instances: 2})
	names := []string{
		"relay_requests_total", "relay_exchanges_opened_total", "relay_exchanges_finished_total",
		"relay_refusals_total", "relay_phase_seconds", "relay_body_bytes_in_total",
		"relay_body_bytes_out_total", "relay_upstream_errors_total", "relay_sessions_open",
	}
	before := c.metrics()
	require.Len(t, before, 2)
	for inst, m := range before {
		for _, n := range []string{"relay_body_bytes_in_total", "relay_upstream_errors_total", "relay_sessions_open"} {
			assert.True(t, m.Has(n), "%s exports %s before any request", inst, n)
		}
		assert.Zero(t, m.Value("relay_exchanges_opened_total"), "%s: exchanges before any request", inst)
	}

	c.upstreamInit("owner/repo")
	src := c.newRepo("src")
	head := c.commitRandom(src, "blob.bin", 200<<10, 1)
	c.git(src, "push", "relay::owner/repo", "master")
	require.Equal(t, head, c.upstreamRev("owner/repo", "refs/heads/master"))
	c.git("", "clone", "-q", "relay::owner/repo", filepath.Join(c.work, "clone"))
	_, stderr, err := c.tryGit(src, "push", "relay::owner/nope", "master")
	require.Error(t, err, "a push to a repository upstream lacks")
	require.Contains(t, stderr, "not found")

	// Three requests without the key, through the balancer.
	for range 3 {
		resp, err := http.Get(c.lb.URL + edgeproxy.ServerPrefix + "x/status?id=0123456789abcdef0123456789abcdef")
		require.NoError(t, err)
		resp.Body.Close()
		require.Equal(t, http.StatusUnauthorized, resp.StatusCode)
	}

	ms := c.metrics()
	// A metric with labels shows once one of its series has a sample, so
	// the union of the instances has them all.
	for _, n := range names {
		has := false
		for _, m := range ms {
			has = has || m.Has(n)
		}
		assert.True(t, has, "an instance exports %s", n)
	}
	assert.Equal(t, 1.0, sum(ms, "relay_exchanges_opened_total", "kind", "push"), "push exchanges opened")
	assert.Equal(t, 1.0, sum(ms, "relay_exchanges_finished_total", "kind", "push", "outcome", "done"), "pushes done")
	assert.Equal(t, 1.0, sum(ms, "relay_phase_seconds", "phase", "push"), "push phases timed")
	fetches := sum(ms, "relay_exchanges_opened_total", "kind", "fetch")
	assert.GreaterOrEqual(t, fetches, 1.0, "fetch exchanges opened by the clone")
	assert.Equal(t, fetches, sum(ms, "relay_exchanges_finished_total", "kind", "fetch", "outcome", "done"), "fetches done")
	assert.GreaterOrEqual(t, sum(ms, "relay_exchanges_finished_total", "outcome", "failed"), 1.0, "exchanges failed (the missing repository)")
	assert.GreaterOrEqual(t, sum(ms, "relay_upstream_errors_total"), 1.0, "upstream errors (the missing repository)")
	assert.Equal(t, 3.0, sum(ms, "relay_refusals_total", "reason", "auth"), "requests refused for want of the key")
	assert.Equal(t, 3.0, sum(ms, "relay_requests_total", "code", "401"), "401 answers")
	assert.Zero(t, sum(ms, "relay_refusals_total", "reason", "auth")-sum(ms, "relay_refusals_total"), "no other refusal")
	assert.Greater(t, sum(ms, "relay_body_bytes_in_total"), float64(200<<10), "body bytes in (the pushed blob)")
	assert.Greater(t, sum(ms, "relay_body_bytes_out_total"), float64(200<<10), "body bytes out (the cloned blob)")
	for inst, m := range ms {
		assert.Greater(t, m.Value("relay_requests_total"), 0.0, "%s took requests", inst)
		t.Logf("%s: %.0f requests, opened %.0f push / %.0f fetch, refusals %.0f", inst, m.Value("relay_requests_total"),
			m.Value("relay_exchanges_opened_total", "kind", "push"), m.Value("relay_exchanges_opened_total", "kind", "fetch"), m.Value("relay_refusals_total"))
	}
}

// TestFetchRightAfterPush pulls, a moment after each push, what the push
// brought: the listing (ls-refs) and the fetch that follows it are two
// exchanges, which the balancer sends to different instances, so the
// fetch may run on an instance whose mirror has not seen the pushed
// commits yet, and must bring it up to date rather than answer "not our
// ref".
func TestFetchRightAfterPush(t *testing.T) {
	t.Parallel()
	c := newCluster(t, options{instances: 2})
	c.upstreamInit("owner/repo")
	src := c.newRepo("src")
	c.commitRandom(src, "base.txt", 1000, 1)
	c.git(src, "push", "relay::owner/repo", "master")
	dst := filepath.Join(c.work, "dst")
	c.git("", "clone", "-q", "relay::owner/repo", dst)
	for round := range 4 {
		head := c.commitRandom(src, "round.txt", 1000, uint64(100+round))
		c.git(src, "push", "relay::owner/repo", "master")
		c.git(dst, "pull", "-q", "--ff-only", "origin", "master")
		require.Equal(t, head, c.git(dst, "rev-parse", "HEAD"), "round %d", round)
	}
}

// TestSlowAnswerThroughAnotherInstance holds upstream's listing until the
// Open of the exchange waiting for it has had its answer (the long-poll
// ran out, 20 s): the client then asks where the exchange stands, and
// the balancer sends that to the other instance, which must find the
// exchange in the store and serve its answer from there.
func TestSlowAnswerThroughAnotherInstance(t *testing.T) {
	t.Parallel()
	c := newCluster(t, options{instances: 2})
	c.upstreamInit("owner/repo")
	src := c.newRepo("src")
	head := c.commitRandom(src, "base.txt", 1000, 1)
	c.git(src, "push", "relay::owner/repo", "master")

	var (
		armed    atomic.Bool
		held     atomic.Bool
		released = make(chan struct{})
		once     sync.Once
	)
	c.host.SetHook(func(r *http.Request) {
		if !armed.Load() || r.URL.Query().Get("service") != "git-upload-pack" {
			return
		}
		held.Store(true)
		select {
		case <-released:
		case <-time.After(2 * time.Minute):
			t.Errorf("upstream's listing was held for 2 minutes")
		}
	})
	c.proxy.SetTamper(&edgeproxy.Tamper{Name: "release", OnResponse: func(req *edgeproxy.Request, _ *edgeproxy.Response) {
		if held.Load() && req.Method == http.MethodPost && strings.HasSuffix(req.Path, "/x") {
			t.Log("an Open's long-poll ended while upstream was held: releasing upstream")
			once.Do(func() { close(released) })
		}
	}})
	armed.Store(true)
	out := c.git(src, "ls-remote", "relay::owner/repo", "refs/heads/master")
	require.True(t, held.Load(), "upstream's listing was held")
	require.Equal(t, head+"\trefs/heads/master", out)
}

// TestCommandsListUpstreamOnce: a clone asks the relay for capabilities,
// a listing and a fetch; the capabilities exchange has the mirror
// refreshed while git reads them, and the listing that follows uses that
// refresh, so upstream is listed once per command, not once per
// exchange. The clone still gets what upstream had when it began.
func TestCommandsListUpstreamOnce(t *testing.T) {
	t.Parallel()
	c := newCluster(t, options{instances: 1})
	c.upstreamInit("owner/repo")
	src := c.newRepo("src")
	c.commitRandom(src, "base.txt", 1000, 1)
	c.git(src, "push", "relay::owner/repo", "master")
	// Upstream moves behind the relay's back.
	head := c.commitRandom(src, "more.txt", 1000, 2)
	c.git(src, "push", "-q", "file://"+c.upstreamDir("owner/repo"), "master")

	listings := func() float64 { return sum(c.metrics(), "relay_upstream_listings_total") }
	before := listings()
	dst := filepath.Join(c.work, "dst")
	c.git("", "clone", "-q", "relay::owner/repo", dst)
	require.Equal(t, head, c.git(dst, "rev-parse", "HEAD"))
	require.Equal(t, before+1, listings(), "upstream listings for one clone")
	c.git(dst, "ls-remote", "origin")
	require.Equal(t, before+2, listings(), "upstream listings for one ls-remote")
}
