package sidecar_test

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/git-relay/git-relay/internal/gitx"
	"github.com/git-relay/git-relay/internal/sshtest"
)

// nastyName is part of every workspace path: spaces, a quote, a command
// substitution, backticks and a semicolon. If any of it ran as code, a
// file named pwned would appear.
const nastyName = "ws dir it's $(touch pwned) `touch pwned2`; x"

// world is one local repository with an origin, and a sidecar workspace
// reached over a local path or a real sshd.
type world struct {
	t      *testing.T
	root   string
	home   string
	env    []string
	origin string
	repo   string
	ws     string
	dest   string
	sshd   *sshtest.Server
}

type transportKind string

const (
	local   transportKind = "local"
	overSSH transportKind = "ssh"
)

func newWorld(t *testing.T, kind transportKind, noise string) *world {
	t.Helper()
	root := t.TempDir()
	// Runs just before root is removed (cleanups run last first).
	t.Cleanup(func() { stopHolders(root) })
	w := &world{t: t, root: root, home: filepath.Join(root, "home")}
	require.NoError(t, os.MkdirAll(w.home, 0o755))
	bin, err := oldGitBin(root)
	require.NoError(t, err)
	w.env = hermetic(w.home, bin)
	w.origin = filepath.Join(root, "origin.git")
	w.repo = filepath.Join(root, "repo")
	w.ws = filepath.Join(root, "remote", nastyName)
	switch kind {
	case local:
		w.dest = w.ws
	case overSSH:
		w.sshd = sshtest.Start(t, sshtest.Options{Noise: noise})
		require.NoError(t, w.sshd.ClientConfig(w.home, "devbox", true))
		w.dest = "devbox:" + w.ws
	}
	w.git(root, "init", "-q", "--bare", "-b", "main", w.origin)
	w.git(root, "init", "-q", "-b", "main", w.repo)
	w.git(w.repo, "remote", "add", "origin", w.origin)
	t.Cleanup(w.checkNothingRan)
	return w
}

func (w *world) gitRepo(dir string) gitx.Repo { return gitx.Repo{Dir: dir, Env: w.env} }

// git runs git in dir and fails the test if it fails.
func (w *world) git(dir string, args ...string) string {
	w.t.Helper()
	out, err := w.gitRepo(dir).Run(w.t.Context(), args...)
	require.NoError(w.t, err, "git %v", args)
	return out
}

// sidecar runs `git sidecar args...` in the local repository.
func (w *world) sidecar(args ...string) (stdout, stderr string, err error) {
	return w.sidecarIn(w.repo, args...)
}

func (w *world) sidecarIn(dir string, args ...string) (stdout, stderr string, err error) {
	w.t.Helper()
	ctx, cancel := context.WithTimeout(w.t.Context(), 3*time.Minute)
	defer cancel()
	var out, errb bytes.Buffer
	c := w.gitRepo(dir).Command(ctx, append([]string{"sidecar"}, args...)...)
	c.Stdout = &out
	c.Stderr = &errb
	err = c.Run()
	return out.String(), errb.String(), err
}

// mustSidecar runs git sidecar and requires success.
func (w *world) mustSidecar(args ...string) string {
	w.t.Helper()
	out, errOut, err := w.sidecar(args...)
	require.NoError(w.t, err, "git sidecar %v\nstdout: %s\nstderr: %s", args, out, errOut)
	return out + errOut
}

// sync runs `git sidecar sync`, requires that it says "in sync", and
// checks the workspace file by file.
func (w *world) sync(args ...string) string {
	w.t.Helper()
	out := w.mustSidecar(append([]string{"sync"}, args...)...)
	require.Contains(w.t, out, "in sync")
	w.requireSame()
	return out
}

func (w *world) write(rel, content string) {
	w.t.Helper()
	p := filepath.Join(w.repo, rel)
	require.NoError(w.t, os.MkdirAll(filepath.Dir(p), 0o755))
	require.NoError(w.t, os.WriteFile(p, []byte(content), 0o644))
}

func (w *world) commitAll(msg string) {
	w.t.Helper()
	w.git(w.repo, "add", "-A")
	w.git(w.repo, "commit", "-q", "-m", msg)
}

// entry is what a user sees of one file.
type entry struct {
	mode    string // "file", "exec" or "link"
	content string // bytes, or the link target
}

// visible lists the files git shows in dir: tracked plus untracked that
// are not ignored, read from disk.
func (w *world) visible(dir string) map[string]entry {
	w.t.Helper()
	out := w.git(dir, "ls-files", "-z", "--cached", "--others", "--exclude-standard")
	files := map[string]entry{}
	for _, rel := range strings.Split(out, "\x00") {
		if rel == "" {
			continue
		}
		p := filepath.Join(dir, rel)
		fi, err := os.Lstat(p)
		if errors.Is(err, fs.ErrNotExist) {
			continue // deleted but still in the index
		}
		require.NoError(w.t, err)
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			require.NoError(w.t, err)
			files[rel] = entry{"link", target}
		default:
			b, err := os.ReadFile(p)
			require.NoError(w.t, err)
			mode := "file"
			if fi.Mode()&0o111 != 0 {
				mode = "exec"
			}
			files[rel] = entry{mode, string(b)}
		}
	}
	return files
}

// onDisk lists every file under dir except .git and the paths in skip.
func onDisk(t *testing.T, dir string, skip map[string]bool) []string {
	var out []string
	require.NoError(t, filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if d.IsDir() {
			if rel == ".git" {
				return filepath.SkipDir
			}
			return nil
		}
		if !skip[rel] {
			out = append(out, rel)
		}
		return nil
	}))
	sort.Strings(out)
	return out
}

// requireSame checks that the workspace shows exactly the local work
// tree's files, with the same bytes, exec bits and link targets, and no
// others apart from what the workspace ignores.
func (w *world) requireSame() {
	w.t.Helper()
	want := w.visible(w.repo)
	got := w.visible(w.ws)
	require.Equal(w.t, keys(want), keys(got), "the workspace shows other files than the work tree")
	for k, v := range want {
		require.Equal(w.t, v, got[k], "file %q differs", k)
	}
	ignored := map[string]bool{}
	for _, rel := range strings.Split(w.git(w.ws, "ls-files", "-z", "--others", "--ignored", "--exclude-standard"), "\x00") {
		ignored[rel] = true
	}
	require.Equal(w.t, keys(want), onDisk(w.t, w.ws, ignored), "the workspace holds files git does not show")
}

func keys(m map[string]entry) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// checkNothingRan looks for the files the nasty workspace name would have
// created had it run as code.
func (w *world) checkNothingRan() {
	dirs := []string{w.root, w.repo, filepath.Dir(w.ws), w.ws, w.home}
	if w.sshd != nil {
		dirs = append(dirs, w.sshd.RemoteHome)
	}
	if wd, err := os.Getwd(); err == nil {
		dirs = append(dirs, wd)
	}
	if h, err := os.UserHomeDir(); err == nil {
		dirs = append(dirs, h)
	}
	for _, d := range dirs {
		for _, n := range []string{"pwned", "pwned2"} {
			if _, err := os.Lstat(filepath.Join(d, n)); err == nil {
				w.t.Errorf("%s exists: a workspace name ran as code", filepath.Join(d, n))
			}
		}
	}
}
