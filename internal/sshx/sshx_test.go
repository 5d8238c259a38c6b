package sshx_test

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/git-relay/git-relay/internal/sshtest"
	"github.com/git-relay/git-relay/internal/sshx"
)

// home makes a client HOME whose ~/.ssh holds the server's client key and,
// when trust is set, its host key.
func home(t *testing.T, s *sshtest.InProcess, trust bool) string {
	t.Helper()
	h := t.TempDir()
	t.Setenv("SSH_AUTH_SOCK", "")
	require.NoError(t, os.MkdirAll(filepath.Join(h, ".ssh"), 0o700))
	key, err := os.ReadFile(s.ClientKeyFile)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(h, ".ssh", "id_ed25519"), key, 0o600))
	if trust {
		require.NoError(t, os.WriteFile(filepath.Join(h, ".ssh", "known_hosts"), []byte(s.KnownHostsLine()+"\n"), 0o600))
	}
	return h
}

func target(s *sshtest.InProcess) sshx.Target {
	return sshx.Target{Host: s.Host, Port: s.Port, User: "tester"}
}

func run(t *testing.T, c *sshx.Client, script string, stdin []byte) (string, string, error) {
	t.Helper()
	var out, errb bytes.Buffer
	var in *bytes.Reader
	if stdin != nil {
		in = bytes.NewReader(stdin)
	}
	var err error
	if in != nil {
		err = c.RunScript(t.Context(), script, in, &out, &errb)
	} else {
		err = c.RunScript(t.Context(), script, nil, &out, &errb)
	}
	return out.String(), errb.String(), err
}

func TestUnknownHostIsRefusedWithFingerprint(t *testing.T) {
	s := sshtest.StartInProcess(t, sshtest.Options{})
	h := home(t, s, false)
	_, err := sshx.Dial(t.Context(), target(s), sshx.Options{Home: h})
	var hk *sshx.HostKeyError
	require.ErrorAs(t, err, &hk)
	require.False(t, hk.Changed)
	require.Contains(t, err.Error(), ssh.FingerprintSHA256(s.HostKey))
	require.Contains(t, err.Error(), "--accept-new")
	require.Contains(t, err.Error(), fmt.Sprintf("[127.0.0.1]:%d", s.Port))
	require.NoFileExists(t, filepath.Join(h, ".ssh", "known_hosts"), "a refused key must not be recorded")
	require.Equal(t, 0, s.Execs())
}

func TestAcceptNewRecordsTheKeyOnce(t *testing.T) {
	s := sshtest.StartInProcess(t, sshtest.Options{})
	h := home(t, s, false)
	c, err := sshx.Dial(t.Context(), target(s), sshx.Options{Home: h, AcceptNew: true})
	require.NoError(t, err)
	c.Close()
	kh, err := os.ReadFile(filepath.Join(h, ".ssh", "known_hosts"))
	require.NoError(t, err)
	require.Equal(t, s.KnownHostsLine()+"\n", string(kh))

	// Now known: no opt-in needed, and nothing is appended again.
	c, err = sshx.Dial(t.Context(), target(s), sshx.Options{Home: h})
	require.NoError(t, err)
	c.Close()
	kh2, err := os.ReadFile(filepath.Join(h, ".ssh", "known_hosts"))
	require.NoError(t, err)
	require.Equal(t, string(kh), string(kh2))
}

func TestChangedHostKeyIsRefusedEvenWithAcceptNew(t *testing.T) {
	s := sshtest.StartInProcess(t, sshtest.Options{})
	h := home(t, s, false)
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	require.NoError(t, err)
	other, err := ssh.NewPublicKey(pub)
	require.NoError(t, err)
	line := knownhosts.Line([]string{s.Addr()}, other)
	require.NoError(t, os.WriteFile(filepath.Join(h, ".ssh", "known_hosts"), []byte(line+"\n"), 0o600))
	_, err = sshx.Dial(t.Context(), target(s), sshx.Options{Home: h, AcceptNew: true})
	var hk *sshx.HostKeyError
	require.ErrorAs(t, err, &hk)
	require.True(t, hk.Changed)
	require.Contains(t, err.Error(), "CHANGED")
	require.Contains(t, err.Error(), ssh.FingerprintSHA256(s.HostKey))
	require.Equal(t, 0, s.Execs())
}

func TestNoisyLoginShellStaysOutOfTheOutput(t *testing.T) {
	s := sshtest.StartInProcess(t, sshtest.Options{Noise: "Welcome! tree 0000 need-bootstrap"})
	c, err := sshx.Dial(t.Context(), target(s), sshx.Options{Home: home(t, s, true)})
	require.NoError(t, err)
	defer c.Close()
	out, errOut, err := run(t, c, "echo out; echo err >&2", nil)
	require.NoError(t, err)
	require.Equal(t, "out\n", out)
	require.Equal(t, "err\n", errOut)
}

func TestExitStatusAndStdin(t *testing.T) {
	s := sshtest.StartInProcess(t, sshtest.Options{})
	c, err := sshx.Dial(t.Context(), target(s), sshx.Options{Home: home(t, s, true)})
	require.NoError(t, err)
	defer c.Close()

	big := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB
	out, _, err := run(t, c, "wc -c | tr -d ' '", big)
	require.NoError(t, err)
	require.Equal(t, fmt.Sprintf("%d\n", len(big)), out)

	_, _, err = run(t, c, "exit 7", nil)
	var exit *sshx.ExitError
	require.ErrorAs(t, err, &exit)
	require.Equal(t, 7, exit.Status)

	// A script that ignores its input still finishes.
	out, _, err = run(t, c, "echo done", big)
	require.NoError(t, err)
	require.Equal(t, "done\n", out)
	require.Equal(t, 3, s.Execs(), "one session per script")
}

func TestSSHConfigAlias(t *testing.T) {
	s := sshtest.StartInProcess(t, sshtest.Options{})
	h := home(t, s, true)
	// The key is only reachable through IdentityFile.
	require.NoError(t, os.Rename(filepath.Join(h, ".ssh", "id_ed25519"), filepath.Join(h, ".ssh", "box_key")))
	cfg := fmt.Sprintf("Host box\n  HostName %s\n  Port %d\n  User alice\n  IdentityFile ~/.ssh/box_key\n", s.Host, s.Port)
	require.NoError(t, os.WriteFile(filepath.Join(h, ".ssh", "config"), []byte(cfg), 0o600))
	c, err := sshx.Dial(t.Context(), sshx.Target{Host: "box"}, sshx.Options{Home: h})
	require.NoError(t, err)
	defer c.Close()
	require.Equal(t, "alice", c.User)
	require.Equal(t, s.Addr(), c.Addr)
}

func TestAgentKeys(t *testing.T) {
	s := sshtest.StartInProcess(t, sshtest.Options{})
	h := home(t, s, true)
	keyBytes, err := os.ReadFile(filepath.Join(h, ".ssh", "id_ed25519"))
	require.NoError(t, err)
	require.NoError(t, os.Remove(filepath.Join(h, ".ssh", "id_ed25519")))
	raw, err := ssh.ParseRawPrivateKey(keyBytes)
	require.NoError(t, err)
	keyring := agent.NewKeyring()
	require.NoError(t, keyring.Add(agent.AddedKey{PrivateKey: raw}))
	sock := filepath.Join(t.TempDir(), "agent.sock")
	l, err := net.Listen("unix", sock)
	require.NoError(t, err)
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() { _ = agent.ServeAgent(keyring, c); c.Close() }()
		}
	}()

	_, err = sshx.Dial(t.Context(), target(s), sshx.Options{Home: h})
	require.ErrorContains(t, err, "no SSH key")

	t.Setenv("SSH_AUTH_SOCK", sock)
	c, err := sshx.Dial(t.Context(), target(s), sshx.Options{Home: h})
	require.NoError(t, err)
	c.Close()
}

// serveAgent serves keyring on a socket and points SSH_AUTH_SOCK at it.
func serveAgent(t *testing.T, keyring agent.Agent) {
	sock := filepath.Join(t.TempDir(), "agent.sock")
	l, err := net.Listen("unix", sock)
	require.NoError(t, err)
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() { _ = agent.ServeAgent(keyring, c); c.Close() }()
		}
	}()
	t.Setenv("SSH_AUTH_SOCK", sock)
}

// TestIdentitiesOnly: the agent's keys are offered only when they belong
// to an IdentityFile entry.
func TestIdentitiesOnly(t *testing.T) {
	s := sshtest.StartInProcess(t, sshtest.Options{})
	h := home(t, s, true)
	good, err := os.ReadFile(filepath.Join(h, ".ssh", "id_ed25519"))
	require.NoError(t, err)
	raw, err := ssh.ParseRawPrivateKey(good)
	require.NoError(t, err)
	keyring := agent.NewKeyring()
	require.NoError(t, keyring.Add(agent.AddedKey{PrivateKey: raw}))
	serveAgent(t, keyring)
	// On disk, only a key the server does not know.
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	require.NoError(t, err)
	block, err := ssh.MarshalPrivateKey(priv, "")
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(h, ".ssh", "other"), pemEncode(block), 0o600))
	require.NoError(t, os.Remove(filepath.Join(h, ".ssh", "id_ed25519")))
	cfg := fmt.Sprintf("Host only\n  HostName %s\n  Port %d\n  User tester\n  IdentityFile ~/.ssh/other\n  IdentitiesOnly yes\n"+
		"Host any\n  HostName %s\n  Port %d\n  User tester\n  IdentityFile ~/.ssh/other\n", s.Host, s.Port, s.Host, s.Port)
	require.NoError(t, os.WriteFile(filepath.Join(h, ".ssh", "config"), []byte(cfg), 0o600))

	_, err = sshx.Dial(t.Context(), sshx.Target{Host: "only"}, sshx.Options{Home: h})
	require.ErrorContains(t, err, "accepted none of our keys (1 tried: ~/.ssh/other)")
	c, err := sshx.Dial(t.Context(), sshx.Target{Host: "any"}, sshx.Options{Home: h})
	require.NoError(t, err)
	c.Close()
}

func TestWrongKeyIsOneClearLine(t *testing.T) {
	s := sshtest.StartInProcess(t, sshtest.Options{})
	h := home(t, s, true)
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	require.NoError(t, err)
	block, err := ssh.MarshalPrivateKey(priv, "")
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(h, ".ssh", "id_ed25519"), pemEncode(block), 0o600))
	_, err = sshx.Dial(t.Context(), target(s), sshx.Options{Home: h})
	require.ErrorContains(t, err, "accepted none of our keys")
	require.NotContains(t, err.Error(), "\n")
}

func TestQuoteSurvivesSh(t *testing.T) {
	for _, s := range []string{"", "plain", "a b", "it's", `$(touch pwned)`, "`touch pwned`", "a;b|c&d", "-rf", `back\slash`, "\"dq\"", "'''", "tab\there", "ünï"} {
		out, err := exec.Command("sh", "-c", "printf '%s' "+sshx.Quote(s)).Output()
		require.NoError(t, err)
		require.Equal(t, s, string(out))
	}
}

func TestMarkerFilterFindsASplitMarker(t *testing.T) {
	var out bytes.Buffer
	f := &sshx.MarkerFilter{W: &out, Marker: "--M--"}
	for _, chunk := range []string{"noise without newline--", "M-", "-\nrea", "l output\n"} {
		_, err := f.Write([]byte(chunk))
		require.NoError(t, err)
	}
	require.True(t, f.Found())
	require.Equal(t, "real output\n", out.String())
	require.Equal(t, "noise without newline", f.Before())
}

func TestMissingMarkerIsAnError(t *testing.T) {
	var out bytes.Buffer
	f := &sshx.MarkerFilter{W: &out, Marker: "--M--"}
	_, _ = f.Write([]byte("bash: sh: command not found\n"))
	require.False(t, f.Found())
	require.Empty(t, out.String())
	require.True(t, strings.HasPrefix(f.Before(), "bash: sh"))
}

func TestRealSSHD(t *testing.T) {
	s := sshtest.Start(t, sshtest.Options{Noise: "Last login: never; tree deadbeef"})
	h := t.TempDir()
	t.Setenv("SSH_AUTH_SOCK", "")
	require.NoError(t, s.ClientConfig(h, "devbox", true))
	c, err := sshx.Dial(t.Context(), sshx.Target{Host: "devbox"}, sshx.Options{Home: h})
	require.NoError(t, err)
	defer c.Close()
	var out, errb bytes.Buffer
	err = c.RunScript(t.Context(), "cd -- "+sshx.Quote(t.TempDir())+" && git init -q && git -C . status", nil, &out, &errb)
	var exit *sshx.ExitError
	require.True(t, errors.As(err, &exit), "the remote git wrapper refuses -C: %v", err)
	require.Contains(t, errb.String(), "Unknown option: -C")
	require.NotContains(t, errb.String(), "Last login")
	out.Reset()
	require.NoError(t, c.RunScript(t.Context(), "echo \"$HOME\"", nil, &out, nil))
	require.Equal(t, s.RemoteHome+"\n", out.String())
}

func pemEncode(b *pem.Block) []byte { return pem.EncodeToMemory(b) }
