package hooks_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

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
