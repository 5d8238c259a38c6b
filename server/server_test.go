package server

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/git-relay/git-relay/internal/fuzztest"
	"github.com/git-relay/git-relay/internal/gittest"
	"github.com/git-relay/git-relay/internal/keyring"
	"github.com/git-relay/git-relay/internal/payload"
	"github.com/git-relay/git-relay/internal/seal"
	"github.com/git-relay/git-relay/internal/store"
	"github.com/git-relay/git-relay/internal/wire"
)

func TestMain(m *testing.M) { gittest.Main(m) }

// fixture is a relay over one upstream repository, acme/widgets, with a
// work repository that has two commits, the first pushed upstream.
type fixture struct {
	srv      *Server
	http     *httptest.Server
	client   *wire.Client
	key      keyring.Key
	upstream string // the bare repository
	work     string
	first    string // upstream's master
	second   string // the work repository's master, one commit on
	// lastChunk is the last chunk pushCut sent, to send again.
	lastChunk wire.Request
	// onOpen, if set, is told the id of each exchange pushCut opens.
	onOpen func(id string)
}

func newFixture(t *testing.T, cfg Config) *fixture {
	t.Helper()
	root := t.TempDir()
	up := filepath.Join(root, "up", "acme", "widgets.git")
	gittest.Git(t, root, "init", "-q", "--bare", "-b", "master", up)
	work := filepath.Join(root, "work")
	gittest.Git(t, root, "init", "-q", "-b", "master", work)
	require.NoError(t, os.WriteFile(filepath.Join(work, "a.txt"), []byte("a\n"), 0o644))
	gittest.Git(t, work, "add", ".")
	gittest.Git(t, work, "commit", "-qm", "first")
	gittest.Git(t, work, "push", "-q", up, "master")
	first := gittest.Git(t, work, "rev-parse", "master")
	require.NoError(t, os.WriteFile(filepath.Join(work, "b.txt"), []byte("b\n"), 0o644))
	gittest.Git(t, work, "add", ".")
	gittest.Git(t, work, "commit", "-qm", "second")

	key, err := keyring.Generate()
	require.NoError(t, err)
	cfg.DataDir = filepath.Join(root, "data")
	cfg.Ring = keyring.NewRing(key)
	cfg.Upstream = "file://" + filepath.Join(root, "up") + "/{repo}.git"
	s, err := New(cfg)
	require.NoError(t, err)
	hs := httptest.NewServer(s.Handler())
	t.Cleanup(func() {
		hs.Close()
		s.Close()
	})
	return &fixture{
		srv: s, http: hs, key: key, upstream: up, work: work, first: first,
		second: gittest.Git(t, work, "rev-parse", "master"),
		client: &wire.Client{Base: hs.URL + "/api/gr", Key: key, MaxBody: s.cfg.MaxBody, Retries: 2},
	}
}

func randomID(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// pushRaw pushes man and bundle as a client with the key may, whatever
// the helper would check first: the server must enforce its own rules.
// chunkSize 0 sends the payload inline.
func (f *fixture) pushRaw(t *testing.T, man wire.PushManifest, bundle []byte, chunkSize int) (*wire.Status, error) {
	t.Helper()
	return f.pushCut(t, man, bundle, chunkSize, func(uint32, int) int { return chunkSize })
}

// pushCut is pushRaw with chunk i cut to sizes(i, chunkSize) bytes.
func (f *fixture) pushCut(t *testing.T, man wire.PushManifest, bundle []byte, chunkSize int, sizes func(i uint32, chunkSize int) int) (*wire.Status, error) {
	t.Helper()
	js, err := json.Marshal(man)
	require.NoError(t, err)
	plain := append(binary.BigEndian.AppendUint32(nil, uint32(len(js))), js...)
	plain = append(plain, bundle...)
	o := wire.Open{V: wire.Version, ID: randomID(16), Kind: wire.KindPush, Repo: "acme/widgets", Salt: randomID(32),
		ChunkSize: chunkSize, MaxBody: f.client.MaxBody, Inline: chunkSize == 0}
	raw, err := json.Marshal(o)
	require.NoError(t, err)
	if f.onOpen != nil {
		f.onOpen(o.ID)
	}
	salt, _ := hex.DecodeString(o.Salt)
	st, err := seal.New(f.key, keyring.LabelUpload, salt, wire.Hash(raw))
	require.NoError(t, err)
	ctx := t.Context()
	if chunkSize == 0 {
		var status wire.Status
		_, err := f.client.Call(ctx, wire.Request{Method: "POST", Path: wire.PathOpen, Msg: json.RawMessage(raw),
			Tail: st.Seal(nil, 0, true, payload.Bytes(plain))}, &status)
		if err != nil {
			return nil, err
		}
		return f.outcome(t, o.ID, &status)
	}
	var status wire.Status
	if _, err := f.client.Call(ctx, wire.Request{Method: "POST", Path: wire.PathOpen, Msg: json.RawMessage(raw)}, &status); err != nil {
		return nil, err
	}
	free := make(chan []byte, 1)
	free <- make([]byte, 0, chunkSize+seal.Overhead)
	_, err = payload.SplitRamp(bytes.NewReader(plain), chunkSize, free, func(i uint32, final bool, c []byte) error {
		defer func() { free <- c[:0] }()
		q := url.Values{"id": {o.ID}, "i": {strconv.Itoa(int(i))}}
		if final {
			q.Set("final", "1")
		}
		req := wire.Request{Method: "PUT", Path: wire.PathUp, Query: q, Raw: st.Seal(c[:0], i, final, c)}
		_, err := f.client.Call(ctx, req, &status)
		req.Raw = bytes.Clone(req.Raw)
		f.lastChunk = req
		return err
	}, sizes)
	if err != nil {
		return nil, err
	}
	return f.outcome(t, o.ID, &status)
}

func (f *fixture) outcome(t *testing.T, id string, st *wire.Status) (*wire.Status, error) {
	for !wire.Ended(st.Phase) {
		if _, err := f.client.Call(t.Context(), wire.Request{Method: "GET", Path: wire.PathStatus, Query: url.Values{"id": {id}, "wait": {"1"}}}, st); err != nil {
			return nil, err
		}
	}
	return st, nil
}

func (f *fixture) bundle(t *testing.T, revs ...string) []byte {
	t.Helper()
	path := filepath.Join(t.TempDir(), "b.bundle")
	gittest.Git(t, f.work, append([]string{"bundle", "create", "-q", path}, revs...)...)
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	return b
}

// commitRandom commits size random bytes as name in the work
// repository and returns the commit.
func (f *fixture) commitRandom(t *testing.T, name string, size int) string {
	t.Helper()
	b := make([]byte, size)
	_, _ = rand.Read(b)
	require.NoError(t, os.WriteFile(filepath.Join(f.work, name), b, 0o644))
	gittest.Git(t, f.work, "add", ".")
	gittest.Git(t, f.work, "commit", "-qm", "add "+name)
	return gittest.Git(t, f.work, "rev-parse", "HEAD")
}

// requireLanded checks that a push went through and moved upstream's
// master to tip.
func (f *fixture) requireLanded(t *testing.T, st *wire.Status, err error, tip string) {
	t.Helper()
	require.NoError(t, err)
	require.Equal(t, wire.PhaseDone, st.Phase, st.Message)
	require.Equal(t, tip, f.upstreamMaster(t))
}

func (f *fixture) upstreamMaster(t *testing.T) string {
	return gittest.Git(t, f.work, "--git-dir", f.upstream, "rev-parse", "master")
}

func TestPushLands(t *testing.T) {
	f := newFixture(t, Config{})
	// Inline, in the request that opens the push.
	man := wire.PushManifest{Updates: []wire.Update{{Ref: "refs/heads/master", Old: f.first, New: f.second}}}
	st, err := f.pushRaw(t, man, f.bundle(t, "master", "^"+f.first), 0)
	require.NoError(t, err)
	require.Equal(t, wire.PhaseDone, st.Phase, st.Message)
	require.True(t, st.Results[0].OK)
	require.Equal(t, f.second, f.upstreamMaster(t))

	// In chunks.
	third := f.commitRandom(t, "big.bin", 200<<10)
	man = wire.PushManifest{Updates: []wire.Update{{Ref: "refs/heads/master", Old: f.second, New: third}}}
	st, err = f.pushRaw(t, man, f.bundle(t, "master", "^"+f.second), 64<<10-seal.Overhead)
	f.requireLanded(t, st, err, third)
}

// A client may cut its chunks smaller than their ramped size, to suit a
// slow link, but not below payload.MinChunk (but the final one), nor
// larger than ramped: a refused chunk names itself, and upstream is left
// as it was.
func TestChunkSizes(t *testing.T) {
	f := newFixture(t, Config{})
	tip := f.commitRandom(t, "big.bin", 1536<<10)
	man := wire.PushManifest{Updates: []wire.Update{{Ref: "refs/heads/master", Old: f.first, New: tip}}}
	bundle := f.bundle(t, "master", "^"+f.first)
	const chunkSize = 1 << 20
	cut := func(sizes ...int) func(uint32, int) int {
		return func(i uint32, chunkSize int) int {
			if int(i) < len(sizes) {
				return sizes[i]
			}
			return payload.Ramp(i, chunkSize)
		}
	}

	for _, c := range []struct {
		name  string
		sizes []int
		chunk string
	}{
		{"below the least", []int{256 << 10, payload.MinChunk - 1}, "chunk 1: "},
		{"above its ramped size", []int{256<<10 + 1}, "chunk 0: "},
	} {
		_, err := f.pushCut(t, man, bundle, chunkSize, cut(c.sizes...))
		require.ErrorContains(t, err, c.chunk, c.name)
		require.Equal(t, f.first, f.upstreamMaster(t), c.name)
	}

	st, err := f.pushCut(t, man, bundle, chunkSize, cut(256<<10, payload.MinChunk, 300<<10))
	f.requireLanded(t, st, err, tip)
}

// A chunk that comes again after its push has ended (the client was cut
// off, and the relay finished the push from the kept chunks while the
// client came back) is answered with the outcome, not refused: the client
// reports the push as git expects.
func TestChunkAfterTheEndGetsTheOutcome(t *testing.T) {
	f := newFixture(t, Config{})
	tip := f.commitRandom(t, "big.bin", 200<<10)
	man := wire.PushManifest{Updates: []wire.Update{{Ref: "refs/heads/master", Old: f.first, New: tip}}}
	st, err := f.pushRaw(t, man, f.bundle(t, "master", "^"+f.first), 64<<10-seal.Overhead)
	f.requireLanded(t, st, err, tip)

	var again wire.Status
	_, err = f.client.Call(t.Context(), f.lastChunk, &again)
	require.NoError(t, err)
	require.Equal(t, wire.PhaseDone, again.Phase)
	require.True(t, again.Results[0].OK)
	require.Equal(t, tip, f.upstreamMaster(t))
}

// The mirror takes what a push landed from the push itself, read again
// from its chunks (or its inline payload) once upstream has it, and the
// chunks go after that: a new branch pushed in chunks, then one commit
// inline whose fast-forward the pack itself proved.
func TestPushedPackReachesTheMirror(t *testing.T) {
	f := newFixture(t, Config{})
	m, err := f.srv.mirrors.get("acme/widgets")
	require.NoError(t, err)
	mirrorHas := func(ref, id string) {
		t.Helper()
		require.NoError(t, m.admitting.wait(t.Context()))
		require.Equal(t, id, gittest.Git(t, "", "--git-dir", m.dir, "rev-parse", ref))
		gittest.Git(t, "", "--git-dir", m.dir, "cat-file", "-e", id+"^{tree}")
		require.Eventually(t, func() bool {
			n := 0
			_ = f.srv.store.List(t.Context(), "up/", func(store.Info) error { n++; return nil })
			return n == 0
		}, 10*time.Second, 10*time.Millisecond, "the push's chunks are dropped once the mirror has its pack")
	}

	big := f.commitRandom(t, "big.bin", 700<<10)
	man := wire.PushManifest{Updates: []wire.Update{{Ref: "refs/heads/topic", Old: wire.ZeroID, New: big}}}
	st, err := f.pushRaw(t, man, f.bundle(t, "master", "^"+f.first), 256<<10)
	require.NoError(t, err)
	require.Equal(t, wire.PhaseDone, st.Phase, st.Message)
	mirrorHas("refs/heads/topic", big)

	small := f.commitRandom(t, "small.bin", 100)
	man = wire.PushManifest{Updates: []wire.Update{{Ref: "refs/heads/topic", Old: big, New: small}}}
	st, err = f.pushRaw(t, man, f.bundle(t, "master", "^"+big), 0)
	require.NoError(t, err)
	require.Equal(t, wire.PhaseDone, st.Phase, st.Message)
	mirrorHas("refs/heads/topic", small)
}

// The mirror keeps a multi-pack index with a reachability bitmap over
// its packs, written again after a push brings a pack in and after a
// fetch from upstream does.
func TestMirrorKeepsABitmap(t *testing.T) {
	f := newFixture(t, Config{})
	m, err := f.srv.mirrors.get("acme/widgets")
	require.NoError(t, err)
	packs := filepath.Join(m.objectDir(), "pack")
	covered := func() bool {
		midx, err := os.ReadFile(filepath.Join(packs, "multi-pack-index"))
		if err != nil {
			return false
		}
		bitmaps, _ := filepath.Glob(filepath.Join(packs, "multi-pack-index-*.bitmap"))
		idx, _ := filepath.Glob(filepath.Join(packs, "pack-*.idx"))
		for _, p := range idx {
			if !bytes.Contains(midx, []byte(filepath.Base(p))) {
				return false
			}
		}
		return len(bitmaps) == 1 && len(idx) > 0
	}
	usesBitmap := func(tip string) {
		t.Helper()
		// Fails without a bitmap, or with one that disagrees with a walk.
		gittest.Git(t, "", "--git-dir", m.dir, "rev-list", "--test-bitmap", tip)
	}

	big := f.commitRandom(t, "big.bin", 300<<10)
	man := wire.PushManifest{Updates: []wire.Update{{Ref: "refs/heads/master", Old: f.first, New: big}}}
	st, err := f.pushRaw(t, man, f.bundle(t, "master", "^"+f.first), 64<<10)
	f.requireLanded(t, st, err, big)
	require.Eventually(t, covered, 10*time.Second, 10*time.Millisecond, "the pushed pack is in the mirror's bitmap")
	usesBitmap(big)

	// Upstream moves without the relay; the mirror's refresh fetches.
	next := f.commitRandom(t, "next.bin", 1000)
	gittest.Git(t, f.work, "push", "-q", f.upstream, "master")
	_, err = f.srv.refresh(t.Context(), m, time.Now())
	require.NoError(t, err)
	require.Equal(t, next, gittest.Git(t, "", "--git-dir", m.dir, "rev-parse", "master"))
	require.Eventually(t, covered, 10*time.Second, 10*time.Millisecond, "the fetched pack is in the mirror's bitmap")
	usesBitmap(next)
}

// A refresh compares upstream's refs with the mirror's as the server last
// left them: after a push lands, the next refresh runs no git to list
// the mirror's refs, and fetches nothing; when upstream moves without the
// relay, it fetches.
func TestMirrorRefsAreKnown(t *testing.T) {
	f := newFixture(t, Config{})
	m, err := f.srv.mirrors.get("acme/widgets")
	require.NoError(t, err)
	trace := filepath.Join(t.TempDir(), "trace")
	m.git.Env = append(m.git.Env, "GIT_TRACE2_EVENT="+trace)
	// runs counts the gits the mirror ran whose first word is cmd.
	runs := func(cmd string) int {
		b, _ := os.ReadFile(trace)
		return strings.Count(string(b), `"argv":["git","`+cmd+`"`) + strings.Count(string(b), `"fetch.unpackLimit=1","`+cmd+`"`)
	}
	refresh := func() {
		t.Helper()
		require.NoError(t, m.admitting.wait(t.Context()))
		_, err := f.srv.refresh(t.Context(), m, time.Now())
		require.NoError(t, err)
	}
	mirrorMaster := func() string { return gittest.Git(t, "", "--git-dir", m.dir, "rev-parse", "master") }

	refresh() // a new mirror: listed, fetched
	refresh() // listed again after the fetch
	require.Equal(t, f.first, mirrorMaster())
	lists, fetches := runs("for-each-ref"), runs("fetch")
	require.Equal(t, 1, fetches)

	man := wire.PushManifest{Updates: []wire.Update{{Ref: "refs/heads/master", Old: f.first, New: f.second}}}
	st, err := f.pushRaw(t, man, f.bundle(t, "master", "^"+f.first), 0)
	f.requireLanded(t, st, err, f.second)
	refresh()
	require.Equal(t, f.second, mirrorMaster())
	require.Equal(t, lists, runs("for-each-ref"), "the mirror's refs were known")
	require.Equal(t, fetches, runs("fetch"), "the mirror had the push")

	third := f.commitRandom(t, "c.bin", 100)
	gittest.Git(t, f.work, "push", "-q", f.upstream, "master")
	refresh()
	require.Equal(t, third, mirrorMaster())
	require.Equal(t, fetches+1, runs("fetch"))
}

// heldStore is a folder store whose writes of one key wait until
// released.
type heldStore struct {
	store.Store
	key     atomic.Pointer[string]
	reached chan struct{} // closed when the write of key begins
	release chan struct{}
}

func (h *heldStore) Put(ctx context.Context, key string, data []byte, opt store.PutOptions) (store.ETag, error) {
	if k := h.key.Load(); k != nil && key == *k {
		close(h.reached)
		<-h.release
	}
	return h.Store.Put(ctx, key, data, opt)
}

// A chunk goes upstream as soon as it has authenticated, while it is
// being stored: the push lands while the final chunk's write to the store
// has yet to finish, and that chunk's request then answers the outcome.
func TestChunksStreamWhileTheyAreStored(t *testing.T) {
	local, err := store.NewLocal(t.TempDir())
	require.NoError(t, err)
	held := &heldStore{Store: local, reached: make(chan struct{}), release: make(chan struct{})}
	f := newFixture(t, Config{Store: held, Instance: "local"})
	tip := f.commitRandom(t, "big.bin", 400<<10)
	man := wire.PushManifest{Updates: []wire.Update{{Ref: "refs/heads/master", Old: f.first, New: tip}}}
	b := f.bundle(t, "master", "^"+f.first)
	// The final chunk is chunk 1: held is told its key once the push's
	// exchange id is known (see below).
	type result struct {
		st  *wire.Status
		err error
	}
	done := make(chan result, 1)
	f.onOpen = func(id string) {
		k := upKey(id, 1)
		held.key.Store(&k)
	}
	go func() {
		st, err := f.pushRaw(t, man, b, 256<<10)
		done <- result{st, err}
	}()
	release := sync.OnceFunc(func() { close(held.release) })
	t.Cleanup(release) // before the server's: its handlers wait for it
	<-held.reached
	require.Eventually(t, func() bool { return f.upstreamMaster(t) == tip }, 10*time.Second, 5*time.Millisecond,
		"the push lands while its final chunk is being stored")
	release()
	r := <-done
	f.requireLanded(t, r.st, r.err, tip)
}

// A key holder's own client sends a bundle that replaces master with an
// unrelated root, without force: the server checks ancestry against the
// objects themselves and refuses it before upstream can complete the
// pack; upstream is untouched, with no new object in its store.
func TestNonFastForwardBundleIsRefusedWithoutForce(t *testing.T) {
	for _, allow := range []bool{false, true} {
		t.Run(fmt.Sprintf("allow-force=%v", allow), func(t *testing.T) {
			f := newFixture(t, Config{AllowForce: allow})
			gittest.Git(t, f.work, "checkout", "-q", "--orphan", "other")
			require.NoError(t, os.WriteFile(filepath.Join(f.work, "c.txt"), []byte("unrelated\n"), 0o644))
			gittest.Git(t, f.work, "add", ".")
			gittest.Git(t, f.work, "commit", "-qm", "unrelated root")
			root := gittest.Git(t, f.work, "rev-parse", "HEAD")
			before := countObjects(t, f.upstream)
			for _, force := range []bool{false, true} {
				man := wire.PushManifest{Updates: []wire.Update{{Ref: "refs/heads/master", Old: f.first, New: root, Force: force}}}
				st, err := f.pushRaw(t, man, f.bundle(t, "other"), 0)
				if !force || !allow {
					// Refused: by the ancestry check in the quarantine,
					// once the pack is indexed, before upstream may
					// complete it.
					require.NoError(t, err)
					require.Equal(t, wire.PhaseFailed, st.Phase)
					if force {
						require.Contains(t, st.Message, "forced updates are refused")
					} else {
						require.Contains(t, st.Message, "non-fast forward")
					}
					require.Equal(t, f.first, f.upstreamMaster(t))
					require.Equal(t, before, countObjects(t, f.upstream), "no object reached upstream's store")
					continue
				}
				require.NoError(t, err)
				require.Equal(t, wire.PhaseDone, st.Phase, st.Message)
				require.True(t, st.Results[0].OK, st.Results[0].String())
				require.Equal(t, root, f.upstreamMaster(t))
			}
		})
	}
}

// A commit whose "parent" line comes after its author line is not a
// child of that parent for git: the relay must not take it for one when it
// reads a small pack's commits itself (packAncestry).
func TestMisplacedParentLineIsNoFastForward(t *testing.T) {
	f := newFixture(t, Config{})
	tree := gittest.Git(t, f.work, "rev-parse", "master^{tree}")
	crafted := fmt.Sprintf("tree %s\nauthor A <a@example.com> 1 +0000\ncommitter A <a@example.com> 1 +0000\nparent %s\n\nnot a child\n", tree, f.first)
	out, err := gittest.Repo(t, filepath.Join(f.work, ".git")).RunInput(t.Context(), strings.NewReader(crafted), "hash-object", "-t", "commit", "-w", "--stdin", "--literally")
	require.NoError(t, err)
	fake := strings.TrimSpace(out)
	gittest.Git(t, f.work, "branch", "fake", fake)
	before := countObjects(t, f.upstream)
	man := wire.PushManifest{Updates: []wire.Update{{Ref: "refs/heads/master", Old: f.first, New: fake}}}
	st, err := f.pushRaw(t, man, f.bundle(t, "fake", "^"+f.first), 0)
	require.NoError(t, err)
	require.Equal(t, wire.PhaseFailed, st.Phase)
	require.Contains(t, st.Message, "non-fast forward")
	require.Equal(t, f.first, f.upstreamMaster(t))
	require.Equal(t, before, countObjects(t, f.upstream), "no object reached upstream's store")
}

// countObjects counts the objects in a repository's store, packed or not.
func countObjects(t *testing.T, gitDir string) string {
	out := gittest.Git(t, "", "--git-dir", gitDir, "count-objects", "-v")
	var count, inPack string
	for _, l := range strings.Split(out, "\n") {
		if v, ok := strings.CutPrefix(l, "count: "); ok {
			count = v
		}
		if v, ok := strings.CutPrefix(l, "in-pack: "); ok {
			inPack = v
		}
	}
	return count + "+" + inPack
}

func TestOpenRefusesNumbersThatWouldOverflow(t *testing.T) {
	f := newFixture(t, Config{})
	for _, size := range []int{9223372036854775800, -1 << 62, 1} {
		o := wire.Open{V: wire.Version, ID: randomID(16), Kind: wire.KindPush, Repo: "acme/widgets", Salt: randomID(32), ChunkSize: size, MaxBody: wire.DefaultMaxBody}
		raw, _ := json.Marshal(o)
		_, err := f.client.Call(t.Context(), wire.Request{Method: "POST", Path: wire.PathOpen, Msg: json.RawMessage(raw)}, nil)
		var api *wire.APIError
		require.ErrorAs(t, err, &api, "chunk size %d", size)
		require.Contains(t, []string{wire.CodeTooLarge, wire.CodeBadRequest}, api.Code)
	}
	// A chunk index past the push size limit is refused before anything
	// is computed with it.
	o := wire.Open{V: wire.Version, ID: randomID(16), Kind: wire.KindPush, Repo: "acme/widgets", Salt: randomID(32), ChunkSize: 64 << 10, MaxBody: wire.DefaultMaxBody}
	raw, _ := json.Marshal(o)
	_, err := f.client.Call(t.Context(), wire.Request{Method: "POST", Path: wire.PathOpen, Msg: json.RawMessage(raw)}, nil)
	require.NoError(t, err)
	_, err = f.client.Call(t.Context(), wire.Request{Method: "PUT", Path: wire.PathUp, Query: url.Values{"id": {o.ID}, "i": {"4294967295"}}, Raw: make([]byte, 64<<10+seal.Overhead)}, nil)
	var api *wire.APIError
	require.ErrorAs(t, err, &api)
	require.Equal(t, wire.CodeTooLarge, api.Code)
}

// Requests without the key are answered from their headers: no byte of
// body is read, whatever length they declare.
func TestUnauthenticatedBodiesAreNotRead(t *testing.T) {
	f := newFixture(t, Config{})
	conn, err := net.Dial("tcp", strings.TrimPrefix(f.http.URL, "http://"))
	require.NoError(t, err)
	defer conn.Close()
	fmt.Fprintf(conn, "POST /api/gr/x HTTP/1.1\r\nHost: relay\r\nAuthorization: GR3-HMAC-SHA256 kid=01020304,ts=%d,nonce=0123456789abcdef0123,len=4500000,sig=00\r\nContent-Length: 4500000\r\n\r\n", time.Now().UnixMilli())
	// Not one byte of the body is sent; the answer comes anyway.
	require.NoError(t, conn.SetReadDeadline(time.Now().Add(10*time.Second)))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	require.NoError(t, err)
	require.Equal(t, http.StatusUnauthorized, resp.StatusCode)
	require.Empty(t, resp.Header.Get(wire.HeaderSignature))
}

func TestLimitsPerKey(t *testing.T) {
	f := newFixture(t, Config{MaxSessions: 2, MaxKeyBytes: 200 << 10})
	open := func() (wire.Open, error) {
		o := wire.Open{V: wire.Version, ID: randomID(16), Kind: wire.KindPush, Repo: "acme/widgets", Salt: randomID(32), ChunkSize: 64<<10 - seal.Overhead, MaxBody: wire.DefaultMaxBody}
		raw, _ := json.Marshal(o)
		_, err := f.client.Call(t.Context(), wire.Request{Method: "POST", Path: wire.PathOpen, Msg: json.RawMessage(raw)}, nil)
		return o, err
	}
	a, err := open()
	require.NoError(t, err)
	_, err = open()
	require.NoError(t, err)
	// At the limit, the longest-idle exchange gives way.
	_, err = open()
	require.NoError(t, err)
	var st wire.Status
	_, err = f.client.Call(t.Context(), wire.Request{Method: "GET", Path: wire.PathStatus, Query: url.Values{"id": {a.ID}}}, &st)
	require.NoError(t, err)
	require.Equal(t, wire.PhaseCancelled, st.Phase)
	require.Contains(t, st.Message, "pushed out")

	// Bytes: the key's budget stops an upload with a message that says so.
	f2 := newFixture(t, Config{MaxKeyBytes: 100 << 10})
	big := make([]byte, 300<<10)
	_, _ = rand.Read(big)
	require.NoError(t, os.WriteFile(filepath.Join(f2.work, "big.bin"), big, 0o644))
	gittest.Git(t, f2.work, "add", ".")
	gittest.Git(t, f2.work, "commit", "-qm", "big")
	tip := gittest.Git(t, f2.work, "rev-parse", "HEAD")
	_, err = f2.pushRaw(t, wire.PushManifest{Updates: []wire.Update{{Ref: "refs/heads/master", Old: f2.first, New: tip}}},
		f2.bundle(t, "master", "^"+f2.first), 64<<10-seal.Overhead)
	var api *wire.APIError
	require.ErrorAs(t, err, &api)
	require.Equal(t, wire.CodeLimit, api.Code)
	require.Contains(t, api.Msg, "this key's unfinished exchanges hold")
	require.Equal(t, f2.first, gittest.Git(t, f2.work, "--git-dir", f2.upstream, "rev-parse", "master"))
}

func TestCancelEndsAnExchange(t *testing.T) {
	f := newFixture(t, Config{})
	o := wire.Open{V: wire.Version, ID: randomID(16), Kind: wire.KindPush, Repo: "acme/widgets", Salt: randomID(32), ChunkSize: 64 << 10, MaxBody: wire.DefaultMaxBody}
	raw, _ := json.Marshal(o)
	_, err := f.client.Call(t.Context(), wire.Request{Method: "POST", Path: wire.PathOpen, Msg: json.RawMessage(raw)}, nil)
	require.NoError(t, err)
	var st wire.Status
	_, err = f.client.Call(t.Context(), wire.Request{Method: "POST", Path: wire.PathCancel, Query: url.Values{"id": {o.ID}}}, &st)
	require.NoError(t, err)
	require.Equal(t, wire.PhaseCancelled, st.Phase)
	// Opening it again is the same, cancelled, exchange: never a new one.
	_, err = f.client.Call(t.Context(), wire.Request{Method: "POST", Path: wire.PathOpen, Msg: json.RawMessage(raw)}, &st)
	require.NoError(t, err)
	require.Equal(t, wire.PhaseCancelled, st.Phase)
}

// The answers that say anything about a repository are sealed: the bytes
// on the wire name no repository, ref or id.
func TestAnswersAreSealed(t *testing.T) {
	f := newFixture(t, Config{})
	o := wire.Open{V: wire.Version, ID: randomID(16), Kind: wire.KindRefs, Repo: "acme/widgets", Salt: randomID(32), MaxBody: wire.DefaultMaxBody}
	raw, _ := json.Marshal(o)
	var st wire.Status
	tail, err := f.client.Call(t.Context(), wire.Request{Method: "POST", Path: wire.PathOpen, Msg: json.RawMessage(raw)}, &st)
	require.NoError(t, err)
	plain, err := payload.Unbytes(tail, 1<<20)
	require.NoError(t, err)
	require.Contains(t, string(plain), f.first+" refs/heads/master", "the listing itself")
	// The same answer as it crosses the wire.
	sealed, err := f.client.Get(t.Context(), wire.Request{Method: "POST", Path: wire.PathOpen, Msg: json.RawMessage(raw)})
	require.NoError(t, err)
	for _, secret := range []string{"acme", "widgets", "refs/heads", f.first} {
		require.NotContains(t, string(sealed), secret)
	}
}

// recordLength keeps the Content-Length of each answer.
type recordLength struct{ lengths []int64 }

func (r *recordLength) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := http.DefaultTransport.RoundTrip(req)
	if err == nil {
		r.lengths = append(r.lengths, resp.ContentLength)
	}
	return resp, err
}

// TestAnswersDeclareTheirLength: an answer (a listing here, a download
// chunk alike) says how long it is, so that an edge can refuse one over
// its limit before streaming it, rather than coming chunked.
func TestAnswersDeclareTheirLength(t *testing.T) {
	f := newFixture(t, Config{})
	for i := range 60 {
		gittest.Git(t, f.upstream, "update-ref", fmt.Sprintf("refs/tags/v%d", i), f.first)
	}
	rec := &recordLength{}
	f.client.HTTP = &http.Client{Transport: rec}
	o := wire.Open{V: wire.Version, ID: randomID(16), Kind: wire.KindRefs, Repo: "acme/widgets", Salt: randomID(32), MaxBody: wire.DefaultMaxBody}
	raw, _ := json.Marshal(o)
	sealed, err := f.client.Get(t.Context(), wire.Request{Method: "POST", Path: wire.PathOpen, Msg: json.RawMessage(raw)})
	require.NoError(t, err)
	require.Greater(t, len(sealed), 2048, "larger than net/http's buffer, which it would send chunked")
	require.Equal(t, []int64{int64(len(sealed))}, rec.lengths)
}

// TestPushOfNamesGitAccepts: a branch whose name git accepts but go-git's
// stricter rule did not ("refs/heads/-x") lands, as it does with git push,
// instead of failing the whole push after its upload.
func TestPushOfNamesGitAccepts(t *testing.T) {
	f := newFixture(t, Config{})
	man := wire.PushManifest{Updates: []wire.Update{{Ref: "refs/heads/-x", Old: wire.ZeroID, New: f.second}}}
	st, err := f.pushRaw(t, man, f.bundle(t, "master", "^"+f.first), 0)
	require.NoError(t, err)
	require.Equal(t, wire.PhaseDone, st.Phase, st.Message)
	require.True(t, st.Results[0].OK, "%+v", st.Results)
	require.Equal(t, f.second, gittest.Git(t, f.work, "--git-dir", f.upstream, "rev-parse", "--verify", "refs/heads/-x"))
}

// TestReadManifestAllocatesWhatComes: a manifest that claims 256 MiB but
// ends after a few bytes costs what came, not what it claimed.
func TestReadManifestAllocatesWhatComes(t *testing.T) {
	in := append(binary.BigEndian.AppendUint32(nil, maxManifest), `{"updates":[`...)
	var err error
	allocated := fuzztest.Allocated(func() {
		_, err = readManifest(bufio.NewReader(bytes.NewReader(in)), 10)
	})
	require.ErrorIs(t, err, io.ErrUnexpectedEOF)
	require.Less(t, allocated, uint64(1<<20))

	// A manifest that is all there reads, and the bundle after it stays.
	js := `{"updates":[{"ref":"refs/heads/x","old":"` + wire.ZeroID + `","new":"` + strings.Repeat("1", 40) + `"}]}`
	br := bufio.NewReader(bytes.NewReader(append(append(binary.BigEndian.AppendUint32(nil, uint32(len(js))), js...), "# v2 git bundle\n"...)))
	m, err := readManifest(br, 10)
	require.NoError(t, err)
	require.Equal(t, "refs/heads/x", m.Updates[0].Ref)
	rest, err := io.ReadAll(br)
	require.NoError(t, err)
	require.Equal(t, "# v2 git bundle\n", string(rest))
}

// TestQuarantineDebrisIsDropped: a pushed pack on its way into a mirror,
// and the lock files of ref updates, that a stopped server left behind
// are removed when the mirror is next used; those made since this server
// started stay.
func TestQuarantineDebrisIsDropped(t *testing.T) {
	f := newFixture(t, Config{})
	m, err := f.srv.mirrors.get("acme/widgets")
	require.NoError(t, err)
	require.NoError(t, f.srv.ensureMirror(t.Context(), m))
	old := filepath.Join(m.objectDir(), "incoming-old")
	require.NoError(t, os.MkdirAll(filepath.Join(old, "pack"), 0o700))
	require.NoError(t, os.WriteFile(filepath.Join(old, "pushed.pack"), []byte("PACK"), 0o600))
	before := f.srv.verifier.Start.Add(-time.Minute)
	require.NoError(t, os.Chtimes(old, before, before))
	q, err := m.newQuarantine()
	require.NoError(t, err)
	defer q.drop()
	// Lock files of a ref update cut short by the stop, and one taken
	// since.
	oldLocks := []string{filepath.Join(m.dir, "refs", "heads", "master.lock"), filepath.Join(m.dir, "HEAD.lock"), filepath.Join(m.dir, "packed-refs.lock")}
	for _, l := range oldLocks {
		require.NoError(t, os.MkdirAll(filepath.Dir(l), 0o700))
		require.NoError(t, os.WriteFile(l, nil, 0o600))
		require.NoError(t, os.Chtimes(l, before, before))
	}
	newLock := filepath.Join(m.dir, "refs", "tags", "v1.lock")
	require.NoError(t, os.MkdirAll(filepath.Dir(newLock), 0o700))
	require.NoError(t, os.WriteFile(newLock, nil, 0o600))

	// A new server process starts with no mirror in memory.
	f.srv.mirrors.mu.Lock()
	delete(f.srv.mirrors.m, "acme/widgets")
	f.srv.mirrors.mu.Unlock()
	_, err = f.srv.mirrors.get("acme/widgets")
	require.NoError(t, err)
	require.NoDirExists(t, old)
	require.DirExists(t, q.dir)
	for _, l := range oldLocks {
		require.NoFileExists(t, l)
	}
	require.FileExists(t, newLock)
}

// A final chunk waits for its push to land without keeping a request
// body's place (Config.MaxBodies): with room for one body at a time,
// another exchange's chunk goes in while the first push waits upstream.
func TestWaitingFinalChunkHoldsNoBody(t *testing.T) {
	f := newFixture(t, Config{MaxBodies: 1})
	dir := t.TempDir()
	reached, release := filepath.Join(dir, "reached"), filepath.Join(dir, "release")
	require.NoError(t, syscall.Mkfifo(reached, 0o600))
	require.NoError(t, syscall.Mkfifo(release, 0o600))
	hook := fmt.Sprintf("#!/bin/sh\necho >%q\nread x <%q\n", reached, release)
	require.NoError(t, os.WriteFile(filepath.Join(f.upstream, "hooks", "pre-receive"), []byte(hook), 0o755))
	// Opened for reading and writing, a FIFO never blocks its opener: the
	// hook goes on however the test ends.
	gate, err := os.OpenFile(release, os.O_RDWR, 0)
	require.NoError(t, err)
	t.Cleanup(func() { _, _ = gate.WriteString("go\n"); gate.Close() })

	type result struct {
		st  *wire.Status
		err error
	}
	done := make(chan result, 1)
	man := wire.PushManifest{Updates: []wire.Update{{Ref: "refs/heads/master", Old: f.first, New: f.second}}}
	go func() {
		st, err := f.pushRaw(t, man, f.bundle(t, "master", "^"+f.first), 64<<10)
		done <- result{st, err}
	}()
	_, err = os.ReadFile(reached) // the push is in upstream's hook, its final chunk waiting
	require.NoError(t, err)

	// Well within the 10 s a body waits for its place before the relay
	// answers that it is busy.
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	size := 64<<10 - seal.Overhead
	o := wire.Open{V: wire.Version, ID: randomID(16), Kind: wire.KindPush, Repo: "acme/widgets", Salt: randomID(32), ChunkSize: size, MaxBody: f.client.MaxBody}
	raw, err := json.Marshal(o)
	require.NoError(t, err)
	_, err = f.client.Call(ctx, wire.Request{Method: "POST", Path: wire.PathOpen, Msg: json.RawMessage(raw)}, nil)
	require.NoError(t, err, "another exchange opens while the push waits upstream")
	salt, _ := hex.DecodeString(o.Salt)
	st, err := seal.New(f.key, keyring.LabelUpload, salt, wire.Hash(raw))
	require.NoError(t, err)
	chunk := make([]byte, size)
	_, err = f.client.Call(ctx, wire.Request{Method: "PUT", Path: wire.PathUp, Query: url.Values{"id": {o.ID}, "i": {"0"}},
		Raw: st.Seal(nil, 0, false, chunk)}, nil)
	require.NoError(t, err, "a chunk of another exchange goes in while the push waits upstream")

	_, err = gate.WriteString("go\n")
	require.NoError(t, err)
	r := <-done
	f.requireLanded(t, r.st, r.err, f.second)
}

// TestFirstUploadChunkComesWithTheOpen: a push's first chunk may come
// with its Open, and is taken as x/up takes it: a chunk altered on the
// way is refused, the same Open sent again (its answer lost, or the push
// resumed) finds the chunk held, and the push lands with the rest sent
// through x/up. Only a chunked upload's Open says so, and a tail after
// an Open that says nothing of it is refused. A listing for a push says
// the relay takes the chunk; another listing does not.
func TestFirstUploadChunkComesWithTheOpen(t *testing.T) {
	f := newFixture(t, Config{})
	tip := f.commitRandom(t, "big.bin", 1<<20)
	man := wire.PushManifest{Updates: []wire.Update{{Ref: "refs/heads/master", Old: f.first, New: tip}}}
	js, err := json.Marshal(man)
	require.NoError(t, err)
	plain := append(binary.BigEndian.AppendUint32(nil, uint32(len(js))), js...)
	plain = append(plain, f.bundle(t, "master", "^"+f.first)...)

	const chunkSize = 256 << 10
	o := wire.Open{V: wire.Version, ID: randomID(16), Kind: wire.KindPush, Repo: "acme/widgets", Salt: randomID(32),
		ChunkSize: chunkSize, MaxBody: f.client.MaxBody, First: true}
	raw, err := json.Marshal(o)
	require.NoError(t, err)
	salt, _ := hex.DecodeString(o.Salt)
	up, err := seal.New(f.key, keyring.LabelUpload, salt, wire.Hash(raw))
	require.NoError(t, err)
	var sealed [][]byte
	free := make(chan []byte, 1)
	free <- nil
	_, err = payload.SplitRamp(bytes.NewReader(plain), chunkSize, free, func(i uint32, final bool, c []byte) error {
		sealed = append(sealed, up.Seal(nil, i, final, c))
		free <- c[:0]
		return nil
	}, func(uint32, int) int { return chunkSize })
	require.NoError(t, err)
	require.Greater(t, len(sealed), 2)

	ctx := t.Context()
	open := func(tail []byte) (wire.Status, error) {
		var st wire.Status
		_, err := f.client.Call(ctx, wire.Request{Method: "POST", Path: wire.PathOpen, Msg: json.RawMessage(raw), Tail: tail}, &st)
		return st, err
	}
	altered := bytes.Clone(sealed[0])
	altered[len(altered)/2] ^= 1
	_, err = open(altered)
	var api *wire.APIError
	require.ErrorAs(t, err, &api)
	require.Equal(t, wire.CodeBadRequest, api.Code)
	require.Contains(t, api.Msg, "chunk 0")

	st, err := open(sealed[0])
	require.NoError(t, err)
	require.Equal(t, wire.PhaseReceiving, st.Phase)
	st, err = open(nil)
	require.NoError(t, err)
	require.Equal(t, []uint32{0}, st.Held, "the first chunk is held")

	for i := 1; i < len(sealed); i++ {
		q := url.Values{"id": {o.ID}, "i": {strconv.Itoa(i)}}
		if i == len(sealed)-1 {
			q.Set("final", "1")
		}
		_, err := f.client.Call(ctx, wire.Request{Method: "PUT", Path: wire.PathUp, Query: q, Raw: sealed[i]}, &st)
		require.NoError(t, err)
	}
	out, err := f.outcome(t, o.ID, &st)
	f.requireLanded(t, out, err, tip)

	// What an Open may not say.
	for name, o := range map[string]wire.Open{
		"a tail it does not announce": {Kind: wire.KindPush, ChunkSize: chunkSize},
		"a first chunk inline":        {Kind: wire.KindPush, Inline: true, First: true},
	} {
		o.V, o.ID, o.Repo, o.Salt, o.MaxBody = wire.Version, randomID(16), "acme/widgets", randomID(32), f.client.MaxBody
		raw, _ := json.Marshal(o)
		_, err := f.client.Call(ctx, wire.Request{Method: "POST", Path: wire.PathOpen, Msg: json.RawMessage(raw), Tail: sealed[0]}, nil)
		require.ErrorAs(t, err, &api, name)
		require.Equal(t, wire.CodeBadRequest, api.Code, name)
	}

	_, lst, _ := f.openRead(t, wire.Open{Kind: wire.KindRefs, Push: true}, "")
	require.True(t, lst.UpFirst, "a listing for a push says the relay takes a first chunk with the Open")
	_, lst, _ = f.openRead(t, wire.Open{Kind: wire.KindRefs}, "")
	require.False(t, lst.UpFirst)
}
