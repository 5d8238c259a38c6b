package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"time"

	"github.com/git-relay/git-relay/bench/internal/benchenv"
	"github.com/git-relay/git-relay/internal/edgeproxy"
	"github.com/git-relay/git-relay/internal/shape"
)

// relayServer is git-relay-server running as a process on loopback over a
// folder of bare repositories, with the edge proxy in front when asked.
type relayServer struct {
	name    string
	cmd     *exec.Cmd
	url     string // the server's own base address
	listen  string // host:port the server listens on
	base    string // relay.url for clients: through the proxy when there is one
	proxy   *edgeproxy.Proxy
	logPath string
	exited  chan error
}

var listeningRE = regexp.MustCompile(`listening on (http://\S+)`)

// serverConfig says how to run one relay server.
type serverConfig struct {
	name      string // names its data folder and log under the work folder
	keyPath   string
	upstream  string // --upstream template
	tokenFile string // --token-file, for an http upstream
	proxy     bool   // put the edge proxy in front
	shape     shape.Link
	secrets   []string // must never cross the proxy (the upstream token)
}

// newKey writes a fresh relay key to path.
func newKey(ctx context.Context, path string) error {
	key, err := exec.CommandContext(ctx, "git-relay-server", "keygen").Output()
	if err != nil {
		return fmt.Errorf("git-relay-server keygen: %w", err)
	}
	if err := os.WriteFile(path, key, 0o600); err != nil {
		return fmt.Errorf("write the relay key: %w", err)
	}
	return nil
}

// startRelay runs `git-relay-server serve -v` with a data folder of its own
// under work, and the edge proxy in front (shaped, when c.shape says so)
// if c.proxy.
func startRelay(work string, c serverConfig) (*relayServer, error) {
	s := &relayServer{name: c.name, logPath: filepath.Join(work, "server-"+c.name+".log"), exited: make(chan error, 1)}
	logf, err := os.Create(s.logPath)
	if err != nil {
		return nil, fmt.Errorf("create the server log: %w", err)
	}
	args := []string{"serve", "-v",
		"--listen", "127.0.0.1:0",
		"--data-dir", filepath.Join(work, "relay-data-"+c.name),
		"--key-file", c.keyPath,
		"--upstream", c.upstream}
	if c.tokenFile != "" {
		args = append(args, "--token-file", c.tokenFile)
	}
	s.cmd = exec.Command("git-relay-server", args...)
	stderr, err := s.cmd.StderrPipe()
	if err != nil {
		logf.Close()
		return nil, err
	}
	if err := s.cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start git-relay-server: %w", err)
	}
	addr := make(chan string, 1)
	go func() {
		defer logf.Close()
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			fmt.Fprintln(logf, sc.Text())
			if m := listeningRE.FindStringSubmatch(sc.Text()); m != nil {
				select {
				case addr <- m[1]:
				default:
				}
			}
		}
		s.exited <- s.cmd.Wait()
	}()
	select {
	case s.url = <-addr:
	case err := <-s.exited:
		return nil, fmt.Errorf("git-relay-server exited before listening (%v); see %s", err, s.logPath)
	case <-time.After(30 * time.Second):
		s.cmd.Process.Kill()
		return nil, fmt.Errorf("git-relay-server did not say where it listens within 30 s; see %s", s.logPath)
	}
	s.listen = strings.TrimPrefix(strings.TrimRight(s.url, "/"), "http://")
	s.base = strings.TrimRight(s.url, "/") + edgeproxy.ServerPrefix
	if c.proxy {
		// The proxy watches every body for plaintext, between
		// measurements: a real edge keeps no such watch, so it is not
		// timed.
		p, err := edgeproxy.Start(s.url, edgeproxy.Options{DeferScan: true, ShapeUp: c.shape, ShapeDown: c.shape, Secrets: c.secrets})
		if err != nil {
			s.stop()
			return nil, err
		}
		s.proxy = p
		s.base = p.URL + edgeproxy.ClientPrefix
	}
	s.base = strings.TrimRight(s.base, "/")
	return s, nil
}

func (s *relayServer) pid() int { return s.cmd.Process.Pid }

// idle waits (30 s at most) until the server runs no git: after a push it
// indexes the pack into its mirror in the background. Each measurement
// starts on a quiet machine, so that neither side of a comparison pays
// for work the one before left behind.
func (s *relayServer) idle(ctx context.Context) {
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) && ctx.Err() == nil && benchenv.HasChildren(s.pid()) {
		time.Sleep(20 * time.Millisecond)
	}
}

// stop sends SIGTERM, waits for a graceful exit, and returns the peak RSS
// of the server's process tree (the server and every git it ran) in KiB.
func (s *relayServer) stop() (int64, error) {
	if s.proxy != nil {
		s.proxy.Close()
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	var err error
	select {
	case err = <-s.exited:
	case <-time.After(30 * time.Second):
		_ = s.cmd.Process.Kill()
		err = <-s.exited
		err = errors.Join(errors.New("git-relay-server ignored SIGTERM for 30 s"), err)
	}
	var tree int64
	if ru, ok := s.cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		tree = ru.Maxrss
	}
	return tree, err
}
