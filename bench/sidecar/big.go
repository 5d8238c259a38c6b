package main

import (
	crand "crypto/rand"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/git-relay/git-relay/internal/gittest"
	"github.com/git-relay/git-relay/internal/gitx"
)

// bigResult holds the big-file figures of one target: medians over the
// rounds.
type bigResult struct {
	size                        int64
	add, rsyncAdd               []measured
	change, rsyncChange         []measured
	same, rsyncSame             []measured
	del, rsyncDel               []measured
	localPeak, workspacePeak    int64 // bytes; workspacePeak only over SSH
	workspacePeakOf, peakSource string
}

// measureBig times a big binary's life in a small repository: added,
// changed by one byte, synced with no change, deleted; each step with
// git sidecar and with rsync, alternating which goes first.
func (b *bench) measureBig(t target, name string) (*bigResult, error) {
	repo := filepath.Join(b.root, name+"-repo")
	g := gitx.Repo{Dir: repo, Env: b.env}
	if _, err := (gitx.Repo{Env: b.env}).Run(b.ctx, "init", "-q", "-b", "main", repo); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(repo, "README"), []byte("a big binary comes and goes\n"), 0o644); err != nil {
		return nil, err
	}
	for _, args := range [][]string{{"add", "-A"}, {"commit", "-q", "-m", "readme"}, {"sidecar", "add", name, t.dest + " big"}} {
		if _, err := g.Run(b.ctx, args...); err != nil {
			return nil, err
		}
	}
	if _, err := b.sidecarIn(g, "setup", name); err != nil {
		return nil, err
	}
	rsyncDst := strings.TrimSuffix(t.rsyncDst, "/") + " big/"
	if _, _, err := b.rsyncDir(repo, rsyncDst, t); err != nil {
		return nil, err
	}
	r := &bigResult{size: int64(*bigMiB) << 20}
	path := filepath.Join(repo, "big.bin")
	data := make([]byte, r.size)
	// step runs one step with both tools, in the round's order.
	step := func(round int, sc, rs *[]measured) error {
		sidecar := func() error {
			x, err := b.sidecarIn(g, "sync", name)
			*sc = append(*sc, x)
			return err
		}
		rsync := func() error {
			d, n, err := b.rsyncDir(repo, rsyncDst, t)
			*rs = append(*rs, measured{d: d, sent: n})
			return err
		}
		if round%2 == 0 {
			if err := sidecar(); err != nil {
				return err
			}
			return rsync()
		}
		if err := rsync(); err != nil {
			return err
		}
		return sidecar()
	}
	for round := 0; round < *bigRounds; round++ {
		// New random bytes each round: nothing to gain from an earlier
		// round's copy.
		if _, err := crand.Read(data); err != nil {
			return nil, err
		}
		if err := os.WriteFile(path, data, 0o644); err != nil {
			return nil, err
		}
		if err := step(round, &r.add, &r.rsyncAdd); err != nil {
			return nil, err
		}
		if err := flipByte(path, r.size/2+int64(round)); err != nil {
			return nil, err
		}
		if err := step(round, &r.change, &r.rsyncChange); err != nil {
			return nil, err
		}
		if err := step(round, &r.same, &r.rsyncSame); err != nil {
			return nil, err
		}
		if err := os.Remove(path); err != nil {
			return nil, err
		}
		if err := step(round, &r.del, &r.rsyncDel); err != nil {
			return nil, err
		}
	}
	var err error
	if r.localPeak, r.workspacePeak, r.workspacePeakOf, err = b.meterChange(t, g, name, path, data); err != nil {
		return nil, err
	}
	r.peakSource = "git-sidecar and every process it waited for, on both sides"
	if t.remoteHome != "" {
		r.peakSource = "git-sidecar and every process it waited for"
	}
	return r, nil
}

func flipByte(path string, off int64) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	var c [1]byte
	if _, err := f.ReadAt(c[:], off); err != nil {
		f.Close()
		return err
	}
	c[0] ^= 0xff
	if _, err := f.WriteAt(c[:], off); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// meterFlag makes the bench a memory meter: `bench -meter LOG cmd args...`
// runs cmd, waits for it, appends its peak RSS and its arguments to LOG,
// and exits with its status.
const meterFlag = "-meter"

func meter(log string, argv []string) int {
	if len(argv) == 0 {
		return 2
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	err := cmd.Run()
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		if f, ferr := os.OpenFile(log, os.O_APPEND|os.O_WRONLY|os.O_CREATE, 0o644); ferr == nil {
			fmt.Fprintf(f, "%d %s\n", ru.Maxrss<<10, strings.Join(argv[1:], " "))
			f.Close()
		}
	}
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		return exit.ExitCode()
	}
	if err != nil {
		return 127
	}
	return 0
}

// meterChange repeats one one-byte change in a separate, untimed round,
// with git-sidecar run under the meter, and over SSH every git the
// workspace runs too. It returns the peak RSS of git-sidecar and what it
// waited for, and over SSH the largest of the workspace's git processes
// and its command.
//
// The meter is a small process in between: a child started straight from
// this bench would report this bench's own resident size, because Linux
// charges the memory of the parent a child was forked from (Go forks
// with CLONE_VM) to the child's peak when it execs.
func (b *bench) meterChange(t target, g gitx.Repo, name, path string, data []byte) (local, remote int64, remoteOf string, err error) {
	self, err := os.Executable()
	if err != nil {
		return 0, 0, "", err
	}
	sidecar, err := exec.LookPath("git-sidecar")
	if err != nil {
		return 0, 0, "", err
	}
	dir := filepath.Join(b.root, "meter")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return 0, 0, "", err
	}
	remoteLog, localLog := filepath.Join(dir, "remote.log"), filepath.Join(dir, "local.log")
	if t.remoteHome != "" {
		realGit, err := exec.LookPath("git")
		if err != nil {
			return 0, 0, "", err
		}
		wrapper := fmt.Sprintf("#!/bin/sh\nexec %s %s %s %s \"$@\"\n", shq(self), meterFlag, shq(remoteLog), shq(realGit))
		if err := gittest.WriteExecutable(filepath.Join(dir, "git"), wrapper); err != nil {
			return 0, 0, "", err
		}
		bashrc := filepath.Join(t.remoteHome, ".bashrc")
		orig, err := os.ReadFile(bashrc)
		if err != nil {
			return 0, 0, "", err
		}
		defer os.WriteFile(bashrc, orig, 0o644)
		if err := os.WriteFile(bashrc, append(append([]byte(nil), orig...), []byte("PATH="+shq(dir)+":\"$PATH\"; export PATH\n")...), 0o644); err != nil {
			return 0, 0, "", err
		}
	}
	// The file as the last round left it: deleted. Add it, then change
	// one byte, metering only the change.
	if err := os.WriteFile(path, data, 0o644); err != nil {
		return 0, 0, "", err
	}
	if _, err := b.sidecarIn(g, "sync", name); err != nil {
		return 0, 0, "", err
	}
	// The logs are appended to, and shared by the targets.
	os.Remove(remoteLog)
	os.Remove(localLog)
	if err := flipByte(path, int64(len(data))/3); err != nil {
		return 0, 0, "", err
	}
	// The racy-clean rule reads a file written within the last second
	// again: let the write age, so only the change is metered.
	time.Sleep(1100 * time.Millisecond)
	c := exec.CommandContext(b.ctx, self, meterFlag, localLog, sidecar, "sync", name)
	c.Dir = g.Dir
	c.Env = append(os.Environ(), g.Env...)
	if out, err := c.CombinedOutput(); err != nil {
		return 0, 0, "", fmt.Errorf("metered git sidecar sync: %w: %s", err, out)
	}
	local, _, err = peakOf(localLog)
	if err != nil {
		return 0, 0, "", err
	}
	if t.remoteHome != "" {
		if remote, remoteOf, err = peakOf(remoteLog); err != nil {
			return 0, 0, "", err
		}
	}
	return local, remote, remoteOf, nil
}

// peakOf reads a meter log and returns its largest peak and command.
func peakOf(log string) (int64, string, error) {
	out, err := os.ReadFile(log)
	if err != nil {
		return 0, "", fmt.Errorf("the meter logged nothing: %w", err)
	}
	var peak int64
	of := ""
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		n, cmd, _ := strings.Cut(line, " ")
		if v, err := strconv.ParseInt(n, 10, 64); err == nil && v > peak {
			peak, of = v, cmd
		}
	}
	return peak, of, nil
}

func shq(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

func medianRun(rs []measured) measured {
	ds := make([]time.Duration, len(rs))
	for i, r := range rs {
		ds[i] = r.d
	}
	m := median(ds)
	for _, r := range rs {
		if r.d == m {
			return r
		}
	}
	return rs[0]
}

func mib(n int64) string { return fmt.Sprintf("%.0f MiB", float64(n)/(1<<20)) }

// print shows the big-file figures and reports whether the goals were
// met.
func (r *bigResult) print(t target) bool {
	fmt.Printf("== %s: a %s binary, median of %d rounds ==\n", t.name, mib(r.size), len(r.add))
	fmt.Printf("%-34s %-22s %-22s %s\n", "", "git sidecar", "rsync -a --delete", "sidecar/rsync")
	row := func(label string, sc, rs []measured) (measured, measured) {
		a, b := medianRun(sc), medianRun(rs)
		fmt.Printf("%-34s %-22s %-22s %.2fx\n", label,
			fmt.Sprintf("%s, %s", ms(a.d), kb(a.sent)), fmt.Sprintf("%s, %s", ms(b.d), kb(b.sent)), float64(a.d)/float64(b.d))
		return a, b
	}
	add, radd := row("add", r.add, r.rsyncAdd)
	ch, rch := row("change one byte", r.change, r.rsyncChange)
	same, _ := row("no change", r.same, r.rsyncSame)
	del, _ := row("delete", r.del, r.rsyncDel)
	fmt.Printf("peak memory of the one-byte change: %s (%s)\n", mib(r.localPeak), r.peakSource)
	peak := r.localPeak
	if r.workspacePeak > 0 {
		fmt.Printf("peak memory in the workspace (largest git process there): %s (git %s)\n", mib(r.workspacePeak), r.workspacePeakOf)
		peak = max(peak, r.workspacePeak)
	}
	ok := true
	goal := func(met bool, text string) {
		if t.remoteHome == "" {
			// The goals are set against rsync over SSH; to a local
			// folder rsync is a plain copy. The rows are for reference.
			fmt.Printf("(for reference) %s\n", text)
			return
		}
		mark := "met"
		if !met {
			mark, ok = "MISSED", false
		}
		fmt.Printf("goal %-6s %s\n", mark+":", text)
	}
	goal(float64(ch.d) <= 2*float64(rch.d), fmt.Sprintf("one-byte change <= 2x rsync: %s vs %s (%.2fx)", ms(ch.d), ms(rch.d), float64(ch.d)/float64(rch.d)))
	goal(peak <= 128<<20, fmt.Sprintf("one-byte change peak memory <= 128 MiB: %s", mib(peak)))
	goal(float64(del.d) <= 1.5*float64(same.d), fmt.Sprintf("delete <= 1.5x a no-change sync: %s vs %s (%.2fx)", ms(del.d), ms(same.d), float64(del.d)/float64(same.d)))
	goal(float64(add.d) <= 2*float64(radd.d), fmt.Sprintf("add <= 2x rsync: %s vs %s (%.2fx)", ms(add.d), ms(radd.d), float64(add.d)/float64(radd.d)))
	fmt.Println()
	return ok
}
