package helper

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/pem"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/git-relay/git-relay/internal/bundle"
	"github.com/git-relay/git-relay/internal/gittest"
	"github.com/git-relay/git-relay/internal/keyring"
	"github.com/git-relay/git-relay/internal/payload"
	"github.com/git-relay/git-relay/internal/seal"
	"github.com/git-relay/git-relay/internal/shape"
	"github.com/git-relay/git-relay/internal/wire"
	"github.com/git-relay/git-relay/server"
)

// setup makes an upstream with one commit, a relay server in front of it,
// and a local clone configured for the relay; it returns the clone's dir.
func setup(t *testing.T) (work, upstream string) {
	t.Helper()
	return setupLink(t, shape.Link{}, nil)
}

// setupLink is setup with the link to the relay shaped in the upload
// direction, and watch (when set) seeing every request before the relay.
func setupLink(t *testing.T, up shape.Link, watch func(*http.Request)) (work, upstream string) {
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
	h := s.Handler()
	if watch != nil {
		inner := h
		h = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			watch(r)
			inner.ServeHTTP(w, r)
		})
	}
	hs := httptest.NewUnstartedServer(h)
	hs.Listener = shape.Listener(hs.Listener, up, shape.Link{})
	hs.Start()
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

// TestTLSRootsLoadAhead: over https with the system's roots, the helper
// starts loading them as it starts; over http, or with a CA file of its
// own, it leaves that to the client it builds.
func TestTLSRootsLoadAhead(t *testing.T) {
	_, _ = setup(t)
	t.Setenv("GIT_SSL_CAINFO", "")
	calls := 0
	old := warmRoots
	warmRoots = func() { calls++ }
	t.Cleanup(func() { warmRoots = old })

	_, err := newHelper(context.Background(), "x", "http://edge.example/api/game/acme/widgets", &bytes.Buffer{})
	require.NoError(t, err)
	require.Zero(t, calls, "http needs no roots")

	_, err = newHelper(context.Background(), "x", "https://edge.example/api/game/acme/widgets", &bytes.Buffer{})
	require.NoError(t, err)
	require.Equal(t, 1, calls, "https loads the system's roots ahead")

	// With a CA file the roots are read at once, the file's added to them.
	srv := httptest.NewTLSServer(http.NotFoundHandler())
	srv.Close()
	ca := filepath.Join(t.TempDir(), "ca.pem")
	pemBytes := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	require.NoError(t, os.WriteFile(ca, pemBytes, 0o600))
	t.Setenv("GIT_SSL_CAINFO", ca)
	_, err = newHelper(context.Background(), "x", "https://edge.example/api/game/acme/widgets", &bytes.Buffer{})
	require.NoError(t, err)
	require.Equal(t, 1, calls, "a CA file is read with the roots, not ahead")
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

// On a link that limits the rate, the helper cuts its upload into chunks
// of about chunkTime of that rate rather than full ones, so that the
// relay, which passes a chunk on once it is whole, lags little behind;
// the push lands all the same.
func TestSlowLinkGetsSmallerChunks(t *testing.T) {
	var mu sync.Mutex
	sizes := map[int]int64{} // chunk index: body bytes
	finalAt := -1
	work, upstream := setupLink(t, shape.Link{Rate: 40 * shape.Mbit}, func(r *http.Request) {
		if r.Method != http.MethodPut {
			return
		}
		i, err := strconv.Atoi(r.URL.Query().Get("i"))
		require.NoError(t, err)
		mu.Lock()
		defer mu.Unlock()
		sizes[i] = r.ContentLength
		if r.URL.Query().Get("final") == "1" {
			finalAt = i
		}
	})
	big := make([]byte, 6<<20) // more than one request's worth
	_, _ = rand.Read(big)
	require.NoError(t, os.WriteFile(filepath.Join(work, "big.bin"), big, 0o644))
	gittest.Git(t, work, "add", ".")
	gittest.Git(t, work, "commit", "-qm", "big")
	out, stderr, err := talk(t, "acme/widgets", "list for-push\npush refs/heads/master:refs/heads/master\n\n")
	require.NoError(t, err, stderr)
	require.Contains(t, out, "ok refs/heads/master\n")
	require.Equal(t, gittest.Git(t, work, "rev-parse", "master"), gittest.Git(t, work, "--git-dir", upstream, "rev-parse", "master"))

	mu.Lock()
	defer mu.Unlock()
	require.Greater(t, finalAt, 2, "chunk sizes %v", sizes)
	for i := 2; i < finalAt; i++ {
		// 40 Mbit/s is 5 MB/s: chunks of about 1 MB, not 4 (the kernel's
		// buffers can make a chunk look faster than the link).
		require.Less(t, sizes[i], int64(3<<20), "chunk %d of %v", i, sizes)
		require.GreaterOrEqual(t, sizes[i], int64(minCutChunk), "chunk %d of %v", i, sizes)
	}
}

func TestChunkSizer(t *testing.T) {
	const size = 4 << 20
	stop := make(chan struct{})
	s := newChunkSizer(stop, nil)
	// The first chunks double from 256 KiB, with no wait while no
	// measurement could cut them smaller.
	require.Equal(t, []int{256 << 10, 512 << 10, 1 << 20}, []int{s.size(0, size), s.size(1, size), s.size(2, size)})

	// Chunk 3 waits for chunk 1's answer (without it, it would be 2 MiB):
	// 1 MiB answered after 2 s is 0.5 MiB/s, and a chunk is never cut
	// below minCutChunk.
	got := make(chan int)
	go func() { got <- s.size(3, size) }()
	s.settle(1, 1<<20, time.Now().Add(-2*time.Second))
	require.Equal(t, minCutChunk, <-got)

	// A fast link: full chunks.
	s.settle(2, 64<<20, time.Now().Add(-time.Second))
	require.Equal(t, size, s.size(4, size))

	// In between: about chunkTime of the rate. The body of chunk 3 began
	// once chunk 2's had gone, not when its request did.
	now := time.Now()
	s.now = func() time.Time { return now }
	s.sent(2)
	now = now.Add(time.Second)
	s.settle(3, 10<<20, now.Add(-time.Hour))
	require.Equal(t, int(float64(10<<20)*chunkTime.Seconds()), s.size(5, size))

	// Sizes an interrupted run cut to come out the same.
	r := newChunkSizer(stop, []int{256 << 10, 300 << 10, 2 << 20})
	require.Equal(t, []int{256 << 10, 300 << 10, 2 << 20}, []int{r.size(0, size), r.size(1, size), r.size(2, size)})

	// The splitter's end ends a wait.
	close(stop)
	require.Equal(t, payload.Cut(5, size), r.size(5, size))
}

func TestPushResumeRecordsSizes(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "push-x")
	p, err := newPushResume(dir, []byte("open"))
	require.NoError(t, err)
	st, err := seal.NewWithKey(make([]byte, 32), [32]byte{1})
	require.NoError(t, err)
	tag := func(i uint32, plain []byte) []byte {
		sealed := st.Seal(nil, i, false, plain)
		return sealed[len(sealed)-seal.Overhead:]
	}
	chunks := [][]byte{make([]byte, 256<<10), make([]byte, 1<<20), make([]byte, 300<<10)}
	for i, c := range chunks {
		same, err := p.record(uint32(i), len(c), tag(uint32(i), c))
		require.NoError(t, err)
		require.False(t, same)
	}
	p.f.Close()
	got := findPushResume(dir)
	require.NotNil(t, got)
	require.Equal(t, []byte("open"), got.open)
	require.Equal(t, []int{256 << 10, 1 << 20, 300 << 10}, got.cutTo())
	same, err := got.record(1, len(chunks[1]), tag(1, chunks[1]))
	require.NoError(t, err)
	require.True(t, same)
	// The same size, one byte different: another chunk.
	other := bytes.Clone(chunks[2])
	other[len(other)/2] ^= 1
	_, err = got.record(2, len(other), tag(2, other))
	require.ErrorIs(t, err, errDiverged)

	// Older helpers' records (no sizes; hashes of the plaintext) are
	// dropped, not resumed.
	for _, old := range []string{"sealed", "chunks"} {
		_, err := newPushResume(dir, []byte("open"))
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(filepath.Join(dir, old), make([]byte, 72), 0o600))
		require.Nil(t, findPushResume(dir))
		require.NoDirExists(t, dir)
	}
}

// A push's bundle is one git itself reads: its header names upstream's
// tips as prerequisites and the pushed ids under the refs they go to,
// whatever their sources (HEAD, a raw id), and no temporary ref is made
// for them. A push of objects upstream has already moves refs only.
func TestPushBundleIsGitsOwn(t *testing.T) {
	work, upstream := setup(t)
	ctx := t.Context()
	first := gittest.Git(t, work, "rev-parse", "master")
	require.NoError(t, os.WriteFile(filepath.Join(work, "c.txt"), []byte("c\n"), 0o644))
	gittest.Git(t, work, "add", ".")
	gittest.Git(t, work, "commit", "-qm", "second")
	second := gittest.Git(t, work, "rev-parse", "master")

	var stderr bytes.Buffer
	h, err := newHelper(ctx, "acme/widgets", "acme/widgets", &stderr)
	require.NoError(t, err)
	_, err = h.list(ctx, true)
	require.NoError(t, err)
	ups := []*refUpdate{
		{src: "HEAD", Update: wire.Update{Ref: "refs/heads/topic"}},
		{src: second, Update: wire.Update{Ref: "refs/tags/v1"}},
	}
	require.NoError(t, h.check(ctx, ups))
	spec, err := h.bundleFor(ctx, ups)
	require.NoError(t, err)
	run, empty, err := h.startBundle(ctx, spec)
	require.NoError(t, err)
	require.False(t, empty)
	b, err := io.ReadAll(run.out)
	require.NoError(t, err)
	require.NoError(t, run.wait())

	hdr, err := bundle.ReadHeader(bytes.NewReader(b))
	require.NoError(t, err)
	require.Equal(t, []bundle.Prereq{{OID: first}}, hdr.Prereqs)
	require.Equal(t, []bundle.Ref{{OID: second, Name: "refs/heads/topic"}, {OID: second, Name: "refs/tags/v1"}}, hdr.Refs)
	path := filepath.Join(t.TempDir(), "push.bundle")
	require.NoError(t, os.WriteFile(path, b, 0o644))
	gittest.Git(t, "", "--git-dir", upstream, "bundle", "verify", "-q", path)
	gittest.Git(t, "", "--git-dir", upstream, "fetch", "-q", path, "refs/heads/topic:refs/heads/topic")
	require.Equal(t, second, gittest.Git(t, "", "--git-dir", upstream, "rev-parse", "topic"))
	require.Empty(t, gittest.Git(t, work, "for-each-ref", "refs/relay-tmp/"))

	// Upstream's master moves to second; first is then no tip of
	// upstream's, but upstream has it.
	gittest.Git(t, work, "push", "-q", upstream, "master")
	_, err = h.list(ctx, true)
	require.NoError(t, err)
	ups = []*refUpdate{{src: first, Update: wire.Update{Ref: "refs/heads/old"}}}
	require.NoError(t, h.check(ctx, ups))
	spec, err = h.bundleFor(ctx, ups)
	require.NoError(t, err)
	run, empty, err = h.startBundle(ctx, spec)
	require.NoError(t, err)
	require.True(t, empty, "nothing to bundle")
	require.Nil(t, run)
}

// TestAnswerReachesGitChunkByChunk: what a chunk brings goes to git as soon
// as it has come, not when the helper's write buffer (answerWrite) fills:
// the first chunk starts the pack, and git starts index-pack on it.
func TestAnswerReachesGitChunkByChunk(t *testing.T) {
	plain := make([]byte, 700<<10)
	_, err := rand.Read(plain)
	require.NoError(t, err)
	var chunks [][]byte
	var finals []bool
	free := make(chan []byte, 1)
	free <- nil
	_, err = payload.SplitRamp(bytes.NewReader(plain), 4<<20, free, func(_ uint32, final bool, c []byte) error {
		chunks, finals = append(chunks, bytes.Clone(c)), append(finals, final)
		free <- c[:0]
		return nil
	}, payload.Cut)
	require.NoError(t, err)
	require.Greater(t, len(chunks), 1)

	release := make(chan struct{})
	i := 0
	next := func() ([]byte, bool, error) {
		if i == 1 {
			<-release // the second chunk is still on its way
		}
		c, f := chunks[i], finals[i]
		i++
		return c, f, nil
	}
	pr, pw := io.Pipe()
	out := bufio.NewWriterSize(pw, answerWrite)
	done := make(chan error, 1)
	go func() {
		err := copyAnswer(out, payload.NewReader(next, 1<<30))
		if err == nil {
			err = out.Flush()
		}
		pw.CloseWithError(err)
		done <- err
	}()
	first := len(chunks[0]) - 1 - payload.HoldBack // less the header byte
	got := make([]byte, first)
	read := make(chan error, 1)
	go func() {
		_, err := io.ReadFull(pr, got)
		read <- err
	}()
	select {
	case err := <-read:
		require.NoError(t, err)
	case <-time.After(10 * time.Second):
		close(release)
		t.Fatal("the first chunk's bytes did not reach git while the second chunk was on its way")
	}
	require.Equal(t, plain[:first], got)
	close(release)
	rest, err := io.ReadAll(pr)
	require.NoError(t, err)
	require.NoError(t, <-done)
	require.Equal(t, plain, append(got, rest...))
}

// TestFirstChunkComesWithTheAnswer: the first chunk of a fetch's chunked
// answer comes with the reply to its Open, so the helper asks the relay
// only for the chunks after it, and git gets the whole answer.
func TestFirstChunkComesWithTheAnswer(t *testing.T) {
	work, upstream, asked := linkSeeing(t, http.MethodGet, wire.PathDown)
	gittest.Git(t, work, "push", "-q", upstream, "master")
	tip := gittest.Git(t, work, "rev-parse", "master")

	h, err := newHelper(t.Context(), "acme/widgets", "acme/widgets", io.Discard)
	require.NoError(t, err)
	req := pkt("command=fetch\n") + "0001" + pkt("no-progress\n") + pkt("want "+tip+"\n") + pkt("done\n") + "0000"
	var out bytes.Buffer
	_, err = h.answer(t.Context(), wire.KindFetch, []byte(req), "", &out)
	require.NoError(t, err)
	// upload-pack's answer: its packfile section ends with the pack's
	// own checksum and a flush.
	require.Contains(t, out.String(), "packfile\n")
	require.Greater(t, out.Len(), 3<<20)
	require.True(t, strings.HasSuffix(out.String(), "0000"))

	require.NotEmpty(t, asked(), "the rest of the answer is downloaded")
	require.NotContains(t, asked(), "0", "the first chunk is not asked for: it came with the answer")
}

// linkSeeing is setupLink that notes the chunk index of each request with
// method to path, with a commit of 3 MiB of random bytes (a payload of
// several chunks) in the work repository. seen returns the indices.
func linkSeeing(t *testing.T, method, path string) (work, upstream string, seen func() []string) {
	t.Helper()
	var mu sync.Mutex
	var is []string
	work, upstream = setupLink(t, shape.Link{}, func(r *http.Request) {
		if r.Method == method && strings.HasSuffix(r.URL.Path, "/"+path) {
			mu.Lock()
			is = append(is, r.URL.Query().Get("i"))
			mu.Unlock()
		}
	})
	big := make([]byte, 3<<20)
	_, _ = rand.Read(big)
	require.NoError(t, os.WriteFile(filepath.Join(work, "big.bin"), big, 0o644))
	gittest.Git(t, work, "add", ".")
	gittest.Git(t, work, "commit", "-qm", "big")
	return work, upstream, func() []string {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(is)
	}
}

// TestPushFirstChunkGoesWithTheOpen: a push of several chunks to a relay
// that takes it (its listing said so) sends the first chunk with the
// Open: x/up never sees chunk 0, and the push lands.
func TestPushFirstChunkGoesWithTheOpen(t *testing.T) {
	work, upstream, sent := linkSeeing(t, http.MethodPut, wire.PathUp)
	tip := gittest.Git(t, work, "rev-parse", "master")

	out, stderr, err := talk(t, "acme/widgets", "list for-push\npush refs/heads/master:refs/heads/master\n\n")
	require.NoError(t, err, stderr)
	require.Contains(t, out, "ok refs/heads/master\n")
	require.Equal(t, tip, gittest.Git(t, "", "--git-dir", upstream, "rev-parse", "master"))

	require.NotEmpty(t, sent(), "the rest of the payload goes through x/up")
	require.NotContains(t, sent(), "0", "the first chunk went with the Open")
}

// TestFetchCacheIsMadeWithItsFirstChunk: a fetch's resume folder appears
// only with the first chunk kept, replacing whatever an earlier run left
// under its name; a later run then finds the Open and the chunk.
func TestFetchCacheIsMadeWithItsFirstChunk(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "fetch", "abc")
	require.NoError(t, os.MkdirAll(dir, 0o700))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "3"), []byte("left by an earlier run"), 0o600))

	c := newFetchCache(dir, []byte("the open"))
	require.Nil(t, c.chunk(3), "nothing is kept yet")
	_, err := os.Stat(filepath.Join(dir, "open"))
	require.ErrorIs(t, err, os.ErrNotExist, "no folder work before a chunk is kept")

	c.keep(0, []byte("chunk zero"))
	open, found := findFetchCache(dir)
	require.Equal(t, "the open", string(open))
	require.Equal(t, "chunk zero", string(found.chunk(0)))
	require.Nil(t, found.chunk(3), "what the earlier run left is gone")
	c.remove()
	_, err = os.Stat(dir)
	require.ErrorIs(t, err, os.ErrNotExist)
}

// catFiles counts the cat-file lookups running on gitDir.
func catFiles(t *testing.T, gitDir string) int {
	t.Helper()
	return gittest.Processes(t, func(cmd, env []byte) bool {
		return bytes.Contains(cmd, []byte("cat-file\x00--batch-check")) && bytes.Contains(env, []byte("GIT_DIR="+gitDir+"\x00"))
	})
}

// packers counts the pack-objects running on gitDir.
func packers(t *testing.T, gitDir string) int {
	t.Helper()
	return gittest.Processes(t, func(cmd, env []byte) bool {
		return bytes.Contains(cmd, []byte("pack-objects\x00--revs")) && bytes.Contains(env, []byte("GIT_DIR="+gitDir+"\x00"))
	})
}

// TestLookupStartsWithThePushListing: the gits that check a push's names
// and write its pack start when git lists refs for the push, while
// upstream is listed, and serve the push that follows; a listing no push
// follows leaves none behind.
func TestLookupStartsWithThePushListing(t *testing.T) {
	work, upstream := setup(t)
	gitDir := filepath.Join(work, ".git")
	require.NoError(t, os.WriteFile(filepath.Join(work, "c.txt"), []byte("c\n"), 0o644))
	gittest.Git(t, work, "add", ".")
	gittest.Git(t, work, "commit", "-qm", "local")
	tip := gittest.Git(t, work, "rev-parse", "master")

	h, err := newHelper(t.Context(), "acme/widgets", "acme/widgets", io.Discard)
	require.NoError(t, err)
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	done := make(chan error, 1)
	go func() {
		err := h.serve(t.Context(), inR, outW)
		outW.CloseWithError(err)
		done <- err
	}()
	out := bufio.NewReader(outR)
	_, err = io.WriteString(inW, "list for-push\n")
	require.NoError(t, err)
	for line := "x"; line != "\n"; {
		line, err = out.ReadString('\n')
		require.NoError(t, err)
	}
	require.Eventually(t, func() bool { return catFiles(t, gitDir) == 1 }, 10*time.Second, 5*time.Millisecond,
		"the lookup runs before git says what it pushes")
	require.Eventually(t, func() bool { return packers(t, gitDir) == 1 }, 10*time.Second, 5*time.Millisecond,
		"pack-objects runs before git says what it pushes")
	_, err = io.WriteString(inW, "push refs/heads/master:refs/heads/master\n\n")
	require.NoError(t, err)
	line, err := out.ReadString('\n')
	require.NoError(t, err)
	require.Equal(t, "ok refs/heads/master\n", line)
	require.Equal(t, tip, gittest.Git(t, work, "--git-dir", upstream, "rev-parse", "master"))
	inW.Close()
	require.NoError(t, <-done)

	// A listing alone: its lookup ends with the helper.
	out2, _, err := talk(t, "acme/widgets", "list for-push\n\n")
	require.NoError(t, err)
	require.Contains(t, out2, tip+" refs/heads/master\n")
	require.Zero(t, catFiles(t, gitDir), "no lookup left behind")
	require.Zero(t, packers(t, gitDir), "no pack-objects left behind")
}
