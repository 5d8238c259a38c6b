// Package server is the relay: the only machine that reaches the external
// git host. It authenticates every request with the shared key, takes
// pushes as sessions of sealed chunks, checks the bundle they carry, and
// streams its pack into upstream's receive-pack as a compare-and-swap on the
// ids the client saw. It also builds sealed bundles for fetches from a
// mirror of upstream that it keeps fresh.
package server

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"
	"time"

	"github.com/git-relay/git-relay/edge"
	"github.com/git-relay/git-relay/internal/cli"
	"github.com/git-relay/git-relay/internal/keyring"
)

// Main runs git-relay-server with os.Args and returns the exit status.
func Main() int {
	return run(os.Args[1:], os.Stdout, os.Stderr)
}

type grammar struct {
	cli.Globals
	Keygen keygenCmd `cmd:"" help:"Print a new shared key (one line) for relay.keyFile and --key-file."`
	Serve  serveCmd  `cmd:"" help:"Run the relay server."`
	Edge   edgeCmd   `cmd:"" help:"Run the edge forwarder (what deploy/vercel ships) as a plain process in front of a relay server."`
}

type keygenCmd struct{}

func (keygenCmd) Run(s *streams) error {
	k, err := keyring.Generate()
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(s.Stdout, k.String())
	return err
}

type serveCmd struct {
	Listen      string `default:"127.0.0.1:8080" help:"Address to listen on (host:port; port 0 picks a free one)."`
	DataDir     string `required:"" type:"path" help:"Folder for sessions and upstream mirrors."`
	KeyFile     string `required:"" type:"existingfile" help:"Shared key file (one or more keys from 'git-relay-server keygen', one per line)."`
	Upstream    string `default:"https://github.com/{repo}.git" help:"Upstream URL template; {repo} becomes owner/repo. file:// works too."`
	TokenFile   string `type:"existingfile" help:"File holding the upstream token (default: $GITHUB_TOKEN)."`
	MaxBody     int64  `default:"4500000" help:"Largest request or response body in bytes."`
	AllowForce  bool   `help:"Allow forced (non-fast-forward) pushes."`
	MaxPushSize int64  `default:"4294967296" help:"Largest push payload in bytes."`
	SessionTTL  string `default:"24h" help:"How long an unfinished session is kept."`
	MaxSessions int    `default:"64" help:"Most unfinished push sessions at once, per key."`
	Verbose     bool   `short:"v" help:"Log the timings of each push's phases."`
}

// softMemoryLimit is the heap size at which the server's garbage
// collector starts working harder. The server holds a few chunks of a few
// megabytes at a time whatever the repository's size; the limit keeps the
// garbage of chunks already answered from piling up beside them. GOMEMLIMIT
// overrides it.
const softMemoryLimit = 64 << 20

func (c *serveCmd) Run(s *streams) error {
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(softMemoryLimit)
	}
	token := os.Getenv("GITHUB_TOKEN")
	if c.TokenFile != "" {
		b, err := os.ReadFile(c.TokenFile)
		if err != nil {
			return fmt.Errorf("read token file: %w", err)
		}
		token = string(trimSpace(b))
	}
	ring, err := keyring.ReadFile(c.KeyFile)
	if err != nil {
		return err
	}
	cfg := Config{
		Listen:      c.Listen,
		DataDir:     c.DataDir,
		Ring:        ring,
		Upstream:    c.Upstream,
		Token:       token,
		MaxBody:     c.MaxBody,
		AllowForce:  c.AllowForce,
		MaxPushSize: c.MaxPushSize,
		SessionTTL:  c.SessionTTL,
		MaxSessions: c.MaxSessions,
		Log:         s.Stderr,
		LogLevel:    logLevel(c.Verbose),
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	return Serve(ctx, cfg)
}

type edgeCmd struct {
	Listen       string        `default:"127.0.0.1:8081" help:"Address to listen on (host:port; port 0 picks a free one)."`
	Upstream     string        `required:"" help:"The relay server's base URL (where it serves /api/gr/ and /healthz), such as http://127.0.0.1:8080."`
	MaxBody      int64         `default:"4500000" help:"Largest request or response body in bytes, as the serverless platform allows."`
	Timeout      time.Duration `default:"60s" help:"Longest exchange, as the platform's maximum function duration (long-polls must fit)."`
	ClientPrefix string        `default:"/api/game/" help:"Path prefix clients use."`
	ServerPrefix string        `default:"/api/gr/" help:"Path prefix of the relay server's API."`
}

func (c *edgeCmd) Run(s *streams) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	return edge.ListenAndServe(ctx, c.Listen, edge.Options{
		Upstream:     c.Upstream,
		ClientPrefix: c.ClientPrefix,
		ServerPrefix: c.ServerPrefix,
		MaxBody:      c.MaxBody,
		Timeout:      c.Timeout,
	}, s.Stderr)
}

func trimSpace(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == '\r' || b[len(b)-1] == ' ') {
		b = b[:len(b)-1]
	}
	return b
}

func run(args []string, stdout, stderr io.Writer) int {
	return cli.Run(&grammar{}, args, cli.Options{
		Name:        "git-relay-server",
		Description: "The git relay: takes sealed pushes from git-remote-relay to upstream, and serves fetches.",
		Stdout:      stdout,
		Stderr:      stderr,
		Bind:        []any{&streams{Stdout: stdout, Stderr: stderr}},
	})
}

// streams are the command's standard output and error, bound into every Run.
type streams struct{ Stdout, Stderr io.Writer }

func logLevel(verbose bool) slog.Level {
	if verbose {
		return slog.LevelDebug
	}
	return slog.LevelInfo
}
