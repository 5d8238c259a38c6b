package sidecar

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/git-relay/git-relay/internal/gitx"
	"github.com/git-relay/git-relay/internal/sshx"
)

// transport runs a POSIX sh script where the workspace lives. A non-zero
// exit is an *sshx.ExitError whatever the transport.
type transport interface {
	run(ctx context.Context, script string, stdin io.Reader, stdout, stderr io.Writer) error
	close() error
}

// localTransport runs scripts with this machine's sh: the same scripts as
// over SSH, for workspaces on a local path or a mounted volume.
type localTransport struct{}

func (localTransport) run(ctx context.Context, script string, stdin io.Reader, stdout, stderr io.Writer) error {
	cmd := exec.CommandContext(ctx, "sh", "-c", script)
	// A process group of its own, so that cancelling ends what the script
	// started as well, not just sh.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	// Hooks export GIT_DIR and GIT_INDEX_FILE relative to the local
	// repository; they must not reach git in the workspace.
	cmd.Env = workspaceEnv(os.Environ())
	cmd.Stdout = stdout
	cmd.Stderr = stderr
	var in io.WriteCloser
	if stdin != nil {
		var err error
		if in, err = cmd.StdinPipe(); err != nil {
			return err
		}
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start sh: %w", err)
	}
	if in != nil {
		// Not waited for: the script may stop reading early.
		go func() {
			_, _ = io.Copy(in, stdin)
			in.Close()
		}()
	}
	err := cmd.Wait()
	if err == nil {
		return nil
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		if ws, ok := exit.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return &sshx.ExitError{Status: 128 + int(ws.Signal()), Signal: ws.Signal().String()}
		}
		return &sshx.ExitError{Status: exit.ExitCode()}
	}
	return fmt.Errorf("run sh: %w", err)
}

func (localTransport) close() error { return nil }

// workspaceEnv is env as the workspace should see it: without the
// repository-local git variables, and without the exec-path that git puts
// first on PATH for hooks, so that the workspace runs the user's git.
func workspaceEnv(env []string) []string {
	env = gitx.CleanEnv(env)
	execPath := ""
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "GIT_EXEC_PATH="); ok {
			execPath = v
		}
	}
	if execPath == "" {
		return env
	}
	out := env[:0]
	for _, kv := range env {
		switch {
		case strings.HasPrefix(kv, "GIT_EXEC_PATH="):
			continue
		case strings.HasPrefix(kv, "PATH="):
			kv = "PATH=" + strings.TrimPrefix(strings.TrimPrefix(kv, "PATH="), execPath+":")
		}
		out = append(out, kv)
	}
	return out
}

// sshTransport dials on first use, so that commands which end up not
// needing the remote never connect, and every later script shares the
// one connection.
type sshTransport struct {
	dest Dest
	opts sshx.Options
	// mu guards client: a watch shares it with other commands' scripts.
	mu     sync.Mutex
	client *sshx.Client
	// logged is set once a login succeeded; afterLogin, if set, runs
	// when a transport that logged in is closed.
	logged     bool
	afterLogin func()
}

// connect returns the connection, dialling it first if needed.
func (t *sshTransport) connect(ctx context.Context) (*sshx.Client, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.client == nil {
		c, err := sshx.Dial(ctx, t.dest.Target(), t.opts)
		if err != nil {
			return nil, err
		}
		t.client = c
		t.logged = true
	}
	return t.client, nil
}

func (t *sshTransport) run(ctx context.Context, script string, stdin io.Reader, stdout, stderr io.Writer) error {
	c, err := t.connect(ctx)
	if err != nil {
		return err
	}
	return c.RunScript(ctx, script, stdin, stdout, stderr)
}

// dropIfDead closes the connection when it does not answer within
// timeout, so that the next script dials again, and reports whether it
// did.
func (t *sshTransport) dropIfDead(timeout time.Duration) bool {
	t.mu.Lock()
	c := t.client
	t.mu.Unlock()
	if c == nil || c.Alive(timeout) {
		return false
	}
	t.mu.Lock()
	if t.client == c {
		c.Close()
		t.client = nil
	}
	t.mu.Unlock()
	return true
}

func (t *sshTransport) close() error {
	t.mu.Lock()
	var err error
	if t.client != nil {
		err = t.client.Close()
		t.client = nil
	}
	after := t.afterLogin
	if !t.logged {
		after = nil
	}
	t.afterLogin = nil
	t.mu.Unlock()
	if after != nil {
		after()
	}
	return err
}
