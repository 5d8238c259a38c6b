// Command relay is `make bench`'s relay benchmark: it pushes one generated
// history (about 25 MiB packed, 300 commits, 2,000 files) straight into a
// bare repository with `git push file://…` and through the relay
// (git-remote-relay → edge proxy → git-relay-server → a file:// upstream),
// side by side in one run, then one small commit both ways, then clones it
// back both ways (git clone relay::… against git clone file://…), and
// prints the ratios and the peak memory of each side next to the
// project's goals. Each comparison runs a few rounds, direct then relay,
// and the median time of each side is reported.
//
// It needs git, git-relay-server and git-remote-relay on PATH (make bench
// builds them and puts them there). Everything happens in a temporary
// folder with a private HOME, so the user's git configuration plays no
// part.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

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

// Goals from the relay push issue (and the clone issue).
const (
	goalFirstPush  = 1.5
	goalOneCommit  = 3.0
	goalClone      = 1.5
	goalServerMiB  = 96
	goalClientMiB  = 32 // extra over the direct push's peak
	defaultRepo    = "bench/repo"
	historySeed    = 20240521
	oneCommitLines = 3
)

// showRounds prints every round (-v).
var showRounds bool

type options struct {
	keep    bool
	noProxy bool
	rounds  int
	noClone bool
}

func run() error {
	var o options
	flag.BoolVar(&o.keep, "keep", false, "keep the work folder (repositories, server log) and print where it is")
	flag.BoolVar(&o.noProxy, "no-proxy", false, "talk to the relay server directly instead of through the edge proxy")
	flag.IntVar(&o.rounds, "rounds", 5, "rounds of each comparison; the median time of each side is reported")
	flag.BoolVar(&o.noClone, "no-clone", false, "skip the clone comparison")
	flag.BoolVar(&showRounds, "v", false, "print every round's times, not only the medians")
	flag.Parse()
	if o.rounds < 1 {
		return fmt.Errorf("-rounds %d: want at least 1", o.rounds)
	}
	for _, bin := range []string{"git", "git-relay-server", "git-remote-relay"} {
		if _, err := exec.LookPath(bin); err != nil {
			return fmt.Errorf("%s is not on PATH: run `make bench`, which builds the binaries and puts them on PATH", bin)
		}
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	work, err := os.MkdirTemp("", "git-relay-bench-")
	if err != nil {
		return err
	}
	if o.keep {
		defer fmt.Printf("\nwork folder kept: %s\n", work)
	} else {
		defer os.RemoveAll(work)
	}
	if err := hermetic(work); err != nil {
		return err
	}
	b := &bench{o: o, work: work}
	return b.run(ctx)
}

// hermetic points every git the bench runs (and its children inherit the
// environment) at a private HOME with fixed identities.
func hermetic(work string) error {
	home := filepath.Join(work, "home")
	if err := os.MkdirAll(home, 0o755); err != nil {
		return err
	}
	for k, v := range map[string]string{
		"HOME":                home,
		"XDG_CONFIG_HOME":     filepath.Join(home, ".config"),
		"GIT_CONFIG_NOSYSTEM": "1",
		"GIT_TERMINAL_PROMPT": "0",
		"GIT_AUTHOR_NAME":     "A U Thor", "GIT_AUTHOR_EMAIL": "author@example.com",
		"GIT_COMMITTER_NAME": "C O Mitter", "GIT_COMMITTER_EMAIL": "committer@example.com",
	} {
		if err := os.Setenv(k, v); err != nil {
			return err
		}
	}
	return nil
}

type bench struct {
	o    options
	work string
	src  gitx.Repo // the developer's repository
	srv  *relayServer

	rows  []row
	notes []string
}

// row is one comparison: direct and relay, and the goal on their ratio.
type row struct {
	name           string
	direct, relay  measurement
	goal           float64
	serverPeakKiB  int64
	trafficUp      int64
	trafficDown    int64
	requests       int
	skipped        string
	checkClientRSS bool
}

func (b *bench) git(ctx context.Context, dir string, args ...string) (string, error) {
	return gitx.Repo{Dir: dir}.Run(ctx, args...)
}

func (b *bench) run(ctx context.Context) error {
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

	upstreams := filepath.Join(b.work, "upstream")
	directDir := directGitDir(b.work, 0)
	relayUp := filepath.Join(upstreams, repoName(0)+".git")
	for _, d := range []string{directDir, relayUp} {
		if _, err := b.git(ctx, "", "init", "-q", "--bare", "-b", "master", d); err != nil {
			return err
		}
	}
	b.srv, err = startRelay(ctx, b.work, upstreams, !b.o.noProxy)
	if err != nil {
		return err
	}
	serverStopped := false
	defer func() {
		if !serverStopped {
			b.srv.stop()
		}
	}()
	for _, kv := range [][2]string{{"relay.url", b.srv.base}, {"relay.keyFile", filepath.Join(b.work, "relay.key")}} {
		if _, err := b.git(ctx, "", "config", "--global", kv[0], kv[1]); err != nil {
			return err
		}
	}
	via := "through the edge proxy"
	if b.o.noProxy {
		via = "straight to the server"
	}
	fmt.Printf("relay: %s (%s), upstream file://%s/{repo}.git\n\n", b.srv.base, via, upstreams)

	relayURL := func(i int) string { return "relay::" + repoName(i) }
	directURL := func(i int) string { return "file://" + directGitDir(b.work, i) }
	rounds := b.o.rounds

	// The first push, the whole history, into fresh repositories each round.
	fmt.Printf("first push (%d rounds)...\n", rounds)
	var rs []row
	for i := range rounds {
		if i > 0 {
			for _, d := range []string{directGitDir(b.work, i), filepath.Join(upstreams, repoName(i)+".git")} {
				if _, err := b.git(ctx, "", "init", "-q", "--bare", "-b", "master", d); err != nil {
					return err
				}
			}
		}
		r, err := b.compare(ctx, "first push", goalFirstPush,
			[]string{"push", "-q", directURL(i), "master"},
			[]string{"push", "-q", relayURL(i), "master"})
		if err != nil {
			return err
		}
		if err := b.sameTip(ctx, "master", directGitDir(b.work, i), filepath.Join(upstreams, repoName(i)+".git")); err != nil {
			return err
		}
		rs = append(rs, r)
	}
	b.rows = append(b.rows, aggregate(rs, true))

	// One small commit at a time, on top of round 0's repositories.
	fmt.Printf("one-commit pushes (%d rounds)...\n", rounds)
	rs = nil
	for i := range rounds {
		if err := b.smallCommit(ctx, i); err != nil {
			return err
		}
		r, err := b.compare(ctx, "one-commit push", goalOneCommit,
			[]string{"push", "-q", directURL(0), "master"},
			[]string{"push", "-q", relayURL(0), "master"})
		if err != nil {
			return err
		}
		if err := b.sameTip(ctx, "master", directDir, relayUp); err != nil {
			return err
		}
		rs = append(rs, r)
	}
	b.rows = append(b.rows, aggregate(rs, true))

	// Clones back, both ways: git's own file:// transport from the
	// upstream repository against the relay. --no-checkout leaves out
	// writing the work tree, which is the same work both ways (and on a
	// slow disk the larger part of a clone), so the ratio is the
	// transports'.
	if b.o.noClone {
		b.rows = append(b.rows, row{name: "clone", skipped: "skipped (-no-clone)"})
	} else {
		fmt.Printf("clone (%d rounds)...\n", rounds)
		rs = nil
		for i := range rounds {
			direct := filepath.Join(b.work, fmt.Sprintf("clone-direct-%d", i))
			relay := filepath.Join(b.work, fmt.Sprintf("clone-relay-%d", i))
			r, err := b.compare(ctx, "clone", goalClone,
				[]string{"clone", "-q", "--no-checkout", "file://" + relayUp, direct},
				[]string{"clone", "-q", "--no-checkout", relayURL(0), relay})
			if err != nil {
				rs = nil
				b.rows = append(b.rows, row{name: "clone", skipped: "not available: " + firstLine(err.Error())})
				break
			}
			if err := b.sameClone(ctx, direct, relay); err != nil {
				return err
			}
			rs = append(rs, r)
			// Free the disk (and the page cache) for the next round.
			os.RemoveAll(direct)
			os.RemoveAll(relay)
		}
		if rs != nil {
			b.rows = append(b.rows, aggregate(rs, false))
		}
	}

	serverStopped = true
	treeKiB, err := b.srv.stop()
	if err != nil {
		b.notes = append(b.notes, fmt.Sprintf("the server did not stop cleanly on SIGTERM: %v", err))
	}
	if b.srv.proxy != nil {
		for _, v := range b.srv.proxy.Violations() {
			b.notes = append(b.notes, "edge proxy violation: "+v.String())
		}
	}
	b.report(treeKiB)
	return nil
}

// compare runs the direct and the relay command once each, direct first,
// and reads the server's peak RSS during the relay one.
func (b *bench) compare(ctx context.Context, name string, goal float64, direct, relay []string) (row, error) {
	r := row{name: name, goal: goal}
	var err error
	b.srv.idle(ctx)
	if r.direct, err = measure(ctx, b.src.Dir, direct...); err != nil {
		return r, fmt.Errorf("%s, direct: %w", name, err)
	}
	b.srv.idle(ctx)
	hwmOK := resetHWM(b.srv.pid()) == nil
	if b.srv.proxy != nil {
		b.srv.proxy.Reset()
	}
	if r.relay, err = measure(ctx, b.src.Dir, relay...); err != nil {
		return r, fmt.Errorf("%s, through the relay: %w (server log: %s)", name, err, b.srv.logPath)
	}
	if hwmOK {
		r.serverPeakKiB, _ = vmHWM(b.srv.pid())
	}
	if b.srv.proxy != nil {
		st := b.srv.proxy.Stats()
		r.trafficUp, r.trafficDown, r.requests = st.Up, st.Down, st.Requests
		// Scan what crossed now, off the clock; the report lists the
		// violations at the end.
		for _, v := range b.srv.proxy.TakeViolations() {
			b.notes = append(b.notes, "edge proxy violation: "+v.String())
		}
	}
	return r, nil
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

func (b *bench) sameClone(ctx context.Context, dirs ...string) error {
	var tips []string
	for _, d := range dirs {
		tip, err := b.git(ctx, d, "rev-parse", "refs/remotes/origin/master")
		if err != nil {
			return err
		}
		tips = append(tips, tip)
	}
	want, _ := b.git(ctx, b.src.Dir, "rev-parse", "master")
	if tips[0] != want || tips[1] != want {
		return fmt.Errorf("the clones are at %s (direct) and %s (relay), want %s", tips[0], tips[1], want)
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
	return 0, fmt.Errorf("no size-pack in git count-objects -v")
}

// aggregate sums up rounds of one comparison: the median time of each
// side (the machine may be shared, and a median shrugs off a neighbour's
// burst), the largest peak RSS of each side, and round 0's traffic.
func aggregate(rs []row, checkClientRSS bool) row {
	if showRounds {
		for _, r := range rs {
			fmt.Printf("  %s: direct %.0f ms, relay %.0f ms\n", r.name, r.direct.Seconds*1000, r.relay.Seconds*1000)
		}
	}
	out := rs[0]
	out.checkClientRSS = checkClientRSS
	out.direct.Seconds = medianOf(rs, func(r row) float64 { return r.direct.Seconds })
	out.relay.Seconds = medianOf(rs, func(r row) float64 { return r.relay.Seconds })
	for _, r := range rs {
		out.direct.MaxRSSKiB = max(out.direct.MaxRSSKiB, r.direct.MaxRSSKiB)
		out.relay.MaxRSSKiB = max(out.relay.MaxRSSKiB, r.relay.MaxRSSKiB)
		out.serverPeakKiB = max(out.serverPeakKiB, r.serverPeakKiB)
	}
	return out
}

func medianOf(rs []row, f func(row) float64) float64 {
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

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	if len(line) > 120 {
		line = line[:120] + "…"
	}
	return line
}
