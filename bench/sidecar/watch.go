package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// watchResult is the latency of `git sidecar watch`: from a file saved
// here to the same bytes in the workspace, next to rsync of the same
// change.
type watchResult struct {
	latency, rsync []time.Duration
	rsyncBytes     int64
}

// watchGoal is the goal for a saved file to reach the workspace.
const watchGoal = 300 * time.Millisecond

// measureWatch runs `git sidecar watch NAME` on the sidecar that measure
// set up, saves one file at a time, and times until the workspace holds
// the new bytes; then rsyncs the same change.
func (b *bench) measureWatch(t target, name string) (*watchResult, error) {
	ws := t.dest
	if _, after, ok := strings.Cut(t.dest, ":"); ok && !filepath.IsAbs(t.dest) {
		ws = after // benchbox:/path: the workspace is on this machine
	}
	cmd := exec.CommandContext(b.ctx, "git-sidecar", "watch", name)
	cmd.Dir = b.repo
	cmd.Env = append(os.Environ(), b.env...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("git sidecar watch: %w", err)
	}
	defer func() {
		_ = cmd.Process.Signal(syscall.SIGINT)
		_ = cmd.Wait()
	}()
	// One value per sync line; the rest is kept for an error message.
	synced := make(chan struct{}, 64)
	var log bytes.Buffer
	logDone := make(chan struct{})
	go func() {
		defer close(logDone)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			if strings.Contains(sc.Text(), ": in sync at ") {
				synced <- struct{}{}
			} else {
				log.WriteString(sc.Text() + "\n")
			}
		}
	}()
	waitSync := func() error {
		select {
		case <-synced:
			return nil
		case <-logDone:
			return fmt.Errorf("git sidecar watch ended: %s", strings.TrimSpace(log.String()))
		case <-time.After(time.Minute):
			return errors.New("git sidecar watch printed no sync line within a minute")
		}
	}
	if err := waitSync(); err != nil { // the first sync, at start
		return nil, err
	}
	r := &watchResult{}
	for i := range *runs + 1 {
		b.counter++
		n := b.rng.IntN(*nFiles)
		p := b.path(n)
		content, err := os.ReadFile(p)
		if err != nil {
			return nil, err
		}
		content = fmt.Appendf(content, "// watched edit %d\n", b.counter)
		rel, _ := filepath.Rel(b.repo, p)
		remote := filepath.Join(ws, rel)
		start := time.Now()
		if err := os.WriteFile(p, content, 0o644); err != nil {
			return nil, err
		}
		for {
			if got, err := os.ReadFile(remote); err == nil && bytes.Equal(got, content) {
				break
			}
			if time.Since(start) > time.Minute {
				return nil, fmt.Errorf("%s did not reach the workspace within a minute: %s", rel, strings.TrimSpace(log.String()))
			}
			time.Sleep(time.Millisecond)
		}
		d := time.Since(start)
		// The sync is over (its line printed) before the next save.
		if err := waitSync(); err != nil {
			return nil, err
		}
		rd, rn, err := b.rsync(t)
		if err != nil {
			return nil, err
		}
		if i == 0 {
			continue // warm-up
		}
		r.latency, r.rsync, r.rsyncBytes = append(r.latency, d), append(r.rsync, rd), rn
	}
	return r, nil
}

// print shows the watch row and reports whether the goal was met.
func (r *watchResult) print(t target) bool {
	fmt.Printf("== %s: git sidecar watch ==\n", t.name)
	fmt.Printf("%-34s %-22s %-22s %s\n", "", "git sidecar watch", "rsync -a --delete", "watch/rsync")
	lat, rs := median(r.latency), median(r.rsync)
	fmt.Printf("%-34s %-22s %-22s %.2fx\n", fmt.Sprintf("save -> workspace (median of %d)", len(r.latency)),
		ms(lat), fmt.Sprintf("%s, %s", ms(rs), kb(r.rsyncBytes)), float64(lat)/float64(rs))
	mark := "met:"
	if lat > watchGoal {
		mark = "MISSED:"
	}
	fmt.Printf("goal %-6s a saved file is in the workspace <= %s later: %s (rsync of the same change: %s)\n\n", mark, ms(watchGoal), ms(lat), ms(rs))
	return lat <= watchGoal
}
