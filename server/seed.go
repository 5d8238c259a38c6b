package server

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/git-relay/git-relay/internal/bundle"
	"github.com/git-relay/git-relay/internal/store"
	"github.com/git-relay/git-relay/internal/upstream"
	"github.com/git-relay/git-relay/internal/wire"
)

// Mirrors are per instance, but instances that share a store share the
// pushes in it. A push that lands leaves its chunks in the store for
// seedKeep, with a marker under its repository, and an instance whose
// mirror lacks what upstream lists indexes those packs into its mirror
// before it fetches: the fetch then finds every object at hand and moves
// only refs. So the first clone through an instance that did not run the
// push costs what a clone through the one that did costs, instead of a
// second transfer from upstream and a second packing of loose objects.
//
// A pack is taken only when every ref its push set still points upstream
// at the id the push gave it, so the mirror never holds an object that
// upstream does not serve. The chunks are read as the push's own server
// read them: authenticated with the push's key, checked against its size
// and SHA-256.

// seedKeep is how long a landed push's chunks stay in the store for the
// other instances' mirrors.
const seedKeep = 10 * time.Minute

// seedPrefix is where the markers of a repository's landed pushes live.
func seedPrefix(repo string) string {
	sum := sha256.Sum256([]byte(repo))
	return "sd/" + hex.EncodeToString(sum[:16]) + "/"
}

// shared says whether other instances may share this one's store: the
// folder store's single instance is named "local".
func (s *Server) shared() bool { return s.instance != "local" }

type seedMarker struct {
	Key string `json:"key"` // the id of the push's key
}

// markSeed records a landed push for the other instances' mirrors. It
// says whether the push's chunks must stay.
func (s *Server) markSeed(ctx context.Context, e *exch) bool {
	if !s.shared() || e.open.Inline {
		return false
	}
	b, _ := json.Marshal(seedMarker{Key: e.key.ID})
	if _, err := s.store.Put(ctx, seedPrefix(e.open.Repo)+e.id, b, store.PutOptions{}); err != nil {
		s.log.Warn("record the push for other instances", "id", e.id, "err", err)
		return false
	}
	return true
}

// sweepSeeds drops the chunks and markers of landed pushes past seedKeep.
func (s *Server) sweepSeeds(ctx context.Context, now time.Time) {
	var old []string
	_ = s.store.List(ctx, "sd/", func(i store.Info) error {
		if now.Sub(i.Modified) > seedKeep {
			old = append(old, i.Key)
		}
		return nil
	})
	for _, k := range old {
		s.dropChunks(ctx, k[strings.LastIndexByte(k, '/')+1:])
		_ = s.store.Delete(ctx, k)
	}
}

// seed indexes into the mirror the packs of landed pushes that upstream
// still serves and the mirror lacks, oldest first. It is called with the
// mirror's refreshing lock held, before a fetch from upstream; any
// failure only means that the fetch has more to do.
func (s *Server) seed(ctx context.Context, m *mirror, refs *upstream.Refs) {
	if !s.shared() {
		return
	}
	var markers []store.Info
	if err := s.store.List(ctx, seedPrefix(m.name), func(i store.Info) error {
		markers = append(markers, i)
		return nil
	}); err != nil || len(markers) == 0 {
		return
	}
	sort.Slice(markers, func(a, b int) bool { return markers[a].Modified.Before(markers[b].Modified) })
	for _, i := range markers {
		id := i.Key[strings.LastIndexByte(i.Key, '/')+1:]
		start := time.Now()
		took, err := s.seedOne(ctx, m, refs, id)
		switch {
		case err != nil:
			s.log.Debug("mirror not seeded from a push", "repo", m.name, "id", id, "why", s.redact(err.Error()))
		case took:
			s.metrics.mirrorUpdates.WithLabelValues("push").Inc()
			s.log.Debug("mirror seeded from a push", "repo", m.name, "id", id, "took", time.Since(start).Round(time.Millisecond))
		}
	}
}

var errSeedStale = errors.New("upstream has moved on from the push, or the mirror has its objects already")

func (s *Server) seedOne(ctx context.Context, m *mirror, refs *upstream.Refs, id string) (bool, error) {
	b, _, err := s.store.Get(ctx, seedPrefix(m.name)+id, nil)
	if err != nil {
		return false, err
	}
	var mk seedMarker
	if err := json.Unmarshal(b, &mk); err != nil {
		return false, err
	}
	key, ok := s.cfg.Ring.Lookup(mk.Key)
	if !ok {
		return false, errors.New("the push's key is no longer in the ring")
	}
	e, err := s.exchange(ctx, id, key)
	if err != nil {
		return false, err
	}
	if e.open.Kind != wire.KindPush || e.open.Repo != m.name {
		return false, errors.New("not a push of this repository")
	}
	stale := func(man wire.PushManifest) error {
		var news []string
		for _, u := range man.Updates {
			if u.New == wire.ZeroID {
				continue
			}
			if refs.Refs[u.Ref] != u.New {
				return errSeedStale
			}
			news = append(news, u.New)
		}
		if len(news) == 0 || !m.lacksAnyLocked(ctx, news) {
			return errSeedStale
		}
		return nil
	}
	m.rw.RLock()
	defer m.rw.RUnlock()
	q, err := m.newQuarantine()
	if err != nil {
		return false, err
	}
	defer q.drop()
	if err := s.indexPushed(ctx, e, q, stale); err != nil {
		return false, err
	}
	return true, q.admit(m)
}

// indexPushed indexes the pack a push carried into q, reading it again
// from the push's chunks in the store (or its inline payload), at the
// priority of ctx (isBackground). check, if not nil, may refuse the push
// by its manifest first.
func (s *Server) indexPushed(ctx context.Context, e *exch, q *quarantine, check func(wire.PushManifest) error) error {
	br, man, done, err := s.pushPayload(ctx, e)
	defer done()
	if err != nil {
		return err
	}
	if check != nil {
		if err := check(man); err != nil {
			return err
		}
	}
	if _, err := br.Peek(1); err != nil {
		return errors.New("the push carried no pack")
	}
	_, pack, err := bundle.Split(br)
	if err != nil {
		return err
	}
	c := q.git.Command(ctx, "index-pack", "--stdin", "--fix-thin")
	c.Stdin, c.Stdout, c.Background = pack, io.Discard, isBackground(ctx)
	if err := c.Run(); err != nil {
		return fmt.Errorf("index the push's pack: %w", err)
	}
	// Nothing past the pack, and the payload checks out to its end.
	_, err = io.Copy(io.Discard, br)
	return err
}

// lacks says whether the mirror lacks an object that refs point at.
func (m *mirror) lacks(ctx context.Context, refs *upstream.Refs) bool {
	seen := map[string]bool{}
	var ids []string
	for _, id := range refs.Refs {
		if !seen[id] {
			seen[id] = true
			ids = append(ids, id)
		}
	}
	return m.lacksAny(ctx, ids)
}

// lacksAny says whether the mirror lacks one of ids (or cannot tell).
func (m *mirror) lacksAny(ctx context.Context, ids []string) bool {
	m.rw.RLock()
	defer m.rw.RUnlock()
	return m.lacksAnyLocked(ctx, ids)
}

// lacksAnyLocked is lacksAny for a caller that holds m.rw.
func (m *mirror) lacksAnyLocked(ctx context.Context, ids []string) bool {
	have, err := m.git.Exists(ctx, ids)
	if err != nil {
		return true
	}
	for _, id := range ids {
		if have[id] == "" {
			return true
		}
	}
	return false
}

// follow watches, in the background, a push that this instance took a
// chunk of, and when it lands through another instance brings this
// instance's mirror up to it at once, from the pack the push left in the
// store: the first clone or fetch through this instance then finds its
// objects at hand, rather than waiting while they are indexed.
func (s *Server) follow(e *exch) {
	if !s.shared() || e.open.Kind != wire.KindPush || e.open.Inline {
		return
	}
	e.mu.Lock()
	if e.followed {
		e.mu.Unlock()
		return
	}
	e.followed = true
	e.mu.Unlock()
	s.bgWork.Add(1)
	go func() {
		defer s.bgWork.Done()
		ctx, cancel := context.WithTimeout(s.ctx, seedKeep)
		defer cancel()
		poll := time.NewTicker(followEvery)
		defer poll.Stop()
		for {
			st, changed := e.snapshot()
			if wire.Ended(st.Phase) {
				if st.Phase != wire.PhaseDone || st.Owner == s.instance || !allLanded(st.Results) {
					return // not landed, or landed here: admitLater has it
				}
				break
			}
			select {
			case <-changed:
			case <-poll.C:
				e.mu.Lock()
				local := e.working
				e.mu.Unlock()
				if !local && s.reload(ctx, e) != nil {
					return
				}
			case <-ctx.Done():
				return
			}
		}
		m, err := s.mirrors.get(e.open.Repo)
		if err != nil {
			return
		}
		if _, err := s.refresh(inBackground(ctx), m, time.Now()); err != nil && ctx.Err() == nil {
			s.log.Warn("bring the mirror up to a push through another instance", "repo", m.name, "err", s.redact(err.Error()))
		}
	}()
}

// followEvery is how often follow reads a push's state from the store.
const followEvery = 200 * time.Millisecond

type backgroundKey struct{}

// inBackground marks work that nobody waits for: the packs it indexes are
// indexed at the lowest CPU priority, behind the pushes and fetches that
// somebody does wait for.
func inBackground(ctx context.Context) context.Context {
	return context.WithValue(ctx, backgroundKey{}, true)
}

func isBackground(ctx context.Context) bool {
	b, _ := ctx.Value(backgroundKey{}).(bool)
	return b
}
