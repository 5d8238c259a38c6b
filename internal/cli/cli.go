// Package cli is the one command-line runner of the three programs: it
// parses arguments with kong, runs the chosen command, and maps what it
// returns to an exit status and one line on stderr. Only Run prints the
// final error; commands return errors.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"runtime/pprof"
	"strconv"
	"strings"

	"github.com/alecthomas/kong"
)

// Version is the release, set at link time with
// -ldflags "-X github.com/git-relay/git-relay/internal/cli.Version=v1.2.3";
// without it the module version and VCS revision from the build info
// stand in.
var Version = ""

// VersionString is what --version prints.
func VersionString() string {
	if Version != "" {
		return "git-relay " + Version
	}
	v, rev, dirty := "(devel)", "", false
	if bi, ok := debug.ReadBuildInfo(); ok {
		if bi.Main.Version != "" {
			v = bi.Main.Version
		}
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.modified":
				dirty = s.Value == "true"
			}
		}
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	if rev != "" {
		if dirty {
			rev += "+dirty"
		}
		return fmt.Sprintf("git-relay %s (%s)", v, rev)
	}
	return "git-relay " + v
}

// Globals are the flags every program takes; grammars embed it.
type Globals struct {
	Version kong.VersionFlag `help:"Print the version and exit."`
}

// ExitCoder is an error that sets the exit status itself (a remote
// command's status passed through, a usage error). Silent ones print
// nothing: the command already said why.
type ExitCoder interface {
	error
	ExitCode() int
}

// Exit is an ExitCoder with no message of its own.
type Exit int

func (e Exit) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

// ExitCode is the status.
func (e Exit) ExitCode() int { return int(e) }

// Usage marks an error as a usage error (exit status 2).
func Usage(err error) error { return usageError{err} }

type usageError struct{ error }

func (u usageError) Unwrap() error { return u.error }
func (u usageError) ExitCode() int { return 2 }

// Options describe one program.
type Options struct {
	// Name is how users call the program ("git sidecar").
	Name        string
	Description string
	Stdout      io.Writer
	Stderr      io.Writer
	// Bind are the values passed to every command's Run.
	Bind []any
	// Kong adds kong options (help layout, vars).
	Kong []kong.Option
	// AfterParse, when set, may refuse what was parsed before any command
	// runs (a usage error).
	AfterParse func(*kong.Context) error
}

type kongExit int

// Run parses args into grammar, runs the selected command and returns the
// exit status: 0, the ExitCoder's status, 2 for a usage error, 130 after
// an interrupt, 1 for any other error (printed as "<name>: <error>").
//
// GIT_RELAY_CPUPROFILE=FILE writes a CPU profile of the run to FILE, for
// `go tool pprof`: where a push, a fetch or a server spends its time. A
// "%p" in FILE becomes the process id, so that the helpers of several git
// commands each leave their own profile (pprof merges them).
func Run(grammar any, args []string, o Options) (code int) {
	defer cpuProfile(os.Getenv("GIT_RELAY_CPUPROFILE"))()
	prefix := o.Name + ": "
	opts := []kong.Option{
		kong.Name(o.Name),
		kong.Description(o.Description),
		kong.Writers(o.Stdout, o.Stderr),
		kong.Exit(func(code int) { panic(kongExit(code)) }),
		kong.UsageOnError(),
		kong.Vars{"version": VersionString()},
		kong.Bind(o.Bind...),
	}
	parser, err := kong.New(grammar, append(opts, o.Kong...)...)
	if err != nil {
		fmt.Fprintf(o.Stderr, "%s%v\n", prefix, err)
		return 1
	}
	defer func() {
		if r := recover(); r != nil {
			if k, ok := r.(kongExit); ok {
				code = int(k)
				return
			}
			panic(r)
		}
	}()
	kctx, err := parser.Parse(args)
	if err == nil && o.AfterParse != nil {
		err = o.AfterParse(kctx)
	}
	if err != nil {
		fmt.Fprintf(o.Stderr, "%s%v\n", prefix, err)
		return 2
	}
	return Report(kctx.Run(), o.Stderr, prefix)
}

// Report maps a command's error to an exit status, printing it on one line
// after prefix unless it is a silent exit.
func Report(err error, stderr io.Writer, prefix string) int {
	if err == nil {
		return 0
	}
	var silent Exit
	if errors.As(err, &silent) {
		return int(silent)
	}
	if errors.Is(err, context.Canceled) {
		fmt.Fprintf(stderr, "%sinterrupted\n", prefix)
		return 130
	}
	fmt.Fprintf(stderr, "%s%s\n", prefix, OneLine(err.Error()))
	var ec ExitCoder
	if errors.As(err, &ec) {
		return ec.ExitCode()
	}
	return 1
}

// OneLine joins a message's lines with "; ".
func OneLine(s string) string {
	return strings.ReplaceAll(strings.TrimSpace(s), "\n", "; ")
}

// cpuProfile starts a CPU profile into path, if set, and returns what
// stops it.
func cpuProfile(path string) func() {
	if path == "" {
		return func() {}
	}
	f, err := os.Create(strings.ReplaceAll(path, "%p", strconv.Itoa(os.Getpid())))
	if err != nil {
		return func() {}
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return func() {}
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}
}
