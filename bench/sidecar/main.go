// Command sidecar-bench times `git sidecar sync` against `rsync -a
// --delete` in the same run and to the same kind of target: a local
// folder, then (when sshd is installed) a folder behind a real sshd on
// loopback.
//
// On a generated 20,000-file tree it measures a one-file sync, then a
// sync after 400 changed files and a commit, then a one-file sync again,
// and the time git sidecar's hooks add to a commit. With `git sidecar
// watch` running, it times a saved file until its bytes are in the
// workspace, next to rsync of the same change.
// On a small repository with a 40 MiB binary it measures adding the file,
// changing one byte, a sync with no change, and deleting it, with the
// peak memory of the sidecar's processes (git-sidecar and every process
// it runs, on both sides). It prints times, bytes sent and the ratios the
// goals are set on. Run it with the built binaries on PATH (`make bench`).
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/git-relay/git-relay/internal/gitx"
	"github.com/git-relay/git-relay/internal/sshtest"
)

var (
	nFiles    = flag.Int("files", 20000, "files in the generated tree")
	nChanged  = flag.Int("changed", 400, "files changed before the commit")
	runs      = flag.Int("runs", 9, "one-file syncs per measurement (the median is reported)")
	keep      = flag.Bool("keep", false, "keep the temporary folder")
	onlyLocal = flag.Bool("local-only", false, "skip the SSH target")
	bigMiB    = flag.Int("big", 40, "size in MiB of the big binary (0 skips those rows)")
	watchRows = flag.Bool("watch", true, "measure git sidecar watch's latency (save -> workspace) too")
	bigRounds = flag.Int("big-rounds", 3, "rounds of add, one-byte change, no change and delete (medians are reported)")
	hookRuns  = flag.Int("hook-runs", 15, "spaced commits with and without the hooks (the medians are reported)")
	hookOnly  = flag.Bool("hook-only", false, "measure only the hook overhead per commit")
)

func main() {
	// The bench re-runs itself as a memory meter around the workspace's
	// git over SSH (see meter).
	if len(os.Args) > 2 && os.Args[1] == meterFlag {
		os.Exit(meter(os.Args[2], os.Args[3:]))
	}
	flag.Parse()
	if err := run(context.Background()); err != nil {
		fmt.Fprintf(os.Stderr, "bench/sidecar: %v\n", err)
		os.Exit(1)
	}
}

type bench struct {
	ctx  context.Context
	root string
	env  []string
	repo string
	git  gitx.Repo
	rng  *rand.Rand
	// counter makes every one-file change distinct.
	counter int
}

func run(ctx context.Context) error {
	for _, tool := range []string{"git-sidecar", "rsync", "git"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s is not on PATH (run `make bench`, which builds git-sidecar first, and install rsync)", tool)
		}
	}
	root, err := os.MkdirTemp("", "sidecar-bench-")
	if err != nil {
		return err
	}
	if *keep {
		fmt.Fprintf(os.Stderr, "keeping %s\n", root)
	} else {
		defer os.RemoveAll(root)
	}
	home := filepath.Join(root, "home")
	if err := os.MkdirAll(home, 0o755); err != nil {
		return err
	}
	b := &bench{
		ctx:  ctx,
		root: root,
		repo: filepath.Join(root, "repo"),
		rng:  rand.New(rand.NewPCG(1, 2)),
		env: []string{
			"HOME=" + home, "GIT_CONFIG_NOSYSTEM=1", "GIT_TERMINAL_PROMPT=0", "SSH_AUTH_SOCK=",
			"GIT_AUTHOR_NAME=Bench", "GIT_AUTHOR_EMAIL=bench@example.com",
			"GIT_COMMITTER_NAME=Bench", "GIT_COMMITTER_EMAIL=bench@example.com",
		},
	}
	b.git = gitx.Repo{Dir: b.repo, Env: b.env}

	start := time.Now()
	size, err := b.generate()
	if err != nil {
		return err
	}
	fmt.Printf("git sidecar vs rsync -a --delete: %d files, %.1f MB, generated and committed in %s; %d CPUs, load average %s\n\n",
		*nFiles, float64(size)/1e6, time.Since(start).Round(time.Millisecond), runtime.NumCPU(), loadAvg())

	targets := []target{{name: "local folder", dest: filepath.Join(root, "ws local"), rsyncDst: filepath.Join(root, "rsync local") + "/"}}
	if !*onlyLocal {
		t, stop, err := b.sshTarget(home)
		if err != nil {
			fmt.Printf("(skipping the SSH target: %v)\n\n", err)
		} else {
			defer stop()
			targets = append(targets, t)
		}
	}
	ok := true
	if *hookOnly {
		targets = targets[:1]
		if _, err := b.git.Run(b.ctx, "sidecar", "add", "t0", targets[0].dest); err != nil {
			return err
		}
		if _, _, err := b.sidecar("setup", "t0"); err != nil {
			return err
		}
	}
	for i, t := range targets {
		if *hookOnly {
			break
		}
		r, err := b.measure(t, fmt.Sprintf("t%d", i))
		if err != nil {
			return fmt.Errorf("%s: %w", t.name, err)
		}
		ok = r.print(t) && ok
		if *watchRows {
			wr, err := b.measureWatch(t, fmt.Sprintf("t%d", i))
			if err != nil {
				return fmt.Errorf("%s, watch: %w", t.name, err)
			}
			ok = wr.print(t) && ok
		}
	}
	// The hooks sync the local folder's sidecar in the background.
	h, err := b.measureHook("t0")
	if err != nil {
		return fmt.Errorf("hook overhead: %w", err)
	}
	ok = h.print(targets[0].name) && ok
	if *bigMiB > 0 && !*hookOnly {
		for i, t := range targets {
			r, err := b.measureBig(t, fmt.Sprintf("big%d", i))
			if err != nil {
				return fmt.Errorf("%s, big file: %w", t.name, err)
			}
			ok = r.print(t) && ok
		}
	}
	if !ok {
		fmt.Println("\nSOME GOALS WERE MISSED (see above).")
	}
	return nil
}

// target is where both tools write.
type target struct {
	name     string
	dest     string   // git sidecar DEST
	rsyncDst string   // rsync destination (with a trailing slash)
	rsyncSSH []string // -e argument for rsync over SSH
	// remoteHome is the sshd's HOME for its sessions ("" for the local
	// folder, whose processes are all ours).
	remoteHome string
}

func (b *bench) sshTarget(home string) (target, func(), error) {
	dir := filepath.Join(b.root, "sshd")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return target{}, nil, err
	}
	s, err := sshtest.New(dir, sshtest.Options{})
	if err != nil {
		return target{}, nil, err
	}
	if err := s.ClientConfig(home, "benchbox", true); err != nil {
		s.Close()
		return target{}, nil, err
	}
	ssh := fmt.Sprintf("ssh -F %s -o UserKnownHostsFile=%s -o BatchMode=yes -i %s",
		filepath.Join(home, ".ssh", "config"), filepath.Join(home, ".ssh", "known_hosts"), filepath.Join(home, ".ssh", "id_ed25519"))
	return target{
		name:       "over SSH (OpenSSH sshd on 127.0.0.1)",
		dest:       "benchbox:" + filepath.Join(b.root, "ws ssh"),
		rsyncDst:   "benchbox:" + filepath.Join(b.root, "rsync-ssh") + "/",
		rsyncSSH:   []string{"-e", ssh},
		remoteHome: s.RemoteHome,
	}, func() { s.Close() }, nil
}

// generate writes the tree, commits it and pushes it to a bare origin.
func (b *bench) generate() (int64, error) {
	origin := filepath.Join(b.root, "origin.git")
	if _, err := (gitx.Repo{Env: b.env}).Run(b.ctx, "init", "-q", "--bare", "-b", "main", origin); err != nil {
		return 0, err
	}
	if _, err := (gitx.Repo{Env: b.env}).Run(b.ctx, "init", "-q", "-b", "main", b.repo); err != nil {
		return 0, err
	}
	var total int64
	for i := range *nFiles {
		p := b.path(i)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return 0, err
		}
		content := b.content(i, 0)
		total += int64(len(content))
		if err := os.WriteFile(p, content, 0o644); err != nil {
			return 0, err
		}
	}
	for _, args := range [][]string{
		{"add", "-A"},
		{"commit", "-q", "-m", "generated tree"},
		{"remote", "add", "origin", origin},
		{"push", "-q", "origin", "main"},
	} {
		if _, err := b.git.Run(b.ctx, args...); err != nil {
			return 0, err
		}
	}
	return total, nil
}

// path spreads the files over 20 top folders of 25 folders each.
func (b *bench) path(i int) string {
	return filepath.Join(b.repo, fmt.Sprintf("pkg%02d", i%20), fmt.Sprintf("mod%02d", (i/20)%25), fmt.Sprintf("file%05d.go", i))
}

// content is 0.5–4 KB of source-like text.
func (b *bench) content(i, version int) []byte {
	var buf bytes.Buffer
	lines := 10 + (i*7919)%90
	fmt.Fprintf(&buf, "package pkg%02d\n\n// File %d, version %d.\n", i%20, i, version)
	for l := range lines {
		fmt.Fprintf(&buf, "func f%d_%d() int { return %d }\n", i, l, (i+l)*version+l)
	}
	return buf.Bytes()
}

func (b *bench) touchOne() error {
	b.counter++
	i := b.rng.IntN(*nFiles)
	f, err := os.OpenFile(b.path(i), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(f, "// edit %d\n", b.counter)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// result holds one target's figures.
type result struct {
	setup, rsyncFirst           time.Duration
	one, rsyncOne               []time.Duration
	oneBytes, rsyncOneBytes     int64
	many, rsyncMany             time.Duration
	manyBytes, rsyncManyBytes   int64
	after, rsyncAfter           []time.Duration
	afterBytes, rsyncAfterBytes int64
	setupBytes, rsyncFirstBytes int64
}

var bytesRE = regexp.MustCompile(`(\d+) bytes sent`)
var rsyncBytesRE = regexp.MustCompile(`Total bytes sent: ([\d,]+)`)

// sidecar runs `git sidecar args...` and returns its time and the bytes
// it says it sent.
func (b *bench) sidecar(args ...string) (time.Duration, int64, error) {
	r, err := b.sidecarIn(b.git, args...)
	return r.d, r.sent, err
}

// measured is one measured command.
type measured struct {
	d    time.Duration
	sent int64
}

// sidecarIn runs `git sidecar args...` in the repository g.
func (b *bench) sidecarIn(g gitx.Repo, args ...string) (measured, error) {
	var errb bytes.Buffer
	// git runs git-sidecar for `git sidecar`; it is run directly here, as
	// the memory meter does (git's own start, a few ms, is not counted).
	c := exec.CommandContext(b.ctx, "git-sidecar", args...)
	c.Dir = g.Dir
	c.Env = append(os.Environ(), g.Env...)
	c.Stderr = &errb
	start := time.Now()
	err := c.Run()
	r := measured{d: time.Since(start)}
	if err != nil {
		return r, fmt.Errorf("git sidecar %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(errb.String()))
	}
	m := bytesRE.FindStringSubmatch(errb.String())
	if m == nil {
		return r, fmt.Errorf("git sidecar %s printed no byte count: %q", strings.Join(args, " "), errb.String())
	}
	r.sent, _ = strconv.ParseInt(m[1], 10, 64)
	return r, nil
}

// rsync runs rsync -a --delete of the work tree (without .git) to t.
func (b *bench) rsync(t target) (time.Duration, int64, error) {
	return b.rsyncDir(b.repo, t.rsyncDst, t)
}

// rsyncDir runs rsync -a --delete of dir (without .git) to dst on t.
func (b *bench) rsyncDir(dir, dst string, t target) (time.Duration, int64, error) {
	args := append([]string{"-a", "--delete", "--stats", "--exclude=/.git"}, t.rsyncSSH...)
	args = append(args, dir+"/", dst)
	cmd := exec.CommandContext(b.ctx, "rsync", args...)
	cmd.Env = append(os.Environ(), b.env...)
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	start := time.Now()
	err := cmd.Run()
	d := time.Since(start)
	if err != nil {
		return 0, 0, fmt.Errorf("rsync: %w: %s", err, strings.TrimSpace(out.String()))
	}
	m := rsyncBytesRE.FindStringSubmatch(out.String())
	if m == nil {
		return d, 0, errors.New("rsync printed no byte count")
	}
	n, _ := strconv.ParseInt(strings.ReplaceAll(m[1], ",", ""), 10, 64)
	return d, n, nil
}

// oneFile changes one file and syncs it with both tools, runs times.
func (b *bench) oneFile(t target, name string) (sc, rs []time.Duration, scBytes, rsBytes int64, err error) {
	for i := range *runs {
		if err = b.touchOne(); err != nil {
			return
		}
		// Alternate the order so that neither tool always finds the
		// page cache warmed by the other.
		var d1, d2 time.Duration
		var n1, n2 int64
		if i%2 == 0 {
			if d1, n1, err = b.sidecar("sync", name); err != nil {
				return
			}
			if d2, n2, err = b.rsync(t); err != nil {
				return
			}
		} else {
			if d2, n2, err = b.rsync(t); err != nil {
				return
			}
			if d1, n1, err = b.sidecar("sync", name); err != nil {
				return
			}
		}
		sc, rs = append(sc, d1), append(rs, d2)
		scBytes, rsBytes = n1, n2
	}
	return
}

func (b *bench) measure(t target, name string) (*result, error) {
	r := &result{}
	var err error
	if _, err := b.git.Run(b.ctx, "sidecar", "add", name, t.dest); err != nil {
		return nil, err
	}
	if r.setup, r.setupBytes, err = b.sidecar("setup", name); err != nil {
		return nil, err
	}
	if r.rsyncFirst, r.rsyncFirstBytes, err = b.rsync(t); err != nil {
		return nil, err
	}
	// One unmeasured round each, so that both start warm.
	if _, _, _, _, err = b.oneFile(t, name); err != nil {
		return nil, err
	}
	if r.one, r.rsyncOne, r.oneBytes, r.rsyncOneBytes, err = b.oneFile(t, name); err != nil {
		return nil, err
	}
	// 400 files change and are committed.
	b.counter++
	for _, i := range b.rng.Perm(*nFiles)[:*nChanged] {
		if err := os.WriteFile(b.path(i), b.content(i, b.counter), 0o644); err != nil {
			return nil, err
		}
	}
	if _, err := b.git.Run(b.ctx, "commit", "-q", "-a", "-m", fmt.Sprintf("change %d files", *nChanged)); err != nil {
		return nil, err
	}
	if r.many, r.manyBytes, err = b.sidecar("sync", name); err != nil {
		return nil, err
	}
	if r.rsyncMany, r.rsyncManyBytes, err = b.rsync(t); err != nil {
		return nil, err
	}
	if r.after, r.rsyncAfter, r.afterBytes, r.rsyncAfterBytes, err = b.oneFile(t, name); err != nil {
		return nil, err
	}
	return r, nil
}

// loadAvg is the 1-minute load average, to judge how noisy the figures
// are.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	return strings.Fields(string(b))[0]
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

func ms(d time.Duration) string { return fmt.Sprintf("%.0f ms", float64(d.Microseconds())/1000) }

func kb(n int64) string {
	if n < 10000 {
		return fmt.Sprintf("%d B", n)
	}
	return fmt.Sprintf("%.1f kB", float64(n)/1000)
}

// print shows the figures and reports whether the goals were met.
func (r *result) print(t target) bool {
	fmt.Printf("== %s ==\n", t.name)
	fmt.Printf("%-34s %-22s %-22s %s\n", "", "git sidecar", "rsync -a --delete", "sidecar/rsync")
	row := func(label string, d1 time.Duration, n1 int64, d2 time.Duration, n2 int64) {
		fmt.Printf("%-34s %-22s %-22s %.2fx\n", label,
			fmt.Sprintf("%s, %s", ms(d1), kb(n1)), fmt.Sprintf("%s, %s", ms(d2), kb(n2)), float64(d1)/float64(d2))
	}
	row("setup / first full copy", r.setup, r.setupBytes, r.rsyncFirst, r.rsyncFirstBytes)
	one, rone := median(r.one), median(r.rsyncOne)
	row(fmt.Sprintf("one-file sync (median of %d)", len(r.one)), one, r.oneBytes, rone, r.rsyncOneBytes)
	row(fmt.Sprintf("%d files changed + commit", *nChanged), r.many, r.manyBytes, r.rsyncMany, r.rsyncManyBytes)
	after, rafter := median(r.after), median(r.rsyncAfter)
	row(fmt.Sprintf("one-file sync after (median of %d)", len(r.after)), after, r.afterBytes, rafter, r.rsyncAfterBytes)
	ok := true
	goal := func(met bool, text string) {
		mark := "met"
		if !met {
			mark, ok = "MISSED", false
		}
		fmt.Printf("goal %-6s %s\n", mark+":", text)
	}
	goal(one <= rone, fmt.Sprintf("one-file sync no slower than rsync: %s vs %s (%.2fx)", ms(one), ms(rone), float64(one)/float64(rone)))
	goal(float64(after) <= 1.5*float64(one), fmt.Sprintf("one-file sync after %d changed files <= 1.5x the first: %s vs %s (%.2fx)",
		*nChanged, ms(after), ms(one), float64(after)/float64(one)))
	if t.remoteHome != "" {
		fmt.Println("(each git sidecar command reuses the connection the previous one left open for sidecar.persist, as ssh's ControlPersist does; each rsync logs in)")
		goal(float64(one) <= 0.5*float64(rone), fmt.Sprintf("one-file sync over SSH <= 0.5x rsync over ssh: %s vs %s (%.2fx)", ms(one), ms(rone), float64(one)/float64(rone)))
	}
	fmt.Println()
	return ok
}
