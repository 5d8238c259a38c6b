// Package edgeproxy is a stand-in, for tests and benchmarks, for the
// stateless serverless proxy that sits between git-remote-relay and
// git-relay-server in production.
//
// Its forwarding is the shipped edge forwarder (package edge, which
// deploy/vercel deploys and `git-relay-server edge` runs): /api/game/<rest>
// to the relay's /api/gr/<rest>, streamed bodies, nothing kept between
// requests, any request or response body over 4,500,000 bytes refused.
// Around it the proxy watches: it records a violation whenever git bundle
// or pack plaintext (raw, base64 or hex) or a declared secret crosses it,
// or a body breaks the limit, and it counts the bytes that go up and down.
// A Tamper hook lets a test play the hostile edge of the threat model:
// flip, truncate, drop, replay or swap bodies, spoil answers, or cut a
// response halfway. Options.ShapeUp and ShapeDown make the client's side
// of the proxy a slow, distant link (internal/shape) for WAN benchmarks.
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
	"sync"
	"time"

	"github.com/git-relay/git-relay/edge"
	"github.com/git-relay/git-relay/internal/gitx"
	"github.com/git-relay/git-relay/internal/shape"
)

// DefaultMaxBody is the body cap of the serverless platform the relay is
// built for, in bytes.
const DefaultMaxBody = edge.DefaultMaxBody

// ClientPrefix is the path prefix clients use; ServerPrefix is where the
// relay server serves the same routes.
const (
	ClientPrefix = edge.DefaultClientPrefix
	ServerPrefix = edge.DefaultServerPrefix
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
	// ShapeUp and ShapeDown, when set, make the link between the clients
	// and a proxy made by Start a wide-area one: what clients send (up)
	// and what they receive (down) waits the link's latency at the start
	// of each request or answer and flows at its rate.
	ShapeUp, ShapeDown shape.Link
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

	opts    Options
	fwd     *edge.Forwarder
	base    *http.Transport // what carries the forwarder's requests to the relay
	secrets [][]byte
	// forbidden are words that must never cross in a body, a header, the
	// path or the query (see Forbid); guarded by mu.
	forbidden [][]byte
	srv       *http.Server
	done      chan struct{}

	mu         sync.Mutex
	scans      int        // bodies still being scanned (inspectBody)
	deferred   []func()   // scans kept for later (Options.DeferScan)
	scanned    *sync.Cond // signalled, with mu, when scans drops to 0
	tamper     *Tamper
	unwatched  bool // SetWatch(false)
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
		opts: opts,
		base: &http.Transport{
			Proxy: nil,
			// The proxy must see bodies exactly as they were sent, so
			// it never asks for or undoes a transfer compression itself.
			DisableCompression:  true,
			MaxIdleConnsPerHost: 16,
			IdleConnTimeout:     30 * time.Second,
		},
		stats: Stats{PerPath: map[string]int{}},
	}
	p.fwd, err = edge.New(edge.Options{
		Upstream:  target,
		MaxBody:   opts.MaxBody,
		Timeout:   opts.Timeout,
		Transport: watch{p},
		Observe:   p.observe,
	})
	if err != nil {
		return nil, err
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
		_ = p.srv.Serve(shape.Listener(ln, opts.ShapeUp, opts.ShapeDown))
	}()
	return p, nil
}

// Close stops a proxy made by Start, dropping exchanges still in flight.
func (p *Proxy) Close() error {
	p.base.CloseIdleConnections()
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

// SetWatch(false) stops the proxy from keeping and scanning what crosses
// it, from the next request on; it still counts the traffic. A benchmark
// watches one run and times the others without the copies, which a real
// edge does not make. SetWatch(true) watches again.
func (p *Proxy) SetWatch(on bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.unwatched = !on
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

func (p *Proxy) count(dir Direction, n int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if dir == Up {
		p.stats.Up += n
	} else {
		p.stats.Down += n
	}
}

func (p *Proxy) logf(format string, args ...any) {
	if p.opts.Logf != nil {
		p.opts.Logf(format, args...)
	}
}

// exchange is the watch's state for one request, carried in its context
// from ServeHTTP through the forwarder to the watch transport.
type exchange struct {
	method, path string
	tamper       *Tamper

	mu     sync.Mutex
	up     int64 // request body bytes counted so far
	upBody *tee  // the request body on its way, if it has one
}

type exchangeKey struct{}

func exchangeOf(ctx context.Context) *exchange {
	ex, _ := ctx.Value(exchangeKey{}).(*exchange)
	return ex
}

// ServeHTTP counts the request, then lets the forwarder handle it; the
// watch sees the bodies from the forwarder's transport.
func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	ex := &exchange{method: r.Method, path: r.URL.Path}
	for _, word := range p.forbiddenWords() {
		if bytes.Contains([]byte(r.URL.RequestURI()), word) {
			p.record(Violation{Kind: KindSecret, Direction: Up, Method: r.Method, Path: r.URL.Path, Detail: fmt.Sprintf("forbidden word %q in the path or query", word)})
		}
	}
	routed := true
	if _, err := p.fwd.Route(r); err != nil {
		routed = false
	}
	p.mu.Lock()
	if routed {
		p.stats.Requests++
		p.stats.PerPath[ex.path]++
	}
	ex.tamper = p.tamper
	p.mu.Unlock()
	p.fwd.ServeHTTP(&drainFirst{ResponseWriter: w, ex: ex}, r.WithContext(context.WithValue(r.Context(), exchangeKey{}, ex)))
}

// drainFirst reads what is left of the request body through its tee before
// the answer's header goes out. The relay may answer from the headers and
// read no body (a request without the key), and Go's server discards an
// unread body as soon as the answer's header is written (golang/go#15527):
// what the client sent crossed the proxy all the same, and is watched all
// the same. The read stops after a second, for a client that stalls.
type drainFirst struct {
	http.ResponseWriter
	ex   *exchange
	once sync.Once
}

func (d *drainFirst) drain() {
	d.once.Do(func() {
		d.ex.mu.Lock()
		t := d.ex.upBody
		d.ex.mu.Unlock()
		if t == nil {
			return
		}
		rc := http.NewResponseController(d.ResponseWriter)
		_ = rc.SetReadDeadline(time.Now().Add(time.Second))
		t.drain()
		_ = rc.SetReadDeadline(time.Time{})
	})
}

func (d *drainFirst) WriteHeader(code int) {
	d.drain()
	d.ResponseWriter.WriteHeader(code)
}

func (d *drainFirst) Write(b []byte) (int, error) {
	d.drain()
	return d.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach Flush and the deadlines.
func (d *drainFirst) Unwrap() http.ResponseWriter { return d.ResponseWriter }

// observe records what the forwarder refused, before the client learns of
// it, and logs every exchange.
func (p *Proxy) observe(e edge.Exchange) {
	ex := exchangeOf(e.Request.Context())
	switch {
	case errors.Is(e.Err, edge.ErrRequestTooLarge):
		p.record(Violation{Kind: KindSize, Direction: Up, Method: e.Method, Path: e.Path,
			Detail: fmt.Sprintf("request body over %d bytes (Content-Length %d)", p.opts.MaxBody, e.DeclaredUp)})
		// The body counts in full, as the client sent it, however much
		// of it the edge read before refusing it.
		if ex != nil {
			ex.mu.Lock()
			counted := ex.up
			ex.mu.Unlock()
			p.count(Up, max(e.DeclaredUp, p.opts.MaxBody+1)-counted)
		}
		p.logf("edgeproxy: %s %s: 413, request body over %d bytes", e.Method, e.Path, p.opts.MaxBody)
		return
	case errors.Is(e.Err, edge.ErrResponseTooLarge):
		p.record(Violation{Kind: KindSize, Direction: Down, Method: e.Method, Path: e.Path,
			Detail: fmt.Sprintf("response body over %d bytes (Content-Length %d)", p.opts.MaxBody, e.DeclaredDown)})
	}
	if e.Err != nil {
		p.logf("edgeproxy: %s %s -> %s: %d (%v), %d bytes up, %d bytes down", e.Method, e.Path, e.Upstream, e.Status, e.Err, e.Up, e.Down)
		return
	}
	p.logf("edgeproxy: %s %s -> %s: %d, %d bytes up, %d bytes down", e.Method, e.Path, e.Upstream, e.Status, e.Up, e.Down)
}

// watch is the forwarder's transport: it carries each request to the
// relay through the proxy's own transport, counting and scanning both
// bodies on the way, and applies the tamper when one is installed.
type watch struct{ p *Proxy }

func (wt watch) RoundTrip(out *http.Request) (*http.Response, error) {
	p := wt.p
	ex := exchangeOf(out.Context())
	if ex == nil {
		return nil, errors.New("edgeproxy: request without an exchange")
	}
	if ex.tamper != nil {
		return p.tamperedTrip(ex, out)
	}
	if out.Body != nil && out.Body != http.NoBody {
		t := p.newTee(ex, Up, out.Header.Clone(), out.Body, out.ContentLength)
		ex.mu.Lock()
		ex.upBody = t
		ex.mu.Unlock()
		out.Body = t
	} else {
		// Headers cross too, body or not.
		p.newTee(ex, Up, out.Header.Clone(), http.NoBody, 0).finish()
	}
	resp, err := p.base.RoundTrip(out)
	if err != nil {
		return nil, err
	}
	resp.Body = p.newTee(ex, Down, resp.Header.Clone(), resp.Body, resp.ContentLength)
	return resp, nil
}

// tee passes a body through while counting it and keeping a copy, which
// is scanned once the body ends or is closed. A request body may be read
// by the transport and drained by the handler at once: mu orders them.
type tee struct {
	p      *Proxy
	ex     *exchange
	dir    Direction
	header http.Header
	rc     io.ReadCloser
	watch  bool // keep a copy and scan it (SetWatch)
	mu     sync.Mutex
	buf    bytes.Buffer
	once   sync.Once
}

// newTee registers the scan at once, so that Violations waits for a body
// that is still on its way.
func (p *Proxy) newTee(ex *exchange, dir Direction, h http.Header, rc io.ReadCloser, declared int64) *tee {
	p.mu.Lock()
	watch := !p.unwatched
	if watch {
		p.scans++
	}
	p.mu.Unlock()
	t := &tee{p: p, ex: ex, dir: dir, header: h, rc: rc, watch: watch}
	if watch && declared > 0 && declared <= p.opts.MaxBody {
		// A copy of a chunk is megabytes: one allocation, not a doubling series.
		t.buf.Grow(int(declared))
	}
	return t
}

func (t *tee) Read(b []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	n, err := t.rc.Read(b)
	if n > 0 {
		if t.watch {
			t.buf.Write(b[:n])
		}
		// Counted as it passes, so that the counters are up to date by
		// the time the client has the last byte.
		t.p.count(t.dir, int64(n))
		if t.dir == Up {
			t.ex.mu.Lock()
			t.ex.up += int64(n)
			t.ex.mu.Unlock()
		}
	}
	if err == io.EOF {
		t.finishLocked()
	}
	return n, err
}

// WriteTo passes the body on in pieces of the size the edge's own bodies
// use: the forwarder gives a request body a WriteTo for that, which the
// tee would otherwise hide from the transport, making the proxy a
// benchmark times copy chunks 32 KiB at a time where the edge it stands
// for copies 256 KiB.
func (t *tee) WriteTo(w io.Writer) (int64, error) {
	return gitx.CopyInPieces(w, t, pieceSize)
}

// pieceSize is what the tee reads and writes at a time in WriteTo: the
// edge's own size (edge.copyBuf).
const pieceSize = 256 << 10

func (t *tee) Close() error {
	if t.dir == Up {
		// The relay may answer from the headers and read no body (a
		// request without the key): what the client sent crossed the
		// proxy all the same, and is watched all the same.
		_, _ = io.Copy(io.Discard, io.LimitReader(t, t.p.opts.MaxBody+1))
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	err := t.rc.Close()
	t.finishLocked()
	return err
}

// drain reads the rest of a request body into the copy and scans it.
func (t *tee) drain() {
	_, _ = io.Copy(io.Discard, io.LimitReader(t, t.p.opts.MaxBody+1))
	t.finish()
}

func (t *tee) finish() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.finishLocked()
}

func (t *tee) finishLocked() {
	t.once.Do(func() {
		if !t.watch {
			return
		}
		body := t.buf.Bytes()
		t.p.scanLater(t.dir, t.ex.method, t.ex.path, t.header, body)
	})
}

// scanLater scans one body beside the exchange (or keeps it for later
// under DeferScan) and marks its registered scan done.
func (p *Proxy) scanLater(dir Direction, method, path string, h http.Header, body []byte) {
	done := func() {
		p.mu.Lock()
		if p.scans--; p.scans == 0 {
			p.scanned.Broadcast()
		}
		p.mu.Unlock()
	}
	if p.opts.DeferScan {
		p.mu.Lock()
		p.deferred = append(p.deferred, func() { p.inspect(dir, method, path, h, body) })
		p.mu.Unlock()
		done()
		return
	}
	go func() {
		p.inspect(dir, method, path, h, body)
		done()
	}()
}

// tamperedTrip is the exchange under a tamper, which works on whole
// bodies: the request body is read in full, scanned as it was sent, given
// to the hook and forwarded (or not); then the same for the answer.
func (p *Proxy) tamperedTrip(ex *exchange, out *http.Request) (*http.Response, error) {
	t := ex.tamper
	var body []byte
	if out.Body != nil && out.Body != http.NoBody {
		b, err := io.ReadAll(out.Body)
		out.Body.Close()
		p.count(Up, int64(len(b)))
		ex.mu.Lock()
		ex.up += int64(len(b))
		ex.mu.Unlock()
		if err != nil {
			return nil, err
		}
		body = b
	}
	p.inspect(Up, ex.method, ex.path, out.Header, body)

	req := &Request{Method: out.Method, Path: ex.path, Query: out.URL.RawQuery, Header: out.Header, Body: body, Done: out.Context().Done()}
	if t.OnRequest != nil {
		t.OnRequest(req)
	}
	switch {
	case req.Hangup:
		p.logf("edgeproxy: %s %s: tamper %q hung up", ex.method, ex.path, t.Name)
		return nil, fmt.Errorf("edgeproxy: tamper %q hung up: %w", t.Name, http.ErrAbortHandler)
	case req.Reject != 0:
		p.logf("edgeproxy: %s %s: tamper %q answered %d", ex.method, ex.path, t.Name, req.Reject)
		return answer(out, req.Reject, http.Header{"Content-Type": {"text/plain; charset=utf-8"}}, []byte("edgeproxy: dropped\n"), -1), nil
	}

	fwd := out.Clone(out.Context())
	fwd.URL.RawQuery = req.Query
	fwd.Header = req.Header
	fwd.Body, fwd.ContentLength = http.NoBody, 0
	if len(req.Body) > 0 {
		fwd.Body, fwd.ContentLength = io.NopCloser(bytes.NewReader(req.Body)), int64(len(req.Body))
	}
	resp, err := p.base.RoundTrip(fwd)
	if err != nil {
		return nil, err
	}
	if resp.ContentLength > p.opts.MaxBody {
		// The forwarder refuses it by its declared length.
		return resp, nil
	}
	rbody, err := io.ReadAll(io.LimitReader(resp.Body, p.opts.MaxBody+1))
	p.count(Down, int64(len(rbody)))
	if int64(len(rbody)) > p.opts.MaxBody {
		// The forwarder counts it and cuts it off.
		resp.Body = struct {
			io.Reader
			io.Closer
		}{io.MultiReader(bytes.NewReader(rbody), resp.Body), resp.Body}
		return resp, nil
	}
	resp.Body.Close()
	if err != nil {
		return nil, err
	}
	p.inspect(Down, ex.method, ex.path, resp.Header, rbody)

	res := &Response{Status: resp.StatusCode, Header: resp.Header.Clone(), Body: rbody, CutAfter: -1}
	if t.OnResponse != nil {
		t.OnResponse(req, res)
	}
	if res.CutAfter >= 0 && res.CutAfter < len(res.Body) {
		p.logf("edgeproxy: %s %s: tamper %q cut the response after %d bytes", ex.method, ex.path, t.Name, res.CutAfter)
	}
	return answer(out, res.Status, res.Header, res.Body, res.CutAfter), nil
}

// answer is a response made up by the proxy. With cutAfter >= 0 its body
// breaks off after that many bytes: the forwarder then drops the client's
// connection, and the client sees a truncated body.
func answer(req *http.Request, status int, h http.Header, body []byte, cutAfter int) *http.Response {
	var r io.Reader = bytes.NewReader(body)
	if cutAfter >= 0 && cutAfter < len(body) {
		r = io.MultiReader(bytes.NewReader(body[:cutAfter]), errReader{io.ErrUnexpectedEOF})
	}
	h = h.Clone()
	h.Del("Content-Length")
	return &http.Response{
		Status:        strconv.Itoa(status) + " " + http.StatusText(status),
		StatusCode:    status,
		Proto:         "HTTP/1.1",
		ProtoMajor:    1,
		ProtoMinor:    1,
		Header:        h,
		Body:          io.NopCloser(r),
		ContentLength: int64(len(body)),
		Request:       req,
	}
}

type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) { return 0, e.err }

// waitScans waits, with p.mu held, until every body seen so far has been
// scanned, running the deferred scans first.
func (p *Proxy) waitScans() {
	for {
		for len(p.deferred) > 0 {
			scans := p.deferred
			p.deferred = nil
			p.mu.Unlock()
			for _, scan := range scans {
				scan()
			}
			p.mu.Lock()
		}
		if p.scans == 0 {
			return
		}
		p.scanned.Wait()
	}
}

// Forbid adds words that must never cross the proxy, in any direction,
// in a body, a header, the path or the query: what the relay's sealing
// must hide from it (repository names, ref names, push options). Each
// sighting is a violation.
func (p *Proxy) Forbid(words ...string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, w := range words {
		if w != "" {
			p.forbidden = append(p.forbidden, []byte(w))
		}
	}
}

func (p *Proxy) forbiddenWords() [][]byte {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.forbidden)
}

// inspect records plaintext and secrets in one body and its headers.
func (p *Proxy) inspect(dir Direction, method, path string, h http.Header, body []byte) {
	for _, f := range ScanPlaintext(body, h.Get("Content-Encoding")) {
		p.record(Violation{Kind: KindPlaintext, Direction: dir, Method: method, Path: path, Detail: f})
	}
	if words := p.forbiddenWords(); len(words) > 0 {
		var hdr bytes.Buffer
		_ = h.Write(&hdr)
		for _, w := range words {
			if bytes.Contains(body, w) || bytes.Contains(hdr.Bytes(), w) {
				p.record(Violation{Kind: KindSecret, Direction: dir, Method: method, Path: path, Detail: fmt.Sprintf("forbidden word %q", w)})
			}
		}
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
