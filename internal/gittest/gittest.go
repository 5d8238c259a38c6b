// Package gittest is the hermetic git that every test runs: a private
// HOME with a known .gitconfig, no system configuration, no prompts, and
// fixed names and dates so that the same commits get the same ids on
// every run. It also holds the one `git` helper that tests call.
//
// In CI (CI=true) a missing git fails the test instead of skipping it.
package gittest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/git-relay/git-relay/internal/gitx"
)

// Config is the .gitconfig written into every hermetic HOME.
const Config = `[init]
	defaultBranch = master
[protocol "file"]
	allow = always
[advice]
	detachedHead = false
	skippedCherryPicks = false
[pull]
	rebase = false
[core]
	autocrlf = false
[gc]
	auto = 0
`

// Vars are the variables that make git hermetic for home, as "NAME=value".
func Vars(home string) []string {
	return []string{
		"HOME=" + home,
		"XDG_CONFIG_HOME=" + filepath.Join(home, ".config"),
		"GIT_CONFIG_NOSYSTEM=1",
		"GIT_TERMINAL_PROMPT=0",
		"GIT_ASKPASS=",
		"SSH_ASKPASS=",
		"SSH_AUTH_SOCK=",
		"GIT_AUTHOR_NAME=A U Thor",
		"GIT_AUTHOR_EMAIL=author@example.com",
		"GIT_AUTHOR_DATE=2005-04-07T22:13:13Z",
		"GIT_COMMITTER_NAME=C O Mitter",
		"GIT_COMMITTER_EMAIL=committer@example.com",
		"GIT_COMMITTER_DATE=2005-04-07T22:13:13Z",
		"LC_ALL=C",
		"TZ=UTC",
	}
}

// NeedGit skips the test when git is missing, or fails it in CI.
func NeedGit(t testing.TB) {
	t.Helper()
	if _, err := exec.LookPath("git"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("git is required in CI: %v", err)
		}
		t.Skip("git not installed")
	}
}

// Home makes a hermetic HOME (with Config as its .gitconfig) and returns
// it.
func Home(t testing.TB) string {
	t.Helper()
	NeedGit(t)
	home := t.TempDir()
	if err := os.WriteFile(filepath.Join(home, ".gitconfig"), []byte(Config), 0o644); err != nil {
		t.Fatal(err)
	}
	return home
}

// Setenv makes the whole test process hermetic with t.Setenv (so the test
// must not be parallel) and returns the HOME it made.
func Setenv(t testing.TB) string {
	t.Helper()
	home := Home(t)
	for _, kv := range Vars(home) {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	return home
}

// Env returns a hermetic environment (a new HOME) for git commands run
// through gitx, followed by extra.
func Env(t testing.TB, extra ...string) []string {
	t.Helper()
	return append(Vars(Home(t)), extra...)
}

// Repo returns a gitx.Repo for dir with a hermetic environment of its own.
func Repo(t testing.TB, dir string) gitx.Repo {
	t.Helper()
	return gitx.Repo{Dir: dir, Env: Env(t)}
}

// Git runs git with args in dir (through gitx, with the process's
// environment) and returns its stdout, trimmed; it fails the test on any
// error, with git's stderr.
func Git(t testing.TB, dir string, args ...string) string {
	t.Helper()
	return Run(t, gitx.Repo{Dir: dir}, args...)
}

// Run is Git in a gitx.Repo.
func Run(t testing.TB, r gitx.Repo, args ...string) string {
	t.Helper()
	out, err := r.Run(t.Context(), args...)
	if err != nil {
		t.Fatalf("git %s: %v", strings.Join(args, " "), err)
	}
	return strings.TrimSpace(out)
}

// Main makes a whole test binary hermetic, for a TestMain: it sets the
// hermetic variables for a new HOME in the process environment, runs the
// tests, removes the HOME and exits with their status. Without git it
// exits 0 (skipping everything), or 1 in CI.
func Main(m *testing.M) {
	if _, err := exec.LookPath("git"); err != nil {
		if os.Getenv("CI") == "true" {
			fmt.Fprintln(os.Stderr, "git is required in CI:", err)
			os.Exit(1)
		}
		fmt.Fprintln(os.Stderr, "skipping: git not installed")
		os.Exit(0)
	}
	home, err := os.MkdirTemp("", "gittest-home-")
	if err != nil {
		panic(err)
	}
	if err := os.WriteFile(filepath.Join(home, ".gitconfig"), []byte(Config), 0o644); err != nil {
		panic(err)
	}
	for _, kv := range Vars(home) {
		k, v, _ := strings.Cut(kv, "=")
		os.Setenv(k, v)
	}
	code := m.Run()
	os.RemoveAll(home)
	os.Exit(code)
}

// WriteExecutable writes an executable file (a script, a hook, a stand-in
// for a tool) at path. A child process writes it, never this one: a test
// binary forks from many goroutines at once, and a fork that lands while
// this process holds the file open for writing keeps a write descriptor
// in the child until it execs, so an exec of the new file in that window
// fails with "text file busy" (ETXTBSY, golang/go#22315).
func WriteExecutable(path, content string) error {
	cmd := exec.Command("/bin/sh", "-c", `cat >"$1" && chmod 0755 "$1"`, "sh", path)
	cmd.Stdin = strings.NewReader(content)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("write %s: %v: %s", path, err, out)
	}
	return nil
}

// Script is WriteExecutable for a test: it fails t on error.
func Script(t testing.TB, path, content string) {
	t.Helper()
	if err := WriteExecutable(path, content); err != nil {
		t.Fatal(err)
	}
}

// Processes counts the running processes that match says are the ones
// sought, given each one's command line and environment (NUL-separated,
// as /proc has them); a process gone meanwhile does not count. Without
// /proc the test is skipped, or fails in CI.
func Processes(t testing.TB, match func(cmdline, environ []byte) bool) int {
	t.Helper()
	if _, err := os.Stat("/proc/self/cmdline"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("/proc is required in CI: %v", err)
		}
		t.Skip("needs /proc to see processes")
	}
	dirs, err := filepath.Glob("/proc/[0-9]*")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, d := range dirs {
		cmd, err := os.ReadFile(filepath.Join(d, "cmdline"))
		if err != nil {
			continue
		}
		env, _ := os.ReadFile(filepath.Join(d, "environ"))
		if match(cmd, env) {
			n++
		}
	}
	return n
}
