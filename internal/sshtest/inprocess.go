package sshtest

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/binary"
	"encoding/pem"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// InProcess is an SSH server inside the test process. Each "exec" request
// runs `/bin/sh -c <command>` on this machine, after printing Noise the way
// a chatty login shell would.
type InProcess struct {
	Host string
	Port int
	// HostKey is the server's public key.
	HostKey ssh.PublicKey
	// ClientKeyFile is an unencrypted private key the server accepts.
	ClientKeyFile string
	// Noise is printed on stdout and stderr before every command.
	Noise string

	execs    atomic.Int64
	listener net.Listener
	config   *ssh.ServerConfig
	wg       sync.WaitGroup
	mu       sync.Mutex
	conns    map[net.Conn]bool // open connections, closed when the test ends
}

// StartInProcess starts a server that stops when the test ends.
func StartInProcess(t testing.TB, o Options) *InProcess {
	t.Helper()
	dir := t.TempDir()
	_, hostPriv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	hostSigner, err := ssh.NewSignerFromKey(hostPriv)
	if err != nil {
		t.Fatal(err)
	}
	clientPub, clientPriv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	block, err := ssh.MarshalPrivateKey(clientPriv, "")
	if err != nil {
		t.Fatal(err)
	}
	s := &InProcess{Host: "127.0.0.1", HostKey: hostSigner.PublicKey(), Noise: o.Noise}
	s.ClientKeyFile = filepath.Join(dir, "client_ed25519")
	if err := os.WriteFile(s.ClientKeyFile, pem.EncodeToMemory(block), 0o600); err != nil {
		t.Fatal(err)
	}
	allowed, err := ssh.NewPublicKey(clientPub)
	if err != nil {
		t.Fatal(err)
	}
	s.config = &ssh.ServerConfig{
		PublicKeyCallback: func(_ ssh.ConnMetadata, key ssh.PublicKey) (*ssh.Permissions, error) {
			if string(key.Marshal()) == string(allowed.Marshal()) {
				return nil, nil
			}
			return nil, errors.New("unknown key")
		},
	}
	s.config.AddHostKey(hostSigner)
	if s.listener, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	s.Port = s.listener.Addr().(*net.TCPAddr).Port
	s.wg.Add(1)
	go s.serve()
	t.Cleanup(func() {
		s.listener.Close()
		// A client may keep its connection open past the test (a kept
		// connection's holder): end them all.
		s.mu.Lock()
		for c := range s.conns {
			c.Close()
		}
		s.mu.Unlock()
		s.wg.Wait()
	})
	return s
}

// Addr is host:port.
func (s *InProcess) Addr() string { return net.JoinHostPort(s.Host, strconv.Itoa(s.Port)) }

// Execs counts the commands run so far.
func (s *InProcess) Execs() int { return int(s.execs.Load()) }

// KnownHostsLine is the known_hosts entry for this server.
func (s *InProcess) KnownHostsLine() string {
	return knownhosts.Line([]string{s.Addr()}, s.HostKey)
}

func (s *InProcess) serve() {
	defer s.wg.Done()
	for {
		nc, err := s.listener.Accept()
		if err != nil {
			return
		}
		s.mu.Lock()
		if s.conns == nil {
			s.conns = map[net.Conn]bool{}
		}
		s.conns[nc] = true
		s.mu.Unlock()
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.handle(nc)
			s.mu.Lock()
			delete(s.conns, nc)
			s.mu.Unlock()
		}()
	}
}

func (s *InProcess) handle(nc net.Conn) {
	defer nc.Close()
	conn, chans, reqs, err := ssh.NewServerConn(nc, s.config)
	if err != nil {
		return
	}
	defer conn.Close()
	gone := make(chan struct{})
	go func() { _ = conn.Wait(); close(gone) }()
	go ssh.DiscardRequests(reqs)
	var wg sync.WaitGroup
	for nch := range chans {
		if nch.ChannelType() != "session" {
			_ = nch.Reject(ssh.UnknownChannelType, "only sessions")
			continue
		}
		ch, chReqs, err := nch.Accept()
		if err != nil {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.session(ch, chReqs, gone)
		}()
	}
	wg.Wait()
}

func (s *InProcess) session(ch ssh.Channel, reqs <-chan *ssh.Request, gone <-chan struct{}) {
	defer ch.Close()
	for req := range reqs {
		if req.Type != "exec" {
			_ = req.Reply(false, nil)
			continue
		}
		var payload struct{ Command string }
		if err := ssh.Unmarshal(req.Payload, &payload); err != nil {
			_ = req.Reply(false, nil)
			continue
		}
		_ = req.Reply(true, nil)
		s.execs.Add(1)
		if s.Noise != "" {
			_, _ = io.WriteString(ch, s.Noise+"\n")
			_, _ = io.WriteString(ch.Stderr(), s.Noise+"\n")
		}
		cmd := exec.Command("/bin/sh", "-c", payload.Command)
		// A session of its own, as sshd gives every command.
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
		cmd.Stdout = ch
		cmd.Stderr = ch.Stderr()
		// Stdin is copied by hand and not waited for, as sshd does: a
		// command may exit without reading its input.
		in, err := cmd.StdinPipe()
		if err == nil {
			go func() {
				_, _ = io.Copy(in, ch)
				in.Close()
			}()
		}
		status := 0
		err = cmd.Start()
		if err == nil {
			// Unlike sshd, end the command with its connection, so that a
			// test that drops one does not wait for its command.
			stop := make(chan struct{})
			go func() {
				select {
				case <-gone:
					_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
				case <-stop:
				}
			}()
			err = cmd.Wait()
			close(stop)
		}
		if err != nil {
			var exit *exec.ExitError
			if errors.As(err, &exit) {
				status = exit.ExitCode()
			} else {
				status = 127
			}
		}
		var b [4]byte
		binary.BigEndian.PutUint32(b[:], uint32(status))
		_, _ = ch.SendRequest("exit-status", false, b[:])
		return
	}
}
