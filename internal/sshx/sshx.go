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
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/kevinburke/ssh_config"
	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
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
	// Timeout bounds the TCP connect and the handshake (default 20s).
	Timeout time.Duration
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

// Client is one SSH connection.
type Client struct {
	conn *ssh.Client
	// Addr is the host:port that was dialled.
	Addr string
	// User is the remote user name.
	User string
}

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }

// resolved is a Target after ~/.ssh/config.
type resolved struct {
	alias, hostName, user string
	port                  int
	identityFiles         []string
	identitiesOnly        bool
	knownHostsFiles       []string
	acceptNew             bool
	timeout               time.Duration
}

func homeDir(o Options) string {
	if o.Home != "" {
		return o.Home
	}
	if h, err := os.UserHomeDir(); err == nil {
		return h
	}
	return "/"
}

func localUser() string {
	if u := os.Getenv("USER"); u != "" {
		return u
	}
	if u, err := user.Current(); err == nil {
		return u.Username
	}
	return "root"
}

// resolve applies ~/.ssh/config to t. Only the user's file is read: the
// system one rarely matters for the hosts people point a sidecar at, and
// keeping to one file keeps the behaviour easy to explain.
func resolve(t Target, o Options) (resolved, error) {
	home := homeDir(o)
	r := resolved{alias: t.Host, hostName: t.Host, user: t.User, port: t.Port, timeout: o.Timeout, acceptNew: o.AcceptNew}
	var cfg *ssh_config.Config
	cfgPath := filepath.Join(home, ".ssh", "config")
	if f, err := os.Open(cfgPath); err == nil {
		cfg, err = ssh_config.Decode(f)
		f.Close()
		if err != nil {
			return r, fmt.Errorf("read %s: %w", cfgPath, err)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return r, fmt.Errorf("read %s: %w", cfgPath, err)
	}
	get := func(key string) string {
		if cfg == nil {
			return ""
		}
		v, _ := cfg.Get(t.Host, key)
		return strings.TrimSpace(v)
	}
	getAll := func(key string) []string {
		if cfg == nil {
			return nil
		}
		v, _ := cfg.GetAll(t.Host, key)
		return v
	}
	if v := get("HostName"); v != "" {
		r.hostName = strings.ReplaceAll(v, "%h", t.Host)
	}
	if r.user == "" {
		r.user = get("User")
	}
	if r.user == "" {
		r.user = localUser()
	}
	if r.port == 0 {
		if v := get("Port"); v != "" {
			p, err := strconv.Atoi(v)
			if err != nil || p <= 0 || p > 65535 {
				return r, fmt.Errorf("%s: Port %q for host %q is not a port number", cfgPath, v, t.Host)
			}
			r.port = p
		}
	}
	if r.port == 0 {
		r.port = 22
	}
	if v := get("ProxyJump"); v != "" && !strings.EqualFold(v, "none") {
		return r, fmt.Errorf("%s: ProxyJump for host %q is not supported by git-sidecar; point the sidecar at a directly reachable host", cfgPath, t.Host)
	}
	if v := get("ProxyCommand"); v != "" && !strings.EqualFold(v, "none") {
		return r, fmt.Errorf("%s: ProxyCommand for host %q is not supported by git-sidecar; point the sidecar at a directly reachable host", cfgPath, t.Host)
	}
	expand := func(p string) string {
		p = strings.NewReplacer("%d", home, "%u", localUser(), "%r", r.user, "%h", r.hostName, "%%", "%").Replace(p)
		if p == "~" {
			return home
		}
		if strings.HasPrefix(p, "~/") {
			return filepath.Join(home, p[2:])
		}
		return p
	}
	for _, f := range getAll("IdentityFile") {
		r.identityFiles = append(r.identityFiles, expand(f))
	}
	r.identitiesOnly = strings.EqualFold(get("IdentitiesOnly"), "yes")
	for _, f := range getAll("UserKnownHostsFile") {
		for _, w := range strings.Fields(f) {
			r.knownHostsFiles = append(r.knownHostsFiles, expand(w))
		}
	}
	if len(r.knownHostsFiles) == 0 {
		r.knownHostsFiles = []string{filepath.Join(home, ".ssh", "known_hosts")}
	}
	if strings.EqualFold(get("StrictHostKeyChecking"), "accept-new") {
		r.acceptNew = true
	}
	if r.timeout == 0 {
		if v := get("ConnectTimeout"); v != "" {
			if s, err := strconv.Atoi(v); err == nil && s > 0 {
				r.timeout = time.Duration(s) * time.Second
			}
		}
	}
	if r.timeout == 0 {
		r.timeout = 20 * time.Second
	}
	return r, nil
}

// Dial connects and authenticates.
func Dial(ctx context.Context, t Target, o Options) (*Client, error) {
	if t.Host == "" || strings.HasPrefix(t.Host, "-") || strings.ContainsAny(t.Host, " \t\r\n\x00/") {
		return nil, fmt.Errorf("ssh host %q is not a valid host name", t.Host)
	}
	r, err := resolve(t, o)
	if err != nil {
		return nil, err
	}
	logf := func(format string, args ...any) {
		if o.Log != nil {
			fmt.Fprintf(o.Log, "ssh: "+format+"\n", args...)
		}
	}
	addr := net.JoinHostPort(r.hostName, strconv.Itoa(r.port))
	hk, err := newHostKeyChecker(r.knownHostsFiles, r.acceptNew, logf)
	if err != nil {
		return nil, err
	}
	signers, closeAgent := collectSigners(r, homeDir(o), logf)
	defer closeAgent()
	if len(signers) == 0 {
		return nil, fmt.Errorf("no SSH key to log in to %s with: start ssh-agent or create ~/.ssh/id_ed25519 (ssh-keygen -t ed25519)", addr)
	}
	cfg := &ssh.ClientConfig{
		User:              r.user,
		Auth:              []ssh.AuthMethod{ssh.PublicKeys(signers...)},
		HostKeyCallback:   hk.check,
		HostKeyAlgorithms: hk.algorithmsFor(addr),
		Timeout:           r.timeout,
	}
	logf("connecting to %s as %s", addr, r.user)
	d := net.Dialer{Timeout: r.timeout}
	nc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", addr, err)
	}
	// The handshake has no context of its own; a deadline bounds it and a
	// cancelled context closes the socket.
	_ = nc.SetDeadline(time.Now().Add(r.timeout))
	stop := context.AfterFunc(ctx, func() { nc.Close() })
	c, chans, reqs, err := ssh.NewClientConn(nc, addr, cfg)
	stop()
	if err != nil {
		nc.Close()
		var hkErr *HostKeyError
		if errors.As(err, &hkErr) {
			return nil, hkErr
		}
		if hk.err != nil {
			return nil, hk.err
		}
		if strings.Contains(err.Error(), "unable to authenticate") {
			return nil, fmt.Errorf("log in to %s as %q: the server accepted none of our keys (%d tried); add one to its authorized_keys", addr, r.user, len(signers))
		}
		return nil, fmt.Errorf("ssh handshake with %s: %w", addr, err)
	}
	_ = nc.SetDeadline(time.Time{})
	logf("connected to %s", addr)
	return &Client{conn: ssh.NewClient(c, chans, reqs), Addr: addr, User: r.user}, nil
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

func newHostKeyChecker(files []string, acceptNew bool, logf func(string, ...any)) (*hostKeyChecker, error) {
	var existing []string
	for _, f := range files {
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

// collectSigners gathers keys in the order OpenSSH tries them: the
// IdentityFile entries, the agent's keys, then the default files.
func collectSigners(r resolved, home string, logf func(string, ...any)) ([]ssh.Signer, func()) {
	var signers []ssh.Signer
	seen := map[string]bool{}
	add := func(s ssh.Signer) {
		k := string(s.PublicKey().Marshal())
		if !seen[k] {
			seen[k] = true
			signers = append(signers, s)
		}
	}
	loadFile := func(path string, explicit bool) {
		b, err := os.ReadFile(path)
		if err != nil {
			if explicit || !errors.Is(err, os.ErrNotExist) {
				logf("skipping key %s: %v", path, err)
			}
			return
		}
		s, err := ssh.ParsePrivateKey(b)
		if err != nil {
			var pp *ssh.PassphraseMissingError
			if errors.As(err, &pp) {
				logf("skipping key %s: it has a passphrase; add it to ssh-agent to use it", path)
			} else {
				logf("skipping key %s: %v", path, err)
			}
			return
		}
		logf("using key %s (%s)", path, ssh.FingerprintSHA256(s.PublicKey()))
		add(s)
	}
	for _, f := range r.identityFiles {
		loadFile(f, true)
	}
	closer := func() {}
	if !r.identitiesOnly {
		if sock := os.Getenv("SSH_AUTH_SOCK"); sock != "" {
			if c, err := net.Dial("unix", sock); err == nil {
				ag := agent.NewClient(c)
				if ss, err := ag.Signers(); err == nil {
					logf("ssh-agent offers %d key(s)", len(ss))
					for _, s := range ss {
						add(s)
					}
				}
				// The agent connection must outlive the handshake: its
				// signers call back into it.
				closer = func() { c.Close() }
			} else {
				logf("ssh-agent at SSH_AUTH_SOCK is not reachable: %v", err)
			}
		}
		if len(r.identityFiles) == 0 {
			for _, n := range []string{"id_ed25519", "id_ecdsa", "id_rsa"} {
				loadFile(filepath.Join(home, ".ssh", n), false)
			}
		}
	}
	return signers, closer
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
// back what comes before it (at most 64 KiB of it, for diagnostics).
type MarkerFilter struct {
	W      io.Writer
	Marker string

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
	want := []byte(f.Marker + "\n")
	if i := bytes.Index(buf, want); i >= 0 {
		f.found = true
		f.keep(buf[:i])
		f.tail = nil
		rest := buf[i+len(want):]
		if len(rest) > 0 {
			if _, err := f.W.Write(rest); err != nil {
				return n, err
			}
		}
		return n, nil
	}
	// Keep just enough to find a marker split across writes.
	cut := len(buf) - len(want) + 1
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
	if err != nil {
		var exit *ssh.ExitError
		if errors.As(err, &exit) {
			status := exit.ExitStatus()
			if sig := exit.Signal(); sig != "" && status <= 0 {
				// Like a local shell: 128 plus the signal's number.
				status = 128 + signalNumbers[sig]
			}
			return &ExitError{Status: status, Signal: exit.Signal()}
		}
		var missing *ssh.ExitMissingError
		if errors.As(err, &missing) {
			return &ExitError{Status: 255}
		}
		return fmt.Errorf("remote command on %s: %w", c.Addr, err)
	}
	if !outF.Found() {
		return fmt.Errorf("remote shell on %s did not run our command (its output: %q)", c.Addr, firstLine(errF.Before()+outF.Before()))
	}
	return nil
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
