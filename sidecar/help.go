package sidecar

import (
	"fmt"
	"strings"

	"github.com/alecthomas/kong"

	"github.com/git-relay/git-relay/internal/cli"
)

// helpCmd is `git sidecar help [CMD]`. git takes `git sidecar --help`
// for itself (it opens the manual page), so help is a command too.
type helpCmd struct {
	Command []string `arg:"" optional:"" help:"The command to describe, e.g. exec or hooks install (default: all of them)."`
}

func (c *helpCmd) Run(kctx *kong.Context) error {
	ctx, err := kong.Trace(kctx.Kong, c.Command)
	if err != nil {
		return err
	}
	if ctx.Error != nil {
		return cli.Usage(fmt.Errorf("no command %q; `git sidecar help` lists them", strings.Join(c.Command, " ")))
	}
	return ctx.PrintUsage(false)
}

// usager is a command that spells out its usage line: kong's own shows
// positional arguments as <name>, and exec's command after `--` not at all.
type usager interface {
	usage() string
}

func (*addCmd) usage() string            { return "add NAME DEST" }
func (*useCmd) usage() string            { return "use NAME" }
func (*listCmd) usage() string           { return "list" }
func (*removeCmd) usage() string         { return "remove NAME" }
func (*setupCmd) usage() string          { return "setup [NAME] [flags]" }
func (*syncCmd) usage() string           { return "sync [NAME] [flags]" }
func (*statusCmd) usage() string         { return "status [NAME] [flags]" }
func (*execCmd) usage() string           { return "exec [NAME] [flags] -- CMD..." }
func (*hooksInstallCmd) usage() string   { return "hooks install" }
func (*hooksUninstallCmd) usage() string { return "hooks uninstall" }
func (*helpCmd) usage() string           { return "help [CMD...]" }

// helpPrinter is kong's help with our usage lines.
func helpPrinter(options kong.HelpOptions, ctx *kong.Context) error {
	if sel := ctx.Selected(); sel != nil && sel.Target.IsValid() && sel.Target.CanAddr() {
		if u, ok := sel.Target.Addr().Interface().(usager); ok {
			fmt.Fprintf(ctx.Stdout, "Usage: %s %s\n", ctx.Model.Name, u.usage())
			options.NoAppSummary = true
		}
	}
	return kong.DefaultHelpPrinter(options, ctx)
}

// The examples below are shown by help; go/doc formatting keeps the
// indented lines as they are.

func (*grammar) Help() string {
	return `Examples:

	git sidecar add dev me@devbox:src/project    # a workspace over SSH
	git sidecar setup                            # bootstrap it once
	git sidecar exec -- make test                # sync, then run there
	git sidecar hooks install                    # sync after every commit
	git sidecar status --exit-code               # 0 when in sync, 1 when not

"git sidecar help CMD" describes CMD.`
}

func (*addCmd) Help() string {
	return `Examples:

	git sidecar add dev me@devbox:src/project
	git sidecar add ci ssh://build@ci.example:2222/home/build/project
	git sidecar add here ../project-copy`
}

func (*execCmd) Help() string {
	return `Examples:

	git sidecar exec -- make test
	git sidecar exec dev -- go test ./...
	git sidecar exec -t -- bash                  # an interactive shell there
	git sidecar exec --env GOFLAGS=-race -- go test ./...`
}

func (*statusCmd) Help() string {
	return `With --exit-code the exit status says it: 0 when the workspace is in sync, 1 when it is not (or a sync is running), 2 when that cannot be told (an error).

Examples:

	git sidecar status
	git sidecar status --wait --exit-code && echo current`
}
