package server

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/git-relay/git-relay/internal/gitx"
	"github.com/git-relay/git-relay/internal/upstream"
	"github.com/git-relay/git-relay/internal/wire"
)

// A mirror is this instance's cache of one upstream repository: its
// branches and tags, HEAD, and exactly the objects upstream serves. Fetches
// are answered from it by git upload-pack, and pushes are checked against
// it. It is refreshed from upstream when a fetch lists refs or a push
// opens, and pruned when upstream drops history, so that nothing upstream
// no longer serves can be fetched through the relay by its id.
type mirror struct {
	name   string
	remote *upstream.Remote
	dir    string
	git    gitx.Repo

	// rw is held for reading by everything that uses the object store
	// (upload-pack, push checks, quarantines with the mirror as alternate)
	// and for writing by a prune, which deletes objects.
	rw sync.RWMutex
	// refreshing serialises refreshes. lastMu guards what the last one
	// saw: upstream's refs, and when it began to list them.
	refreshing sync.Mutex
	lastMu     sync.Mutex
	refs       *upstream.Refs
	listed     time.Time
	// admitting counts pushed packs on their way into the mirror after
	// their push (admitLater): a refresh waits for them.
	admitting pending

	// caps is upload-pack's capability advertisement here, kept once
	// made: it depends on git and the repository's object format, not on
	// its refs, and git asks for it before every fetch.
	capsMu sync.Mutex
	caps   []byte
	// capsCame holds when each recent capabilities exchange came, by id:
	// the listing that follows one in the same git command may use a
	// refresh begun since (refreshAhead).
	capsCame map[string]time.Time

	// localMu guards the mirror's refs as the server last left them
	// (knownRefs), nil when unknown, and a count of their changes.
	localMu  sync.Mutex
	local    map[string]string
	localGen uint64

	// bitmapMu guards the bitmap's writer (bitmapLater): whether one
	// runs, and whether packs came in since it began.
	bitmapMu      sync.Mutex
	bitmapRunning bool
	bitmapAgain   bool
}

// pending counts work in flight that others can wait for.
type pending struct {
	mu   sync.Mutex
	n    int
	idle chan struct{} // closed when n drops to 0; nil while n is 0
}

func (p *pending) add() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.n == 0 {
		p.idle = make(chan struct{})
	}
	p.n++
}

func (p *pending) done() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.n--
	if p.n == 0 {
		close(p.idle)
		p.idle = nil
	}
}

// wait waits until nothing is pending, or ctx ends.
func (p *pending) wait(ctx context.Context) error {
	p.mu.Lock()
	idle := p.idle
	p.mu.Unlock()
	if idle == nil {
		return nil
	}
	select {
	case <-idle:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// mirrors hands out one mirror per repository.
type mirrors struct {
	s  *Server
	mu sync.Mutex
	m  map[string]*mirror
}

func (ms *mirrors) get(repo string) (*mirror, error) {
	if err := validRepo(repo); err != nil {
		return nil, err
	}
	ms.mu.Lock()
	defer ms.mu.Unlock()
	if m, ok := ms.m[repo]; ok {
		return m, nil
	}
	u := strings.ReplaceAll(ms.s.cfg.Upstream, "{repo}", repo)
	remote, err := upstream.New(u, ms.s.cfg.Token)
	if err != nil {
		return nil, fmt.Errorf("upstream for %s: %w", repo, err)
	}
	dir := filepath.Join(ms.s.cfg.DataDir, "mirrors", filepath.FromSlash(repo)+".git")
	// The mirror is a cache that a refresh rebuilds: its git need not
	// wait for the disk (fsync) on the paths users wait for.
	m := &mirror{name: repo, remote: remote, dir: dir, git: gitx.Repo{GitDir: dir, Env: remote.GitEnv("core.fsync=none")}}
	if ms.m == nil {
		ms.m = map[string]*mirror{}
	}
	ms.m[repo] = m
	m.dropDebris(ms.s.verifier.Start)
	return m, nil
}

// dropDebris removes what a server which stopped before this one started
// left behind in the mirror: quarantines (pushed packs on their way in),
// and lock files of refs it was updating, each of which would refuse
// every later update of its ref ("cannot lock ref ...: File exists").
// The mirror is this instance's own: nothing else takes its locks.
func (m *mirror) dropDebris(started time.Time) {
	stale := func(p string) bool {
		fi, err := os.Stat(p)
		return err == nil && fi.ModTime().Before(started)
	}
	dirs, _ := filepath.Glob(filepath.Join(m.objectDir(), "incoming-*"))
	for _, d := range dirs {
		if stale(d) {
			os.RemoveAll(d)
		}
	}
	locks, _ := filepath.Glob(filepath.Join(m.dir, "*.lock"))
	_ = filepath.WalkDir(filepath.Join(m.dir, "refs"), func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.HasSuffix(p, ".lock") {
			locks = append(locks, p)
		}
		return nil
	})
	for _, l := range locks {
		if stale(l) {
			os.Remove(l)
		}
	}
}

// upstreamErr turns a failure to reach upstream into what the client sees.
func (s *Server) upstreamErr(m *mirror, err error) error {
	s.metrics.upstreamErrors.Inc()
	switch {
	case errors.Is(err, upstream.ErrNotFound):
		return notFound("upstream repository %s not found (the relay never creates repositories: create it upstream first)", m.name)
	case errors.Is(err, upstream.ErrAuth):
		return &userError{http.StatusBadGateway, wire.CodeUpstream, fmt.Sprintf("upstream refused the relay's credentials for %s (check the server's token)", m.name)}
	}
	return &userError{http.StatusBadGateway, wire.CodeUpstream, fmt.Sprintf("upstream %s: %s", m.name, s.redact(err.Error()))}
}

// refresh brings the mirror up to date with upstream and returns
// upstream's refs. A refresh that began to list upstream at or after
// since is reused: a clone lists refs and fetches a moment later, and the
// second need not ask upstream again.
func (s *Server) refresh(ctx context.Context, m *mirror, since time.Time) (*upstream.Refs, error) {
	if err := m.admitting.wait(ctx); err != nil {
		return nil, err
	}
	if refs := m.listedSince(since); refs != nil {
		return refs, nil
	}
	m.refreshing.Lock()
	defer m.refreshing.Unlock()
	if refs := m.listedSince(since); refs != nil {
		return refs, nil // the refresh this one waited for will do
	}
	return s.listAndRefresh(ctx, m)
}

// listAndRefresh lists upstream's refs and brings the mirror to them. The
// caller holds m.refreshing.
func (s *Server) listAndRefresh(ctx context.Context, m *mirror) (*upstream.Refs, error) {
	began := time.Now()
	s.metrics.upstreamListings.Inc()
	refs, err := m.remote.List(ctx)
	if err != nil {
		return nil, s.upstreamErr(m, err)
	}
	if err := s.refreshTo(ctx, m, refs, began); err != nil {
		return nil, err
	}
	return refs, nil
}

// listedSince returns the last refresh's refs if it began to list
// upstream at or after since, or else nil.
func (m *mirror) listedSince(since time.Time) *upstream.Refs {
	m.lastMu.Lock()
	defer m.lastMu.Unlock()
	if m.refs != nil && !m.listed.Before(since) {
		return m.refs
	}
	return nil
}

// lastRefs returns the refs of the last refresh, nil if none is known.
func (m *mirror) lastRefs() *upstream.Refs {
	m.lastMu.Lock()
	defer m.lastMu.Unlock()
	return m.refs
}

// forgetRefs makes the next refresh list upstream again: it moved.
func (m *mirror) forgetRefs() {
	m.refreshing.Lock() // after any refresh under way, whose refs are older
	m.lastMu.Lock()
	m.refs = nil
	m.lastMu.Unlock()
	m.refreshing.Unlock()
}

// capsWindow is how long after a capabilities exchange the listing that
// follows it may still use the refresh it started.
const capsWindow = 10 * time.Second

// maxCapsCame bounds the capabilities exchanges a mirror remembers.
const maxCapsCame = 1024

// refreshAhead starts, when a capabilities exchange comes, the refresh
// that the listing git sends next will need, so that upstream is asked
// while the client reads the capabilities and writes its listing request
// (a round trip to upstream fewer on a clone's path). The listing uses it
// when it names this exchange (wire.Open.Follows): begun after the git
// command started, it shows upstream as the listing would. A refresh
// under way already began too early for that, and nothing is started.
func (s *Server) refreshAhead(m *mirror, id string) {
	now := time.Now()
	m.capsMu.Lock()
	if m.capsCame == nil {
		m.capsCame = map[string]time.Time{}
	}
	for k, t := range m.capsCame {
		if now.Sub(t) > capsWindow {
			delete(m.capsCame, k)
		}
	}
	if len(m.capsCame) < maxCapsCame {
		m.capsCame[id] = now
	}
	m.capsMu.Unlock()
	s.refreshInBackground(m, func(ctx context.Context) {
		// A failure is the listing's to report, when it lists again.
		if _, err := s.listAndRefresh(ctx, m); err != nil && ctx.Err() == nil {
			s.log.Debug("refresh the mirror ahead of a listing", "repo", m.name, "err", s.redact(err.Error()))
		}
	})
}

// refreshInBackground runs refresh with the mirror's refreshing lock,
// taken before it returns, so that a refresh asked for meanwhile waits
// for this one; if one is under way already, it does nothing.
func (s *Server) refreshInBackground(m *mirror, refresh func(ctx context.Context)) {
	if !m.refreshing.TryLock() {
		return
	}
	s.bgWork.Add(1)
	go func() {
		defer s.bgWork.Done()
		defer m.refreshing.Unlock()
		if m.admitting.wait(s.ctx) == nil {
			refresh(s.ctx)
		}
	}()
}

// capsCameAt says when the capabilities exchange id came here, if it
// came within capsWindow.
func (m *mirror) capsCameAt(id string) (time.Time, bool) {
	if id == "" {
		return time.Time{}, false
	}
	m.capsMu.Lock()
	defer m.capsMu.Unlock()
	t, ok := m.capsCame[id]
	return t, ok && time.Since(t) <= capsWindow
}

// refreshLater brings the mirror to refs, which upstream listed a moment
// ago (beginning at listed), in the background: a push's listing is
// answered at once, and the push that follows waits for the mirror
// (refresh) only if it comes before the mirror is done.
func (s *Server) refreshLater(m *mirror, refs *upstream.Refs, listed time.Time) {
	s.refreshInBackground(m, func(ctx context.Context) {
		if err := s.refreshTo(ctx, m, refs, listed); err != nil && ctx.Err() == nil {
			s.log.Warn("refresh the mirror", "repo", m.name, "err", s.redact(err.Error()))
		}
	})
}

// refreshTo brings the mirror to refs, upstream's as listed from the
// time listed. The caller holds m.refreshing.
func (s *Server) refreshTo(ctx context.Context, m *mirror, refs *upstream.Refs, listed time.Time) error {
	start := time.Now()
	if err := s.ensureMirror(ctx, m); err != nil {
		return err
	}
	have, err := m.knownRefs(ctx)
	if err != nil {
		return err
	}
	same := len(have) == len(refs.Refs)
	for name, id := range refs.Refs {
		if have[name] != id {
			same = false
			break
		}
	}
	if !same {
		s.seed(ctx, m, refs)
		if !s.shared() || m.lacks(ctx, refs) {
			s.metrics.mirrorUpdates.WithLabelValues("upstream").Inc()
		}
		// The fetched pack is kept as it came (fetch.unpackLimit=1), not
		// exploded into loose objects: upload-pack then sends its objects
		// as they are stored instead of compressing each one again.
		m.rw.RLock()
		_, err = m.git.Run(ctx, "-c", "fetch.unpackLimit=1", "fetch", "--prune", "--quiet", "--no-write-fetch-head", "--no-tags",
			m.remote.String(), "+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*")
		m.rw.RUnlock()
		m.refsMoved(nil) // to what upstream had when git fetch listed it
		if err != nil {
			return s.upstreamErr(m, fmt.Errorf("refresh the mirror: %w", err))
		}
		if err := m.packRefs(ctx, len(refs.Refs)); err != nil {
			return err
		}
		if dropped, err := m.dropped(ctx, have, refs.Refs); err != nil {
			return err
		} else if dropped {
			if err := s.prune(ctx, m); err != nil {
				return err
			}
		}
		s.bitmapLater(m)
	}
	if head, _ := os.ReadFile(filepath.Join(m.dir, "HEAD")); refs.Head != "" && string(head) != "ref: "+refs.Head+"\n" {
		_, err := m.git.Run(ctx, "symbolic-ref", "HEAD", refs.Head)
		m.refsMoved(func(map[string]string) {}) // HEAD is not among the refs known
		if err != nil {
			return fmt.Errorf("set the mirror's HEAD: %w", err)
		}
	}
	m.lastMu.Lock()
	m.refs, m.listed = refs, listed
	m.lastMu.Unlock()
	s.log.Debug("mirror refreshed", "repo", m.name, "fetched", !same, "took", time.Since(start).Round(time.Millisecond))
	return nil
}

// ensureMirror creates the mirror the first time.
func (s *Server) ensureMirror(ctx context.Context, m *mirror) error {
	if _, err := os.Stat(filepath.Join(m.dir, "HEAD")); err == nil {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(m.dir), 0o700); err != nil {
		return err
	}
	tmp, err := os.MkdirTemp(filepath.Dir(m.dir), ".init-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	if _, err := (gitx.Repo{}).Run(ctx, "init", "--bare", "-q", tmp); err != nil {
		return fmt.Errorf("create mirror: %w", err)
	}
	// Appended to the config file that init wrote, rather than set by one
	// git config each: a cold mirror is on a clone's critical path.
	f, err := os.OpenFile(filepath.Join(tmp, "config"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("create mirror: %w", err)
	}
	_, err = f.WriteString(mirrorConfig)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("create mirror: %w", err)
	}
	if err := os.Rename(tmp, m.dir); err != nil && !os.IsExist(err) {
		return fmt.Errorf("create mirror: %w", err)
	}
	m.refsMoved(nil) // whatever was known was of a mirror no longer there
	return nil
}

// mirrorConfig is the mirror's own configuration. Partial clones ask
// for filters; any object's id may be wanted, which is safe because the
// mirror holds only what upstream serves (see prune).
const mirrorConfig = `[gc]
	auto = 0
[core]
	logAllRefUpdates = false
[fetch]
	fsckObjects = true
[transfer]
	fsckObjects = true
[uploadpack]
	allowFilter = true
	allowAnySHA1InWant = true
[repack]
	writeBitmaps = true
`

// knownRefs returns the mirror's branches and tags: as the server last
// left them, or else as git lists them. Each refresh compares them with
// upstream's, and a git run for that (some 10 ms here) was on the path of
// every clone and every push's listing.
func (m *mirror) knownRefs(ctx context.Context) (map[string]string, error) {
	m.localMu.Lock()
	if m.local != nil {
		have := maps.Clone(m.local)
		m.localMu.Unlock()
		return have, nil
	}
	gen := m.localGen
	m.localMu.Unlock()
	m.rw.RLock()
	have, err := m.localRefs(ctx)
	m.rw.RUnlock()
	if err != nil {
		return nil, err
	}
	m.localMu.Lock()
	if m.localGen == gen {
		// Nothing moved a ref while git listed them.
		m.local = maps.Clone(have)
	}
	m.localMu.Unlock()
	return have, nil
}

// refsMoved records a change of the mirror's refs: apply makes it in the
// refs known (knownRefs); nil forgets them, for git to list again.
func (m *mirror) refsMoved(apply func(refs map[string]string)) {
	m.localMu.Lock()
	defer m.localMu.Unlock()
	m.localGen++
	if m.local != nil && apply != nil {
		apply(m.local)
		return
	}
	m.local = nil
}

// refsGen counts the changes of the mirror's refs (refsMoved), HEAD
// included.
func (m *mirror) refsGen() uint64 {
	m.localMu.Lock()
	defer m.localMu.Unlock()
	return m.localGen
}

func (m *mirror) localRefs(ctx context.Context) (map[string]string, error) {
	out, err := m.git.Run(ctx, "for-each-ref", "--format=%(objectname) %(refname)", "refs/heads/", "refs/tags/")
	if err != nil {
		return nil, fmt.Errorf("list the mirror's refs: %w", err)
	}
	refs := map[string]string{}
	for _, line := range strings.Split(out, "\n") {
		if id, ref, ok := strings.Cut(line, " "); ok {
			refs[ref] = id
		}
	}
	return refs, nil
}

// dropped says whether upstream dropped history the mirror had: a ref
// deleted, or moved to something its old id is not an ancestor of.
func (m *mirror) dropped(ctx context.Context, had, now map[string]string) (bool, error) {
	for ref, old := range had {
		cur, ok := now[ref]
		if !ok {
			return true, nil
		}
		if cur == old {
			continue
		}
		if ok, err := m.git.Ok(ctx, "merge-base", "--is-ancestor", old, cur); err != nil || !ok {
			return true, nil
		}
	}
	return false, nil
}

// prune drops every object no ref reaches, so that what upstream
// deleted can no longer be fetched by id. It waits for every reader.
func (s *Server) prune(ctx context.Context, m *mirror) error {
	m.rw.Lock()
	defer m.rw.Unlock()
	start := time.Now()
	if _, err := m.git.Run(ctx, "repack", "-a", "-d", "-q", "--write-bitmap-index"); err != nil {
		return fmt.Errorf("prune the mirror: %w", err)
	}
	if _, err := m.git.Run(ctx, "prune", "--expire=now"); err != nil {
		return fmt.Errorf("prune the mirror: %w", err)
	}
	s.log.Info("mirror pruned: upstream dropped history", "repo", m.name, "took", time.Since(start).Round(time.Millisecond))
	return nil
}

// bitmapLater writes, in the background, a multi-pack index of the
// mirror's packs with a reachability bitmap, after packs came in (a fetch
// from upstream, a push admitted, a seed). upload-pack then reads what a
// clone needs from the bitmap instead of walking the history, and sends
// the stored pack as it is: on the bench's 25 MiB history, pack-objects
// for a whole clone found what to send in 3 ms instead of 31, and took
// 80 ms of CPU instead of 110. Writing the index takes about 50 ms
// there, at the lowest CPU priority. A write asked for while one runs
// makes it run once more; a failure only costs speed.
func (s *Server) bitmapLater(m *mirror) {
	m.bitmapMu.Lock()
	defer m.bitmapMu.Unlock()
	if m.bitmapRunning {
		m.bitmapAgain = true
		return
	}
	m.bitmapRunning = true
	s.bgWork.Add(1)
	go func() {
		defer s.bgWork.Done()
		for {
			start := time.Now()
			m.rw.RLock() // a prune's repack rewrites the packs
			c := m.git.Command(s.ctx, "multi-pack-index", "write", "--bitmap")
			c.Background = true
			err := c.Run()
			m.rw.RUnlock()
			switch {
			case err != nil && s.ctx.Err() == nil:
				s.log.Warn("index the mirror's packs", "repo", m.name, "err", err)
			case err == nil:
				s.log.Debug("mirror's packs indexed", "repo", m.name, "took", time.Since(start).Round(time.Millisecond))
			}
			m.bitmapMu.Lock()
			if !m.bitmapAgain || s.ctx.Err() != nil {
				m.bitmapRunning = false
				m.bitmapMu.Unlock()
				return
			}
			m.bitmapAgain = false
			m.bitmapMu.Unlock()
		}
	}()
}

// packRefs packs the mirror's refs after a change when it has many: a
// repository with a hundred thousand loose refs is slow to list.
func (m *mirror) packRefs(ctx context.Context, refs int) error {
	if refs < 1000 {
		return nil
	}
	if _, err := m.git.Run(ctx, "pack-refs", "--all", "--prune"); err != nil {
		return fmt.Errorf("pack the mirror's refs: %w", err)
	}
	return nil
}

// objectDir is the mirror's object folder.
func (m *mirror) objectDir() string { return filepath.Join(m.dir, "objects") }

// quarantine is an object folder beside the mirror's, for a pack that
// must not join the mirror before upstream has accepted it.
type quarantine struct {
	dir string
	git gitx.Repo // the mirror, seeing the quarantine's objects and its own
}

func (m *mirror) newQuarantine() (*quarantine, error) {
	dir, err := os.MkdirTemp(m.objectDir(), "incoming-")
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Join(dir, "pack"), 0o700); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	env := append(append([]string{}, m.git.Env...),
		"GIT_OBJECT_DIRECTORY="+dir, "GIT_ALTERNATE_OBJECT_DIRECTORIES="+m.objectDir(), "GIT_QUARANTINE_PATH="+dir)
	return &quarantine{dir: dir, git: gitx.Repo{GitDir: m.dir, Env: env}}, nil
}

// admit moves the quarantine's packs into the mirror (.pack first, .idx
// last: the index is what makes a pack visible) and removes it.
func (q *quarantine) admit(m *mirror) error {
	files, err := filepath.Glob(filepath.Join(q.dir, "pack", "pack-*"))
	if err != nil {
		return err
	}
	rank := map[string]int{".pack": 0, ".rev": 1, ".idx": 2}
	for _, pass := range []int{0, 1, 2} {
		for _, f := range files {
			if rank[filepath.Ext(f)] != pass {
				continue
			}
			dst := filepath.Join(m.objectDir(), "pack", filepath.Base(f))
			if _, err := os.Stat(dst); err == nil {
				continue
			}
			if err := os.Rename(f, dst); err != nil {
				return fmt.Errorf("move the pushed pack into the mirror: %w", err)
			}
		}
	}
	return nil
}

func (q *quarantine) drop() { os.RemoveAll(q.dir) }
