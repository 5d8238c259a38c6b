// Package helper is git-remote-relay, the git remote helper behind
// relay:: URLs (see gitremote-helpers(7)). git runs it with the remote's
// name and address and talks to it over stdin/stdout; stdout carries only
// the protocol, everything meant for people goes to stderr.
//
// Push bundles what upstream lacks, seals it in chunks and uploads it to
// the relay server while git writes it; the server streams it into
// upstream's receive-pack as it comes. Fetch, clone and ls-remote tunnel
// git's own protocol version 2 to upload-pack on the server's mirror of
// upstream, sealed both ways (see connect.go).
package helper

import (
	"bufio"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/git-relay/git-relay/internal/cli"
	"github.com/git-relay/git-relay/internal/gitx"
	"github.com/git-relay/git-relay/internal/keyring"
	"github.com/git-relay/git-relay/internal/sched"
	"github.com/git-relay/git-relay/internal/wire"
)

const about = `git runs this helper for relay:: URLs; you don't run it yourself:

  git push relay::owner/repo master
  git clone relay::owner/repo
  git remote add gh relay::owner/repo
  git push relay::https://relay.example/api/gr/owner/repo master

Configuration (environment first, then remote.<name>.*, then relay.*):

  GIT_RELAY_URL       remote.<name>.relayUrl      relay.url       base URL of the relay API
  GIT_RELAY_KEY_FILE  remote.<name>.relayKeyFile  relay.keyFile   shared key file
                      remote.<name>.relayMaxBody  relay.maxBody   largest HTTP body (default 4500000)
                                                  relay.stallTimeout  give up after this long with nothing moving (60s)
                                                  http.sslCAInfo  CA bundle for an https:// relay
`

// grammar is how git runs the helper: with the remote's name and, unless
// the name is the address itself, the address.
type grammar struct {
	cli.Globals
	Remote  string `arg:"" help:"The remote's name, or its address for an anonymous remote."`
	Address string `arg:"" optional:"" help:"The address after relay:: (owner/repo, or a full https:// URL ending in owner/repo)."`
}

// Run speaks the remote helper protocol on stdin and stdout.
func (g *grammar) Run() error {
	addr := g.Address
	if addr == "" {
		addr = g.Remote
	}
	// The helper only moves bytes between git and the relay: its
	// wake-ups must not cut into the git it feeds (sched.Batch).
	_ = sched.Batch()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	h, err := newHelper(ctx, g.Remote, addr, os.Stderr)
	if err == nil {
		err = h.serve(ctx, os.Stdin, os.Stdout)
	}
	if err != nil {
		// git shows a helper's stderr as it is; this is git's own form
		// for a fatal error.
		fmt.Fprintf(os.Stderr, "fatal: relay: %s\n", cli.OneLine(err.Error()))
		return cli.Exit(128)
	}
	return nil
}

// Main runs the helper with os.Args and returns the exit status.
func Main() int {
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(softMemoryLimit)
	}
	return cli.Run(&grammar{}, os.Args[1:], cli.Options{
		Name:        "git-remote-relay",
		Description: about,
		Stdout:      os.Stdout,
		Stderr:      os.Stderr,
	})
}

// softMemoryLimit is the heap size at which the helper's garbage collector
// starts working harder. A transfer holds a few chunks of a few megabytes
// at a time whatever the repository's size; without a limit, the chunks
// already handed to git pile up as garbage beside them, and the helper
// would need twice what it holds. GOMEMLIMIT overrides it.
const softMemoryLimit = 32 << 20

// Helper is one run of the remote helper.
type Helper struct {
	repo   string // owner/repo
	remote string // the remote's name, or "" for an anonymous URL
	git    gitx.Repo
	client *wire.Client
	maxBdy int64
	ui     *ui

	// options from git
	dryRun      bool
	atomic      bool
	pushOptions []string
	cas         map[string]string

	refs *refList // upstream's refs, from the last list
	// upFirst says that the relay takes a push's first chunk with its
	// Open (wire.Status.UpFirst), as its answer to the list said.
	upFirst bool
	// have maps the object names a push's check looked up (upstream's
	// tips among them) to the ids this repository has for them.
	have   map[string]string
	config map[string]string
	// The gits that check looks names up with and that writes the
	// pack, started when git lists refs for a push: they start while
	// upstream is listed.
	lookup ahead[*gitx.Lookup]
	packer ahead[*packer]
}

// ahead is a git started before it is needed, for the first that needs
// it to take. One that failed to start is nil; its taker starts its own.
type ahead[T any] struct{ c chan T }

// start starts it with f, in the background, unless it is started
// already.
func (a *ahead[T]) start(f func() T) {
	if a.c != nil {
		return
	}
	c := make(chan T, 1)
	a.c = c
	go func() { c <- f() }()
}

// take waits for what start started and hands it over: the zero value
// when nothing was started or it failed to start.
func (a *ahead[T]) take() T {
	var v T
	if a.c != nil {
		v = <-a.c
		a.c = nil
	}
	return v
}

func newHelper(ctx context.Context, name, addr string, stderr io.Writer) (*Helper, error) {
	gitDir := os.Getenv("GIT_DIR")
	if gitDir == "" {
		gitDir = ".git"
	}
	abs, err := filepath.Abs(gitDir)
	if err != nil {
		return nil, err
	}
	// The user's `git -c` settings apply to the commands run on their
	// repository, and to the helper's own settings.
	h := &Helper{git: gitx.Repo{GitDir: abs, Env: gitx.ConfigEnv(os.Environ())}, cas: map[string]string{}, ui: newUI(stderr)}
	if err := h.loadConfig(ctx); err != nil {
		return nil, err
	}
	if name != addr && !strings.Contains(name, "::") && !strings.Contains(name, "/") {
		h.remote = name
	}
	base, repo, err := h.resolveAddress(ctx, addr)
	if err != nil {
		return nil, err
	}
	h.repo = repo
	keyFile := h.setting("GIT_RELAY_KEY_FILE", "relayKeyFile", "relay.keyFile", true)
	if keyFile == "" {
		return nil, errors.New("no relay key: set relay.keyFile (git config --global relay.keyFile ~/relay.key) or GIT_RELAY_KEY_FILE")
	}
	ring, err := keyring.ReadFile(keyFile)
	if err != nil {
		return nil, err
	}
	h.maxBdy = wire.DefaultMaxBody
	if s := h.setting("", "relayMaxBody", "relay.maxBody", false); s != "" {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil || n < 64<<10 {
			return nil, fmt.Errorf("relay.maxBody %q: expected a number of bytes, at least 65536", s)
		}
		h.maxBdy = n
	}
	caFile := os.Getenv("GIT_SSL_CAINFO")
	if caFile == "" {
		caFile = expandHome(h.config["http.sslcainfo"])
	}
	switch {
	case !strings.HasPrefix(base, "https://"):
		// Only TLS needs roots, and loading them (the system's and the
		// file's) costs tens of milliseconds at every start.
		caFile = ""
	case caFile == "":
		// The first handshake checks the relay's certificate against the
		// system's roots, which Go reads once, when first asked: 26-36 ms
		// on the machine the benchmarks run on, after the server's
		// certificate has come. Read now, they load while the helper
		// answers git and connects.
		warmRoots()
	}
	hc, err := wire.NewHTTPClient(caFile)
	if err != nil {
		return nil, err
	}
	var stall time.Duration
	if v := h.setting("", "relayStallTimeout", "relay.stallTimeout", false); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			return nil, fmt.Errorf("relay.stallTimeout %q: expected a duration such as 60s", v)
		}
		stall = d
	}
	h.client = &wire.Client{
		Stall:   stall,
		Base:    base,
		Key:     ring.Primary(),
		HTTP:    hc,
		MaxBody: h.maxBdy,
		Retries: 4,
		Waiting: func(what string, d time.Duration) {
			h.ui.warn("relay: still waiting for %s (nothing for %s)...", what, d.Round(time.Second))
		},
	}
	h.cleanResume()
	return h, nil
}

// warmRoots starts reading the system's certificate roots into the cache
// that every TLS handshake of this process uses, and returns at once.
var warmRoots = func() { go func() { _, _ = x509.SystemCertPool() }() }

// resolveAddress splits the address into the API base and owner/repo:
// either owner/repo with the base from configuration, or a full URL whose
// last two path segments are owner/repo.
func (h *Helper) resolveAddress(ctx context.Context, addr string) (string, string, error) {
	if strings.HasPrefix(addr, "http://") || strings.HasPrefix(addr, "https://") {
		u, err := url.Parse(addr)
		if err != nil {
			return "", "", fmt.Errorf("bad relay URL %q: %v", addr, err)
		}
		segs := strings.Split(strings.Trim(u.Path, "/"), "/")
		if len(segs) < 2 || segs[len(segs)-2] == "" {
			return "", "", fmt.Errorf("bad relay URL %q: the last two path segments must be owner/repo", addr)
		}
		repo := segs[len(segs)-2] + "/" + strings.TrimSuffix(segs[len(segs)-1], ".git")
		u.Path = "/" + strings.Join(segs[:len(segs)-2], "/")
		u.RawQuery, u.Fragment = "", ""
		return strings.TrimRight(u.String(), "/"), repo, validRepo(repo)
	}
	repo := strings.TrimSuffix(strings.Trim(addr, "/"), ".git")
	if err := validRepo(repo); err != nil {
		return "", "", err
	}
	base := h.setting("GIT_RELAY_URL", "relayUrl", "relay.url", false)
	if base == "" {
		return "", "", errors.New("no relay server configured: set relay.url (git config --global relay.url https://relay.example/api/gr) or GIT_RELAY_URL")
	}
	if u, err := url.Parse(base); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return "", "", fmt.Errorf("relay.url %q is not an http(s) URL", base)
	}
	return strings.TrimRight(base, "/"), repo, nil
}

func validRepo(repo string) error {
	owner, name, ok := strings.Cut(repo, "/")
	if !ok || owner == "" || name == "" || strings.Contains(name, "/") || strings.ContainsAny(repo, " \t\n\\:?*[") {
		return fmt.Errorf("bad relay address %q: expected owner/repo (as in relay::owner/repo)", repo)
	}
	return nil
}

// loadConfig reads git's configuration once; a helper run is short and
// every git process it starts costs time the user waits for.
func (h *Helper) loadConfig(ctx context.Context) error {
	out, err := h.git.Run(ctx, "config", "--list", "-z")
	if err != nil {
		var gerr *gitx.Error
		if errors.As(err, &gerr) && gerr.ExitCode == 1 {
			// No configuration file at all.
			h.config = map[string]string{}
			return nil
		}
		return fmt.Errorf("read git config: %w", err)
	}
	h.config = map[string]string{}
	for _, entry := range strings.Split(out, "\x00") {
		k, v, _ := strings.Cut(entry, "\n")
		if k != "" {
			// git prints keys with the section and variable names
			// lower-cased and the subsection as written; later entries win,
			// as with `git config --get`.
			h.config[k] = v
		}
	}
	return nil
}

// setting reads one setting: the environment variable, then the remote's
// own key, then the global key. Keys are matched as git does: section and
// variable names are case-insensitive, the remote's name is not.
func (h *Helper) setting(env, remoteKey, globalKey string, path bool) string {
	if env != "" {
		if v := os.Getenv(env); v != "" {
			return expandHome(v)
		}
	}
	v := ""
	if h.remote != "" {
		v = h.config["remote."+h.remote+"."+strings.ToLower(remoteKey)]
	}
	if v == "" {
		v = h.config[strings.ToLower(globalKey)]
	}
	if path {
		v = expandHome(v)
	}
	return v
}

func expandHome(p string) string {
	if p == "~" || strings.HasPrefix(p, "~/") {
		if home, err := os.UserHomeDir(); err == nil {
			return filepath.Join(home, strings.TrimPrefix(p[1:], "/"))
		}
	}
	return p
}

// serve runs the protocol loop.
func (h *Helper) serve(ctx context.Context, stdin io.Reader, stdout io.Writer) error {
	in := bufio.NewReader(stdin)
	// An answer goes to git in writes of answerWrite into a pipe of
	// 1 MiB: git's sideband reader and index-pack wake an eighth as often
	// as with io.Copy's 32 KiB into 64 KiB.
	if f, ok := stdout.(*os.File); ok {
		gitx.WidenPipe(f)
	}
	out := bufio.NewWriterSize(stdout, answerWrite)
	defer func() {
		if l := h.lookup.take(); l != nil {
			l.Close()
		}
		h.packer.take().close()
	}()
	for {
		line, err := in.ReadString('\n')
		if err == io.EOF && line == "" {
			return nil
		}
		if err != nil && err != io.EOF {
			return err
		}
		line = strings.TrimSuffix(line, "\n")
		cmd, arg, _ := strings.Cut(line, " ")
		switch cmd {
		case "":
			// A blank line ends the session.
			return nil
		case "capabilities":
			fmt.Fprint(out, "stateless-connect\npush\nfetch\noption\n\n")
		case "stateless-connect":
			if err := out.Flush(); err != nil {
				return err
			}
			// git takes the helper's stdin and stdout over for the
			// connection, until it closes stdin.
			return h.connect(ctx, arg, in, out)
		case "option":
			name, value, _ := strings.Cut(arg, " ")
			fmt.Fprintln(out, h.option(name, value))
		case "list":
			if arg == "for-push" {
				h.startLookup(ctx)
				h.startPacker(ctx)
			}
			refs, err := h.list(ctx, arg == "for-push")
			if err != nil {
				return err
			}
			h.writeList(out, refs, arg == "for-push")
		case "push":
			specs, err := readBatch(in, "push", arg)
			if err != nil {
				return err
			}
			results, err := h.push(ctx, specs)
			if err != nil {
				return err
			}
			for _, r := range results {
				fmt.Fprintln(out, r)
			}
			fmt.Fprintln(out)
		case "fetch":
			// git asks for the old fetch only when it is told to speak
			// protocol version 0 or 1.
			return errors.New("fetching through the relay needs git's protocol version 2 (git config --global protocol.version 2; the default since git 2.26)")
		default:
			return fmt.Errorf("unknown command %q from git", cmd)
		}
		if err := out.Flush(); err != nil {
			return err
		}
	}
}

// readBatch reads the rest of a batch of cmd lines (push or fetch), which
// ends with a blank line, and returns the arguments of every line. A
// batch that ends without its blank line is refused whole: git is gone
// (killed, or its side of the pipe closed), and the lines that came may
// be only part of what it meant to push.
func readBatch(in *bufio.Reader, cmd, first string) ([]string, error) {
	args := []string{first}
	for {
		l, err := in.ReadString('\n')
		if err == io.EOF {
			return nil, fmt.Errorf("git ended the %s batch without its blank line: nothing done", cmd)
		}
		if err != nil {
			return nil, fmt.Errorf("read the %s batch from git: %w", cmd, err)
		}
		l = strings.TrimSuffix(l, "\n")
		if l == "" {
			return args, nil
		}
		c, a, _ := strings.Cut(l, " ")
		if c != cmd {
			return nil, fmt.Errorf("unexpected %q in a %s batch", l, cmd)
		}
		args = append(args, a)
	}
}

func (h *Helper) option(name, value string) string {
	switch name {
	case "verbosity":
		n, err := strconv.Atoi(value)
		if err != nil {
			return "error bad verbosity"
		}
		h.ui.verbosity = n
	case "progress":
		h.ui.progress = value == "true"
	case "dry-run":
		h.dryRun = value == "true"
	case "atomic":
		h.atomic = value == "true"
	case "push-option":
		h.pushOptions = append(h.pushOptions, value)
	case "cas":
		// --force-with-lease: "<ref>:<expected id>" (git expands a lease
		// without a value to the remote-tracking ref before sending it).
		ref, want, ok := strings.Cut(value, ":")
		if !ok {
			return "error bad cas option"
		}
		h.cas[ref] = want
	case "followtags":
		// git computes the tags to follow and sends them as push lines.
	default:
		return "unsupported"
	}
	return "ok"
}

func (h *Helper) writeList(out io.Writer, refs *refList, forPush bool) {
	names := sortedKeys(refs.Refs)
	for _, n := range names {
		fmt.Fprintf(out, "%s %s\n", refs.Refs[n], n)
	}
	// A push sees what receive-pack advertises, which has no HEAD: with
	// one, `git push --mirror` would try to delete it.
	if !forPush && refs.Head != "" && refs.Refs[refs.Head] != "" {
		fmt.Fprintf(out, "@%s HEAD\n", refs.Head)
	}
	fmt.Fprintln(out)
}

// explain turns transport errors into one line that names the fix.
func (h *Helper) explain(err error) error {
	var api *wire.APIError
	switch {
	case errors.As(err, &api):
		if strings.HasPrefix(err.Error(), h.repo+": ") {
			return err
		}
		return fmt.Errorf("%s: %w", h.repo, err)
	case errors.Is(err, wire.ErrUnreachable) && !strings.Contains(err.Error(), "check relay.url"):
		return fmt.Errorf("%w (check relay.url and that git-relay-server is running)", err)
	}
	return err
}
