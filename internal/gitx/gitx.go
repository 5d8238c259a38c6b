// Package gitx is the one door to the git command line. Every other package
// runs git through it, so that the environment, the working directory and
// the way failures are reported are decided in one place.
//
// Each command runs with the repository-local variables that git exports to
// hooks and helpers (GIT_DIR, GIT_INDEX_FILE, GIT_WORK_TREE, ...) removed
// from its environment, as git-sh-setup's clear_local_git_env does: a hook
// that runs us with a relative GIT_DIR must not redirect commands aimed at
// another repository. A caller that wants a specific repository says so
// with Repo.GitDir or Repo.Dir.
package gitx

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"unicode"
)

// localEnvVars is the list printed by `git rev-parse --local-env-vars`.
var localEnvVars = map[string]bool{
	"GIT_ALTERNATE_OBJECT_DIRECTORIES": true,
	"GIT_CONFIG":                       true,
	"GIT_CONFIG_PARAMETERS":            true,
	"GIT_CONFIG_COUNT":                 true,
	"GIT_OBJECT_DIRECTORY":             true,
	"GIT_DIR":                          true,
	"GIT_WORK_TREE":                    true,
	"GIT_IMPLICIT_WORK_TREE":           true,
	"GIT_GRAFT_FILE":                   true,
	"GIT_INDEX_FILE":                   true,
	"GIT_NO_REPLACE_OBJECTS":           true,
	"GIT_REPLACE_REF_BASE":             true,
	"GIT_PREFIX":                       true,
	"GIT_INTERNAL_SUPER_PREFIX":        true,
	"GIT_SHALLOW_FILE":                 true,
	"GIT_COMMON_DIR":                   true,
	"GIT_QUARANTINE_PATH":              true,
}

// CleanEnv returns env without the repository-local git variables (and
// without the numbered GIT_CONFIG_KEY_n/GIT_CONFIG_VALUE_n pairs that go
// with GIT_CONFIG_COUNT).
func CleanEnv(env []string) []string {
	out := make([]string, 0, len(env))
	for _, kv := range env {
		name, _, _ := strings.Cut(kv, "=")
		if localEnvVars[name] || strings.HasPrefix(name, "GIT_CONFIG_KEY_") || strings.HasPrefix(name, "GIT_CONFIG_VALUE_") {
			continue
		}
		out = append(out, kv)
	}
	return out
}

// ConfigEnv returns the variables of env that carry `git -c` settings
// (GIT_CONFIG_PARAMETERS, and GIT_CONFIG_COUNT with its numbered pairs).
// CleanEnv drops them; a program that git runs for the user's own
// repository (a remote helper, a git subcommand) passes them back in
// Repo.Env for its commands on that repository, as git's own subcommands
// do, so that `git -c relay.url=… push` means what it says.
func ConfigEnv(env []string) []string {
	var out []string
	for _, kv := range env {
		name, _, _ := strings.Cut(kv, "=")
		if name == "GIT_CONFIG_PARAMETERS" || name == "GIT_CONFIG_COUNT" || strings.HasPrefix(name, "GIT_CONFIG_KEY_") || strings.HasPrefix(name, "GIT_CONFIG_VALUE_") {
			out = append(out, kv)
		}
	}
	return out
}

// Repo names the repository and working directory a command runs in.
// The zero value runs git in the current directory with a clean environment.
type Repo struct {
	// Dir is the working directory of the command ("" for the current one).
	Dir string
	// GitDir, when set, is exported as GIT_DIR.
	GitDir string
	// Env is appended to the cleaned environment (it wins over it).
	Env []string
}

// Cmd is one git invocation, built by Repo.Command.
type Cmd struct {
	Args   []string
	Stdin  io.Reader
	Stdout io.Writer
	// Stderr, when set, receives the child's stderr as well as the copy
	// kept for the error message.
	Stderr io.Writer
	Env    []string
	// Background runs git at the lowest CPU priority (nice 19): for
	// maintenance that nobody waits for, which must not slow the work
	// that somebody does wait for.
	Background bool

	repo   Repo
	ctx    context.Context
	cmd    *exec.Cmd
	errbuf limitedBuffer
	// Pipes made here rather than by exec.Cmd (see BlockingPipe): the
	// child's ends, closed once it has started; the end a StdinPipe
	// caller writes, closed once it has exited; and the copy of Stdin.
	childEnds []*os.File
	stdinW    *os.File
	copied    chan error
}

// Command prepares `git args...` in r.
func (r Repo) Command(ctx context.Context, args ...string) *Cmd {
	return &Cmd{Args: args, repo: r, ctx: ctx}
}

// Run runs `git args...` in r and returns its stdout without the trailing
// newline.
func (r Repo) Run(ctx context.Context, args ...string) (string, error) {
	var out bytes.Buffer
	c := r.Command(ctx, args...)
	c.Stdout = &out
	if err := c.Run(); err != nil {
		return "", err
	}
	return strings.TrimRight(out.String(), "\n"), nil
}

// RunInput is Run with stdin.
func (r Repo) RunInput(ctx context.Context, stdin io.Reader, args ...string) (string, error) {
	var out bytes.Buffer
	c := r.Command(ctx, args...)
	c.Stdin = stdin
	c.Stdout = &out
	if err := c.Run(); err != nil {
		return "", err
	}
	return strings.TrimRight(out.String(), "\n"), nil
}

// Ok runs a command whose exit status is the answer (merge-base
// --is-ancestor, cat-file -e, ...): exit 0 is true, exit 1 is false, and
// anything else is an error.
func (r Repo) Ok(ctx context.Context, args ...string) (bool, error) {
	err := r.Command(ctx, args...).Run()
	if err == nil {
		return true, nil
	}
	var gerr *Error
	if errors.As(err, &gerr) && gerr.ExitCode == 1 {
		return false, nil
	}
	return false, err
}

func (c *Cmd) build() {
	c.cmd = exec.CommandContext(c.ctx, "git", c.Args...)
	c.cmd.Dir = c.repo.Dir
	env := CleanEnv(os.Environ())
	if c.repo.GitDir != "" {
		env = append(env, "GIT_DIR="+c.repo.GitDir)
	}
	env = append(env, c.repo.Env...)
	env = append(env, c.Env...)
	c.cmd.Env = env
	c.cmd.Stdin = c.Stdin
	c.cmd.Stdout = c.Stdout
	if c.Stderr != nil {
		c.cmd.Stderr = io.MultiWriter(&c.errbuf, c.Stderr)
	} else {
		c.cmd.Stderr = &c.errbuf
	}
}

// Start starts the command; Wait finishes it.
func (c *Cmd) Start() error {
	if c.cmd == nil {
		c.build()
	}
	var feed *os.File
	if _, isFile := c.Stdin.(*os.File); c.Stdin != nil && !isFile && c.stdinW == nil {
		// exec.Cmd would copy Stdin through a pipe of the runtime poller.
		r, w, err := InputPipe()
		if err != nil {
			return fmt.Errorf("start git %s: %w", firstArg(c.Args), err)
		}
		c.cmd.Stdin, c.childEnds, feed = r, append(c.childEnds, r), w
	}
	err := c.cmd.Start()
	for _, f := range c.childEnds {
		f.Close()
	}
	c.childEnds = nil
	if err != nil {
		if feed != nil {
			feed.Close()
		}
		if c.stdinW != nil {
			c.stdinW.Close()
		}
		return fmt.Errorf("start git %s: %w", firstArg(c.Args), err)
	}
	if feed != nil {
		c.copied = make(chan error, 1)
		go func() {
			_, err := CopyInPieces(feed, c.Stdin, stdinPiece)
			if cerr := feed.Close(); err == nil {
				err = cerr
			}
			c.copied <- err
		}()
	}
	if c.Background {
		// Best effort: a git that runs at normal priority is still right.
		_ = syscall.Setpriority(syscall.PRIO_PROCESS, c.cmd.Process.Pid, 19)
	}
	return nil
}

// StdoutPipe returns a pipe to the command's stdout, as exec.Cmd's does:
// call it before Start, read to EOF, then Wait.
func (c *Cmd) StdoutPipe() (io.ReadCloser, error) {
	c.Stdout = nil
	if c.cmd == nil {
		c.build()
	}
	c.cmd.Stdout = nil
	r, err := c.cmd.StdoutPipe()
	if f, ok := r.(*os.File); ok {
		BlockingPipe(f)
	}
	return r, err
}

// StdinPipe returns a pipe to the command's stdin, as exec.Cmd's does:
// call it before Start, and close it when done writing.
func (c *Cmd) StdinPipe() (io.WriteCloser, error) {
	c.Stdin = nil
	if c.cmd == nil {
		c.build()
	}
	if c.cmd.Stdin != nil || c.stdinW != nil {
		return nil, errors.New("gitx: Stdin already set")
	}
	r, w, err := InputPipe()
	if err != nil {
		return nil, err
	}
	c.cmd.Stdin, c.childEnds, c.stdinW = r, append(c.childEnds, r), w
	return w, nil
}

// stdinPiece is the size of the writes that copy a Cmd's Stdin.
const stdinPiece = 64 << 10

// Wait waits for a started command and returns an *Error if it failed.
func (c *Cmd) Wait() error {
	err := c.cmd.Wait()
	if c.stdinW != nil {
		c.stdinW.Close() // as exec.Cmd's StdinPipe is, once the command has exited
	}
	if c.copied != nil {
		// The child has exited, so the copy ends: it has written all, or
		// its write failed for want of a reader, which is the child's
		// business (as with exec.Cmd). Taken once: a second Wait, which
		// exec.Cmd answers at once, must not wait for it again.
		cerr := <-c.copied
		c.copied = nil
		if err == nil && cerr != nil && !errors.Is(cerr, syscall.EPIPE) {
			err = fmt.Errorf("git %s: write its input: %w", firstArg(c.Args), cerr)
		}
	}
	if err == nil {
		return nil
	}
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		return &Error{Args: c.Args, ExitCode: exit.ExitCode(), Stderr: c.errbuf.String()}
	}
	return fmt.Errorf("git %s: %w", firstArg(c.Args), err)
}

// Run starts the command and waits for it.
func (c *Cmd) Run() error {
	if err := c.Start(); err != nil {
		return err
	}
	return c.Wait()
}

// Error is a git command that exited non-zero.
type Error struct {
	Args     []string
	ExitCode int
	Stderr   string
}

func (e *Error) Error() string {
	msg := Sanitize(e.Stderr)
	if msg == "" {
		return fmt.Sprintf("git %s: exit status %d", firstArg(e.Args), e.ExitCode)
	}
	return fmt.Sprintf("git %s: %s", firstArg(e.Args), msg)
}

func firstArg(args []string) string {
	for _, a := range args {
		if !strings.HasPrefix(a, "-") {
			return a
		}
	}
	return strings.Join(args, " ")
}

// Sanitize turns a child's stderr into one line that is safe to print:
// control characters are dropped and lines are joined with "; ".
func Sanitize(s string) string {
	var lines []string
	for _, line := range strings.Split(s, "\n") {
		line = strings.Map(func(r rune) rune {
			if r == '\t' {
				return ' '
			}
			if unicode.IsControl(r) {
				return -1
			}
			return r
		}, line)
		if line = strings.TrimSpace(line); line != "" {
			lines = append(lines, line)
		}
	}
	return strings.Join(lines, "; ")
}

// limitedBuffer keeps the first 64 KiB written to it, enough for an error
// message, without letting a chatty child grow our memory.
type limitedBuffer struct{ bytes.Buffer }

func (b *limitedBuffer) Write(p []byte) (int, error) {
	if room := 64<<10 - b.Len(); room > 0 {
		if len(p) > room {
			b.Buffer.Write(p[:room])
		} else {
			b.Buffer.Write(p)
		}
	}
	return len(p), nil
}

// ZeroID stands for "no object" in ref updates.
const ZeroID = "0000000000000000000000000000000000000000"

// ValidOID says whether s is a full SHA-1 object id in lowercase hex.
func ValidOID(s string) bool {
	if len(s) != 40 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// ValidRefName applies git-check-ref-format's rules without
// --allow-onelevel, in process: a push of a hundred thousand refs must not
// start a hundred thousand gits.
func ValidRefName(name string) bool {
	if name == "" || name == "@" || len(name) > 4096 ||
		strings.HasSuffix(name, ".") || strings.HasSuffix(name, "/") || strings.HasPrefix(name, "/") ||
		strings.Contains(name, "..") || strings.Contains(name, "@{") || strings.Contains(name, "//") ||
		!strings.Contains(name, "/") {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if c < 0x20 || c == 0x7f || strings.IndexByte(" ~^:?*[\\", c) >= 0 {
			return false
		}
	}
	for _, part := range strings.Split(name, "/") {
		if strings.HasPrefix(part, ".") || strings.HasSuffix(part, ".lock") {
			return false
		}
	}
	return true
}

// Exists says which of ids the repository has, with one git for all of
// them. Names that are not object ids (a ref, HEAD~1) are resolved as
// cat-file resolves them, and the answer maps each name to the id it
// names, or "" when it names nothing.
func (r Repo) Exists(ctx context.Context, names []string) (map[string]string, error) {
	if len(names) == 0 {
		return map[string]string{}, nil
	}
	l, err := r.StartLookup(ctx)
	if err != nil {
		return nil, err
	}
	return l.Exists(names)
}

// Lookup is the git of an Exists started before it is given the names:
// its start-up (some milliseconds) runs while the caller learns them.
type Lookup struct {
	cmd    *Cmd
	in     io.WriteCloser
	out    bytes.Buffer
	closed bool
}

// StartLookup starts the git for one Exists, or for none (Close).
func (r Repo) StartLookup(ctx context.Context) (*Lookup, error) {
	l := &Lookup{cmd: r.Command(ctx, "cat-file", "--batch-check=%(objectname)")}
	l.cmd.Stdout = &l.out // before StdinPipe, which builds the command
	in, err := l.cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	l.in = in
	if err := l.cmd.Start(); err != nil {
		in.Close()
		return nil, err
	}
	return l, nil
}

// Exists is Repo.Exists on the lookup's git, which it ends.
func (l *Lookup) Exists(names []string) (map[string]string, error) {
	if l.closed {
		return nil, errors.New("gitx: lookup used twice")
	}
	l.closed = true
	var in strings.Builder
	for _, n := range names {
		if strings.ContainsAny(n, "\n") {
			l.in.Close()
			_ = l.cmd.Wait()
			return nil, fmt.Errorf("object name %q contains a newline", n)
		}
		in.WriteString(n + "\n")
	}
	_, werr := io.WriteString(l.in, in.String())
	l.in.Close()
	if err := l.cmd.Wait(); err != nil {
		return nil, err
	}
	if werr != nil {
		return nil, fmt.Errorf("git cat-file: write its input: %w", werr)
	}
	out := make(map[string]string, len(names))
	if len(names) == 0 {
		return out, nil
	}
	lines := strings.Split(strings.TrimRight(l.out.String(), "\n"), "\n")
	if len(lines) != len(names) {
		return nil, fmt.Errorf("git cat-file answered %d lines for %d names", len(lines), len(names))
	}
	for i, n := range names {
		if line := lines[i]; ValidOID(line) {
			out[n] = line
		} else {
			out[n] = ""
		}
	}
	return out, nil
}

// Close ends a lookup that was not used; one that was is ended already.
func (l *Lookup) Close() {
	if l == nil || l.closed {
		return
	}
	l.closed = true
	l.in.Close()
	_ = l.cmd.Wait()
}
