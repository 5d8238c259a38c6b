package edgeproxy

import (
	"bytes"
	"compress/gzip"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/git-relay/git-relay/internal/shape"
)

// seen is one request as the relay behind the proxy received it.
type seen struct {
	Method, Path, Query string
	Header              http.Header
	Body                []byte
}

// backend is a relay stand-in that records what reached it and answers
// with whatever the test puts in reply (by path), or echoes the body. A
// request whose body broke off is not recorded: the edge streams bodies,
// so one it cuts off for its size has started to arrive, but the relay
// never has it whole and cannot act on it.
type backend struct {
	*httptest.Server
	mu    sync.Mutex
	got   []seen
	reply map[string][]byte
}

func newBackend(t *testing.T) *backend {
	b := &backend{reply: map[string][]byte{}}
	b.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			return
		}
		b.mu.Lock()
		b.got = append(b.got, seen{r.Method, r.URL.Path, r.URL.RawQuery, r.Header.Clone(), body})
		out, ok := b.reply[r.URL.Path]
		b.mu.Unlock()
		if !ok {
			out = body
		}
		w.Header().Set("X-Relay", "yes")
		w.Header().Set("X-Relay-Signature", "ab12")
		w.WriteHeader(http.StatusCreated)
		_, _ = w.Write(out)
	}))
	t.Cleanup(b.Close)
	return b
}

func (b *backend) requests() []seen {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]seen(nil), b.got...)
}

func startProxy(t *testing.T, b *backend, opts Options) *Proxy {
	p, err := Start(b.URL, opts)
	require.NoError(t, err)
	t.Cleanup(func() { _ = p.Close() })
	return p
}

func post(t *testing.T, url string, body []byte) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, url, bytes.NewReader(body))
	require.NoError(t, err)
	return do(t, req)
}

func do(t *testing.T, req *http.Request) (*http.Response, []byte) {
	t.Helper()
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp, out
}

func random(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, seed))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func TestRoutes(t *testing.T) {
	b := newBackend(t)
	p := startProxy(t, b, Options{})

	resp, body := post(t, p.URL+"/api/game/push/abc/chunk?i=3&n=4", []byte("hello"))
	require.Equal(t, http.StatusCreated, resp.StatusCode)
	require.Equal(t, "yes", resp.Header.Get("X-Relay"))
	require.Equal(t, "hello", string(body))

	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, p.URL+"/healthz", nil)
	require.NoError(t, err)
	resp, _ = do(t, req)
	require.Equal(t, http.StatusCreated, resp.StatusCode)

	for _, path := range []string{"/api/gr/push", "/", "/api/gamex/push", "/healthz/x"} {
		resp, _ = post(t, p.URL+path, []byte("x"))
		require.Equal(t, http.StatusNotFound, resp.StatusCode, path)
	}

	got := b.requests()
	require.Len(t, got, 2, "unrouted requests must not reach the relay")
	require.Equal(t, "/api/gr/push/abc/chunk", got[0].Path)
	require.Equal(t, "i=3&n=4", got[0].Query)
	require.Equal(t, "hello", string(got[0].Body))
	require.Equal(t, "/healthz", got[1].Path)
	require.Empty(t, p.Violations())
}

func TestRequestBodyLimit(t *testing.T) {
	b := newBackend(t)
	p := startProxy(t, b, Options{MaxBody: 1000})

	resp, _ := post(t, p.URL+"/api/game/x", make([]byte, 1000))
	require.Equal(t, http.StatusCreated, resp.StatusCode, "a body at the limit passes")

	resp, _ = post(t, p.URL+"/api/game/x", make([]byte, 1001))
	require.Equal(t, http.StatusRequestEntityTooLarge, resp.StatusCode)

	// A chunked body declares no length: the proxy must count it.
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, p.URL+"/api/game/y", io.MultiReader(bytes.NewReader(make([]byte, 900)), bytes.NewReader(make([]byte, 900))))
	require.NoError(t, err)
	req.ContentLength = -1
	resp, _ = do(t, req)
	require.Equal(t, http.StatusRequestEntityTooLarge, resp.StatusCode)

	require.Len(t, b.requests(), 1, "no oversized body reaches the relay whole")
	v := p.TakeViolations()
	require.Len(t, v, 2)
	require.Equal(t, KindSize, v[0].Kind)
	require.Equal(t, Up, v[0].Direction)
	require.Equal(t, "/api/game/y", v[1].Path)
	require.Empty(t, p.Violations())
}

func TestResponseBodyLimit(t *testing.T) {
	b := newBackend(t)
	b.reply["/api/gr/big"] = make([]byte, 1001)
	b.reply["/api/gr/ok"] = make([]byte, 1000)
	p := startProxy(t, b, Options{MaxBody: 1000})

	resp, body := post(t, p.URL+"/api/game/ok", nil)
	require.Equal(t, http.StatusCreated, resp.StatusCode)
	require.Len(t, body, 1000)

	resp, _ = post(t, p.URL+"/api/game/big", nil)
	require.Equal(t, http.StatusBadGateway, resp.StatusCode)
	v := p.Violations()
	require.Len(t, v, 1)
	require.Equal(t, Violation{Kind: KindSize, Direction: Down, Method: "POST", Path: "/api/game/big",
		Detail: "response body over 1000 bytes (Content-Length 1001)"}, v[0])
}

// encodings are the ways a client might carry binary content in a body.
var encodings = map[string]func([]byte) []byte{
	"raw":       func(b []byte) []byte { return b },
	"hex":       func(b []byte) []byte { return []byte(hex.EncodeToString(b)) },
	"HEX":       func(b []byte) []byte { return []byte(strings.ToUpper(hex.EncodeToString(b))) },
	"base64":    func(b []byte) []byte { return []byte(base64.StdEncoding.EncodeToString(b)) },
	"base64url": func(b []byte) []byte { return []byte(base64.URLEncoding.EncodeToString(b)) },
	"json":      func(b []byte) []byte { return fmt.Appendf(nil, `{"data":%q}`, base64.StdEncoding.EncodeToString(b)) },
}

func TestPlaintextDetected(t *testing.T) {
	for _, marker := range Markers {
		for name, enc := range encodings {
			for prefix := range 3 {
				t.Run(fmt.Sprintf("%q/%s/%d", marker, name, prefix), func(t *testing.T) {
					// The marker sits prefix bytes into the payload, so its
					// base64 lands at each of the three alignments.
					payload := append(append(random(prefix, 1), marker...), random(300, 2)...)
					body := enc(payload)
					found := ScanPlaintext(body, "")
					require.NotEmpty(t, found)
				})
			}
		}
	}
}

func TestPlaintextAcrossTheProxy(t *testing.T) {
	b := newBackend(t)
	bundle := append([]byte("# v2 git bundle\n0123456789012345678901234567890123456789 refs/heads/master\n\nPACK\x00\x00\x00\x02"), random(5000, 3)...)
	b.reply["/api/gr/fetch"] = []byte(base64.RawURLEncoding.EncodeToString(bundle[7:]))
	b.reply["/api/gr/push"] = []byte("ok")
	b.reply["/api/gr/gz"] = []byte("ok")
	p := startProxy(t, b, Options{})

	post(t, p.URL+"/api/game/push", []byte(base64.StdEncoding.EncodeToString(bundle)))
	post(t, p.URL+"/api/game/fetch", nil)

	// Text compresses, so the marker is hidden unless the proxy decodes.
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	_, _ = zw.Write(bytes.Repeat(bundle[:90], 100))
	require.NoError(t, zw.Close())
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, p.URL+"/api/game/gz", bytes.NewReader(gz.Bytes()))
	require.NoError(t, err)
	req.Header.Set("Content-Encoding", "gzip")
	do(t, req)

	require.Empty(t, scan(gz.Bytes()))
	got := map[string]bool{}
	for _, v := range p.Violations() {
		require.Equal(t, KindPlaintext, v.Kind)
		got[string(v.Direction)+" "+v.Path] = true
	}
	require.Equal(t, map[string]bool{"up /api/game/push": true, "down /api/game/fetch": true, "up /api/game/gz": true}, got)
}

func TestNoFalsePositives(t *testing.T) {
	// Ciphertext looks like random bytes, in any encoding.
	body := random(4_000_000, 4)
	for name, enc := range encodings {
		require.Empty(t, ScanPlaintext(enc(body), ""), name)
	}
	require.Empty(t, ScanPlaintext([]byte("PACK is a word; # v2 git bundles are files"), ""))
}

func TestSecrets(t *testing.T) {
	b := newBackend(t)
	b.reply["/api/gr/leaky"] = []byte("error: auth ghp_SeCrEt refused")
	p := startProxy(t, b, Options{Secrets: []string{"ghp_SeCrEt", ""}})

	post(t, p.URL+"/api/game/fine", []byte("nothing here"))
	require.Empty(t, p.Violations())
	post(t, p.URL+"/api/game/leaky", nil)
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, p.URL+"/api/game/hdr", nil)
	require.NoError(t, err)
	req.Header.Set("X-Debug", "token=ghp_SeCrEt")
	do(t, req)

	v := p.Violations()
	require.Len(t, v, 2)
	require.Equal(t, Violation{Kind: KindSecret, Direction: Down, Method: "POST", Path: "/api/game/leaky", Detail: "secret #0 in the body"}, v[0])
	require.Equal(t, Violation{Kind: KindSecret, Direction: Up, Method: "GET", Path: "/api/game/hdr", Detail: "secret #0 in a header"}, v[1])
}

func TestStats(t *testing.T) {
	b := newBackend(t)
	b.reply["/api/gr/down"] = make([]byte, 700)
	p := startProxy(t, b, Options{})

	post(t, p.URL+"/api/game/up?x=1", make([]byte, 300))
	post(t, p.URL+"/api/game/up?x=2", make([]byte, 200))
	post(t, p.URL+"/api/game/down", nil)
	s := p.Stats()
	require.Equal(t, int64(500), s.Up)
	require.Equal(t, int64(500+700), s.Down, "echoed bodies count down too")
	require.Equal(t, 3, s.Requests)
	require.Equal(t, map[string]int{"/api/game/up": 2, "/api/game/down": 1}, s.PerPath)

	p.Reset()
	s = p.Stats()
	require.Equal(t, Stats{PerPath: map[string]int{}}, s)
}

func mustTamper(t *testing.T, args ...string) *Tamper {
	t.Helper()
	tm, err := ParseTamper(args)
	require.NoError(t, err)
	return tm
}

func TestTamperFlip(t *testing.T) {
	b := newBackend(t)
	b.reply["/api/gr/small"] = []byte("tiny")
	p := startProxy(t, b, Options{})
	p.SetTamper(mustTamper(t, "flip", "-dir", "up", "-min", "100"))

	body := random(1000, 5)
	_, echoed := post(t, p.URL+"/api/game/chunk", body)
	got := b.requests()[0].Body
	require.Len(t, got, 1000)
	diff := 0
	for i := range got {
		if got[i] != body[i] {
			diff++
			require.Equal(t, 500, i)
		}
	}
	require.Equal(t, 1, diff)
	require.Equal(t, got, echoed, "-dir up leaves responses alone")

	post(t, p.URL+"/api/game/small", []byte("short"))
	require.Equal(t, "short", string(b.requests()[1].Body), "bodies under -min pass")

	p.SetTamper(mustTamper(t, "flip", "-dir", "down"))
	_, echoed = post(t, p.URL+"/api/game/chunk", body)
	require.Equal(t, body, b.requests()[2].Body)
	require.NotEqual(t, body, echoed)

	p.SetTamper(nil)
	_, echoed = post(t, p.URL+"/api/game/chunk", body)
	require.Equal(t, body, echoed)
}

func TestTamperTruncate(t *testing.T) {
	b := newBackend(t)
	p := startProxy(t, b, Options{})
	p.SetTamper(mustTamper(t, "truncate", "-count", "1"))
	body := random(1000, 6)
	_, echoed := post(t, p.URL+"/api/game/chunk", body)
	require.Equal(t, body[:500], b.requests()[0].Body)
	require.Equal(t, body[:500], echoed, "the count is spent on the request")
	_, echoed = post(t, p.URL+"/api/game/chunk", body)
	require.Equal(t, body, echoed)
}

func TestTamperDrop(t *testing.T) {
	b := newBackend(t)
	p := startProxy(t, b, Options{})
	p.SetTamper(mustTamper(t, "drop", "-path", "/chunk", "-count", "2"))
	for i, want := range []int{502, 201, 502, 201} {
		path := "/api/game/push/chunk"
		if i == 1 {
			path = "/api/game/push/status"
		}
		resp, _ := post(t, p.URL+path, []byte("x"))
		require.Equal(t, want, resp.StatusCode, i)
	}
	require.Len(t, b.requests(), 2)
	require.Equal(t, 4, p.Stats().Requests)
}

func TestTamperReplay(t *testing.T) {
	b := newBackend(t)
	p := startProxy(t, b, Options{})
	p.SetTamper(mustTamper(t, "replay", "-path", "chunk"))
	post(t, p.URL+"/api/game/s/chunk/0", []byte("zero"))
	post(t, p.URL+"/api/game/s/status", []byte("status"))
	post(t, p.URL+"/api/game/s/chunk/1", []byte("one"))
	post(t, p.URL+"/api/game/s/chunk/2", []byte("two"))
	var bodies []string
	for _, s := range b.requests() {
		bodies = append(bodies, string(s.Body))
	}
	require.Equal(t, []string{"zero", "status", "zero", "one"}, bodies)
}

func TestTamperSwapConcurrent(t *testing.T) {
	b := newBackend(t)
	p := startProxy(t, b, Options{})
	p.SetTamper(mustTamper(t, "swap", "-path", "chunk", "-wait", "5s", "-count", "1"))
	var wg sync.WaitGroup
	echoed := make([]string, 2)
	for i, body := range []string{"AAAA", "BBBB"} {
		wg.Go(func() {
			_, out := post(t, fmt.Sprintf("%s/api/game/s/chunk/%d", p.URL, i), []byte(body))
			echoed[i] = string(out)
		})
	}
	wg.Wait()
	require.Equal(t, []string{"BBBB", "AAAA"}, echoed)
	_, out := post(t, p.URL+"/api/game/s/chunk/3", []byte("CCCC"))
	require.Equal(t, "CCCC", string(out), "the count is spent")
}

func TestTamperSwapSequential(t *testing.T) {
	b := newBackend(t)
	p := startProxy(t, b, Options{})
	p.SetTamper(mustTamper(t, "swap", "-path", "chunk", "-wait", "50ms"))
	var echoed []string
	for _, body := range []string{"AAAA", "BBBB", "CCCC"} {
		_, out := post(t, p.URL+"/api/game/s/chunk", []byte(body))
		echoed = append(echoed, string(out))
	}
	require.Equal(t, []string{"AAAA", "AAAA", "CCCC"}, echoed)
}

func TestTamperCutResponse(t *testing.T) {
	b := newBackend(t)
	body := random(100_000, 7)
	b.reply["/api/gr/fetch/chunk"] = body
	p := startProxy(t, b, Options{})
	p.SetTamper(mustTamper(t, "drop-once-after", "40000", "-path", "fetch"))

	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, p.URL+"/api/game/fetch/chunk", nil)
	require.NoError(t, err)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	require.Equal(t, int64(100_000), resp.ContentLength)
	got, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.ErrorIs(t, err, io.ErrUnexpectedEOF)
	require.Equal(t, body[:40000], got)

	_, got = do(t, req.Clone(t.Context()))
	require.Equal(t, body, got, "the cut happens once")
}

func TestTamperSkip(t *testing.T) {
	b := newBackend(t)
	p := startProxy(t, b, Options{})
	p.SetTamper(mustTamper(t, "drop", "-path", "chunk", "-skip", "2", "-count", "1"))
	var codes []int
	for range 5 {
		resp, _ := post(t, p.URL+"/api/game/chunk", []byte("x"))
		codes = append(codes, resp.StatusCode)
	}
	require.Equal(t, []int{201, 201, 502, 201, 201}, codes)
}

func TestParseTamperErrors(t *testing.T) {
	for _, args := range [][]string{
		nil, {"bogus"}, {"flip", "-dir", "sideways"}, {"flip", "extra"}, {"drop-once-after"},
		{"drop-once-after", "x"}, {"off", "now"}, {"replay", "-path", "("},
		{"spoil", "-how", "quietly"}, {"drop-request", "-reply", "later"}, {"drop-request", "-reply", "42"},
		{"drop", "-count", "-1"},
	} {
		_, err := ParseTamper(args)
		require.Error(t, err, args)
	}
	tm, err := ParseTamper([]string{"off"})
	require.NoError(t, err)
	require.Nil(t, tm)
}

func TestNewRejectsBadTarget(t *testing.T) {
	for _, target := range []string{"", "127.0.0.1:80", "ftp://x", "http://"} {
		_, err := New(target, Options{})
		require.Error(t, err, target)
	}
}

// TestDeferredScanStillSeesEveryBody: with DeferScan the watch runs when
// violations are asked for, and misses nothing.
func TestDeferredScanStillSeesEveryBody(t *testing.T) {
	b := newBackend(t)
	b.reply["/api/gr/down"] = []byte("# v2 git bundle\n")
	b.reply["/api/gr/up"] = []byte("ok")
	p := startProxy(t, b, Options{DeferScan: true})
	resp, _ := post(t, p.URL+"/api/game/up", []byte("x PACK\x00\x00\x00\x02 y"))
	require.Equal(t, http.StatusCreated, resp.StatusCode)
	resp, _ = post(t, p.URL+"/api/game/down", nil)
	require.Equal(t, http.StatusCreated, resp.StatusCode)
	v := p.TakeViolations()
	require.Len(t, v, 2)
	require.Equal(t, Up, v[0].Direction)
	require.Contains(t, v[0].Detail, `"PACK v2" raw`)
	require.Equal(t, Down, v[1].Direction)
	require.Empty(t, p.Violations())
}

// TestUnwatchedRunsAreCountedNotKept: with SetWatch(false) the proxy
// keeps and scans nothing, but still counts the traffic; SetWatch(true)
// watches again.
func TestUnwatchedRunsAreCountedNotKept(t *testing.T) {
	b := newBackend(t)
	b.reply["/api/gr/up"] = []byte("ok")
	p := startProxy(t, b, Options{DeferScan: true})
	body := []byte("x PACK\x00\x00\x00\x02 y")
	p.SetWatch(false)
	resp, _ := post(t, p.URL+"/api/game/up", body)
	require.Equal(t, http.StatusCreated, resp.StatusCode)
	require.Empty(t, p.TakeViolations())
	require.Equal(t, int64(len(body)), p.Stats().Up)
	p.SetWatch(true)
	resp, _ = post(t, p.URL+"/api/game/up", body)
	require.Equal(t, http.StatusCreated, resp.StatusCode)
	require.Len(t, p.TakeViolations(), 1)
}

// TestTamperSpoil: the relay gets and handles every matching request, and
// only its answer is spoiled, the chosen number of times.
func TestTamperSpoil(t *testing.T) {
	b := newBackend(t)
	p := startProxy(t, b, Options{})
	p.SetTamper(mustTamper(t, "spoil", "-method", "post", "-path", "push$", "-count", "2"))

	var sigs []string
	for range 3 {
		resp, body := post(t, p.URL+"/api/game/push", []byte("create"))
		require.Equal(t, http.StatusCreated, resp.StatusCode)
		require.Equal(t, "create", string(body), "-how sig leaves the body alone")
		sigs = append(sigs, resp.Header.Get("X-Relay-Signature"))
	}
	require.Equal(t, []string{"ab10", "ab10", "ab12"}, sigs, "spoiled twice, then the count is spent")
	require.Len(t, b.requests(), 3, "the relay handled every request")

	p.SetTamper(mustTamper(t, "spoil", "-method", "POST", "-path", "push$"))
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, p.URL+"/api/game/push", nil)
	require.NoError(t, err)
	resp, _ := do(t, req)
	require.Equal(t, "ab12", resp.Header.Get("X-Relay-Signature"), "another method is left alone")
	resp, _ = post(t, p.URL+"/api/game/push/chunk", []byte("x"))
	require.Equal(t, "ab12", resp.Header.Get("X-Relay-Signature"), "another path is left alone")

	p.SetTamper(mustTamper(t, "spoil", "-how", "byte"))
	resp, body := post(t, p.URL+"/api/game/push", []byte("abcde"))
	require.Equal(t, "ab12", resp.Header.Get("X-Relay-Signature"))
	require.Equal(t, "ab\x9cde", string(body))
	resp, body = post(t, p.URL+"/api/game/push", nil)
	require.Empty(t, body)
	require.Equal(t, "ab10", resp.Header.Get("X-Relay-Signature"), "with no body to spoil, the signature is")

	p.SetTamper(mustTamper(t, "spoil", "-how", "502", "-path", "status"))
	before := len(b.requests())
	resp, body = post(t, p.URL+"/api/game/push/s/status", []byte("q"))
	require.Equal(t, http.StatusBadGateway, resp.StatusCode)
	require.Equal(t, "edgeproxy: spoiled\n", string(body))
	require.Empty(t, resp.Header.Get("X-Relay-Signature"))
	require.Len(t, b.requests(), before+1, "the relay did the work the 502 hides")
}

// TestTamperDropRequest: a dropped request never reaches the relay,
// whether or not it has a body.
func TestTamperDropRequest(t *testing.T) {
	b := newBackend(t)
	p := startProxy(t, b, Options{})
	p.SetTamper(mustTamper(t, "drop-request", "-method", "GET", "-path", "status$"))

	get, err := http.NewRequestWithContext(t.Context(), http.MethodGet, p.URL+"/api/game/push/s/status", nil)
	require.NoError(t, err)
	resp, _ := do(t, get)
	require.Equal(t, http.StatusBadGateway, resp.StatusCode)
	resp, _ = post(t, p.URL+"/api/game/push/s/status", []byte("x"))
	require.Equal(t, http.StatusCreated, resp.StatusCode, "another method passes")
	require.Len(t, b.requests(), 1)
	require.Equal(t, http.MethodPost, b.requests()[0].Method)

	p.SetTamper(mustTamper(t, "drop-request", "-reply", "503", "-count", "1"))
	resp, _ = post(t, p.URL+"/api/game/push", nil)
	require.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
	resp, _ = post(t, p.URL+"/api/game/push", nil)
	require.Equal(t, http.StatusCreated, resp.StatusCode, "the count is spent")
	require.Len(t, b.requests(), 2)

	p.SetTamper(mustTamper(t, "drop-request", "-reply", "hangup", "-path", "chunk"))
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPut, p.URL+"/api/game/push/s/chunk", bytes.NewReader([]byte("data")))
	require.NoError(t, err)
	_, err = (&http.Transport{}).RoundTrip(req)
	require.Error(t, err, "a hang-up gives the client no answer at all")
	require.Len(t, b.requests(), 2, "and the relay never sees the request")
	require.Equal(t, 5, p.Stats().Requests)
}

// TestShapedProxy: a shaped proxy adds a round trip of latency to every
// exchange and carries bodies at its rate.
func TestShapedProxy(t *testing.T) {
	b := newBackend(t)
	const latency = 50 * time.Millisecond
	const rate = 4 << 20
	p := startProxy(t, b, Options{
		ShapeUp:   shape.Link{Rate: rate, Latency: latency},
		ShapeDown: shape.Link{Rate: rate, Latency: latency},
	})
	start := time.Now()
	resp, body := post(t, p.URL+"/api/game/x", []byte("ping"))
	require.Equal(t, http.StatusCreated, resp.StatusCode)
	require.Equal(t, "ping", string(body))
	require.GreaterOrEqual(t, time.Since(start), 2*latency, "a request and its answer each wait the latency")

	// 1 MiB up and echoed down at 4 MiB/s each way: at least half a second.
	big := random(1<<20, 9)
	start = time.Now()
	_, body = post(t, p.URL+"/api/game/x", big)
	require.Equal(t, big, body)
	require.GreaterOrEqual(t, time.Since(start), 450*time.Millisecond)
}

// largestWrite records the largest write it was given.
type largestWrite struct{ n, largest int }

func (w *largestWrite) Write(b []byte) (int, error) {
	w.n += len(b)
	w.largest = max(w.largest, len(b))
	return len(b), nil
}

// TestRequestBodyPassesInLargePieces: the transport copies a request body
// with io.Copy, and the proxy's copy of it must move in the edge's own
// pieces rather than 32 KiB ones, or a benchmark through the proxy times a
// slower edge than the one it stands for.
func TestRequestBodyPassesInLargePieces(t *testing.T) {
	b := newBackend(t)
	for _, watched := range []bool{true, false} {
		p := startProxy(t, b, Options{})
		p.SetWatch(watched)
		body := random(1<<20, 7)
		tee := p.newTee(&exchange{}, Up, http.Header{}, io.NopCloser(bytes.NewReader(body)), int64(len(body)))
		var w largestWrite
		n, err := io.Copy(&w, tee)
		require.NoError(t, err)
		require.Equal(t, int64(len(body)), n)
		require.Greater(t, w.largest, 32<<10, "watched %v", watched)
		require.Equal(t, int64(len(body)), p.Stats().Up, "every byte is counted")
		require.NoError(t, tee.Close())
		if watched {
			require.Equal(t, body, tee.buf.Bytes(), "the watched copy is whole")
		}
	}
}
