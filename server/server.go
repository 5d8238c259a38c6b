package server

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/git-relay/git-relay/internal/keyring"
	"github.com/git-relay/git-relay/internal/store"
	"github.com/git-relay/git-relay/internal/upstream"
	"github.com/git-relay/git-relay/internal/wire"
)

// Config is everything Serve needs.
type Config struct {
	Listen  string
	DataDir string // the mirrors, and the sessions when Store is nil
	// Store holds the sessions; nil means a folder under DataDir.
	Store    store.Store
	Ring     *keyring.Ring
	Upstream string // URL template with {repo}
	Token    string
	MaxBody  int64
	// AllowForce lets pushes replace history (non-fast-forward branch
	// updates, tag moves).
	AllowForce bool
	// MaxPushSize bounds one push's bundle; MaxRefs the updates of one push.
	MaxPushSize int64
	MaxRefs     int
	// MaxSessions bounds the unfinished exchanges of one key; MaxKeyBytes
	// the bytes its sessions hold; MaxBytes the bytes of all sessions.
	MaxSessions int
	MaxKeyBytes int64
	MaxBytes    int64
	// Idle is how long an unfinished exchange may go untouched before it
	// expires; Keep how long a finished one is kept for status queries and
	// resumed downloads.
	Idle time.Duration
	Keep time.Duration
	// MaxBodies bounds the request bodies being read at once.
	MaxBodies int
	// TLSCert and TLSKey serve HTTPS.
	TLSCert, TLSKey string
	// MetricsListen serves Prometheus /metrics on its own address.
	MetricsListen string
	Log           io.Writer
	LogLevel      slog.Level
	// Instance names this process among several sharing a store.
	Instance string

	// parkFor, when set, replaces parkFor (tests).
	parkFor time.Duration
}

// Defaults.
const (
	defaultMaxPushSize = 4 << 30
	defaultMaxRefs     = 1_000_000
	defaultMaxSessions = 64
	defaultMaxKeyBytes = 16 << 30
	defaultMaxBytes    = 64 << 30
	defaultIdle        = 5 * time.Minute
	defaultKeep        = time.Hour
	defaultMaxBodies   = 8
	// longPoll is how long a request waits for an exchange to move before
	// it answers with where it stands: long enough for most exchanges to
	// finish in one round trip, well below a serverless proxy's limit on
	// a function's duration (the helper waits 60 s before it calls the
	// relay stalled).
	longPoll = 20 * time.Second
)

// Server is the relay.
type Server struct {
	cfg      Config
	store    store.Store
	verifier *wire.Verifier
	log      *slog.Logger
	redact   func(string) string
	mirrors  mirrors
	metrics  *metrics
	usage    usage
	instance string

	bodies chan struct{} // a token per request body being read
	bufs   sync.Pool     // *[]byte of chunk size: bodies and chunks
	parked parking       // pushes to upstream begun at their listings

	ctx      context.Context // ends when the server shuts down
	cancel   context.CancelFunc
	stopping atomic.Bool // set when the shutdown begins
	work     sync.WaitGroup
	bgWork   sync.WaitGroup // work nobody waits for, cut short by a shutdown

	mu   sync.Mutex
	live map[string]*exch // the exchanges this instance has in hand
}

// New prepares a server.
func New(cfg Config) (*Server, error) {
	if cfg.MaxBody <= 0 {
		cfg.MaxBody = wire.DefaultMaxBody
	}
	if cfg.MaxBody < wire.MinMaxBody {
		return nil, fmt.Errorf("--max-body %d is too small (at least %d)", cfg.MaxBody, wire.MinMaxBody)
	}
	setDefault(&cfg.MaxPushSize, defaultMaxPushSize)
	setDefault(&cfg.MaxRefs, defaultMaxRefs)
	setDefault(&cfg.MaxSessions, defaultMaxSessions)
	setDefault(&cfg.MaxKeyBytes, defaultMaxKeyBytes)
	setDefault(&cfg.MaxBytes, defaultMaxBytes)
	setDefault(&cfg.Idle, defaultIdle)
	setDefault(&cfg.Keep, defaultKeep)
	setDefault(&cfg.MaxBodies, defaultMaxBodies)
	if !strings.Contains(cfg.Upstream, "{repo}") {
		return nil, fmt.Errorf("--upstream %q has no {repo} placeholder (e.g. 'https://github.com/{repo}.git')", cfg.Upstream)
	}
	if _, err := upstream.New(strings.ReplaceAll(cfg.Upstream, "{repo}", "owner/repo"), cfg.Token); err != nil {
		return nil, fmt.Errorf("--upstream: %w", err)
	}
	if cfg.Ring == nil {
		return nil, errors.New("no key ring")
	}
	if err := os.MkdirAll(filepath.Join(cfg.DataDir, "mirrors"), 0o700); err != nil {
		return nil, fmt.Errorf("prepare data dir: %w", err)
	}
	st := cfg.Store
	if st == nil {
		l, err := store.NewLocal(filepath.Join(cfg.DataDir, "sessions"))
		if err != nil {
			return nil, fmt.Errorf("prepare data dir: %w", err)
		}
		st = l
		if cfg.Instance == "" {
			cfg.Instance = "local"
		}
	}
	logw := cfg.Log
	if logw == nil {
		logw = io.Discard
	}
	instance := cfg.Instance
	if instance == "" {
		b := make([]byte, 4)
		_, _ = rand.Read(b)
		host, _ := os.Hostname()
		instance = host + "-" + hex.EncodeToString(b)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{
		cfg:      cfg,
		store:    st,
		verifier: &wire.Verifier{Ring: cfg.Ring, Start: time.Now()},
		instance: instance,
		bodies:   make(chan struct{}, cfg.MaxBodies),
		ctx:      ctx,
		cancel:   cancel,
		live:     map[string]*exch{},
		metrics:  newMetrics(),
	}
	s.mirrors.s = s
	s.redact = redactor(cfg.Upstream, cfg.Token)
	s.log = slog.New(slog.NewTextHandler(redactingWriter{logw, s.redact}, &slog.HandlerOptions{Level: cfg.LogLevel}))
	return s, nil
}

func setDefault[T int | int64 | time.Duration](v *T, d T) {
	if *v <= 0 {
		*v = d
	}
}

// Serve runs the server until ctx is done, then shuts down gracefully: it
// stops taking requests, lets pushes being applied upstream finish, and
// leaves the sessions still receiving chunks in the store for a later run.
func Serve(ctx context.Context, cfg Config) error {
	s, err := New(cfg)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	scheme := "http"
	if cfg.TLSCert != "" {
		scheme = "https"
	}
	fmt.Fprintf(cfg.Log, "git-relay-server: listening on %s://%s\n", scheme, ln.Addr())
	srv := &http.Server{
		Handler: s.Handler(),
		// Headers must come quickly; a body's own deadline is set once its
		// request has authenticated (see api), so that nothing without the
		// key can hold a connection open by trickling bytes.
		ReadHeaderTimeout: 10 * time.Second,
		MaxHeaderBytes:    16 << 10,
		IdleTimeout:       2 * time.Minute,
	}
	var metricsSrv *http.Server
	if cfg.MetricsListen != "" {
		mln, err := net.Listen("tcp", cfg.MetricsListen)
		if err != nil {
			ln.Close()
			return fmt.Errorf("listen for metrics: %w", err)
		}
		fmt.Fprintf(cfg.Log, "git-relay-server: metrics on http://%s/metrics\n", mln.Addr())
		metricsSrv = &http.Server{Handler: s.metrics.handler(), ReadHeaderTimeout: 10 * time.Second}
		go func() { _ = metricsSrv.Serve(mln) }()
	}
	s.resume()
	go s.janitor(ctx)
	errc := make(chan error, 1)
	go func() {
		if cfg.TLSCert != "" {
			errc <- srv.ServeTLS(ln, cfg.TLSCert, cfg.TLSKey)
		} else {
			errc <- srv.Serve(ln)
		}
	}()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	s.log.Info("shutting down")
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_ = srv.Shutdown(shutdownCtx)
	if metricsSrv != nil {
		_ = metricsSrv.Shutdown(shutdownCtx)
	}
	s.Close()
	s.log.Info("stopped")
	return nil
}

// Close stops the work in hand: pushes that are being applied upstream
// finish, and everything else stops where it is (the store keeps it).
func (s *Server) Close() {
	s.stopping.Store(true)
	s.mu.Lock()
	for _, e := range s.live {
		e.mu.Lock()
		if e.cancel != nil && !e.applying {
			e.cancel()
		}
		e.mu.Unlock()
	}
	s.mu.Unlock()
	s.work.Wait()
	s.unparkAll()
	s.cancel()
	s.bgWork.Wait()
}

// Handler serves /healthz and the API under /api/gr/. Routes are relative
// so that a proxy can map another prefix onto /api/gr/.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("/api/gr/", s.api)
	return mux
}

// call is one authenticated API request.
type call struct {
	w      http.ResponseWriter
	r      *http.Request
	path   string
	key    keyring.Key
	auth   wire.Auth
	body   []byte
	shared *sharedBuf // body's buffer, until freeBody
	s      *Server
	code   int    // the status answered
	cause  string // why a request was refused, for the log
}

func (s *Server) api(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	c := &call{w: w, r: r, s: s, path: strings.TrimPrefix(r.URL.Path, "/api/gr/")}
	defer func() {
		route := c.path
		if !knownRoute(route) {
			route = "other"
		}
		s.metrics.requests.WithLabelValues(r.Method, route, fmt.Sprint(c.code)).Inc()
		attrs := []any{"method", r.Method, "route", route, "status", c.code, "took", time.Since(start).Round(time.Microsecond), "key", c.key.ID}
		if c.cause != "" {
			attrs = append(attrs, "refused", c.cause)
			s.metrics.refusals.WithLabelValues(c.cause).Inc()
		}
		s.log.Info("request", attrs...)
	}()
	if r.ContentLength < 0 {
		c.plain(http.StatusLengthRequired, "length", `{"code":"bad_request","error":"a body needs a Content-Length"}`)
		return
	}
	if r.ContentLength > s.cfg.MaxBody {
		c.plain(http.StatusRequestEntityTooLarge, "too_large", `{"code":"too_large","error":"request body too large"}`)
		return
	}
	// Authenticate from the headers alone: without the key, nobody gets a
	// byte of body read or a buffer allocated.
	key, auth, err := s.verifier.Verify(r.Header.Get(wire.HeaderAuth), r.Method, c.path, r.URL.Query(), r.ContentLength)
	if err != nil {
		// The same answer for every reason, unsigned: a caller without the
		// key learns nothing, not even whether a repository exists. A
		// request signed before this process started is told so, so that
		// its honest client signs it again.
		w.Header().Set("Connection", "close")
		if errors.Is(err, wire.ErrStale) {
			c.plain(http.StatusUnauthorized, "stale", `{"code":"stale","error":"unauthorized"}`)
			return
		}
		c.plain(http.StatusUnauthorized, "auth", `{"code":"unauthorized","error":"unauthorized"}`)
		return
	}
	c.key, c.auth = key, auth
	rc := http.NewResponseController(w)
	// The answer may wait for a long-poll and then carry megabytes.
	_ = rc.SetWriteDeadline(time.Now().Add(longPoll + 2*time.Minute))
	if r.ContentLength > 0 {
		select {
		case s.bodies <- struct{}{}:
		case <-time.After(10 * time.Second):
			c.cause = "busy"
			c.failErr(&userError{http.StatusServiceUnavailable, wire.CodeLimit, "the relay is reading too many bodies at once: try again"})
			return
		case <-r.Context().Done():
			return
		}
		buf := s.getBuf(int(r.ContentLength))
		c.shared = &sharedBuf{bp: buf}
		c.shared.refs.Store(1)
		defer c.freeBody()
		body := (*buf)[:r.ContentLength]
		if _, err := io.ReadFull(&steadyReader{r: r.Body, rc: rc, start: time.Now()}, body); err != nil {
			c.cause = "body"
			c.plain(http.StatusBadRequest, "", `{"code":"bad_request","error":"read request body"}`)
			return
		}
		_ = rc.SetReadDeadline(time.Time{})
		c.body = body
		s.metrics.bytesIn.Add(float64(len(body)))
	}
	switch r.Method + " " + c.path {
	case "POST " + wire.PathOpen:
		s.handleOpen(c)
	case "PUT " + wire.PathUp:
		s.handleUp(c)
	case "GET " + wire.PathDown:
		s.handleDown(c)
	case "GET " + wire.PathStatus:
		s.handleStatus(c)
	case "POST " + wire.PathCancel:
		s.handleCancel(c)
	case "GET " + wire.PathRemoteInfo:
		s.handleRemoteInfo(c)
	default:
		c.fail(http.StatusNotFound, wire.CodeNotFound, fmt.Sprintf("no such API call: %s %s", r.Method, c.path))
	}
}

// freeBody gives back the request body's buffer and its token (MaxBodies)
// once the handler is done with the body, before it waits for an
// exchange to move on: a final chunk waits for its push to land, an
// Open for its answer, and neither needs the body meanwhile. It does
// nothing the second time, or for a request without a body.
func (c *call) freeBody() {
	if c.shared == nil {
		return
	}
	c.body = nil
	c.s.release(c.shared)
	c.shared = nil
	<-c.s.bodies
}

func knownRoute(p string) bool {
	switch p {
	case wire.PathOpen, wire.PathUp, wire.PathDown, wire.PathStatus, wire.PathCancel, wire.PathRemoteInfo:
		return true
	}
	return false
}

// A request body must keep moving: after a grace period its average rate
// must stay above minBodyRate, and it may never stall for longer than the
// grace period. A slow link (a 4.5 MB body at 128 kbit/s takes five
// minutes) gets through; a body trickled a byte at a time is cut off
// within seconds of the grace period's end.
const (
	bodyGrace   = 15 * time.Second
	minBodyRate = 16 << 10 // bytes per second
)

type steadyReader struct {
	r     io.Reader
	rc    *http.ResponseController
	start time.Time
	n     int64
}

var errTooSlow = errors.New("request body too slow")

func (s *steadyReader) Read(p []byte) (int, error) {
	if el := time.Since(s.start); el > bodyGrace && float64(s.n) < (el-bodyGrace).Seconds()*minBodyRate {
		return 0, errTooSlow
	}
	_ = s.rc.SetReadDeadline(time.Now().Add(bodyGrace))
	n, err := s.r.Read(p)
	s.n += int64(n)
	return n, err
}

// plain answers without authentication (the caller has not shown the
// key).
func (c *call) plain(status int, cause, body string) {
	c.code, c.cause = status, cause
	c.w.Header().Set("Content-Type", "application/json")
	c.w.WriteHeader(status)
	io.WriteString(c.w, body)
}

// reply seals msg (and tail) for the caller and signs the answer.
func (c *call) reply(status int, msg any, tail []byte) {
	body, err := wire.SealAnswer(c.key, c.auth.Nonce, status, msg, tail)
	if err != nil {
		status = http.StatusInternalServerError
		body, _ = wire.SealAnswer(c.key, c.auth.Nonce, status, wire.Error{Code: wire.CodeInternal, Message: "encode answer"}, nil)
	}
	if int64(len(body)) > c.s.cfg.MaxBody {
		status = http.StatusInternalServerError
		body, _ = wire.SealAnswer(c.key, c.auth.Nonce, status, wire.Error{Code: wire.CodeInternal, Message: "answer too large"}, nil)
	}
	c.raw(status, body)
}

// raw sends a body that is sealed already (a download chunk), signed.
func (c *call) raw(status int, body []byte) {
	c.code = status
	c.w.Header().Set("Content-Type", "application/octet-stream")
	c.w.Header().Set(wire.HeaderSignature, wire.SignResponse(c.key, c.auth.Nonce, status, int64(len(body))))
	// Declared, not chunked: an edge can refuse an answer over its limit
	// before it streams any of it, and nobody parses chunk framing.
	c.w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	c.w.WriteHeader(status)
	c.w.Write(body)
	c.s.metrics.bytesOut.Add(float64(len(body)))
}

func (c *call) fail(status int, code, msg string) {
	if c.cause == "" && (status == http.StatusTooManyRequests || status == http.StatusForbidden || status == http.StatusRequestEntityTooLarge || status == http.StatusInsufficientStorage) {
		c.cause = code
	}
	c.reply(status, wire.Error{Code: code, Message: c.s.redact(msg)}, nil)
}

// failErr maps an error to a status and a message.
func (c *call) failErr(err error) {
	var ue *userError
	if errors.As(err, &ue) {
		c.fail(ue.status, ue.code, ue.msg)
		return
	}
	if errors.Is(err, context.Canceled) && c.r.Context().Err() != nil {
		c.code = 499 // the client went away
		return
	}
	c.s.log.Error("request failed", "route", c.path, "err", c.s.redact(err.Error()))
	c.fail(http.StatusBadGateway, wire.CodeUpstream, err.Error())
}

// userError is an error the client should see as it is.
type userError struct {
	status int
	code   string
	msg    string
}

func (e *userError) Error() string { return e.msg }

func badRequest(format string, a ...any) error {
	return &userError{http.StatusBadRequest, wire.CodeBadRequest, fmt.Sprintf(format, a...)}
}

func notFound(format string, a ...any) error {
	return &userError{http.StatusNotFound, wire.CodeNotFound, fmt.Sprintf(format, a...)}
}

func conflict(format string, a ...any) error {
	return &userError{http.StatusConflict, wire.CodeConflict, fmt.Sprintf(format, a...)}
}

func tooLarge(format string, a ...any) error {
	return &userError{http.StatusRequestEntityTooLarge, wire.CodeTooLarge, fmt.Sprintf(format, a...)}
}

func limited(format string, a ...any) error {
	return &userError{http.StatusTooManyRequests, wire.CodeLimit, fmt.Sprintf(format, a...)}
}

// getBuf returns a pooled buffer of at least n bytes.
func (s *Server) getBuf(n int) *[]byte {
	if bp, ok := s.bufs.Get().(*[]byte); ok && cap(*bp) >= n {
		*bp = (*bp)[:n]
		return bp
	}
	b := make([]byte, n, max(n, int(s.cfg.MaxBody)))
	return &b
}

// sharedBuf is a pooled buffer that has more than one user: a request
// body whose chunk handOff gives to a push while the request stores it.
// The last user gives it back.
type sharedBuf struct {
	bp   *[]byte
	refs atomic.Int32
}

func (s *Server) release(b *sharedBuf) {
	if b.refs.Add(-1) == 0 {
		s.putBuf(b.bp)
	}
}

func (s *Server) putBuf(bp *[]byte) {
	if cap(*bp) >= int(s.cfg.MaxBody) {
		s.bufs.Put(bp)
	}
}

type redactingWriter struct {
	w      io.Writer
	redact func(string) string
}

func (r redactingWriter) Write(p []byte) (int, error) {
	if _, err := io.WriteString(r.w, r.redact(string(p))); err != nil {
		return 0, err
	}
	return len(p), nil
}

// redactor removes every form of the upstream token from a message (see
// upstream.Remote.Redact); it is built once from the URL template, as the
// token is the same for every repository.
func redactor(template, token string) func(string) string {
	r, err := upstream.New(strings.ReplaceAll(template, "{repo}", "owner/repo"), token)
	if err != nil {
		return func(s string) string { return s }
	}
	return r.Redact
}
