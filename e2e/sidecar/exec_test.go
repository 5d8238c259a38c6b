package sidecar_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/creack/pty"
	"github.com/stretchr/testify/require"

	"github.com/git-relay/git-relay/internal/gitx"
)

// sidecarProc starts the git-sidecar binary itself (not through git), so
// that a signal reaches it alone, as a supervisor's SIGTERM or a kill
// from another terminal does. Its output goes to files, not pipes: Wait
// must not wait for a leftover process that still holds them.
func (w *world) sidecarProc(ctx context.Context, args ...string) (*exec.Cmd, *os.File) {
	w.t.Helper()
	bin, err := exec.LookPath("git-sidecar")
	require.NoError(w.t, err)
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Dir = w.repo
	cmd.Env = w.env
	out, err := os.Create(filepath.Join(w.t.TempDir(), "output"))
	require.NoError(w.t, err)
	w.t.Cleanup(func() { out.Close() })
	cmd.Stdout, cmd.Stderr = out, out
	return cmd, out
}

func contents(f *os.File) string {
	b, _ := os.ReadFile(f.Name())
	return string(b)
}

// readPID reads a pid file, or returns 0 while it is not written yet.
func readPID(file string) int {
	b, err := os.ReadFile(file)
	if err != nil {
		return 0
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0
	}
	return pid
}

func alive(pid int) bool { return syscall.Kill(pid, 0) == nil }

// TestExecInterrupt: Ctrl-C (SIGINT) or SIGTERM to git-sidecar during
// exec ends the command and the child it started, over SSH (as root,
// whose signal requests sshd refuses) and on a local path, and the tool
// exits with 128 plus the signal's number.
func TestExecInterrupt(t *testing.T) {
	for _, tc := range []struct {
		kind transportKind
		sig  syscall.Signal
	}{{overSSH, syscall.SIGINT}, {overSSH, syscall.SIGTERM}, {local, syscall.SIGINT}, {local, syscall.SIGTERM}} {
		t.Run(string(tc.kind)+"-"+tc.sig.String(), func(t *testing.T) {
			t.Parallel()
			w := newWorld(t, tc.kind, "")
			w.write("a.txt", "a\n")
			w.commitAll("a")
			w.mustSidecar("add", "dev", w.dest)
			w.mustSidecar("setup")
			pids := t.TempDir()
			// A command that ignores its input, and a child of its own
			// that would outlive it if only the command were signalled.
			script := `sleep 300 & echo $! > "$1/child"; echo $$ > "$1/pid"; wait`
			ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
			defer cancel()
			cmd, output := w.sidecarProc(ctx, "exec", "--", "sh", "-c", script, "sh", pids)
			require.NoError(t, cmd.Start())
			var pid, child int
			require.Eventually(t, func() bool {
				pid, child = readPID(filepath.Join(pids, "pid")), readPID(filepath.Join(pids, "child"))
				return pid > 0 && child > 0
			}, time.Minute, 20*time.Millisecond, "the command did not start: %s", contents(output))
			require.True(t, alive(pid) && alive(child))

			sent := time.Now()
			require.NoError(t, cmd.Process.Signal(tc.sig))
			err := cmd.Wait()
			t.Logf("%s: git-sidecar exited %s after the signal", tc.sig, time.Since(sent).Round(time.Millisecond))
			var exit *exec.ExitError
			require.True(t, errors.As(err, &exit), "%v: %s", err, contents(output))
			require.Equal(t, 128+int(tc.sig), exit.ExitCode(), contents(output))
			require.Contains(t, contents(output), "git sidecar: interrupted by "+map[syscall.Signal]string{syscall.SIGINT: "SIGINT", syscall.SIGTERM: "SIGTERM"}[tc.sig])
			require.Eventually(t, func() bool { return !alive(pid) && !alive(child) }, 2*time.Second, 20*time.Millisecond,
				"the remote command (%d) or its child (%d) survived; output: %s", pid, child, contents(output))
		})
	}
}

// TestExecTTYAndEnv: -t gives the command a terminal when ours is one,
// -tt always; --env passes variables, NAME alone with our value.
func TestExecTTYAndEnv(t *testing.T) {
	for _, kind := range []transportKind{overSSH, local} {
		t.Run(string(kind), func(t *testing.T) {
			t.Parallel()
			w := newWorld(t, kind, "Welcome! tty noise")
			w.write("a.txt", "a\n")
			w.commitAll("a")
			w.mustSidecar("add", "dev", w.dest)
			w.mustSidecar("setup")
			check := `if [ -t 0 ] && [ -t 1 ]; then echo "tty yes"; else echo "tty no"; fi; printf 'FOO=%s BAR=%s\n' "$FOO" "$BAR"; exit 3`

			// No terminal here: -t gives none, -tt one anyway.
			w.env = append(w.env, "BAR=from here; $(touch pwned) 'q'")
			out, errOut, err := w.sidecar("exec", "--no-sync", "-t", "--env", "FOO=a b'c", "--env", "BAR", "--", "sh", "-c", check)
			require.Error(t, err)
			require.Equal(t, 3, exitCode(err), errOut)
			require.Equal(t, "tty no\nFOO=a b'c BAR=from here; $(touch pwned) 'q'\n", out)

			check = `if [ -t 0 ] && [ -t 1 ]; then echo "tty yes"; else echo "tty no"; fi; printf 'FOO=%s\n' "$FOO"; exit 3`
			out, errOut, err = w.sidecar("exec", "--no-sync", "-tt", "--env", "FOO=x", "--", "sh", "-c", check)
			require.Equal(t, 3, exitCode(err), errOut)
			require.Equal(t, "tty yes\r\nFOO=x\r\n", out, "a terminal turns line ends into CRLF")

			_, errOut, err = w.sidecar("exec", "--env", "1BAD=x", "--", "true")
			require.Error(t, err)
			require.Contains(t, errOut, `--env "1BAD=x": "1BAD" is not a variable name`)

			// Under a real terminal, -t is enough, and the window size
			// goes along.
			bin, err := exec.LookPath("git-sidecar")
			require.NoError(t, err)
			cmd := exec.Command(bin, "exec", "--no-sync", "-t", "--", "sh", "-c", `echo "tty $(stty size)"; exit 4`)
			cmd.Dir, cmd.Env = w.repo, w.env
			ptmx, err := pty.StartWithSize(cmd, &pty.Winsize{Rows: 33, Cols: 101})
			require.NoError(t, err)
			defer ptmx.Close()
			var got bytes.Buffer
			copied := make(chan struct{})
			go func() { _, _ = io.Copy(&got, ptmx); close(copied) }()
			err = cmd.Wait()
			<-copied
			require.Equal(t, 4, exitCode(err), got.String())
			require.Contains(t, got.String(), "tty 33 101")
		})
	}
}

func exitCode(err error) int {
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		return exit.ExitCode()
	}
	var gerr *gitx.Error
	if errors.As(err, &gerr) {
		return gerr.ExitCode
	}
	if err == nil {
		return 0
	}
	return -1
}

// TestExecSecondSignalExitsAtOnce: a second signal does not wait for the
// remote command to stop, and the command still stops: the watchdog on
// the far side finishes the job after the connection is gone.
func TestExecSecondSignalExitsAtOnce(t *testing.T) {
	w := newWorld(t, overSSH, "")
	w.write("a.txt", "a\n")
	w.commitAll("a")
	w.mustSidecar("add", "dev", w.dest)
	w.mustSidecar("setup")
	pids := t.TempDir()
	script := `trap '' INT; sleep 300 & echo $! > "$1/child"; echo $$ > "$1/pid"; wait`
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	cmd, output := w.sidecarProc(ctx, "exec", "--no-sync", "--", "sh", "-c", script, "sh", pids)
	require.NoError(t, cmd.Start())
	var pid, child int
	require.Eventually(t, func() bool {
		pid, child = readPID(filepath.Join(pids, "pid")), readPID(filepath.Join(pids, "child"))
		return pid > 0 && child > 0
	}, time.Minute, 20*time.Millisecond, "the command did not start: %s", contents(output))
	// Two different signals, so that the kernel cannot merge them.
	require.NoError(t, cmd.Process.Signal(syscall.SIGINT))
	require.NoError(t, cmd.Process.Signal(syscall.SIGTERM))
	err := cmd.Wait()
	require.Contains(t, []int{130, 143}, exitCode(err), contents(output))
	require.Contains(t, contents(output), "; exiting at once")
	require.Eventually(t, func() bool { return !alive(pid) && !alive(child) }, 3*time.Second, 20*time.Millisecond,
		"the remote command (%d) or its child (%d) survived; output: %s", pid, child, contents(output))
}

// TestExecWindowChange: with -t under a terminal, a window size change
// here reaches the command there (SIGWINCH and the new size).
func TestExecWindowChange(t *testing.T) {
	for _, kind := range []transportKind{overSSH, local} {
		t.Run(string(kind), func(t *testing.T) {
			t.Parallel()
			w := newWorld(t, kind, "")
			w.write("a.txt", "a\n")
			w.commitAll("a")
			w.mustSidecar("add", "dev", w.dest)
			w.mustSidecar("setup")
			bin, err := exec.LookPath("git-sidecar")
			require.NoError(t, err)
			script := `trap 'echo "size $(stty size)"; exit 5' WINCH; echo ready; while :; do sleep 0.05; done`
			cmd := exec.Command(bin, "exec", "--no-sync", "-t", "--", "sh", "-c", script)
			cmd.Dir, cmd.Env = w.repo, w.env
			ptmx, err := pty.StartWithSize(cmd, &pty.Winsize{Rows: 24, Cols: 80})
			require.NoError(t, err)
			defer ptmx.Close()
			var got syncBuffer
			copied := make(chan struct{})
			go func() { _, _ = io.Copy(&got, ptmx); close(copied) }()
			require.Eventually(t, func() bool { return strings.Contains(got.String(), "ready") }, time.Minute, 20*time.Millisecond, "%s", got.String())
			// The kernel signals the terminal's foreground group: git-sidecar,
			// or the local command itself.
			require.NoError(t, pty.Setsize(ptmx, &pty.Winsize{Rows: 40, Cols: 120}))
			err = cmd.Wait()
			<-copied
			require.Equal(t, 5, exitCode(err), got.String())
			require.Contains(t, got.String(), "size 40 120")
		})
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestLocalExecCtrlZ: on a local path under a terminal, the command owns
// the terminal (its own process group in the foreground); Ctrl-Z stops
// it, and it is continued when we are: nothing is left stopped for good.
func TestLocalExecCtrlZ(t *testing.T) {
	w := newWorld(t, local, "")
	w.write("a.txt", "a\n")
	w.commitAll("a")
	w.mustSidecar("add", "dev", w.dest)
	w.mustSidecar("setup")
	bin, err := exec.LookPath("git-sidecar")
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "exec", "--no-sync", "--", "sh", "-c", `echo ready; read x; echo "got $x"; exit 6`)
	cmd.Dir, cmd.Env = w.repo, w.env
	ptmx, err := pty.Start(cmd)
	require.NoError(t, err)
	defer ptmx.Close()
	var got syncBuffer
	copied := make(chan struct{})
	go func() { _, _ = io.Copy(&got, ptmx); close(copied) }()
	require.Eventually(t, func() bool { return strings.Contains(got.String(), "ready") }, time.Minute, 20*time.Millisecond, "%s", got.String())
	_, err = ptmx.Write([]byte{0x1a}) // Ctrl-Z
	require.NoError(t, err)
	// git-sidecar leads its own session here, so nothing stops it: it
	// gives the terminal back to the command and continues it at once.
	_, err = ptmx.Write([]byte("hello\n"))
	require.NoError(t, err)
	err = cmd.Wait()
	<-copied
	require.Equal(t, 6, exitCode(err), got.String())
	require.Contains(t, got.String(), "got hello")
}

// TestExecStreams: stdin reaches the command byte for byte (binary, no
// final newline), stdout and stderr come back apart, over SSH as locally.
func TestExecStreams(t *testing.T) {
	for _, kind := range []transportKind{overSSH, local} {
		t.Run(string(kind), func(t *testing.T) {
			t.Parallel()
			w := newWorld(t, kind, "noise on both streams")
			w.write("a.txt", "a\n")
			w.commitAll("a")
			w.mustSidecar("add", "dev", w.dest)
			w.mustSidecar("setup")
			in := append(bytes.Repeat([]byte("go\n\x00\xff"), 50000), "no newline"...)
			var out, errb bytes.Buffer
			c := w.gitRepo(w.repo).Command(t.Context(), "sidecar", "exec", "--no-sync", "--", "sh", "-c", "cat; echo to-stderr >&2; exit 9")
			c.Stdin, c.Stdout, c.Stderr = bytes.NewReader(in), &out, &errb
			err := c.Run()
			require.Equal(t, 9, exitCode(err), errb.String())
			require.Equal(t, in, out.Bytes())
			require.Equal(t, "to-stderr\n", errb.String())
		})
	}
}
