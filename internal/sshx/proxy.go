package sshx

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// jump is one hop of a ProxyJump list.
type jump struct {
	user string
	host string
	port int
}

// parseJumps reads a ProxyJump value: comma-separated [user@]host[:port]
// or ssh://[user@]host[:port], the first hop first.
func parseJumps(v string) ([]jump, error) {
	var out []jump
	for _, spec := range strings.Split(v, ",") {
		spec = strings.TrimSpace(spec)
		if spec == "" {
			return nil, fmt.Errorf("ProxyJump %q has an empty hop", v)
		}
		var j jump
		if strings.HasPrefix(spec, "ssh://") {
			u, err := url.Parse(spec)
			if err != nil || u.Host == "" || (u.Path != "" && u.Path != "/") {
				return nil, fmt.Errorf("ProxyJump hop %q is not ssh://[user@]host[:port]", spec)
			}
			if u.User != nil {
				j.user = u.User.Username()
			}
			j.host = u.Hostname()
			if p := u.Port(); p != "" {
				n, err := strconv.Atoi(p)
				if err != nil || n <= 0 || n > 65535 {
					return nil, fmt.Errorf("ProxyJump hop %q has a bad port", spec)
				}
				j.port = n
			}
		} else {
			rest := spec
			if i := strings.LastIndex(rest, "@"); i >= 0 {
				j.user, rest = rest[:i], rest[i+1:]
			}
			host, port := rest, ""
			switch {
			case strings.HasPrefix(rest, "["):
				h, p, err := net.SplitHostPort(rest)
				if err != nil {
					if !strings.HasSuffix(rest, "]") {
						return nil, fmt.Errorf("ProxyJump hop %q is not [user@]host[:port]", spec)
					}
					h = strings.Trim(rest, "[]")
				}
				host, port = h, p
			case strings.Count(rest, ":") == 1:
				host, port, _ = strings.Cut(rest, ":")
			}
			if port != "" {
				n, err := strconv.Atoi(port)
				if err != nil || n <= 0 || n > 65535 {
					return nil, fmt.Errorf("ProxyJump hop %q has a bad port", spec)
				}
				j.port = n
			}
			j.host = host
		}
		if err := checkHost(j.host); err != nil {
			return nil, fmt.Errorf("ProxyJump hop %q: %w", spec, err)
		}
		out = append(out, j)
	}
	return out, nil
}

// proxyCommandConn is a ProxyCommand's standard input and output used as
// the connection to the server.
type proxyCommandConn struct {
	cmd    *exec.Cmd
	in     io.WriteCloser
	out    io.ReadCloser
	addr   fakeAddr
	stderr *tailBuffer
	waited chan struct{}
	once   sync.Once
}

// startProxyCommand runs command with sh -c, as ssh does, after expanding
// its %-tokens (%h host name, %p port, %r remote user, %n the name as
// given, %% a percent sign).
func startProxyCommand(r resolved, logf func(string, ...any)) (*proxyCommandConn, error) {
	line := expandTokens(r.proxyCommand, map[byte]string{
		'%': "%", 'h': r.hostName, 'p': strconv.Itoa(r.port), 'r': r.user, 'n': r.alias,
	})
	logf("running ProxyCommand %s", line)
	cmd := exec.Command("/bin/sh", "-c", line)
	// Its own process group, so that closing the connection ends whatever
	// the command started as well.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	c := &proxyCommandConn{cmd: cmd, addr: fakeAddr(joinHostPort(r.hostName, r.port)), stderr: &tailBuffer{max: 4 << 10}, waited: make(chan struct{})}
	cmd.Stderr = c.stderr
	var err error
	if c.in, err = cmd.StdinPipe(); err != nil {
		return nil, fmt.Errorf("ProxyCommand: %w", err)
	}
	if c.out, err = cmd.StdoutPipe(); err != nil {
		return nil, fmt.Errorf("ProxyCommand: %w", err)
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start ProxyCommand %q: %w", line, err)
	}
	go func() { _ = cmd.Wait(); close(c.waited) }()
	return c, nil
}

func (c *proxyCommandConn) Read(p []byte) (int, error)  { return c.out.Read(p) }
func (c *proxyCommandConn) Write(p []byte) (int, error) { return c.in.Write(p) }

// Close ends the command: its input closes, and what is still running a
// moment later is killed with its process group.
func (c *proxyCommandConn) Close() error {
	c.once.Do(func() {
		c.in.Close()
		select {
		case <-c.waited:
		case <-time.After(500 * time.Millisecond):
			_ = syscall.Kill(-c.cmd.Process.Pid, syscall.SIGKILL)
			<-c.waited
		}
	})
	return nil
}

// failure describes why the command did not carry the connection, from
// what it printed on stderr.
func (c *proxyCommandConn) failure() string {
	return lastLine(c.stderr.String())
}

func (c *proxyCommandConn) LocalAddr() net.Addr                { return fakeAddr("proxycommand:0") }
func (c *proxyCommandConn) RemoteAddr() net.Addr               { return c.addr }
func (c *proxyCommandConn) SetDeadline(t time.Time) error      { return nil }
func (c *proxyCommandConn) SetReadDeadline(t time.Time) error  { return nil }
func (c *proxyCommandConn) SetWriteDeadline(t time.Time) error { return nil }

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	b   []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = append(t.b, p...)
	if len(t.b) > t.max {
		t.b = t.b[len(t.b)-t.max:]
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(bytes.TrimSpace(t.b))
}

func joinHostPort(host string, port int) string {
	return net.JoinHostPort(host, strconv.Itoa(port))
}

// checkHost refuses names that ssh would take for options or that no
// host can have.
func checkHost(h string) error {
	if h == "" || strings.HasPrefix(h, "-") || strings.ContainsAny(h, " \t\r\n\x00/'\"\\;&|`$") {
		return fmt.Errorf("ssh host %q is not a valid host name", h)
	}
	return nil
}

var errProxyLoop = errors.New("ProxyJump hops nest more than 8 deep; is there a loop in ~/.ssh/config?")
