// Command cluster is `make bench`'s cluster benchmark: six concurrent
// pushes, then six concurrent clones, of six distinct generated
// repositories (about 12 MiB of packed, mostly incompressible data each),
// through two git-relay-server instances sharing an S3 session store
// (versitygw on loopback) behind haproxy, against the same through one
// instance on the local folder store behind the same haproxy, side by
// side in one run. It prints the time of each side, the S3 side's ratio
// to the local side (goal: at most 1.3×), and each instance's peak memory
// (VmHWM of the server process, goal: at most 96 MiB), next to the goals.
//
// Each round does both sides, in alternating order, into fresh upstream
// repositories (file://, one folder per side), and the median of the
// rounds is reported.
//
// It needs git, git-relay-server and git-remote-relay on PATH (make bench
// builds them and puts them there), versitygw (internal/s3test.Install)
// and haproxy (apt-get install haproxy). Everything happens in a
// temporary folder with a private HOME.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/git-relay/git-relay/bench/internal/benchenv"
	"github.com/git-relay/git-relay/internal/clustertest"
	"github.com/git-relay/git-relay/internal/gitx"
	"github.com/git-relay/git-relay/internal/s3test"
)

// Goals from issue 13.
const (
	goalRatio     = 1.3
	goalServerMiB = 96
	concurrency   = 6
)

type options struct {
	keep      bool
	serverLog bool
	rounds    int
	size      int // bytes of data per repository
}

func main() {
	var o options
	flag.BoolVar(&o.keep, "keep", false, "keep the work folder (repositories, logs) and print where it is")
	flag.BoolVar(&o.serverLog, "server-v", false, "run the servers with -v (their logs, kept with -keep, then time each exchange's phases)")
	flag.IntVar(&o.rounds, "rounds", 3, "rounds of each comparison; the median time of each side is reported")
	flag.IntVar(&o.size, "mib", 12, "MiB of (mostly incompressible) data in each of the six repositories")
	flag.Parse()
	o.size <<= 20
	if o.rounds < 1 || o.size < 1<<20 {
		fmt.Fprintln(os.Stderr, "bench/cluster: want -rounds ≥ 1 and -mib ≥ 1")
		os.Exit(2)
	}
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "bench/cluster:", err)
		os.Exit(1)
	}
}

func run(o options) error {
	for _, bin := range []string{"git", "git-relay-server", "git-remote-relay"} {
		if _, err := exec.LookPath(bin); err != nil {
			return fmt.Errorf("%s is not on PATH: run `make bench`, which builds the binaries and puts them on PATH", bin)
		}
	}
	if _, err := s3test.Binary(); err != nil {
		return err
	}
	if _, err := clustertest.HAProxy(); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	work, err := os.MkdirTemp("", "git-relay-bench-cluster-")
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

	fmt.Printf("generating %d repositories of %d MiB each...\n", concurrency, o.size>>20)
	t0 := time.Now()
	var srcs []string
	var total int64
	for i := range concurrency {
		dir := filepath.Join(work, "src", strconv.Itoa(i))
		n, err := generate(ctx, dir, o.size, uint64(1000+i))
		if err != nil {
			return err
		}
		srcs = append(srcs, dir)
		total += n
	}
	fmt.Printf("%d repositories, %.1f MiB packed in all (generated in %.1fs)\n", concurrency, float64(total)/(1<<20), time.Since(t0).Seconds())

	keyFile := filepath.Join(work, "relay.key")
	if out, err := exec.CommandContext(ctx, "git-relay-server", "keygen", "-o", keyFile).CombinedOutput(); err != nil {
		return fmt.Errorf("git-relay-server keygen: %w: %s", err, out)
	}
	local, err := startSide(ctx, work, "local", 1, keyFile, nil, o.serverLog)
	if err != nil {
		return err
	}
	defer local.stop()
	s3, s3stop, err := s3test.Launch(filepath.Join(work, "versitygw"))
	if err != nil {
		return err
	}
	defer s3stop()
	shared, err := startSide(ctx, work, "s3", 2, keyFile, s3, o.serverLog)
	if err != nil {
		return err
	}
	defer shared.stop()
	fmt.Printf("local: 1 instance, folder store, behind haproxy %s\n", local.lb.URL)
	fmt.Printf("s3:    2 instances, store %s on versitygw %s, behind haproxy %s\n\n", s3.URL("bench"), s3.Endpoint, shared.lb.URL)

	sides := []*side{local, shared}
	for r := range o.rounds {
		order := sides
		if r%2 == 1 {
			order = []*side{shared, local}
		}
		fmt.Printf("round %d:", r+1)
		for _, s := range order {
			if err := s.round(ctx, r, srcs); err != nil {
				return fmt.Errorf("%s side, round %d: %w (logs under %s)", s.name, r+1, err, work)
			}
			fmt.Printf("  %s push %s, clone %s, again %s;", s.name, dur(s.push.took[r]), dur(s.clone.took[r]), dur(s.again.took[r]))
		}
		fmt.Println()
	}
	report(o, total, local, shared)
	var stopErrs []error
	for _, s := range sides {
		stopErrs = append(stopErrs, s.stop())
	}
	return errors.Join(stopErrs...)
}

// generate makes a repository of about size bytes: eight commits, each
// adding a random (incompressible) file and a little text, written with
// git fast-import. It returns the pack's size.
func generate(ctx context.Context, dir string, size int, seed uint64) (int64, error) {
	repo := gitx.Repo{Dir: dir}
	if _, err := (gitx.Repo{}).Run(ctx, "init", "-q", "-b", "master", dir); err != nil {
		return 0, err
	}
	pr, pw := io.Pipe()
	go func() {
		bw := bufio.NewWriterSize(pw, 1<<20)
		r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
		const commits = 8
		buf := make([]byte, size/commits)
		for c := range commits {
			for i := 0; i < len(buf); i += 8 {
				v := r.Uint64()
				for j := 0; j < 8 && i+j < len(buf); j++ {
					buf[i+j] = byte(v >> (8 * j))
				}
			}
			text := strings.Repeat(fmt.Sprintf("line %d of commit %d in repository %d\n", c, c, seed), 200)
			fmt.Fprintf(bw, "blob\nmark :%d\ndata %d\n", 3*c+1, len(buf))
			bw.Write(buf)
			fmt.Fprintf(bw, "\nblob\nmark :%d\ndata %d\n%s\n", 3*c+2, len(text), text)
			msg := fmt.Sprintf("commit %d", c)
			fmt.Fprintf(bw, "commit refs/heads/master\nmark :%d\ncommitter C O Mitter <committer@example.com> %d +0000\ndata %d\n%s\n",
				3*c+3, 1700000000+c*60, len(msg), msg)
			if c > 0 {
				fmt.Fprintf(bw, "from :%d\n", 3*c)
			}
			fmt.Fprintf(bw, "M 100644 :%d data/%02d.bin\nM 100644 :%d notes/%02d.txt\n\n", 3*c+1, c, 3*c+2, c)
		}
		bw.WriteString("done\n")
		pw.CloseWithError(bw.Flush())
	}()
	// Kept as a pack (not loose objects, as fast-import does below 100
	// objects), and compressed lightly: random data does not compress.
	cmd := repo.Command(ctx, "-c", "fastimport.unpackLimit=0", "-c", "pack.compression=1", "fast-import", "--quiet", "--done")
	cmd.Stdin = pr
	if err := cmd.Run(); err != nil {
		pr.CloseWithError(err)
		return 0, fmt.Errorf("generate %s: %w", dir, err)
	}
	out, err := repo.Run(ctx, "count-objects", "-v")
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(out, "\n") {
		if v, ok := strings.CutPrefix(line, "size-pack: "); ok {
			kib, err := strconv.ParseInt(v, 10, 64)
			return kib << 10, err
		}
	}
	return 0, errors.New("no size-pack in git count-objects -v")
}

// side is one set-up under test: its instances, their balancer, and the
// upstream folder it pushes into.
type side struct {
	name     string
	work     string
	upstream string
	inst     []*clustertest.Instance
	lb       *clustertest.Balancer
	env      []string // GIT_RELAY_URL for the clients
	s3PID    int      // versitygw, on the S3 side
	// What the six pushes, the six clones and the six clones again took.
	// The first clone of a repository through an instance whose mirror
	// has not seen its push fetches it from upstream first (mirrors are
	// per instance): a cost the S3 side pays and the single local
	// instance, whose mirror took every push, does not. Cloning again
	// shows the steady state.
	push, clone, again phaseStats
	stopped            bool
}

// phaseStats is what one kind of phase took, over the rounds.
type phaseStats struct {
	took    []time.Duration // wall time, per round
	peakKiB []int64         // each instance's largest VmHWM
	cpu     []time.Duration // each instance's CPU time (with its gits), summed
	s3CPU   time.Duration   // versitygw's CPU time, summed
}

// startSide starts n instances: on the S3 store when s3 is set, else on
// each one's folder store; and haproxy in front of them.
func startSide(ctx context.Context, work, name string, n int, keyFile string, s3 *s3test.Server, verbose bool) (*side, error) {
	bin, err := exec.LookPath("git-relay-server")
	if err != nil {
		return nil, err
	}
	s := &side{name: name, work: filepath.Join(work, name), upstream: filepath.Join(work, name, "upstream")}
	if err := os.MkdirAll(s.upstream, 0o755); err != nil {
		return nil, err
	}
	env := os.Environ()
	if s3 != nil {
		env = append(env, s3.Env()...)
	}
	var backends []clustertest.Backend
	for i := range n {
		iname := fmt.Sprintf("%s%d", name, i+1)
		args := []string{
			"--data-dir", filepath.Join(s.work, iname),
			"--key-file", keyFile,
			"--upstream", "file://" + s.upstream + "/{repo}.git",
		}
		if s3 != nil {
			args = append(args, "--store", s3.URL("bench"))
		}
		if verbose {
			args = append(args, "-v")
		}
		in, err := clustertest.Start(clustertest.Spec{Bin: bin, Name: iname, Args: args, Env: env, LogPath: filepath.Join(s.work, iname+".log")})
		if err != nil {
			s.stop()
			return nil, err
		}
		s.inst = append(s.inst, in)
		backends = append(backends, clustertest.Backend{Name: iname, Addr: in.Addr})
	}
	for _, p := range []*phaseStats{&s.push, &s.clone, &s.again} {
		p.peakKiB, p.cpu = make([]int64, n), make([]time.Duration, n)
	}
	if s3 != nil {
		s.s3PID = s3.PID
	}
	if s.lb, err = clustertest.StartHAProxy(filepath.Join(s.work, "lb"), backends); err != nil {
		s.stop()
		return nil, err
	}
	s.env = []string{"GIT_RELAY_URL=" + s.lb.URL + "/api/gr", "GIT_RELAY_KEY_FILE=" + keyFile}
	return s, nil
}

func (s *side) stop() error {
	if s.stopped {
		return nil
	}
	s.stopped = true
	if s.lb != nil {
		s.lb.Stop()
	}
	var errs []error
	for _, in := range s.inst {
		errs = append(errs, in.Stop())
	}
	return errors.Join(errs...)
}

// round pushes the six repositories at once into fresh upstream
// repositories, then clones them back at once.
func (s *side) round(ctx context.Context, r int, srcs []string) error {
	repo := func(i int) string { return fmt.Sprintf("bench/r%d-%d", r, i) }
	for i := range srcs {
		if _, err := (gitx.Repo{}).Run(ctx, "init", "-q", "--bare", "-b", "master", filepath.Join(s.upstream, repo(i)+".git")); err != nil {
			return err
		}
	}
	if err := s.phase(ctx, &s.push, len(srcs), func(i int) (string, []string) {
		return srcs[i], []string{"push", "-q", "relay::" + repo(i), "master"}
	}); err != nil {
		return fmt.Errorf("push: %w", err)
	}
	for i, src := range srcs {
		want, err := (gitx.Repo{Dir: src}).Run(ctx, "rev-parse", "master")
		if err != nil {
			return err
		}
		got, err := (gitx.Repo{GitDir: filepath.Join(s.upstream, repo(i)+".git")}).Run(ctx, "rev-parse", "master")
		if err != nil || got != want {
			return fmt.Errorf("upstream %s is at %q (%v), want %s", repo(i), got, err, want)
		}
	}
	for _, ps := range []*phaseStats{&s.clone, &s.again} {
		if err := s.clones(ctx, ps, repo, srcs); err != nil {
			return err
		}
	}
	return nil
}

// clones clones the six repositories at once, checks the clones and
// removes them.
func (s *side) clones(ctx context.Context, ps *phaseStats, repo func(int) string, srcs []string) error {
	clones := filepath.Join(s.work, "clones")
	if err := s.phase(ctx, ps, len(srcs), func(i int) (string, []string) {
		return "", []string{"clone", "-q", "--no-checkout", "relay::" + repo(i), filepath.Join(clones, strconv.Itoa(i))}
	}); err != nil {
		return fmt.Errorf("clone: %w", err)
	}
	for i, src := range srcs {
		want, _ := (gitx.Repo{Dir: src}).Run(ctx, "rev-parse", "master")
		got, err := (gitx.Repo{Dir: filepath.Join(clones, strconv.Itoa(i))}).Run(ctx, "rev-parse", "refs/remotes/origin/master")
		if err != nil || got != want {
			return fmt.Errorf("the clone of %s is at %q (%v), want %s", repo(i), got, err, want)
		}
	}
	return os.RemoveAll(clones)
}

// phase runs n git commands at once and records, in ps, the time from
// the start of the first to the end of the last, each instance's peak
// memory and CPU time, and versitygw's CPU time.
func (s *side) phase(ctx context.Context, ps *phaseStats, n int, cmd func(i int) (dir string, args []string)) error {
	s.idle(ctx)
	cpu0 := make([]time.Duration, len(s.inst))
	for i, in := range s.inst {
		if err := in.ResetPeak(); err != nil {
			return fmt.Errorf("reset %s's peak memory: %w", in.Name, err)
		}
		cpu0[i], _ = benchenv.CPUTime(in.PID())
	}
	var s3cpu0 time.Duration
	if s.s3PID != 0 {
		s3cpu0, _ = benchenv.CPUTime(s.s3PID)
	}
	errs := make([]error, n)
	var wg sync.WaitGroup
	start := time.Now()
	for i := range n {
		dir, args := cmd(i)
		wg.Go(func() {
			_, err := gitx.Repo{Dir: dir, Env: s.env}.Run(ctx, args...)
			if err != nil {
				errs[i] = fmt.Errorf("git %s: %w", strings.Join(args, " "), err)
			}
		})
	}
	wg.Wait()
	ps.took = append(ps.took, time.Since(start))
	// The mirrors' indexing after a push belongs to the push.
	s.idle(ctx)
	for i, in := range s.inst {
		if kib, err := in.PeakKiB(); err == nil {
			ps.peakKiB[i] = max(ps.peakKiB[i], kib)
		}
		if c, err := benchenv.CPUTime(in.PID()); err == nil {
			ps.cpu[i] += c - cpu0[i]
		}
	}
	if s.s3PID != 0 {
		if c, err := benchenv.CPUTime(s.s3PID); err == nil {
			ps.s3CPU += c - s3cpu0
		}
	}
	return errors.Join(errs...)
}

// idle waits (30 s at most) until no instance runs a git: after a push an
// instance indexes the pack into its mirror. Each phase starts on a quiet
// machine, so that neither side pays for work the other left behind.
func (s *side) idle(ctx context.Context) {
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) && ctx.Err() == nil && slices.ContainsFunc(s.inst, func(in *clustertest.Instance) bool { return benchenv.HasChildren(in.PID()) }) {
		time.Sleep(20 * time.Millisecond)
	}
}
