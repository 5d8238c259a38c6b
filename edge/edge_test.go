package edge_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/git-relay/git-relay/edge"
)

// got is one request as the relay behind the edge received it, with its
// whole body (requests whose body broke off are not recorded: the relay
// cannot act on them).
type got struct {
	Method, Path, RawPath, Query, Host string
	Header                             http.Header
	Body                               []byte
}

// relay is a stand-in for the relay server: it records what reached it
// and answers with the handler the test sets, or echoes the body.
type relay struct {
	*httptest.Server
	mu     sync.Mutex
	got    []got
	answer http.HandlerFunc
}

func newRelay(t *testing.T) *relay {
	rl := &relay{}
	rl.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rl.mu.Lock()
		answer := rl.answer
		rl.mu.Unlock()
		if answer != nil {
			answer(w, r)
			return
		}
		body, err := io.ReadAll(r.Body)
		if err != nil {
			return
		}
		rl.record(r, body)
		w.Header().Set("X-Relay", "yes")
		w.WriteHeader(http.StatusCreated)
		_, _ = w.Write(body)
	}))
	t.Cleanup(rl.Close)
	return rl
}

func (rl *relay) record(r *http.Request, body []byte) {
	rl.mu.Lock()
	defer rl.mu.Unlock()
	rl.got = append(rl.got, got{r.Method, r.URL.Path, r.URL.RawPath, r.URL.RawQuery, r.Host, r.Header.Clone(), body})
}

func (rl *relay) setAnswer(h http.HandlerFunc) {
	rl.mu.Lock()
	defer rl.mu.Unlock()
	rl.answer = h
}

func (rl *relay) requests() []got {
	rl.mu.Lock()
	defer rl.mu.Unlock()
	return append([]got(nil), rl.got...)
}

// observed collects what Options.Observe is told.
type observed struct {
	mu sync.Mutex
	ex []edge.Exchange
}

func (o *observed) add(ex edge.Exchange) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.ex = append(o.ex, ex)
}

// last waits for the newest exchange: a successful one is reported once
// its answer has gone, which the client may see first.
func (o *observed) last(t *testing.T) edge.Exchange {
	t.Helper()
	var ex edge.Exchange
	require.Eventually(t, func() bool {
		o.mu.Lock()
		defer o.mu.Unlock()
		if len(o.ex) == 0 {
			return false
		}
		ex = o.ex[len(o.ex)-1]
		return true
	}, 10*time.Second, 5*time.Millisecond)
	return ex
}

// start runs a Forwarder in front of upstream and returns its base URL.
func start(t *testing.T, upstream string, o edge.Options) (string, *observed) {
	t.Helper()
	obs := &observed{}
	o.Upstream = upstream
	o.Observe = obs.add
	f, err := edge.New(o)
	require.NoError(t, err)
	srv := httptest.NewServer(f)
	t.Cleanup(func() {
		srv.Close()
		f.CloseIdleConnections()
	})
	return srv.URL, obs
}

func do(t *testing.T, method, url string, body io.Reader, hdr ...string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, url, body)
	require.NoError(t, err)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Add(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp, out
}

func TestForwardsMethodPathQueryAndHeaders(t *testing.T) {
	rl := newRelay(t)
	url, obs := start(t, rl.URL, edge.Options{})

	resp, body := do(t, http.MethodPut, url+"/api/game/push/ab%20c/chunk?n=4&i=3&x=%2F", strings.NewReader("hello"),
		"Authorization", "GR1 sig", "X-Custom", "kept", "Connection", "X-Private", "X-Private", "dropped",
		"Proxy-Authorization", "Basic secret", "Keep-Alive", "timeout=5")
	require.Equal(t, http.StatusCreated, resp.StatusCode)
	require.Equal(t, "yes", resp.Header.Get("X-Relay"))
	require.Equal(t, "hello", string(body))

	reqs := rl.requests()
	require.Len(t, reqs, 1)
	g := reqs[0]
	require.Equal(t, http.MethodPut, g.Method)
	require.Equal(t, "/api/gr/push/ab c/chunk", g.Path)
	require.Equal(t, "n=4&i=3&x=%2F", g.Query, "the raw query passes byte for byte")
	require.Equal(t, strings.TrimPrefix(rl.URL, "http://"), g.Host, "Host is the relay's, not the edge's")
	require.Equal(t, "GR1 sig", g.Header.Get("Authorization"))
	require.Equal(t, "kept", g.Header.Get("X-Custom"))
	for _, h := range []string{"X-Private", "Proxy-Authorization", "Keep-Alive"} {
		require.Empty(t, g.Header.Values(h), h)
	}
	require.Equal(t, "127.0.0.1", g.Header.Get("X-Forwarded-For"))
	require.Equal(t, "http", g.Header.Get("X-Forwarded-Proto"))
	require.Equal(t, strings.TrimPrefix(url, "http://"), g.Header.Get("X-Forwarded-Host"))

	ex := obs.last(t)
	require.NoError(t, ex.Err)
	require.Equal(t, "/api/game/push/ab c/chunk", ex.Path)
	require.Equal(t, "/api/gr/push/ab%20c/chunk", ex.Upstream)
	require.Equal(t, http.StatusCreated, ex.Status)
	require.EqualValues(t, 5, ex.Up)
	require.EqualValues(t, 5, ex.Down)
}

func TestStatusesAndErrorsPassThrough(t *testing.T) {
	rl := newRelay(t)
	rl.setAnswer(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Relay-Signature", "abc")
		w.Header().Set("Connection", "X-Hop")
		w.Header().Set("X-Hop", "no")
		w.WriteHeader(http.StatusConflict)
		_, _ = io.WriteString(w, `{"code":"conflict"}`)
	})
	url, _ := start(t, rl.URL, edge.Options{})
	resp, body := do(t, http.MethodPost, url+"/api/game/push", nil)
	require.Equal(t, http.StatusConflict, resp.StatusCode)
	require.Equal(t, "abc", resp.Header.Get("X-Relay-Signature"))
	require.Empty(t, resp.Header.Get("X-Hop"))
	require.Equal(t, `{"code":"conflict"}`, string(body))
	require.EqualValues(t, len(body), resp.ContentLength)
}

func TestNoRedirectIsFollowed(t *testing.T) {
	elsewhere := newRelay(t)
	rl := newRelay(t)
	rl.setAnswer(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, elsewhere.URL+"/api/gr/x", http.StatusFound)
	})
	url, _ := start(t, rl.URL, edge.Options{})
	client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := client.Get(url + "/api/game/x")
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusFound, resp.StatusCode)
	require.Equal(t, elsewhere.URL+"/api/gr/x", resp.Header.Get("Location"))
	require.Empty(t, elsewhere.requests(), "the edge does not follow redirects")
}

func TestRoutes(t *testing.T) {
	rl := newRelay(t)
	url, obs := start(t, rl.URL, edge.Options{})

	for _, path := range []string{"/", "/api/gr/push", "/api/gamex/push", "/healthz/x", "/api/game"} {
		resp, _ := do(t, http.MethodPost, url+path, strings.NewReader("x"))
		require.Equal(t, http.StatusNotFound, resp.StatusCode, path)
		require.ErrorIs(t, obs.last(t).Err, edge.ErrNoRoute)
	}
	require.Empty(t, rl.requests(), "unrouted requests never reach the relay")

	// Dot segments would leave the prefix once the relay cleans the path;
	// most clients clean them away, so send them raw.
	for _, path := range []string{"/api/game/../healthz", "/api/game/%2e%2e/x", "/api/game/a/%2E/b", "/api/game/a%2F..%2Fb"} {
		require.Equal(t, http.StatusBadRequest, rawStatus(t, url, "GET "+path), path)
	}
	require.Empty(t, rl.requests())
}

// rawStatus sends one request line as written and returns the status.
func rawStatus(t *testing.T, base, line string) int {
	t.Helper()
	c, err := net.Dial("tcp", strings.TrimPrefix(base, "http://"))
	require.NoError(t, err)
	defer c.Close()
	_, err = fmt.Fprintf(c, "%s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", line)
	require.NoError(t, err)
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	require.NoError(t, err)
	resp.Body.Close()
	return resp.StatusCode
}

func TestHealthProbe(t *testing.T) {
	rl := newRelay(t)
	rl.setAnswer(func(w http.ResponseWriter, r *http.Request) {
		rl.record(r, nil)
		_, _ = io.WriteString(w, "ok\n")
	})
	url, _ := start(t, rl.URL, edge.Options{})
	resp, body := do(t, http.MethodGet, url+"/healthz", nil)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, "ok\n", string(body))
	require.Equal(t, "/healthz", rl.requests()[0].Path, "the probe checks the relay behind the edge")
	resp, _ = do(t, http.MethodHead, url+"/healthz", nil)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	resp, _ = do(t, http.MethodPost, url+"/healthz", nil)
	require.Equal(t, http.StatusMethodNotAllowed, resp.StatusCode)

	rl.Close()
	resp, body = do(t, http.MethodGet, url+"/healthz", nil)
	require.Equal(t, http.StatusBadGateway, resp.StatusCode, "a relay that is down shows through the probe")
	require.Contains(t, string(body), "relay unreachable")
}

func TestRequestBodyLimit(t *testing.T) {
	rl := newRelay(t)
	url, obs := start(t, rl.URL, edge.Options{MaxBody: 1000})

	resp, _ := do(t, http.MethodPost, url+"/api/game/x", bytes.NewReader(make([]byte, 1000)))
	require.Equal(t, http.StatusCreated, resp.StatusCode, "a body at the limit passes")

	resp, _ = do(t, http.MethodPost, url+"/api/game/x", bytes.NewReader(make([]byte, 1001)))
	require.Equal(t, http.StatusRequestEntityTooLarge, resp.StatusCode)
	ex := obs.last(t)
	require.ErrorIs(t, ex.Err, edge.ErrRequestTooLarge)
	require.EqualValues(t, 1001, ex.DeclaredUp)
	require.Zero(t, ex.Up, "a declared oversize body is not read")

	// A chunked body declares no length: the edge counts it, and cuts the
	// forwarded request off before its end.
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, url+"/api/game/y",
		io.MultiReader(bytes.NewReader(make([]byte, 900)), bytes.NewReader(make([]byte, 900))))
	require.NoError(t, err)
	req.ContentLength = -1
	resp, err = http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusRequestEntityTooLarge, resp.StatusCode)
	ex = obs.last(t)
	require.ErrorIs(t, ex.Err, edge.ErrRequestTooLarge)
	require.EqualValues(t, -1, ex.DeclaredUp)
	require.EqualValues(t, 1000, ex.Up)

	require.Len(t, rl.requests(), 1, "no oversized body reaches the relay whole")
}

func TestResponseBodyLimit(t *testing.T) {
	rl := newRelay(t)
	rl.setAnswer(func(w http.ResponseWriter, r *http.Request) {
		n := 1000
		if strings.HasSuffix(r.URL.Path, "big") {
			n = 1001
		}
		if strings.HasPrefix(r.URL.Path, "/api/gr/chunked") {
			// Flushing first sends the answer without a length.
			w.WriteHeader(http.StatusOK)
			w.(http.Flusher).Flush()
		}
		_, _ = w.Write(bytes.Repeat([]byte("r"), n))
	})
	url, obs := start(t, rl.URL, edge.Options{MaxBody: 1000})

	resp, body := do(t, http.MethodGet, url+"/api/game/ok", nil)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Len(t, body, 1000)
	resp, body = do(t, http.MethodGet, url+"/api/game/chunked-ok", nil)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Len(t, body, 1000)

	resp, body = do(t, http.MethodGet, url+"/api/game/big", nil)
	require.Equal(t, http.StatusBadGateway, resp.StatusCode, "a declared oversize answer is refused whole")
	require.Contains(t, string(body), "response body over 1000 bytes")
	ex := obs.last(t)
	require.ErrorIs(t, ex.Err, edge.ErrResponseTooLarge)
	require.EqualValues(t, 1001, ex.DeclaredDown)

	// Counted, the answer has started: it is cut, never delivered whole.
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, url+"/api/game/chunked-big", nil)
	require.NoError(t, err)
	resp, err = http.DefaultClient.Do(req)
	require.NoError(t, err)
	_, err = io.ReadAll(resp.Body)
	resp.Body.Close()
	require.ErrorIs(t, err, io.ErrUnexpectedEOF)
	ex = obs.last(t)
	require.ErrorIs(t, ex.Err, edge.ErrResponseTooLarge)
	require.True(t, ex.Cut)
	require.Equal(t, http.StatusBadGateway, ex.Status, "a cut answer is reported as 502")
}

// TestStreamsBothWays: the first bytes of a body cross the edge before the
// sender has written the rest, in both directions. A forwarder that held a
// whole body would stall here.
func TestStreamsBothWays(t *testing.T) {
	rl := newRelay(t)
	seen := make(chan string, 1)
	resume := make(chan struct{})
	rl.setAnswer(func(w http.ResponseWriter, r *http.Request) {
		buf := make([]byte, 5)
		_, err := io.ReadFull(r.Body, buf)
		if err != nil {
			return
		}
		seen <- string(buf)
		rest, _ := io.ReadAll(r.Body)
		_, _ = io.WriteString(w, "first")
		w.(http.Flusher).Flush()
		<-resume
		_, _ = w.Write(rest)
	})
	url, _ := start(t, rl.URL, edge.Options{})

	pr, pw := io.Pipe()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, url+"/api/game/stream", pr)
	require.NoError(t, err)
	respc := make(chan *http.Response, 1)
	go func() {
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			respc <- resp
		}
		close(respc)
	}()
	_, err = io.WriteString(pw, "hello")
	require.NoError(t, err)
	select {
	case s := <-seen:
		require.Equal(t, "hello", s)
	case <-time.After(20 * time.Second):
		t.Fatal("the relay never saw the first bytes of a request whose body is still being written")
	}
	_, err = io.WriteString(pw, " world")
	require.NoError(t, err)
	require.NoError(t, pw.Close())

	var resp *http.Response
	select {
	case resp = <-respc:
		require.NotNil(t, resp)
	case <-time.After(20 * time.Second):
		t.Fatal("no answer")
	}
	defer resp.Body.Close()
	first := make([]byte, 5)
	_, err = io.ReadFull(resp.Body, first)
	require.NoError(t, err, "the first bytes of the answer arrive while the relay is still writing")
	require.Equal(t, "first", string(first))
	close(resume)
	rest, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.Equal(t, " world", string(rest))
}

func TestTimeout(t *testing.T) {
	rl := newRelay(t)
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	rl.setAnswer(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, "/midway") {
			_, _ = io.WriteString(w, "partial")
			w.(http.Flusher).Flush()
		}
		select {
		case <-release:
		case <-r.Context().Done():
		}
	})
	url, obs := start(t, rl.URL, edge.Options{Timeout: 300 * time.Millisecond})

	resp, body := do(t, http.MethodGet, url+"/api/game/slow", nil)
	require.Equal(t, http.StatusGatewayTimeout, resp.StatusCode)
	require.Contains(t, string(body), "did not answer in time")
	require.ErrorIs(t, obs.last(t).Err, edge.ErrTimeout)

	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, url+"/api/game/midway", nil)
	require.NoError(t, err)
	resp, err = http.DefaultClient.Do(req)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	got, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.Error(t, err, "an answer still running at the time limit is cut")
	require.Equal(t, "partial", string(got))
	ex := obs.last(t)
	require.ErrorIs(t, ex.Err, edge.ErrTimeout)
	require.True(t, ex.Cut)
}

// TestPathParam: behind a platform rewrite the path below the prefix may
// come as a query parameter; it is used when the path itself is not under
// the prefix, and never forwarded.
func TestPathParam(t *testing.T) {
	rl := newRelay(t)
	url, _ := start(t, rl.URL, edge.Options{PathParam: "edgepath"})
	do(t, http.MethodPost, url+"/api/edge?a=1&edgepath=push%2Fs1%2Fchunk&b=2", strings.NewReader("x"))
	do(t, http.MethodPost, url+"/api/game/push/s2?edgepath=push%2Fs2&repo=o%2Fr", strings.NewReader("y"))
	resp, _ := do(t, http.MethodPost, url+"/api/edge?a=1", strings.NewReader("z"))
	require.Equal(t, http.StatusNotFound, resp.StatusCode)
	resp, _ = do(t, http.MethodPost, url+"/api/edge?edgepath=..%2Fhealthz", strings.NewReader("z"))
	require.Equal(t, http.StatusBadRequest, resp.StatusCode)

	reqs := rl.requests()
	require.Len(t, reqs, 2)
	require.Equal(t, "/api/gr/push/s1/chunk", reqs[0].Path)
	require.Equal(t, "a=1&b=2", reqs[0].Query)
	require.Equal(t, "/api/gr/push/s2", reqs[1].Path)
	require.Equal(t, "repo=o%2Fr", reqs[1].Query)
}

func TestStripHeaderPrefixes(t *testing.T) {
	rl := newRelay(t)
	url, _ := start(t, rl.URL, edge.Options{StripHeaderPrefixes: []string{"X-Vercel-"}})
	do(t, http.MethodPost, url+"/api/game/x", strings.NewReader("x"),
		"X-Vercel-Oidc-Token", "secret", "x-vercel-id", "abc", "X-Forwarded-For", "203.0.113.9", "X-Forwarded-Proto", "https")
	g := rl.requests()[0]
	require.Empty(t, g.Header.Get("X-Vercel-Oidc-Token"))
	require.Empty(t, g.Header.Get("X-Vercel-Id"))
	require.Equal(t, "203.0.113.9, 127.0.0.1", g.Header.Get("X-Forwarded-For"))
	require.Equal(t, "https", g.Header.Get("X-Forwarded-Proto"), "a platform's scheme is kept")
}

func TestUpstreamBasePath(t *testing.T) {
	rl := newRelay(t)
	for base, want := range map[string]string{
		rl.URL + "/relay":    "/relay/api/gr/x",
		rl.URL + "/api/gr/":  "/api/gr/x",
		rl.URL + "/r/api/gr": "/r/api/gr/x",
		rl.URL + "/":         "/api/gr/x",
	} {
		url, _ := start(t, base, edge.Options{})
		do(t, http.MethodGet, url+"/api/game/x", nil)
		reqs := rl.requests()
		require.Equal(t, want, reqs[len(reqs)-1].Path, base)
	}
}

func TestNewRejectsBadOptions(t *testing.T) {
	for _, o := range []edge.Options{
		{}, {Upstream: "127.0.0.1:80"}, {Upstream: "ftp://x"}, {Upstream: "http://"}, {Upstream: "http://x?y=1"},
		{Upstream: "http://x", ClientPrefix: "api/game/"}, {Upstream: "http://x", ServerPrefix: "/api/gr"},
	} {
		_, err := edge.New(o)
		require.Error(t, err, "%+v", o)
	}
}

type abortTransport struct{}

func (abortTransport) RoundTrip(*http.Request) (*http.Response, error) {
	return nil, fmt.Errorf("hang up: %w", http.ErrAbortHandler)
}

func TestTransportCanHangUp(t *testing.T) {
	url, obs := start(t, "http://127.0.0.1:1", edge.Options{Transport: abortTransport{}})
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, url+"/api/game/x", nil)
	require.NoError(t, err)
	_, err = (&http.Transport{}).RoundTrip(req)
	require.Error(t, err, "the client gets no answer at all")
	require.ErrorIs(t, obs.last(t).Err, http.ErrAbortHandler)
}

func TestListenAndServe(t *testing.T) {
	rl := newRelay(t)
	rl.setAnswer(func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "ok\n") })
	ctx, cancel := context.WithCancel(t.Context())
	logr, logw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		done <- edge.ListenAndServe(ctx, "127.0.0.1:0", edge.Options{Upstream: rl.URL}, logw)
		logw.Close()
	}()
	sc := bufio.NewScanner(logr)
	require.True(t, sc.Scan())
	m := regexp.MustCompile(`^edge: listening on (http://127\.0\.0\.1:[0-9]+) \(forwarding /api/game/ to (\S+)\)$`).FindStringSubmatch(sc.Text())
	require.NotNil(t, m, sc.Text())
	require.Equal(t, rl.URL+"/api/gr/", m[2])
	lines := make(chan string, 100)
	go func() {
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()

	resp, body := do(t, http.MethodGet, m[1]+"/healthz", nil)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, "ok\n", string(body))
	resp, _ = do(t, http.MethodGet, m[1]+"/nowhere", nil)
	require.Equal(t, http.StatusNotFound, resp.StatusCode)

	cancel()
	select {
	case err := <-done:
		require.NoError(t, err, "the edge stops cleanly when told to")
	case <-time.After(30 * time.Second):
		t.Fatal("ListenAndServe did not return after its context ended")
	}
	var log []string
	for l := range lines {
		log = append(log, l)
	}
	all := strings.Join(log, "\n")
	require.Regexp(t, `level=INFO msg=forwarded method=GET path=/healthz status=200`, all)
	require.Regexp(t, `level=WARN msg="not forwarded" method=GET path=/nowhere status=404 .*err="no route"`, all)
	require.Contains(t, all, "msg=stopped")
}

func TestListenAndServeRefusesBadUpstream(t *testing.T) {
	err := edge.ListenAndServe(t.Context(), "127.0.0.1:0", edge.Options{Upstream: "nowhere"}, io.Discard)
	require.Error(t, err)
	require.False(t, errors.Is(err, context.Canceled))
}

// TestStandardLibraryOnly: a function built in another module imports this
// package, so it must not pull in anything beyond the standard library.
func TestStandardLibraryOnly(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "-f", "{{if not .Standard}}{{.ImportPath}}{{end}}", ".").Output()
	require.NoError(t, err)
	require.Equal(t, "github.com/git-relay/git-relay/edge", strings.TrimSpace(string(out)))
}

// pieces records the size of each write it takes.
type pieces struct {
	n, largest int
}

func (p *pieces) Write(b []byte) (int, error) {
	p.n += len(b)
	p.largest = max(p.largest, len(b))
	return len(b), nil
}

// pieceTransport reads a request's body as http.Transport does (io.Copy)
// and answers size bytes.
type pieceTransport struct {
	body pieces
	size int
}

func (p *pieceTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if _, err := io.Copy(&p.body, r.Body); err != nil {
		return nil, err
	}
	return &http.Response{StatusCode: http.StatusOK, Header: http.Header{}, ContentLength: int64(p.size),
		Body: io.NopCloser(bytes.NewReader(make([]byte, p.size))), Request: r}, nil
}

// pieceWriter is a ResponseWriter that records the size of each write.
type pieceWriter struct {
	pieces
	header http.Header
	status int
}

func (w *pieceWriter) Header() http.Header  { return w.header }
func (w *pieceWriter) WriteHeader(code int) { w.status = code }

// TestBodiesPassInLargePieces: a chunk is megabytes, and the edge moves it
// in pieces larger than io.Copy's 32 KiB both ways (each piece is a system
// call and a wake-up on either side).
func TestBodiesPassInLargePieces(t *testing.T) {
	const size = 1 << 20
	tr := &pieceTransport{size: size}
	f, err := edge.New(edge.Options{Upstream: "http://relay.invalid", Transport: tr})
	require.NoError(t, err)
	w := &pieceWriter{header: http.Header{}}
	f.ServeHTTP(w, httptest.NewRequest(http.MethodPost, "/api/game/x", bytes.NewReader(make([]byte, size))))
	require.Equal(t, http.StatusOK, w.status)
	require.Equal(t, size, tr.body.n)
	require.Equal(t, size, w.n)
	require.Greater(t, tr.body.largest, 32<<10, "the request's body")
	require.Greater(t, w.largest, 32<<10, "the answer")
}
