package server

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/git-relay/git-relay/internal/gittest"
	"github.com/git-relay/git-relay/internal/keyring"
	"github.com/git-relay/git-relay/internal/payload"
	"github.com/git-relay/git-relay/internal/seal"
	"github.com/git-relay/git-relay/internal/wire"
)

type fixture struct {
	srv      *Server
	http     *httptest.Server
	client   *wire.Client
	key      keyring.Key
	upstream string // bare repo acme/widgets
	work     string // a clone with commits
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	gittest.Setenv(t)
	root := t.TempDir()
	key, err := keyring.Generate()
	require.NoError(t, err)
	up := filepath.Join(root, "upstream", "acme", "widgets.git")
	gittest.Git(t, root, "init", "-q", "--bare", "-b", "master", up)
	work := filepath.Join(root, "work")
	gittest.Git(t, root, "init", "-q", "-b", "master", work)
	require.NoError(t, os.WriteFile(filepath.Join(work, "a.txt"), []byte("a\n"), 0o644))
	// Enough incompressible bytes for a few chunks of the smallest size.
	blob := make([]byte, 3*minChunkSize+1000)
	_, _ = rand.Read(blob)
	require.NoError(t, os.WriteFile(filepath.Join(work, "blob.bin"), blob, 0o644))
	gittest.Git(t, work, "add", ".")
	gittest.Git(t, work, "commit", "-qm", "first")
	s, err := New(Config{
		DataDir: filepath.Join(root, "data"), Ring: keyring.NewRing(key),
		Upstream: "file://" + filepath.Join(root, "upstream") + "/{repo}.git", MaxBody: 200_000,
	})
	require.NoError(t, err)
	hs := httptest.NewServer(s.Handler())
	t.Cleanup(func() { hs.Close(); s.work.Wait() })
	return &fixture{srv: s, http: hs, key: key, upstream: up, work: work,
		client: &wire.Client{Base: hs.URL + "/api/gr", Key: key, MaxBody: 200_000}}
}

func TestUnauthenticatedRequestsLearnNothing(t *testing.T) {
	f := newFixture(t)
	other, _ := keyring.Generate()
	bad := &wire.Client{Base: f.client.Base, Key: other}
	ctx := context.Background()
	for _, repo := range []string{"acme/widgets", "acme/missing"} {
		_, err := bad.Do(ctx, http.MethodGet, wire.PathRefs, url.Values{"repo": {repo}}, nil, nil)
		require.ErrorIs(t, err, wire.ErrKeyRefused)
	}
	// Raw: same status and body whether the repository exists or not.
	var bodies []string
	for _, repo := range []string{"acme/widgets", "acme/missing"} {
		resp, err := http.Get(f.http.URL + "/api/gr/refs?repo=" + repo)
		require.NoError(t, err)
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		require.Equal(t, http.StatusUnauthorized, resp.StatusCode)
		bodies = append(bodies, string(b))
	}
	require.Equal(t, bodies[0], bodies[1])

	// Health needs no key.
	resp, err := http.Get(f.http.URL + "/healthz")
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
}

func TestOversizedBodyIsRefusedBeforeWork(t *testing.T) {
	f := newFixture(t)
	resp, err := http.Post(f.http.URL+"/api/gr/push", "application/octet-stream", bytes.NewReader(make([]byte, 200_001)))
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusRequestEntityTooLarge, resp.StatusCode)
}

func TestMissingUpstreamIsAClearError(t *testing.T) {
	f := newFixture(t)
	_, err := f.client.Do(context.Background(), http.MethodGet, wire.PathRefs, url.Values{"repo": {"acme/missing"}}, nil, nil)
	require.ErrorContains(t, err, "upstream repository acme/missing not found")
	require.NoDirExists(t, filepath.Join(filepath.Dir(f.upstream), "missing.git"), "the relay never creates upstream repositories")
	_, err = f.client.Do(context.Background(), http.MethodGet, wire.PathRefs, url.Values{"repo": {"../etc"}}, nil, nil)
	require.ErrorContains(t, err, "invalid repository")
}

// sealedChunk is one chunk as the helper would upload it.
type sealedChunk struct {
	body  []byte
	final bool
}

// startPush bundles the work repo's master, seals it as the helper does,
// and creates a session.
func (f *fixture) startPush(t *testing.T) (string, wire.PushManifest, *wire.Totals, []sealedChunk) {
	t.Helper()
	salt := make([]byte, 32)
	_, _ = rand.Read(salt)
	m := wire.PushManifest{Version: wire.PushManifestVersion, Repo: "acme/widgets", Salt: hex.EncodeToString(salt), Nonce: "n",
		Updates:   []wire.Update{{Ref: "refs/heads/master", Old: zeroID, New: gittest.Git(t, f.work, "rev-parse", "master")}},
		ChunkSize: minChunkSize}
	raw, _ := json.Marshal(m)
	st, err := seal.New(f.key, keyring.LabelPushPayload, salt, wire.ManifestHash(raw))
	require.NoError(t, err)
	cmd := exec.Command("git", "bundle", "create", "-q", "-", "refs/heads/master")
	cmd.Dir = f.work
	out, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	free := make(chan []byte, 1)
	free <- make([]byte, 0, m.ChunkSize+seal.Overhead)
	var chunks []sealedChunk
	p, err := payload.Split(out, m.ChunkSize, free, nil, func(i uint32, final bool, c []byte) error {
		chunks = append(chunks, sealedChunk{st.Seal(nil, i, final, c), final})
		free <- c
		return nil
	})
	require.NoError(t, err)
	require.NoError(t, cmd.Wait())
	var sess wire.Session
	_, err = f.client.Do(context.Background(), http.MethodPost, wire.PathPush, nil, raw, &sess)
	require.NoError(t, err)
	totals := &wire.Totals{Compression: p.Compression, BundleSize: p.BundleSize, BundleHash: p.BundleHash, PayloadSize: p.PayloadSize, Chunks: p.Chunks}
	return sess.Session, m, totals, chunks
}

func (f *fixture) put(session string, i int, c sealedChunk) error {
	q := url.Values{"session": {session}, "index": {itoa(i)}}
	if c.final {
		q.Set("final", "1")
	}
	_, err := f.client.Do(context.Background(), http.MethodPut, wire.PathPushChunk, q, c.body, nil)
	return err
}

func (f *fixture) complete(session string, t *wire.Totals) (*wire.PushStatus, error) {
	var st wire.PushStatus
	_, err := f.client.Do(context.Background(), http.MethodPost, wire.PathPushFinish, url.Values{"session": {session}}, t, &st)
	return &st, err
}

func itoa(i int) string { return strconv.Itoa(i) }

func TestChunkUploadIsIdempotentAndAuthenticated(t *testing.T) {
	f := newFixture(t)
	sess, _, totals, chunks := f.startPush(t)
	require.Greater(t, len(chunks), 2)

	require.NoError(t, f.put(sess, 0, chunks[0]))
	require.NoError(t, f.put(sess, 0, chunks[0]), "the same bytes again succeed")

	// A chunk at the wrong index does not authenticate; it is named.
	err := f.put(sess, 1, chunks[0])
	require.ErrorContains(t, err, "chunk 1: chunk failed authentication")
	// Different bytes at a held index are a conflict.
	err = f.put(sess, 0, chunks[1])
	var api *wire.APIError
	require.ErrorAs(t, err, &api)
	require.Equal(t, http.StatusConflict, api.Status)

	// The status says which chunks the server holds, so a client resumes.
	var st wire.PushStatus
	_, err = f.client.Do(context.Background(), http.MethodGet, wire.PathPushStatus, url.Values{"session": {sess}}, nil, &st)
	require.NoError(t, err)
	require.Equal(t, []uint32{0}, st.Held)

	// Completing early is refused; nothing reaches upstream.
	_, err = f.complete(sess, totals)
	require.ErrorContains(t, err, "has not received its final chunk")
	last := len(chunks) - 1
	require.NoError(t, f.put(sess, last, chunks[last]))
	_, err = f.complete(sess, totals)
	require.ErrorContains(t, err, fmt.Sprintf("holds 2 of %d chunks", len(chunks)))
	require.Empty(t, gitOK(f.upstream, "rev-parse", "--verify", "-q", "refs/heads/master"))
}

// TestStreamEndsOnlyAtItsFinalChunk: the final flag travels in the request
// but is bound into the chunk, so a proxy can neither cut the payload
// short (mark a middle chunk final) nor hide its end, and nothing comes
// after the final chunk.
func TestStreamEndsOnlyAtItsFinalChunk(t *testing.T) {
	f := newFixture(t)
	sess, _, totals, chunks := f.startPush(t)
	last := len(chunks) - 1

	// A middle chunk presented as the last one does not open.
	cut := chunks[1]
	cut.final = true
	require.ErrorContains(t, f.put(sess, 1, cut), "chunk 1 (as the final chunk): chunk failed authentication")
	// The real last chunk presented as an ordinary one does not either.
	hidden := chunks[last]
	hidden.final = false
	err := f.put(sess, last, hidden)
	require.Error(t, err)

	for i, c := range chunks {
		require.NoError(t, f.put(sess, i, c))
	}
	// Nothing after the final chunk; a chunk replayed at a later index
	// is refused too.
	err = f.put(sess, last+1, chunks[0])
	var api *wire.APIError
	require.ErrorAs(t, err, &api)
	require.Equal(t, http.StatusConflict, api.Status)

	// Totals that do not match what arrived are refused, and a bundle
	// hash that does not match fails the push before upstream sees it.
	short := *totals
	short.Chunks--
	short.PayloadSize -= int64(minChunkSize)
	_, err = f.complete(sess, &short)
	require.ErrorContains(t, err, fmt.Sprintf("the final chunk is chunk %d, not %d", len(chunks), len(chunks)-1))
	wrong := *totals
	wrong.BundleHash = strings.Repeat("ab", 32)
	st, err := f.complete(sess, &wrong)
	require.NoError(t, err)
	require.Equal(t, wire.PhaseFailed, st.Phase)
	require.Contains(t, st.Message, "hash")
	require.Empty(t, gitOK(f.upstream, "rev-parse", "--verify", "-q", "refs/heads/master"))
}

func gitOK(dir string, args ...string) string {
	cmd := exec.Command("git", append([]string{"--git-dir", dir}, args...)...)
	out, _ := cmd.Output()
	return strings.TrimSpace(string(out))
}

func TestPushLandsAndSurvivesRestart(t *testing.T) {
	f := newFixture(t)
	sess, m, totals, chunks := f.startPush(t)
	for i, c := range chunks {
		require.NoError(t, f.put(sess, i, c))
	}
	// A second server over the same data dir (a restart) finishes the
	// session the first one received.
	s2, err := New(f.srv.cfg)
	require.NoError(t, err)
	hs2 := httptest.NewServer(s2.Handler())
	defer func() { hs2.Close(); s2.work.Wait() }()
	c2 := &wire.Client{Base: hs2.URL + "/api/gr", Key: f.key, MaxBody: 200_000}
	var st wire.PushStatus
	_, err = c2.Do(context.Background(), http.MethodPost, wire.PathPushFinish, url.Values{"session": {sess}}, totals, &st)
	require.NoError(t, err)
	require.Equal(t, wire.PhaseDone, st.Phase, st.Message)
	require.Equal(t, []wire.RefResult{{Ref: "refs/heads/master", OK: true}}, st.Results)
	require.Equal(t, m.Updates[0].New, gitOK(f.upstream, "rev-parse", "refs/heads/master"))

	// Completing again reports the same outcome and pushes nothing twice.
	_, err = c2.Do(context.Background(), http.MethodPost, wire.PathPushFinish, url.Values{"session": {sess}}, totals, &st)
	require.NoError(t, err)
	require.Equal(t, wire.PhaseDone, st.Phase)
}

func TestForceNeedsAllowForce(t *testing.T) {
	f := newFixture(t)
	m := wire.PushManifest{Version: wire.PushManifestVersion, Repo: "acme/widgets", Salt: strings.Repeat("00", 32),
		Updates: []wire.Update{{Ref: "refs/heads/master", Old: strings.Repeat("1", 40), New: strings.Repeat("2", 40), Force: true}}}
	_, err := f.client.Do(context.Background(), http.MethodPost, wire.PathPush, nil, m, nil)
	require.ErrorContains(t, err, "--allow-force")
	m.Updates[0] = wire.Update{Ref: "refs/heads/bad..name", Old: zeroID, New: strings.Repeat("2", 40)}
	_, err = f.client.Do(context.Background(), http.MethodPost, wire.PathPush, nil, m, nil)
	require.ErrorContains(t, err, "invalid ref name")
	m.Updates[0] = wire.Update{Ref: "refs/notes/x", Old: zeroID, New: strings.Repeat("2", 40)}
	_, err = f.client.Do(context.Background(), http.MethodPost, wire.PathPush, nil, m, nil)
	require.ErrorContains(t, err, "only refs/heads/* and refs/tags/*")
}

// TestFetchChunksCarryTheirFinalFlag: a fetch's chunks come while git
// writes the bundle; the answer's flag byte says which chunk is the last,
// and only that chunk opens as final. Past it, the server says so, and
// the status then gives the totals the payload must match.
func TestFetchChunksCarryTheirFinalFlag(t *testing.T) {
	f := newFixture(t)
	gittest.Git(t, f.work, "push", "-q", f.upstream, "master")
	tip := gittest.Git(t, f.work, "rev-parse", "master")
	ctx := context.Background()
	var sess wire.Session
	_, err := f.client.Do(ctx, http.MethodPost, wire.PathFetch, nil, wire.FetchRequest{Repo: "acme/widgets", Wants: []string{tip}, MaxBody: 64 << 10}, &sess)
	require.NoError(t, err)
	var st wire.FetchStatus
	for st.Manifest == nil {
		_, err = f.client.Do(ctx, http.MethodGet, wire.PathFetchStatus, url.Values{"session": {sess.Session}, "wait": {"1"}}, nil, &st)
		require.NoError(t, err)
		require.NotEqual(t, wire.FetchFailed, st.Phase, st.Message)
	}
	var m wire.FetchManifest
	require.NoError(t, json.Unmarshal(st.Manifest, &m))
	salt, _ := hex.DecodeString(m.Salt)
	stream, err := seal.New(f.key, keyring.LabelFetchPayload, salt, wire.ManifestHash(st.Manifest))
	require.NoError(t, err)

	get := func(i int) ([]byte, error) {
		for {
			b, err := f.client.Do(ctx, http.MethodGet, wire.PathFetchChunk, url.Values{"session": {sess.Session}, "index": {itoa(i)}}, nil, nil)
			var api *wire.APIError
			if errors.As(err, &api) && api.Code == wire.CodeNotReady {
				continue
			}
			return b, err
		}
	}
	var payloadBytes []byte
	final := -1
	for i := 0; final < 0; i++ {
		b, err := get(i)
		require.NoError(t, err)
		last := b[0] == wire.FetchChunkFinal
		plain, err := stream.Open(nil, uint32(i), last, b[1:])
		require.NoError(t, err)
		// The same chunk with its flag turned does not open.
		_, err = stream.Open(nil, uint32(i), !last, b[1:])
		require.ErrorIs(t, err, seal.ErrAuth)
		payloadBytes = append(payloadBytes, plain...)
		if last {
			final = i
		}
	}
	require.Greater(t, final, 1, "the fixture's bundle spans several chunks")
	_, err = get(final + 1)
	var api *wire.APIError
	require.ErrorAs(t, err, &api)
	require.Equal(t, wire.CodeRange, api.Code)

	_, err = f.client.Do(ctx, http.MethodGet, wire.PathFetchStatus, url.Values{"session": {sess.Session}, "wait": {"ready"}}, nil, &st)
	require.NoError(t, err)
	require.Equal(t, wire.FetchReady, st.Phase)
	require.NotNil(t, st.Totals)
	require.EqualValues(t, final+1, st.Totals.Chunks)
	require.Equal(t, wire.CompressNone, st.Totals.Compression)
	require.EqualValues(t, len(payloadBytes), st.Totals.PayloadSize)
	sum := sha256.Sum256(payloadBytes)
	require.Equal(t, hex.EncodeToString(sum[:]), st.Totals.BundleHash)
	require.True(t, bytes.HasPrefix(payloadBytes, []byte("# v2 git bundle\n")))
}
