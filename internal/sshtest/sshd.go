// Package sshtest runs SSH servers for tests: a real OpenSSH sshd on a
// loopback port (the far side that users really have), and a small
// in-process server for unit tests that need to misbehave on purpose.
//
// The real sshd runs as the current user with keys and configuration in a
// temporary folder. Its sessions get a HOME of their own (so a test can
// give the login shell a noisy .bashrc) and a PATH whose first entry holds
// a `git` wrapper that refuses `-C`, standing in for an old git.
package sshtest

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
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/git-relay/git-relay/internal/gittest"
)

// SSHDPath is where Debian's openssh-server installs sshd. It must be an
// absolute path: sshd refuses to re-execute itself otherwise.
const SSHDPath = "/usr/sbin/sshd"

// Options shape the server.
type Options struct {
	// Noise, when set, is printed on stdout and stderr by the remote login
	// shell (from its .bashrc) at the start of every session.
	Noise string
	// Config lines go first in sshd_config, where they override ours
	// (sshd keeps the first value of a keyword).
	Config []string
}

// Server is a running sshd.
type Server struct {
	Dir  string // everything of this server lives here
	Host string // 127.0.0.1
	Port int
	User string
	// HostKey is the server's public key.
	HostKey ssh.PublicKey
	// ClientKeyFile is an unencrypted private key the server accepts.
	ClientKeyFile string
	// RemoteHome is HOME in the server's sessions.
	RemoteHome string
	// SessionLog gets one line per session the login shell starts.
	SessionLog string

	// AuthorizedKeys is the file of client keys, in a folder every user
	// can read (sshd reads it as the user logging in).
	AuthorizedKeys string

	cmd    *exec.Cmd
	done   chan struct{}
	log    *syncBuffer
	extra  []string
	keyDir string
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// ErrNoSSHD says that sshd is not installed.
var ErrNoSSHD = errors.New("sshd is not installed at " + SSHDPath + " (apt-get install openssh-server)")

// Start starts a server for the test and stops it when the test ends. A
// missing sshd skips the test, except under CI=true, where it fails it.
func Start(t testing.TB, o Options) *Server {
	t.Helper()
	s, err := New(t.TempDir(), o)
	if errors.Is(err, ErrNoSSHD) {
		if os.Getenv("CI") == "true" {
			t.Fatalf("CI=true and %v", err)
		}
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Logf("stop sshd: %v", err)
		}
		if t.Failed() {
			t.Logf("sshd log:\n%s", s.Log())
		}
	})
	return s
}

// New starts a server whose files live in dir.
func New(dir string, o Options) (*Server, error) {
	if _, err := os.Stat(SSHDPath); err != nil {
		return nil, ErrNoSSHD
	}
	if os.Geteuid() == 0 {
		// sshd's privilege separation needs this empty folder; .ci/run
		// creates it too, but a fresh container may not have it.
		if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
			return nil, fmt.Errorf("create /run/sshd: %w", err)
		}
	}
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	u, err := user.Current()
	if err != nil {
		return nil, fmt.Errorf("look up current user: %w", err)
	}
	s := &Server{Dir: dir, Host: "127.0.0.1", User: u.Username, log: &syncBuffer{}, extra: o.Config}
	hostPub, err := writeKey(filepath.Join(dir, "host_ed25519"))
	if err != nil {
		return nil, err
	}
	if s.HostKey, err = ssh.NewPublicKey(hostPub); err != nil {
		return nil, err
	}
	s.ClientKeyFile = filepath.Join(dir, "client_ed25519")
	clientPub, err := writeKey(s.ClientKeyFile)
	if err != nil {
		return nil, err
	}
	sshClientPub, err := ssh.NewPublicKey(clientPub)
	if err != nil {
		return nil, err
	}
	// Test folders are private to the current user; the public keys go
	// where a login as another user (a nologin account) can read them.
	if s.keyDir, err = os.MkdirTemp("", "sshtest-keys-"); err != nil {
		return nil, err
	}
	if err := os.Chmod(s.keyDir, 0o755); err != nil {
		return nil, err
	}
	s.AuthorizedKeys = filepath.Join(s.keyDir, "authorized_keys")
	if err := os.WriteFile(s.AuthorizedKeys, ssh.MarshalAuthorizedKey(sshClientPub), 0o644); err != nil {
		return nil, err
	}
	s.RemoteHome = filepath.Join(dir, "remote-home")
	bin := filepath.Join(dir, "remote-bin")
	for _, d := range []string{s.RemoteHome, bin} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	realGit, err := exec.LookPath("git")
	if err != nil {
		return nil, fmt.Errorf("find git: %w", err)
	}
	if err := gittest.WriteExecutable(filepath.Join(bin, "git"), GitWrapper(realGit)); err != nil {
		return nil, err
	}
	s.SessionLog = filepath.Join(dir, "sessions.log")
	rc := "echo session >> " + shq(s.SessionLog) + "\n"
	if o.Noise != "" {
		rc += "printf '%s\\n' " + shq(o.Noise) + "\nprintf '%s\\n' " + shq(o.Noise) + " >&2\n"
	}
	// bash reads .bashrc for commands run by sshd; .profile and .zshenv
	// cover a login shell of another kind.
	for _, f := range []string{".bashrc", ".profile", ".zshenv"} {
		if err := os.WriteFile(filepath.Join(s.RemoteHome, f), []byte(rc), 0o644); err != nil {
			return nil, err
		}
	}
	path := bin + ":" + filepath.Dir(realGit) + ":/usr/local/bin:/usr/bin:/bin"
	for attempt := 0; ; attempt++ {
		err := s.start(path)
		if err == nil {
			return s, nil
		}
		if attempt == 4 {
			return nil, err
		}
	}
}

// GitWrapper is a `git` that refuses `-C` before the subcommand, the way a
// git older than 1.8.5 does, and otherwise runs realGit.
func GitWrapper(realGit string) string {
	return `#!/bin/sh
for a in "$@"; do
  case "$a" in
    -C|-C*) echo "Unknown option: -C (this git stands in for one older than 1.8.5)" >&2; exit 129 ;;
    -c) ;;
    -*) ;;
    *) break ;;
  esac
done
exec ` + shq(realGit) + ` "$@"
`
}

func (s *Server) start(path string) error {
	port, err := freePort()
	if err != nil {
		return err
	}
	s.Port = port
	cfg := strings.Join(s.extra, "\n") + "\n" + strings.Join([]string{
		"Port " + strconv.Itoa(port),
		"ListenAddress 127.0.0.1",
		"HostKey " + filepath.Join(s.Dir, "host_ed25519"),
		"AuthorizedKeysFile " + s.AuthorizedKeys,
		// Keys under /tmp would fail sshd's ownership checks.
		"StrictModes no",
		"UsePAM no",
		"PasswordAuthentication no",
		"KbdInteractiveAuthentication no",
		"PubkeyAuthentication yes",
		"PermitRootLogin prohibit-password",
		"PidFile none",
		"LogLevel VERBOSE",
		"MaxStartups 100",
		"SetEnv HOME=" + s.RemoteHome + " PATH=" + path,
	}, "\n") + "\n"
	cfgFile := filepath.Join(s.Dir, "sshd_config")
	if err := os.WriteFile(cfgFile, []byte(cfg), 0o600); err != nil {
		return err
	}
	cmd := exec.Command(SSHDPath, "-D", "-e", "-f", cfgFile)
	cmd.Stdout = s.log
	cmd.Stderr = s.log
	// The sshd of a connection a client keeps open holds the log pipe:
	// Close ends those too, and does not wait on the pipe for ever.
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start sshd: %w", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		select {
		case <-done:
			return fmt.Errorf("sshd exited at start: %s", strings.TrimSpace(s.log.String()))
		default:
		}
		if strings.Contains(s.log.String(), "Server listening") {
			if c, err := net.DialTimeout("tcp", s.Addr(), time.Second); err == nil {
				c.Close()
				s.cmd, s.done = cmd, done
				return nil
			}
		}
		if time.Now().After(deadline) {
			_ = cmd.Process.Kill()
			<-done
			return fmt.Errorf("sshd did not start listening on %s: %s", s.Addr(), s.log.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Addr is host:port.
func (s *Server) Addr() string { return net.JoinHostPort(s.Host, strconv.Itoa(s.Port)) }

// Log returns what sshd printed.
func (s *Server) Log() string { return s.log.String() }

// Sessions counts the sessions whose login shell has started so far.
func (s *Server) Sessions() int {
	b, err := os.ReadFile(s.SessionLog)
	if err != nil {
		return 0
	}
	return strings.Count(string(b), "session\n")
}

// KnownHostsLine is the known_hosts entry for this server.
func (s *Server) KnownHostsLine() string {
	return knownhosts.Line([]string{s.Addr()}, s.HostKey)
}

// ClientConfig writes a client-side ~/.ssh under home: a config entry for
// alias (HostName, Port, User, IdentityFile) and, when trust is set, the
// server's key in known_hosts.
func (s *Server) ClientConfig(home, alias string, trust bool) error {
	dir := filepath.Join(home, ".ssh")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	key, err := os.ReadFile(s.ClientKeyFile)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "id_ed25519"), key, 0o600); err != nil {
		return err
	}
	if err := appendFile(filepath.Join(dir, "config"), s.HostBlock(alias)); err != nil {
		return err
	}
	if trust {
		return appendFile(filepath.Join(dir, "known_hosts"), s.KnownHostsLine()+"\n")
	}
	return nil
}

// HostBlock is a ~/.ssh/config entry for alias that reaches this server
// with the key ClientConfig installs.
func (s *Server) HostBlock(alias string) string {
	return fmt.Sprintf("Host %s\n  HostName %s\n  Port %d\n  User %s\n  IdentityFile ~/.ssh/id_ed25519\n", alias, s.Host, s.Port, s.User)
}

// NologinUser is a system account whose login shell is /usr/sbin/nologin,
// created on first use (it needs root). A missing useradd or nologin, or
// not being root, skips the test, except under CI=true, where it fails it.
func NologinUser(t testing.TB) string {
	t.Helper()
	const name = "gitrelay-nologin"
	skip := func(why string) string {
		if os.Getenv("CI") == "true" {
			t.Fatalf("CI=true and %s", why)
		}
		t.Skip(why)
		return ""
	}
	if _, err := user.Lookup(name); err == nil {
		return name
	}
	if os.Geteuid() != 0 {
		return skip("creating a nologin user needs root")
	}
	if _, err := os.Stat("/usr/sbin/nologin"); err != nil {
		return skip("/usr/sbin/nologin is missing (apt-get install login)")
	}
	useradd, err := exec.LookPath("useradd")
	if err != nil {
		return skip("useradd is missing (apt-get install passwd)")
	}
	// "*" rather than useradd's locked "!": sshd without PAM refuses
	// locked accounts before their shell could say anything. Home is /,
	// so that sshd has nothing to complain about on stderr.
	out, err := exec.Command(useradd, "--system", "--no-create-home", "--home-dir", "/",
		"--shell", "/usr/sbin/nologin", "--password", "*", name).CombinedOutput()
	if _, lerr := user.Lookup(name); lerr != nil {
		t.Fatalf("useradd %s: %v: %s", name, err, out)
	}
	return name
}

func appendFile(name, text string) error {
	f, err := os.OpenFile(name, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.WriteString(text); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// DropConnections kills the sshd processes that serve the open
// connections (every descendant of the listening sshd), as a network cut
// or a server reboot would end them, and returns how many it killed. The
// server keeps listening, so new connections work.
func (s *Server) DropConnections() int {
	if s.cmd == nil {
		return 0
	}
	parent := map[int]int{}
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, f := range stats {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...: comm may hold spaces and parens.
		i := bytes.LastIndexByte(b, ')')
		if i < 0 {
			continue
		}
		fields := strings.Fields(string(b[i+1:]))
		pid, err1 := strconv.Atoi(filepath.Base(filepath.Dir(f)))
		if len(fields) < 2 || err1 != nil {
			continue
		}
		if ppid, err := strconv.Atoi(fields[1]); err == nil {
			parent[pid] = ppid
		}
	}
	descends := func(pid int) bool {
		for i := 0; i < 64 && pid > 1; i++ {
			pid = parent[pid]
			if pid == s.cmd.Process.Pid {
				return true
			}
		}
		return false
	}
	n := 0
	for pid := range parent {
		if descends(pid) && syscall.Kill(pid, syscall.SIGKILL) == nil {
			n++
		}
	}
	return n
}

// Close stops sshd.
func (s *Server) Close() error {
	if s.keyDir != "" {
		os.RemoveAll(s.keyDir)
		s.keyDir = ""
	}
	if s.cmd == nil {
		return nil
	}
	// Each connection's sshd is a child in a session of its own: end
	// them first, so that clients that keep a connection see it close.
	killChildren(s.cmd.Process.Pid)
	_ = s.cmd.Process.Kill()
	<-s.done
	s.cmd = nil
	return nil
}

// killChildren kills the processes whose parent is pid.
func killChildren(pid int) {
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		child, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...; comm may hold spaces and parentheses.
		i := bytes.LastIndexByte(b, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(b[i+1:]))
		if len(f) > 1 && f[1] == strconv.Itoa(pid) {
			_ = syscall.Kill(child, syscall.SIGKILL)
		}
	}
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// writeKey writes a new ed25519 private key in OpenSSH format to name (and
// the public half to name.pub) and returns the public key.
func writeKey(name string) (ed25519.PublicKey, error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	block, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(name, pem.EncodeToMemory(block), 0o600); err != nil {
		return nil, err
	}
	sp, err := ssh.NewPublicKey(pub)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(name+".pub", ssh.MarshalAuthorizedKey(sp), 0o644); err != nil {
		return nil, err
	}
	return pub, nil
}

func shq(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }
