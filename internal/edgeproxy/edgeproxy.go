// Package edgeproxy is a stand-in, for tests and benchmarks, for the
// stateless serverless proxy that sits between git-remote-relay and
// git-relay-server in production.
//
// Like the real edge it rewrites /api/game/<rest> to the relay's
// /api/gr/<rest>, keeps nothing between requests and refuses any request or
// response body over 4,500,000 bytes. Unlike the real edge it also watches:
// it records a violation whenever git bundle or pack plaintext (raw, base64
// or hex) or a declared secret crosses it, and it counts the bytes that go
// up and down. A Tamper hook lets a test play the hostile edge of the threat
// model: flip, truncate, drop, replay or swap bodies, or cut a response
// halfway.
package edgeproxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// DefaultMaxBody is the body cap of the serverless platform the relay is
// built for, in bytes.
const DefaultMaxBody = 4_500_000

// ClientPrefix is the path prefix clients use; ServerPrefix is where the
// relay server serves the same routes.
const (
	ClientPrefix = "/api/game/"
	ServerPrefix = "/api/gr/"
)

// Options tune a Proxy. The zero value is the production edge.
type Options struct {
	// MaxBody caps every request and response body (0 means DefaultMaxBody).
	MaxBody int64
	// Secrets must never cross the proxy in a body or a header, in either
	// direction (for example every form of the upstream token). Each sighting
	// is recorded as a violation.
	Secrets []string
	// Timeout bounds one forwarded exchange, as a serverless function's time
	// limit does (0 means two minutes).
	Timeout time.Duration
	// Logf, when set, receives one line per exchange.
	Logf func(format string, args ...any)
	// DeferScan keeps the bodies and scans them for plaintext and secrets
	// only when violations are asked for, so that a benchmark does not
	// time the proxy's watch, which a real edge does not keep. Bodies are
	// held in memory until then.
	DeferScan bool
}

// Direction says which way a body was travelling.
type Direction string

// The two directions: request bodies go up, response bodies come down.
const (
	Up   Direction = "up"
	Down Direction = "down"
)

// Violation kinds.
const (
	KindPlaintext = "plaintext"
	KindSize      = "size"
	KindSecret    = "secret"
)

// Violation is one breach of the relay's contract seen by the proxy.
type Violation struct {
	Kind      string
	Direction Direction
	Method    string
	Path      string
	Detail    string
}

func (v Violation) String() string {
	return fmt.Sprintf("%s %s: %s %s: %s", v.Kind, v.Direction, v.Method, v.Path, v.Detail)
}

// Stats counts the traffic since the proxy started or was last Reset.
type Stats struct {
	// Up is the sum of request body sizes as the client sent them.
	Up int64
	// Down is the sum of response body sizes as the server sent them.
	Down int64
	// Requests is the number of requests received.
	Requests int
	// PerPath counts requests by client path (without the query).
	PerPath map[string]int
}

// Proxy is the edge. It is an http.Handler; Start also gives it a listener.
type Proxy struct {
	// URL is the proxy's base address (http://127.0.0.1:PORT) when it was
	// made by Start, and "" when it was made by New.
	URL string

	target  string
	opts    Options
	client  *http.Client
	secrets [][]byte
	srv     *http.Server
	done    chan struct{}

	mu         sync.Mutex
	scans      int        // bodies still being scanned (inspectBody)
	deferred   []func()   // scans kept for later (Options.DeferScan)
	scanned    *sync.Cond // signalled, with mu, when scans drops to 0
	tamper     *Tamper
	violations []Violation
	stats      Stats
}

// New returns a proxy in front of the relay server at target (its base
// address, such as http://127.0.0.1:8080).
func New(target string, opts Options) (*Proxy, error) {
	u, err := url.Parse(target)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("edge proxy target %q: want http://host:port", target)
	}
	if opts.MaxBody <= 0 {
		opts.MaxBody = DefaultMaxBody
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 2 * time.Minute
	}
	p := &Proxy{
		target: strings.TrimRight(target, "/"),
		opts:   opts,
		client: &http.Client{
			Transport: &http.Transport{
				Proxy: nil,
				// The proxy must see bodies exactly as they were sent, so
				// it never asks for or undoes a transfer compression itself.
				DisableCompression:  true,
				MaxIdleConnsPerHost: 16,
				IdleConnTimeout:     30 * time.Second,
			},
			// A serverless edge passes redirects on; it does not follow them.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		stats: Stats{PerPath: map[string]int{}},
	}
	p.scanned = sync.NewCond(&p.mu)
	for _, s := range opts.Secrets {
		if s != "" {
			p.secrets = append(p.secrets, []byte(s))
		}
	}
	return p, nil
}

// Start runs a new proxy on a loopback port.
func Start(target string, opts Options) (*Proxy, error) {
	p, err := New(target, opts)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("listen for the edge proxy: %w", err)
	}
	p.URL = "http://" + ln.Addr().String()
	p.srv = &http.Server{Handler: p, ReadHeaderTimeout: 30 * time.Second}
	p.done = make(chan struct{})
	go func() {
		defer close(p.done)
		_ = p.srv.Serve(ln)
	}()
	return p, nil
}

// Close stops a proxy made by Start, dropping exchanges still in flight.
func (p *Proxy) Close() error {
	p.client.CloseIdleConnections()
	if p.srv == nil {
		return nil
	}
	err := p.srv.Close()
	<-p.done
	return err
}

// SetTamper installs t (nil removes it). It applies from the next request.
func (p *Proxy) SetTamper(t *Tamper) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.tamper = t
}

// Violations returns every violation recorded so far.
func (p *Proxy) Violations() []Violation {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.waitScans()
	return slices.Clone(p.violations)
}

// TakeViolations returns the violations recorded so far and forgets them,
// for a test that provokes one on purpose.
func (p *Proxy) TakeViolations() []Violation {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.waitScans()
	v := p.violations
	p.violations = nil
	return v
}

// Stats returns a copy of the traffic counters.
func (p *Proxy) Stats() Stats {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := p.stats
	s.PerPath = make(map[string]int, len(p.stats.PerPath))
	for k, v := range p.stats.PerPath {
		s.PerPath[k] = v
	}
	return s
}

// Reset zeroes the traffic counters (violations are kept).
func (p *Proxy) Reset() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.stats = Stats{PerPath: map[string]int{}}
}

func (p *Proxy) record(v Violation) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.violations = append(p.violations, v)
}

func (p *Proxy) logf(format string, args ...any) {
	if p.opts.Logf != nil {
		p.opts.Logf(format, args...)
	}
}

// hopHeaders are the hop-by-hop headers (RFC 9110 section 7.6.1) that a
// proxy must not pass on.
var hopHeaders = []string{
	"Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization",
	"Proxy-Connection", "Te", "Trailer", "Transfer-Encoding", "Upgrade",
}

func copyHeader(h http.Header) http.Header {
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

func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	path := r.URL.Path
	var upstreamPath string
	switch {
	case path == "/healthz":
		upstreamPath = "/healthz"
	case strings.HasPrefix(path, ClientPrefix):
		upstreamPath = ServerPrefix + strings.TrimPrefix(r.URL.EscapedPath(), ClientPrefix)
	default:
		http.Error(w, "edgeproxy: no route for "+path, http.StatusNotFound)
		return
	}

	body, tooBig, err := readLimited(r.Body, r.ContentLength, p.opts.MaxBody)
	p.mu.Lock()
	p.stats.Requests++
	p.stats.PerPath[path]++
	p.stats.Up += int64(len(body))
	if tooBig {
		p.stats.Up += max(r.ContentLength, p.opts.MaxBody+1)
	}
	tamper := p.tamper
	p.mu.Unlock()
	if tooBig {
		p.record(Violation{Kind: KindSize, Direction: Up, Method: r.Method, Path: path,
			Detail: fmt.Sprintf("request body over %d bytes (Content-Length %d)", p.opts.MaxBody, r.ContentLength)})
		p.logf("edgeproxy: %s %s: 413, request body over %d bytes", r.Method, path, p.opts.MaxBody)
		http.Error(w, "edgeproxy: request body too large", http.StatusRequestEntityTooLarge)
		return
	}
	if err != nil {
		http.Error(w, "edgeproxy: read request body: "+err.Error(), http.StatusBadRequest)
		return
	}
	p.inspectBody(tamper, Up, r.Method, path, r.Header, body)

	req := &Request{Method: r.Method, Path: path, Query: r.URL.RawQuery, Header: copyHeader(r.Header), Body: body}
	if tamper != nil && tamper.OnRequest != nil {
		tamper.OnRequest(req)
		if req.Reject != 0 {
			p.logf("edgeproxy: %s %s: tamper %q answered %d", r.Method, path, tamper.Name, req.Reject)
			http.Error(w, "edgeproxy: dropped", req.Reject)
			return
		}
	}

	ctx, cancel := context.WithTimeout(r.Context(), p.opts.Timeout)
	defer cancel()
	target := p.target + upstreamPath
	if req.Query != "" {
		target += "?" + req.Query
	}
	out, err := http.NewRequestWithContext(ctx, req.Method, target, bytes.NewReader(req.Body))
	if err != nil {
		http.Error(w, "edgeproxy: "+err.Error(), http.StatusBadGateway)
		return
	}
	out.Header = req.Header
	out.ContentLength = int64(len(req.Body))
	if len(req.Body) == 0 {
		out.Body = http.NoBody
	}
	resp, err := p.client.Do(out)
	if err != nil {
		p.logf("edgeproxy: %s %s: upstream: %v", r.Method, path, err)
		http.Error(w, "edgeproxy: relay unreachable", http.StatusBadGateway)
		return
	}
	defer resp.Body.Close()
	rbody, tooBig, err := readLimited(resp.Body, resp.ContentLength, p.opts.MaxBody)
	p.mu.Lock()
	p.stats.Down += int64(len(rbody))
	p.mu.Unlock()
	if tooBig {
		p.record(Violation{Kind: KindSize, Direction: Down, Method: r.Method, Path: path,
			Detail: fmt.Sprintf("response body over %d bytes (Content-Length %d)", p.opts.MaxBody, resp.ContentLength)})
		http.Error(w, "edgeproxy: response body too large", http.StatusBadGateway)
		return
	}
	if err != nil {
		http.Error(w, "edgeproxy: read response body: "+err.Error(), http.StatusBadGateway)
		return
	}
	p.inspectBody(tamper, Down, r.Method, path, resp.Header, rbody)

	res := &Response{Status: resp.StatusCode, Header: copyHeader(resp.Header), Body: rbody, CutAfter: -1}
	if tamper != nil && tamper.OnResponse != nil {
		tamper.OnResponse(req, res)
	}
	p.logf("edgeproxy: %s %s -> %s: %d, %d bytes up, %d bytes down", r.Method, path, upstreamPath, res.Status, len(body), len(rbody))

	for k, vs := range res.Header {
		w.Header()[k] = vs
	}
	w.Header().Set("Content-Length", strconv.Itoa(len(res.Body)))
	w.WriteHeader(res.Status)
	if res.CutAfter >= 0 && res.CutAfter < len(res.Body) {
		_, _ = w.Write(res.Body[:res.CutAfter])
		if f, ok := w.(http.Flusher); ok {
			f.Flush()
		}
		p.logf("edgeproxy: %s %s: tamper %q cut the response after %d bytes", r.Method, path, tamper.Name, res.CutAfter)
		// ErrAbortHandler makes net/http drop the connection without
		// finishing the response: the client sees an unexpected EOF.
		panic(http.ErrAbortHandler)
	}
	_, _ = w.Write(res.Body)
}

// readLimited reads a whole body of at most max bytes. tooBig reports a
// body over the limit, by its declared length or by reading one byte more.
func readLimited(r io.Reader, declared, max int64) (body []byte, tooBig bool, err error) {
	if r == nil || r == http.NoBody {
		return nil, false, nil
	}
	if declared > max {
		return nil, true, nil
	}
	var buf bytes.Buffer
	if declared > 0 {
		buf.Grow(int(declared))
	}
	n, err := io.Copy(&buf, io.LimitReader(r, max+1))
	if n > max {
		return nil, true, nil
	}
	if err != nil && !errors.Is(err, io.EOF) {
		return buf.Bytes(), false, err
	}
	return buf.Bytes(), false, nil
}

// inspectBody scans a body for what must not cross the edge. The scan is
// the test's watch, not part of forwarding, so it runs beside the
// exchange rather than in its way; Violations waits for it. Under a
// tamper, which may change the body in place, it runs first, on the body
// as it was sent.
func (p *Proxy) inspectBody(tamper *Tamper, dir Direction, method, path string, h http.Header, body []byte) {
	if tamper != nil {
		p.inspect(dir, method, path, h, body)
		return
	}
	if p.opts.DeferScan {
		p.mu.Lock()
		p.deferred = append(p.deferred, func() { p.inspect(dir, method, path, h, body) })
		p.mu.Unlock()
		return
	}
	p.mu.Lock()
	p.scans++
	p.mu.Unlock()
	go func() {
		p.inspect(dir, method, path, h, body)
		p.mu.Lock()
		if p.scans--; p.scans == 0 {
			p.scanned.Broadcast()
		}
		p.mu.Unlock()
	}()
}

// waitScans waits, with p.mu held, until every body seen so far has been
// scanned, running the deferred scans first.
func (p *Proxy) waitScans() {
	for len(p.deferred) > 0 {
		scans := p.deferred
		p.deferred = nil
		p.mu.Unlock()
		for _, scan := range scans {
			scan()
		}
		p.mu.Lock()
	}
	for p.scans > 0 {
		p.scanned.Wait()
	}
}

// inspect records plaintext and secrets in one body and its headers.
func (p *Proxy) inspect(dir Direction, method, path string, h http.Header, body []byte) {
	for _, f := range ScanPlaintext(body, h.Get("Content-Encoding")) {
		p.record(Violation{Kind: KindPlaintext, Direction: dir, Method: method, Path: path, Detail: f})
	}
	if len(p.secrets) == 0 {
		return
	}
	var hdr bytes.Buffer
	_ = h.Write(&hdr)
	for i, s := range p.secrets {
		if bytes.Contains(body, s) {
			p.record(Violation{Kind: KindSecret, Direction: dir, Method: method, Path: path, Detail: fmt.Sprintf("secret #%d in the body", i)})
		}
		if bytes.Contains(hdr.Bytes(), s) {
			p.record(Violation{Kind: KindSecret, Direction: dir, Method: method, Path: path, Detail: fmt.Sprintf("secret #%d in a header", i)})
		}
	}
}
