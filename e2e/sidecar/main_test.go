// Package sidecar_test drives the real `git sidecar` end to end: testscript
// scripts for the command line, and Go tests that sync real repositories
// to workspaces on a local path and behind a real OpenSSH sshd.
package sidecar_test

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/rogpeppe/go-internal/testscript"
	"golang.org/x/sys/unix"

	"github.com/git-relay/git-relay/internal/gittest"
	"github.com/git-relay/git-relay/internal/sshtest"
	"github.com/git-relay/git-relay/sidecar"
)

// TestMain makes this test binary answer as git-sidecar too, and puts it
// on PATH (testscript.Main does), so `git sidecar` finds it.
func TestMain(m *testing.M) {
	testscript.Main(m, map[string]func(){
		"git-sidecar": func() { os.Exit(sidecar.Main()) },
	})
}

// oldGitBin writes, in a folder under dir, a `git` that refuses -C and
// returns the folder, to put first on PATH: nothing of ours may depend on
// -C.
func oldGitBin(dir string) (string, error) {
	real, err := exec.LookPath("git")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "oldgit")
	if err := os.MkdirAll(bin, 0o755); err != nil {
		return "", err
	}
	return bin, gittest.WriteExecutable(filepath.Join(bin, "git"), sshtest.GitWrapper(real))
}

// hermetic is the environment every git and git-sidecar here runs with.
func hermetic(home, pathPrefix string) []string {
	return append(gittest.Vars(home),
		// Under -race, every git-sidecar (this test binary) would sleep
		// a second at exit waiting for late race reports, and a hook
		// would look slow for that reason alone.
		"GORACE=atexit_sleep_ms=0",
		"PATH="+pathPrefix+string(os.PathListSeparator)+os.Getenv("PATH"),
	)
}

func TestScripts(t *testing.T) {
	testscript.Run(t, testscript.Params{
		Dir:                 "testdata",
		RequireExplicitExec: true,
		Setup: func(env *testscript.Env) error {
			env.Defer(func() { stopHolders(env.WorkDir) })
			home := filepath.Join(env.WorkDir, "home")
			if err := os.MkdirAll(home, 0o755); err != nil {
				return err
			}
			bin, err := oldGitBin(env.WorkDir)
			if err != nil {
				return err
			}
			for _, kv := range hermetic(home, bin) {
				k, v, _ := cut(kv)
				env.Setenv(k, v)
			}
			// A workspace path with spaces, a quote and a command
			// substitution: none of it may run.
			env.Setenv("WS", filepath.Join(env.WorkDir, "ws dir it's $(touch pwned) `touch pwned2`"))
			return nil
		},
	})
}

func cut(kv string) (string, string, bool) { return strings.Cut(kv, "=") }

// stopHolders kills the `git-sidecar hold` processes working in dir (the
// connections and tree watches that commands leave behind) and waits
// until they are gone, so that removing dir races with none of them.
func stopHolders(dir string) {
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmd, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || !bytes.HasPrefix(cmd, []byte("git-sidecar\x00hold\x00")) {
			continue
		}
		cwd, err := os.Readlink(filepath.Join("/proc", e.Name(), "cwd"))
		if err != nil || (cwd != dir && !strings.HasPrefix(cwd, dir+"/")) {
			continue
		}
		// A pidfd turns readable when the process has exited.
		fd, err := unix.PidfdOpen(pid, 0)
		if err != nil {
			continue
		}
		_ = unix.PidfdSendSignal(fd, unix.SIGKILL, nil, 0)
		_, _ = unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}, 10_000)
		unix.Close(fd)
	}
}
