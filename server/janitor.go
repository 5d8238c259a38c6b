package server

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/git-relay/git-relay/internal/keyring"
	"github.com/git-relay/git-relay/internal/store"
	"github.com/git-relay/git-relay/internal/wire"
)

// What a key can make the server do is bounded: unfinished exchanges,
// bytes kept for them, and the bytes kept for everyone. An exchange its
// client went quiet on expires after --idle and stops counting; and at
// the limit, the key's longest-idle exchange that has no request in
// progress makes room for the new one. So no sequence of dropped or
// spoiled answers can lock a key out: whatever a proxy made a client give
// up on gives way to the next thing it does.

// usage is the bytes the kept exchanges hold, by key and in all.
type usage struct {
	mu     sync.Mutex
	byExch map[string]exchUsage
	byKey  map[string]int64
	total  int64
}

type exchUsage struct {
	key   string
	bytes int64
}

func (u *usage) bytes(key string) (int64, int64) {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.byKey[key], u.total
}

func (u *usage) add(key, id string, n int64) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.byExch == nil {
		u.byExch, u.byKey = map[string]exchUsage{}, map[string]int64{}
	}
	x := u.byExch[id]
	x.key, x.bytes = key, x.bytes+n
	u.byExch[id] = x
	u.byKey[key] += n
	u.total += n
}

func (u *usage) drop(id string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if x, ok := u.byExch[id]; ok {
		u.byKey[x.key] -= x.bytes
		u.total -= x.bytes
		delete(u.byExch, id)
	}
}

// replace sets the usage from a scan of the store.
func (u *usage) replace(byExch map[string]exchUsage) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.byExch, u.byKey, u.total = byExch, map[string]int64{}, 0
	for _, x := range byExch {
		u.byKey[x.key] += x.bytes
		u.total += x.bytes
	}
}

// admit checks that a key may open one more exchange, pushing out its
// longest-idle unfinished one when it is at its limit.
func (s *Server) admit(ctx context.Context, key keyring.Key, o wire.Open) error {
	type cand struct {
		e    *exch
		idle time.Duration
	}
	var open []cand
	busy := 0
	s.mu.Lock()
	for _, e := range s.live {
		if e.key.ID != key.ID {
			continue
		}
		e.mu.Lock()
		ended := wire.Ended(e.st.Phase)
		idle := time.Since(e.seen)
		inUse := e.busy > 0 || e.applying
		e.mu.Unlock()
		switch {
		case ended:
		case inUse:
			busy++
		default:
			open = append(open, cand{e, idle})
		}
	}
	s.mu.Unlock()
	if busy+len(open) < s.cfg.MaxSessions {
		return nil
	}
	if len(open) == 0 {
		return limited("this key has %d exchanges in progress, its limit (--max-sessions): wait for one to end", busy)
	}
	sort.Slice(open, func(i, j int) bool { return open[i].idle > open[j].idle })
	s.cancelExchange(ctx, open[0].e, fmt.Sprintf("pushed out after %s idle by a newer exchange of the same key (it had %d unfinished, its limit)", open[0].idle.Round(time.Millisecond), s.cfg.MaxSessions))
	return nil
}

// janitor expires and removes exchanges until ctx ends.
func (s *Server) janitor(ctx context.Context) {
	t := time.NewTicker(min(s.cfg.Idle/4, 30*time.Second))
	defer t.Stop()
	for {
		s.sweep(ctx, time.Now())
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// sweep makes one pass over the store: it cancels the exchanges idle past
// --idle, removes the ended ones past --keep (and chunks nobody owns),
// recounts the bytes kept, and forgets what this instance no longer needs
// in memory.
func (s *Server) sweep(ctx context.Context, now time.Time) {
	s.sweepSeeds(ctx, now)
	// The newest write to anything of an exchange says when it was last
	// touched; the chunks say how many bytes it holds.
	latest := map[string]time.Time{}
	sizes := map[string]int64{}
	for _, p := range []string{"up/", "dn/"} {
		_ = s.store.List(ctx, p, func(i store.Info) error {
			id, _, _ := strings.Cut(strings.TrimPrefix(i.Key, p), "/")
			if i.Modified.After(latest[id]) {
				latest[id] = i.Modified
			}
			sizes[id] += i.Size
			return nil
		})
	}
	byExch := map[string]exchUsage{}
	known := map[string]bool{}
	unfinished := 0
	_ = s.store.List(ctx, "st/", func(i store.Info) error {
		id := strings.TrimPrefix(i.Key, "st/")
		known[id] = true
		st, _, err := s.loadState(ctx, id)
		if err != nil {
			return nil
		}
		touched := st.Updated
		if latest[id].After(touched) {
			touched = latest[id]
		}
		s.mu.Lock()
		if e, ok := s.live[id]; ok {
			e.mu.Lock()
			if e.seen.After(touched) {
				touched = e.seen
			}
			e.mu.Unlock()
		}
		s.mu.Unlock()
		switch {
		case wire.Ended(st.Phase) && now.Sub(st.Updated) > s.cfg.Keep:
			s.dropChunks(ctx, id)
			_ = s.store.Delete(ctx, stateKey(id))
			s.forget(id)
			return nil
		case !wire.Ended(st.Phase) && now.Sub(touched) > s.cfg.Idle && now.After(st.Lease):
			if key, ok := s.cfg.Ring.Lookup(st.KeyID); ok {
				if e, err := s.exchange(ctx, id, key); err == nil {
					s.cancelExchange(ctx, e, fmt.Sprintf("expired after %s idle", s.cfg.Idle))
					return nil
				}
			}
		}
		if !wire.Ended(st.Phase) {
			unfinished++
		}
		byExch[id] = exchUsage{key: st.KeyID, bytes: sizes[id]}
		return nil
	})
	// Chunks whose exchange is gone: debris of a crash between writes.
	for id, at := range latest {
		if !known[id] && now.Sub(at) > s.cfg.Idle {
			s.dropChunks(ctx, id)
		}
	}
	s.usage.replace(byExch)
	s.metrics.open.Set(float64(unfinished))
	s.mu.Lock()
	var idle []string
	for id, e := range s.live {
		e.mu.Lock()
		done := !e.working && (wire.Ended(e.st.Phase) || !e.persisted) && now.Sub(e.seen) > 2*time.Minute
		e.mu.Unlock()
		if done {
			idle = append(idle, id)
		}
	}
	for _, id := range idle {
		delete(s.live, id)
	}
	s.mu.Unlock()
}
