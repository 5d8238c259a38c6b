package sshx_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/crypto/ssh"

	"github.com/git-relay/git-relay/internal/gittest"
	"github.com/git-relay/git-relay/internal/sshtest"
	"github.com/git-relay/git-relay/internal/sshx"
)

// clientHome is a HOME with an empty ~/.ssh and no agent.
func clientHome(t *testing.T) string {
	t.Helper()
	h := t.TempDir()
	t.Setenv("SSH_AUTH_SOCK", "")
	require.NoError(t, os.MkdirAll(filepath.Join(h, ".ssh"), 0o700))
	return h
}

// addHost gives home a config entry alias for s (its own key file, with
// an absolute path so that a real ssh run by a ProxyCommand finds it too)
// plus extra lines, and trusts s's host key.
func addHost(t *testing.T, home string, s *sshtest.Server, alias, extra string) {
	t.Helper()
	key, err := os.ReadFile(s.ClientKeyFile)
	require.NoError(t, err)
	keyFile := filepath.Join(home, ".ssh", alias+"_key")
	require.NoError(t, os.WriteFile(keyFile, key, 0o600))
	cfg := fmt.Sprintf("Host %s\n  HostName %s\n  Port %d\n  User %s\n  IdentityFile %s\n  IdentitiesOnly yes\n  UserKnownHostsFile %s\n%s",
		alias, s.Host, s.Port, s.User, keyFile, filepath.Join(home, ".ssh", "known_hosts"), extra)
	appendTo(t, filepath.Join(home, ".ssh", "config"), cfg)
	appendTo(t, filepath.Join(home, ".ssh", "known_hosts"), s.KnownHostsLine()+"\n")
}

func appendTo(t *testing.T, name, text string) {
	t.Helper()
	f, err := os.OpenFile(name, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	require.NoError(t, err)
	_, err = f.WriteString(text)
	require.NoError(t, err)
	require.NoError(t, f.Close())
}

func echo(t *testing.T, c *sshx.Client) string {
	t.Helper()
	var out bytes.Buffer
	require.NoError(t, c.RunScript(t.Context(), `echo "ok $SSH_CONNECTION"`, nil, &out, nil))
	return out.String()
}

// accepted counts the logins sshd accepted.
func accepted(s *sshtest.Server) int { return strings.Count(s.Log(), "Accepted publickey") }

// TestProxyJumpChain reaches a host through two jump hosts, each a real
// sshd with its own key, each host key checked against known_hosts.
func TestProxyJumpChain(t *testing.T) {
	j1 := sshtest.Start(t, sshtest.Options{})
	j2 := sshtest.Start(t, sshtest.Options{})
	target := sshtest.Start(t, sshtest.Options{})
	h := clientHome(t)
	addHost(t, h, j1, "j1", "")
	addHost(t, h, j2, "j2", "")
	addHost(t, h, target, "box", "  ProxyJump j1,j2\n")
	addHost(t, h, target, "box1", "  ProxyJump j1\n")

	for _, o := range []sshx.Options{{Home: h}, {Home: h, SSH: "none"}} {
		c, err := sshx.Dial(t.Context(), sshx.Target{Host: "box"}, o)
		require.NoError(t, err, "SSH=%q", o.SSH)
		require.Contains(t, echo(t, c), "ok ")
		require.Equal(t, target.Addr(), c.Addr)
		c.Close()
	}
	require.Equal(t, 2, accepted(j1))
	require.Equal(t, 2, accepted(j2))
	require.Equal(t, 2, accepted(target))

	c, err := sshx.Dial(t.Context(), sshx.Target{Host: "box1"}, sshx.Options{Home: h})
	require.NoError(t, err)
	require.Contains(t, echo(t, c), "ok ")
	c.Close()
	require.Equal(t, 3, accepted(j1))
	require.Equal(t, 2, accepted(j2))

	// A jump host whose key is not known is refused like any host.
	require.NoError(t, os.WriteFile(filepath.Join(h, ".ssh", "known_hosts"), []byte(j2.KnownHostsLine()+"\n"+target.KnownHostsLine()+"\n"), 0o600))
	_, err = sshx.Dial(t.Context(), sshx.Target{Host: "box"}, sshx.Options{Home: h})
	var hk *sshx.HostKeyError
	require.ErrorAs(t, err, &hk)
	require.Contains(t, err.Error(), fmt.Sprintf("[127.0.0.1]:%d", j1.Port))
	require.Contains(t, err.Error(), "jump host j1")
	t.Logf("unknown jump host: %v", err)
}

// TestProxyCommand reaches the host through `ssh -W %h:%p`, OpenSSH's own
// client run as a ProxyCommand, and a failing command's own words come
// back in the error.
func TestProxyCommand(t *testing.T) {
	sshBin, err := exec.LookPath("ssh")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("CI=true and ssh is missing (apt-get install openssh-client)")
		}
		t.Skip("ssh is missing")
	}
	jump := sshtest.Start(t, sshtest.Options{})
	target := sshtest.Start(t, sshtest.Options{})
	h := clientHome(t)
	cfg := filepath.Join(h, ".ssh", "config")
	addHost(t, h, jump, "bastion", "")
	addHost(t, h, target, "box", fmt.Sprintf("  ProxyCommand %s -F %s -o BatchMode=yes -W %%h:%%p bastion\n", sshBin, cfg))
	addHost(t, h, target, "broken", "  ProxyCommand echo 'bastion.example: no route to host (%h %p %r)' >&2; exit 1\n")

	for _, o := range []sshx.Options{{Home: h}, {Home: h, SSH: "none"}} {
		c, err := sshx.Dial(t.Context(), sshx.Target{Host: "box"}, o)
		require.NoError(t, err, "SSH=%q", o.SSH)
		require.Contains(t, echo(t, c), "ok ")
		c.Close()
	}
	require.Equal(t, 2, accepted(jump))
	require.Equal(t, 2, accepted(target))

	_, err = sshx.Dial(t.Context(), sshx.Target{Host: "broken"}, sshx.Options{Home: h})
	require.EqualError(t, err, fmt.Sprintf("connect to broken with ProxyCommand %q: bastion.example: no route to host (127.0.0.1 %d %s)",
		"echo 'bastion.example: no route to host (%h %p %r)' >&2; exit 1", target.Port, target.User))
	t.Logf("broken ProxyCommand: %v", err)
}

// TestMatchForAnotherHost: Match blocks our own parser cannot evaluate
// (exec, canonical...) break no other host, with ssh -G or without.
func TestMatchForAnotherHost(t *testing.T) {
	s := sshtest.Start(t, sshtest.Options{})
	h := clientHome(t)
	pwned := filepath.Join(h, "pwned")
	appendTo(t, filepath.Join(h, ".ssh", "config"), fmt.Sprintf(
		"Match host other.example exec \"touch %s\"\n  User nobody\nMatch canonical host *.corp\n  ProxyJump nowhere\n", pwned))
	addHost(t, h, s, "box", "")
	appendTo(t, filepath.Join(h, ".ssh", "config"), "Match exec \"false\"\n  Port 1\n")
	c, err := sshx.Dial(t.Context(), sshx.Target{Host: "box"}, sshx.Options{Home: h})
	require.NoError(t, err)
	require.Contains(t, echo(t, c), "ok ")
	c.Close()
	require.NoFileExists(t, pwned, "ssh -G evaluates exec only for the host it names")

	// Our own parser skips what cannot apply; an exec that could apply to
	// this host is an error that says what to do.
	cfg, err := os.ReadFile(filepath.Join(h, ".ssh", "config"))
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(h, ".ssh", "config"), []byte(strings.ReplaceAll(string(cfg), "Match exec \"false\"\n  Port 1\n", "")), 0o600))
	c, err = sshx.Dial(t.Context(), sshx.Target{Host: "box"}, sshx.Options{Home: h, SSH: "none"})
	require.NoError(t, err)
	require.Contains(t, echo(t, c), "ok ")
	c.Close()
	appendTo(t, filepath.Join(h, ".ssh", "config"), "Match exec \"false\"\n  Port 1\n")
	_, err = sshx.Dial(t.Context(), sshx.Target{Host: "box"}, sshx.Options{Home: h, SSH: "none"})
	require.ErrorContains(t, err, "Match exec cannot be evaluated without OpenSSH's ssh")
	require.NoFileExists(t, pwned)
}

// passphraseKey writes an ed25519 key protected by passphrase at path
// (and path.pub) and authorizes it on s.
func passphraseKey(t *testing.T, s *sshtest.Server, path, passphrase string) {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	require.NoError(t, err)
	block, err := ssh.MarshalPrivateKeyWithPassphrase(priv, "", []byte(passphrase))
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(path, pem.EncodeToMemory(block), 0o600))
	sp, err := ssh.NewPublicKey(pub)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(path+".pub", ssh.MarshalAuthorizedKey(sp), 0o644))
	appendTo(t, s.AuthorizedKeys, string(ssh.MarshalAuthorizedKey(sp)))
}

// TestPassphraseKeyAndRealAgent: a key with a passphrase that no agent
// holds gets a message saying so and what to run; once ssh-add put it in
// a real ssh-agent, it logs in.
func TestPassphraseKeyAndRealAgent(t *testing.T) {
	for _, tool := range []string{"ssh-agent", "ssh-add"} {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatalf("CI=true and %s is missing (apt-get install openssh-client)", tool)
			}
			t.Skip(tool + " is missing")
		}
	}
	s := sshtest.Start(t, sshtest.Options{})
	h := clientHome(t)
	key := filepath.Join(h, ".ssh", "id_ed25519")
	passphraseKey(t, s, key, "correct horse")
	appendTo(t, filepath.Join(h, ".ssh", "known_hosts"), s.KnownHostsLine()+"\n")
	target := sshx.Target{Host: s.Host, Port: s.Port, User: s.User}

	_, err := sshx.Dial(t.Context(), target, sshx.Options{Home: h})
	require.EqualError(t, err, fmt.Sprintf("log in to %s as %q: ~/.ssh/id_ed25519 is protected by a passphrase and not in ssh-agent: run ssh-add ~/.ssh/id_ed25519 (no ssh-agent is running: start one with `eval \"$(ssh-agent)\"` first)", s.Addr(), s.User))

	// A real agent, without the key yet.
	sock := filepath.Join(t.TempDir(), "agent.sock")
	agentCmd := exec.Command("ssh-agent", "-D", "-a", sock)
	agentCmd.Stdout, agentCmd.Stderr = io.Discard, io.Discard
	require.NoError(t, agentCmd.Start())
	t.Cleanup(func() { _ = agentCmd.Process.Kill(); _ = agentCmd.Wait() })
	require.Eventually(t, func() bool { _, err := os.Stat(sock); return err == nil }, 10*time.Second, 20*time.Millisecond)
	t.Setenv("SSH_AUTH_SOCK", sock)
	_, err = sshx.Dial(t.Context(), target, sshx.Options{Home: h})
	require.EqualError(t, err, fmt.Sprintf("log in to %s as %q: ~/.ssh/id_ed25519 is protected by a passphrase and not in ssh-agent: run ssh-add ~/.ssh/id_ed25519", s.Addr(), s.User))

	// ssh-add reads the passphrase from an askpass program.
	askpass := filepath.Join(t.TempDir(), "askpass")
	gittest.Script(t, askpass, "#!/bin/sh\necho 'correct horse'\n")
	add := exec.Command("ssh-add", key)
	add.Env = append(os.Environ(), "SSH_AUTH_SOCK="+sock, "SSH_ASKPASS="+askpass, "SSH_ASKPASS_REQUIRE=force", "DISPLAY=:0")
	add.Stdin = nil
	out, err := add.CombinedOutput()
	require.NoError(t, err, "ssh-add: %s", out)

	c, err := sshx.Dial(t.Context(), target, sshx.Options{Home: h})
	require.NoError(t, err)
	require.Contains(t, echo(t, c), "ok ")
	c.Close()
}

// TestRefusingLoginShell: a nologin account's own message comes back.
func TestRefusingLoginShell(t *testing.T) {
	s := sshtest.Start(t, sshtest.Options{})
	name := sshtest.NologinUser(t)
	h := clientHome(t)
	key, err := os.ReadFile(s.ClientKeyFile)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(h, ".ssh", "id_ed25519"), key, 0o600))
	appendTo(t, filepath.Join(h, ".ssh", "known_hosts"), s.KnownHostsLine()+"\n")
	c, err := sshx.Dial(t.Context(), sshx.Target{Host: s.Host, Port: s.Port, User: name}, sshx.Options{Home: h})
	require.NoError(t, err)
	defer c.Close()
	err = c.RunScript(t.Context(), "echo hi", nil, io.Discard, io.Discard)
	var ls *sshx.LoginShellError
	require.ErrorAs(t, err, &ls)
	require.EqualError(t, err, fmt.Sprintf("the login shell of %q on %s refused to run commands: This account is currently not available.", name, s.Addr()))
}

// TestServerWantsOtherMethods names what the server would take when none
// of our keys works.
func TestServerWantsOtherMethods(t *testing.T) {
	s := sshtest.Start(t, sshtest.Options{Config: []string{"PasswordAuthentication yes", "AuthenticationMethods password"}})
	h := clientHome(t)
	addHost(t, h, s, "box", "")
	_, err := sshx.Dial(t.Context(), sshx.Target{Host: "box"}, sshx.Options{Home: h})
	require.EqualError(t, err, fmt.Sprintf("log in to %s as %q: the server accepts only password, and git-sidecar logs in with keys only; add your public key to ~/.ssh/authorized_keys there (ssh-copy-id)", s.Addr(), s.User))

	s2 := sshtest.Start(t, sshtest.Options{})
	h2 := clientHome(t)
	addHost(t, h2, s2, "box", "")
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	require.NoError(t, err)
	block, err := ssh.MarshalPrivateKey(priv, "")
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(h2, ".ssh", "box_key"), pem.EncodeToMemory(block), 0o600))
	_, err = sshx.Dial(t.Context(), sshx.Target{Host: "box"}, sshx.Options{Home: h2})
	require.EqualError(t, err, fmt.Sprintf("log in to %s as %q: the server accepted none of our keys (1 tried: ~/.ssh/box_key); add one to its ~/.ssh/authorized_keys", s2.Addr(), s2.User))
}

// freezer is a TCP forwarder that can stop forwarding without closing
// anything, as a dead network does.
type freezer struct {
	l      net.Listener
	mu     sync.Mutex
	frozen bool
}

func newFreezer(t *testing.T, to string) *freezer {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	f := &freezer{l: l}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("tcp", to)
			if err != nil {
				c.Close()
				continue
			}
			t.Cleanup(func() { c.Close(); u.Close() })
			go f.pipe(u, c)
			go f.pipe(c, u)
		}
	}()
	return f
}

func (f *freezer) pipe(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if err != nil {
			return
		}
		f.mu.Lock()
		frozen := f.frozen
		f.mu.Unlock()
		if frozen {
			continue // dropped on the floor
		}
		if _, err := dst.Write(buf[:n]); err != nil {
			return
		}
	}
}

func (f *freezer) freeze() { f.mu.Lock(); f.frozen = true; f.mu.Unlock() }

// TestKeepaliveNoticesADeadConnection: with ServerAliveInterval, a
// command on a connection that went silent ends with an error instead of
// waiting for ever.
func TestKeepaliveNoticesADeadConnection(t *testing.T) {
	s := sshtest.StartInProcess(t, sshtest.Options{})
	f := newFreezer(t, s.Addr())
	h := home(t, s, false)
	port := f.l.Addr().(*net.TCPAddr).Port
	appendTo(t, filepath.Join(h, ".ssh", "known_hosts"), strings.Replace(s.KnownHostsLine(), fmt.Sprint(s.Port), fmt.Sprint(port), 1)+"\n")
	appendTo(t, filepath.Join(h, ".ssh", "config"), fmt.Sprintf("Host flaky\n  HostName 127.0.0.1\n  Port %d\n  User tester\n  ServerAliveInterval 1\n  ServerAliveCountMax 2\n", port))
	c, err := sshx.Dial(t.Context(), sshx.Target{Host: "flaky"}, sshx.Options{Home: h})
	require.NoError(t, err)
	defer c.Close()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- c.RunScript(ctx, "echo started; sleep 50", nil, io.Discard, io.Discard) }()
	time.Sleep(300 * time.Millisecond) // let the command start; not a synchronisation the result depends on
	f.freeze()
	select {
	case err := <-done:
		require.ErrorContains(t, err, "lost: no answer to 2 keepalives sent every 1s")
		t.Logf("dead connection: %v", err)
	case <-ctx.Done():
		t.Fatal("the command on a dead connection did not end")
	}
}

// TestCertificate logs in with a user certificate that the server trusts
// through its CA (the key itself is not in authorized_keys), named by
// CertificateFile or found beside the key as KEY-cert.pub.
func TestCertificate(t *testing.T) {
	_, caPriv, err := ed25519.GenerateKey(rand.Reader)
	require.NoError(t, err)
	ca, err := ssh.NewSignerFromKey(caPriv)
	require.NoError(t, err)
	caFile := filepath.Join(t.TempDir(), "ca.pub")
	require.NoError(t, os.WriteFile(caFile, ssh.MarshalAuthorizedKey(ca.PublicKey()), 0o644))
	require.NoError(t, os.Chmod(filepath.Dir(caFile), 0o755))
	s := sshtest.Start(t, sshtest.Options{Config: []string{"TrustedUserCAKeys " + caFile}})
	h := clientHome(t)
	appendTo(t, filepath.Join(h, ".ssh", "known_hosts"), s.KnownHostsLine()+"\n")

	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	require.NoError(t, err)
	block, err := ssh.MarshalPrivateKey(priv, "")
	require.NoError(t, err)
	key := filepath.Join(h, ".ssh", "id_ed25519")
	require.NoError(t, os.WriteFile(key, pem.EncodeToMemory(block), 0o600))
	sshPub, err := ssh.NewPublicKey(pub)
	require.NoError(t, err)
	cert := &ssh.Certificate{Key: sshPub, CertType: ssh.UserCert, KeyId: "test", ValidPrincipals: []string{s.User},
		ValidBefore: ssh.CertTimeInfinity, Permissions: ssh.Permissions{Extensions: map[string]string{"permit-pty": ""}}}
	require.NoError(t, cert.SignCert(rand.Reader, ca))
	target := sshx.Target{Host: s.Host, Port: s.Port, User: s.User}

	_, err = sshx.Dial(t.Context(), target, sshx.Options{Home: h})
	require.ErrorContains(t, err, "accepted none of our keys", "without the certificate the key is unknown")

	certFile := filepath.Join(h, ".ssh", "mycert.pub")
	require.NoError(t, os.WriteFile(certFile, ssh.MarshalAuthorizedKey(cert), 0o644))
	appendTo(t, filepath.Join(h, ".ssh", "config"), fmt.Sprintf("Host cert\n  HostName %s\n  Port %d\n  User %s\n  IdentityFile %s\n  CertificateFile %s\n",
		s.Host, s.Port, s.User, key, certFile))
	c, err := sshx.Dial(t.Context(), sshx.Target{Host: "cert"}, sshx.Options{Home: h})
	require.NoError(t, err)
	require.Contains(t, echo(t, c), "ok ")
	c.Close()

	require.NoError(t, os.Rename(certFile, key+"-cert.pub"))
	c, err = sshx.Dial(t.Context(), target, sshx.Options{Home: h})
	require.NoError(t, err)
	c.Close()
	require.Contains(t, s.Log(), "Accepted certificate ID \"test\"")
}
