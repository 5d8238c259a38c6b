package hooks_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/git-relay/git-relay/hooks"
	"github.com/git-relay/git-relay/internal/gittest"
)

func TestInstallChainsAndUninstallRestores(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "hooks")
	require.NoError(t, os.MkdirAll(dir, 0o755))
	theirs := "#!/bin/sh\necho theirs \"$@\"; cat; exit 3\n"
	gittest.Script(t, filepath.Join(dir, "post-rewrite"), theirs)

	changes, err := hooks.Install(dir)
	require.NoError(t, err)
	require.Equal(t, []hooks.Change{
		{Name: "post-commit", What: "installed"},
		{Name: "post-checkout", What: "installed"},
		{Name: "post-merge", What: "installed"},
		{Name: "post-rewrite", What: "chained"},
	}, changes)
	for _, n := range hooks.Names {
		require.True(t, hooks.IsOurs(filepath.Join(dir, n)), n)
		fi, err := os.Stat(filepath.Join(dir, n))
		require.NoError(t, err)
		require.NotZero(t, fi.Mode()&0o100, "%s must be executable", n)
	}

	// The chained hook runs with our arguments and stdin, and its exit
	// status is kept; with no git-sidecar on PATH ours fails quietly.
	cmd := exec.Command(filepath.Join(dir, "post-rewrite"), "rebase")
	cmd.Dir = t.TempDir()
	cmd.Stdin = strings.NewReader("old new\n")
	cmd.Env = []string{"PATH=/usr/bin:/bin"}
	out, err := cmd.Output()
	var exit *exec.ExitError
	require.ErrorAs(t, err, &exit)
	require.Equal(t, 3, exit.ExitCode())
	require.Equal(t, "theirs rebase\nold new\n", string(out))

	// Installing again only updates ours.
	changes, err = hooks.Install(dir)
	require.NoError(t, err)
	require.Equal(t, "updated", changes[3].What)
	b, err := os.ReadFile(filepath.Join(dir, "post-rewrite"+hooks.Suffix))
	require.NoError(t, err)
	require.Equal(t, theirs, string(b))

	changes, err = hooks.Uninstall(dir)
	require.NoError(t, err)
	require.Equal(t, "restored", changes[3].What)
	b, err = os.ReadFile(filepath.Join(dir, "post-rewrite"))
	require.NoError(t, err)
	require.Equal(t, theirs, string(b))
	require.NoFileExists(t, filepath.Join(dir, "post-commit"))
}

func TestInstallRefusesAmbiguousChain(t *testing.T) {
	dir := t.TempDir()
	for _, n := range []string{"post-commit", "post-commit" + hooks.Suffix} {
		gittest.Script(t, filepath.Join(dir, n), "#!/bin/sh\n")
	}
	_, err := hooks.Install(dir)
	require.ErrorContains(t, err, "merge them by hand")
	// Nothing was changed.
	require.NoFileExists(t, filepath.Join(dir, "post-checkout"))
	require.False(t, hooks.IsOurs(filepath.Join(dir, "post-commit")))
}

// TestHookReturnsBeforeItsBackgroundPart: the installed hook runs the
// chained hook in the foreground, then returns while git-sidecar, started
// in the background at low CPU and I/O priority with the hook's arguments,
// is still running; it holds none of git's descriptors, and a marker in
// the git dir says a request is on its way until git-sidecar is done.
func TestHookReturnsBeforeItsBackgroundPart(t *testing.T) {
	root := t.TempDir()
	top := filepath.Join(root, "top")
	// A linked worktree's .git is a file naming the git dir.
	gitDir := filepath.Join(root, "gitdir")
	hooksDir := filepath.Join(gitDir, "hooks")
	bin := filepath.Join(root, "bin")
	for _, d := range []string{top, hooksDir, bin} {
		require.NoError(t, os.MkdirAll(d, 0o755))
	}
	require.NoError(t, os.WriteFile(filepath.Join(top, ".git"), []byte("gitdir: "+gitDir+"\n"), 0o644))
	_, err := hooks.Install(hooksDir)
	require.NoError(t, err)
	gittest.Script(t, filepath.Join(hooksDir, "post-checkout"+hooks.Suffix), "#!/bin/sh\necho theirs \"$@\"; exit 5\n")

	// The stand-in git-sidecar says what it got, then waits for the test.
	gate := filepath.Join(root, "gate")
	require.NoError(t, syscall.Mkfifo(gate, 0o600))
	report := filepath.Join(root, "report")
	gittest.Script(t, filepath.Join(bin, "git-sidecar"), `#!/bin/sh
{ echo "args: $*"; echo "nice: $(nice)"; echo "io: $(ionice)"; echo "stdin: $(cat)"; } >'`+report+`.tmp'
mv '`+report+`.tmp' '`+report+`'
read x <'`+gate+`'
`)

	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	hook := exec.CommandContext(ctx, filepath.Join(hooksDir, "post-checkout"), "aaa", "bbb", "0")
	hook.Dir = top
	hook.Env = []string{"PATH=" + bin + ":/usr/bin:/bin"}
	hook.Stdin = strings.NewReader("not for the background\n")
	// Output waits for the end of stdout: a background part holding it
	// would keep the hook from returning until the gate opens, never.
	out, err := hook.Output()
	require.NoError(t, ctx.Err(), "the hook waited for its background part")
	var exit *exec.ExitError
	require.ErrorAs(t, err, &exit)
	require.Equal(t, 5, exit.ExitCode(), "the chained hook's status is the hook's")
	require.Equal(t, "theirs aaa bbb 0\n", string(out))

	require.Eventually(t, func() bool { _, err := os.Stat(report); return err == nil }, time.Minute, 10*time.Millisecond)
	b, err := os.ReadFile(report)
	require.NoError(t, err)
	want := "args: hook post-checkout aaa bbb 0\nnice: 10\n"
	if _, err := exec.LookPath("ionice"); err == nil {
		want += "io: idle\n"
	} else {
		// CI's Debian has util-linux: there the idle class is checked.
		require.NotEqual(t, "true", os.Getenv("CI"), "ionice (util-linux) is missing")
		want += "io: \n"
	}
	require.Equal(t, want+"stdin: \n", string(b))
	marks, err := filepath.Glob(filepath.Join(gitDir, "sidecar-hook.*"))
	require.NoError(t, err)
	require.Len(t, marks, 1, "the marker is there while git-sidecar runs")

	g, err := os.OpenFile(gate, os.O_WRONLY, 0)
	require.NoError(t, err)
	_, err = g.WriteString("go\n")
	require.NoError(t, err)
	require.NoError(t, g.Close())
	require.Eventually(t, func() bool { _, err := os.Stat(marks[0]); return os.IsNotExist(err) }, time.Minute, 10*time.Millisecond,
		"the marker outlived git-sidecar")
}

// TestHookQuietDuringRebase: during a rebase only post-rewrite starts
// git-sidecar; post-commit and post-checkout fire per replayed commit.
func TestHookQuietDuringRebase(t *testing.T) {
	top := t.TempDir()
	hooksDir := filepath.Join(top, ".git", "hooks")
	bin := filepath.Join(top, "bin")
	require.NoError(t, os.MkdirAll(bin, 0o755))
	require.NoError(t, os.MkdirAll(filepath.Join(top, ".git", "rebase-merge"), 0o755))
	_, err := hooks.Install(hooksDir)
	require.NoError(t, err)
	log := filepath.Join(top, "log")
	gittest.Script(t, filepath.Join(bin, "git-sidecar"), "#!/bin/sh\necho \"$*\" >>'"+log+"'\n")
	for _, n := range []string{"post-commit", "post-checkout", "post-rewrite"} {
		hook := exec.Command(filepath.Join(hooksDir, n), "x")
		hook.Dir = top
		hook.Env = []string{"PATH=" + bin + ":/usr/bin:/bin"}
		require.NoError(t, hook.Run())
	}
	// post-rewrite fired last: once its line is there, the others would
	// have been too.
	require.Eventually(t, func() bool { b, _ := os.ReadFile(log); return len(b) > 0 }, time.Minute, 10*time.Millisecond)
	require.Eventually(t, func() bool {
		m, _ := filepath.Glob(filepath.Join(top, ".git", "sidecar-hook.*"))
		return len(m) == 0
	}, time.Minute, 10*time.Millisecond)
	b, err := os.ReadFile(log)
	require.NoError(t, err)
	require.Equal(t, "hook post-rewrite x\n", string(b))
}
