package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/git-relay/git-relay/internal/gitx"
)

// childEnv marks the bench re-running itself to time one git command. A
// process of its own is what makes the peak RSS per command: the kernel
// keeps, for each process, the largest RSS of any descendant it reaped
// (getrusage RUSAGE_CHILDREN), and this child reaps only the one git
// command and, through it, the command's own children (pack-objects,
// receive-pack and index-pack for a file:// push; the remote helper and
// its git bundle for a relay push).
const childEnv = "GIT_RELAY_BENCH_CHILD"

// measurement is one timed git command.
type measurement struct {
	Seconds   float64 `json:"seconds"`
	MaxRSSKiB int64   `json:"maxrss_kib"`
	Err       string  `json:"err,omitempty"`
}

func (m measurement) duration() time.Duration {
	return time.Duration(m.Seconds * float64(time.Second))
}

// childMain runs `git args...` in dir (os.Args[1:]) and prints its
// measurement as JSON on stdout.
func childMain() int {
	if len(os.Args) < 3 {
		fmt.Fprintln(os.Stderr, "bench child: want DIR GIT-ARGS...")
		return 2
	}
	dir, args := os.Args[1], os.Args[2:]
	start := time.Now()
	err := gitx.Repo{Dir: dir}.Command(context.Background(), args...).Run()
	m := measurement{Seconds: time.Since(start).Seconds()}
	var ru syscall.Rusage
	if rerr := syscall.Getrusage(syscall.RUSAGE_CHILDREN, &ru); rerr == nil {
		m.MaxRSSKiB = ru.Maxrss // kilobytes on Linux
	}
	if err != nil {
		m.Err = err.Error()
	}
	if err := json.NewEncoder(os.Stdout).Encode(m); err != nil {
		return 1
	}
	return 0
}

// measure runs `git args...` in dir in a child of its own and returns how
// long it took and the peak RSS of its process tree.
func measure(ctx context.Context, dir string, args ...string) (measurement, error) {
	self, err := os.Executable()
	if err != nil {
		return measurement{}, fmt.Errorf("find the bench executable: %w", err)
	}
	cmd := exec.CommandContext(ctx, self, append([]string{dir}, args...)...)
	cmd.Env = append(os.Environ(), childEnv+"=1")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return measurement{}, fmt.Errorf("git %s: %w: %s", strings.Join(args, " "), err, gitx.Sanitize(stderr.String()))
	}
	var m measurement
	if err := json.Unmarshal(out, &m); err != nil {
		return measurement{}, fmt.Errorf("git %s: read the measurement: %w", strings.Join(args, " "), err)
	}
	if m.Err != "" {
		return m, fmt.Errorf("%s", m.Err)
	}
	return m, nil
}

// vmHWM returns a process's peak resident set size in KiB, from
// /proc/<pid>/status.
func vmHWM(pid int) (int64, error) {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			return strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
		}
	}
	return 0, errors.New("no VmHWM line")
}

// resetHWM resets a process's peak RSS to its current RSS (Linux 4.0+),
// so that each phase's peak can be read on its own.
func resetHWM(pid int) error {
	return os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("5"), 0)
}
