package sidecar

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

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

// startHolder starts `git-sidecar hold NAME` in the background.
func startHolder(r *repo, name string) error {
	return startDetached(r, nil, "hold", name)
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
	if err != nil {
		return err
	}
	stateDir := r.stateDir(name)
	lock, ok, err := tryShareLock(stateDir)
	if err != nil || !ok {
		return err // another holder or a watch shares it already
	}
	defer lock.unlock()
	// A workspace on a local path has no connection to keep: its holder
	// only watches the work tree.
	var t *sshTransport
	if !d.Local {
		t = &sshTransport{dest: d, opts: sshx.Options{}}
		defer t.close()
	}
	takes := make(chan takeRequest)
	srv := serveShare(stateDir, t, takes, a.logf)
	if srv == nil {
		return nil
	}
	defer srv.close()
	var ended <-chan struct{}
	if t != nil {
		// Log in now, so that the next command finds the connection
		// ready.
		client, err := t.connect(a.ctx)
		if err != nil {
			return err
		}
		ended = client.Done()
	}
	// Watch the work tree, so that the next sync looks at what changed
	// and not at every file. The events wait for a take to be looked
	// at: the holder runs no git while nobody asks (none while the
	// repository is being deleted, say, which git could write into: a
	// sparse index makes even ls-files write trees). A folder made
	// meanwhile is among them, and a take that holds a folder lists
	// everything.
	dirty := &dirtyTracker{full: true}
	// The watch starts with the first take, which lists everything
	// anyway: a holder nobody asks runs no git at all.
	var tw *treeWatcher
	var events <-chan struct{}
	var werrs <-chan error
	defer func() {
		if tw != nil {
			tw.close()
		}
	}()
	drain := func() {
		b, err := tw.drain(a.ctx, nil)
		if err != nil {
			dirty.broken = true
			return
		}
		dirty.add(b.paths, b.full)
	}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-a.ctx.Done():
			return nil
		case <-srv.quit:
			return nil
		case <-werrs:
			dirty.broken, events, werrs = true, nil, nil
		case tr := <-takes:
			switch {
			case tr.ack != 0:
				dirty.ack(tr.ack)
				tr.reply <- takeReply{}
			case tr.top != r.top || dirty.broken:
				// Another worktree's files, or no watch: no idea.
				tr.reply <- takeReply{Full: true}
			case tw == nil:
				w, err := newTreeWatcher(a.ctx, r, a.logf)
				if err != nil {
					dirty.broken = true
				} else {
					tw, events, werrs = w, w.events, w.errs
				}
				tr.reply <- dirty.take() // full: nothing was watched before
			default:
				// Every event before the barrier's is read once its
				// own are: what was saved before the take is in it.
				tw.barrier = filepath.Join(r.gitDir, "sidecar-barrier."+strconv.Itoa(os.Getpid()))
				tw.sawBarrier = false
				_ = os.WriteFile(tw.barrier, nil, 0o600)
				_ = os.Remove(tw.barrier)
				deadline := time.After(2 * time.Second)
				for !tw.sawBarrier && !dirty.broken {
					select {
					case <-events:
						drain()
					case <-deadline:
						dirty.full = true
						tw.sawBarrier = true
					}
				}
				tr.reply <- dirty.take()
			}
		case <-ended:
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

// dirtyTracker is what a holder knows of the work tree's changes: the
// paths changed since the last take, or full when it cannot list them.
// A take's paths stay in flight until its sync acks them; a take that
// was never acked (a sync that failed) is taken again with the next.
type dirtyTracker struct {
	paths    map[string]bool
	full     bool
	broken   bool // the watch failed: every take is full from now on
	inflight map[string]bool
	inFull   bool
	gen      int
}

func (d *dirtyTracker) add(paths []string, full bool) {
	if d.paths == nil {
		d.paths = map[string]bool{}
	}
	for _, p := range paths {
		d.paths[p] = true
	}
	d.full = d.full || full
	if len(d.paths) > maxDirtyPaths {
		d.full, d.paths = true, nil
	}
}

func (d *dirtyTracker) take() takeReply {
	if d.inflight != nil || d.inFull {
		for p := range d.inflight {
			d.add([]string{p}, false)
		}
		d.full = d.full || d.inFull
	}
	d.gen++
	r := takeReply{Full: d.full || d.broken, Gen: d.gen}
	if !r.Full {
		for p := range d.paths {
			r.Paths = append(r.Paths, p)
		}
		sort.Strings(r.Paths)
	}
	d.inflight, d.inFull = d.paths, d.full
	if d.inflight == nil {
		d.inflight = map[string]bool{}
	}
	d.paths, d.full = nil, false
	return r
}

func (d *dirtyTracker) ack(gen int) {
	if gen == d.gen {
		d.inflight, d.inFull = nil, false
	}
}
