// Package hooks owns the git hooks git-sidecar installs: the script (one
// template for every hook) and installing it beside hooks that are already
// there, so that they keep running, and taking it out again.
//
// A hook that is not ours is moved to <name>.pre-sidecar and our script
// runs it first, with the same arguments, stdin and exit status. Ours are
// recognised by Marker, so uninstall removes only them and puts the
// original back.
package hooks

import (
	_ "embed"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

//go:embed hook.sh
var template string

// Marker is the line that identifies our script.
const Marker = "# git-sidecar hook (managed by `git sidecar hooks install`"

// Suffix is added to the name of a hook we chain to.
const Suffix = ".pre-sidecar"

// Names are the hooks we install: every one that runs after HEAD or the
// work tree changed. post-rewrite covers rebase and amend once, where
// post-commit fires per replayed commit.
var Names = []string{"post-commit", "post-checkout", "post-merge", "post-rewrite"}

// Script is our hook script for name.
func Script(name string) string {
	return strings.ReplaceAll(template, "HOOKNAME", name)
}

// IsOurs reports whether the file at path is our script.
func IsOurs(path string) bool {
	b, err := os.ReadFile(path)
	return err == nil && strings.Contains(string(b), Marker)
}

// Change is what happened to one hook.
type Change struct {
	Name string
	// What: "installed", "chained" (an existing hook now runs first),
	// "updated", "removed", "restored" (the original is back), "absent",
	// "foreign" (not ours: left alone).
	What string
}

// Install puts our script in dir for every name in Names.
func Install(dir string) ([]Change, error) {
	// Check everything before changing anything.
	for _, n := range Names {
		p := filepath.Join(dir, n)
		if _, err := os.Lstat(p); err == nil && !IsOurs(p) {
			if _, err := os.Lstat(p + Suffix); err == nil {
				return nil, fmt.Errorf("both %s and %s exist and neither is ours; merge them by hand, then run `git sidecar hooks install` again", p, p+Suffix)
			}
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("create hooks folder %s: %w", dir, err)
	}
	var changes []Change
	for _, n := range Names {
		p := filepath.Join(dir, n)
		what := "installed"
		if _, err := os.Lstat(p); err == nil {
			if IsOurs(p) {
				what = "updated"
			} else {
				if err := os.Rename(p, p+Suffix); err != nil {
					return changes, fmt.Errorf("move existing hook %s aside: %w", p, err)
				}
				what = "chained"
			}
		} else if !errors.Is(err, os.ErrNotExist) {
			return changes, fmt.Errorf("read hook %s: %w", p, err)
		}
		if err := writeFile(p, Script(n)); err != nil {
			return changes, err
		}
		changes = append(changes, Change{Name: n, What: what})
	}
	return changes, nil
}

// writeFile replaces path atomically with an executable script.
func writeFile(path, content string) error {
	tmp := path + ".sidecar-tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o755); err != nil {
		return fmt.Errorf("write hook %s: %w", path, err)
	}
	if err := os.Chmod(tmp, 0o755); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write hook %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write hook %s: %w", path, err)
	}
	return nil
}

// Uninstall removes our scripts from dir and restores the hooks they
// chained to. Hooks that are not ours are left alone.
func Uninstall(dir string) ([]Change, error) {
	var changes []Change
	for _, n := range Names {
		p := filepath.Join(dir, n)
		if _, err := os.Lstat(p); errors.Is(err, os.ErrNotExist) {
			changes = append(changes, Change{Name: n, What: "absent"})
			continue
		}
		if !IsOurs(p) {
			changes = append(changes, Change{Name: n, What: "foreign"})
			continue
		}
		if _, err := os.Lstat(p + Suffix); err == nil {
			if err := os.Rename(p+Suffix, p); err != nil {
				return changes, fmt.Errorf("restore hook %s: %w", p, err)
			}
			changes = append(changes, Change{Name: n, What: "restored"})
			continue
		}
		if err := os.Remove(p); err != nil {
			return changes, fmt.Errorf("remove hook %s: %w", p, err)
		}
		changes = append(changes, Change{Name: n, What: "removed"})
	}
	return changes, nil
}
