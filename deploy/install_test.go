package deploy

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// install runs install.sh --server from the repository root, staged under
// destdir with prefix, and returns its output.
func install(t *testing.T, destdir, prefix string) string {
	t.Helper()
	cmd := exec.Command("sh", "install.sh", "--server")
	cmd.Dir = ".."
	cmd.Env = append(os.Environ(), "DESTDIR="+destdir, "PREFIX="+prefix)
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "%s", out)
	return string(out)
}

func mode(t *testing.T, path string) os.FileMode {
	t.Helper()
	fi, err := os.Stat(path)
	require.NoError(t, err)
	return fi.Mode().Perm()
}

// unitSettings reads a unit file into its settings, each key with every
// value it is given.
func unitSettings(t *testing.T, path string) map[string][]string {
	t.Helper()
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	out := map[string][]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, "[") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		require.True(t, ok, "unit line %q", line)
		out[k] = append(out[k], v)
	}
	require.NoError(t, sc.Err())
	return out
}

func TestInstallServer(t *testing.T) {
	destdir := t.TempDir()
	const prefix = "/opt/git-relay"
	out := install(t, destdir, prefix)

	bindir := filepath.Join(destdir, prefix, "bin")
	for _, name := range []string{"git-relay-server", "git-remote-relay", "git-sidecar"} {
		require.Equal(t, os.FileMode(0o755), mode(t, filepath.Join(bindir, name)), name)
	}
	help, err := exec.Command(filepath.Join(bindir, "git-relay-server"), "edge", "--help").CombinedOutput()
	require.NoError(t, err, "%s", help)

	unit := filepath.Join(destdir, "etc/systemd/system/git-relay-server.service")
	require.Equal(t, os.FileMode(0o644), mode(t, unit))
	u := unitSettings(t, unit)
	require.Equal(t, []string{prefix + "/bin/git-relay-server serve --key-file %d/relay.key $GIT_RELAY_SERVE_FLAGS"}, u["ExecStart"],
		"the unit runs the binaries where PREFIX put them")
	for k, want := range map[string]string{
		"User":            "git-relay",
		"EnvironmentFile": "/etc/git-relay/server.env",
		"LoadCredential":  "relay.key:/etc/git-relay/relay.key",
		"NoNewPrivileges": "yes",
		"ProtectSystem":   "strict",
		"ReadWritePaths":  "/var/lib/git-relay",
		"PrivateTmp":      "yes",
		"Restart":         "on-failure",
		"KillSignal":      "SIGTERM",
		"TimeoutStopSec":  "300",
		"WantedBy":        "multi-user.target",
	} {
		require.Equal(t, []string{want}, u[k], k)
	}

	confdir := filepath.Join(destdir, "etc/git-relay")
	env := filepath.Join(confdir, "server.env")
	require.Equal(t, os.FileMode(0o700), mode(t, confdir))
	require.Equal(t, os.FileMode(0o600), mode(t, env), "the settings hold the upstream token")
	b, err := os.ReadFile(env)
	require.NoError(t, err)
	require.Contains(t, strings.Split(string(b), "\n"), "GITHUB_TOKEN=", "an empty token to fill in")
	for _, name := range []string{"AWS_ENDPOINT_URL", "AWS_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} {
		require.Regexp(t, "(?m)^#"+name+"=", string(b), "a placeholder for the S3 store")
	}
	require.Contains(t, string(b), "\nGIT_RELAY_SERVE_FLAGS=--listen 127.0.0.1:8080 --data-dir /var/lib/git-relay ")
	require.NoFileExists(t, filepath.Join(confdir, "relay.key"), "install.sh never makes the key")

	require.Contains(t, out, "git-relay-server keygen -o /etc/git-relay/relay.key")
	require.Contains(t, out, "systemctl daemon-reload && systemctl enable --now git-relay-server")
	require.Contains(t, out, "useradd --system", "a staged install says how to create the service's user")

	// Again, over an edited settings file (with the mode its admin chose)
	// and a key: neither is touched.
	edited := "GITHUB_TOKEN=ghp_mine\nGIT_RELAY_SERVE_FLAGS=--listen 0.0.0.0:9000 --data-dir /srv/relay\n"
	require.NoError(t, os.WriteFile(env, []byte(edited), 0o640))
	require.NoError(t, os.Chmod(env, 0o640))
	key := filepath.Join(confdir, "relay.key")
	require.NoError(t, os.WriteFile(key, []byte("the key\n"), 0o600))
	out = install(t, destdir, prefix)
	b, err = os.ReadFile(env)
	require.NoError(t, err)
	require.Equal(t, edited, string(b))
	require.Equal(t, os.FileMode(0o640), mode(t, env))
	b, err = os.ReadFile(key)
	require.NoError(t, err)
	require.Equal(t, "the key\n", string(b))
	require.Equal(t, os.FileMode(0o600), mode(t, key))
	require.Contains(t, out, "kept "+env)
	require.Contains(t, out, "kept "+key)
	require.NotContains(t, out, "keygen", "no key step when there is a key")
}

// TestUnitVerifies runs systemd-analyze verify on the unit, with its
// ExecStart pointed at an executable that exists here (the check wants
// one). systemd need not be running.
func TestUnitVerifies(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("systemd-analyze is missing: .ci/run installs the systemd package for it")
		}
		t.Skip("systemd-analyze is not installed")
	}
	self, err := os.Executable()
	require.NoError(t, err)
	b, err := os.ReadFile(filepath.Join("systemd", "git-relay-server.service"))
	require.NoError(t, err)
	require.Contains(t, string(b), "ExecStart=/usr/local/bin/git-relay-server ")
	unit := strings.ReplaceAll(string(b), "/usr/local/bin/git-relay-server", self)
	path := filepath.Join(t.TempDir(), "git-relay-server.service")
	require.NoError(t, os.WriteFile(path, []byte(unit), 0o644))
	out, err := exec.Command(analyze, "verify", path).CombinedOutput()
	require.NoError(t, err, "%s", out)
	require.Empty(t, strings.TrimSpace(string(out)), "systemd-analyze verify has something to say")
}
