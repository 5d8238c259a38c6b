package sshx

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/crypto/ssh"
)

// Interrupted is the cause of a context cancelled by a signal (see
// context.WithCancelCause): Exec passes that signal on to the remote
// command, and callers exit with 128 plus its number.
type Interrupted struct {
	Signal syscall.Signal
}

func (e *Interrupted) Error() string { return "interrupted by " + signalName(e.Signal) }

// ExitCode is 128 plus the signal's number, as a shell reports it.
func (e *Interrupted) ExitCode() int { return 128 + int(e.Signal) }

func signalName(s syscall.Signal) string {
	switch s {
	case syscall.SIGINT:
		return "SIGINT"
	case syscall.SIGTERM:
		return "SIGTERM"
	case syscall.SIGHUP:
		return "SIGHUP"
	case syscall.SIGQUIT:
		return "SIGQUIT"
	}
	return "signal " + strconv.Itoa(int(s))
}

// PTY asks for a terminal on the remote side.
type PTY struct {
	Term       string
	Cols, Rows int
}

// WindowSize is a terminal's size in characters.
type WindowSize struct{ Cols, Rows int }

// ExecOptions are the standard streams of an Exec and its terminal.
type ExecOptions struct {
	Stdin          io.Reader
	Stdout, Stderr io.Writer
	// PTY, when set, runs the command on a remote terminal; its stdout
	// and stderr then both arrive on Stdout, as with ssh -t.
	PTY *PTY
	// Resize passes window size changes on to the remote terminal.
	Resize <-chan WindowSize
	// Grace is how long Exec waits, once ctx is done, for the remote
	// command to end before it returns anyway (default 700ms).
	Grace time.Duration
}

// Exec runs a POSIX sh script that ends by running the user's command
// (with exec), the way ssh runs a command, and makes sure that the command
// ends with us.
//
// sshd does not end a command when its client goes away, and it refuses
// "signal" requests in many setups (for root, say). So a second session on
// the same connection is a watchdog: the first prints its process group
// (sshd makes every session a process group of its own) after the marker,
// and the watchdog waits on its standard input. When ctx ends, Exec
// writes the signal's name there (INT for a Ctrl-C); when the connection
// drops, the watchdog reads end-of-file. Either way it signals the whole
// group, then TERM, then KILL, each after half a second. Exec returns
// within Grace of ctx ending, with ctx's error.
func (c *Client) Exec(ctx context.Context, script string, o ExecOptions) error {
	sess, err := c.conn.NewSession()
	if err != nil {
		return fmt.Errorf("open ssh session on %s: %w", c.Addr, err)
	}
	defer sess.Close()
	if o.Grace == 0 {
		o.Grace = 700 * time.Millisecond
	}
	stdout, stderr := o.Stdout, o.Stderr
	if stdout == nil {
		stdout = io.Discard
	}
	if stderr == nil {
		stderr = io.Discard
	}
	marker := NewMarker()
	groups := make(chan string, 1)
	outF := &MarkerFilter{W: stdout, Marker: marker, OnMarker: func(tag string) {
		select {
		case groups <- tag:
		default:
		}
	}}
	errF := &MarkerFilter{W: stderr, Marker: marker}
	sess.Stdout = outF
	if o.PTY != nil {
		modes := ssh.TerminalModes{ssh.ECHO: 1, ssh.TTY_OP_ISPEED: 38400, ssh.TTY_OP_OSPEED: 38400}
		term := o.PTY.Term
		if term == "" {
			term = "xterm"
		}
		if err := sess.RequestPty(term, o.PTY.Rows, o.PTY.Cols, modes); err != nil {
			return fmt.Errorf("ask %s for a terminal: %w", c.Addr, err)
		}
		// On a terminal both streams are one; the marker comes only once.
		sess.Stderr = stderr
		errF = nil
	} else {
		sess.Stderr = errF
	}
	in, err := sess.StdinPipe()
	if err != nil {
		return fmt.Errorf("open ssh stdin: %w", err)
	}
	handshake := o.PTY == nil
	if err := sess.Start(execFramed(script, marker, handshake)); err != nil {
		return fmt.Errorf("start remote command on %s: %w", c.Addr, err)
	}
	// release lets the command start (with a "go" line when it waits for
	// one) and then passes our stdin on.
	released := false
	release := func() {
		if released {
			return
		}
		released = true
		if handshake {
			if _, err := io.WriteString(in, "go\n"); err != nil {
				return
			}
		}
		if o.Stdin == nil {
			in.Close()
			return
		}
		go func() {
			_, _ = io.Copy(in, o.Stdin)
			in.Close()
		}()
	}
	if !handshake {
		// On a terminal the kernel hangs the command up when the
		// connection goes; it need not wait for the watchdog.
		release()
	}
	if o.Resize != nil {
		go func() {
			for ws := range o.Resize {
				_ = sess.WindowChange(ws.Rows, ws.Cols)
			}
		}()
	}
	done := make(chan error, 1)
	go func() { done <- sess.Wait() }()

	var dog *watchdog
	defer func() {
		if dog != nil {
			dog.close()
		}
	}()
	for {
		select {
		case tag := <-groups:
			// Even without a watchdog the command runs; it just could not
			// be stopped for sure.
			dog, _ = c.startWatchdog(ctx, tag)
			release()
		case err := <-done:
			if dog != nil {
				dog.send("done")
			}
			if errF == nil {
				errF = &MarkerFilter{found: true}
			}
			return c.scriptResult(err, outF, errF)
		case <-ctx.Done():
			if !released {
				// The command has not started: without its "go" line it
				// never will.
				in.Close()
			}
			sig := "TERM"
			var intr *Interrupted
			if errors.As(context.Cause(ctx), &intr) {
				sig = strings.TrimPrefix(signalName(intr.Signal), "SIG")
			}
			deadline := time.Now().Add(o.Grace)
			left := func() <-chan time.Time { return time.After(time.Until(deadline)) }
			if dog == nil {
				// No group to stop: ask sshd, which may refuse.
				_ = sess.Signal(ssh.Signal(sig))
				select {
				case <-done:
				case <-left():
				}
				return ctx.Err()
			}
			// The connection stays up until the watchdog is through (it
			// ends once the group is gone), so that it is not cut off
			// halfway.
			dog.send(sig)
			finished := make(chan struct{})
			go func() { <-dog.ended; close(finished) }()
			select {
			case <-finished:
			case <-left():
			}
			select {
			case <-done:
			case <-left():
			}
			return ctx.Err()
		}
	}
}

// execFramed is Framed for Exec: before the script, the first line on
// stdout is the marker followed by the process group to stop ("-" when
// it cannot be told). Without a terminal, stderr gets the marker too, and
// the script waits for a "go" line on stdin, which comes once the
// watchdog runs: a client that dies before then leaves nothing running.
func execFramed(script, marker string, handshake bool) string {
	pre := `pg=
if [ -r /proc/$$/stat ]; then
  read -r _ _ _ _ pg sid _ </proc/$$/stat || pg=
  [ "$pg" = "$sid" ] || pg=
else
  pg=$(ps -o pgid= -p $$ 2>/dev/null | tr -d ' ')
fi
case $pg in ''|*[!0-9]*|0|1) pg=- ;; esac
printf '%s %s\n' ` + Quote(marker) + ` "$pg"
`
	if handshake {
		pre += "printf '%s\\n' " + Quote(marker) + " >&2\n"
		pre += "IFS= read -r go || exit 130\n[ \"$go\" = go ] || exit 130\n"
	}
	return "sh -c " + Quote(pre+script)
}

// watchdogScript stops process group pg when its input says so (a signal
// name) or ends (the connection dropped); "done" lets it go.
func watchdogScript(pg int) string {
	// The stopping runs in a subshell that ignores hangups and writes
	// nowhere, so that the connection closing under it (the very case it
	// is for) does not stop it halfway. "kill -s 0" rather than "kill -0":
	// dash takes the "--" after "-0" for a process id.
	return fmt.Sprintf(`pg=%d
exec >/dev/null 2>&1
IFS= read -r s || s=HUP
case $s in done) exit 0 ;; INT|TERM|HUP|QUIT) ;; *) s=HUP ;; esac
(
  trap '' HUP INT TERM PIPE
  gone() { ! kill -s 0 -- -"$pg" 2>/dev/null; }
  nap() { sleep 0.1 2>/dev/null || sleep 1; }
  kill -s "$s" -- -"$pg" 2>/dev/null || exit 0
  for next in TERM KILL; do
    i=0
    while [ $i -lt 3 ] && ! gone; do nap; i=$((i+1)); done
    gone && exit 0
    kill -s $next -- -"$pg" 2>/dev/null
  done
) </dev/null &
wait
`, pg)
}

type watchdog struct {
	sess  *ssh.Session
	in    io.WriteCloser
	ended chan struct{}
}

// startWatchdog starts the watchdog of process group tag and returns
// once its script runs.
func (c *Client) startWatchdog(ctx context.Context, tag string) (*watchdog, error) {
	pg, err := strconv.Atoi(tag)
	if err != nil || pg <= 1 {
		return nil, fmt.Errorf("the remote command did not tell its process group (%q)", tag)
	}
	sess, err := c.conn.NewSession()
	if err != nil {
		return nil, err
	}
	in, err := sess.StdinPipe()
	if err != nil {
		sess.Close()
		return nil, err
	}
	running := make(chan struct{})
	marker := NewMarker()
	sess.Stdout = &MarkerFilter{W: io.Discard, Marker: marker, OnMarker: func(string) { close(running) }}
	if err := sess.Start(Framed(watchdogScript(pg), marker)); err != nil {
		sess.Close()
		return nil, err
	}
	w := &watchdog{sess: sess, in: in, ended: make(chan struct{})}
	go func() { _ = sess.Wait(); close(w.ended) }()
	select {
	case <-running:
		return w, nil
	case <-w.ended:
		return nil, errors.New("the watchdog session ended at once")
	case <-ctx.Done():
		// Still worth having: it may be running by the time it is told.
		return w, nil
	}
}

func (w *watchdog) send(line string) {
	_, _ = io.WriteString(w.in, line+"\n")
	_ = w.in.Close()
}

// close lets the watchdog session go without waiting for it: what it
// was told is already on its way, ahead of the channel's close.
func (w *watchdog) close() {
	_ = w.in.Close()
}
