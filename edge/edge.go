// Package edge is the relay's edge forwarder: the stateless proxy that the
// seed's design puts between git-remote-relay and git-relay-server (the
// seed's git-relay-vercel). It forwards the method, the path below the
// client prefix (/api/game/…) onto the server prefix (/api/gr/…), the raw
// query and the end-to-end headers, and streams both bodies, holding each
// to the platform's body limit. It keeps nothing between requests and
// follows no redirects.
//
// The same Forwarder runs in three places, so that what users deploy is
// what the tests run: the Vercel function in deploy/vercel, the
// `git-relay-server edge` command, and the test proxy (internal/edgeproxy)
// that the end-to-end suite and the benchmarks put in front of the relay.
//
// The package depends on the standard library alone, and lives outside
// internal/, so that a function built in another module can import it.
package edge

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Defaults, from the seed's platform and the relay's API.
const (
	// DefaultMaxBody caps every request and response body, in bytes: the
	// serverless platform's limit.
	DefaultMaxBody = 4_500_000
	// DefaultClientPrefix is where clients find the relay's routes.
	DefaultClientPrefix = "/api/game/"
	// DefaultServerPrefix is where the relay server serves them.
	DefaultServerPrefix = "/api/gr/"
	// DefaultTimeout bounds one exchange, as a serverless function's
	// maximum duration does. It is the helper's own patience: it declares
	// a stall after 60 s without an answer, and the server's long-polls
	// (5 s today, at most 25 s by design) fit well inside it.
	DefaultTimeout = 60 * time.Second
	// HealthPath is the probe route, forwarded to the relay's own
	// /healthz: a 200 through the edge means the whole path is up.
	HealthPath = "/healthz"
)

// Why an exchange did not complete normally (Exchange.Err).
var (
	// ErrNoRoute: the path is neither under the client prefix nor the
	// probe route. The client gets 404 and nothing is forwarded.
	ErrNoRoute = errors.New("no route")
	// ErrBadPath: the path below the prefix holds a "." or ".." segment,
	// which would leave the server prefix. The client gets 400.
	ErrBadPath = errors.New("path leaves the relay's routes")
	// ErrMethod: a probe with a method other than GET or HEAD (405).
	ErrMethod = errors.New("method not allowed")
	// ErrRequestTooLarge: the request body was over the limit, by its
	// declared length (nothing was forwarded) or by count (the upstream
	// request was cut off before its end). The client gets 413.
	ErrRequestTooLarge = errors.New("request body too large")
	// ErrResponseTooLarge: the response body was over the limit. By its
	// declared length the client gets 502; by count the response is cut
	// off and the client sees a broken connection.
	ErrResponseTooLarge = errors.New("response body too large")
	// ErrTimeout: the exchange outlived Options.Timeout (504, or a cut
	// response once it had started).
	ErrTimeout = errors.New("exchange outlived the edge's time limit")
	// ErrUnreachable: the relay could not be reached or broke off (502,
	// or a cut response once it had started).
	ErrUnreachable = errors.New("relay unreachable")
	// ErrClientGone: the client went away before the exchange ended.
	ErrClientGone = errors.New("client went away")
)

// Options configure a Forwarder. Only Upstream is required.
type Options struct {
	// Upstream is the relay server's base URL, where it serves /healthz
	// and the server prefix: http://host:port, or https://host/base. A
	// trailing server prefix (…/api/gr) is accepted and dropped.
	Upstream string
	// ClientPrefix and ServerPrefix map client paths onto server paths
	// (defaults DefaultClientPrefix and DefaultServerPrefix). Both start
	// and end with "/".
	ClientPrefix, ServerPrefix string
	// MaxBody caps every request and response body in bytes
	// (0: DefaultMaxBody).
	MaxBody int64
	// Timeout bounds one exchange, from the request's arrival to the last
	// byte of the answer (0: DefaultTimeout). Set it a little under the
	// platform's maximum function duration, so that the edge answers 504
	// itself rather than being killed.
	Timeout time.Duration
	// PathParam names a query parameter that may carry the path below the
	// client prefix. A platform rewrite (Vercel's /api/game/:p*) adds it
	// to the query; the forwarder uses it when the request's own path is
	// not under the client prefix, and never forwards it.
	PathParam string
	// StripHeaderPrefixes are request header name prefixes that never
	// reach the relay, such as the platform's own "X-Vercel-" headers
	// (some of which carry credentials).
	StripHeaderPrefixes []string
	// Transport carries the forwarded requests (nil: a dedicated
	// http.Transport). It is used as a RoundTripper, so no redirect is
	// ever followed. A Transport error that wraps http.ErrAbortHandler
	// makes the forwarder drop the client's connection without an answer.
	Transport http.RoundTripper
	// Observe, when set, is told how each exchange ended. It is called
	// before the client can see a refusal or a cut (so a test that waits
	// for the answer also sees the observation), and after the last byte
	// of a completed answer.
	Observe func(Exchange)
}

// Exchange describes one request through the forwarder.
type Exchange struct {
	// Request is the client's request as the forwarder received it.
	Request *http.Request
	// Method and Path are the client's (Path without the query).
	Method, Path string
	// Upstream is the server path it was mapped to ("" when unrouted).
	Upstream string
	// Status is what the client got; a response cut after its status
	// line counts as 502 (and Cut is set). 0 when there was no answer.
	Status int
	// Cut reports a response broken off after its status line.
	Cut bool
	// Up and Down count body bytes read from the client and written to
	// it; DeclaredUp and DeclaredDown are the request's and the relay's
	// Content-Length (-1: not declared).
	Up, Down, DeclaredUp, DeclaredDown int64
	// Err says why the exchange did not complete normally (nil if it did).
	Err error
	// Duration is the time from the request's arrival to the end.
	Duration time.Duration
}

// Forwarder is the edge, as an http.Handler.
type Forwarder struct {
	o         Options
	base      *url.URL
	transport http.RoundTripper
	own       *http.Transport // the default transport, when we made it
}

// New checks o and returns a Forwarder.
func New(o Options) (*Forwarder, error) {
	base, err := url.Parse(strings.TrimSpace(o.Upstream))
	if err != nil || (base.Scheme != "http" && base.Scheme != "https") || base.Host == "" || base.RawQuery != "" || base.Fragment != "" {
		return nil, fmt.Errorf("edge upstream %q: want the relay server's base URL, such as http://127.0.0.1:8080 or https://relay.example.com", o.Upstream)
	}
	if o.ClientPrefix == "" {
		o.ClientPrefix = DefaultClientPrefix
	}
	if o.ServerPrefix == "" {
		o.ServerPrefix = DefaultServerPrefix
	}
	for _, p := range []string{o.ClientPrefix, o.ServerPrefix} {
		if !strings.HasPrefix(p, "/") || !strings.HasSuffix(p, "/") {
			return nil, fmt.Errorf("edge prefix %q: want a path that starts and ends with /", p)
		}
	}
	if o.MaxBody <= 0 {
		o.MaxBody = DefaultMaxBody
	}
	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}
	// The server prefix is ours to add: a base URL copied from relay.url
	// (…/api/gr) would otherwise double it.
	base.Path = strings.TrimSuffix(strings.TrimRight(base.Path, "/"), strings.TrimRight(o.ServerPrefix, "/"))
	base.Path = strings.TrimRight(base.Path, "/")
	base.RawPath = ""
	f := &Forwarder{o: o, base: base, transport: o.Transport}
	if f.transport == nil {
		f.own = &http.Transport{
			// The edge talks to the relay directly, whatever proxy the
			// environment names.
			Proxy:       nil,
			DialContext: (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
			// Bodies pass exactly as they were sent: no transfer
			// compression is asked for or undone on the way.
			DisableCompression:  true,
			ForceAttemptHTTP2:   true,
			TLSHandshakeTimeout: 10 * time.Second,
			MaxIdleConnsPerHost: 16,
			IdleConnTimeout:     30 * time.Second,
		}
		f.transport = f.own
	}
	return f, nil
}

// CloseIdleConnections closes the idle connections of the forwarder's own
// transport (a Transport passed in Options is the caller's to close).
func (f *Forwarder) CloseIdleConnections() {
	if f.own != nil {
		f.own.CloseIdleConnections()
	}
}

// Route is where the forwarder sends r: the upstream URL, with the path
// parameter taken out of the query.
type Route struct {
	URL *url.URL
}

// RouteError is a request the forwarder refuses to route: the status the
// client gets and why (ErrNoRoute, ErrBadPath or ErrMethod).
type RouteError struct {
	Status int
	Err    error
}

func (e *RouteError) Error() string { return e.Err.Error() }
func (e *RouteError) Unwrap() error { return e.Err }

// Route maps a client request onto the relay, or says why it cannot.
func (f *Forwarder) Route(r *http.Request) (*Route, error) {
	path := r.URL.Path
	query := stripParam(r.URL.RawQuery, f.o.PathParam)
	if path == HealthPath {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			return nil, &RouteError{http.StatusMethodNotAllowed, ErrMethod}
		}
		return f.route(HealthPath, query), nil
	}
	var suffix string
	switch escaped := r.URL.EscapedPath(); {
	case strings.HasPrefix(escaped, f.o.ClientPrefix):
		suffix = strings.TrimPrefix(escaped, f.o.ClientPrefix)
	case strings.HasPrefix(path, f.o.ClientPrefix):
		suffix = escapeSegments(strings.TrimPrefix(path, f.o.ClientPrefix))
	case f.o.PathParam != "":
		vals, err := url.ParseQuery(r.URL.RawQuery)
		p, ok := vals[f.o.PathParam]
		if err != nil || !ok {
			return nil, &RouteError{http.StatusNotFound, ErrNoRoute}
		}
		suffix = escapeSegments(strings.TrimPrefix(strings.Join(p, "/"), "/"))
	default:
		return nil, &RouteError{http.StatusNotFound, ErrNoRoute}
	}
	for _, seg := range strings.Split(suffix, "/") {
		// A dot segment, plain or escaped, or an escaped slash could
		// reach a server path outside the prefix once the server cleans
		// the path.
		if s, err := url.PathUnescape(seg); err != nil || s == "." || s == ".." || strings.ContainsAny(s, "/\\") {
			return nil, &RouteError{http.StatusBadRequest, ErrBadPath}
		}
	}
	return f.route(f.o.ServerPrefix+suffix, query), nil
}

func (f *Forwarder) route(escapedPath, query string) *Route {
	u := *f.base
	raw := u.EscapedPath() + escapedPath
	p, err := url.PathUnescape(raw)
	if err != nil {
		p = raw
	}
	u.Path, u.RawPath = p, raw
	u.RawQuery = query
	return &Route{URL: &u}
}

func escapeSegments(p string) string {
	segs := strings.Split(p, "/")
	for i, s := range segs {
		segs[i] = url.PathEscape(s)
	}
	return strings.Join(segs, "/")
}

// stripParam removes every name=… pair from a raw query and keeps the
// rest byte for byte.
func stripParam(raw, name string) string {
	if name == "" || raw == "" {
		return raw
	}
	parts := strings.Split(raw, "&")
	keep := parts[:0]
	for _, p := range parts {
		k, _, _ := strings.Cut(p, "=")
		if u, err := url.QueryUnescape(k); err == nil && u == name {
			continue
		}
		keep = append(keep, p)
	}
	return strings.Join(keep, "&")
}

// hopHeaders are the hop-by-hop headers (RFC 9110 section 7.6.1), which a
// proxy must not pass on, and Expect, which the edge answers itself.
var hopHeaders = []string{
	"Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization",
	"Proxy-Connection", "Te", "Trailer", "Transfer-Encoding", "Upgrade", "Expect",
}

// endToEnd copies h without its hop-by-hop headers and Content-Length
// (which the forwarder sets from the body it sends).
func endToEnd(h http.Header) http.Header {
	out := h.Clone()
	if out == nil {
		out = http.Header{}
	}
	for _, c := range h.Values("Connection") {
		for _, name := range strings.Split(c, ",") {
			out.Del(strings.TrimSpace(name))
		}
	}
	for _, name := range hopHeaders {
		out.Del(name)
	}
	out.Del("Content-Length")
	return out
}

func (f *Forwarder) requestHeader(r *http.Request) http.Header {
	h := endToEnd(r.Header)
	for name := range h {
		for _, p := range f.o.StripHeaderPrefixes {
			if len(name) >= len(p) && strings.EqualFold(name[:len(p)], p) {
				h.Del(name)
			}
		}
	}
	client := r.RemoteAddr
	if host, _, err := net.SplitHostPort(client); err == nil {
		client = host
	}
	if client != "" {
		prior := h.Values("X-Forwarded-For")
		last := ""
		if len(prior) > 0 {
			hops := strings.Split(prior[len(prior)-1], ",")
			last = strings.TrimSpace(hops[len(hops)-1])
		}
		// A platform in front of us may have recorded the client already.
		if last != client {
			h.Set("X-Forwarded-For", strings.Join(append(prior, client), ", "))
		}
	}
	if h.Get("X-Forwarded-Proto") == "" {
		proto := "http"
		if r.TLS != nil {
			proto = "https"
		}
		h.Set("X-Forwarded-Proto", proto)
	}
	if h.Get("X-Forwarded-Host") == "" && r.Host != "" {
		h.Set("X-Forwarded-Host", r.Host)
	}
	return h
}

// limitedBody reads a request body and fails, passing on nothing past the
// limit, once it holds more than max bytes.
//
// A body of declared length ends when that many bytes have passed, without
// asking the client's body again. The transport reads once more after the
// last byte, to see the end, and the relay may already have answered by
// then: Go's server closes a request body when the answer's header goes
// out, and that last read would fail with http.ErrBodyReadAfterClose, which
// the transport takes for a failed request and drops the connection the
// answer is still coming on (seen here as 1 in a few hundred 1 MiB echoes
// cut short).
type limitedBody struct {
	r        io.ReadCloser
	max      int64
	declared int64 // the request's Content-Length; -1 when unknown
	mu       sync.Mutex
	n        int64
	tooBig   bool
}

func (b *limitedBody) Read(p []byte) (int, error) {
	b.mu.Lock()
	room := b.max - b.n
	ended := b.declared >= 0 && b.n >= b.declared
	b.mu.Unlock()
	if ended {
		return 0, io.EOF
	}
	if int64(len(p)) > room+1 {
		p = p[:room+1]
	}
	n, err := b.r.Read(p)
	b.mu.Lock()
	defer b.mu.Unlock()
	if int64(n) > room {
		b.n += room
		b.tooBig = true
		return int(room), ErrRequestTooLarge
	}
	b.n += int64(n)
	return n, err
}

// WriteTo passes the body on in reads and writes of copyBuf bytes: without
// it the transport copies it 32 KiB at a time, two system calls and a
// wake-up each. Read applies the limits.
func (b *limitedBody) WriteTo(w io.Writer) (int64, error) {
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	// Hidden from io.CopyBuffer: this WriteTo, and a ReadFrom of w's,
	// which would copy in sizes of their own.
	return io.CopyBuffer(struct{ io.Writer }{w}, struct{ io.Reader }{b}, *bp)
}

func (b *limitedBody) Close() error { return b.r.Close() }

func (b *limitedBody) state() (int64, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.n, b.tooBig
}

// answerGrace is how long past its time limit an exchange may take to tell
// the client so.
const answerGrace = 5 * time.Second

// copyBuf is the size of the edge's reads and writes of a body. A chunk
// is megabytes: 32 KiB at a time (io.Copy's size) cost a system call and
// a wake-up each way per piece, which took a fifth of the edge's CPU.
const copyBuf = 256 << 10

var bufPool = sync.Pool{New: func() any { b := make([]byte, copyBuf); return &b }}

// ServeHTTP forwards one exchange.
func (f *Forwarder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	ex := &Exchange{Request: r, Method: r.Method, Path: r.URL.Path, DeclaredUp: r.ContentLength, DeclaredDown: -1}
	start := time.Now()
	observed := false
	observe := func() {
		if !observed {
			observed = true
			ex.Duration = time.Since(start)
			if f.o.Observe != nil {
				f.o.Observe(*ex)
			}
		}
	}
	defer observe()
	refuse := func(status int, err error, msg string) {
		ex.Status, ex.Err = status, err
		observe()
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		w.WriteHeader(status)
		_, _ = io.WriteString(w, "edge: "+msg+"\n")
	}
	// cut breaks off an answer that has started: what the client got so
	// far goes out, then the connection drops, so that the client sees a
	// truncated body rather than a short one that looks whole.
	cut := func(err error) {
		ex.Status, ex.Cut, ex.Err = http.StatusBadGateway, true, err
		_ = http.NewResponseController(w).Flush()
		observe()
		panic(http.ErrAbortHandler)
	}

	route, err := f.Route(r)
	if err != nil {
		var re *RouteError
		errors.As(err, &re)
		refuse(re.Status, re.Err, re.Err.Error()+": "+r.URL.Path)
		return
	}
	ex.Upstream = route.URL.EscapedPath()
	if r.ContentLength > f.o.MaxBody {
		refuse(http.StatusRequestEntityTooLarge, ErrRequestTooLarge, fmt.Sprintf("request body over %d bytes", f.o.MaxBody))
		return
	}

	ctx, cancel := context.WithTimeout(r.Context(), f.o.Timeout)
	defer cancel()
	// The time limit covers the client's side too: a body trickled in or
	// an answer read slowly ends with the exchange, a moment after it so
	// that the edge can still say 504. Where the server cannot set
	// deadlines (a platform's bridge), the platform's own limit does this.
	rc := http.NewResponseController(w)
	deadline, _ := ctx.Deadline()
	_ = rc.SetReadDeadline(deadline.Add(answerGrace))
	_ = rc.SetWriteDeadline(deadline.Add(answerGrace))
	out, err := http.NewRequestWithContext(ctx, r.Method, route.URL.String(), nil)
	if err != nil {
		refuse(http.StatusBadRequest, err, "bad request")
		return
	}
	out.URL = route.URL
	out.Header = f.requestHeader(r)
	var body *limitedBody
	if r.ContentLength != 0 && r.Body != nil && r.Body != http.NoBody {
		body = &limitedBody{r: r.Body, max: f.o.MaxBody, declared: r.ContentLength}
		out.Body, out.ContentLength = body, r.ContentLength
	} else {
		out.Body, out.ContentLength = http.NoBody, 0
	}

	resp, err := f.transport.RoundTrip(out)
	if body != nil {
		n, tooBig := body.state()
		ex.Up = n
		if tooBig {
			if resp != nil {
				resp.Body.Close()
			}
			refuse(http.StatusRequestEntityTooLarge, ErrRequestTooLarge, fmt.Sprintf("request body over %d bytes", f.o.MaxBody))
			return
		}
	}
	if err != nil {
		switch {
		case errors.Is(err, http.ErrAbortHandler):
			ex.Err = err
			observe()
			panic(http.ErrAbortHandler)
		case r.Context().Err() != nil:
			ex.Err = ErrClientGone
		case errors.Is(ctx.Err(), context.DeadlineExceeded):
			refuse(http.StatusGatewayTimeout, ErrTimeout, "the relay did not answer in time")
		default:
			refuse(http.StatusBadGateway, fmt.Errorf("%w: %w", ErrUnreachable, err), "relay unreachable")
		}
		return
	}
	defer resp.Body.Close()
	ex.DeclaredDown = resp.ContentLength
	if resp.ContentLength > f.o.MaxBody {
		refuse(http.StatusBadGateway, ErrResponseTooLarge, fmt.Sprintf("response body over %d bytes", f.o.MaxBody))
		return
	}

	h := w.Header()
	for k, vs := range endToEnd(resp.Header) {
		h[k] = vs
	}
	if resp.ContentLength >= 0 && resp.StatusCode != http.StatusNoContent && resp.StatusCode != http.StatusNotModified {
		h.Set("Content-Length", strconv.FormatInt(resp.ContentLength, 10))
	}
	w.WriteHeader(resp.StatusCode)
	ex.Status = resp.StatusCode

	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	buf := *bp
	for {
		n, rerr := resp.Body.Read(buf)
		if n > 0 {
			if ex.Down+int64(n) > f.o.MaxBody {
				cut(ErrResponseTooLarge)
			}
			if _, werr := w.Write(buf[:n]); werr != nil {
				ex.Err = ErrClientGone
				return
			}
			ex.Down += int64(n)
			// Long-polls and streamed answers reach the client as they
			// come, not when a buffer fills.
			_ = rc.Flush()
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			switch {
			case r.Context().Err() != nil:
				ex.Err = ErrClientGone
				return
			case errors.Is(ctx.Err(), context.DeadlineExceeded):
				cut(ErrTimeout)
			default:
				cut(fmt.Errorf("%w: %w", ErrUnreachable, rerr))
			}
		}
	}
}
