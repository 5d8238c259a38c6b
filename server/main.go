// Package server is the relay: the only machine that reaches the external
// git host. It authenticates every request with the shared key and runs
// exchanges its clients open: a push streams its sealed, chunked bundle,
// checked as it comes, into upstream's receive-pack as a compare-and-swap
// on the ids the client saw; a fetch tunnels git's protocol v2 to
// upload-pack on the server's mirror of upstream, which it keeps fresh
// and holding only what upstream serves. Exchanges live in a store (a
// folder, or S3-compatible storage shared by several instances).
package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/git-relay/git-relay/edge"
	"github.com/git-relay/git-relay/internal/cli"
	"github.com/git-relay/git-relay/internal/keyring"
	"github.com/git-relay/git-relay/internal/sched"
	"github.com/git-relay/git-relay/internal/store"
)

// Main runs git-relay-server with os.Args and returns the exit status.
func Main() int {
	return run(os.Args[1:], os.Stdout, os.Stderr)
}

type grammar struct {
	cli.Globals
	Keygen  keygenCmd  `cmd:"" help:"Print a new shared key (one line) for relay.keyFile and --key-file."`
	Serve   serveCmd   `cmd:"" help:"Run the relay server."`
	Edge    edgeCmd    `cmd:"" help:"Run the edge forwarder (what deploy/vercel ships) as a plain process in front of a relay server."`
	Version versionCmd `cmd:"" help:"Print the version."`
}

type keygenCmd struct {
	Output string `short:"o" type:"path" placeholder:"FILE" help:"Write the key to FILE, readable by its owner only (mode 0600), instead of printing it."`
}

func (c keygenCmd) Run(s *streams) error {
	k, err := keyring.Generate()
	if err != nil {
		return err
	}
	if c.Output != "" {
		if err := keyring.WriteFile(c.Output, k); err != nil {
			return err
		}
		fmt.Fprintf(s.Stderr, "wrote a new key (id %s) to %s, mode 0600; give the same file to every git-remote-relay (relay.keyFile)\n", k.ID, c.Output)
		return nil
	}
	_, err = fmt.Fprintln(s.Stdout, k.String())
	return err
}

type serveCmd struct {
	Listen        string        `default:"127.0.0.1:8080" help:"Address to listen on (host:port; port 0 picks a free one)."`
	DataDir       string        `required:"" type:"path" help:"Folder for upstream mirrors (and sessions, unless --store says otherwise)."`
	Store         string        `placeholder:"URL" help:"Where sessions live: a folder (default: DATA-DIR/sessions) or s3://BUCKET/PREFIX (with AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY), shared by several instances behind a load balancer."`
	KeyFile       string        `required:"" type:"existingfile" help:"Shared key file (one or more keys from 'git-relay-server keygen -o', one per line; mode 0600)."`
	Upstream      string        `default:"https://github.com/{repo}.git" help:"Upstream URL template; {repo} becomes owner/repo. file:// works too."`
	TokenFile     string        `type:"existingfile" help:"File holding the upstream token (default: $GITHUB_TOKEN)."`
	MaxBody       int64         `default:"4500000" help:"Largest request or response body in bytes."`
	AllowForce    bool          `help:"Allow forced pushes (non-fast-forward branch updates, tag moves)."`
	MaxPushSize   int64         `default:"4294967296" help:"Largest push bundle in bytes."`
	MaxRefs       int           `default:"1000000" help:"Most ref updates in one push."`
	MaxSessions   int           `default:"64" help:"Most unfinished exchanges per key."`
	MaxKeyBytes   int64         `default:"17179869184" help:"Most bytes the sessions of one key may hold."`
	MaxBytes      int64         `default:"68719476736" help:"Most bytes all sessions may hold."`
	Idle          time.Duration `default:"5m" help:"How long an unfinished exchange may sit untouched before it expires."`
	Keep          time.Duration `default:"1h" help:"How long a finished exchange is kept, for status queries and resumed downloads."`
	TLSCert       string        `type:"existingfile" help:"Serve HTTPS with this certificate (PEM)."`
	TLSKey        string        `type:"existingfile" help:"The private key of --tls-cert (PEM)."`
	MetricsListen string        `placeholder:"ADDR" help:"Serve Prometheus metrics at http://ADDR/metrics."`
	Instance      string        `help:"This instance's name among several sharing a store (default: host name and a random suffix; \"local\" with the folder store)."`
	Verbose       bool          `short:"v" help:"Log the timings of each exchange's phases."`
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
	// The server moves packs between git processes: its wake-ups, and
	// those of the git it runs, must not cut into each other's work
	// (sched.Batch).
	_ = sched.Batch()
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
	if (c.TLSCert == "") != (c.TLSKey == "") {
		return errors.New("--tls-cert and --tls-key go together")
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	st, instance, err := openStore(ctx, c.Store, c.DataDir)
	if err != nil {
		return err
	}
	if c.Instance != "" {
		instance = c.Instance
	}
	cfg := Config{
		Listen:        c.Listen,
		DataDir:       c.DataDir,
		Store:         st,
		Ring:          ring,
		Upstream:      c.Upstream,
		Token:         token,
		MaxBody:       c.MaxBody,
		AllowForce:    c.AllowForce,
		MaxPushSize:   c.MaxPushSize,
		MaxRefs:       c.MaxRefs,
		MaxSessions:   c.MaxSessions,
		MaxKeyBytes:   c.MaxKeyBytes,
		MaxBytes:      c.MaxBytes,
		Idle:          c.Idle,
		Keep:          c.Keep,
		TLSCert:       c.TLSCert,
		TLSKey:        c.TLSKey,
		MetricsListen: c.MetricsListen,
		Instance:      instance,
		Log:           s.Stderr,
		LogLevel:      logLevel(c.Verbose),
	}
	return Serve(ctx, cfg)
}

// openStore opens the session store named by --store. The default folder
// store is for one instance, so its instance name is fixed, and a restart
// takes up its own work at once; instances sharing S3 need names of their
// own (the host name and a random suffix, unless --instance says).
func openStore(ctx context.Context, url, dataDir string) (store.Store, string, error) {
	if url == "" {
		l, err := store.NewLocal(filepath.Join(dataDir, "sessions"))
		return l, "local", err
	}
	st, err := store.Open(ctx, url)
	if err != nil {
		return nil, "", fmt.Errorf("--store: %w", err)
	}
	if strings.HasPrefix(url, "s3://") {
		return st, "", nil
	}
	return st, "local", nil
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

// versionCmd prints the version, as --version does.
type versionCmd struct{}

func (versionCmd) Run(s *streams) error {
	_, err := fmt.Fprintln(s.Stdout, cli.VersionString())
	return err
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
