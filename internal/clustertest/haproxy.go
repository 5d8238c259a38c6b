package clustertest

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// InstallHAProxy is the command that installs the balancer on Debian.
const InstallHAProxy = "apt-get install haproxy"

// HAProxy finds haproxy on PATH or in /usr/sbin, where Debian puts it.
func HAProxy() (string, error) {
	if p, err := exec.LookPath("haproxy"); err == nil {
		return p, nil
	}
	if fi, err := os.Stat("/usr/sbin/haproxy"); err == nil && fi.Mode().IsRegular() {
		return "/usr/sbin/haproxy", nil
	}
	return "", fmt.Errorf("haproxy is not installed: run `%s`", InstallHAProxy)
}

// NeedHAProxy returns haproxy's path; without it the test is skipped, or
// fails under CI=true (.ci/run installs it).
func NeedHAProxy(t testing.TB) string {
	t.Helper()
	p, err := HAProxy()
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("clustertest: %v (CI installs it in .ci/run)", err)
		}
		t.Skipf("clustertest: %v", err)
	}
	return p
}

// Backend is one server behind the balancer.
type Backend struct {
	Name string // as the balancer's log names it
	Addr string // host:port
}

// Balancer is a running haproxy.
type Balancer struct {
	// URL is its front end, http://127.0.0.1:PORT.
	URL string
	// LogPath holds one line per request (see Requests).
	LogPath string
	// ConfigPath is the configuration it runs.
	ConfigPath string

	cmd     *exec.Cmd
	done    chan struct{}
	waitErr error
}

// Config is the balancer's configuration: what the README recommends
// operators run in front of several instances, on loopback ports.
//
//   - balance roundrobin, with no stickiness of any kind, and
//     http-server-close with http-reuse never: every request is balanced
//     on its own and opens its own connection to its server, so that the
//     requests of one exchange really alternate between instances, even
//     on one keep-alive client connection.
//   - Health checks on /healthz take an instance out within a second of
//     its death; until then, retries with redispatch send a request that
//     could not connect to another instance, so that a dead instance
//     costs its clients nothing but the requests it had in hand.
//   - Timeouts above the relay's 20 s long-polls and the time a large
//     chunk takes on a slow link.
func Config(listen string, backends []Backend) string {
	var b strings.Builder
	b.WriteString(`global
    log stdout format raw local0
    maxconn 2048

defaults
    mode http
    log global
    option http-server-close
    http-reuse never
    retries 3
    option redispatch 1
    timeout connect 2s
    timeout client 5m
    timeout server 5m
    timeout http-request 5m
    timeout http-keep-alive 30s

frontend relay
`)
	fmt.Fprintf(&b, "    bind %s\n", listen)
	b.WriteString(`    log-format "relay-lb %s %ST %Ta %HM %HU"
    default_backend relay

backend relay
    balance roundrobin
    option httpchk GET /healthz
    default-server check inter 500ms fall 2 rise 2
`)
	for _, be := range backends {
		fmt.Fprintf(&b, "    server %s %s\n", be.Name, be.Addr)
	}
	return b.String()
}

// StartHAProxy runs haproxy in front of backends, in the foreground (so
// that it logs to its stdout), with its configuration and log in dir.
func StartHAProxy(dir string, backends []Backend) (*Balancer, error) {
	bin, err := HAProxy()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	// haproxy gets the socket already bound (bind fd@3), not a port
	// number to bind: a port found free and then handed over may be taken
	// by another test's server in between, whose /healthz would then pass
	// for haproxy's.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	defer l.Close()
	sock, err := l.(*net.TCPListener).File()
	if err != nil {
		return nil, err
	}
	defer sock.Close()
	addr := l.Addr().String()
	b := &Balancer{
		URL:        "http://" + addr,
		LogPath:    filepath.Join(dir, "haproxy.log"),
		ConfigPath: filepath.Join(dir, "haproxy.cfg"),
		done:       make(chan struct{}),
	}
	if err := os.WriteFile(b.ConfigPath, []byte(Config("fd@3", backends)), 0o644); err != nil {
		return nil, err
	}
	logf, err := os.Create(b.LogPath)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	// -db: foreground, no daemon; -W would add a master process.
	b.cmd = exec.Command(bin, "-db", "-f", b.ConfigPath)
	b.cmd.Stdout = logf
	b.cmd.Stderr = logf
	b.cmd.ExtraFiles = []*os.File{sock} // fd 3
	b.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := b.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	go func() {
		b.waitErr = b.cmd.Wait()
		close(b.done)
	}()
	// Ready when a request through it reaches an instance.
	client := &http.Client{Timeout: 2 * time.Second}
	deadline := time.Now().Add(startTimeout)
	for {
		resp, err := client.Get(b.URL + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return b, nil
			}
		}
		select {
		case <-b.done:
			out, _ := os.ReadFile(b.LogPath)
			return nil, fmt.Errorf("haproxy on %s exited (%v):\n%s", addr, b.waitErr, out)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			b.Stop()
			return nil, fmt.Errorf("haproxy on %s did not reach an instance within %s (%v)", addr, startTimeout, err)
		}
	}
}

// Stop ends haproxy.
func (b *Balancer) Stop() {
	select {
	case <-b.done:
		return
	default:
	}
	_ = b.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-b.done:
	case <-time.After(10 * time.Second):
		_ = b.cmd.Process.Kill()
		<-b.done
	}
}

// Request is one request the balancer logged.
type Request struct {
	// Server is the instance that answered, or "<NOSRV>".
	Server string
	Status int
	// Took is the time from the request's first byte to the answer's
	// last (haproxy's %Ta).
	Took   time.Duration
	Method string
	// Path is the request's path; Query its parsed query.
	Path  string
	Query url.Values
}

// Requests reads the balancer's log: every request it has finished with
// so far (haproxy logs a request once its answer has gone).
func (b *Balancer) Requests() ([]Request, error) {
	f, err := os.Open(b.LogPath)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []Request
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), "relay-lb ")
		if !ok {
			continue
		}
		fields := strings.Fields(rest)
		if len(fields) != 5 {
			continue
		}
		status, _ := strconv.Atoi(fields[1])
		ms, _ := strconv.Atoi(fields[2])
		u, err := url.ParseRequestURI(fields[4])
		if err != nil {
			continue
		}
		out = append(out, Request{Server: fields[0], Status: status, Took: time.Duration(ms) * time.Millisecond, Method: fields[3], Path: u.Path, Query: u.Query()})
	}
	return out, sc.Err()
}
