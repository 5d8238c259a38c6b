// Command relay is `make bench`'s relay benchmark. It runs git straight
// against a bare repository and through the relay (git-remote-relay →
// edge proxy → git-relay-server → upstream), side by side in one run,
// direct then relay, several rounds each, and prints the median time of
// each side, their ratio and the peak memory next to the project's goals:
//
//   - push: the first push of a generated history (about 25 MiB packed,
//     300 commits, 2,000 files) into a fresh upstream;
//   - one-commit: a push of one small commit on top of it;
//   - clone and clone-checkout: a clone of it, without and with the
//     checkout of the work tree (see cloneCase for what a user waits for);
//   - clone-cold: the same clone from a relay that has no mirror of the
//     repository yet (information);
//   - tags: a push of 1,000 new tags on commits upstream already has: the
//     relay's overhead per ref;
//   - jq: jq's real history, every branch and tag, pushed with --mirror
//     and cloned back with --mirror;
//   - wan: the first push over shaped links (50 Mbit/s, 40 ms each way):
//     the upload leg alone, the upstream leg alone, and both, which
//     cut-through should overlap;
//   - flood: the server's peak memory under 200 unauthenticated 4.5 MB
//     bodies at once.
//
// -only NAME[,NAME] runs some of them. It needs git, git-relay-server and
// git-remote-relay on PATH (make bench builds them and puts them there).
// Everything happens in a temporary folder with a private HOME, so the
// user's git configuration plays no part.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/git-relay/git-relay/bench/internal/benchenv"
	"github.com/git-relay/git-relay/internal/gitx"
)

func main() {
	if os.Getenv(childEnv) == "1" {
		os.Exit(childMain())
	}
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "bench/relay:", err)
		os.Exit(1)
	}
}

// Goals, from the cut-through issue (push, clone, one commit, WAN,
// memory), the complete-remote issue (jq, per-ref overhead) and the
// hardening issue (the flood).
const (
	goalFirstPush  = 1.2 // × direct
	goalOneCommit  = 2.0 // × direct
	goalClone      = 1.2 // × direct, with and without checkout
	goalJQ         = 1.3 // × direct, push and clone
	goalTagsSecs   = 1.0 // relay − direct, for numTags refs
	goalWAN        = 1.15
	goalServerMiB  = 96
	goalClientMiB  = 32 // extra over the direct command's peak
	goalFloodMiB   = 128
	defaultRepo    = "bench/repo"
	historySeed    = 20240521
	oneCommitLines = 3
	numTags        = 1000
)

// cases are the rows' groups, in the order they run; -only picks some.
var cases = []string{"push", "one-commit", "clone", "clone-checkout", "clone-cold", "tags", "jq", "wan", "flood"}

// showRounds prints every round (-v).
var showRounds bool

type options struct {
	keep      bool
	noProxy   bool
	rounds    int
	wanRounds int
	only      map[string]bool
	config    []string // KEY=VALUE, set in the bench's global git config
}

func (o options) runs(name string) bool { return o.only == nil || o.only[name] }

func run() error {
	var o options
	var only string
	flag.BoolVar(&o.keep, "keep", false, "keep the work folder (repositories, server logs) and print where it is")
	flag.BoolVar(&o.noProxy, "no-proxy", false, "talk to the relay server directly instead of through the edge proxy (not the WAN case)")
	flag.IntVar(&o.rounds, "rounds", 5, "rounds of each comparison; the median time of each side is reported")
	flag.IntVar(&o.wanRounds, "wan-rounds", 5, "rounds of the WAN case (each moves the history three times over 50 Mbit/s)")
	flag.StringVar(&only, "only", "", "run only these rows, comma-separated: "+strings.Join(cases, ", "))
	flag.BoolVar(&showRounds, "v", false, "print every round's times, not only the medians")
	flag.Func("git-config", "`KEY=VALUE` to set in the bench's git configuration, for experiments such as relay.maxBody=1000000 (repeatable)", func(v string) error {
		if k, _, ok := strings.Cut(v, "="); !ok || k == "" {
			return fmt.Errorf("want KEY=VALUE, not %q", v)
		}
		o.config = append(o.config, v)
		return nil
	})
	flag.Parse()
	if o.rounds < 1 || o.wanRounds < 1 {
		return fmt.Errorf("-rounds %d, -wan-rounds %d: want at least 1", o.rounds, o.wanRounds)
	}
	if only != "" {
		o.only = map[string]bool{}
		for _, n := range strings.Split(only, ",") {
			n = strings.TrimSpace(n)
			if !slices.Contains(cases, n) {
				return fmt.Errorf("-only %q: no row %q; the rows are %s", only, n, strings.Join(cases, ", "))
			}
			o.only[n] = true
		}
	}
	for _, bin := range []string{"git", "git-relay-server", "git-remote-relay"} {
		if _, err := exec.LookPath(bin); err != nil {
			return fmt.Errorf("%s is not on PATH: run `make bench`, which builds the binaries and puts them on PATH", bin)
		}
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	// The real history sits beside the checkout; find it before HOME moves.
	jqBundle, jqMissing := findJQBundle()

	work, err := os.MkdirTemp("", "git-relay-bench-")
	if err != nil {
		return err
	}
	if o.keep {
		defer fmt.Printf("\nwork folder kept: %s\n", work)
	} else {
		defer os.RemoveAll(work)
	}
	if err := benchenv.Hermetic(work); err != nil {
		return err
	}
	b := &bench{o: o, work: work, jqBundle: jqBundle, jqMissing: jqMissing}
	return b.run(ctx)
}

type bench struct {
	o         options
	work      string
	upstreams string    // the main relay's file:// upstream folder
	keyPath   string    // the key every relay server and client shares
	src       gitx.Repo // the developer's repository
	srv       *relayServer
	servers   []*relayServer // every server started, to stop and check
	based     bool           // round 0's repositories hold the history
	jqBundle  string
	jqMissing string // why the jq rows are skipped, if they are

	rows   []row
	wan    *wanResult
	flood  *floodResult
	failed []string
	notes  []string
	// stoppedClean names the servers that exited cleanly on SIGTERM.
	stoppedClean []string
}

// row is one comparison: direct and relay, and the goal on their ratio
// (or on their difference).
type row struct {
	name          string
	direct, relay measurement
	goal          float64
	overhead      bool // the goal is on relay − direct, in seconds
	info          bool // no goal: the row explains another
	rounds        int
	serverPeakKiB int64
	// serverCPU and edgeCPU are the CPU seconds the relay server (with
	// the git it ran and reaped) and the in-process edge proxy used while
	// the relay command ran.
	serverCPU, edgeCPU float64
	trafficUp          int64
	trafficDown        int64
	requests           int
	skipped            string
}

// side is one command of a comparison: git args run in dir with env.
type side struct {
	dir  string
	env  []string
	args []string
}

func (b *bench) git(ctx context.Context, dir string, args ...string) (string, error) {
	return gitx.Repo{Dir: dir}.Run(ctx, args...)
}

func (b *bench) run(ctx context.Context) error {
	began := time.Now()
	srcDir := filepath.Join(b.work, "src")
	b.src = gitx.Repo{Dir: srcDir}
	if _, err := b.git(ctx, "", "init", "-q", "-b", "master", srcDir); err != nil {
		return err
	}
	fmt.Printf("generating the history (%d commits, %d files)...\n", numCommits, numText+numBinary)
	t0 := time.Now()
	if err := generateHistory(ctx, b.src, historySeed); err != nil {
		return err
	}
	packKiB, err := b.packSize(ctx)
	if err != nil {
		return err
	}
	files, _ := b.git(ctx, srcDir, "ls-files")
	fmt.Printf("history: %d commits, %d files, %.1f MiB packed (generated in %.1fs)\n",
		numCommits, len(strings.Split(files, "\n")), float64(packKiB)/1024, time.Since(t0).Seconds())

	b.upstreams = filepath.Join(b.work, "upstream")
	b.keyPath = filepath.Join(b.work, "relay.key")
	if err := newKey(ctx, b.keyPath); err != nil {
		return err
	}
	for _, d := range []string{directGitDir(b.work, 0), b.relayUp(repoName(0))} {
		if err := b.initBare(ctx, d); err != nil {
			return err
		}
	}
	b.srv, err = b.startServer(serverConfig{name: "main", upstream: "file://" + b.upstreams + "/{repo}.git", proxy: !b.o.noProxy})
	if err != nil {
		return err
	}
	defer b.stopServers()
	settings := [][2]string{{"relay.url", b.srv.base}, {"relay.keyFile", b.keyPath}}
	for _, kv := range b.o.config {
		k, v, _ := strings.Cut(kv, "=")
		settings = append(settings, [2]string{k, v})
		fmt.Printf("git config: %s=%s\n", k, v)
	}
	for _, kv := range settings {
		if _, err := b.git(ctx, "", "config", "--global", kv[0], kv[1]); err != nil {
			return err
		}
	}
	via := "through the edge proxy"
	if b.o.noProxy {
		via = "straight to the server"
	}
	fmt.Printf("relay: %s (%s), upstream file://%s/{repo}.git\n", b.srv.base, via, b.upstreams)
	fmt.Printf("machine: %d CPUs, load average %s\n\n", runtime.NumCPU(), loadAverage())

	steps := []struct {
		name string
		run  func(context.Context) error
	}{
		{"push", b.firstPush},
		{"one-commit", b.oneCommit},
		{"clone", func(ctx context.Context) error { return b.cloneCase(ctx, false) }},
		{"clone-checkout", func(ctx context.Context) error { return b.cloneCase(ctx, true) }},
		{"clone-cold", b.coldClone},
		// Tags after the clones: the clones would fetch them too.
		{"tags", b.tagsCase},
		{"jq", b.jqCase},
		{"wan", b.wanCase},
		{"flood", b.floodCase},
	}
	for _, s := range steps {
		if !b.o.runs(s.name) {
			continue
		}
		if err := s.run(ctx); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			// One broken row must not hide the others.
			b.failed = append(b.failed, fmt.Sprintf("%s: %v", s.name, err))
			fmt.Printf("%s FAILED: %v\n", s.name, err)
		}
	}

	treeKiB := b.stopServers()
	b.report(treeKiB)
	fmt.Printf("bench/relay took %s (load average now %s)\n", time.Since(began).Round(time.Second), loadAverage())
	if len(b.failed) > 0 {
		return fmt.Errorf("%d row(s) failed: %s", len(b.failed), strings.Join(b.failed, "; "))
	}
	return nil
}

// startServer starts a relay server with the shared key and remembers it.
func (b *bench) startServer(c serverConfig) (*relayServer, error) {
	c.keyPath = b.keyPath
	s, err := startRelay(b.work, c)
	if err != nil {
		return nil, err
	}
	b.servers = append(b.servers, s)
	return s, nil
}

// stopServers stops every server still running and returns the main
// server's peak RSS including its git children.
func (b *bench) stopServers() int64 {
	var tree int64
	for len(b.servers) > 0 {
		s := b.servers[0]
		kib := b.stopServer(s)
		if s == b.srv {
			tree = kib
		}
	}
	return tree
}

// stopServer stops s with SIGTERM, notes whether it stopped cleanly and
// every violation its proxy saw, and returns the peak RSS of its process
// tree.
func (b *bench) stopServer(s *relayServer) int64 {
	b.servers = slices.DeleteFunc(b.servers, func(x *relayServer) bool { return x == s })
	kib, err := s.stop()
	if err != nil {
		b.notes = append(b.notes, fmt.Sprintf("server %s did not stop cleanly on SIGTERM: %v", s.name, err))
	} else {
		b.stoppedClean = append(b.stoppedClean, s.name)
	}
	if s.proxy != nil {
		for _, v := range s.proxy.Violations() {
			b.notes = append(b.notes, fmt.Sprintf("edge proxy violation (server %s): %s", s.name, v))
		}
	}
	return kib
}

// compare runs the direct and the relay command once each, each on a
// quiet server, and reads the server's peak RSS and the proxy's traffic
// during the relay one. Even rounds run direct first, odd rounds relay
// first: whichever command runs first after a round's clean-up pays for
// it (removing the last round's clones leaves the disk busy: by hand, on a
// busy machine, the first clone after it took 6.3–6.7 s where the others
// took 3.4–3.9 s, and the direct clone always came first), and the second
// finds the first one's files in the page cache. Alternating gives each
// side both positions.
func (b *bench) compare(ctx context.Context, srv *relayServer, round int, name string, direct, relay side) (row, error) {
	r := row{name: name}
	runDirect := func() error {
		srv.idle(ctx)
		var err error
		if r.direct, err = measureEnv(ctx, direct.env, direct.dir, direct.args...); err != nil {
			return fmt.Errorf("%s, direct: %w", name, err)
		}
		return nil
	}
	runRelay := func() error {
		if srv.proxy != nil {
			// The proxy keeps a copy of what crosses it and scans it
			// afterwards: megabytes of fresh memory the bench process
			// fills while the command runs, which a real edge does not.
			// The first round of each case is watched (and its traffic
			// reported); the others are timed without the copies.
			srv.proxy.SetWatch(round == 0)
		}
		var err error
		if r.relay, r.serverPeakKiB, r.serverCPU, r.edgeCPU, err = b.timeRelay(ctx, srv, relay); err != nil {
			return fmt.Errorf("%s, through the relay: %w (server log: %s)", name, err, srv.logPath)
		}
		if srv.proxy != nil {
			st := srv.proxy.Stats()
			r.trafficUp, r.trafficDown, r.requests = st.Up, st.Down, st.Requests
			// Scan what crossed now, off the clock; the report lists the
			// violations at the end.
			for _, v := range srv.proxy.TakeViolations() {
				b.notes = append(b.notes, fmt.Sprintf("edge proxy violation (server %s): %s", srv.name, v))
			}
		}
		return nil
	}
	order := []func() error{runDirect, runRelay}
	if round%2 == 1 {
		order[0], order[1] = order[1], order[0]
	}
	for _, f := range order {
		if err := f(); err != nil {
			return r, err
		}
	}
	return r, nil
}

// timeRelay runs one command through srv on a quiet server and returns
// its measurement, and the server process's peak RSS, its CPU and the
// edge proxy's meanwhile.
func (b *bench) timeRelay(ctx context.Context, srv *relayServer, s side) (m measurement, peakKiB int64, serverCPU, edgeCPU float64, err error) {
	srv.idle(ctx)
	hwmOK := resetHWM(srv.pid()) == nil
	if srv.proxy != nil {
		srv.proxy.Reset()
	}
	srv0, srvErr := benchenv.CPUTime(srv.pid())
	self0 := selfCPU()
	m, err = measureEnv(ctx, s.env, s.dir, s.args...)
	if err != nil {
		return m, 0, 0, 0, err
	}
	if srv.proxy != nil {
		edgeCPU = selfCPU() - self0
	}
	if srv1, err := benchenv.CPUTime(srv.pid()); err == nil && srvErr == nil {
		serverCPU = (srv1 - srv0).Seconds()
	}
	if hwmOK {
		peakKiB, _ = vmHWM(srv.pid())
	}
	return m, peakKiB, serverCPU, edgeCPU, nil
}

// ensureBase gives round 0's repositories (direct and behind the relay)
// the history, untimed, for the rows that build on it when -only left out
// the first push.
func (b *bench) ensureBase(ctx context.Context) error {
	if b.based {
		return nil
	}
	if _, err := b.git(ctx, b.src.Dir, "push", "-q", "file://"+directGitDir(b.work, 0), "master"); err != nil {
		return err
	}
	if _, err := b.git(ctx, b.src.Dir, "push", "-q", "relay::"+repoName(0), "master"); err != nil {
		return err
	}
	b.based = true
	return nil
}

// initBare makes an empty upstream repository. Every one checks the
// objects pushed to it (receive.fsckObjects), as GitHub does: the relay
// asks a file:// upstream for that check whatever its configuration
// (internal/upstream), so the direct side's upstream does it too, and both
// sides push to the same kind of upstream.
func (b *bench) initBare(ctx context.Context, dir string) error {
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	if _, err := b.git(ctx, "", "init", "-q", "--bare", "-b", "master", dir); err != nil {
		return err
	}
	_, err := b.git(ctx, "", "--git-dir="+dir, "config", "receive.fsckObjects", "true")
	return err
}

// relayUp is the main relay's upstream repository for a relay repo name.
func (b *bench) relayUp(name string) string {
	return filepath.Join(b.upstreams, name+".git")
}

// smallCommit changes a few lines of one source file and commits.
func (b *bench) smallCommit(ctx context.Context, i int) error {
	path := filepath.Join(b.src.Dir, "src", "pkg00", "file0000.go")
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	for j := range oneCommitLines {
		fmt.Fprintf(f, "\t// round %d, line %d: a small change\n", i, j)
	}
	if err := f.Close(); err != nil {
		return err
	}
	if _, err := b.git(ctx, b.src.Dir, "commit", "-q", "-a", "-m", "Small change "+strconv.Itoa(i)); err != nil {
		return err
	}
	return nil
}

// sameTip checks that every repository has ref where the source has it.
func (b *bench) sameTip(ctx context.Context, ref string, gitDirs ...string) error {
	want, err := b.git(ctx, b.src.Dir, "rev-parse", ref)
	if err != nil {
		return err
	}
	for _, d := range gitDirs {
		got, err := gitx.Repo{GitDir: d}.Run(ctx, "rev-parse", ref)
		if err != nil {
			return err
		}
		if got != want {
			return fmt.Errorf("%s in %s is %s, want %s", ref, d, got, want)
		}
	}
	return nil
}

// sameRefs checks that every repository has exactly the refs (under
// prefix) of the first, at the same ids.
func sameRefs(ctx context.Context, prefix string, gitDirs ...string) error {
	var want string
	for i, d := range gitDirs {
		got, err := gitx.Repo{GitDir: d}.Run(ctx, "for-each-ref", "--format=%(refname) %(objectname)", prefix)
		if err != nil {
			return err
		}
		if i == 0 {
			if got == "" {
				return fmt.Errorf("no refs under %s in %s", prefix, d)
			}
			want = got
			continue
		}
		if got != want {
			return fmt.Errorf("the refs under %s in %s differ from %s (%d lines, want %d)", prefix, d, gitDirs[0], len(strings.Split(got, "\n")), len(strings.Split(want, "\n")))
		}
	}
	return nil
}

// packSize returns the size of the source repository's packs in KiB.
func (b *bench) packSize(ctx context.Context) (int64, error) {
	out, err := b.git(ctx, b.src.Dir, "count-objects", "-v")
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(out, "\n") {
		if v, ok := strings.CutPrefix(line, "size-pack: "); ok {
			return strconv.ParseInt(v, 10, 64)
		}
	}
	return 0, errors.New("no size-pack in git count-objects -v")
}

// aggregate sums up rounds of one comparison: the median time of each
// side (the machine may be shared, and a median shrugs off a neighbour's
// burst), the largest peak RSS of each side, and round 0's traffic.
func aggregate(rs []row, goal float64) row {
	if showRounds {
		for _, r := range rs {
			fmt.Printf("  %s: direct %.0f ms, relay %.0f ms\n", r.name, r.direct.Seconds*1000, r.relay.Seconds*1000)
		}
	}
	out := rs[0]
	out.goal = goal
	out.rounds = len(rs)
	out.direct.Seconds = median(rs, func(r row) float64 { return r.direct.Seconds })
	out.relay.Seconds = median(rs, func(r row) float64 { return r.relay.Seconds })
	out.direct.CPU = median(rs, func(r row) float64 { return r.direct.CPU })
	out.relay.CPU = median(rs, func(r row) float64 { return r.relay.CPU })
	out.serverCPU = median(rs, func(r row) float64 { return r.serverCPU })
	out.edgeCPU = median(rs, func(r row) float64 { return r.edgeCPU })
	for _, r := range rs {
		out.direct.MaxRSSKiB = max(out.direct.MaxRSSKiB, r.direct.MaxRSSKiB)
		out.relay.MaxRSSKiB = max(out.relay.MaxRSSKiB, r.relay.MaxRSSKiB)
		out.serverPeakKiB = max(out.serverPeakKiB, r.serverPeakKiB)
	}
	return out
}

func median[T any](rs []T, f func(T) float64) float64 {
	v := make([]float64, len(rs))
	for i, r := range rs {
		v[i] = f(r)
	}
	slices.Sort(v)
	if len(v)%2 == 1 {
		return v[len(v)/2]
	}
	return (v[len(v)/2-1] + v[len(v)/2]) / 2
}

// repoName is round i's repository behind the relay; directGitDir is
// round i's target of the direct push.
func repoName(i int) string {
	if i == 0 {
		return defaultRepo
	}
	return fmt.Sprintf("%s-%d", defaultRepo, i)
}

func directGitDir(work string, i int) string {
	return filepath.Join(work, fmt.Sprintf("direct-%d.git", i))
}

// findJQBundle finds ../shared/repos/jq.bundle beside the module root (the
// folder above the working directory that holds go.mod), or says why not.
func findJQBundle() (path, missing string) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err.Error()
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			break
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", "no go.mod above the working directory, so no ../shared/repos/jq.bundle beside the checkout"
		}
		dir = parent
	}
	path = filepath.Join(dir, "..", "shared", "repos", "jq.bundle")
	if _, err := os.Stat(path); err != nil {
		return "", fmt.Sprintf("%s is missing (the shared folder beside the checkout holds it)", filepath.Clean(path))
	}
	return filepath.Clean(path), ""
}

func loadAverage() string {
	raw, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(raw))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}
