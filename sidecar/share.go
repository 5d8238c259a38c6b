package sidecar

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/git-relay/git-relay/internal/sshx"
)

// A running watch shares its SSH connection: it listens on a unix socket
// in the sidecar's state folder (readable by its owner alone), and `sync`
// and `exec` run their scripts through it instead of logging in again.
// Each script is one connection to the socket: a JSON request line, then
// frames both ways. A client that goes away cancels its script.

// Frame types.
const (
	frameStdin    = 0 // client: stdin bytes
	frameStdinEOF = 1 // client: end of stdin
	frameSignal   = 2 // client: interrupted by the signal whose number follows
	frameStdout   = 3 // watch: stdout bytes
	frameStderr   = 4 // watch: stderr bytes
	frameEnd      = 5 // watch: how it ended, as a shareEnd in JSON
)

type shareRequest struct {
	Exec   bool   `json:"exec,omitempty"` // run as exec's command (sshx Exec), not a sync script
	Script string `json:"script"`
	// Quit asks a connection kept by `git-sidecar hold` to end (a
	// watch is starting, which shares its own).
	Quit bool `json:"quit,omitempty"`
	// Take asks a holder for the paths changed in the work tree at this
	// top since the last take (see dirtyTracker); Ack confirms the take
	// of that generation, whose sync succeeded.
	Take string `json:"take,omitempty"`
	Ack  int    `json:"ack,omitempty"`
}

// takeReply answers a Take: Full when the paths are not the whole story.
type takeReply struct {
	Paths []string `json:"paths,omitempty"`
	Full  bool     `json:"full,omitempty"`
	Gen   int      `json:"gen,omitempty"`
}

// takeRequest is a Take or an Ack handed to the holder's loop.
type takeRequest struct {
	top   string
	ack   int
	reply chan takeReply
}

type shareEnd struct {
	Status int    `json:"status,omitempty"`
	Signal string `json:"signal,omitempty"`
	Exit   bool   `json:"exit,omitempty"` // Status/Signal are an *sshx.ExitError
	Error  string `json:"error,omitempty"`
}

// sharePath is the sidecar's socket: in its state folder, or, when that
// path is too long for a socket, in a private folder of the user's under
// $XDG_RUNTIME_DIR or the temporary folder, named after the state folder.
// It is "" when neither will do.
func sharePath(stateDir string) string {
	if p := filepath.Join(stateDir, "watch.sock"); len(p) <= maxSocketPath {
		return p
	}
	dir := privateRuntimeDir()
	if dir == "" {
		return ""
	}
	sum := sha256.Sum256([]byte(stateDir))
	p := filepath.Join(dir, "sidecar-"+hex.EncodeToString(sum[:10])+".sock")
	if len(p) > maxSocketPath {
		return ""
	}
	return p
}

// privateRuntimeDir is $XDG_RUNTIME_DIR (which the system makes private
// to the user), else a folder of the temporary folder that this user owns
// and alone may enter; "" when it is not so (someone else made it).
func privateRuntimeDir() string {
	if d := os.Getenv("XDG_RUNTIME_DIR"); d != "" && ownedPrivateDir(d) {
		return d
	}
	d := filepath.Join(os.TempDir(), "git-sidecar-"+strconv.Itoa(os.Getuid()))
	_ = os.Mkdir(d, 0o700)
	if ownedPrivateDir(d) {
		return d
	}
	return ""
}

func ownedPrivateDir(d string) bool {
	fi, err := os.Lstat(d)
	if err != nil || !fi.IsDir() || fi.Mode().Perm()&0o077 != 0 {
		return false
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	return ok && int(st.Uid) == os.Getuid()
}

// unix socket paths are limited to about 107 bytes.
const maxSocketPath = 104

// shareLock is held by whoever serves the sidecar's socket (a watch or a
// holder) for as long as it does: one server at a time.
type shareLock struct{ f *os.File }

func tryShareLock(stateDir string) (*shareLock, bool, error) {
	if err := os.MkdirAll(stateDir, 0o755); err != nil {
		return nil, false, fmt.Errorf("create sidecar state folder: %w", err)
	}
	f, err := os.OpenFile(filepath.Join(stateDir, "share.lock"), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, false, err
	}
	ok, err := tryFlock(f)
	if err != nil || !ok {
		return nil, false, err
	}
	return &shareLock{f: f}, true, nil
}

func (l *shareLock) unlock() {
	if l != nil {
		l.f.Close()
	}
}

// takeShareLock takes the lock for a watch: a holder that has it is asked
// to end (again until it listens, if it has only just started), and has a
// few seconds to do so.
func takeShareLock(ctx context.Context, stateDir string) (*shareLock, bool) {
	l, ok, err := tryShareLock(stateDir)
	if err != nil || ok {
		return l, ok
	}
	asked := false
	ask := func() {
		if path := sharePath(stateDir); path != "" && !asked {
			t := &shareTransport{path: path}
			var gone *errShareGone
			asked = !errors.As(t.do(ctx, shareRequest{Quit: true}, nil, nil, nil), &gone)
		}
	}
	ask()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(5 * time.Second)
	for {
		select {
		case <-ctx.Done():
			return nil, false
		case <-deadline:
			return nil, false
		case <-tick.C:
		}
		if l, ok, err := tryShareLock(stateDir); err != nil || ok {
			return l, ok
		}
		ask()
	}
}

func writeFrame(w io.Writer, mu *sync.Mutex, typ byte, data []byte) error {
	mu.Lock()
	defer mu.Unlock()
	var hdr [5]byte
	hdr[0] = typ
	binary.BigEndian.PutUint32(hdr[1:], uint32(len(data)))
	if _, err := w.Write(hdr[:]); err != nil {
		return err
	}
	_, err := w.Write(data)
	return err
}

func readFrame(r *bufio.Reader) (byte, []byte, error) {
	var hdr [5]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return 0, nil, err
	}
	n := binary.BigEndian.Uint32(hdr[1:])
	if n > 1<<20 {
		return 0, nil, fmt.Errorf("frame of %d bytes is too big", n)
	}
	b := make([]byte, n)
	_, err := io.ReadFull(r, b)
	return hdr[0], b, err
}

// frameWriter sends what is written as frames of one type.
type frameWriter struct {
	w   io.Writer
	mu  *sync.Mutex
	typ byte
}

func (f *frameWriter) Write(p []byte) (int, error) {
	for off := 0; off < len(p); off += 32 << 10 {
		end := min(off+32<<10, len(p))
		if err := writeFrame(f.w, f.mu, f.typ, p[off:end]); err != nil {
			return off, err
		}
	}
	return len(p), nil
}

// shareServer serves a watch's or a holder's connection to the other
// commands. The caller holds the share lock.
type shareServer struct {
	ln   net.Listener
	path string
	ino  uint64 // of the socket file, to tell when it is gone
	t    *sshTransport
	logf func(string, ...any)

	mu       sync.Mutex
	active   int       // requests being served
	lastUsed time.Time // when the last one ended (or the server started)
	handlers sync.WaitGroup
	// quit is closed when a client asks the server to end.
	quit     chan struct{}
	quitOnce sync.Once
	served   chan struct{} // closed when serve returns
	// takes, when set (a holder that watches the work tree), gets the
	// Take and Ack requests.
	takes chan takeRequest
}

// serveShare starts sharing t's connection on the sidecar's socket, or
// returns nil when it cannot (no path will do for a socket). takes, if
// not nil, gets the Take and Ack requests.
func serveShare(stateDir string, t *sshTransport, takes chan takeRequest, logf func(string, ...any)) *shareServer {
	path := sharePath(stateDir)
	if path == "" {
		logf("not sharing the connection: no short enough private path for a socket")
		return nil
	}
	_ = os.Remove(path) // left by a server that died: we hold the lock
	if err := os.MkdirAll(stateDir, 0o755); err != nil {
		logf("not sharing the connection: %v", err)
		return nil
	}
	old := syscall.Umask(0o177)
	ln, err := net.Listen("unix", path)
	syscall.Umask(old)
	if err != nil {
		logf("not sharing the connection: %v", err)
		return nil
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	s := &shareServer{ln: ln, path: path, t: t, logf: logf, lastUsed: time.Now(), quit: make(chan struct{}), served: make(chan struct{}), takes: takes}
	if fi, err := os.Lstat(path); err == nil {
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			s.ino = st.Ino
		}
	}
	go s.serve()
	return s
}

// close removes the socket if it is still ours, so that a new client
// finds none and logs in itself; serves the clients that had connected
// already; and lets the requests in hand finish (for a while).
func (s *shareServer) close() {
	if s == nil {
		return
	}
	if s.stillListed() {
		_ = os.Remove(s.path)
	}
	// A client whose connect succeeded is queued by now: accept what is
	// queued, then stop.
	_ = s.ln.(*net.UnixListener).SetDeadline(time.Now().Add(100 * time.Millisecond))
	<-s.served
	s.ln.Close()
	done := make(chan struct{})
	go func() { s.handlers.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(time.Minute):
	}
}

// stillListed reports whether the socket file is still the one we made.
func (s *shareServer) stillListed() bool {
	fi, err := os.Lstat(s.path)
	if err != nil {
		return false
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	return ok && st.Ino == s.ino
}

// idleFor is how long no request has been in hand.
func (s *shareServer) idleFor() time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.active > 0 {
		return 0
	}
	return time.Since(s.lastUsed)
}

func (s *shareServer) serve() {
	defer close(s.served)
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.mu.Lock()
		s.active++
		s.mu.Unlock()
		s.handlers.Add(1)
		go func() {
			defer s.handlers.Done()
			s.handle(c)
			s.mu.Lock()
			s.active--
			s.lastUsed = time.Now()
			s.mu.Unlock()
		}()
	}
}

func (s *shareServer) handle(c net.Conn) {
	defer c.Close()
	r := bufio.NewReader(c)
	line, err := r.ReadBytes('\n')
	if err != nil {
		return
	}
	var req shareRequest
	if err := json.Unmarshal(line, &req); err != nil {
		return
	}
	if req.Quit {
		s.quitOnce.Do(func() { close(s.quit) })
		b, _ := json.Marshal(shareEnd{})
		var mu sync.Mutex
		_ = writeFrame(c, &mu, frameEnd, b)
		return
	}
	if req.Take != "" || req.Ack != 0 {
		s.answerTake(c, req)
		return
	}
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	var mu sync.Mutex
	stdinR, stdinW := io.Pipe()
	// The client's frames: stdin, then its end; a signal, or the client
	// going away, cancels the script.
	go func() {
		for {
			typ, data, err := readFrame(r)
			if err != nil {
				stdinW.CloseWithError(io.ErrUnexpectedEOF)
				cancel(errors.New("the client went away"))
				return
			}
			switch typ {
			case frameStdin:
				if _, err := stdinW.Write(data); err != nil {
					continue // the script stopped reading
				}
			case frameStdinEOF:
				stdinW.Close()
			case frameSignal:
				n, _ := strconv.Atoi(string(data))
				cancel(&sshx.Interrupted{Signal: syscall.Signal(n)})
			}
		}
	}()
	stdout := &frameWriter{w: c, mu: &mu, typ: frameStdout}
	stderr := &frameWriter{w: c, mu: &mu, typ: frameStderr}
	if s.t == nil {
		b, _ := json.Marshal(shareEnd{Error: "this holder keeps no connection (the workspace is on a local path)"})
		_ = writeFrame(c, &mu, frameEnd, b)
		return
	}
	// A connection that sat unused may have died (a laptop asleep, a
	// server restarted): check it, and log in again if it did.
	s.mu.Lock()
	idle := time.Since(s.lastUsed)
	s.mu.Unlock()
	if idle > idleCheck {
		s.t.dropIfDead(2 * time.Second)
	}
	client, err := s.t.connect(ctx)
	if err == nil {
		if req.Exec {
			err = client.Exec(ctx, req.Script, sshx.ExecOptions{Stdin: stdinR, Stdout: stdout, Stderr: stderr, Grace: grace})
		} else {
			err = client.RunScript(ctx, req.Script, stdinR, stdout, stderr)
		}
	}
	stdinR.Close()
	var end shareEnd
	var exit *sshx.ExitError
	switch {
	case err == nil:
	case errors.As(err, &exit):
		end = shareEnd{Exit: true, Status: exit.Status, Signal: exit.Signal}
	default:
		end.Error = err.Error()
	}
	b, _ := json.Marshal(end)
	_ = writeFrame(c, &mu, frameEnd, b)
}

// answerTake hands a Take or Ack to the holder's loop and sends back
// its answer; without one (a watch), the answer is Full.
func (s *shareServer) answerTake(c net.Conn, req shareRequest) {
	ans := takeReply{Full: true}
	if s.takes != nil {
		tr := takeRequest{top: req.Take, ack: req.Ack, reply: make(chan takeReply, 1)}
		select {
		case s.takes <- tr:
			select {
			case ans = <-tr.reply:
			case <-time.After(5 * time.Second):
			}
		case <-time.After(5 * time.Second):
		}
	}
	var mu sync.Mutex
	b, _ := json.Marshal(ans)
	_ = writeFrame(c, &mu, frameStdout, b)
	b, _ = json.Marshal(shareEnd{})
	_ = writeFrame(c, &mu, frameEnd, b)
}

// takeDirty asks the holder what changed in the work tree at top since
// the last take; known is false when it cannot tell. ack, once the sync
// succeeded, lets the holder forget those paths.
func (t *shareTransport) takeDirty(ctx context.Context, top string) (paths []string, known bool, ack func()) {
	var out bytes.Buffer
	if err := t.do(ctx, shareRequest{Take: top}, nil, &out, nil); err != nil {
		return nil, false, func() {}
	}
	var r takeReply
	if json.Unmarshal(out.Bytes(), &r) != nil {
		return nil, false, func() {}
	}
	ack = func() {}
	if r.Gen != 0 {
		ack = func() { _ = t.do(context.WithoutCancel(ctx), shareRequest{Ack: r.Gen}, nil, nil, nil) }
	}
	return r.Paths, !r.Full, ack
}

// shareTransport runs scripts through the connection of a running watch
// or holder.
type shareTransport struct {
	path string
	// own is a connection of the command's own, for what the watch does
	// not pass on (a terminal).
	own *sshTransport
}

// dialShare connects to a running watch or holder of the sidecar, if any.
func dialShare(stateDir string) (*shareTransport, bool) {
	path := sharePath(stateDir)
	if path == "" {
		return nil, false
	}
	c, err := net.DialTimeout("unix", path, time.Second)
	if err != nil {
		return nil, false
	}
	c.Close()
	return &shareTransport{path: path}, true
}

func (t *shareTransport) close() error { return t.own.close() }

func (t *shareTransport) run(ctx context.Context, script string, stdin io.Reader, stdout, stderr io.Writer) error {
	err := t.do(ctx, shareRequest{Script: script}, stdin, stdout, stderr)
	var gone *errShareGone
	if errors.As(err, &gone) && t.own != nil {
		// The server ended between our look and our request (a holder
		// idle for long enough): nothing was sent, log in ourselves.
		return t.own.run(ctx, script, stdin, stdout, stderr)
	}
	return err
}

// errShareGone is a shared connection that could not be reached: nothing
// of the request was sent.
type errShareGone struct{ err error }

func (e *errShareGone) Error() string {
	return "reach the shared connection: " + e.err.Error()
}
func (e *errShareGone) Unwrap() error { return e.err }

func (t *shareTransport) exec(ctx context.Context, script string, o execIO) error {
	if o.tty >= 2 || (o.tty == 1 && o.terminal != nil) {
		return t.own.exec(ctx, script, o)
	}
	err := t.do(ctx, shareRequest{Exec: true, Script: script}, o.stdin, o.stdout, o.stderr)
	var gone *errShareGone
	if errors.As(err, &gone) && t.own != nil {
		return t.own.exec(ctx, script, o)
	}
	return err
}

func (t *shareTransport) do(ctx context.Context, req shareRequest, stdin io.Reader, stdout, stderr io.Writer) error {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", t.path)
	if err != nil {
		return &errShareGone{err}
	}
	defer c.Close()
	if stdout == nil {
		stdout = io.Discard
	}
	if stderr == nil {
		stderr = io.Discard
	}
	b, _ := json.Marshal(req)
	if _, err := c.Write(append(b, '\n')); err != nil {
		return &errShareGone{err}
	}
	var mu sync.Mutex
	if stdin != nil {
		go func() {
			_, _ = io.Copy(&frameWriter{w: c, mu: &mu, typ: frameStdin}, stdin)
			_ = writeFrame(c, &mu, frameStdinEOF, nil)
		}()
	} else {
		_ = writeFrame(c, &mu, frameStdinEOF, nil)
	}
	stop := context.AfterFunc(ctx, func() {
		sig := syscall.SIGTERM
		var intr *sshx.Interrupted
		if errors.As(context.Cause(ctx), &intr) {
			sig = intr.Signal
		}
		_ = writeFrame(c, &mu, frameSignal, []byte(strconv.Itoa(int(sig))))
		// The watch ends the script within exec's grace; past that,
		// let go.
		time.AfterFunc(grace+time.Second, func() { c.Close() })
	})
	defer stop()
	r := bufio.NewReader(c)
	for {
		typ, data, err := readFrame(r)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("the running watch's connection: %w", err)
		}
		switch typ {
		case frameStdout:
			_, _ = stdout.Write(data)
		case frameStderr:
			_, _ = stderr.Write(data)
		case frameEnd:
			var end shareEnd
			if err := json.Unmarshal(data, &end); err != nil {
				return fmt.Errorf("the running watch's connection: %w", err)
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
			switch {
			case end.Exit:
				return &sshx.ExitError{Status: end.Status, Signal: end.Signal}
			case end.Error != "":
				return errors.New(end.Error)
			}
			return nil
		}
	}
}
