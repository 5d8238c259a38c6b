package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"
)

// hookResult is the time of a commit with and without the hooks.
type hookResult struct {
	without, with []time.Duration
	// alone is the installed post-commit hook run by itself.
	alone []time.Duration
}

// measureHook times spaced one-file commits on the generated tree with
// git sidecar's hooks installed and without any hook, interleaved so that
// both see the same machine. After each commit it waits for the
// background sync the hook asked for, so that no commit pays for the one
// before; what is left is the time the hook itself adds to a commit.
func (b *bench) measureHook(name string) (*hookResult, error) {
	// Without hooks: core.hooksPath names an empty folder.
	noHooks := filepath.Join(b.root, "no-hooks")
	if err := os.MkdirAll(noHooks, 0o755); err != nil {
		return nil, err
	}
	if _, err := b.git.Run(b.ctx, "sidecar", "use", name); err != nil {
		return nil, err
	}
	if _, err := b.git.Run(b.ctx, "sidecar", "hooks", "install"); err != nil {
		return nil, err
	}
	defer func() { _, _ = b.git.Run(b.ctx, "sidecar", "hooks", "uninstall") }()
	commit := func(hooks bool) (time.Duration, error) {
		if err := b.touchOne(); err != nil {
			return 0, err
		}
		args := []string{"commit", "-q", "-a", "-m", fmt.Sprintf("edit %d", b.counter)}
		if !hooks {
			args = append([]string{"-c", "core.hooksPath=" + noHooks}, args...)
		}
		start := time.Now()
		_, err := b.git.Run(b.ctx, args...)
		d := time.Since(start)
		if err != nil {
			return 0, err
		}
		// Spaced: the sync the hook started (if any) ends first.
		if _, err := b.git.Run(b.ctx, "sidecar", "status", "--wait", "--offline", name); err != nil {
			return 0, err
		}
		return d, nil
	}
	r := &hookResult{}
	// One unmeasured round each, so that both start warm.
	for i := -1; i < *hookRuns; i++ {
		var d1, d2 time.Duration
		var err error
		if i%2 == 0 {
			if d1, err = commit(false); err != nil {
				return nil, err
			}
			if d2, err = commit(true); err != nil {
				return nil, err
			}
		} else {
			if d2, err = commit(true); err != nil {
				return nil, err
			}
			if d1, err = commit(false); err != nil {
				return nil, err
			}
		}
		if i >= 0 {
			r.without, r.with = append(r.without, d1), append(r.with, d2)
		}
	}
	// The hook alone, as git runs it: at the top of the work tree.
	hooksDir, err := b.git.Run(b.ctx, "rev-parse", "--git-path", "hooks")
	if err != nil {
		return nil, err
	}
	hook := filepath.Join(b.repo, hooksDir, "post-commit")
	for range *hookRuns {
		c := exec.CommandContext(b.ctx, hook)
		c.Dir = b.repo
		c.Env = append(os.Environ(), b.env...)
		start := time.Now()
		if err := c.Run(); err != nil {
			return nil, fmt.Errorf("run %s: %w", hook, err)
		}
		r.alone = append(r.alone, time.Since(start))
		if _, err := b.git.Run(b.ctx, "sidecar", "status", "--wait", "--offline", name); err != nil {
			return nil, err
		}
	}
	return r, nil
}

// print shows the figures and reports whether the goal was met.
func (r *hookResult) print(target string) bool {
	fmt.Printf("== hook overhead per commit (sidecar on the %s) ==\n", target)
	without, with := median(r.without), median(r.with)
	fmt.Printf("%-36s %s\n", fmt.Sprintf("commit without hooks (median of %d)", len(r.without)), ms(without))
	fmt.Printf("%-36s %s\n", fmt.Sprintf("commit with the hooks (median of %d)", len(r.with)), ms(with))
	fmt.Printf("%-36s %s\n", fmt.Sprintf("the hook alone (median of %d)", len(r.alone)), ms(median(r.alone)))
	added := with - without
	met := added <= 30*time.Millisecond
	mark := "met:"
	if !met {
		mark = "MISSED:"
	}
	fmt.Printf("goal %-6s hook overhead per commit <= 30 ms: %s added (%s vs %s)\n\n", mark, ms(added), ms(with), ms(without))
	return met
}
