// Package githost is a stand-in, for tests and benchmarks, for the
// external git host (GitHub) that only the relay server reaches: git's own
// smart-HTTP server, `git http-backend`, behind net/http/cgi on loopback,
// serving the bare repositories under a folder and demanding a token.
//
// It also watches for the token escaping: on every request it looks for
// the token, in each form git could carry it, in the command line of every
// process on the machine (/proc/*/cmdline), which is where a token passed
// in argv or a URL becomes visible to every local user.
package githost

import (
	"crypto/subtle"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/cgi"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/git-relay/git-relay/internal/shape"
)

// Realm is the Basic realm named in 401 answers.
const Realm = "githost"

// Leak is a sighting of the token in a process's command line.
type Leak struct {
	PID  int
	Form string // which form of the token: raw, base64, url-escaped
	// Cmdline is the process's command line with every form of the token
	// replaced by "<TOKEN>", so that printing a leak leaks nothing.
	Cmdline string
	// During names the request being served when the leak was seen.
	During string
}

func (l Leak) String() string {
	return fmt.Sprintf("pid %d (%s form, during %s): %s", l.PID, l.Form, l.During, l.Cmdline)
}

// Host is a running git host. Its repositories are root/<owner>/<repo>.git,
// reachable at URL + "/<owner>/<repo>.git".
type Host struct {
	// URL is the base address, http://127.0.0.1:PORT.
	URL string

	root    string
	token   string
	forms   []tokenForm
	git     string
	spool   string
	srv     *http.Server
	done    chan struct{}
	selfPID int

	mu       sync.Mutex
	leaks    []Leak
	seen     map[string]bool
	requests int
	denied   int
	stderr   limitedLog
	hook     func(r *http.Request)
}

type tokenForm struct{ name, text string }

// TokenForms returns the token as it may appear once it has been handed to
// git or put into a URL or header: itself, the base64 of
// "x-access-token:TOKEN" (an Authorization: Basic header), the base64 of
// the bare token, and its URL-escaped forms.
func TokenForms(token string) []string {
	var out []string
	for _, f := range forms(token) {
		out = append(out, f.text)
	}
	return out
}

func forms(token string) []tokenForm {
	if token == "" {
		return nil
	}
	all := []tokenForm{
		{"raw", token},
		{"base64 x-access-token", base64.StdEncoding.EncodeToString([]byte("x-access-token:" + token))},
		{"base64 x-access-token", base64.RawStdEncoding.EncodeToString([]byte("x-access-token:" + token))},
		{"base64", base64.StdEncoding.EncodeToString([]byte(token))},
		{"base64", base64.RawStdEncoding.EncodeToString([]byte(token))},
		{"url-escaped", url.QueryEscape(token)},
		{"url-escaped", url.PathEscape(token)},
		{"url-escaped", url.UserPassword("x-access-token", token).String()},
	}
	var out []tokenForm
	seen := map[string]bool{}
	for _, f := range all {
		if !seen[f.text] {
			seen[f.text] = true
			out = append(out, f)
		}
	}
	return out
}

// Options tune a Host. The zero value is a loopback-fast host.
type Options struct {
	// Shape makes the host far away: what it receives (In) and what it
	// sends (Out) waits the link's latency at the start of each request
	// or answer and flows at its rate, as GitHub does across a WAN.
	ShapeIn, ShapeOut shape.Link
}

// Start serves the bare repositories under root on a loopback port. Every
// request must carry token: as the password of HTTP Basic (any user name,
// usually x-access-token) or as `Authorization: Bearer TOKEN`.
func Start(root, token string) (*Host, error) {
	return StartWith(root, token, Options{})
}

// StartWith is Start with options.
func StartWith(root, token string, o Options) (*Host, error) {
	if token == "" {
		return nil, fmt.Errorf("githost: an empty token would let anyone in; pass a token")
	}
	abs, err := filepath.Abs(root)
	if err != nil {
		return nil, fmt.Errorf("githost root %q: %w", root, err)
	}
	if fi, err := os.Stat(abs); err != nil || !fi.IsDir() {
		return nil, fmt.Errorf("githost root %q: not a folder", root)
	}
	git, err := exec.LookPath("git")
	if err != nil {
		return nil, fmt.Errorf("githost needs git on PATH: %w", err)
	}
	spool, err := os.MkdirTemp("", "githost-spool-")
	if err != nil {
		return nil, fmt.Errorf("githost spool folder: %w", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		os.RemoveAll(spool)
		return nil, fmt.Errorf("listen for githost: %w", err)
	}
	h := &Host{
		URL:     "http://" + ln.Addr().String(),
		root:    abs,
		token:   token,
		forms:   forms(token),
		git:     git,
		spool:   spool,
		done:    make(chan struct{}),
		selfPID: os.Getpid(),
	}
	h.srv = &http.Server{Handler: h, ReadHeaderTimeout: 30 * time.Second}
	go func() {
		defer close(h.done)
		_ = h.srv.Serve(shape.Listener(ln, o.ShapeIn, o.ShapeOut))
	}()
	return h, nil
}

// Close stops the host and removes its spool folder.
func (h *Host) Close() error {
	err := h.srv.Close()
	<-h.done
	os.RemoveAll(h.spool)
	return err
}

// Leaks returns every sighting of the token in a process command line.
func (h *Host) Leaks() []Leak {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.leaks)
}

// Requests returns how many requests arrived, and how many of them were
// refused for want of the token.
func (h *Host) Requests() (total, denied int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.requests, h.denied
}

// SetHook makes f run on every authorized request before git serves it
// (nil removes it). A test uses it to act at a precise moment, such as
// killing the relay while it is pushing.
func (h *Host) SetHook(f func(r *http.Request)) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.hook = f
}

// Stderr returns what git http-backend wrote to its stderr (the first
// 64 KiB), for a test that wants to show why the host refused something.
func (h *Host) Stderr() string {
	return h.stderr.String()
}

// limitedLog keeps the first 64 KiB written to it.
type limitedLog struct {
	mu  sync.Mutex
	buf []byte
}

func (l *limitedLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if room := 64<<10 - len(l.buf); room > 0 {
		l.buf = append(l.buf, p[:min(room, len(p))]...)
	}
	return len(p), nil
}

func (l *limitedLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return string(l.buf)
}

// CheckProcesses looks for the token in every process's command line now,
// records what it finds, and returns the new sightings.
func (h *Host) CheckProcesses(during string) []Leak {
	var fresh []Leak
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, l := range ScanCmdlines(h.token, h.selfPID) {
		// The watch runs many times per request; one process is one leak.
		key := strconv.Itoa(l.PID) + " " + l.Cmdline
		if h.seen[key] {
			continue
		}
		if h.seen == nil {
			h.seen = map[string]bool{}
		}
		h.seen[key] = true
		l.During = during
		fresh = append(fresh, l)
	}
	h.leaks = append(h.leaks, fresh...)
	return fresh
}

// ScanCmdlines returns the processes whose command line holds a form of
// token, skipping the process skip (the caller itself, whose own argv it
// knows).
func ScanCmdlines(token string, skip int) []Leak {
	fs := forms(token)
	if len(fs) == 0 {
		return nil
	}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var out []Leak
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == skip {
			continue
		}
		// A process may be gone by now; that is not an error.
		raw, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || len(raw) == 0 {
			continue
		}
		cmdline := strings.ReplaceAll(strings.TrimRight(string(raw), "\x00"), "\x00", " ")
		for _, f := range fs {
			if strings.Contains(cmdline, f.text) {
				out = append(out, Leak{PID: pid, Form: f.name, Cmdline: redact(cmdline, fs)})
				break
			}
		}
	}
	return out
}

func redact(s string, fs []tokenForm) string {
	for _, f := range fs {
		s = strings.ReplaceAll(s, f.text, "<TOKEN>")
	}
	return s
}

// authorized reports whether r carries the token.
func (h *Host) authorized(r *http.Request) bool {
	auth := r.Header.Get("Authorization")
	scheme, cred, _ := strings.Cut(auth, " ")
	cred = strings.TrimSpace(cred)
	switch strings.ToLower(scheme) {
	case "basic":
		if _, pass, ok := r.BasicAuth(); ok {
			return subtle.ConstantTimeCompare([]byte(pass), []byte(h.token)) == 1
		}
	case "bearer", "token":
		return subtle.ConstantTimeCompare([]byte(cred), []byte(h.token)) == 1
	}
	return false
}

func (h *Host) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	during := r.Method + " " + r.URL.Path
	h.mu.Lock()
	h.requests++
	h.mu.Unlock()
	// The client that sent this request is running right now, so its
	// command line (git-remote-http's argv holds the remote URL) is there
	// to be read.
	h.CheckProcesses(during)

	if !h.authorized(r) {
		h.mu.Lock()
		h.denied++
		h.mu.Unlock()
		w.Header().Set("WWW-Authenticate", `Basic realm="`+Realm+`"`)
		http.Error(w, "githost: authentication required", http.StatusUnauthorized)
		return
	}

	h.mu.Lock()
	hook := h.hook
	h.mu.Unlock()
	if hook != nil {
		hook(r)
	}

	// net/http/cgi refuses chunked bodies (git sends one for any push
	// larger than http.postBuffer), so the body goes to a file first and
	// reaches git http-backend with a Content-Length.
	if r.Body != nil && r.Body != http.NoBody {
		f, err := os.CreateTemp(h.spool, "body-")
		if err != nil {
			http.Error(w, "githost: spool request body: "+err.Error(), http.StatusInternalServerError)
			return
		}
		defer os.Remove(f.Name())
		defer f.Close()
		n, err := io.Copy(f, r.Body)
		if err != nil {
			http.Error(w, "githost: spool request body: "+err.Error(), http.StatusBadRequest)
			return
		}
		if _, err := f.Seek(0, io.SeekStart); err != nil {
			http.Error(w, "githost: spool request body: "+err.Error(), http.StatusInternalServerError)
			return
		}
		r.Body = f
		r.ContentLength = n
		r.TransferEncoding = nil
		r.Header.Set("Content-Length", strconv.FormatInt(n, 10))
	}

	env := []string{
		"GIT_PROJECT_ROOT=" + h.root,
		"GIT_HTTP_EXPORT_ALL=1",
		"GIT_CONFIG_NOSYSTEM=1",
		"HOME=" + h.spool,
		// git http-backend only serves pushes to authenticated users
		// unless receive-pack is switched on; the token check above is
		// the authentication.
		"GIT_CONFIG_COUNT=2",
		"GIT_CONFIG_KEY_0=http.receivepack",
		"GIT_CONFIG_VALUE_0=true",
		// The repositories belong to whoever runs the tests, which is not
		// necessarily who git thinks owns them inside a CGI.
		"GIT_CONFIG_KEY_1=safe.directory",
		"GIT_CONFIG_VALUE_1=*",
		"REMOTE_USER=x-access-token",
	}
	// Protocol v2 is negotiated through this header, which git
	// http-backend reads from GIT_PROTOCOL.
	if p := r.Header.Get("Git-Protocol"); p != "" {
		env = append(env, "GIT_PROTOCOL="+p)
	}
	handler := &cgi.Handler{
		Path:       h.git,
		Args:       []string{"http-backend"},
		Root:       "/",
		Env:        env,
		InheritEnv: []string{"PATH", "TMPDIR", "LANG", "LC_ALL"},
		Stderr:     &h.stderr,
	}

	// Keep watching while git http-backend runs, so that a token on the
	// client's command line is seen even when the request is short.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(25 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				h.CheckProcesses(during)
			}
		}
	})
	handler.ServeHTTP(w, r)
	close(stop)
	wg.Wait()
}
