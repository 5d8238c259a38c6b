package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
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

// childGitEnv carries, one a line, variables for the timed git: gitx
// drops GIT_CONFIG_COUNT and its pairs from the environment it inherits,
// and a token must not go on a command line, where every local user can
// read it.
const childGitEnv = "GIT_RELAY_BENCH_GITENV"

// measurement is one timed git command.
type measurement struct {
	Seconds   float64 `json:"seconds"`
	MaxRSSKiB int64   `json:"maxrss_kib"`
	// CPU is the user and system time of the command's whole process
	// tree, in seconds.
	CPU float64 `json:"cpu"`
	Err string  `json:"err,omitempty"`
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
	var env []string
	if v := os.Getenv(childGitEnv); v != "" {
		env = strings.Split(v, "\n")
	}
	err := gitx.Repo{Dir: dir, Env: env}.Command(context.Background(), args...).Run()
	m := measurement{Seconds: time.Since(start).Seconds()}
	var ru syscall.Rusage
	if rerr := syscall.Getrusage(syscall.RUSAGE_CHILDREN, &ru); rerr == nil {
		m.MaxRSSKiB = ru.Maxrss // kilobytes on Linux
		m.CPU = tvSeconds(ru.Utime) + tvSeconds(ru.Stime)
	}
	if err != nil {
		m.Err = err.Error()
	}
	if err := json.NewEncoder(os.Stdout).Encode(m); err != nil {
		return 1
	}
	return 0
}

// measureEnv runs `git args...` in dir, with env added to git's
// environment, in a child of its own and returns how long it took and the
// peak RSS of its process tree.
func measureEnv(ctx context.Context, env []string, dir string, args ...string) (measurement, error) {
	self, err := os.Executable()
	if err != nil {
		return measurement{}, fmt.Errorf("find the bench executable: %w", err)
	}
	cmd := exec.CommandContext(ctx, self, append([]string{dir}, args...)...)
	cmd.Env = append(os.Environ(), childEnv+"=1")
	if len(env) > 0 {
		cmd.Env = append(cmd.Env, childGitEnv+"="+strings.Join(env, "\n"))
	}
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
func vmHWM(pid int) (int64, error) { return procStatus(pid, "VmHWM") }

// resetHWM resets a process's peak RSS to its current RSS (Linux 4.0+),
// so that each phase's peak can be read on its own.
func resetHWM(pid int) error {
	return os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("5"), 0)
}

func tvSeconds(tv syscall.Timeval) float64 { return float64(tv.Sec) + float64(tv.Usec)/1e6 }

// selfCPU returns the user and system time this process has used, in
// seconds: the bench's own work, which is the edge proxy's while a relay
// command runs.
func selfCPU() float64 {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return tvSeconds(ru.Utime) + tvSeconds(ru.Stime)
}
