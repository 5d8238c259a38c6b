// Package sshx is the SSH client of git-sidecar: it resolves a host through
// ~/.ssh/config, checks its key against ~/.ssh/known_hosts (failing closed),
// authenticates with ssh-agent and the default ~/.ssh/id_* keys, and runs
// POSIX sh scripts on the far side over one connection per run.
//
// The far side runs our command through the user's login shell, which may
// print text of its own (a chatty .bashrc). RunScript frames the script's
// output with a random marker so that such noise never reaches the caller.
package sshx

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// Target says where to connect. Empty fields come from ~/.ssh/config, then
// from the defaults (port 22, the local user name).
type Target struct {
	// Host is the host name or a Host alias of ~/.ssh/config.
	Host string
	User string
	Port int
}

// Options tune Dial.
type Options struct {
	// AcceptNew trusts and records the key of a host that has no entry in
	// known_hosts yet. A changed key is refused even then.
	AcceptNew bool
	// Home is the directory holding .ssh (default: $HOME).
	Home string
	// Log, when set, receives one line per step (for -v).
	Log io.Writer
	// Timeout bounds the TCP connect and the handshake (default: the
	// host's ConnectTimeout, else 20s).
	Timeout time.Duration
	// SSH is the ssh binary that resolves the configuration with `ssh -G`
	// (default: ssh on PATH); "none" reads ~/.ssh/config with the built-in
	// parser instead.
	SSH string
}

// HostKeyError is an unknown, changed or revoked host key.
type HostKeyError struct {
	Host        string // as written in known_hosts ("[127.0.0.1]:2222")
	Fingerprint string // SHA256 fingerprint of the key the server offered
	KeyType     string
	Changed     bool   // the host is known with another key
	Revoked     bool   // the key is marked @revoked
	KnownHosts  string // the file that was checked
	Where       string // for a changed key: the file:line of the expected key
}

func (e *HostKeyError) Error() string {
	switch {
	case e.Revoked:
		return fmt.Sprintf("host key %s %s of %s is revoked in %s; refusing to connect", e.KeyType, e.Fingerprint, e.Host, e.KnownHosts)
	case e.Changed:
		return fmt.Sprintf("host key of %s has CHANGED: the server offered %s %s, but %s expects another key; "+
			"this could be an attack. If the change is expected, remove the old entry with `ssh-keygen -R %s` and connect again",
			e.Host, e.KeyType, e.Fingerprint, e.Where, e.Host)
	default:
		return fmt.Sprintf("host %s is not in %s (key %s %s); check the fingerprint and run again with --accept-new to trust it",
			e.Host, e.KnownHosts, e.KeyType, e.Fingerprint)
	}
}

// ExitError is a remote command that ended with a non-zero status or a
// signal.
type ExitError struct {
	Status int
	Signal string
}

func (e *ExitError) Error() string {
	if e.Signal != "" {
		return fmt.Sprintf("remote command killed by signal %s", e.Signal)
	}
	return fmt.Sprintf("remote command exited with status %d", e.Status)
}

// LoginShellError is a remote login shell that did not run our command
// at all: nologin, a restricted shell, a "ForceCommand" that ignores it.
// Message is what it printed.
type LoginShellError struct {
	Addr    string
	User    string
	Status  int
	Message string
}

func (e *LoginShellError) Error() string {
	msg := e.Message
	if msg == "" {
		msg = fmt.Sprintf("it printed nothing and exited with status %d", e.Status)
	}
	return fmt.Sprintf("the login shell of %q on %s refused to run commands: %s", e.User, e.Addr, msg)
}

// Client is one SSH connection.
type Client struct {
	conn *ssh.Client
	// Addr is the host:port that was dialled.
	Addr string
	// User is the remote user name.
	User string

	// via are the ProxyJump hops under this connection, closed with it.
	via       []*Client
	closed    chan struct{}
	closeOnce sync.Once
	ended     chan struct{}
	endedOnce sync.Once
	deadMu    sync.Mutex
	dead      error
}

// Close closes the connection and the jump hosts' connections under it.
func (c *Client) Close() error {
	err := c.conn.Close()
	c.closeOnce.Do(func() { close(c.closed) })
	for i := len(c.via) - 1; i >= 0; i-- {
		c.via[i].Close()
	}
	return err
}

// Done is closed once the connection has ended, whichever side ended it.
func (c *Client) Done() <-chan struct{} {
	c.endedOnce.Do(func() {
		c.ended = make(chan struct{})
		go func() {
			_ = c.conn.Wait()
			close(c.ended)
		}()
	})
	return c.ended
}

// lost is why the connection was given up (no answer to keepalives), or
// nil.
func (c *Client) lost() error {
	c.deadMu.Lock()
	defer c.deadMu.Unlock()
	return c.dead
}

// Alive asks the server for a reply and reports whether one came
// within timeout: whether the connection still works after a failure.
func (c *Client) Alive(timeout time.Duration) bool {
	if c.lost() != nil {
		return false
	}
	done := make(chan error, 1)
	go func() {
		_, _, err := c.conn.SendRequest("keepalive@openssh.com", true, nil)
		done <- err
	}()
	select {
	case err := <-done:
		return err == nil
	case <-time.After(timeout):
		return false
	case <-c.closed:
		return false
	}
}

// keepalive asks the server for a reply every interval, as OpenSSH's
// ServerAliveInterval does, and closes the connection when max requests
// in a row went unanswered, so that a dead network ends a command instead
// of hanging it.
func (c *Client) keepalive(interval time.Duration, max int) {
	var unanswered atomic.Int32
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-c.closed:
			return
		case <-t.C:
		}
		if n := int(unanswered.Load()); max > 0 && n >= max {
			c.deadMu.Lock()
			c.dead = fmt.Errorf("ssh connection to %s lost: no answer to %d keepalives sent every %s (ServerAliveInterval, ServerAliveCountMax)", c.Addr, n, interval)
			c.deadMu.Unlock()
			c.Close()
			return
		}
		unanswered.Add(1)
		go func() {
			// Any reply proves the connection alive, whatever the server
			// thinks of the request itself.
			if _, _, err := c.conn.SendRequest("keepalive@openssh.com", true, nil); err == nil {
				unanswered.Store(0)
			}
		}()
	}
}

// Dial connects and authenticates, through the ProxyJump hops or the
// ProxyCommand that the SSH configuration names for the host.
func Dial(ctx context.Context, t Target, o Options) (*Client, error) {
	if err := checkHost(t.Host); err != nil {
		return nil, err
	}
	logf := func(format string, args ...any) {
		if o.Log != nil {
			fmt.Fprintf(o.Log, "ssh: "+format+"\n", args...)
		}
	}
	r, err := resolve(ctx, t, o, logf)
	if err != nil {
		return nil, err
	}
	return connect(ctx, r, o, logf, 0, nil)
}

// connect reaches r directly, through `through` (the previous ProxyJump
// hop, whose own proxy settings then do not matter, as in OpenSSH), or
// through r's ProxyJump or ProxyCommand, and logs in.
func connect(ctx context.Context, r resolved, o Options, logf func(string, ...any), depth int, through *Client) (*Client, error) {
	if depth > 8 {
		return nil, errProxyLoop
	}
	if r.forwardAgent {
		logf("ForwardAgent is set for %s; git-sidecar never forwards the agent", r.alias)
	}
	addr := joinHostPort(r.hostName, r.port)
	var chain []*Client
	fail := func(err error) (*Client, error) {
		for i := len(chain) - 1; i >= 0; i-- {
			chain[i].Close()
		}
		return nil, err
	}
	var nc net.Conn
	var pc *proxyCommandConn
	var err error
	switch {
	case through != nil:
		logf("connecting to %s through %s", addr, through.Addr)
		if nc, err = through.conn.DialContext(ctx, "tcp", addr); err != nil {
			return nil, fmt.Errorf("connect to %s through the jump host %s: %w", addr, through.Addr, err)
		}
	case r.proxyJump != "":
		hops, err := parseJumps(r.proxyJump)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", r.source, err)
		}
		var prev *Client
		for _, h := range hops {
			hr, err := resolve(ctx, Target{Host: h.host, User: h.user, Port: h.port}, o, logf)
			if err != nil {
				return fail(err)
			}
			c, err := connect(ctx, hr, o, logf, depth+1, prev)
			if err != nil {
				return fail(fmt.Errorf("jump host %s: %w", h.host, err))
			}
			chain = append(chain, c)
			prev = c
		}
		logf("connecting to %s through %s", addr, prev.Addr)
		if nc, err = prev.conn.DialContext(ctx, "tcp", addr); err != nil {
			return fail(fmt.Errorf("connect to %s through the jump host %s: %w", addr, prev.Addr, err))
		}
	case r.proxyCommand != "":
		if pc, err = startProxyCommand(r, logf); err != nil {
			return nil, err
		}
		nc = pc
	default:
		logf("connecting to %s as %s", addr, r.user)
		d := net.Dialer{Timeout: r.timeout}
		if nc, err = d.DialContext(ctx, "tcp", addr); err != nil {
			return nil, fmt.Errorf("connect to %s: %w", addr, err)
		}
	}
	c, err := handshake(ctx, nc, addr, r, o, logf)
	if err != nil {
		var hkErr *HostKeyError
		if pc != nil && !errors.As(err, &hkErr) {
			// What the command said is the reason; the broken pipe it
			// left us with is not.
			if why := pc.failure(); why != "" {
				err = fmt.Errorf("connect to %s with ProxyCommand %q: %s", r.alias, r.proxyCommand, why)
			}
		}
		return fail(err)
	}
	c.via = chain
	if r.aliveInterval > 0 {
		go c.keepalive(r.aliveInterval, r.aliveCountMax)
	}
	return c, nil
}

// handshake checks the host key and logs in over nc, which it closes on
// failure.
func handshake(ctx context.Context, nc net.Conn, addr string, r resolved, o Options, logf func(string, ...any)) (*Client, error) {
	hk, err := newHostKeyChecker(r.knownHostsFiles, r.globalKnownHostsFiles, r.acceptNew, logf)
	if err != nil {
		nc.Close()
		return nil, err
	}
	keys := collectSigners(r, homeDir(o), logf)
	defer keys.close()
	if len(keys.signers) == 0 {
		nc.Close()
		if len(keys.locked) > 0 {
			return nil, fmt.Errorf("log in to %s as %q: %s", addr, r.user, keys.lockedAdvice())
		}
		return nil, fmt.Errorf("no SSH key to log in to %s with: start ssh-agent or create ~/.ssh/id_ed25519 (ssh-keygen -t ed25519)", addr)
	}
	var offered []string
	authStarted := false
	cfg := &ssh.ClientConfig{
		User:              r.user,
		Auth:              []ssh.AuthMethod{ssh.PublicKeys(keys.signers...)},
		HostKeyCallback:   hk.check,
		HostKeyAlgorithms: hk.algorithmsFor(addr),
		Timeout:           r.timeout,
		// Only records what the server accepts, for the message when
		// nothing of ours works; the keys above are still what is tried.
		AuthCallback: func(ac *ssh.ClientAuthContext) (ssh.AuthMethod, error) {
			authStarted = true
			offered = ac.AllowedMethods
			return nil, nil
		},
	}
	// The handshake has no context of its own: a timer bounds it (also on
	// connections without deadlines, such as a jump host's channel) and a
	// cancelled context closes the connection.
	timer := time.AfterFunc(r.timeout, func() { nc.Close() })
	stop := context.AfterFunc(ctx, func() { nc.Close() })
	sc, chans, reqs, err := ssh.NewClientConn(nc, addr, cfg)
	timedOut := !timer.Stop()
	stop()
	if err != nil {
		nc.Close()
		var hkErr *HostKeyError
		switch {
		case errors.As(err, &hkErr):
			return nil, hkErr
		case hk.err != nil:
			return nil, hk.err
		case ctx.Err() != nil:
			return nil, ctx.Err()
		case timedOut:
			return nil, fmt.Errorf("ssh handshake with %s: no answer within %s", addr, r.timeout)
		case authStarted:
			return nil, keys.authError(addr, r.user, offered)
		}
		return nil, fmt.Errorf("ssh handshake with %s: %w", addr, err)
	}
	logf("connected to %s", addr)
	return &Client{conn: ssh.NewClient(sc, chans, reqs), Addr: addr, User: r.user, closed: make(chan struct{})}, nil
}

// hostKeyChecker wraps knownhosts with the fail-closed policy and the
// optional first-contact trust.
type hostKeyChecker struct {
	files     []string
	cb        ssh.HostKeyCallback
	acceptNew bool
	logf      func(string, ...any)
	err       error
}

func newHostKeyChecker(files, global []string, acceptNew bool, logf func(string, ...any)) (*hostKeyChecker, error) {
	var existing []string
	for _, f := range append(append([]string(nil), files...), global...) {
		if _, err := os.Stat(f); err == nil {
			existing = append(existing, f)
		} else if !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("read known hosts %s: %w", f, err)
		}
	}
	cb, err := knownhosts.New(existing...)
	if err != nil {
		return nil, fmt.Errorf("read known hosts: %w", err)
	}
	return &hostKeyChecker{files: files, cb: cb, acceptNew: acceptNew, logf: logf}, nil
}

// algorithmsFor lists the host key algorithms known_hosts has for addr, so
// that the server is asked for a key we can check rather than one of
// another type (which would look like a changed key). It asks the
// knownhosts callback about a throwaway key: the KeyError lists every key
// on file for the host.
func (h *hostKeyChecker) algorithmsFor(addr string) []string {
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil
	}
	probe, err := ssh.NewPublicKey(pub)
	if err != nil {
		return nil
	}
	var keyErr *knownhosts.KeyError
	if err := h.cb(addr, fakeAddr(addr), probe); !errors.As(err, &keyErr) {
		return nil
	}
	var algos []string
	seen := map[string]bool{}
	add := func(a ...string) {
		for _, x := range a {
			if !seen[x] {
				seen[x] = true
				algos = append(algos, x)
			}
		}
	}
	for _, k := range keyErr.Want {
		switch t := k.Key.Type(); t {
		case ssh.KeyAlgoRSA:
			add(ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256, ssh.KeyAlgoRSA)
		default:
			add(t)
		}
	}
	return algos
}

type fakeAddr string

func (fakeAddr) Network() string  { return "tcp" }
func (a fakeAddr) String() string { return string(a) }

func (h *hostKeyChecker) check(hostname string, remote net.Addr, key ssh.PublicKey) error {
	err := h.cb(hostname, remote, key)
	if err == nil {
		return nil
	}
	e := &HostKeyError{
		Host:        knownhosts.Normalize(hostname),
		Fingerprint: ssh.FingerprintSHA256(key),
		KeyType:     key.Type(),
		KnownHosts:  h.files[0],
	}
	var keyErr *knownhosts.KeyError
	var revErr *knownhosts.RevokedError
	switch {
	case errors.As(err, &revErr):
		e.Revoked = true
	case errors.As(err, &keyErr) && len(keyErr.Want) > 0:
		e.Changed = true
		e.Where = fmt.Sprintf("%s:%d", keyErr.Want[0].Filename, keyErr.Want[0].Line)
	case errors.As(err, &keyErr):
		if h.acceptNew {
			if werr := appendKnownHost(h.files[0], hostname, key); werr != nil {
				h.err = werr
				return werr
			}
			h.logf("trusting new host key %s %s for %s (recorded in %s)", key.Type(), e.Fingerprint, e.Host, h.files[0])
			return nil
		}
	default:
		h.err = fmt.Errorf("check host key of %s: %w", e.Host, err)
		return h.err
	}
	h.err = e
	return e
}

func appendKnownHost(file, hostname string, key ssh.PublicKey) error {
	if err := os.MkdirAll(filepath.Dir(file), 0o700); err != nil {
		return fmt.Errorf("record host key: %w", err)
	}
	f, err := os.OpenFile(file, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("record host key: %w", err)
	}
	line := knownhosts.Line([]string{hostname}, key) + "\n"
	// Keep the file line-oriented even if its last line lacks a newline.
	if st, err := f.Stat(); err == nil && st.Size() > 0 {
		if b, err := os.ReadFile(file); err == nil && len(b) > 0 && b[len(b)-1] != '\n' {
			line = "\n" + line
		}
	}
	if _, err := f.WriteString(line); err != nil {
		f.Close()
		return fmt.Errorf("record host key in %s: %w", file, err)
	}
	return f.Close()
}

// Quote returns s as one single-quoted POSIX sh word: no character in it
// is special to the shell.
func Quote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// NewMarker returns a random token that cannot occur by chance in a login
// shell's chatter.
func NewMarker() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err) // crypto/rand does not fail on supported platforms
	}
	return "--git-sidecar-" + hex.EncodeToString(b[:]) + "--"
}

// Framed wraps script so that it first prints marker on stdout and stderr,
// and returns the `sh -c '…'` command line that runs it. Whatever the login
// shell prints before our sh starts comes before the marker and is dropped
// by a MarkerFilter.
func Framed(script, marker string) string {
	pre := "printf '%s\\n' " + Quote(marker) + "; printf '%s\\n' " + Quote(marker) + " >&2\n"
	return "sh -c " + Quote(pre+script)
}

// MarkerFilter passes through what follows the first marker line and holds
// back what comes before it (at most 64 KiB of it, for diagnostics). The
// marker line may carry a word after the marker (Exec's process group),
// and may end in "\r\n" (a terminal's line end).
type MarkerFilter struct {
	W      io.Writer
	Marker string
	// OnMarker, when set, is called once with the rest of the marker line.
	OnMarker func(tag string)

	mu     sync.Mutex
	found  bool
	before bytes.Buffer
	tail   []byte
}

func (f *MarkerFilter) Write(p []byte) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.found {
		return f.W.Write(p)
	}
	n := len(p)
	buf := append(f.tail, p...)
	m := []byte(f.Marker)
	if i := bytes.Index(buf, m); i >= 0 {
		rest := buf[i+len(m):]
		nl := bytes.IndexByte(rest, '\n')
		if nl < 0 && len(rest) < 256 {
			// The rest of the marker line is still to come.
			f.keep(buf[:i])
			f.tail = append([]byte(nil), buf[i:]...)
			return n, nil
		}
		tag := ""
		if nl >= 0 {
			tag = strings.TrimSpace(string(rest[:nl]))
			rest = rest[nl+1:]
		}
		f.found = true
		f.keep(buf[:i])
		f.tail = nil
		if f.OnMarker != nil {
			f.OnMarker(tag)
		}
		if len(rest) > 0 {
			if _, err := f.W.Write(rest); err != nil {
				return n, err
			}
		}
		return n, nil
	}
	// Keep just enough to find a marker split across writes.
	cut := len(buf) - len(m) + 1
	if cut > 0 {
		f.keep(buf[:cut])
		buf = buf[cut:]
	}
	f.tail = append([]byte(nil), buf...)
	return n, nil
}

func (f *MarkerFilter) keep(b []byte) {
	if room := 64<<10 - f.before.Len(); room > 0 {
		if len(b) > room {
			b = b[:room]
		}
		f.before.Write(b)
	}
}

// Found reports whether the marker was seen.
func (f *MarkerFilter) Found() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.found
}

// Before returns what was held back before the marker (or everything, if
// the marker never came).
func (f *MarkerFilter) Before() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.before.String() + string(f.tail)
}

// RunScript runs the POSIX sh script on the remote host through one
// session. stdin, when not nil, is streamed to the script; stdout and stderr
// receive the script's output without the login shell's noise. A non-zero
// exit is an *ExitError.
func (c *Client) RunScript(ctx context.Context, script string, stdin io.Reader, stdout, stderr io.Writer) error {
	sess, err := c.conn.NewSession()
	if err != nil {
		return fmt.Errorf("open ssh session on %s: %w", c.Addr, err)
	}
	defer sess.Close()
	marker := NewMarker()
	if stdout == nil {
		stdout = io.Discard
	}
	if stderr == nil {
		stderr = io.Discard
	}
	outF := &MarkerFilter{W: stdout, Marker: marker}
	errF := &MarkerFilter{W: stderr, Marker: marker}
	sess.Stdout = outF
	sess.Stderr = errF
	// StdinPipe rather than Session.Stdin: Wait would otherwise wait for
	// stdin to reach EOF even after the command has exited.
	var in io.WriteCloser
	if stdin != nil {
		if in, err = sess.StdinPipe(); err != nil {
			return fmt.Errorf("open ssh stdin: %w", err)
		}
	}
	if err := sess.Start(Framed(script, marker)); err != nil {
		return fmt.Errorf("start remote command on %s: %w", c.Addr, err)
	}
	// The copy is not waited for: a script may finish without reading all
	// of its input, and then the rest does not matter.
	if in != nil {
		go func() {
			_, _ = io.Copy(in, stdin)
			in.Close()
		}()
	}
	done := make(chan error, 1)
	go func() { done <- sess.Wait() }()
	select {
	case err = <-done:
	case <-ctx.Done():
		_ = sess.Signal(ssh.SIGTERM)
		sess.Close()
		<-done
		return ctx.Err()
	}
	return c.scriptResult(err, outF, errF)
}

// scriptResult maps how a framed command ended to our errors: an
// *ExitError for a status or signal, a *LoginShellError when the login
// shell never ran our sh, the keepalive's verdict for a lost connection.
func (c *Client) scriptResult(err error, outF, errF *MarkerFilter) error {
	if err == nil {
		if !outF.Found() {
			return fmt.Errorf("remote shell on %s did not run our command (its output: %q)", c.Addr, firstLine(errF.Before()+outF.Before()))
		}
		return nil
	}
	if lost := c.lost(); lost != nil {
		return lost
	}
	var exit *ssh.ExitError
	if errors.As(err, &exit) {
		status := exit.ExitStatus()
		if sig := exit.Signal(); sig != "" && status <= 0 {
			// Like a local shell: 128 plus the signal's number.
			status = 128 + signalNumbers[sig]
		}
		if !outF.Found() && !errF.Found() && exit.Signal() == "" {
			// nologin and its kind explain themselves on stdout, sshd's
			// own complaints (a missing home) come on stderr.
			msg := firstLine(outF.Before())
			if msg == "" {
				msg = firstLine(errF.Before())
			}
			return &LoginShellError{Addr: c.Addr, User: c.User, Status: status, Message: msg}
		}
		return &ExitError{Status: status, Signal: exit.Signal()}
	}
	var missing *ssh.ExitMissingError
	if errors.As(err, &missing) {
		return &ExitError{Status: 255}
	}
	return fmt.Errorf("remote command on %s: %w", c.Addr, err)
}

// signalNumbers are the POSIX numbers of the signals SSH names.
var signalNumbers = map[string]int{
	"HUP": 1, "INT": 2, "QUIT": 3, "ILL": 4, "ABRT": 6, "FPE": 8, "KILL": 9,
	"USR1": 10, "SEGV": 11, "USR2": 12, "PIPE": 13, "ALRM": 14, "TERM": 15,
}

func firstLine(s string) string {
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		if t := strings.TrimSpace(sc.Text()); t != "" {
			return t
		}
	}
	return ""
}
