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
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/git-relay/git-relay/internal/edgeproxy"
)

// relayServer is git-relay-server running as a process on loopback over a
// folder of bare repositories, with the edge proxy in front when asked.
type relayServer struct {
	cmd     *exec.Cmd
	url     string // the server's own base address
	base    string // relay.url for clients: through the proxy when there is one
	proxy   *edgeproxy.Proxy
	logPath string
	exited  chan error
}

var listeningRE = regexp.MustCompile(`listening on (http://\S+)`)

// startRelay runs `git-relay-server serve` with a fresh key and data folder
// under work, serving file://<upstreams>/{repo}.git.
func startRelay(ctx context.Context, work, upstreams string, withProxy bool) (*relayServer, error) {
	keyPath := filepath.Join(work, "relay.key")
	key, err := exec.CommandContext(ctx, "git-relay-server", "keygen").Output()
	if err != nil {
		return nil, fmt.Errorf("git-relay-server keygen: %w", err)
	}
	if err := os.WriteFile(keyPath, key, 0o600); err != nil {
		return nil, fmt.Errorf("write the relay key: %w", err)
	}
	s := &relayServer{logPath: filepath.Join(work, "server.log"), exited: make(chan error, 1)}
	logf, err := os.Create(s.logPath)
	if err != nil {
		return nil, fmt.Errorf("create the server log: %w", err)
	}
	s.cmd = exec.Command("git-relay-server", "serve", "-v",
		"--listen", "127.0.0.1:0",
		"--data-dir", filepath.Join(work, "relay-data"),
		"--key-file", keyPath,
		"--upstream", "file://"+upstreams+"/{repo}.git")
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
	s.base = strings.TrimRight(s.url, "/") + edgeproxy.ServerPrefix
	if withProxy {
		// The proxy watches every body for plaintext, between
		// measurements: a real edge keeps no such watch, so it is not
		// timed.
		p, err := edgeproxy.Start(s.url, edgeproxy.Options{DeferScan: true})
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
	for time.Now().Before(deadline) && ctx.Err() == nil && hasChildren(s.pid()) {
		time.Sleep(20 * time.Millisecond)
	}
}

// hasChildren says whether any process has pid as its parent.
func hasChildren(pid int) bool {
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, st := range stats {
		b, err := os.ReadFile(st)
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...: comm may hold spaces and parentheses.
		i := strings.LastIndexByte(string(b), ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(b[i+1:]))
		if len(f) > 1 && f[1] == strconv.Itoa(pid) {
			return true
		}
	}
	return false
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
