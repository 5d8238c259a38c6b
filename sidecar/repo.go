package sidecar

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/git-relay/git-relay/internal/gitx"
)

// repo is the local repository a command runs in. It is found from the
// working directory, never from inherited GIT_DIR: hooks export a relative
// GIT_DIR that gitx strips.
type repo struct {
	top    string // work tree top
	gitDir string // absolute git dir of this work tree
	// commonDir is the git dir shared by every worktree of the
	// repository (gitDir itself for the main worktree). The sidecar
	// configuration lives there, and so does each sidecar's sync state,
	// so that all worktrees agree on what the workspace holds.
	commonDir string
	git       gitx.Repo
}

var errNotRepo = errors.New("not inside a git work tree; run git sidecar from a repository's work tree")

func openRepo(ctx context.Context, dir string) (*repo, error) {
	out, err := gitx.Repo{Dir: dir}.Run(ctx, "rev-parse", "--path-format=absolute", "--show-toplevel", "--absolute-git-dir", "--git-common-dir")
	if err != nil {
		var gerr *gitx.Error
		if errors.As(err, &gerr) {
			return nil, errNotRepo
		}
		return nil, fmt.Errorf("find repository: %w", err)
	}
	lines := strings.Split(out, "\n")
	if len(lines) != 3 || lines[0] == "" {
		return nil, errNotRepo
	}
	// The user's `git -c` settings apply to the commands run on their
	// repository, as they would to a git subcommand of git's own.
	return &repo{
		top:       lines[0],
		gitDir:    lines[1],
		commonDir: filepath.Clean(lines[2]),
		git:       gitx.Repo{Dir: lines[0], Env: gitx.ConfigEnv(os.Environ())},
	}, nil
}

// sidecarConfig is what git config holds about sidecars.
type sidecarConfig struct {
	active string
	dests  map[string]string
	// persist holds sidecar.NAME.persist by NAME, and sidecar.persist
	// under "".
	persist map[string]string
}

// names lists the configured sidecars in order.
func (c sidecarConfig) names() []string {
	var out []string
	for n := range c.dests {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

func (r *repo) loadConfig(ctx context.Context) (sidecarConfig, error) {
	c := sidecarConfig{dests: map[string]string{}, persist: map[string]string{}}
	out, err := r.git.Run(ctx, "config", "-z", "--get-regexp", `^sidecar\.`)
	if err != nil {
		var gerr *gitx.Error
		if errors.As(err, &gerr) && gerr.ExitCode == 1 {
			return c, nil // nothing configured
		}
		return c, fmt.Errorf("read sidecar config: %w", err)
	}
	for _, rec := range strings.Split(out, "\x00") {
		key, val, _ := strings.Cut(rec, "\n")
		if key == "sidecar.active" {
			c.active = val
			continue
		}
		if key == "sidecar.persist" {
			c.persist[""] = val
			continue
		}
		if name, ok := strings.CutSuffix(strings.TrimPrefix(key, "sidecar."), ".persist"); ok && strings.HasPrefix(key, "sidecar.") && name != "" {
			c.persist[name] = val
			continue
		}
		if !strings.HasPrefix(key, "sidecar.") || !strings.HasSuffix(key, ".dest") {
			continue
		}
		name := strings.TrimSuffix(strings.TrimPrefix(key, "sidecar."), ".dest")
		if name != "" {
			c.dests[name] = val
		}
	}
	return c, nil
}

var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)

func checkName(name string) error {
	if !nameRE.MatchString(name) {
		return fmt.Errorf("bad sidecar name %q: use letters, digits, '.', '_' and '-' (up to 63), starting with a letter or digit", name)
	}
	return nil
}

// pick resolves the sidecar a command is about: the one named, else the
// active one, else the only one.
func (c sidecarConfig) pick(name string) (string, error) {
	if name != "" {
		if err := checkName(name); err != nil {
			return "", err
		}
		if _, ok := c.dests[name]; !ok {
			return "", fmt.Errorf("no sidecar named %q; see `git sidecar list`, or add it with `git sidecar add %s DEST`", name, name)
		}
		return name, nil
	}
	if c.active != "" {
		if _, ok := c.dests[c.active]; ok {
			return c.active, nil
		}
	}
	switch len(c.dests) {
	case 0:
		return "", errors.New("no sidecar configured; add one with `git sidecar add NAME DEST`")
	case 1:
		for n := range c.dests {
			return n, nil
		}
	}
	return "", fmt.Errorf("several sidecars are configured (%s); choose one with `git sidecar use NAME`", strings.Join(c.names(), ", "))
}

// State is what a sidecar remembers between runs, in
// <common git dir>/sidecar/<name>/state.json: one state for every worktree,
// since they share the configuration and so the workspace.
type State struct {
	// Dest is the DEST the workspace was bootstrapped at.
	Dest string `json:"dest,omitempty"`
	// Baseline is the commit checked out in the workspace.
	Baseline string `json:"baseline,omitempty"`
	// Branch is the local branch (refs/heads/...) at bootstrap, "" when
	// HEAD was detached.
	Branch string `json:"branch,omitempty"`
	// Applied is the tree the workspace was verified to hold after the
	// last sync; "" forces the next sync to bootstrap.
	Applied string `json:"applied,omitempty"`

	// Seen is the tree the workspace reported at the end of the last
	// sync, verified or not: what a bootstrap expects to find there.
	Seen string `json:"seen,omitempty"`
	// LastHead is HEAD at the last successful sync, known to descend
	// from Baseline.
	LastHead string `json:"last_head,omitempty"`
	// Worktree is the top of the work tree that the last successful sync
	// came from: with several worktrees, the workspace mirrors one of them.
	Worktree string `json:"worktree,omitempty"`

	BootstrappedAt time.Time `json:"bootstrapped_at,omitzero"`
	BootstrapVia   string    `json:"bootstrap_via,omitempty"` // "origin" or "bundle"

	LastSync       time.Time `json:"last_sync,omitzero"`
	LastMode       string    `json:"last_mode,omitempty"`
	LastDurationMS int64     `json:"last_duration_ms,omitempty"`
	LastBytes      int64     `json:"last_bytes,omitempty"`
	LastFiles      int       `json:"last_files,omitempty"`
	InSync         bool      `json:"in_sync"`
	// Mismatch describes the last verification that failed.
	Mismatch string `json:"mismatch,omitempty"`

	LastError    string    `json:"last_error,omitempty"`
	LastErrorAt  time.Time `json:"last_error_at,omitzero"`
	LastBackup   string    `json:"last_backup,omitempty"`
	LastBackupAt time.Time `json:"last_backup_at,omitzero"`
}

// stateDir holds what all worktrees share about a sidecar: its state, its
// sync lock, the pending-sync flag and the background log.
func (r *repo) stateDir(name string) string {
	return filepath.Join(r.commonDir, "sidecar", name)
}

// cacheDir holds what belongs to this worktree alone: the snapshot's
// index and object store, which cache what was read from this work tree.
// For the main worktree it is stateDir.
func (r *repo) cacheDir(name string) string {
	return filepath.Join(r.gitDir, "sidecar", name)
}

func (r *repo) loadState(name string) (*State, error) {
	st := &State{}
	b, err := os.ReadFile(filepath.Join(r.stateDir(name), "state.json"))
	if errors.Is(err, os.ErrNotExist) {
		return st, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read sidecar state: %w", err)
	}
	if err := json.Unmarshal(b, st); err != nil {
		// A damaged state only costs a bootstrap.
		return &State{}, nil
	}
	return st, nil
}

// saveState writes the state through a temporary file and a rename, so
// that readers see the old state or the new one, never half of one. It
// does not fsync: it sits on the path of every sync, and a state lost in
// a crash costs at most a bootstrap (an unreadable one reads as empty),
// while edits found in the workspace are still kept as a backup first.
func (r *repo) saveState(name string, st *State) error {
	dir := r.stateDir(name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("save sidecar state: %w", err)
	}
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, "state.*.tmp")
	if err != nil {
		return fmt.Errorf("save sidecar state: %w", err)
	}
	if _, err := tmp.Write(append(b, '\n')); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return fmt.Errorf("save sidecar state: %w", err)
	}
	if err := tmp.Close(); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("save sidecar state: %w", err)
	}
	if err := os.Rename(tmp.Name(), filepath.Join(dir, "state.json")); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("save sidecar state: %w", err)
	}
	return nil
}
