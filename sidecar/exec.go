package sidecar

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"regexp"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/creack/pty"
	"golang.org/x/sys/unix"
	"golang.org/x/term"

	"github.com/git-relay/git-relay/internal/cli"
	"github.com/git-relay/git-relay/internal/gitx"
	"github.com/git-relay/git-relay/internal/sshx"
)

type execCmd struct {
	Args      []string `arg:"" optional:"" passthrough:"" help:"[NAME] -- CMD...: the sidecar (default: the active one), then the command."`
	TTY       int      `short:"t" name:"tty" type:"counter" help:"Run CMD on a terminal when stdin is one, like ssh -t; -tt: always."`
	Env       []string `name:"env" sep:"none" placeholder:"NAME[=VALUE]" help:"Set NAME in CMD's environment, to VALUE or to its value here (repeatable)."`
	AcceptNew bool     `help:"Trust the SSH host key on first contact and record it in ~/.ssh/known_hosts."`
	NoSync    bool     `help:"Run CMD without syncing first."`
}

// grace is how long exec waits, after Ctrl-C or SIGTERM, for the command
// to end before it exits anyway.
const grace = 700 * time.Millisecond

// secondSignalExits, once set, makes a second Ctrl-C or SIGTERM end the
// process at once (see signalContext).
var secondSignalExits atomic.Bool

// signalContext is signal.NotifyContext that keeps the signal as the
// context's cause (an *sshx.Interrupted, which exits 128+n), and, while a
// command has set secondSignalExits, exits at once on a second signal.
func signalContext(parent context.Context) (context.Context, func()) {
	ctx, cancel := context.WithCancelCause(parent)
	ch := make(chan os.Signal, 2)
	signal.Notify(ch, os.Interrupt, syscall.SIGTERM)
	stopped := make(chan struct{})
	go func() {
		first := true
		for {
			select {
			case <-stopped:
				return
			case s := <-ch:
				sig, _ := s.(syscall.Signal)
				if first {
					first = false
					cancel(&sshx.Interrupted{Signal: sig})
					continue
				}
				if secondSignalExits.Load() {
					fmt.Fprintf(os.Stderr, "git sidecar: interrupted again (%v); exiting at once\n", s)
					os.Exit(128 + int(sig))
				}
			}
		}
	}()
	return ctx, func() {
		signal.Stop(ch)
		close(stopped)
		cancel(nil)
	}
}

var envName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// envAssignments turns --env flags into sh assignments. NAME alone takes
// its value here; one that is not set here is left out, as ssh's SendEnv
// does.
func envAssignments(flags []string, logf func(string, ...any)) (string, error) {
	var b strings.Builder
	for _, f := range flags {
		name, value, hasValue := strings.Cut(f, "=")
		if !envName.MatchString(name) {
			return "", fmt.Errorf("--env %q: %q is not a variable name (letters, digits and _, not starting with a digit)", f, name)
		}
		if !hasValue {
			v, ok := os.LookupEnv(name)
			if !ok {
				logf("--env %s: not set here, so not passed", name)
				continue
			}
			value = v
		}
		if strings.ContainsRune(value, 0) {
			return "", fmt.Errorf("--env %s: the value contains a NUL byte", name)
		}
		fmt.Fprintf(&b, "%s=%s; export %s\n", name, q(value), name)
	}
	return b.String(), nil
}

func (c *execCmd) Run(a *app) error {
	secondSignalExits.Store(true)
	defer secondSignalExits.Store(false)
	name := ""
	argv := c.Args
	if a.hasTail {
		if len(c.Args) > 1 {
			return fmt.Errorf("exec takes at most one NAME before --, got %q", c.Args)
		}
		if len(c.Args) == 1 {
			name = c.Args[0]
		}
		argv = a.tail
	}
	if len(argv) == 0 {
		return errors.New("exec needs a command: git sidecar exec [NAME] -- CMD")
	}
	env, err := envAssignments(c.Env, a.logf)
	if err != nil {
		return err
	}
	e, err := a.prepare(name, c.AcceptNew)
	if err != nil {
		return err
	}
	defer e.tr.close()
	if !c.NoSync {
		res, err := a.lockedSync(e, false)
		if err != nil {
			return interrupted(a.ctx, err)
		}
		a.logf("%s", res.summary(e.name))
	}
	// Run in the same subfolder of the workspace as we are in here.
	prefix, err := gitx.Repo{Dir: a.dir}.Run(a.ctx, "rev-parse", "--show-prefix")
	if err != nil || strings.ContainsAny(prefix, "\x00\n\r") {
		// A folder name with a line break would not survive every login
		// shell; run at the top of the workspace instead.
		prefix = ""
	}
	script := execScript(e.dest, strings.TrimSuffix(prefix, "/"), argv)
	// The variables go after the prelude, which clears git's.
	if rest, ok := strings.CutPrefix(script, prelude); ok {
		script = prelude + env + rest
	} else {
		script = env + script
	}
	x, ok := e.tr.(execer)
	if !ok {
		return fmt.Errorf("sidecar %q: its transport cannot run commands", e.name)
	}
	xio := execIO{stdin: a.stdin, stdout: a.stdout, stderr: a.stderr, tty: c.TTY, logf: a.logf}
	if f, ok := a.stdin.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		xio.terminal = f
	}
	err = x.exec(a.ctx, script, xio)
	var exit *sshx.ExitError
	if errors.As(err, &exit) {
		return cli.Exit(exit.Status)
	}
	return interrupted(a.ctx, err)
}

// interrupted replaces a cancellation by the signal that caused it, which
// sets the exit status (130 for Ctrl-C, 143 for SIGTERM).
func interrupted(ctx context.Context, err error) error {
	if err == nil || ctx.Err() == nil {
		return err
	}
	var intr *sshx.Interrupted
	if errors.As(context.Cause(ctx), &intr) {
		return intr
	}
	return err
}

// execIO is what a command run by exec is connected to.
type execIO struct {
	stdin          io.Reader
	stdout, stderr io.Writer
	// terminal is stdin when it is a terminal.
	terminal *os.File
	// tty counts -t flags: 1 asks for a terminal when stdin is one, 2
	// always.
	tty  int
	logf func(string, ...any)
}

// execer is a transport that runs exec's command like ssh does:
// terminal, signals, a process group that ends with us.
type execer interface {
	exec(ctx context.Context, script string, o execIO) error
}

// windowSize is the size of the terminal f, or 80x24.
func windowSize(f *os.File) sshx.WindowSize {
	if f != nil {
		if w, h, err := term.GetSize(int(f.Fd())); err == nil && w > 0 && h > 0 {
			return sshx.WindowSize{Cols: w, Rows: h}
		}
	}
	return sshx.WindowSize{Cols: 80, Rows: 24}
}

// watchResize sends the size of f whenever the window changes, until stop
// is called.
func watchResize(f *os.File) (<-chan sshx.WindowSize, func()) {
	out := make(chan sshx.WindowSize, 1)
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGWINCH)
	done := make(chan struct{})
	go func() {
		defer close(out)
		for {
			select {
			case <-done:
				return
			case <-ch:
				select {
				case out <- windowSize(f):
				default:
				}
			}
		}
	}()
	return out, func() { signal.Stop(ch); close(done) }
}

func (t *sshTransport) exec(ctx context.Context, script string, o execIO) error {
	client, err := t.connect(ctx)
	if err != nil {
		return err
	}
	xo := sshx.ExecOptions{Stdin: o.stdin, Stdout: o.stdout, Stderr: o.stderr, Grace: grace}
	switch {
	case o.tty >= 2 || (o.tty == 1 && o.terminal != nil):
		ws := windowSize(o.terminal)
		xo.PTY = &sshx.PTY{Term: os.Getenv("TERM"), Cols: ws.Cols, Rows: ws.Rows}
		if o.terminal != nil {
			// Keys go to the remote terminal as they are typed, Ctrl-C
			// included, as with ssh -t.
			old, err := term.MakeRaw(int(o.terminal.Fd()))
			if err != nil {
				return fmt.Errorf("put the terminal in raw mode: %w", err)
			}
			defer func() { _ = term.Restore(int(o.terminal.Fd()), old) }()
			resize, stop := watchResize(o.terminal)
			defer stop()
			xo.Resize = resize
		}
	case o.tty == 1:
		o.logf("no terminal for the command: stdin is not a terminal (use -tt to force one)")
	}
	return client.Exec(ctx, script, xo)
}

// exec runs the script with this machine's sh in a process group of its
// own, so that Ctrl-C or SIGTERM to us ends the command and everything it
// started. On a terminal, that group becomes the terminal's foreground
// group while it runs (as a shell does with a job), so the command can
// read the terminal and gets the terminal's Ctrl-C itself.
func (localTransport) exec(ctx context.Context, script string, o execIO) error {
	cmd := exec.Command("sh", "-c", script)
	cmd.Env = workspaceEnv(os.Environ())
	cmd.Stdout, cmd.Stderr = o.stdout, o.stderr
	var stdinPipe io.WriteCloser
	if f, ok := o.stdin.(*os.File); ok {
		cmd.Stdin = f
	} else if o.stdin != nil && o.tty < 2 {
		// A pipe copied by hand: Wait would otherwise wait for the end of
		// an input the command may never read.
		var err error
		if stdinPipe, err = cmd.StdinPipe(); err != nil {
			return err
		}
	}
	var ptmx *os.File
	switch {
	case o.terminal != nil && isForeground(o.terminal):
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Foreground: true, Ctty: int(o.terminal.Fd())}
		defer takeTerminalBack(o.terminal)
	case o.tty >= 2:
		// -tt without a terminal here: give the command one of its own.
		ws := windowSize(nil)
		cmd.Stdin, cmd.Stdout, cmd.Stderr = nil, nil, nil
		var err error
		if ptmx, err = pty.StartWithAttrs(cmd, &pty.Winsize{Cols: uint16(ws.Cols), Rows: uint16(ws.Rows)},
			&syscall.SysProcAttr{Setsid: true, Setctty: true}); err != nil {
			return fmt.Errorf("start sh on a terminal: %w", err)
		}
		defer ptmx.Close()
		if o.stdin != nil {
			go func() { _, _ = io.Copy(ptmx, o.stdin) }()
		}
	default:
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	}
	if ptmx == nil {
		if err := cmd.Start(); err != nil {
			return fmt.Errorf("start sh: %w", err)
		}
	}
	if stdinPipe != nil {
		go func() {
			_, _ = io.Copy(stdinPipe, o.stdin)
			stdinPipe.Close()
		}()
	}
	if cmd.SysProcAttr != nil && cmd.SysProcAttr.Foreground {
		go followStops(cmd.Process.Pid, o.terminal)
	}
	copied := make(chan struct{})
	if ptmx != nil {
		go func() {
			// Reading the terminal ends with EIO once the command and
			// everything holding the terminal have exited.
			_, _ = io.Copy(o.stdout, ptmx)
			close(copied)
		}()
	} else {
		close(copied)
	}
	done := make(chan error, 1)
	go func() {
		err := cmd.Wait()
		if ptmx != nil {
			select {
			case <-copied:
			case <-time.After(time.Second):
			}
		}
		done <- err
	}()
	select {
	case err := <-done:
		return localExit(err)
	case <-ctx.Done():
	}
	sig := syscall.SIGTERM
	var intr *sshx.Interrupted
	if errors.As(context.Cause(ctx), &intr) {
		sig = intr.Signal
	}
	stopGroup(cmd.Process.Pid, sig)
	select {
	case <-done:
	case <-time.After(grace):
	}
	return ctx.Err()
}

// stopGroup sends sig to process group pg, then TERM and KILL to whatever
// of it is left, each after 300ms: children started in the background
// ignore SIGINT, and some ignore SIGTERM too.
func stopGroup(pg int, sig syscall.Signal) {
	gone := func() bool { return syscall.Kill(-pg, 0) != nil }
	if syscall.Kill(-pg, sig) != nil {
		return
	}
	for _, next := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
		for i := 0; i < 6 && !gone(); i++ {
			time.Sleep(50 * time.Millisecond)
		}
		if gone() {
			return
		}
		_ = syscall.Kill(-pg, next)
	}
}

func localExit(err error) error {
	if err == nil {
		return nil
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

// isForeground reports whether our process group owns the terminal f (we
// were not started in the background).
func isForeground(f *os.File) bool {
	pg, err := unix.IoctlGetInt(int(f.Fd()), unix.TIOCGPGRP)
	return err == nil && pg == syscall.Getpgrp()
}

// takeTerminalBack makes our process group the terminal's foreground group
// again. A background group asking for that gets SIGTTOU, which is ignored
// for the moment, as shells do.
func takeTerminalBack(f *os.File) {
	signal.Ignore(syscall.SIGTTOU)
	defer signal.Reset(syscall.SIGTTOU)
	_ = unix.IoctlSetPointerInt(int(f.Fd()), unix.TIOCSPGRP, syscall.Getpgrp())
}
