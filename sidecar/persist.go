package sidecar

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/git-relay/git-relay/internal/gitx"
	"github.com/git-relay/git-relay/internal/sshx"
)

// A command that had to log in over SSH leaves its connection's successor
// behind, the way OpenSSH's ControlPersist does: a background
// `git-sidecar hold NAME` logs in once and shares its connection on the
// sidecar's socket (as a watch does) until it has been idle for
// sidecar.persist. The next sync, exec or status then skips the login,
// which is most of what a one-file sync costs over SSH (the key exchange,
// the authentication and sshd's own start: some 250 ms on loopback, and
// several round trips on a real network).
//
// It ends when it has been idle that long, when its connection ends, when
// its socket is gone (the sidecar was removed, the repository deleted),
// when a watch of the sidecar starts (the watch shares its own
// connection), or on SIGTERM.

// defaultPersist is how long a connection is kept when sidecar.persist
// is not set.
const defaultPersist = 10 * time.Minute

// parsePersist reads a sidecar.persist value as OpenSSH reads
// ControlPersist: "no" (or 0) keeps nothing, "yes" keeps the connection
// for the default time, a number is seconds, and a duration has a unit
// ("90s", "10m", "1h").
func parsePersist(v string) (time.Duration, error) {
	switch strings.ToLower(strings.TrimSpace(v)) {
	case "no", "false", "off", "0":
		return 0, nil
	case "yes", "true", "on", "":
		return defaultPersist, nil
	}
	if n, err := strconv.Atoi(v); err == nil && n > 0 {
		return time.Duration(n) * time.Second, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < 0 {
		return 0, errors.New("want no, yes, seconds or a duration such as 10m")
	}
	return d, nil
}

// persistFor is how long sidecar name keeps its connection after a
// command: sidecar.NAME.persist, else sidecar.persist, else the default.
func (c sidecarConfig) persistFor(name string) (time.Duration, error) {
	key, v := "sidecar."+name+".persist", c.persist[name]
	if v == "" {
		key, v = "sidecar.persist", c.persist[""]
	}
	if v == "" {
		return defaultPersist, nil
	}
	d, err := parsePersist(v)
	if err != nil {
		return 0, fmt.Errorf("bad %s %q: %v", key, v, err)
	}
	return d, nil
}

// startHolder starts `git-sidecar hold NAME` in its own session with
// every descriptor on /dev/null, and does not wait for it.
func startHolder(r *repo, name string) error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	cmd := exec.Command(exe, "hold", name)
	cmd.Args[0] = "git-sidecar" // as startWorker does
	cmd.Dir = r.top
	cmd.Env = gitx.CleanEnv(os.Environ())
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return err
	}
	return cmd.Process.Release()
}

type holdCmd struct {
	Name string `arg:"" help:"Sidecar whose connection to keep."`
}

func (c *holdCmd) Run(a *app) error {
	r, cfg, err := a.open()
	if err != nil {
		return err
	}
	name, err := cfg.pick(c.Name)
	if err != nil {
		return err
	}
	persist, err := cfg.persistFor(name)
	if err != nil || persist <= 0 {
		return err
	}
	d, err := ParseDest(cfg.dests[name], r.top)
	if err != nil || d.Local {
		return err
	}
	stateDir := r.stateDir(name)
	lock, ok, err := tryShareLock(stateDir)
	if err != nil || !ok {
		return err // another holder or a watch shares it already
	}
	defer lock.unlock()
	t := &sshTransport{dest: d, opts: sshx.Options{}}
	defer t.close()
	srv := serveShare(stateDir, t, a.logf)
	if srv == nil {
		return nil
	}
	defer srv.close()
	// Log in now, so that the next command finds the connection ready.
	client, err := t.connect(a.ctx)
	if err != nil {
		return err
	}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-a.ctx.Done():
			return nil
		case <-srv.quit:
			return nil
		case <-client.Done():
			// As OpenSSH's master does, end with the connection; the
			// next command logs in and leaves a new one.
			return nil
		case <-tick.C:
			if !srv.stillListed() || !exists(filepath.Join(stateDir, "share.lock")) || srv.idleFor() >= persist {
				return nil
			}
		}
	}
}

func exists(path string) bool {
	_, err := os.Lstat(path)
	return err == nil
}
