// Package sidecar is `git sidecar`: it keeps a workspace on another
// machine (over SSH) or in another folder identical to the local work
// tree, so that builds and tests can run there while editing happens here.
//
// The workspace is a git repository that git sidecar made and whose git
// it configures to convert nothing. Setup bootstraps it once from origin
// (or from a bundle sent over the same connection). Every sync snapshots
// the work tree's raw bytes as a tree (snapshot.go), sends the workspace a
// pack of the objects it lacks, big files as deltas (pack.go, delta.go),
// in one remote command that moves it to that tree with one read-tree
// (scripts.go), and checks that the workspace ends up with exactly that
// tree.
package sidecar

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/alecthomas/kong"

	"github.com/git-relay/git-relay/internal/cli"
)

// app is what every command gets.
type app struct {
	ctx     context.Context
	dir     string
	stdin   io.Reader
	stdout  io.Writer
	stderr  io.Writer
	verbose bool
	// tail is what followed `--` on the command line (exec's command).
	tail    []string
	hasTail bool
	// takeover is setup --force.
	takeover bool
	// ownConnection keeps a command from using a running watch's
	// connection (the watch itself).
	ownConnection bool
}

func (a *app) logf(format string, args ...any) {
	if a.verbose {
		fmt.Fprintf(a.stderr, "sidecar: "+format+"\n", args...)
	}
}

type grammar struct {
	cli.Globals
	Verbose bool `short:"v" help:"Say what is being done, on stderr."`

	Add     addCmd    `cmd:"" help:"Add a sidecar NAME whose workspace is DEST: ssh://[user@]host[:port]/path, [user@]host:path or a local path."`
	Use     useCmd    `cmd:"" help:"Make NAME the active sidecar (the one used when no NAME is given)."`
	List    listCmd   `cmd:"" help:"List the sidecars; * marks the active one."`
	Remove  removeCmd `cmd:"" help:"Forget sidecar NAME and its state here; its workspace is left as it is."`
	Setup   setupCmd  `cmd:"" help:"Bootstrap the workspace: fetch origin there (or send a bundle), check out the baseline, apply the local changes."`
	Sync    syncCmd   `cmd:"" help:"Make the workspace equal the work tree; bootstraps again by itself when the baseline is stale."`
	Status  statusCmd `cmd:"" help:"Show the baseline, the last sync, whether the workspace is in sync, and the last error."`
	Exec    execCmd   `cmd:"" help:"Sync, then run CMD in the workspace and exit with its status: git sidecar exec [NAME] -- CMD..."`
	Watch   watchCmd  `cmd:"" help:"Keep the workspace in sync as files are saved: one connection, a sync after every burst of changes, until Ctrl-C."`
	Hooks   hooksCmd  `cmd:"" help:"Install or remove the git hooks that sync after every commit, checkout, merge and rebase."`
	Hook    hookCmd   `cmd:"" hidden:"" help:"Entry point of the installed hooks."`
	Hold    holdCmd   `cmd:"" hidden:"" help:"Keep a connection to the workspace for sidecar.persist, shared with the other commands."`
	HelpCmd helpCmd   `cmd:"" name:"help" help:"Show the help of the tool or of one command (git keeps --help for itself)."`
}

// Main runs git-sidecar with the process's arguments and returns the exit
// status.
func Main() int {
	ctx, stop := signalContext(context.Background())
	defer stop()
	dir, err := os.Getwd()
	if err != nil {
		fmt.Fprintf(os.Stderr, "git sidecar: find the current folder: %v\n", err)
		return 1
	}
	return Run(ctx, dir, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
}

// Run is Main with its inputs spelled out, for tests.
func Run(ctx context.Context, dir string, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	a := &app{ctx: ctx, dir: dir, stdin: stdin, stdout: stdout, stderr: stderr}
	// Everything after the first `--` is exec's command, kept away from
	// kong so that it is passed on untouched.
	for i, arg := range args {
		if arg == "--" {
			a.tail, a.hasTail = args[i+1:], true
			args = args[:i]
			break
		}
	}
	var g grammar
	return cli.Run(&g, args, cli.Options{
		Name:        "git sidecar",
		Description: "Keep a workspace on another machine (or in another folder) identical to this work tree: tracked and untracked-not-ignored files, exec bits, symlinks, deletions.",
		Stdout:      stdout,
		Stderr:      stderr,
		Bind:        []any{a},
		Kong:        []kong.Option{kong.ConfigureHelp(kong.HelpOptions{Compact: true}), kong.Help(helpPrinter)},
		AfterParse: func(kctx *kong.Context) error {
			a.verbose = g.Verbose
			if a.hasTail && kctx.Command() != "exec" && !strings.HasPrefix(kctx.Command(), "exec ") {
				return fmt.Errorf("unexpected arguments after --: %q", a.tail)
			}
			return nil
		},
	})
}
