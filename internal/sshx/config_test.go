package sshx

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// sshGOutput is part of what OpenSSH 9.2's `ssh -G box` prints.
const sshGOutput = `host box
user alice
hostname 10.1.2.3
port 2222
identitiesonly yes
serveralivecountmax 5
serveraliveinterval 15
stricthostkeychecking accept-new
forwardagent yes
connecttimeout 7
identityfile %d/.ssh/box_%r
identityfile ~/.ssh/second
certificatefile ~/.ssh/box-cert.pub
globalknownhostsfile /etc/ssh/ssh_known_hosts /etc/ssh/ssh_known_hosts2
userknownhostsfile /srv/kh/known_hosts none
proxyjump j1,bob@j2:2200
`

func TestParseSSHGOutput(t *testing.T) {
	s := parseSSHG(sshGOutput)
	require.Equal(t, "alice", s.get("user"))
	require.Equal(t, []string{"%d/.ssh/box_%r", "~/.ssh/second"}, s["identityfile"])

	home := t.TempDir()
	r, err := fromSettings(Target{Host: "box"}, Options{Home: home}, s, true)
	require.NoError(t, err)
	require.Equal(t, "10.1.2.3", r.hostName)
	require.Equal(t, "alice", r.user)
	require.Equal(t, 2222, r.port)
	require.Equal(t, []string{filepath.Join(home, ".ssh", "box_alice"), filepath.Join(home, ".ssh", "second")}, r.identityFiles)
	require.False(t, r.defaultIdentities)
	require.True(t, r.identitiesOnly)
	require.Equal(t, []string{filepath.Join(home, ".ssh", "box-cert.pub")}, r.certificateFiles)
	require.Equal(t, []string{"/srv/kh/known_hosts"}, r.knownHostsFiles)
	require.Equal(t, []string{"/etc/ssh/ssh_known_hosts", "/etc/ssh/ssh_known_hosts2"}, r.globalKnownHostsFiles)
	require.True(t, r.acceptNew)
	require.True(t, r.forwardAgent)
	require.Equal(t, 7*time.Second, r.timeout)
	require.Equal(t, 15*time.Second, r.aliveInterval)
	require.Equal(t, 5, r.aliveCountMax)
	require.Equal(t, "j1,bob@j2:2200", r.proxyJump)
}

// OpenSSH's defaults, as `ssh -G` prints them, become ours: the default
// keys of $HOME, and known_hosts under $HOME rather than the passwd home.
func TestSSHGDefaults(t *testing.T) {
	pw := passwdHome()
	if pw == "" {
		t.Skip("no passwd entry")
	}
	out := "user me\nhostname h\nport 22\nconnecttimeout none\nproxyjump none\n"
	for _, id := range openSSHDefaultIdentities {
		out += "identityfile " + id + "\n"
	}
	out += "userknownhostsfile " + pw + "/.ssh/known_hosts " + pw + "/.ssh/known_hosts2\n"
	home := t.TempDir()
	r, err := fromSettings(Target{Host: "h"}, Options{Home: home}, parseSSHG(out), true)
	require.NoError(t, err)
	require.True(t, r.defaultIdentities)
	require.Equal(t, filepath.Join(home, ".ssh", "id_ed25519"), r.identityFiles[0])
	require.Equal(t, []string{filepath.Join(home, ".ssh", "known_hosts"), filepath.Join(home, ".ssh", "known_hosts2")}, r.knownHostsFiles)
	require.Equal(t, 20*time.Second, r.timeout)
	require.Empty(t, r.proxyJump)
}

func TestFallbackParserTolerance(t *testing.T) {
	home := t.TempDir()
	require.NoError(t, os.MkdirAll(filepath.Join(home, ".ssh", "conf.d"), 0o700))
	write := func(rel, text string) {
		require.NoError(t, os.WriteFile(filepath.Join(home, ".ssh", rel), []byte(text), 0o600))
	}
	write("conf.d/work.conf", "Host work\n  HostName work.example\nMatch exec \"corp-vpn-up\" host work\n  ProxyJump bastion\n")
	write("config", `Include conf.d/*.conf
Match host other.example exec "touch /tmp/should-not-run"
  User nobody
Match canonical final host *.corp
  Port 1
Match localnetwork 10.0.0.0/8 host lab
  Port 2
Match !host box user alice
  Port 3
Match originalhost box,!nothere
  ServerAliveInterval 9
Host box
  HostName 127.0.0.1
  User bob
  ProxyJump none
Match all
  Port 2022
`)
	logf := func(string, ...any) {}
	s, err := readConfigFallback(filepath.Join(home, ".ssh", "config"), home, Target{Host: "box"}, logf)
	require.NoError(t, err)
	r, err := fromSettings(Target{Host: "box"}, Options{Home: home}, s, false)
	require.NoError(t, err)
	require.Equal(t, "127.0.0.1", r.hostName)
	require.Equal(t, "bob", r.user)
	require.Equal(t, 2022, r.port)
	require.Equal(t, 9*time.Second, r.aliveInterval)
	require.Empty(t, r.proxyJump)

	// For a host that an unsupported Match could apply to, the error
	// names it and the way out.
	_, err = readConfigFallback(filepath.Join(home, ".ssh", "config"), home, Target{Host: "work"}, logf)
	require.ErrorContains(t, err, "conf.d/work.conf:3: Match exec cannot be evaluated without OpenSSH's ssh: install it")
	_, err = readConfigFallback(filepath.Join(home, ".ssh", "config"), home, Target{Host: "lab"}, logf)
	require.ErrorContains(t, err, "config:6: Match localnetwork cannot be evaluated")

	// No config at all is no error.
	s, err = readConfigFallback(filepath.Join(t.TempDir(), "none"), home, Target{Host: "box"}, logf)
	require.NoError(t, err)
	require.Empty(t, s)
}

func TestParseJumps(t *testing.T) {
	j, err := parseJumps("j1, bob@j2:2200,ssh://carol@j3:23,[::1]:2201,dave@[fe80::1]")
	require.NoError(t, err)
	require.Equal(t, []jump{{host: "j1"}, {user: "bob", host: "j2", port: 2200}, {user: "carol", host: "j3", port: 23},
		{host: "::1", port: 2201}, {user: "dave", host: "fe80::1"}}, j)
	for _, bad := range []string{"", "a,,b", "h:0", "h:99999", "-oProxyCommand=x", "ssh://h/path", "a b"} {
		_, err := parseJumps(bad)
		require.Error(t, err, bad)
	}
}

func TestExpandTokens(t *testing.T) {
	tok := map[byte]string{'%': "%", 'h': "host", 'p': "22", 'r': "me"}
	require.Equal(t, "nc host 22 # me 100% %z", expandTokens("nc %h %p # %r 100%% %z", tok))
}

func TestMarkerFilterTagAndCRLF(t *testing.T) {
	var out bytes.Buffer
	var tag string
	f := &MarkerFilter{W: &out, Marker: "--M--", OnMarker: func(s string) { tag = s }}
	for _, chunk := range []string{"motd\r\n--M", "-- 12", "34\r", "\nreal\r\n"} {
		_, err := f.Write([]byte(chunk))
		require.NoError(t, err)
	}
	require.Equal(t, "1234", tag)
	require.Equal(t, "real\r\n", out.String())
	require.Equal(t, "motd\r\n", f.Before())
}
