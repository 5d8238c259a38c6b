package cli_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/git-relay/git-relay/internal/cli"
)

type failCmd struct {
	Code int `arg:""`
}

func (c *failCmd) Run() error {
	switch c.Code {
	case 0:
		return nil
	case 1:
		return errors.New("plain failure")
	}
	return cli.Exit(c.Code)
}

type testGrammar struct {
	cli.Globals
	Fail failCmd `cmd:""`
}

func run(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var stdout, stderr strings.Builder
	code := cli.Run(&testGrammar{}, args, cli.Options{Name: "tool", Stdout: &stdout, Stderr: &stderr})
	return code, stdout.String(), stderr.String()
}

// TestVersion: --version prints the release set at link time and exits 0,
// with or without a command after it.
func TestVersion(t *testing.T) {
	old := cli.Version
	t.Cleanup(func() { cli.Version = old })
	cli.Version = "v1.2.3"
	code, stdout, stderr := run(t, "--version")
	require.Equal(t, 0, code)
	require.Equal(t, "git-relay v1.2.3\n", stdout)
	require.Empty(t, stderr)

	code, stdout, _ = run(t, "fail", "1", "--version")
	require.Equal(t, 0, code)
	require.Equal(t, "git-relay v1.2.3\n", stdout)

	// Without a link-time version the build info stands in.
	cli.Version = ""
	require.True(t, strings.HasPrefix(cli.VersionString(), "git-relay "), cli.VersionString())
}

// TestExitCodes: an error is 1 with one line, an Exit is its own status
// and silent, a parse error is 2.
func TestExitCodes(t *testing.T) {
	code, _, stderr := run(t, "fail", "1")
	require.Equal(t, 1, code)
	require.Equal(t, "tool: plain failure\n", stderr)

	code, _, stderr = run(t, "fail", "7")
	require.Equal(t, 7, code)
	require.Empty(t, stderr)

	code, _, stderr = run(t, "nope")
	require.Equal(t, 2, code)
	require.Contains(t, stderr, "tool: unexpected argument nope")
}
