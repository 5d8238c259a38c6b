// Package clustertest runs a relay cluster on loopback for the cluster
// end-to-end tests (e2e/cluster) and benchmark (bench/cluster): several
// `git-relay-server serve` processes, each with its own data folder,
// metrics address and instance name, and a real load balancer in front of
// them (haproxy, from Debian's packages) that round-robins every request.
// The session store they share (versitygw, see internal/s3test) and the
// upstream are the caller's.
//
// Nothing here is a fake: the instances are the real server binary (or a
// test binary acting as it), the balancer is the haproxy operators run,
// and the metrics are read from each instance's /metrics as Prometheus
// would scrape them.
package clustertest

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

// Instance is one `git-relay-server serve` process.
type Instance struct {
	// Name is its --instance name.
	Name string
	// URL is where it serves /api/gr/ and /healthz: http://127.0.0.1:PORT.
	URL string
	// Addr is URL's host:port, for a balancer's server line.
	Addr string
	// MetricsURL is its Prometheus endpoint, http://127.0.0.1:PORT/metrics.
	MetricsURL string
	// LogPath holds its stdout and stderr.
	LogPath string

	cmd     *exec.Cmd
	done    chan struct{}
	waitErr error
	killed  atomic.Bool
}

// Spec says how to start an instance.
type Spec struct {
	// Bin is the git-relay-server binary.
	Bin  string
	Name string
	// Args are serve's flags besides --instance, --listen and
	// --metrics-listen, which Start adds (loopback, free ports).
	Args []string
	// Env is the whole environment of the process.
	Env     []string
	LogPath string
}

var (
	listeningRE = regexp.MustCompile(`listening on (http://(127\.0\.0\.1:[0-9]+))`)
	metricsRE   = regexp.MustCompile(`metrics on (http://127\.0\.0\.1:[0-9]+/metrics)`)
)

// startTimeout bounds an instance's start: generous, as the machine may
// be shared with other test runs and a race-built binary starts slowly.
const startTimeout = 60 * time.Second

// Start starts an instance and waits until it answers /healthz.
func Start(s Spec) (*Instance, error) {
	logf, err := os.OpenFile(s.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	fi, err := logf.Stat()
	if err != nil {
		return nil, err
	}
	offset := fi.Size()
	args := append([]string{"serve", "--instance", s.Name, "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"}, s.Args...)
	cmd := exec.Command(s.Bin, args...)
	cmd.Env = s.Env
	cmd.Stdout = logf
	cmd.Stderr = logf
	// Its own process group, so that Kill takes every git it started
	// with it, as a machine that dies would; Pdeathsig, so that it dies
	// with the test or benchmark that started it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", s.Bin, err)
	}
	in := &Instance{Name: s.Name, LogPath: s.LogPath, cmd: cmd, done: make(chan struct{})}
	go func() {
		in.waitErr = cmd.Wait()
		close(in.done)
	}()
	deadline := time.Now().Add(startTimeout)
	for in.URL == "" || in.MetricsURL == "" {
		if b, err := os.ReadFile(s.LogPath); err == nil && int64(len(b)) >= offset {
			if m := listeningRE.FindSubmatch(b[offset:]); m != nil {
				in.URL, in.Addr = string(m[1]), string(m[2])
			}
			if m := metricsRE.FindSubmatch(b[offset:]); m != nil {
				in.MetricsURL = string(m[1])
			}
		}
		if in.URL != "" && in.MetricsURL != "" {
			break
		}
		select {
		case <-in.done:
			return nil, fmt.Errorf("instance %s exited before listening (%v):\n%s", s.Name, in.waitErr, Tail(s.LogPath, 30))
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			in.Kill()
			return nil, fmt.Errorf("instance %s printed no \"listening on\" and \"metrics on\" lines within %s:\n%s", s.Name, startTimeout, Tail(s.LogPath, 30))
		}
	}
	client := &http.Client{Timeout: 5 * time.Second}
	for {
		resp, err := client.Get(in.URL + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return in, nil
			}
		}
		if time.Now().After(deadline) {
			in.Kill()
			return nil, fmt.Errorf("GET %s/healthz did not answer 200 within %s (%v)", in.URL, startTimeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// PID is the server process's id.
func (in *Instance) PID() int { return in.cmd.Process.Pid }

// Exited says whether the process has ended.
func (in *Instance) Exited() bool {
	select {
	case <-in.done:
		return true
	default:
		return false
	}
}

// Killed says whether Kill ended it.
func (in *Instance) Killed() bool { return in.killed.Load() }

// Kill sends SIGKILL to the instance and every process it started (the
// gits of a push in flight), as a machine that dies, and waits for it.
func (in *Instance) Kill() {
	in.killed.Store(true)
	_ = syscall.Kill(-in.cmd.Process.Pid, syscall.SIGKILL)
	<-in.done
}

// Stop sends SIGTERM and waits for the graceful exit; it reports an
// instance that takes longer than 30 s or exits with anything but 0. A
// killed instance stops without complaint.
func (in *Instance) Stop() error {
	if in.Exited() {
		if in.Killed() {
			return nil
		}
		return fmt.Errorf("instance %s had already exited (%v)", in.Name, in.waitErr)
	}
	_ = in.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-in.done:
	case <-time.After(30 * time.Second):
		in.Kill()
		return fmt.Errorf("instance %s did not exit within 30s of SIGTERM", in.Name)
	}
	// Whatever git it left behind goes too.
	_ = syscall.Kill(-in.cmd.Process.Pid, syscall.SIGKILL)
	if in.waitErr != nil {
		return fmt.Errorf("instance %s exited with %v after SIGTERM, want status 0", in.Name, in.waitErr)
	}
	return nil
}

// PeakKiB returns the process's peak resident set size (VmHWM) in KiB:
// the server's own, not its gits'.
func (in *Instance) PeakKiB() (int64, error) {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", in.PID()))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			return strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
		}
	}
	return 0, errors.New("no VmHWM line in /proc/PID/status")
}

// ResetPeak sets the peak resident set size back to the current one
// (Linux 4.0+), so that each phase's peak can be read on its own.
func (in *Instance) ResetPeak() error {
	return os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", in.PID()), []byte("5"), 0)
}

// Metrics scrapes the instance's /metrics.
func (in *Instance) Metrics(ctx context.Context) (Metrics, error) {
	return Scrape(ctx, in.MetricsURL)
}

// Tail returns the last n lines of a file, for a failure's message.
func Tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(%v)", err)
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
