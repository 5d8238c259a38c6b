package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/git-relay/git-relay/internal/keyring"
	"github.com/git-relay/git-relay/internal/upstream"
	"github.com/git-relay/git-relay/internal/wire"
)

// Config is everything Serve needs.
type Config struct {
	Listen      string
	DataDir     string
	Ring        *keyring.Ring
	Upstream    string // URL template with {repo}
	Token       string
	MaxBody     int64
	AllowForce  bool
	MaxPushSize int64
	SessionTTL  string
	MaxSessions int
	Log         io.Writer
	LogLevel    slog.Level
}

// Server is the relay's state: sessions on disk and mirrors of upstream.
type Server struct {
	cfg      Config
	ttl      time.Duration
	verifier *wire.Verifier
	log      *slog.Logger
	redactor func(string) string

	repoLocks keyedMutex // serialises the work on one repository
	work      sync.WaitGroup
	closing   chan struct{}

	mu      sync.Mutex
	running map[string]chan struct{}  // sessions being processed; closed when done
	fetches map[string]*fetchProgress // fetches being written
	// partHashes are the running hashes of pushes being received.
	partHashes map[string]*partHash

	bodies sync.Pool // *[]byte: request body buffers (readBody)
}

// New prepares a server over cfg.DataDir.
func New(cfg Config) (*Server, error) {
	if cfg.MaxBody <= 0 {
		cfg.MaxBody = wire.DefaultMaxBody
	}
	if cfg.MaxPushSize <= 0 {
		cfg.MaxPushSize = 4 << 30
	}
	if cfg.MaxSessions <= 0 {
		cfg.MaxSessions = 64
	}
	if _, err := upstream.New(strings.ReplaceAll(cfg.Upstream, "{repo}", "owner/repo"), cfg.Token); err != nil && strings.Contains(cfg.Upstream, "{repo}") {
		return nil, fmt.Errorf("--upstream: %w", err)
	}
	if cfg.MaxBody < 64<<10 {
		return nil, fmt.Errorf("--max-body %d is too small (at least 65536)", cfg.MaxBody)
	}
	if !strings.Contains(cfg.Upstream, "{repo}") {
		return nil, fmt.Errorf("--upstream %q has no {repo} placeholder (e.g. 'https://github.com/{repo}.git')", cfg.Upstream)
	}
	ttl := 24 * time.Hour
	if cfg.SessionTTL != "" {
		d, err := time.ParseDuration(cfg.SessionTTL)
		if err != nil || d <= 0 {
			return nil, fmt.Errorf("--session-ttl %q: not a duration (e.g. 24h)", cfg.SessionTTL)
		}
		ttl = d
	}
	for _, d := range []string{"sessions", "fetches", "mirrors"} {
		if err := os.MkdirAll(filepath.Join(cfg.DataDir, d), 0o700); err != nil {
			return nil, fmt.Errorf("prepare data dir: %w", err)
		}
	}
	logw := cfg.Log
	if logw == nil {
		logw = io.Discard
	}
	s := &Server{
		cfg:      cfg,
		ttl:      ttl,
		verifier: &wire.Verifier{Ring: cfg.Ring},
		closing:  make(chan struct{}),
		running:  map[string]chan struct{}{},
		fetches:  map[string]*fetchProgress{},

		partHashes: map[string]*partHash{},
	}
	s.redactor = redactor(cfg.Upstream, cfg.Token)
	s.log = slog.New(slog.NewTextHandler(redactingWriter{logw, s.redactor}, &slog.HandlerOptions{Level: cfg.LogLevel}))
	return s, nil
}

// Serve runs the server until ctx is done, then shuts down gracefully:
// it stops taking requests, lets pushes being applied finish, and parks
// the sessions still receiving chunks on disk for a later run.
func Serve(ctx context.Context, cfg Config) error {
	s, err := New(cfg)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	fmt.Fprintf(cfg.Log, "git-relay-server: listening on http://%s\n", ln.Addr())
	srv := &http.Server{
		Handler:           s.Handler(),
		ReadHeaderTimeout: 30 * time.Second,
		IdleTimeout:       2 * time.Minute,
	}
	s.resume()
	go s.janitor(ctx)
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	s.log.Info("shutting down")
	close(s.closing)
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_ = srv.Shutdown(shutdownCtx)
	s.work.Wait()
	s.log.Info("stopped")
	return nil
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
	w     http.ResponseWriter
	r     *http.Request
	key   keyring.Key
	nonce string
	body  []byte
	s     *Server
}

func (s *Server) api(w http.ResponseWriter, r *http.Request) {
	path := strings.TrimPrefix(r.URL.Path, "/api/gr/")
	if r.ContentLength > s.cfg.MaxBody {
		http.Error(w, "request body too large", http.StatusRequestEntityTooLarge)
		return
	}
	body, err := s.readBody(w, r)
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			http.Error(w, "request body too large", http.StatusRequestEntityTooLarge)
			return
		}
		http.Error(w, "read request", http.StatusBadRequest)
		return
	}
	key, auth, err := s.verifier.Verify(r.Header.Get(wire.HeaderAuth), r.Method, path, r.URL.Query(), body)
	if err != nil {
		// The same answer for every reason, unsigned: a caller without the
		// key learns nothing, not even whether a repository exists.
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusUnauthorized)
		io.WriteString(w, `{"code":"unauthorized","error":"unauthorized"}`)
		return
	}
	defer s.bodies.Put(&body)
	c := &call{w: w, r: r, key: key, nonce: auth.Nonce, body: body, s: s}
	switch r.Method + " " + path {
	case "GET " + wire.PathRefs:
		s.handleRefs(c)
	case "GET " + wire.PathRemoteInfo:
		s.handleRemoteInfo(c)
	case "POST " + wire.PathPush:
		s.handlePushCreate(c)
	case "PUT " + wire.PathPushChunk:
		s.handlePushChunk(c)
	case "GET " + wire.PathPushStatus:
		s.handlePushStatus(c)
	case "POST " + wire.PathPushFinish:
		s.handlePushComplete(c)
	case "POST " + wire.PathFetch:
		s.handleFetchCreate(c)
	case "GET " + wire.PathFetchStatus:
		s.handleFetchStatus(c)
	case "GET " + wire.PathFetchChunk:
		s.handleFetchChunk(c)
	default:
		c.fail(http.StatusNotFound, wire.CodeNotFound, fmt.Sprintf("no such API call: %s %s", r.Method, path))
	}
}

// readBody reads a request body of at most --max-body bytes into a
// buffer from the pool: chunk bodies are megabytes each, and reading them
// into fresh, growing buffers would cost more than the rest of their
// handling. The handler must not keep the body past its return.
func (s *Server) readBody(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	bp, _ := s.bodies.Get().(*[]byte)
	if bp == nil {
		b := make([]byte, 0, 64<<10)
		bp = &b
	}
	buf := (*bp)[:0]
	if r.ContentLength > 0 && int64(cap(buf)) < r.ContentLength {
		buf = make([]byte, 0, r.ContentLength)
	}
	in := http.MaxBytesReader(w, r.Body, s.cfg.MaxBody)
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := in.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err == io.EOF {
			return buf, nil
		}
		if err != nil {
			*bp = buf[:0]
			s.bodies.Put(bp)
			return nil, err
		}
	}
}

// reply sends a signed JSON (or raw bytes) answer.
func (c *call) reply(status int, v any) {
	var body []byte
	switch b := v.(type) {
	case []byte:
		body = b
		c.w.Header().Set("Content-Type", "application/octet-stream")
	default:
		var err error
		body, err = json.Marshal(v)
		if err != nil {
			status = http.StatusInternalServerError
			body = []byte(`{"code":"internal","error":"encode answer"}`)
		}
		c.w.Header().Set("Content-Type", "application/json")
	}
	if int64(len(body)) > c.s.cfg.MaxBody {
		status = http.StatusInternalServerError
		body = []byte(`{"code":"internal","error":"answer too large"}`)
	}
	c.w.Header().Set(wire.HeaderSignature, wire.SignResponse(c.key, c.nonce, status, body))
	c.w.WriteHeader(status)
	c.w.Write(body)
}

func (c *call) fail(status int, code, msg string) {
	c.reply(status, wire.Error{Code: code, Message: c.s.redactor(msg)})
}

// failErr maps an error to a status and a message.
func (c *call) failErr(err error) {
	var ue *userError
	if errors.As(err, &ue) {
		c.fail(ue.status, ue.code, ue.msg)
		return
	}
	c.s.log.Error("request failed", "path", c.r.URL.Path, "err", err)
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

// keyedMutex hands out one mutex per key.
type keyedMutex struct {
	mu sync.Mutex
	m  map[string]*sync.Mutex
}

func (k *keyedMutex) lock(key string) func() {
	k.mu.Lock()
	if k.m == nil {
		k.m = map[string]*sync.Mutex{}
	}
	m, ok := k.m[key]
	if !ok {
		m = &sync.Mutex{}
		k.m[key] = m
	}
	k.mu.Unlock()
	m.Lock()
	return m.Unlock
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
