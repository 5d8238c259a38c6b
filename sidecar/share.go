package sidecar

import (
	"bufio"
	"context"
	"encoding/binary"
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
}

type shareEnd struct {
	Status int    `json:"status,omitempty"`
	Signal string `json:"signal,omitempty"`
	Exit   bool   `json:"exit,omitempty"` // Status/Signal are an *sshx.ExitError
	Error  string `json:"error,omitempty"`
}

func sharePath(stateDir string) string { return filepath.Join(stateDir, "watch.sock") }

// unix socket paths are limited to about 107 bytes.
const maxSocketPath = 104

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

// shareServer serves a watch's connection to the other commands.
type shareServer struct {
	ln   net.Listener
	path string
	t    *sshTransport
	logf func(string, ...any)
}

// serveShare starts sharing t's connection on the sidecar's socket, or
// returns nil when it cannot (another watch shares it already, a path
// too long for a socket).
func serveShare(stateDir string, t *sshTransport, logf func(string, ...any)) *shareServer {
	path := sharePath(stateDir)
	if len(path) > maxSocketPath {
		logf("watch: not sharing the connection: %q is too long a path for a socket", path)
		return nil
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		logf("watch: another watch of this sidecar shares its connection already")
		return nil
	}
	_ = os.Remove(path) // left by a watch that died
	if err := os.MkdirAll(stateDir, 0o755); err != nil {
		logf("watch: not sharing the connection: %v", err)
		return nil
	}
	old := syscall.Umask(0o177)
	ln, err := net.Listen("unix", path)
	syscall.Umask(old)
	if err != nil {
		logf("watch: not sharing the connection: %v", err)
		return nil
	}
	s := &shareServer{ln: ln, path: path, t: t, logf: logf}
	go s.serve()
	return s
}

func (s *shareServer) close() {
	if s != nil {
		s.ln.Close()
		_ = os.Remove(s.path)
	}
}

func (s *shareServer) serve() {
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}
		go s.handle(c)
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

// shareTransport runs scripts through a running watch's connection.
type shareTransport struct {
	path string
	// own is a connection of the command's own, for what the watch does
	// not pass on (a terminal).
	own *sshTransport
}

// dialShare connects to a running watch of the sidecar, if any.
func dialShare(stateDir string) (*shareTransport, bool) {
	path := sharePath(stateDir)
	c, err := net.DialTimeout("unix", path, time.Second)
	if err != nil {
		return nil, false
	}
	c.Close()
	return &shareTransport{path: path}, true
}

func (t *shareTransport) close() error { return t.own.close() }

func (t *shareTransport) run(ctx context.Context, script string, stdin io.Reader, stdout, stderr io.Writer) error {
	return t.do(ctx, shareRequest{Script: script}, stdin, stdout, stderr)
}

func (t *shareTransport) exec(ctx context.Context, script string, o execIO) error {
	if o.tty >= 2 || (o.tty == 1 && o.terminal != nil) {
		return t.own.exec(ctx, script, o)
	}
	return t.do(ctx, shareRequest{Exec: true, Script: script}, o.stdin, o.stdout, o.stderr)
}

func (t *shareTransport) do(ctx context.Context, req shareRequest, stdin io.Reader, stdout, stderr io.Writer) error {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", t.path)
	if err != nil {
		return fmt.Errorf("reach the running watch's connection: %w", err)
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
		return fmt.Errorf("reach the running watch's connection: %w", err)
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
